"""The recorded provider answers (tests/data/recorded/) are faithful, and ``Replay`` serves them.

Every recording validates against the OFFICIAL SDKs' pydantic models with no field the SDK
does not know (``ChatCompletion`` / ``ChatCompletionChunk``, ``Message`` /
``RawMessageStreamEvent``), every stream is strict SSE in the provider's event grammar, the
streamed and non-streamed recordings of a scenario describe the same answer, and replaying
them through ``FakeUpstream`` over real HTTP gives the official SDK clients (unary,
streaming, and their stream accumulators) exactly the figures that
``tests/data/recorded/README.md`` lists (``EXPECTED`` below pins them).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import jiter
import openai
import pydantic
import pytest
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from tests.integration.test_fake_upstream_conformance import parse_sse
from tests.support.upstream import (
    RECORDED_DIR,
    Api,
    FakeUpstream,
    Replay,
    recorded_body,
    recorded_scenarios,
    sse_events,
)

ANTHROPIC_EVENT: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(
    RawMessageStreamEvent
)
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What's the weather?"}]
A_USER: list[MessageParam] = [{"role": "user", "content": "What's the weather?"}]

# --- What each recording says (tests/data/recorded/README.md lists the same figures) --------


@dataclass(frozen=True)
class Call:
    """A tool call. ``arguments`` is the parsed JSON (``""`` parses as ``{}``); arguments cut
    short stay the raw text for OpenAI, and for Anthropic are what the SDK's partial-JSON
    parser makes of them (``input`` of a non-streaming answer is an object, always).
    ``raw`` is the arguments text as sent (not compared: Anthropic's JSON has no text)."""

    id: str | None
    name: str
    arguments: Any
    raw: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Answer:
    text: str | None
    calls: tuple[Call, ...]
    finish: str | None
    usage: dict[str, int]  # numeric leaves, dotted paths: "prompt_tokens_details.cached_tokens"
    refusal: str | None = None  # OpenAI's message.refusal
    stop_details: str | None = None  # Anthropic's stop_details.type


def oai_usage(
    prompt: int, completion: int, *, cached: int = 0, image: int | None = None, reasoning: int = 0
) -> dict[str, int]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details.cached_tokens": cached,
        "prompt_tokens_details.audio_tokens": 0,
        "completion_tokens_details.reasoning_tokens": reasoning,
        "completion_tokens_details.audio_tokens": 0,
        "completion_tokens_details.accepted_prediction_tokens": 0,
        "completion_tokens_details.rejected_prediction_tokens": 0,
    }
    if image is not None:
        usage["prompt_tokens_details.image_tokens"] = image
    return usage


def ant_usage(
    input_tokens: int, output: int, *, read: int = 0, write_5m: int = 0, write_1h: int = 0
) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": read,
        "cache_creation.ephemeral_5m_input_tokens": write_5m,
        "cache_creation.ephemeral_1h_input_tokens": write_1h,
        "output_tokens": output,
    }


PARIS = {"city": "Paris", "unit": "celsius"}
TOKYO = {"city": "Tokyo", "unit": "celsius"}
PARIS_RAW = '{"city":"Paris","unit":"celsius"}'
ADA = '{"name":"Ada Lovelace","born":1815,"fields":["mathematics","computing"]}'
WEATHER_ANSWER = "It is 18°C in Paris and 24°C in Tokyo."
CACHING_TEXT = (
    "Yes. Under section 12.3 of the agreement you sent, either party may terminate for "
    "convenience with 30 days' written notice, delivered by email to the contacts listed "
    "in Schedule B. Fees already invoiced stay payable, prepaid annual fees are refunded "
    "pro rata for the unused months, and the data export window in section 14.1 (60 days "
    "after termination) still applies. Termination for cause under section 12.4 needs no "
    "notice period, but the breach must remain uncured for 15 days after you report it."
)
VLLM_WEATHER = "chatcmpl-tool-3f9a1c7e52b84d06a1e9c4b7d2f58a63"
VLLM_TIME = "chatcmpl-tool-8b2e6d4f1a9c47e3b5d0f7a2c6e19b48"

EXPECTED: dict[tuple[Api, str], Answer] = {
    ("openai", "tool_call"): Answer(
        None,
        (Call("call_Xk7mQ2vR9tLp4aYbN3eHs8Uf", "get_weather", PARIS, PARIS_RAW),),
        "tool_calls",
        oai_usage(82, 19),
    ),
    ("openai", "parallel_tool_calls"): Answer(
        None,
        (
            Call("call_Ab3dE5fG7hJ9kL2mN4pQ6rSt", "get_weather", PARIS, PARIS_RAW),
            Call(
                "call_Uv8wX1yZ3aB5cD7eF9gH2jKm",
                "get_weather",
                TOKYO,
                '{"city":"Tokyo","unit":"celsius"}',
            ),
        ),
        "tool_calls",
        oai_usage(86, 52),
    ),
    ("openai", "tool_result_answer"): Answer(WEATHER_ANSWER, (), "stop", oai_usage(157, 17)),
    ("openai", "structured_output"): Answer(ADA, (), "stop", oai_usage(96, 22)),
    ("openai", "refusal"): Answer(
        None, (), "stop", oai_usage(34, 10), refusal="I'm sorry, I can't help with that."
    ),
    ("openai", "image_prompt"): Answer("A red square.", (), "stop", oai_usage(268, 5, image=255)),
    ("openai", "prompt_caching"): Answer(
        CACHING_TEXT, (), "stop", oai_usage(2006, 300, cached=1920, reasoning=192)
    ),
    ("openai", "truncated_json"): Answer('{"name":"Ada Lovel', (), "length", oai_usage(96, 6)),
    ("openai", "truncated_tool_args"): Answer(
        None,
        (Call("call_Qr4sT6uV8wX1yZ3aB5cD7eFg", "get_weather", '{"city":"Par', '{"city":"Par'),),
        "length",
        oai_usage(82, 4),
    ),
    ("openai", "openai_compatible_index0"): Answer(
        None,
        (
            Call(VLLM_WEATHER, "get_weather", PARIS, '{"city": "Paris", "unit": "celsius"}'),
            Call(VLLM_TIME, "get_current_time", {}, ""),
        ),
        "tool_calls",
        {"prompt_tokens": 312, "completion_tokens": 49, "total_tokens": 361},
    ),
    ("openai", "openai_compatible_noid"): Answer(
        None,
        (
            Call(None, "get_weather", PARIS, '{"city": "Paris", "unit": "celsius"}'),
            Call(None, "get_weather", TOKYO, '{"city": "Tokyo", "unit": "celsius"}'),
        ),
        "tool_calls",
        {"prompt_tokens": 318, "completion_tokens": 66, "total_tokens": 384},
    ),
    ("anthropic", "tool_call"): Answer(
        "I'll check the weather.",
        (
            Call(
                "toolu_01Vb9XzQ4rN6mJtH2kWsA8Pd",
                "get_weather",
                PARIS,
                '{"city": "Paris", "unit": "celsius"}',
            ),
        ),
        "tool_use",
        ant_usage(412, 71),
    ),
    ("anthropic", "parallel_tool_calls"): Answer(
        "I'll check the weather in both cities.",
        (
            Call(
                "toolu_01Hc6PqW2nB8xKsM4tYv9RjE",
                "get_weather",
                PARIS,
                '{"city": "Paris", "unit": "celsius"}',
            ),
            Call(
                "toolu_01Ds7LkX3mA9vQzN5wTb2GfU",
                "get_weather",
                TOKYO,
                '{"city": "Tokyo", "unit": "celsius"}',
            ),
        ),
        "tool_use",
        ant_usage(418, 112),
    ),
    ("anthropic", "tool_result_answer"): Answer(WEATHER_ANSWER, (), "end_turn", ant_usage(603, 22)),
    ("anthropic", "structured_output"): Answer(ADA, (), "end_turn", ant_usage(187, 25)),
    ("anthropic", "refusal"): Answer(
        "Sure, here's an overview of the process. First,",
        (),
        "refusal",
        ant_usage(35, 14),
        stop_details="refusal",
    ),
    ("anthropic", "image_prompt"): Answer("A red square.", (), "end_turn", ant_usage(72, 7)),
    ("anthropic", "prompt_caching"): Answer(
        CACHING_TEXT,
        (),
        "end_turn",
        ant_usage(21, 120, read=1800, write_5m=1500, write_1h=1000),
    ),
    ("anthropic", "truncated_json"): Answer(
        '{"name":"Ada Lovel', (), "max_tokens", ant_usage(187, 8)
    ),
    ("anthropic", "truncated_tool_args"): Answer(
        None,
        (Call("toolu_01Wq5Rn2KzX8mBv4TcHp7LsD", "get_weather", {}, '{"city":"Par'),),
        "max_tokens",
        ant_usage(412, 10),
    ),
}

OPENAI_JSON = sorted(s for s in recorded_scenarios("openai") if s != "openai_compatible_noid")
OPENAI_SSE = recorded_scenarios("openai")
ANTHROPIC = recorded_scenarios("anthropic")
# OpenAI-compatible servers (vLLM here) send fields the OpenAI SDK does not model.
COMPAT_EXTRAS = frozenset({"stop_reason", "reasoning_content", "prompt_logprobs"})


# --- Reading answers out of SDK objects ------------------------------------------------------


def flat_ints(obj: Any, prefix: str = "") -> dict[str, int]:
    """The integer leaves of a JSON-like value, by dotted path."""
    out: dict[str, int] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flat_ints(value, f"{prefix}{key}."))
    elif isinstance(obj, int) and not isinstance(obj, bool):
        out[prefix[:-1]] = obj
    return out


def openai_arguments(raw: str) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # cut short


def anthropic_input(raw: str) -> Any:
    # What the SDK's accumulator does (and what ``input`` can hold): partial JSON, with an
    # unfinished string dropped.
    return jiter.from_json(raw.encode(), partial_mode=True) if raw else {}


def openai_answer(completion: ChatCompletion) -> Answer:
    (choice,) = completion.choices
    message = choice.message
    calls = []
    for call in message.tool_calls or ():
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        raw = call.function.arguments
        # A stream accumulator's snapshot of a call that had no id lacks the attribute.
        call_id: str | None = getattr(call, "id", None)
        calls.append(Call(call_id, call.function.name, openai_arguments(raw), raw))
    usage = completion.usage
    return Answer(
        message.content or None,
        tuple(calls),
        choice.finish_reason,
        flat_ints(usage.model_dump(exclude_none=True)) if usage is not None else {},
        refusal=message.refusal,
    )


@dataclass
class _PartialCall:
    id: str | None
    name: str = ""
    raw: str = ""


def openai_stream_answer(chunks: Sequence[ChatCompletionChunk]) -> Answer:
    """Accumulate chunks as a careful client must: a delta with a new ``id`` starts a new
    call even at an index already seen (OpenAI-compatible servers that send every call at
    index 0), and calls without ids are told apart by their index."""
    content: list[str] = []
    refusal: list[str] = []
    calls: list[_PartialCall] = []
    by_index: dict[int, _PartialCall] = {}
    finish: str | None = None
    usage: dict[str, int] = {}
    for chunk in chunks:
        if chunk.usage is not None:
            usage = flat_ints(chunk.usage.model_dump(exclude_none=True))
        for choice in chunk.choices:
            delta = choice.delta
            content.append(delta.content or "")
            refusal.append(delta.refusal or "")
            for tool_call in delta.tool_calls or ():
                current = by_index.get(tool_call.index)
                if current is None or (tool_call.id is not None and tool_call.id != current.id):
                    current = by_index[tool_call.index] = _PartialCall(tool_call.id)
                    calls.append(current)
                if tool_call.function is not None:
                    current.name += tool_call.function.name or ""
                    current.raw += tool_call.function.arguments or ""
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return Answer(
        "".join(content) or None,
        tuple(Call(c.id, c.name, openai_arguments(c.raw), c.raw) for c in calls),
        finish,
        usage,
        refusal="".join(refusal) or None,
    )


def anthropic_answer(message: Message) -> Answer:
    texts = [block.text for block in message.content if isinstance(block, TextBlock)]
    calls = tuple(
        Call(block.id, block.name, block.input)
        for block in message.content
        if isinstance(block, ToolUseBlock)
    )
    details = message.stop_details
    return Answer(
        "".join(texts) if texts else None,
        calls,
        message.stop_reason,
        flat_ints(message.usage.model_dump(exclude_none=True)),
        stop_details=details.type if details is not None else None,
    )


def anthropic_stream_answer(events: Sequence[RawMessageStreamEvent]) -> Answer:
    """Accumulate events: message_start's usage, overwritten by message_delta's cumulative
    counts (as the SDK does)."""
    texts: dict[int, str] = {}
    tools: dict[int, _PartialCall] = {}
    names: dict[int, str] = {}
    finish: str | None = None
    details: str | None = None
    usage: dict[str, int] = {}
    for event in events:
        if isinstance(event, RawMessageStartEvent):
            usage = flat_ints(event.message.usage.model_dump(exclude_none=True))
        elif isinstance(event, RawContentBlockStartEvent):
            block = event.content_block
            if isinstance(block, TextBlock):
                texts[event.index] = block.text
            elif isinstance(block, ToolUseBlock):
                tools[event.index] = _PartialCall(block.id)
                names[event.index] = block.name
        elif isinstance(event, RawContentBlockDeltaEvent):
            if isinstance(event.delta, TextDelta):
                texts[event.index] += event.delta.text
            elif isinstance(event.delta, InputJSONDelta):
                tools[event.index].raw += event.delta.partial_json
        elif isinstance(event, RawMessageDeltaEvent):
            finish = event.delta.stop_reason
            if event.delta.stop_details is not None:
                details = event.delta.stop_details.type
            usage.update(flat_ints(event.usage.model_dump(exclude_none=True)))
    return Answer(
        "".join(texts[i] for i in sorted(texts)) if texts else None,
        tuple(
            Call(tools[i].id, names[i], anthropic_input(tools[i].raw), tools[i].raw)
            for i in sorted(tools)
        ),
        finish,
        usage,
        stop_details=details,
    )


def assert_answer(got: Answer, api: Api, scenario: str, *, raw: bool = False) -> None:
    expected = EXPECTED[api, scenario]
    assert got == expected
    if raw:  # the arguments text as streamed, fragment by fragment
        assert [c.raw for c in got.calls] == [c.raw for c in expected.calls]


# --- Reading the files -----------------------------------------------------------------------


def unknown_fields(value: object, path: str = "$") -> list[str]:
    """Paths of fields the SDK model does not declare (its models accept and keep them)."""
    if isinstance(value, pydantic.BaseModel):
        found = [f"{path}.{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += unknown_fields(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(item, f"{path}[{i}]")]
    return []


def assert_known_fields(model: pydantic.BaseModel, scenario: str) -> None:
    extra = unknown_fields(model)
    if scenario.startswith("openai_compatible"):
        assert {p.rsplit(".", 1)[-1] for p in extra} <= COMPAT_EXTRAS, extra
    else:
        assert extra == []


def openai_json(scenario: str) -> tuple[dict[str, Any], ChatCompletion]:
    body = json.loads(recorded_body("openai", scenario, stream=False))
    return body, ChatCompletion.model_validate(body)


def openai_chunks(scenario: str) -> tuple[list[dict[str, Any]], list[ChatCompletionChunk]]:
    events = parse_sse(recorded_body("openai", scenario, stream=True))
    assert events[-1] == (None, "[DONE]")
    assert all(name is None for name, _ in events), "OpenAI streams have no event names"
    payloads = [json.loads(data) for _, data in events[:-1]]
    return payloads, [ChatCompletionChunk.model_validate(p) for p in payloads]


def anthropic_json(scenario: str) -> tuple[dict[str, Any], Message]:
    body = json.loads(recorded_body("anthropic", scenario, stream=False))
    return body, Message.model_validate(body)


def anthropic_events(scenario: str) -> tuple[list[dict[str, Any]], list[RawMessageStreamEvent]]:
    """The events other than pings (which are not RawMessageStreamEvents)."""
    payloads: list[dict[str, Any]] = []
    for name, data in parse_sse(recorded_body("anthropic", scenario, stream=True)):
        if name == "ping":
            assert data == '{"type": "ping"}'
            continue
        payload = json.loads(data)
        assert payload["type"] == name, "the event name is the payload's type"
        payloads.append(payload)
    return payloads, [ANTHROPIC_EVENT.validate_python(p) for p in payloads]


def test_every_scenario_is_recorded_and_pinned() -> None:
    assert (RECORDED_DIR / "README.md").is_file()
    found = {("openai", s) for s in OPENAI_SSE} | {("anthropic", s) for s in ANTHROPIC}
    assert found == set(EXPECTED)
    for api, scenario in EXPECTED:
        assert recorded_body(api, scenario, stream=True)
        if scenario != "openai_compatible_noid":  # no id: not a valid ChatCompletion
            assert recorded_body(api, scenario, stream=False)
    for path in RECORDED_DIR.glob("*/*"):
        raw = path.read_bytes()
        raw.decode()  # UTF-8
        assert b"\r" not in raw
        assert raw.endswith(b"\n")


# --- OpenAI: the files -----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", OPENAI_JSON)
def test_openai_json_is_a_chat_completion(scenario: str) -> None:
    body, completion = openai_json(scenario)

    assert_known_fields(completion, scenario)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["logprobs"] is None
    if scenario.startswith("openai_compatible"):
        return
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "service_tier",
        "system_fingerprint",
    }
    assert body["service_tier"] == "default"
    assert body["system_fingerprint"].startswith("fp_")
    message = choice["message"]
    assert message["annotations"] == []
    assert set(message) == {"role", "content", "refusal", "annotations"} | (
        {"tool_calls"} if "tool_calls" in message else set()
    )
    for call in message.get("tool_calls", ()):
        assert call["id"].startswith("call_")
        assert len(call["id"]) == 29
    if message.get("tool_calls") or message["refusal"] is not None:
        assert message["content"] is None
    else:
        assert message["refusal"] is None


@pytest.mark.parametrize("scenario", OPENAI_SSE)
def test_openai_sse_is_chat_completion_chunks(scenario: str) -> None:
    payloads, chunks = openai_chunks(scenario)

    for chunk in chunks:
        assert_known_fields(chunk, scenario)
    first, *_, finish, last = payloads
    assert {(p["id"], p["created"], p["model"]) for p in payloads} == {
        (first["id"], first["created"], first["model"])
    }
    assert first["choices"][0]["delta"]["role"] == "assistant"
    finishing = [p for p in payloads if p["choices"] and p["choices"][0]["finish_reason"]]
    assert finishing == [finish], "one chunk carries finish_reason, just before the usage"
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] > 0
    assert all(p.get("usage") is None for p in payloads[:-1])
    if not scenario.startswith("openai_compatible"):
        assert all("usage" in p and p["obfuscation"] for p in payloads)
        assert all(p["choices"][0]["logprobs"] is None for p in payloads[:-1])
        assert finish["choices"][0]["delta"] == {}


def tool_deltas(scenario: str) -> list[dict[str, Any]]:
    payloads, _ = openai_chunks(scenario)
    return [
        call
        for p in payloads
        for choice in p["choices"]
        for call in choice["delta"].get("tool_calls", ())
    ]


def cuts_inside_a_string(fragments: Sequence[str]) -> bool:
    text = ""
    for fragment in fragments[:-1]:
        text += fragment
        if text.count('"') % 2 == 1 and not text.endswith('"'):
            return True
    return False


@pytest.mark.parametrize("scenario", ["tool_call", "parallel_tool_calls", "truncated_tool_args"])
def test_openai_tool_call_stream_has_openai_delta_shapes(scenario: str) -> None:
    seen: set[int] = set()
    fragments: dict[int, list[str]] = {}
    for delta in tool_deltas(scenario):
        index = delta["index"]
        if index not in seen:  # the call's first delta: everything but the arguments
            assert index == len(seen)
            seen.add(index)
            assert set(delta) == {"index", "id", "type", "function"}
            assert delta["type"] == "function"
            assert delta["id"].startswith("call_")
            assert delta["function"] == {"name": "get_weather", "arguments": ""}
            fragments[index] = []
        else:
            assert set(delta) == {"index", "function"}
            assert set(delta["function"]) == {"arguments"}
            fragments[index].append(delta["function"]["arguments"])
    for frags in fragments.values():
        assert len(frags) >= 4
        assert cuts_inside_a_string(frags)


def test_openai_compatible_index0_tells_calls_apart_only_by_id() -> None:
    deltas = tool_deltas("openai_compatible_index0")

    assert {d["index"] for d in deltas} == {0}
    starts = [d for d in deltas if "id" in d]
    assert [d["id"] for d in starts] == [VLLM_WEATHER, VLLM_TIME]
    assert starts[1]["function"] == {"name": "get_current_time", "arguments": ""}


def test_openai_compatible_noid_has_indexes_and_no_ids() -> None:
    deltas = tool_deltas("openai_compatible_noid")

    assert [d["index"] for d in deltas if "type" in d] == [0, 1]
    assert all("id" not in d for d in deltas)


@pytest.mark.parametrize("scenario", OPENAI_SSE)
def test_openai_stream_and_json_describe_the_same_answer(scenario: str) -> None:
    streamed = openai_stream_answer(openai_chunks(scenario)[1])

    assert_answer(streamed, "openai", scenario, raw=True)
    if scenario in OPENAI_JSON:
        assert_answer(openai_answer(openai_json(scenario)[1]), "openai", scenario, raw=True)


# --- Anthropic: the files --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ANTHROPIC)
def test_anthropic_json_is_a_message(scenario: str) -> None:
    body, message = anthropic_json(scenario)

    assert_known_fields(message, scenario)
    assert message.id.startswith("msg_01")
    assert len(message.id) == 28
    assert set(body) == {
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    } | ({"stop_details"} if scenario == "refusal" else set())
    assert body["stop_sequence"] is None
    assert set(body["usage"]) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "output_tokens",
        "service_tier",
    }
    assert body["usage"]["service_tier"] == "standard"
    for block in message.content:
        if isinstance(block, ToolUseBlock):
            assert block.id.startswith("toolu_01")
            assert len(block.id) == 30


@pytest.mark.parametrize("scenario", ANTHROPIC)
def test_anthropic_sse_is_the_message_event_grammar(scenario: str) -> None:
    payloads, events = anthropic_events(scenario)

    for event in events:
        assert_known_fields(event, scenario)
    kinds = [p["type"] for p in payloads]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    start = payloads[0]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert set(start["usage"]) == set(anthropic_json(scenario)[0]["usage"])
    # Content blocks, one after the other: start, deltas, stop, at indexes 0, 1, ...
    index = -1
    open_block: dict[str, Any] | None = None
    first_delta = False
    for payload in payloads[1:-2]:
        if payload["type"] == "content_block_start":
            assert open_block is None
            assert payload["index"] == index + 1
            index, open_block, first_delta = payload["index"], payload["content_block"], True
            if open_block["type"] == "text":
                assert open_block == {"type": "text", "text": ""}
            else:
                assert set(open_block) == {"type", "id", "name", "input"}
                assert open_block["input"] == {}
        elif payload["type"] == "content_block_delta":
            assert open_block is not None
            assert payload["index"] == index
            delta = payload["delta"]
            if open_block["type"] == "text":
                assert delta["type"] == "text_delta"
            else:
                assert delta["type"] == "input_json_delta"
                if first_delta:  # as Anthropic really sends it
                    assert delta["partial_json"] == ""
            first_delta = False
        else:
            assert payload == {"type": "content_block_stop", "index": index}
            open_block = None
    assert open_block is None
    usage = payloads[-2]["usage"]
    assert set(usage) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }


@pytest.mark.parametrize("scenario", ANTHROPIC)
def test_anthropic_stream_and_json_describe_the_same_answer(scenario: str) -> None:
    streamed = anthropic_stream_answer(anthropic_events(scenario)[1])

    assert_answer(streamed, "anthropic", scenario, raw=True)
    assert_answer(anthropic_answer(anthropic_json(scenario)[1]), "anthropic", scenario)


def test_anthropic_tool_call_answer_starts_with_text_then_the_tool() -> None:
    _, message = anthropic_json("tool_call")

    assert [block.type for block in message.content] == ["text", "tool_use"]


def test_structured_output_text_is_the_json_document() -> None:
    for api in ("openai", "anthropic"):
        text = EXPECTED[api, "structured_output"].text
        assert text is not None
        assert json.loads(text) == {
            "name": "Ada Lovelace",
            "born": 1815,
            "fields": ["mathematics", "computing"],
        }


# --- Replay over HTTP, read by the official SDKs -------------------------------------------


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


@pytest.mark.parametrize("scenario", OPENAI_JSON)
async def test_openai_sdk_reads_replayed_completion(
    up: FakeUpstream, oai: openai.AsyncOpenAI, scenario: str
) -> None:
    up.script("gpt-4o", Replay(scenario))

    completion = await oai.chat.completions.create(model="gpt-4o", messages=USER)

    assert_answer(openai_answer(completion), "openai", scenario, raw=True)


@pytest.mark.parametrize("scenario", OPENAI_SSE)
async def test_openai_sdk_reads_replayed_stream(
    up: FakeUpstream, oai: openai.AsyncOpenAI, scenario: str
) -> None:
    up.script("gpt-4o", Replay(scenario))

    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert_answer(openai_stream_answer(chunks), "openai", scenario, raw=True)


# The SDK's accumulator keys calls by index alone: it would merge the two index-0 calls of
# openai_compatible_index0 into one (ids and names concatenated).
@pytest.mark.parametrize("scenario", [s for s in OPENAI_SSE if s != "openai_compatible_index0"])
async def test_openai_sdk_stream_accumulator_rebuilds_replayed_answer(
    up: FakeUpstream, oai: openai.AsyncOpenAI, scenario: str
) -> None:
    up.script("gpt-4o", Replay(scenario))

    async with oai.chat.completions.stream(
        model="gpt-4o", messages=USER, stream_options={"include_usage": True}
    ) as stream:
        async for _ in stream:
            pass
        # get_final_completion() raises LengthFinishReasonError for finish_reason "length".
        snapshot = stream.current_completion_snapshot

    assert_answer(openai_answer(snapshot), "openai", scenario, raw=True)


@pytest.mark.parametrize("scenario", ANTHROPIC)
async def test_anthropic_sdk_reads_replayed_message(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic, scenario: str
) -> None:
    up.script("claude-test", Replay(scenario))

    message = await ant.messages.create(model="claude-test", max_tokens=1024, messages=A_USER)

    assert_answer(anthropic_answer(message), "anthropic", scenario)


@pytest.mark.parametrize("scenario", ANTHROPIC)
async def test_anthropic_sdk_stream_accumulator_rebuilds_replayed_message(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic, scenario: str
) -> None:
    up.script("claude-test", Replay(scenario))

    async with ant.messages.stream(model="claude-test", max_tokens=1024, messages=A_USER) as stream:
        message = await stream.get_final_message()

    assert_answer(anthropic_answer(message), "anthropic", scenario)


async def test_anthropic_sdk_raw_stream_events_are_the_recording(
    up: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    up.script("claude-test", Replay("parallel_tool_calls"))

    stream = await ant.messages.create(
        model="claude-test", max_tokens=1024, messages=A_USER, stream=True
    )
    events = [event async for event in stream]

    assert events == anthropic_events("parallel_tool_calls")[1]
    assert_answer(anthropic_stream_answer(events), "anthropic", "parallel_tool_calls", raw=True)


# --- Replay: the bytes, the pacing, the failures ---------------------------------------------


async def post(
    up: FakeUpstream, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(up.base_url + path, json=body) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("api", "path", "id_header"),
    [
        ("openai", "/v1/chat/completions", "x-request-id"),
        ("anthropic", "/v1/messages", "request-id"),
    ],
)
async def test_replay_sends_the_recording_byte_for_byte(
    up: FakeUpstream, api: Api, path: str, id_header: str, stream: bool
) -> None:
    up.script_any(Replay("tool_call"))
    body: dict[str, Any] = {"model": "any", "max_tokens": 50, "messages": USER}
    if stream:
        body["stream"] = True

    status, headers, raw = await post(up, path, body)

    assert status == 200
    assert raw == recorded_body(api, "tool_call", stream=stream)
    expected_type = "text/event-stream" if stream else "application/json"
    assert headers["content-type"].startswith(expected_type)
    assert headers[id_header].startswith("req_")
    assert up.requests[0].api == api


async def test_replay_paces_the_stream_event_by_event(up: FakeUpstream) -> None:
    up.script("gpt-4o", Replay("tool_result_answer", chunk_delay_s=0.01))
    expected = recorded_body("openai", "tool_result_answer", stream=True)
    events = sse_events(expected)
    body = {"model": "gpt-4o", "messages": USER, "stream": True}

    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(up.base_url + "/v1/chat/completions", json=body) as resp,
    ):
        reads = [data async for data in resp.content.iter_any()]
    elapsed = time.monotonic() - started

    assert b"".join(reads) == expected
    assert len(reads) > 1
    assert elapsed >= (len(events) - 1) * 0.01 * 0.9


async def test_replay_uses_the_servers_chunk_delay(up: FakeUpstream) -> None:
    up.chunk_delay_s = 0.005
    up.script("claude", Replay("tool_result_answer"))
    events = sse_events(recorded_body("anthropic", "tool_result_answer", stream=True))
    body = {"model": "claude", "max_tokens": 50, "messages": A_USER, "stream": True}

    started = time.monotonic()
    _, _, raw = await post(up, "/v1/messages", body)

    assert raw == b"".join(events)
    assert time.monotonic() - started >= (len(events) - 1) * 0.005 * 0.9


async def test_replay_notes_a_client_that_goes_away_mid_stream(up: FakeUpstream) -> None:
    up.script("gpt-4o", Replay("prompt_caching", chunk_delay_s=0.05))
    body = {"model": "gpt-4o", "messages": USER, "stream": True}

    async with (
        aiohttp.ClientSession() as session,
        session.post(up.base_url + "/v1/chat/completions", json=body) as resp,
    ):
        first = await resp.content.readuntil(b"\n\n")
        resp.close()

    assert first.startswith(b"data: {")
    assert await up.wait_for_disconnects(1)
    assert up.requests[0].disconnected


@pytest.mark.parametrize(
    ("path", "scenario", "stream", "missing"),
    [
        (
            "/v1/messages",
            "openai_compatible_index0",
            True,
            "anthropic/openai_compatible_index0.sse",
        ),
        (
            "/v1/chat/completions",
            "openai_compatible_noid",
            False,
            "openai/openai_compatible_noid.json",
        ),
    ],
)
async def test_replay_without_a_recording_for_the_request_is_a_500(
    up: FakeUpstream, path: str, scenario: str, stream: bool, missing: str
) -> None:
    up.script_any(Replay(scenario))
    body = {"model": "m", "max_tokens": 50, "messages": USER, "stream": stream}

    status, _, raw = await post(up, path, body)

    assert status == 500
    assert missing in json.loads(raw)["error"]["message"]


def test_replay_of_an_unknown_scenario_fails_when_scripted() -> None:
    with pytest.raises(ValueError, match="no recording"):
        Replay("no_such_scenario")
    with pytest.raises(ValueError, match="not a recorded scenario name"):
        Replay("../openai/tool_call")
