"""Guardrails through the real gateway and the fake OpenAI/Anthropic upstream: an entity
split across SSE events (one character each) is redacted in the stream exactly as in the
unary answer; a blocked stream delivers the text before the entity, closes the upstream
request and ends with CONTENT_FILTER, billed for what the upstream produced; a blocked
prompt never reaches the upstream; a redacted prompt is what the upstream is sent. No
matched text appears in any error, record or log line."""

from __future__ import annotations

import logging

import grpc
import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import error_info, running_gateway, user
from tests.support.upstream import FakeUpstream, Respond

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"

ROUTES = """
  guarded-gpt:
    targets: [gpt]
    guardrails: &rails
      detectors:
        - {kind: email, action: redact}
        - {kind: card, action: block}
        - {kind: keywords, label: PROJECT, words: [bluebird], action: block, direction: input}
  guarded-claude:
    targets: [claude]
    guardrails: *rails
"""

MODELS = [("guarded-gpt", "gpt-4o-mini"), ("guarded-claude", "claude-haiku")]


def config(base_url: str) -> str:
    return providers_config(base_url, routes=ROUTES)


async def _stream(gw: object, route: str, prompt: str) -> list[pb.StreamCompleteResponse]:
    stub = gw.stub  # type: ignore[attr-defined]
    return [
        event
        async for event in stub.StreamComplete(
            pb.StreamCompleteRequest(model=route, messages=[user(prompt)], max_tokens=200),
            timeout=10,
        )
    ]


@pytest.mark.parametrize(("route", "model"), MODELS)
async def test_an_entity_split_across_events_is_redacted_as_in_the_unary_answer(
    upstream: FakeUpstream, route: str, model: str
) -> None:
    text = f"Write to {EMAIL} today, or to {EMAIL}."
    upstream.script(model, Respond(text=text, chunks=len(text)), Respond(text=text))
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        events = await _stream(gw, route, "Who?")
        unary = (
            await gw.stub.Complete(
                pb.CompleteRequest(model=route, messages=[user("Who?")], max_tokens=200),
                timeout=10,
            )
        ).completion
        record = await gw.ledger.wait_for(events[-1].result.request_id)
    assert upstream.requests[0].stream is True
    deltas = [e.delta.text for e in events if e.WhichOneof("event") == "delta"]
    assert len(deltas) > 2  # released as it went, not all at the end
    streamed = "".join(deltas)
    assert streamed == unary.content == "Write to [EMAIL] today, or to [EMAIL]."
    result = events[-1].result
    assert result.content == streamed
    assert result.finish_reason == unary.finish_reason == pb.FINISH_REASON_STOP
    assert dict(record.guardrails) == {"EMAIL:redact:output": 2}


@pytest.mark.parametrize(("route", "model"), MODELS)
async def test_a_blocked_stream_stops_the_upstream_and_ends_with_content_filter(
    upstream: FakeUpstream, route: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = "Sure, the card on file is "
    text = before + CARD + " and it expires soon." + " More text follows." * 20
    upstream.script(model, Respond(text=text, chunks=len(text), chunk_delay_s=0.002))
    caplog.set_level(logging.DEBUG)
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        events = await _stream(gw, route, "Card?")
        record = await gw.ledger.wait_for(events[-1].result.request_id)
        assert await upstream.wait_until(lambda: upstream.requests[0].disconnected, timeout=2)
    streamed = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    assert streamed == before  # the text before the entity, not one digit of it
    assert [e.WhichOneof("event") for e in events][-1] == "result"
    result = events[-1].result
    assert result.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert result.content == before
    # Billed for what the upstream produced before it was cut (estimated, marked so).
    assert result.usage.output_token_count > 0
    assert record.finish_reason == "content_filter"
    assert record.output_tokens > 0
    assert record.usage_estimated
    assert dict(record.guardrails) == {"CARD:block:output": 1}
    assert "4111" not in caplog.text


@pytest.mark.parametrize(("route", "model"), MODELS)
async def test_a_unary_answer_with_a_blocked_entity_ends_before_it(
    upstream: FakeUpstream, route: str, model: str
) -> None:
    upstream.script(model, Respond(text=f"Mail {EMAIL}, card {CARD}, done."))
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        reply = (
            await gw.stub.Complete(
                pb.CompleteRequest(model=route, messages=[user("Card?")], max_tokens=200),
                timeout=10,
            )
        ).completion
    assert reply.content == "Mail [EMAIL], card "
    assert reply.finish_reason == pb.FINISH_REASON_CONTENT_FILTER


async def test_a_blocked_prompt_never_reaches_the_upstream(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        for prompt in ("Tell me about Project Bluebird.", f"Charge {CARD} please."):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gw.stub.Complete(
                    pb.CompleteRequest(model="guarded-gpt", messages=[user(prompt)]), timeout=10
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            reason, metadata, _ = error_info(caught.value)
            assert reason == "CONTENT_BLOCKED"
            assert metadata["direction"] == "input"
            assert metadata["category"] in ("PROJECT", "CARD")
            assert "luebird" not in str(caught.value.details())
            assert "4111" not in str(caught.value.trailing_metadata())
        records = list(gw.ledger.records)
    assert upstream.request_count() == 0
    assert [dict(r.guardrails) for r in records] == [
        {"PROJECT:block:input": 1},
        {"CARD:block:input": 1},
    ]
    assert "luebird" not in caplog.text
    assert "4111" not in caplog.text


async def test_a_redacted_prompt_is_what_the_upstream_is_sent_and_counted(
    upstream: FakeUpstream,
) -> None:
    upstream.script("gpt-4o-mini", Respond(text="Noted."))
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        reply = (
            await gw.stub.Complete(
                pb.CompleteRequest(model="guarded-gpt", messages=[user(f"My mail is {EMAIL}")]),
                timeout=10,
            )
        ).completion
    sent = upstream.requests[0].body["messages"][-1]["content"]
    assert sent == "My mail is [EMAIL]"
    assert reply.content == "Noted."
    # The fake upstream counts words; the gateway's own bound was taken on the same text.
    assert reply.usage.input_token_count == len(sent.split()) + 3
