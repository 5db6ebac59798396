"""Unary and streaming calls through each provider, against the fake upstream over HTTP."""

from __future__ import annotations

from typing import get_args

import pytest
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway_server.providers.http import HttpTransportName

from tests.support.configs import ANTHROPIC_KEY, ENV, OPENAI_KEY, providers_config
from tests.support.gateway import running_gateway, system, user
from tests.support.upstream import FakeUpstream, Respond


async def _stream(gw, route: str, messages, **kw) -> tuple[list[str], pb.Completion]:  # type: ignore[no-untyped-def]
    deltas: list[str] = []
    result = None
    async for event in gw.stub.StreamComplete(
        pb.StreamCompleteRequest(model=route, messages=messages, **kw), timeout=10
    ):
        if event.HasField("delta"):
            assert result is None, "no delta may follow the result"
            deltas.append(event.delta.text)
        else:
            assert result is None, "the result is sent exactly once"
            result = event.result
    assert result is not None, "a stream ends with a result"
    return deltas, result


@pytest.mark.parametrize(
    ("route", "provider", "model"),
    [
        ("gpt", "openai", "gpt-4o-mini"),
        ("claude", "anthropic", "claude-haiku"),
        ("llama", "compat", "llama-3"),
    ],
)
async def test_unary_completion_through_each_http_provider(
    upstream: FakeUpstream, route: str, provider: str, model: str
) -> None:
    upstream.script(model, Respond(text="Paris is the capital.", input_tokens=21, output_tokens=5))
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                model=route,
                messages=[system("Be brief."), user("Capital of France?")],
                max_tokens=50,
            ),
            timeout=10,
        )
    c = reply.completion
    assert c.content == "Paris is the capital."
    assert c.finish_reason == pb.FINISH_REASON_STOP
    assert (c.usage.input_token_count, c.usage.output_token_count) == (21, 5)
    assert c.provider == provider
    assert c.upstream_model == model
    assert [a.outcome for a in c.attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    assert upstream.request_count(model) == 1


async def test_streaming_relays_deltas_then_one_result_with_usage_openai(
    upstream: FakeUpstream,
) -> None:
    upstream.script(
        "gpt-4o-mini",
        Respond(text="one two three four", chunks=4, input_tokens=10, output_tokens=4),
    )
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        deltas, result = await _stream(gw, "gpt", [user("count")])
    assert "".join(deltas) == "one two three four"
    assert len(deltas) == 4
    assert result.content == "one two three four"
    assert (result.usage.input_token_count, result.usage.output_token_count) == (10, 4)
    body = upstream.requests[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_streaming_through_anthropic_parses_typed_events(upstream: FakeUpstream) -> None:
    upstream.script(
        "claude-haiku", Respond(text="alpha beta gamma", chunks=3, input_tokens=30, output_tokens=3)
    )
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        deltas, result = await _stream(gw, "claude", [system("sys prompt"), user("hi")])
    assert "".join(deltas) == "alpha beta gamma"
    assert (result.usage.input_token_count, result.usage.output_token_count) == (30, 3)
    assert result.finish_reason == pb.FINISH_REASON_STOP


async def test_streaming_through_openai_compatible_server(upstream: FakeUpstream) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        deltas, result = await _stream(gw, "llama", [user("hello vllm")])
    assert "".join(deltas) == "Echo: hello vllm"
    assert result.provider == "compat"


async def test_mock_provider_streams_offline_without_any_upstream() -> None:
    async with running_gateway(providers_config("http://127.0.0.1:9"), env=ENV) as gw:
        deltas, result = await _stream(gw, "echo", [user("ping")], max_tokens=100)
    assert "".join(deltas) == result.content
    assert result.content.endswith("You said: ping")
    assert result.usage.output_token_count == len(result.content.split())


async def test_cost_is_exact_nano_usd_from_the_reported_usage(upstream: FakeUpstream) -> None:
    upstream.script(
        "gpt-4o-mini",
        Respond(
            text="ok", input_tokens=1_000_000 + 1000, output_tokens=1000, cached_input_tokens=1000
        ),
    )
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(model="gpt", messages=[user("x")], max_tokens=2000), timeout=10
        )
    usage, cost = reply.completion.usage, reply.completion.cost
    # OpenAI's prompt_tokens includes cached tokens; the gateway bills them separately.
    assert (usage.input_token_count, usage.cached_input_token_count) == (1_000_000, 1000)
    assert cost.input_nano_usd == 150_000_000 + 75_000  # $0.15/M + 1000 x $0.075/M
    assert cost.output_nano_usd == 600_000  # 1000 x $0.60/M
    assert cost.total_nano_usd == cost.input_nano_usd + cost.output_nano_usd
    assert cost.price_version == "openai-test"


async def test_wire_formats_carry_keys_and_fields_each_provider_expects(
    upstream: FakeUpstream,
) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        for route in ("gpt", "claude", "llama"):
            await gw.stub.Complete(
                pb.CompleteRequest(
                    model=route,
                    messages=[system("rules"), user("hi")],
                    max_tokens=7,
                    temperature=0.5,
                    stop=["END"],
                ),
                timeout=10,
            )
    openai_req, anthropic_req, compat_req = upstream.requests
    assert openai_req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert openai_req.body["messages"][0] == {"role": "system", "content": "rules"}
    assert openai_req.body["max_tokens"] == 7
    assert openai_req.body["stop"] == ["END"]
    assert anthropic_req.path == "/v1/messages"
    assert anthropic_req.headers["x-api-key"] == ANTHROPIC_KEY
    assert anthropic_req.headers["anthropic-version"] == "2023-06-01"
    assert anthropic_req.body["system"] == "rules"
    assert anthropic_req.body["messages"] == [{"role": "user", "content": "hi"}]
    assert anthropic_req.body["stop_sequences"] == ["END"]
    assert "authorization" not in compat_req.headers  # keyless OpenAI-compatible server


async def test_length_finish_reason_is_reported(upstream: FakeUpstream) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(model="claude", messages=[user("a b c d e f g h")], max_tokens=3),
            timeout=10,
        )
    assert reply.completion.finish_reason == pb.FINISH_REASON_LENGTH
    assert reply.completion.usage.output_token_count == 3


@pytest.mark.parametrize("transport", get_args(HttpTransportName))
async def test_every_http_transport_relays_streams_and_closes_on_cancel(
    upstream: FakeUpstream, transport: str
) -> None:
    text = providers_config(upstream.base_url).replace(
        "default_deadline_s: 30", f"default_deadline_s: 30\n  http_transport: {transport}"
    )
    upstream.script("gpt-4o-mini", Respond(text="a b c", chunks=3))
    upstream.script(
        "gpt-4o-mini", Respond(text=" ".join(["w"] * 100), chunks=100, chunk_delay_s=0.02)
    )
    async with running_gateway(text, env=ENV) as gw:
        deltas, result = await _stream(gw, "gpt", [user("x")])
        assert "".join(deltas) == "a b c"
        assert result.usage.output_token_count == 3
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(model="gpt", messages=[user("y")]), timeout=10
        )
        async for _ in call:
            call.cancel()
            break
        assert await upstream.wait_for_disconnects(1, timeout=2.0)
