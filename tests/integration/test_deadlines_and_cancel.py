"""The caller's deadline bounds the call, and a caller that goes away closes the upstream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import error_info, running_gateway, user
from tests.support.upstream import FakeUpstream, Hang, Respond


@pytest.mark.parametrize(("route", "model"), [("gpt", "gpt-4o-mini"), ("claude", "claude-haiku")])
async def test_deadline_against_hanging_upstream_closes_the_upstream_connection(
    upstream: FakeUpstream, route: str, model: str
) -> None:
    upstream.set_default(model, Hang())
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.Complete(
                pb.CompleteRequest(model=route, messages=[user("x")], request_id="r-dl"),
                timeout=0.5,
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 2.0
        assert await upstream.wait_for_disconnects(1, timeout=2.0), (
            "the upstream request was left open"
        )
        record = await gw.ledger.wait_for("r-dl")
        assert record.outcome == "deadline_exceeded"


async def test_deadline_while_streaming_ends_with_deadline_exceeded(upstream: FakeUpstream) -> None:
    upstream.set_default("gpt-4o-mini", Hang())
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in gw.stub.StreamComplete(
                pb.StreamCompleteRequest(model="gpt", messages=[user("x")]), timeout=0.5
            ):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await upstream.wait_for_disconnects(1, timeout=2.0)


async def test_gateway_deadline_error_carries_reason_when_it_fires_first(
    upstream: FakeUpstream,
) -> None:
    # The server's own default deadline (no client deadline) ends the call cleanly.
    upstream.set_default("gpt-4o-mini", Hang())
    text = providers_config(upstream.base_url).replace(
        "default_deadline_s: 30", "default_deadline_s: 0.3"
    )
    async with running_gateway(text, env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.Complete(pb.CompleteRequest(model="gpt", messages=[user("x")]))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_info(info.value)[0] == "DEADLINE_EXCEEDED"
        assert await upstream.wait_for_disconnects(1, timeout=2.0)


async def _collect_deltas(call: object, deltas: list[str]) -> None:
    async for event in call:  # type: ignore[attr-defined]
        deltas.append(event.delta.text)


@pytest.mark.parametrize(("route", "model"), [("gpt", "gpt-4o-mini"), ("claude", "claude-haiku")])
async def test_route_timeout_cuts_a_stream_that_stalls_after_its_first_chunk(
    upstream: FakeUpstream, route: str, model: str
) -> None:
    # The first chunk comes at once, the next one only after 30 s: the route's 0.5 s
    # attempt timeout (not the caller's 10 s deadline) ends the call, and the upstream
    # stream is closed rather than left to trickle on.
    upstream.script(model, Respond(text="first second third", chunks=3, chunk_delay_s=30))
    routes = f"  {route}-bounded:\n    targets: [{route}]\n    timeout_s: 0.5\n"
    async with running_gateway(providers_config(upstream.base_url, routes=routes), env=ENV) as gw:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deltas: list[str] = []
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                model=f"{route}-bounded", messages=[user("x")], request_id="r-stall"
            ),
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _collect_deltas(call, deltas)
        elapsed = loop.time() - started
        assert await upstream.wait_for_disconnects(1, timeout=2.0), (
            "the stalled stream was left open"
        )
        record = await gw.ledger.wait_for("r-stall")
    assert deltas == ["first"]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no fallback after a delta
    assert 0.4 < elapsed < 5.0
    assert record.outcome == "failed"
    assert record.output_tokens > 0, "what was relayed is billed"


@pytest.mark.parametrize(("route", "model"), [("gpt", "gpt-4o-mini"), ("claude", "claude-haiku")])
async def test_client_cancel_mid_stream_closes_upstream_and_bills_what_was_produced(
    upstream: FakeUpstream, route: str, model: str
) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    upstream.script(model, Respond(text=words, chunks=200, chunk_delay_s=0.02))
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(model=route, messages=[user("go")], request_id="r-cancel"),
            timeout=10,
        )
        received = 0
        async for event in call:
            received += event.HasField("delta")
            if received == 5:
                call.cancel()
                break
        assert await upstream.wait_for_disconnects(1, timeout=2.0), (
            "the upstream stream was left open"
        )
        record = await gw.ledger.wait_for("r-cancel")
        assert record.outcome == "cancelled"
        assert record.usage_estimated
        assert record.output_tokens >= 5
        assert record.input_tokens > 0
        assert record.cost_nano_usd > 0
        assert record.time_to_first_token_s is not None
