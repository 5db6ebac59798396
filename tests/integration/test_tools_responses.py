"""Recorded OpenAI and Anthropic answers (tests/data/recorded/) replayed through the
gateway, unary and streaming: tool calls, parallel calls, structured output, refusals,
images, prompt caching and truncation come out in the gateway's neutral shape, with the
gateway's own tool-call ids and exact costs; a stream's deltas add up to its result."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import RunningGateway, running_gateway, user
from tests.support.upstream import Error, FakeUpstream, Replay

GATEWAY_ID = re.compile(r"call_[0-9a-f]{24}")
WEATHER = pb.Tool(
    name="get_weather",
    parameters='{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string"}}}',
)
# Prices for the cost checks: Anthropic-style cache writes, a reasoning model.
TARGETS = """
  claude-cache:
    provider: anthropic
    model: claude-haiku
    context_window: 200000
    price:
      input_per_million_usd: "1"
      output_per_million_usd: "5"
      cached_input_per_million_usd: "0.10"
      cache_write_5m_per_million_usd: "1.25"
      cache_write_1h_per_million_usd: "2"
      version: "claude-cache-test"
"""
ROUTES = """
  claude-cache:
    targets: [claude-cache]
  chain:
    targets: [gpt, claude]
    retry: {max_attempts: 1}
"""


class Outcome:
    """A call's completion and, for streams, what its deltas added up to."""

    def __init__(self, completion: pb.Completion, deltas: list[pb.Delta]) -> None:
        self.completion = completion
        self.deltas = deltas

    def streamed_text(self) -> str:
        return "".join(d.text for d in self.deltas)

    def streamed_refusal(self) -> str:
        return "".join(d.refusal for d in self.deltas)

    def streamed_calls(self) -> list[dict[str, str]]:
        calls: dict[int, dict[str, str]] = {}
        for d in self.deltas:
            if not d.HasField("tool_call"):
                continue
            fragment = d.tool_call
            if fragment.index not in calls:
                assert fragment.id, "the first fragment of a call carries its id"
                assert fragment.name, "and its name"
                calls[fragment.index] = {"id": fragment.id, "name": fragment.name, "arguments": ""}
            else:
                assert not fragment.id, "only the first fragment carries the id"
            calls[fragment.index]["arguments"] += fragment.arguments
        assert sorted(calls) == list(range(len(calls))), "indexes count from 0 in order"
        return [calls[i] for i in sorted(calls)]


async def _call(gw: RunningGateway, route: str, streaming: bool, **fields: Any) -> Outcome:
    stub: Any = gw.stub
    fields.setdefault("messages", [user("What's the weather in Paris?")])
    fields.setdefault("max_tokens", 500)
    if not streaming:
        reply = await stub.Complete(pb.CompleteRequest(model=route, **fields), timeout=10)
        return Outcome(reply.completion, [])
    deltas: list[pb.Delta] = []
    result = None
    async for event in stub.StreamComplete(
        pb.StreamCompleteRequest(model=route, **fields), timeout=10
    ):
        assert result is None, "nothing follows the result"
        if event.HasField("delta"):
            deltas.append(event.delta)
        else:
            result = event.result
    assert result is not None
    outcome = Outcome(result, deltas)
    # A stream's deltas add up to its result.
    assert outcome.streamed_text() == result.content
    assert outcome.streamed_refusal() == result.refusal
    assert outcome.streamed_calls() == [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls
    ]
    return outcome


@pytest.fixture
async def gw(upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    config = providers_config(upstream.base_url, targets=TARGETS, routes=ROUTES)
    async with running_gateway(config, env=ENV) as running:
        yield running


STREAMING = pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
BOTH = pytest.mark.parametrize("route", ["gpt", "claude"])


@STREAMING
@BOTH
async def test_one_tool_call(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("tool_call"))
    c = (await _call(gw, route, streaming, tools=[WEATHER])).completion
    assert c.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    (call,) = c.tool_calls
    assert GATEWAY_ID.fullmatch(call.id), "the gateway's id, never the upstream's"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    assert not call.arguments_invalid
    assert c.content == ("" if route == "gpt" else "I'll check the weather.")
    assert "toolu_" not in str(c)
    assert "call_Xk7m" not in str(c)


@STREAMING
@BOTH
async def test_parallel_tool_calls(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("parallel_tool_calls"))
    c = (await _call(gw, route, streaming, tools=[WEATHER])).completion
    assert c.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [json.loads(t.arguments)["city"] for t in c.tool_calls] == ["Paris", "Tokyo"]
    assert len({t.id for t in c.tool_calls}) == 2


@STREAMING
@BOTH
async def test_tool_result_round_trip_answer(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("tool_call"))
    first = (await _call(gw, route, False, tools=[WEATHER])).completion
    (call,) = first.tool_calls
    upstream.script_any(Replay("tool_result_answer"))
    messages = [
        user("What's the weather in Paris?"),
        pb.Message(role=pb.ROLE_ASSISTANT, content=first.content, tool_calls=[call]),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content='{"temp_c": 18}'),
    ]
    c = (await _call(gw, route, streaming, tools=[WEATHER], messages=messages)).completion
    assert c.content == "It is 18°C in Paris and 24°C in Tokyo."
    assert c.finish_reason == pb.FINISH_REASON_STOP
    # The upstream got the gateway's id back on both the call and its result.
    sent = upstream.requests[-1].body
    assert call.id in json.dumps(sent)
    if route == "claude":
        assert sent["messages"][-1]["content"][0]["tool_use_id"] == call.id
    else:
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call.id,
            "content": '{"temp_c": 18}',
        }


@STREAMING
@BOTH
async def test_structured_output(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("structured_output"))
    fmt = pb.ResponseFormat(
        type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="person", schema='{"type":"object"}'
    )
    c = (await _call(gw, route, streaming, response_format=fmt)).completion
    assert json.loads(c.content) == {
        "name": "Ada Lovelace",
        "born": 1815,
        "fields": ["mathematics", "computing"],
    }
    assert c.finish_reason == pb.FINISH_REASON_STOP


@STREAMING
@BOTH
async def test_refusal(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("refusal"))
    c = (await _call(gw, route, streaming)).completion
    assert c.finish_reason == pb.FINISH_REASON_REFUSAL
    if route == "gpt":
        assert c.refusal == "I'm sorry, I can't help with that."
        assert c.content == ""
    else:  # Anthropic stops with stop_reason "refusal"; the text before it stays content
        assert c.refusal == ""
        assert c.content == "Sure, here's an overview of the process. First,"


@STREAMING
@BOTH
async def test_truncated_json_finishes_as_length(
    upstream: FakeUpstream, gw: RunningGateway, route: str, streaming: bool
) -> None:
    upstream.script_any(Replay("truncated_json"))
    c = (await _call(gw, route, streaming)).completion
    assert c.finish_reason == pb.FINISH_REASON_LENGTH
    assert c.content == '{"name":"Ada Lovel'


@STREAMING
async def test_truncated_tool_arguments_are_delivered_marked_never_fixed(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    upstream.script_any(Replay("truncated_tool_args"))
    c = (await _call(gw, "gpt", streaming, tools=[WEATHER])).completion
    assert c.finish_reason == pb.FINISH_REASON_LENGTH
    (call,) = c.tool_calls
    assert call.arguments == '{"city":"Par'
    assert call.arguments_invalid


async def test_truncated_anthropic_tool_stream_is_marked(
    upstream: FakeUpstream, gw: RunningGateway
) -> None:
    upstream.script_any(Replay("truncated_tool_args"))
    c = (await _call(gw, "claude", True, tools=[WEATHER])).completion
    assert c.finish_reason == pb.FINISH_REASON_LENGTH
    (call,) = c.tool_calls
    assert call.arguments_invalid
    assert call.arguments.replace(" ", "") == '{"city":"Par'


@STREAMING
async def test_image_tokens_reported_by_openai(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    upstream.script_any(Replay("image_prompt"))
    c = (await _call(gw, "gpt", streaming)).completion
    assert c.content == "A red square."
    assert c.usage.input_token_count == 268
    assert c.usage.image_input_token_count == 255
    # gpt: $0.15 in, $0.60 out per million; images at the input price.
    assert c.cost.image_input_nano_usd == 255 * 150
    assert c.cost.input_nano_usd == 268 * 150
    assert c.cost.total_nano_usd == 268 * 150 + 5 * 600


@STREAMING
async def test_openai_cache_reads_and_reasoning_are_priced_exactly(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    upstream.script_any(Replay("prompt_caching"))
    c = (await _call(gw, "gpt", streaming)).completion
    u = c.usage
    # OpenAI's 2,006 prompt tokens include the 1,920 cached; 300 output include 192 reasoning.
    assert (u.input_token_count, u.cached_input_token_count) == (86, 1920)
    assert (u.output_token_count, u.reasoning_token_count) == (300, 192)
    assert u.cache_write_input_token_count == 0
    # By hand, nano-USD: 86 x 150 = 12,900; 1,920 x 75 = 144,000; 108 x 600 = 64,800;
    # reasoning 192 x 600 = 115,200.
    assert c.cost.input_nano_usd == 12_900 + 144_000
    assert c.cost.cache_read_nano_usd == 144_000
    assert c.cost.reasoning_nano_usd == 115_200
    assert c.cost.output_nano_usd == 64_800 + 115_200
    assert c.cost.total_nano_usd == 336_900
    record = gw.ledger.records[-1]
    assert record.cost_nano_usd == 336_900
    assert record.reasoning_tokens == 192


@STREAMING
async def test_anthropic_cache_reads_and_both_write_ttls_are_priced_exactly(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    upstream.script_any(Replay("prompt_caching"))
    c = (await _call(gw, "claude-cache", streaming)).completion
    u = c.usage
    # Anthropic's input_tokens exclude cache reads and writes: nothing to subtract.
    assert (u.input_token_count, u.cached_input_token_count) == (21, 1800)
    assert (u.cache_write_input_token_count, u.cache_write_1h_input_token_count) == (2500, 1000)
    assert u.output_token_count == 120
    # By hand: 21 x 1,000 = 21,000; 1,800 x 100 = 180,000; 1,500 x 1,250 = 1,875,000;
    # 1,000 x 2,000 = 2,000,000; 120 x 5,000 = 600,000.
    assert c.cost.cache_read_nano_usd == 180_000
    assert c.cost.cache_write_5m_nano_usd == 1_875_000
    assert c.cost.cache_write_1h_nano_usd == 2_000_000
    assert c.cost.input_nano_usd == 21_000 + 180_000 + 1_875_000 + 2_000_000
    assert c.cost.output_nano_usd == 600_000
    assert c.cost.total_nano_usd == 4_676_000
    record = gw.ledger.records[-1]
    assert record.cost_nano_usd == 4_676_000
    assert (record.cache_write_tokens, record.cache_write_1h_tokens) == (2500, 1000)


@STREAMING
async def test_openai_compatible_servers_giving_every_call_index_0(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    upstream.script_any(Replay("openai_compatible_index0"))
    c = (await _call(gw, "llama", streaming, tools=[WEATHER])).completion
    assert [(t.name, json.loads(t.arguments)) for t in c.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_current_time", {}),
    ]
    assert c.tool_calls[1].arguments == "{}"
    assert len({t.id for t in c.tool_calls}) == 2


async def test_openai_compatible_servers_giving_no_ids(
    upstream: FakeUpstream, gw: RunningGateway
) -> None:
    upstream.script_any(Replay("openai_compatible_noid"))
    c = (await _call(gw, "llama", True, tools=[WEATHER])).completion
    assert [json.loads(t.arguments)["city"] for t in c.tool_calls] == ["Paris", "Tokyo"]
    assert all(GATEWAY_ID.fullmatch(t.id) for t in c.tool_calls)


@STREAMING
async def test_fallback_from_openai_to_anthropic_in_the_middle_of_a_tool_conversation(
    upstream: FakeUpstream, gw: RunningGateway, streaming: bool
) -> None:
    # The conversation starts on OpenAI, which asks for a tool.
    upstream.script("gpt-4o-mini", Replay("tool_call"))
    first = (await _call(gw, "chain", False, tools=[WEATHER])).completion
    assert first.provider == "openai"
    (call,) = first.tool_calls
    # OpenAI is down for the next turn: Anthropic takes the conversation over.
    upstream.script("gpt-4o-mini", Error(500))
    upstream.script("claude-haiku", Replay("tool_result_answer"))
    messages = [
        user("What's the weather in Paris?"),
        pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[call]),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content="18C"),
    ]
    c = (await _call(gw, "chain", streaming, tools=[WEATHER], messages=messages)).completion
    assert c.provider == "anthropic"
    assert c.content == "It is 18°C in Paris and 24°C in Tokyo."
    assert [a.outcome for a in c.attempts] == [
        pb.ATTEMPT_OUTCOME_TRANSIENT,
        pb.ATTEMPT_OUTCOME_SUCCESS,
    ]
    sent = upstream.requests[-1].body
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": "get_weather",
                    "input": json.loads(call.arguments),
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}],
        },
    ]
