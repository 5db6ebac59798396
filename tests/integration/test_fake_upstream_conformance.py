"""The fake upstream speaks the real OpenAI and Anthropic wire formats.

Every answer is parsed by the OFFICIAL SDKs over real HTTP (and, for the raw formats,
validated against the SDKs' own pydantic models), so the double cannot drift from what
the providers send without these tests failing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pydantic
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from tests.support.upstream import (
    ContentPolicy,
    ContextTooLong,
    Error,
    FakeUpstream,
    Hang,
    MalformedSSE,
    Reset,
    Respond,
    StopMidway,
    StreamError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello big world"}]
A_USER: list[MessageParam] = [{"role": "user", "content": "hello big world"}]
ANTHROPIC_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def oai(up: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=5.0
    ) as client:
        yield client


@pytest.fixture
async def ant(up: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=up.base_url, api_key="sk-ant-test", max_retries=0, timeout=5.0
    ) as client:
        yield client


async def post_raw(
    up: FakeUpstream, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(up.base_url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """Strictly parse an SSE body: blocks of `event: x` / `data: y` lines ending in a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    events: list[tuple[str | None, str]] = []
    for block in text[:-2].split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            field, sep, value = line.partition(": ")
            assert sep, f"malformed SSE line {line!r}"
            if field == "event":
                event = value
            else:
                assert field == "data", f"unexpected SSE field {field!r}"
                data.append(value)
        events.append((event, "\n".join(data)))
    return events


async def collect_openai(stream: AsyncIterator[ChatCompletionChunk], sink: list[Any]) -> None:
    async for chunk in stream:
        sink.append(chunk)


async def collect_anthropic_texts(
    client: anthropic.AsyncAnthropic, sink: list[str], model: str = "claude-x"
) -> None:
    async with client.messages.stream(model=model, max_tokens=100, messages=A_USER) as stream:
        async for text in stream.text_stream:
            sink.append(text)


# --- OpenAI Chat Completions ----------------------------------------------------------------


async def test_openai_completion_echoes_last_user_message_with_word_usage(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "hello big world"},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello big world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 9 + 4 * 3
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 25
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    rec = up.requests[0]
    assert (rec.api, rec.path, rec.model, rec.stream) == (
        "openai",
        "/v1/chat/completions",
        "gpt-4o",
        False,
    )
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.body["messages"][-1]["content"] == "hello big world"


async def test_openai_raw_completion_validates_against_sdk_model(up: FakeUpstream) -> None:
    status, headers, raw = await post_raw(
        up, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}
    )

    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"].startswith("req_")
    completion = ChatCompletion.model_validate(json.loads(raw))
    assert completion.choices[0].logprobs is None


async def test_openai_max_completion_tokens_cuts_answer_with_finish_reason_length(
    oai: openai.AsyncOpenAI,
) -> None:
    completion = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, max_completion_tokens=2
    )

    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


async def test_openai_stream_with_include_usage_ends_with_usage_chunk(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    first, *content, final, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in content] == ["Echo:", " hello", " big", " world"]
    assert final.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (6, 4)
    assert usage_chunk.usage.total_tokens == 10


async def test_openai_raw_stream_is_chunk_objects_then_done(up: FakeUpstream) -> None:
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = await post_raw(up, "/v1/chat/completions", body)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = parse_sse(raw)
    assert events[-1] == (None, "[DONE]")
    payloads = [json.loads(data) for event, data in events[:-1] if event is None]
    assert len(payloads) == len(events) - 1
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)
        assert "usage" in payload
    assert all(p["choices"][0]["logprobs"] is None for p in payloads[:-1])
    assert payloads[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}


async def test_openai_stream_without_include_usage_has_no_usage_field(up: FakeUpstream) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    _, _, raw = await post_raw(up, "/v1/chat/completions", body)

    payloads = [json.loads(data) for _, data in parse_sse(raw)[:-1]]
    assert all("usage" not in p and len(p["choices"]) == 1 for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


async def test_openai_stream_helper_accumulates_final_completion(oai: openai.AsyncOpenAI) -> None:
    async with oai.chat.completions.stream(
        model="gpt-4o", messages=USER, stream_options={"include_usage": True}
    ) as stream:
        final = await stream.get_final_completion()

    assert final.choices[0].message.content == "Echo: hello big world"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == 4


# --- Anthropic Messages ---------------------------------------------------------------------


async def test_anthropic_message_echoes_and_counts_system_prompt(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    message = await ant.messages.create(
        model="claude-test-model",
        max_tokens=100,
        system="be brief",
        messages=A_USER,
    )

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-test-model"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Echo: hello big world")
    ]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == (3 + 3) + (2 + 3)
    assert message.usage.output_tokens == 4
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    rec = up.requests[0]
    assert (rec.api, rec.path, rec.model) == ("anthropic", "/v1/messages", "claude-test-model")
    assert "anthropic-version" in rec.headers
    assert rec.body["system"] == "be brief"


async def test_anthropic_raw_message_validates_against_sdk_model(up: FakeUpstream) -> None:
    body = {"model": "claude-x", "max_tokens": 2, "messages": USER}
    status, headers, raw = await post_raw(up, "/v1/messages", body)

    assert status == 200
    assert headers["request-id"].startswith("req_")
    message = Message.model_validate(json.loads(raw))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


async def test_anthropic_stream_final_message_has_usage_and_stop_reason(
    ant: anthropic.AsyncAnthropic,
) -> None:
    async with ant.messages.stream(model="claude-x", max_tokens=100, messages=A_USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert texts == ["Echo:", " hello", " big", " world"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "Echo: hello big world"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 4)


async def test_anthropic_raw_stream_has_the_documented_event_sequence(up: FakeUpstream) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "messages": USER, "stream": True}
    status, headers, raw = await post_raw(up, "/v1/messages", body)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = parse_sse(raw)
    names = [event for event, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    for name, payload in zip(names, payloads, strict=True):
        assert payload["type"] == name
        if name != "ping":
            ANTHROPIC_EVENT.validate_python(payload)
    start_usage = payloads[0]["message"]["usage"]
    assert (start_usage["input_tokens"], start_usage["output_tokens"]) == (6, 1)
    assert start_usage["cache_read_input_tokens"] == 0
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"
    assert payloads[-2]["usage"]["output_tokens"] == 4


async def test_anthropic_max_tokens_cuts_stream_with_stop_reason_max_tokens(
    ant: anthropic.AsyncAnthropic,
) -> None:
    async with ant.messages.stream(model="claude-x", max_tokens=3, messages=A_USER) as stream:
        final = await stream.get_final_message()

    assert final.content[0].type == "text"
    assert final.content[0].text == "Echo: hello big"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3


# --- Respond overrides and knobs ------------------------------------------------------------


async def test_respond_overrides_text_chunks_usage_and_cached_tokens(
    up: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    scripted = Respond(
        text="one two three four five",
        chunks=2,
        finish_reason="length",
        input_tokens=100,
        output_tokens=7,
        cached_input_tokens=40,
    )
    up.script("gpt-4o", scripted)
    up.script("claude-x", scripted)

    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    async with ant.messages.stream(model="claude-x", max_tokens=1, messages=A_USER) as astream:
        texts = [text async for text in astream.text_stream]
        final = await astream.get_final_message()

    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["one two", " three four five"]
    assert chunks[3].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (100, 7)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert texts == ["one two", " three four five"]
    assert final.stop_reason == "max_tokens"  # "length" translated to Anthropic's vocabulary
    assert final.usage.input_tokens == 60  # Anthropic reports uncached input separately
    assert final.usage.cache_read_input_tokens == 40
    assert final.usage.output_tokens == 7


async def test_fixed_text_and_default_chunks_knobs_shape_every_answer(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.fixed_text = "a b c d e f"
    up.default_chunks = 3

    stream = await oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]

    assert pieces == ["a b", " c d", " e f"]


async def test_latency_delays_the_first_byte(up: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    up.latency_s = 0.05
    up.script("gpt-4o", Respond(first_byte_delay_s=0.05))

    started = time.monotonic()
    await oai.chat.completions.create(model="gpt-4o", messages=USER)

    assert time.monotonic() - started >= 0.1


# --- Errors map to the SDKs' typed exceptions -----------------------------------------------


async def test_openai_429_is_rate_limit_error_with_retry_after_headers(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", Error(429, retry_after="2", retry_after_ms="1500"))

    with pytest.raises(openai.RateLimitError) as info:
        await oai.chat.completions.create(model="gpt-4o", messages=USER)

    e = info.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "2"
    assert e.response.headers["retry-after-ms"] == "1500"
    assert e.code == "rate_limit_exceeded"
    assert e.request_id is not None
    assert e.request_id.startswith("req_")
    assert isinstance(e.body, dict)
    assert set(e.body) == {"message", "type", "param", "code"}
    assert "Rate limit reached for gpt-4o" in e.body["message"]


async def test_openai_insufficient_quota_kind_sets_type_and_code(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", Error(429, kind="insufficient_quota"))

    with pytest.raises(openai.RateLimitError) as info:
        await oai.chat.completions.create(model="gpt-4o", messages=USER)

    assert (info.value.type, info.value.code) == ("insufficient_quota", "insufficient_quota")
    assert "exceeded your current quota" in info.value.message


async def test_openai_context_too_long_is_bad_request_context_length_exceeded(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", ContextTooLong(prompt_tokens=9000, limit=8192))

    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model="gpt-4o", messages=USER)

    e = info.value
    assert e.code == "context_length_exceeded"
    assert (e.type, e.param) == ("invalid_request_error", "messages")
    assert "maximum context length is 8192 tokens" in e.message
    assert "resulted in 9000 tokens" in e.message


async def test_context_too_long_reports_the_real_prompt_size_of_a_big_body(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", ContextTooLong())
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 300_000}]

    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model="gpt-4o", messages=huge)

    assert "maximum context length is 128000 tokens" in info.value.message
    assert "resulted in 300003 tokens" in info.value.message


async def test_openai_content_policy_is_bad_request_content_policy_violation(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", ContentPolicy(), ContentPolicy(code="content_filter"))

    codes = []
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(model="gpt-4o", messages=USER)
        codes.append(info.value.code)

    assert codes == ["content_policy_violation", "content_filter"]


async def test_openai_wrong_api_key_is_authentication_error(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.require_api_key = "sk-other"

    with pytest.raises(openai.AuthenticationError) as info:
        await oai.chat.completions.create(model="gpt-4o", messages=USER)

    assert info.value.code == "invalid_api_key"
    up.require_api_key = "sk-test"
    await oai.chat.completions.create(model="gpt-4o", messages=USER)


async def test_openai_5xx_are_internal_server_errors(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", Error(500), Error(503))

    types = []
    for status in (500, 503):
        with pytest.raises(openai.InternalServerError) as info:
            await oai.chat.completions.create(model="gpt-4o", messages=USER)
        assert info.value.status_code == status
        types.append(info.value.type)

    assert types == ["server_error", "server_error"]


async def test_anthropic_429_is_rate_limit_error_with_retry_after(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", Error(429, retry_after="7"))

    with pytest.raises(anthropic.RateLimitError) as info:
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    e = info.value
    assert e.status_code == 429
    assert e.response.headers["retry-after"] == "7"
    assert e.type == "rate_limit_error"
    assert e.request_id is not None
    assert e.request_id.startswith("req_")
    assert isinstance(e.body, dict)
    assert e.body["type"] == "error"
    assert e.body["request_id"] == e.request_id


async def test_anthropic_context_too_long_is_bad_request_prompt_too_long(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", ContextTooLong(prompt_tokens=210000, limit=200000))

    with pytest.raises(anthropic.BadRequestError) as info:
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    assert info.value.type == "invalid_request_error"
    assert info.value.api_message == "prompt is too long: 210000 tokens > 200000 maximum"


async def test_anthropic_content_policy_is_bad_request(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", ContentPolicy())

    with pytest.raises(anthropic.BadRequestError) as info:
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    assert info.value.type == "invalid_request_error"
    assert info.value.api_message == "Output blocked by content filtering policy"


async def test_anthropic_wrong_api_key_is_authentication_error(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.require_api_key = "sk-ant-other"

    with pytest.raises(anthropic.AuthenticationError) as info:
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    assert info.value.type == "authentication_error"
    status, _, raw = await post_raw(
        up,
        "/v1/messages",
        {"model": "claude-x", "max_tokens": 10, "messages": USER},
        headers={"x-api-key": "sk-ant-other", "anthropic-version": "2023-06-01"},
    )
    assert status == 200, raw


async def test_anthropic_529_is_overloaded_error(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", Error(529))

    with pytest.raises(anthropic.OverloadedError) as info:
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    assert info.value.type == "overloaded_error"


async def test_anthropic_missing_max_tokens_is_rejected_like_the_real_api(
    up: FakeUpstream,
) -> None:
    status, _, raw = await post_raw(up, "/v1/messages", {"model": "claude-x", "messages": USER})

    assert status == 400
    assert json.loads(raw)["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


async def test_unknown_path_is_404(up: FakeUpstream) -> None:
    status, _, raw = await post_raw(up, "/v1/embeddings", {"model": "x"})

    assert status == 404
    assert json.loads(raw)["error"]["message"] == "Invalid URL (POST /v1/embeddings)"


# --- Broken streams -------------------------------------------------------------------------


async def test_anthropic_mid_stream_error_event_raises(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", StreamError(after_chunks=2))

    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        await collect_anthropic_texts(ant, texts)

    assert texts == ["Echo:", " hello"]
    assert info.value.type == "overloaded_error"


async def test_openai_mid_stream_error_data_line_raises(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", StreamError(after_chunks=1))

    stream = await oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        await collect_openai(stream, chunks)

    assert [c.choices[0].delta.content for c in chunks] == ["", "Echo:"]
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "server_error"


async def test_malformed_sse_fails_the_sdk_json_decoding(
    up: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    up.script_any(MalformedSSE(), MalformedSSE())

    stream = await oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(json.JSONDecodeError):
        await collect_openai(stream, chunks)
    texts: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        await collect_anthropic_texts(ant, texts)

    assert [c.choices[0].delta.content for c in chunks] == ["", "Echo:"]
    assert texts == ["Echo:"]


async def test_stop_midway_cuts_the_connection_without_final_events(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", StopMidway(after_chunks=2))

    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        await collect_openai(stream, chunks)

    assert [c.choices[0].delta.content for c in chunks] == ["", "Echo:", " hello"]
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in chunks)


async def test_stop_midway_clean_eof_ends_stream_without_final_events(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-x", StopMidway(after_chunks=1, clean_eof=True))

    async with ant.messages.stream(model="claude-x", max_tokens=100, messages=A_USER) as s:
        texts = [text async for text in s.text_stream]
        snapshot = s.current_message_snapshot

    assert texts == ["Echo:"]
    assert snapshot.stop_reason is None


async def test_reset_aborts_the_connection_without_a_response(
    up: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    up.script_any(Reset(), Reset())

    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(anthropic.APIConnectionError):
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)

    assert up.request_count() == 2
    assert up.disconnects == 0  # the server hung up, not the client


# --- Disconnect and connection tracking -----------------------------------------------------


async def test_hang_notices_client_timeout_as_disconnect(up: FakeUpstream) -> None:
    up.set_default("gpt-4o", Hang())

    async with openai.AsyncOpenAI(
        base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=0.2
    ) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)
        assert await up.wait_for_disconnects(1, timeout=1.0)

    assert up.requests[0].disconnected
    assert await up.wait_for_open_connections(0, timeout=1.0)


async def test_hang_notices_cancelled_client_promptly(up: FakeUpstream) -> None:
    up.script("claude-x", Hang())
    body = {"model": "claude-x", "max_tokens": 10, "messages": USER}

    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(up.base_url + "/v1/messages", json=body))
        assert await up.wait_for_requests(1, model="claude-x")
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await up.wait_for_disconnects(1, timeout=1.0)

    assert time.monotonic() - started < 0.5
    assert up.disconnects == 1


async def test_client_closing_a_slow_stream_is_recorded_as_disconnect(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-4o", Respond(text=" ".join(["word"] * 50), chunk_delay_s=0.02))

    stream = await oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()

    assert await up.wait_for_disconnects(1, timeout=1.0)
    assert up.requests[0].disconnected


async def test_client_giving_up_during_latency_is_recorded_as_disconnect(
    up: FakeUpstream,
) -> None:
    up.latency_s = 5.0

    async with anthropic.AsyncAnthropic(
        base_url=up.base_url, api_key="sk-ant-test", max_retries=0, timeout=0.1
    ) as client:
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(model="claude-x", max_tokens=10, messages=A_USER)
        assert await up.wait_for_disconnects(1, timeout=1.0)


async def test_close_releases_hanging_requests_without_counting_disconnects() -> None:
    up = FakeUpstream()
    await up.start()
    up.set_default(None, Hang())
    body = {"model": "gpt-4o", "messages": USER}
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(up.base_url + "/v1/chat/completions", json=body))
        assert await up.wait_for_requests(1)
        started = time.monotonic()
        await up.close()
        with pytest.raises(aiohttp.ClientError):
            await task

    assert time.monotonic() - started < 0.5
    assert up.disconnects == 0
    assert up.open_connections == 0


async def test_open_connections_track_the_client_pool(up: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        await client.chat.completions.create(model="gpt-4o", messages=USER)
        await client.chat.completions.create(model="gpt-4o", messages=USER)
        assert up.open_connections == 1  # keep-alive reused the connection
        assert up.total_connections == 1

    assert await up.wait_for_open_connections(0, timeout=1.0)
    assert up.disconnects == 0


# --- Per-model scripting --------------------------------------------------------------------


async def test_scripts_are_consumed_per_model_then_defaults_apply(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script("gpt-primary", Error(429, retry_after="2"), Respond(text="primary ok"))
    up.set_default("gpt-broken", Error(500))

    async def ask(model: str) -> str:
        completion = await oai.chat.completions.create(model=model, messages=USER)
        return completion.choices[0].message.content or ""

    with pytest.raises(openai.RateLimitError):
        await ask("gpt-primary")
    assert await ask("gpt-fallback") == "Echo: hello big world"
    assert await ask("gpt-primary") == "primary ok"
    assert await ask("gpt-primary") == "Echo: hello big world"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await ask("gpt-broken")

    assert up.pending() == 0
    assert up.request_count("gpt-primary") == 3
    assert up.request_count("gpt-fallback") == 1
    assert up.request_count("gpt-broken") == 2
    assert up.request_count() == 6
    assert [r.model for r in up.requests] == [
        "gpt-primary",
        "gpt-fallback",
        "gpt-primary",
        "gpt-primary",
        "gpt-broken",
        "gpt-broken",
    ]


async def test_script_any_serves_any_model_after_its_own_queue(
    up: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    up.script_any(Error(503), Respond(text="from any"))
    up.script("gpt-own", Respond(text="own"))

    own = await oai.chat.completions.create(model="gpt-own", messages=USER)
    with pytest.raises(anthropic.InternalServerError):
        await ant.messages.create(model="claude-x", max_tokens=10, messages=A_USER)
    other = await oai.chat.completions.create(model="gpt-other", messages=USER)

    assert own.choices[0].message.content == "own"
    assert other.choices[0].message.content == "from any"
    assert up.pending() == 0


# --- Command line ---------------------------------------------------------------------------


async def test_cli_prints_listening_line_serves_and_exits_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.upstream",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--text",
        "one two three",
        "--chunks",
        "2",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        assert line.startswith("LISTENING http://127.0.0.1:")
        base_url = line.split()[1]
        body = {"model": "m", "messages": USER, "stream": True}
        async with (
            aiohttp.ClientSession() as session,
            session.post(base_url + "/v1/chat/completions", json=body) as resp,
        ):
            raw = await resp.read()
        payloads = [json.loads(data) for _, data in parse_sse(raw)[:-1]]
        assert [p["choices"][0]["delta"].get("content") for p in payloads] == [
            "",
            "one",
            " two three",
            None,
        ]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0
