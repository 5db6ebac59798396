"""Retries, circuit breakers, fallback chains, time to first token, the cost guard and
context-window management, against the scripted fake upstream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.clock import FakeClock
from tests.support.configs import ENV
from tests.support.gateway import (
    RunningGateway,
    assistant,
    error_info,
    running_gateway,
    system,
    user,
)
from tests.support.upstream import (
    ContentPolicy,
    ContextTooLong,
    Error,
    FakeUpstream,
    Hang,
    Reset,
    Respond,
    StopMidway,
)

OK = pb.ATTEMPT_OUTCOME_SUCCESS


def chain_config(base_url: str, route_extra: str = "", defaults: str = "") -> str:
    """Route `chain`: gpt-a (small window) -> gpt-b (large window) -> claude-c."""
    return f"""
auth:
  anonymous_tenant: local
defaults:
  retry: {{max_attempts: 3, base_delay_s: 0.05, max_delay_s: 2}}
  circuit_breaker: {{failure_threshold: 3, cooldown_s: 30}}
{defaults}
providers:
  openai:
    type: openai
    base_url: {base_url}/v1
    api_key_env: TEST_OPENAI_KEY
  anthropic:
    type: anthropic
    base_url: {base_url}
    api_key_env: TEST_ANTHROPIC_KEY
targets:
  a:
    provider: openai
    model: gpt-a
    context_window: 2000
    tokenizer: estimate
    price: {{input_per_million_usd: "1", output_per_million_usd: "2", version: p1}}
  b:
    provider: openai
    model: gpt-b
    context_window: 100000
    tokenizer: estimate
    price: {{input_per_million_usd: "10", output_per_million_usd: "30", version: p1}}
  c:
    provider: anthropic
    model: claude-c
    context_window: 200000
    price: {{input_per_million_usd: "3", output_per_million_usd: "15", version: p1}}
routes:
  chain:
    targets: [a, b, c]
    default_max_tokens: 100
{route_extra}
"""


def outcomes(completion: pb.Completion) -> list[tuple[str, int]]:
    return [(a.upstream_model, a.outcome) for a in completion.attempts]


async def complete(
    gw: RunningGateway, *messages: pb.Message, model: str = "chain", **kw: object
) -> pb.Completion:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=list(messages) or [user("hi")], **kw),
        timeout=10,  # type: ignore[arg-type]
    )
    return reply.completion


async def stream(
    gw: RunningGateway, *messages: pb.Message, **kw: object
) -> tuple[str, pb.Completion]:
    text, result = [], None
    async for event in gw.stub.StreamComplete(
        pb.StreamCompleteRequest(model="chain", messages=list(messages) or [user("hi")], **kw),
        timeout=10,  # type: ignore[arg-type]
    ):
        if event.HasField("delta"):
            text.append(event.delta.text)
        else:
            result = event.result
    assert result is not None
    return "".join(text), result


async def test_rate_limited_with_retry_after_is_retried_after_that_wait(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock()
    upstream.script("gpt-a", Error(429, retry_after="1.5"), Respond(text="second try"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=clock) as gw:
        c = await complete(gw)
    assert c.content == "second try"
    assert outcomes(c) == [("gpt-a", pb.ATTEMPT_OUTCOME_RATE_LIMITED), ("gpt-a", OK)]
    assert clock.sleeps == [1.5]
    assert upstream.request_count("gpt-b") == 0


async def test_retry_after_ms_is_honoured(upstream: FakeUpstream) -> None:
    clock = FakeClock()
    upstream.script("gpt-a", Error(429, retry_after_ms="250"), Respond(text="ok"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=clock) as gw:
        await complete(gw)
    assert clock.sleeps == [0.25]


async def test_retry_after_longer_than_the_deadline_falls_back_at_once(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock()
    upstream.script("gpt-a", Error(429, retry_after="60"))
    upstream.script("gpt-b", Respond(text="from b"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=clock) as gw:
        c = await complete(gw)
    assert c.content == "from b"
    assert outcomes(c) == [("gpt-a", pb.ATTEMPT_OUTCOME_RATE_LIMITED), ("gpt-b", OK)]
    assert clock.sleeps == []  # no sleeping past the caller's deadline


async def test_rate_limit_benches_the_target_for_other_requests(upstream: FakeUpstream) -> None:
    clock = FakeClock()
    upstream.script("gpt-a", Error(429, retry_after="60"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=clock) as gw:
        await complete(gw)
        c = await complete(gw)  # a different request, within the 60 s
        assert outcomes(c)[0] == ("gpt-a", pb.ATTEMPT_OUTCOME_CIRCUIT_OPEN)
        assert upstream.request_count("gpt-a") == 1
        clock.advance(61)
        c = await complete(gw)
        assert outcomes(c) == [("gpt-a", OK)]


async def test_server_errors_exhaust_retries_then_the_next_target_serves(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock(random_value=0.5)
    upstream.set_default("gpt-a", Error(500))
    upstream.script("gpt-b", Respond(text="fallback"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=clock) as gw:
        c = await complete(gw, request_id="r-fb")
        record = await gw.ledger.wait_for("r-fb")
    assert c.content == "fallback"
    assert c.upstream_model == "gpt-b"
    assert outcomes(c) == [("gpt-a", pb.ATTEMPT_OUTCOME_TRANSIENT)] * 3 + [("gpt-b", OK)]
    assert upstream.request_count("gpt-a") == 3
    # Full jitter: random x min(cap, base x 2^n) with random = 0.5.
    assert clock.sleeps == [pytest.approx(0.025), pytest.approx(0.05)]
    assert record.attempt_count == 4
    assert record.upstream_model == "gpt-b"


async def test_reset_and_stream_cut_before_any_delta_are_retried(upstream: FakeUpstream) -> None:
    upstream.script("gpt-a", Reset(), StopMidway(after_chunks=0), Respond(text="third time"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=FakeClock()) as gw:
        text, result = await stream(gw)
    assert text == "third time"
    assert [o for _, o in outcomes(result)] == [
        pb.ATTEMPT_OUTCOME_TRANSIENT,
        pb.ATTEMPT_OUTCOME_TRANSIENT,
        OK,
    ]


async def test_everything_down_is_unavailable_listing_every_attempt(upstream: FakeUpstream) -> None:
    upstream.set_default(None, Error(503, retry_after="3"))
    async with running_gateway(chain_config(upstream.base_url), env=ENV, clock=FakeClock()) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    reason, metadata, details = error_info(info.value)
    assert reason == "UPSTREAM_UNAVAILABLE"
    # Retry-After 3 s is over the route's 2 s backoff cap: each target is tried once.
    assert metadata["attempt_count"] == "3"
    assert [metadata[f"attempt_{n}"] for n in (1, 2, 3)] == [
        "openai/gpt-a:TRANSIENT",
        "openai/gpt-b:TRANSIENT",
        "anthropic/claude-c:TRANSIENT",
    ]
    (retry,) = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry.retry_delay.seconds == 3


async def test_breaker_opens_skips_the_dead_target_for_its_cooldown_then_recloses(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock()
    upstream.set_default("gpt-a", Error(500))
    text = chain_config(upstream.base_url, defaults="").replace(
        "max_attempts: 3", "max_attempts: 1"
    )
    async with running_gateway(text, env=ENV, clock=clock) as gw:
        for _ in range(3):  # failure_threshold: 3
            await complete(gw)
        assert upstream.request_count("gpt-a") == 3
        for _ in range(5):
            c = await complete(gw)
            assert outcomes(c)[0] == ("gpt-a", pb.ATTEMPT_OUTCOME_CIRCUIT_OPEN)
            assert c.upstream_model == "gpt-b"
        assert upstream.request_count("gpt-a") == 3, "no requests while the breaker is open"
        clock.advance(29)
        await complete(gw)
        assert upstream.request_count("gpt-a") == 3
        clock.advance(2)  # past the 30 s cooldown: one trial goes through, and succeeds
        upstream.set_default("gpt-a", None)
        c = await complete(gw)
        assert outcomes(c) == [("gpt-a", OK)]
        c = await complete(gw)
        assert outcomes(c) == [("gpt-a", OK)]


PAIR_ROUTE = """  pair:
    targets: [a, b]
    default_max_tokens: 100
"""


async def test_a_call_finding_every_target_benched_waits_for_the_first_to_reopen(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock()
    # Retry-After over the route's 2 s backoff cap: each target is benched and skipped.
    upstream.script("gpt-a", Error(429, retry_after="20"))
    upstream.script("gpt-b", Error(429, retry_after="10"))
    text = chain_config(upstream.base_url, route_extra=PAIR_ROUTE)
    async with running_gateway(text, env=ENV, clock=clock) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await complete(gw, model="pair")
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE  # it made its attempts
        # Both benched, and the first reopens (10 s) past a 5 s deadline: fail now,
        # saying when to come back.
        with pytest.raises(grpc.aio.AioRpcError) as hurried:
            await gw.stub.Complete(
                pb.CompleteRequest(model="pair", messages=[user("hi")]), timeout=5
            )
        assert hurried.value.code() == grpc.StatusCode.UNAVAILABLE
        (retry,) = [
            d for d in error_info(hurried.value)[2] if isinstance(d, error_details_pb2.RetryInfo)
        ]
        assert retry.retry_delay.seconds == 10
        assert clock.sleeps == []
        # Within the deadline: wait for b to reopen, then it serves.
        c = await gw.stub.Complete(
            pb.CompleteRequest(model="pair", messages=[user("hi")]), timeout=30
        )
    assert clock.sleeps == [10.0]
    assert outcomes(c.completion) == [
        ("gpt-a", pb.ATTEMPT_OUTCOME_CIRCUIT_OPEN),
        ("gpt-b", pb.ATTEMPT_OUTCOME_CIRCUIT_OPEN),
        ("gpt-a", pb.ATTEMPT_OUTCOME_CIRCUIT_OPEN),
        ("gpt-b", OK),
    ]
    assert upstream.request_count("gpt-a") == 1


async def test_a_targets_breaker_settings_are_its_own_whichever_route_calls_it(
    upstream: FakeUpstream,
) -> None:
    clock = FakeClock()
    upstream.set_default("gpt-a", Error(500))
    upstream.set_default("gpt-b", Error(500))
    text = (
        chain_config(upstream.base_url, route_extra=PAIR_ROUTE)
        .replace(
            "    model: gpt-a\n", "    model: gpt-a\n    circuit_breaker: {failure_threshold: 1}\n"
        )
        .replace("max_attempts: 3", "max_attempts: 1")
    )
    async with running_gateway(text, env=ENV, clock=clock) as gw:
        c = await complete(gw)  # route chain: a fails once, b fails once, c serves
        assert [o for _, o in outcomes(c)] == [
            pb.ATTEMPT_OUTCOME_TRANSIENT,
            pb.ATTEMPT_OUTCOME_TRANSIENT,
            OK,
        ]
        # Route pair: a's own threshold (1) opened it; b (the default, 3) is still tried.
        with pytest.raises(grpc.aio.AioRpcError):
            await complete(gw, model="pair")
        assert upstream.request_count("gpt-a") == 1
        assert upstream.request_count("gpt-b") == 2


async def test_a_full_local_pool_is_local_saturation_and_never_opens_a_breaker(
    upstream: FakeUpstream,
) -> None:
    # One connection to the OpenAI-format provider, held by a call that hangs: a second
    # call cannot get a connection within its route's 0.5 s, on a or on b (same pool).
    upstream.script("gpt-a", Hang())
    text = (
        chain_config(upstream.base_url)
        .replace(
            "    api_key_env: TEST_OPENAI_KEY",
            "    api_key_env: TEST_OPENAI_KEY\n    max_connections: 1",
        )
        .replace(
            "    model: gpt-a\n", "    model: gpt-a\n    circuit_breaker: {failure_threshold: 1}\n"
        )
        .replace(
            "    default_max_tokens: 100\n", "    default_max_tokens: 100\n    timeout_s: 0.5\n", 1
        )
    )
    text += """  slow:
    targets: [a]
    timeout_s: 60
"""
    async with running_gateway(text, env=ENV, clock=FakeClock()) as gw:
        hung = asyncio.ensure_future(complete(gw, model="slow"))
        await upstream.wait_for_requests(1)
        c = await complete(gw)
        assert outcomes(c) == [
            ("gpt-a", pb.ATTEMPT_OUTCOME_LOCAL_SATURATION),
            ("gpt-b", pb.ATTEMPT_OUTCOME_LOCAL_SATURATION),
            ("claude-c", OK),
        ]
        assert "local pool" in c.attempts[0].detail
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        # a's threshold is 1, yet its breaker stayed closed: the next call is served by a.
        c = await complete(gw)
        assert outcomes(c) == [("gpt-a", OK)]


async def test_context_too_long_moves_to_a_target_with_a_larger_window(
    upstream: FakeUpstream,
) -> None:
    upstream.script("gpt-a", ContextTooLong(limit=2000))
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        c = await complete(gw)
    assert outcomes(c) == [("gpt-a", pb.ATTEMPT_OUTCOME_CONTEXT_TOO_LONG), ("gpt-b", OK)]
    assert upstream.request_count("gpt-a") == 1, "never retried on the same target"


async def test_context_too_long_everywhere_is_context_window_exceeded(
    upstream: FakeUpstream,
) -> None:
    upstream.set_default(None, ContextTooLong())
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, metadata, _ = error_info(info.value)
    assert reason == "CONTEXT_WINDOW_EXCEEDED"
    assert metadata["context_window_token_count"] == "200000"


async def test_content_policy_refusal_does_not_fall_back_by_default(upstream: FakeUpstream) -> None:
    upstream.script("gpt-a", ContentPolicy())
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value)[0] == "CONTENT_BLOCKED"
    assert upstream.request_count("gpt-b") == 0


async def test_content_policy_refusal_falls_back_where_the_route_allows(
    upstream: FakeUpstream,
) -> None:
    upstream.script("gpt-a", ContentPolicy())
    text = chain_config(upstream.base_url, route_extra="    fallback_on_content_policy: true")
    async with running_gateway(text, env=ENV) as gw:
        c = await complete(gw)
    assert outcomes(c) == [("gpt-a", pb.ATTEMPT_OUTCOME_CONTENT_POLICY), ("gpt-b", OK)]


async def test_no_fallback_after_the_first_delta_and_what_was_sent_is_billed(
    upstream: FakeUpstream,
) -> None:
    upstream.script("gpt-a", StopMidway(after_chunks=3))
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        received: list[str] = []
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                model="chain", messages=[user("one two three four five six")], request_id="r-mid"
            ),
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _drain_deltas(call, received)
        record = await gw.ledger.wait_for("r-mid")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(info.value)[0] == "UPSTREAM_UNAVAILABLE"
    assert len(received) == 3
    assert upstream.request_count("gpt-a") == 1
    assert upstream.request_count("gpt-b") == 0
    assert record.outcome == "failed"
    assert record.output_tokens > 0
    assert record.cost_nano_usd > 0


async def test_first_token_timeout_moves_on_and_the_caller_sees_only_the_next_target(
    upstream: FakeUpstream,
) -> None:
    upstream.script("gpt-a", Respond(text="too late", first_byte_delay_s=5))
    upstream.script("gpt-b", Respond(text="on time"))
    text = chain_config(upstream.base_url, route_extra="    first_token_timeout_s: 0.3")
    async with running_gateway(text, env=ENV) as gw:
        streamed, result = await stream(gw)
        assert await upstream.wait_for_disconnects(1, timeout=2.0), "the slow attempt was closed"
    assert streamed == "on time"
    assert outcomes(result) == [("gpt-a", pb.ATTEMPT_OUTCOME_TIMEOUT), ("gpt-b", OK)]
    assert upstream.request_count("gpt-a") == 1


async def test_cost_guard_rejects_before_any_upstream_request(upstream: FakeUpstream) -> None:
    # Worst case at the dearest target (gpt-b: $30/M output) for 100,000 output tokens = $3.
    text = chain_config(
        upstream.base_url, route_extra='    max_cost_usd: "0.50"\n    max_tokens_limit: 200000'
    )
    async with running_gateway(text, env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw, max_tokens=100_000, request_id="r-cost")
        record = await gw.ledger.wait_for("r-cost")
        ok = await complete(gw, max_tokens=100)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, metadata, details = error_info(info.value)
    assert reason == "COST_LIMIT_EXCEEDED"
    assert metadata["limit_nano_usd"] == "500000000"
    assert int(metadata["estimated_nano_usd"]) > 500_000_000
    (quota,) = [d for d in details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert quota.violations[0].subject == "model:chain"
    assert (record.outcome, record.error_reason) == ("rejected", "COST_LIMIT_EXCEEDED")
    assert upstream.request_count() == 1  # only the cheap call that followed
    assert ok.content


async def _drain_deltas(call: object, received: list[str]) -> None:
    async for event in call:  # type: ignore[attr-defined]
        assert event.HasField("delta"), "no result after a broken stream"
        received.append(event.delta.text)


def _conversation(turns: int, words: int = 60) -> list[pb.Message]:
    messages = [system("You are terse.")]
    for i in range(turns):
        messages.append(user(f"question {i} " + "lorem " * words))
        messages.append(assistant(f"answer {i} " + "ipsum " * words))
    messages.append(user("final question"))
    return messages


async def test_trimming_keeps_system_whole_pairs_and_the_last_user_message(
    upstream: FakeUpstream,
) -> None:
    messages = _conversation(turns=30)
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        c = await complete(gw, *messages, request_id="r-trim")
        record = await gw.ledger.wait_for("r-trim")
    sent = upstream.requests[-1].body["messages"]
    assert c.upstream_model == "gpt-a"  # trimmed to fit the first target
    assert sent[0] == {"role": "system", "content": "You are terse."}
    assert sent[-1] == {"role": "user", "content": "final question"}
    middle = sent[1:-1]
    assert [m["role"] for m in middle] == ["user", "assistant"] * (len(middle) // 2)
    assert middle[-1]["content"].startswith("answer 29 "), "the newest turns are kept"
    dropped_pairs = 30 - len(middle) // 2
    assert dropped_pairs > 0
    assert c.trimmed_message_count == 2 * dropped_pairs
    assert record.trimmed_message_count == c.trimmed_message_count


async def test_reject_policy_sends_the_whole_prompt_to_a_target_that_fits(
    upstream: FakeUpstream,
) -> None:
    messages = _conversation(turns=30)
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        c = await complete(gw, *messages, context_policy=pb.CONTEXT_POLICY_REJECT)
    assert c.upstream_model == "gpt-b"
    assert c.trimmed_message_count == 0
    assert outcomes(c)[0] == ("gpt-a", pb.ATTEMPT_OUTCOME_SKIPPED_CONTEXT_WINDOW)
    assert len(upstream.requests[-1].body["messages"]) == len(messages)


async def test_prompt_too_large_for_every_window_is_context_window_exceeded(
    upstream: FakeUpstream,
) -> None:
    huge = user("word " * 400_000)
    async with running_gateway(chain_config(upstream.base_url), env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw, system("s"), huge)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, metadata, _ = error_info(info.value)
    assert reason == "CONTEXT_WINDOW_EXCEEDED"
    assert int(metadata["input_token_count"]) > 200_000
    assert metadata["context_window_token_count"] == "200000"
    assert metadata["max_tokens"] == "100"
    assert upstream.request_count() == 0
