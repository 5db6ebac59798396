"""AsyncClient against a real in-process grpc.aio server running the scripted servicer."""

from __future__ import annotations

import asyncio
import decimal
from typing import Any

import grpc
import llmgateway_client
import pytest
from conftest import API_KEY
from google.protobuf import duration_pb2
from llmgateway.v1 import gateway_pb2
from llmgateway_client import AsyncClient, Completion, Message
from scripted_gateway import (
    ScriptedGateway,
    aborting,
    completion_pb,
    hang_forever,
    retry_info,
    rich_status,
    streaming,
)

# gRPC sends the deadline as a coarse `grpc-timeout` header, rounded up, so the server
# may see a few milliseconds more than the client asked for.
GRPC_TIMEOUT_ROUNDING = 0.05


async def test_complete_returns_the_completion_as_domain_types(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    answer = completion_pb(
        "Bonjour",
        finish_reason=gateway_pb2.FINISH_REASON_LENGTH,
        usage=gateway_pb2.Usage(
            input_token_count=100, output_token_count=7, cached_input_token_count=40
        ),
        cost=gateway_pb2.Cost(
            total_nano_usd=1_234_567,
            input_nano_usd=1_000_000,
            output_nano_usd=234_567,
            price_version="v9",
        ),
        attempts=[
            gateway_pb2.Attempt(
                provider="openai",
                upstream_model="gpt-4o-mini",
                outcome=gateway_pb2.ATTEMPT_OUTCOME_TRANSIENT,
                latency=duration_pb2.Duration(seconds=1, nanos=500_000_000),
                detail="HTTP 503",
            ),
            gateway_pb2.Attempt(
                provider="mock",
                upstream_model="mock-echo",
                outcome=gateway_pb2.ATTEMPT_OUTCOME_SUCCESS,
                latency=duration_pb2.Duration(nanos=250_000_000),
            ),
        ],
        trimmed_message_count=2,
    )

    async def handler(request: Any, context: Any) -> gateway_pb2.CompleteResponse:
        return gateway_pb2.CompleteResponse(completion=answer)

    gateway.servicer.complete = handler

    completion = await client.complete("default", "Hello")

    assert completion == Completion(
        content="Bonjour",
        finish_reason="length",
        usage=llmgateway_client.Usage(input_tokens=100, output_tokens=7, cached_input_tokens=40),
        cost=llmgateway_client.Cost(
            total_nano_usd=1_234_567,
            input_nano_usd=1_000_000,
            output_nano_usd=234_567,
            price_version="v9",
        ),
        provider="mock",
        upstream_model="mock-echo",
        attempts=(
            llmgateway_client.Attempt("openai", "gpt-4o-mini", "transient", 1.5, "HTTP 503"),
            llmgateway_client.Attempt("mock", "mock-echo", "success", 0.25, ""),
        ),
        request_id="req-1",
        trimmed_message_count=2,
    )
    assert completion.cost.usd == decimal.Decimal("0.001234567")
    assert completion.served_by == "mock/mock-echo"


async def test_complete_sends_every_request_field(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.complete(
        "fast",
        [
            Message.system("Be brief."),
            Message("user", "Hi", name="ann"),
            Message.assistant("Hello!"),
            Message.user("Again"),
        ],
        max_tokens=64,
        temperature=0.0,
        top_p=0.9,
        stop=["\n\n", "END"],
        tags={"team": "search"},
        request_id="req-42",
        context_policy="reject",
    )

    (call,) = gateway.servicer.calls_to("Complete")
    request = call.request
    assert isinstance(request, gateway_pb2.CompleteRequest)
    assert request.model == "fast"
    assert [(m.role, m.content, m.name) for m in request.messages] == [
        (gateway_pb2.ROLE_SYSTEM, "Be brief.", ""),
        (gateway_pb2.ROLE_USER, "Hi", "ann"),
        (gateway_pb2.ROLE_ASSISTANT, "Hello!", ""),
        (gateway_pb2.ROLE_USER, "Again", ""),
    ]
    assert request.HasField("max_tokens")
    assert request.max_tokens == 64
    assert request.HasField("temperature")  # 0.0 is sent, not dropped
    assert request.temperature == 0.0
    assert request.top_p == pytest.approx(0.9)
    assert list(request.stop) == ["\n\n", "END"]
    assert dict(request.tags) == {"team": "search"}
    assert request.request_id == "req-42"
    assert request.context_policy == gateway_pb2.CONTEXT_POLICY_REJECT


async def test_prompt_string_is_sent_as_one_user_message_and_unset_options_stay_unset(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.complete("default", "Hello")

    request = gateway.servicer.calls_to("Complete")[0].request
    assert isinstance(request, gateway_pb2.CompleteRequest)
    assert [(m.role, m.content) for m in request.messages] == [(gateway_pb2.ROLE_USER, "Hello")]
    assert not request.HasField("max_tokens")
    assert not request.HasField("temperature")
    assert not request.HasField("top_p")
    assert request.context_policy == gateway_pb2.CONTEXT_POLICY_UNSPECIFIED
    assert request.request_id == ""


async def test_bearer_api_key_is_sent_on_every_call(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.complete("default", "Hello")
    await client.stream("default", "Hello").collect()
    await client.count_tokens("default", "Hello")
    await client.list_models()

    assert [call.method for call in gateway.servicer.calls] == [
        "Complete",
        "StreamComplete",
        "CountTokens",
        "ListModels",
    ]
    for call in gateway.servicer.calls:
        assert call.metadata["authorization"] == f"Bearer {API_KEY}"


async def test_no_authorization_metadata_without_api_key(gateway: ScriptedGateway) -> None:
    async with AsyncClient(gateway.target) as client:
        await client.complete("default", "Hello")

    assert "authorization" not in gateway.servicer.calls[0].metadata


async def test_api_key_is_not_in_the_client_repr(client: AsyncClient) -> None:
    assert API_KEY not in repr(client)


async def test_default_deadline_is_applied_to_every_call(gateway: ScriptedGateway) -> None:
    async with AsyncClient(gateway.target, timeout=5) as client:
        await client.complete("default", "Hello")
        await client.stream("default", "Hello").collect()
        await client.count_tokens("default", "Hello")
        await client.list_models()

    for call in gateway.servicer.calls:
        assert call.time_remaining is not None
        assert 4 < call.time_remaining <= 5 + GRPC_TIMEOUT_ROUNDING, call.method


async def test_per_call_timeout_overrides_the_default_deadline(
    gateway: ScriptedGateway,
) -> None:
    async with AsyncClient(gateway.target, timeout=30) as client:
        await client.complete("default", "Hello", timeout=2)

    time_remaining = gateway.servicer.calls[0].time_remaining
    assert time_remaining is not None
    assert 1 < time_remaining <= 2 + GRPC_TIMEOUT_ROUNDING


async def test_stream_yields_text_deltas_then_the_completion(client: AsyncClient) -> None:
    stream = client.stream("default", "Hello")

    items = [item async for item in stream]

    assert items[:3] == ["Hello", " from", " mock"]
    assert len(items) == 4
    completion = items[3]
    assert isinstance(completion, Completion)
    assert completion.content == "Hello from mock"
    assert completion.usage.output_tokens == 5
    assert stream.completion is completion
    assert stream.text == "Hello from mock"


async def test_stream_skips_empty_deltas(gateway: ScriptedGateway, client: AsyncClient) -> None:
    gateway.servicer.stream = streaming("a", "", "b", result=completion_pb("ab"))

    items = [item async for item in client.stream("default", "Hello")]

    assert items[:2] == ["a", "b"]
    assert len(items) == 3


async def test_stream_collect_returns_the_completion(client: AsyncClient) -> None:
    completion = await client.stream("default", "Hello").collect()

    assert completion.content == "Hello from mock"


async def test_stream_that_ends_without_a_result_raises_protocol_error(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming("Hello", " wor")
    received: list[str | Completion] = []

    with pytest.raises(llmgateway_client.ProtocolError, match="without a result"):
        await _drain(client.stream("default", "Hello"), received)

    assert received == ["Hello", " wor"]


async def test_stream_that_fails_midway_raises_the_typed_error_after_the_deltas(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(
        "Hel",
        status=rich_status(
            grpc.StatusCode.UNAVAILABLE,
            "every target failed",
            "UPSTREAM_UNAVAILABLE",
            {"attempt_count": "1", "attempt_1": "mock/mock-echo:TRANSIENT"},
            [retry_info(1)],
        ),
    )
    stream = client.stream("default", "Hello")
    received: list[str | Completion] = []

    with pytest.raises(llmgateway_client.Unavailable) as caught:
        await _drain(stream, received)

    assert received == ["Hel"]
    assert caught.value.attempts == ["mock/mock-echo:TRANSIENT"]
    assert stream.completion is None


async def test_stream_failing_status_after_the_result_wins(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(
        "Hi",
        result=completion_pb("Hi"),
        status=rich_status(grpc.StatusCode.INTERNAL, "oops", "INTERNAL"),
    )

    with pytest.raises(llmgateway_client.InternalError):
        await client.stream("default", "Hello").collect()


async def test_breaking_out_of_the_stream_cancels_the_rpc(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = _one_delta_then_hang

    async for item in client.stream("default", "Hello"):
        assert item == "first"
        break

    await asyncio.wait_for(gateway.servicer.cancelled.wait(), timeout=5)


async def test_closing_the_stream_cancels_the_rpc(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = _one_delta_then_hang

    async with client.stream("default", "Hello") as stream:
        assert await anext(stream) == "first"
        await asyncio.wait_for(_never_cancelled_yet(gateway), timeout=1)

    await asyncio.wait_for(gateway.servicer.cancelled.wait(), timeout=5)
    assert [item async for item in stream] == []


async def test_cancelling_the_consumer_task_cancels_the_stream_rpc(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = _one_delta_then_hang
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream("default", "Hello"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=5)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gateway.servicer.cancelled.wait(), timeout=5)


async def test_cancelling_a_unary_call_cancels_the_rpc(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    async def slow(request: Any, context: Any) -> Any:
        await hang_forever()

    gateway.servicer.complete = slow
    task = asyncio.create_task(client.complete("default", "Hello"))
    await asyncio.wait_for(gateway.servicer.called.wait(), timeout=5)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gateway.servicer.cancelled.wait(), timeout=5)


async def test_unavailable_is_retried_by_the_service_config(gateway: ScriptedGateway) -> None:
    failures = [rich_status(grpc.StatusCode.UNAVAILABLE, "down", "UPSTREAM_UNAVAILABLE")]

    async def flaky(request: Any, context: Any) -> gateway_pb2.CompleteResponse:
        if failures:
            await context.abort_with_status(failures.pop())
        return gateway_pb2.CompleteResponse(completion=completion_pb("after retry"))

    gateway.servicer.complete = flaky

    async with AsyncClient(gateway.target) as client:
        completion = await client.complete("default", "Hello")

    assert completion.content == "after retry"
    assert len(gateway.servicer.calls_to("Complete")) == 2


async def test_unavailable_is_not_retried_when_retries_are_disabled(
    gateway: ScriptedGateway,
) -> None:
    gateway.servicer.complete = aborting(
        rich_status(grpc.StatusCode.UNAVAILABLE, "down", "UPSTREAM_UNAVAILABLE")
    )

    async with AsyncClient(gateway.target, retry_unavailable=False) as client:
        with pytest.raises(llmgateway_client.Unavailable):
            await client.complete("default", "Hello")

    assert len(gateway.servicer.calls_to("Complete")) == 1


async def test_other_errors_are_not_retried(gateway: ScriptedGateway) -> None:
    gateway.servicer.complete = aborting(rich_status(grpc.StatusCode.INTERNAL, "boom", "INTERNAL"))

    async with AsyncClient(gateway.target) as client:
        with pytest.raises(llmgateway_client.InternalError):
            await client.complete("default", "Hello")

    assert len(gateway.servicer.calls_to("Complete")) == 1


async def test_count_tokens_returns_the_token_count(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    count = await client.count_tokens("default", [Message.system("Be brief."), Message.user("Hi")])

    assert count == llmgateway_client.TokenCount(
        input_tokens=12, context_window_tokens=128_000, exact=True
    )
    request = gateway.servicer.calls_to("CountTokens")[0].request
    assert isinstance(request, gateway_pb2.CountTokensRequest)
    assert request.model == "default"
    assert len(request.messages) == 2


async def test_list_models_returns_routes_with_targets_and_prices(client: AsyncClient) -> None:
    (model,) = await client.list_models()

    assert model.name == "default"
    assert model.context_window_tokens == 128_000
    assert model.default_max_tokens == 1024
    (target,) = model.targets
    assert (target.provider, target.upstream_model) == ("mock", "mock-echo")
    assert target.price == llmgateway_client.Price(
        input_nano_usd_per_million_tokens=150_000_000,
        output_nano_usd_per_million_tokens=600_000_000,
        cached_input_nano_usd_per_million_tokens=75_000_000,
        version="2024-07",
    )


async def test_closed_client_refuses_calls(gateway: ScriptedGateway) -> None:
    client = AsyncClient(gateway.target)
    await client.complete("default", "Hello")
    await client.close()
    await client.close()  # idempotent

    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.complete("default", "Hello")


async def _one_delta_then_hang(request: Any, context: Any) -> Any:
    yield gateway_pb2.StreamCompleteResponse(delta=gateway_pb2.Delta(text="first"))
    await hang_forever()


async def _never_cancelled_yet(gateway: ScriptedGateway) -> None:
    assert not gateway.servicer.cancelled.is_set()


async def _drain(
    stream: llmgateway_client.AsyncCompletionStream, received: list[str | Completion]
) -> None:
    async for item in stream:
        received.append(item)
