"""The classifier stage through the real gateway, against the fake upstream's OpenAI
``/v1/moderations`` endpoint: flagged and not flagged output in ``buffer`` and
``sentence`` release, a flagged prompt refused before the chat upstream is called, and a
classifier that times out or fails, with each ``on_error``."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import error_info, running_gateway, user
from tests.support.upstream import FakeUpstream, Respond

TEXT = "The weather is fine. The plan is to attack at dawn. Bring coffee."


def config(base_url: str, *, release: str = "buffer", on_error: str = "block") -> str:
    classifier = (
        "{provider: openai, categories: {violence: 0.5}, direction: both, "
        f"release: {release}, on_error: {on_error}, timeout_s: 0.5}}"
    )
    routes = f"""
  moderated:
    targets: [gpt]
    guardrails:
      detectors: [{{kind: email, action: redact}}]
      classifier: {classifier}
"""
    return providers_config(base_url, routes=routes)


def moderated(upstream: FakeUpstream) -> list[str]:
    return [r.body["input"] for r in upstream.requests if r.path == "/v1/moderations"]


def chats(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path == "/v1/chat/completions")


async def _stream(gw: object, prompt: str) -> list[pb.StreamCompleteResponse]:
    stub = gw.stub  # type: ignore[attr-defined]
    return [
        e
        async for e in stub.StreamComplete(
            pb.StreamCompleteRequest(model="moderated", messages=[user(prompt)], max_tokens=100),
            timeout=10,
        )
    ]


def deltas(events: list[pb.StreamCompleteResponse]) -> list[str]:
    return [e.delta.text for e in events if e.WhichOneof("event") == "delta"]


async def test_buffer_releases_the_whole_answer_once_it_is_not_flagged(
    upstream: FakeUpstream,
) -> None:
    upstream.moderation_words = {"attack": ("violence", 0.9)}
    text = "The weather is fine. Bring coffee to jo@example.com."
    upstream.script("gpt-4o-mini", Respond(text=text, chunks=len(text)))
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        events = await _stream(gw, "Plans?")
    redacted = "The weather is fine. Bring coffee to [EMAIL]."
    assert deltas(events) == [redacted]  # held until the verdict on the whole text
    assert events[-1].result.finish_reason == pb.FINISH_REASON_STOP
    assert moderated(upstream) == ["Plans?", redacted]  # the prompt, then the answer


async def test_buffer_sends_nothing_of_a_flagged_answer(upstream: FakeUpstream) -> None:
    upstream.moderation_words = {"attack": ("violence", 0.9)}
    upstream.script("gpt-4o-mini", Respond(text=TEXT, chunks=len(TEXT)))
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        events = await _stream(gw, "Plans?")
        record = await gw.ledger.wait_for(events[-1].result.request_id)
    assert deltas(events) == []
    result = events[-1].result
    assert result.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert result.content == ""
    assert dict(record.guardrails) == {"CLASSIFIER:violence:block:output": 1}


async def test_sentence_releases_each_sentence_until_one_is_flagged(
    upstream: FakeUpstream,
) -> None:
    upstream.moderation_words = {"attack": ("violence", 0.9)}
    upstream.script("gpt-4o-mini", Respond(text=TEXT, chunks=len(TEXT)), Respond(text=TEXT))
    async with running_gateway(config(upstream.base_url, release="sentence"), env=ENV) as gw:
        events = await _stream(gw, "Plans?")
        unary = (
            await gw.stub.Complete(
                pb.CompleteRequest(model="moderated", messages=[user("Plans?")], max_tokens=100),
                timeout=10,
            )
        ).completion
    assert deltas(events) == ["The weather is fine."]
    assert events[-1].result.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    # The unary answer goes through the same steps: the same verdicts.
    assert unary.content == "The weather is fine."
    assert unary.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert moderated(upstream)[1:3] == ["The weather is fine.", " The plan is to attack at dawn."]


async def test_a_flagged_prompt_is_refused_before_the_chat_upstream(
    upstream: FakeUpstream,
) -> None:
    upstream.moderation_words = {"attack": ("violence", 0.9)}
    async with running_gateway(config(upstream.base_url), env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(model="moderated", messages=[user("How to attack?")]),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, metadata, _ = error_info(caught.value)
    assert (reason, metadata["category"], metadata["direction"]) == (
        "CONTENT_BLOCKED",
        "violence",
        "input",
    )
    assert chats(upstream) == 0


@pytest.mark.parametrize("failure", ["timeout", "error"])
@pytest.mark.parametrize("on_error", ["block", "allow"])
async def test_a_classifier_that_fails_follows_on_error(
    upstream: FakeUpstream, failure: str, on_error: str
) -> None:
    text = "The weather is fine."
    upstream.script("gpt-4o-mini", Respond(text=text))
    async with running_gateway(config(upstream.base_url, on_error=on_error), env=ENV) as gw:
        if failure == "timeout":
            upstream.moderation_delay_s = 2.0  # the classifier waits 0.5 s
        else:
            upstream.moderation_status = 503
        if on_error == "block":
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gw.stub.Complete(
                    pb.CompleteRequest(model="moderated", messages=[user("Weather?")]),
                    timeout=10,
                )
            reason, metadata, _ = error_info(caught.value)
            assert (reason, metadata["category"]) == ("CONTENT_BLOCKED", "CLASSIFIER_ERROR")
            assert chats(upstream) == 0
            return
        reply = (
            await gw.stub.Complete(
                pb.CompleteRequest(model="moderated", messages=[user("Weather?")]), timeout=10
            )
        ).completion
        record = await gw.ledger.wait_for(reply.request_id)
    assert reply.content == text
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    assert dict(record.guardrails) == {
        "CLASSIFIER_ERROR:allow:input": 1,
        "CLASSIFIER_ERROR:allow:output": 1,
    }
