"""Tools and images count: in CountTokens, in the cost guard, and in context-window
trimming, which drops a tool call together with its results."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import grpc
import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import error_info, running_gateway, user
from tests.support.upstream import FakeUpstream, Respond

TARGETS = """
  small:
    provider: openai
    model: gpt-4o-mini
    context_window: 400
    price: {input_per_million_usd: "1", output_per_million_usd: "1", version: "small"}
  dear:
    provider: openai
    model: gpt-4o-mini
    context_window: 128000
    price: {input_per_million_usd: "1000", output_per_million_usd: "1000", version: "dear"}
"""
ROUTES = """
  small:
    targets: [small]
    context_policy: trim
  guarded:
    targets: [dear]
    max_cost_usd: "0.5"
"""
SCHEMA = '{"type":"object","properties":{"query":{"type":"string","description":"what"}}}'


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def image_message(width: int, height: int) -> pb.Message:
    return pb.Message(
        role=pb.ROLE_USER,
        parts=[
            pb.ContentPart(text="Describe it."),
            pb.ContentPart(image=pb.Image(data=png(width, height), media_type="image/png")),
        ],
    )


@pytest.fixture
async def gw(upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    config = providers_config(upstream.base_url, targets=TARGETS, routes=ROUTES)
    async with running_gateway(config, env=ENV) as running:
        yield running


async def _count(gw: Any, **fields: Any) -> int:
    reply = await gw.stub.CountTokens(pb.CountTokensRequest(model="gpt", **fields), timeout=10)
    return int(reply.input_token_count)


async def test_count_tokens_counts_tool_definitions_and_images(gw: Any) -> None:
    plain = await _count(gw, messages=[user("Describe it.")])
    with_tool = await _count(
        gw, messages=[user("Describe it.")], tools=[pb.Tool(name="search", parameters=SCHEMA)]
    )
    with_image = await _count(gw, messages=[image_message(1000, 1000)])
    assert with_tool > plain + 10  # the schema's tokens, name and framing
    # A 1000 x 1000 image: the higher of the providers' formulas, 1,334 tokens.
    assert with_image - plain >= 1334


async def test_the_cost_guard_prices_images(upstream: FakeUpstream, gw: Any) -> None:
    upstream.script_any(Respond(text="ok"))
    # $1,000 per million tokens: 1,334 image tokens alone are $1.33, over the $0.50 guard;
    # the same question without the image is not.
    await gw.stub.Complete(
        pb.CompleteRequest(model="guarded", messages=[user("Describe it.")], max_tokens=10),
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(
                model="guarded", messages=[image_message(1000, 1000)], max_tokens=10
            ),
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value)[0] == "COST_LIMIT_EXCEEDED"
    assert upstream.request_count() == 1


def _tool_turn(n: int) -> list[pb.Message]:
    call_id = f"call_{n}"
    return [
        user(f"question {n} " + "padding " * 20),
        pb.Message(
            role=pb.ROLE_ASSISTANT,
            tool_calls=[pb.ToolCall(id=call_id, name="search", arguments='{"query":"x"}')],
        ),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call_id, content="result " * 20),
        pb.Message(role=pb.ROLE_ASSISTANT, content=f"answer {n}"),
    ]


async def test_trimming_drops_a_tool_call_with_its_result(upstream: FakeUpstream, gw: Any) -> None:
    upstream.script_any(Respond(text="ok"))
    messages = [m for n in range(6) for m in _tool_turn(n)] + [user("last question")]
    reply = await gw.stub.Complete(
        pb.CompleteRequest(
            model="small",
            messages=messages,
            max_tokens=50,
            tools=[pb.Tool(name="search", parameters=SCHEMA)],
        ),
        timeout=10,
    )
    trimmed = reply.completion.trimmed_message_count
    assert trimmed > 0
    assert trimmed % 4 == 0, "whole turns only: question, call, result, answer"
    sent = upstream.requests[-1].body["messages"]
    assert sent[-1] == {"role": "user", "content": "last question"}
    call_ids = {c["id"] for m in sent for c in m.get("tool_calls", ())}
    result_ids = {m["tool_call_id"] for m in sent if m["role"] == "tool"}
    assert call_ids == result_ids
    assert call_ids  # some turns were kept
