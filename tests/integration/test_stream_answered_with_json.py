"""A streaming request answered with one whole JSON completion (a server that ignores
``stream``, as LiteLLM's Anthropic-compatible endpoint does for mocked models) is relayed
to the caller as one delta and then the result, for every HTTP provider format."""

from __future__ import annotations

import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.upstream import FakeUpstream, IgnoreStream

TEXT = "Paris is the capital of France."


@pytest.mark.parametrize(
    ("route", "provider", "model"),
    [
        ("gpt", "openai", "gpt-4o-mini"),
        ("claude", "anthropic", "claude-haiku"),
        ("llama", "compat", "llama-3"),
    ],
)
async def test_json_answer_to_a_stream_is_one_delta_then_the_result(
    upstream: FakeUpstream, route: str, provider: str, model: str
) -> None:
    upstream.script(model, IgnoreStream(text=TEXT))
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        events = [
            event
            async for event in gw.stub.StreamComplete(
                pb.StreamCompleteRequest(model=route, messages=[user("Capital?")], max_tokens=50),
                timeout=10,
            )
        ]
        record = await gw.ledger.wait_for(events[-1].result.request_id)
    assert upstream.requests[-1].stream is True  # it was asked to stream, and did not
    assert [e.WhichOneof("event") for e in events] == ["delta", "result"]
    assert events[0].delta.text == TEXT
    result = events[1].result
    assert result.content == TEXT
    assert result.finish_reason == pb.FINISH_REASON_STOP
    assert result.provider == provider
    assert [a.outcome for a in result.attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    # usage from the JSON body: 2 words + 3 per message; 6 words produced
    assert (result.usage.input_token_count, result.usage.output_token_count) == (4, 6)
    assert record.outcome == "success"
