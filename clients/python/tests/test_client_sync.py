"""The blocking Client, run in a worker thread against the in-process aio server."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import grpc
import llmgateway_client
import pytest
from conftest import API_KEY
from llmgateway.v1 import gateway_pb2
from llmgateway_client import (
    Client,
    Completion,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from scripted_gateway import (
    ScriptedGateway,
    aborting,
    bad_request,
    completion_pb,
    hang_forever,
    refusal_delta,
    rich_status,
    streaming,
    tool_call_delta,
    tool_call_pb,
)


async def test_sync_client_completes_counts_and_lists(gateway: ScriptedGateway) -> None:
    def work() -> tuple[
        Completion, llmgateway_client.TokenCount, list[llmgateway_client.ModelInfo]
    ]:
        with Client(gateway.target, api_key=API_KEY, timeout=5) as client:
            return (
                client.complete("default", "Hello", max_tokens=10),
                client.count_tokens("default", "Hello"),
                client.list_models(),
            )

    completion, count, models = await asyncio.to_thread(work)

    assert completion.content == "Hello from mock"
    assert completion.cost.total_nano_usd == 42
    assert count.input_tokens == 12
    assert [model.name for model in models] == ["default"]
    for call in gateway.servicer.calls:
        assert call.metadata["authorization"] == f"Bearer {API_KEY}"
        assert call.time_remaining is not None
        assert call.time_remaining <= 5.05


async def test_sync_stream_yields_text_deltas_then_the_completion(
    gateway: ScriptedGateway,
) -> None:
    def work() -> list[str | Completion]:
        with Client(gateway.target) as client:
            return list(client.stream("default", "Hello"))

    items = await asyncio.to_thread(work)

    assert items[:3] == ["Hello", " from", " mock"]
    assert isinstance(items[3], Completion)
    assert items[3].usage.input_tokens == 12


async def test_sync_stream_events_and_tool_calls(gateway: ScriptedGateway) -> None:
    gateway.servicer.stream = streaming(
        "Hm",
        tool_call_delta(0, "call_1", "lookup"),
        tool_call_delta(0, arguments='{"q": 1}'),
        refusal_delta("no"),
        result=completion_pb(
            "Hm",
            finish_reason=gateway_pb2.FINISH_REASON_TOOL_CALLS,
            tool_calls=[tool_call_pb("call_1", "lookup", '{"q": 1}')],
        ),
    )

    def work() -> tuple[list[StreamEvent], list[str | Completion], tuple[ToolCall, ...]]:
        with Client(gateway.target) as client:
            tools = [Tool("lookup", parameters='{"type": "object"}')]
            stream = client.stream("default", "Hi", tools=tools, tool_choice=ToolChoice.required())
            events = list(stream.events())
            plain = list(client.stream("default", "Hi", tools=tools))
            return events, plain, stream.tool_calls

    events, plain, accumulated = await asyncio.to_thread(work)

    assert events[:-1] == [
        TextDelta("Hm"),
        ToolCallDelta(0, "call_1", "lookup", ""),
        ToolCallDelta(0, "", "", '{"q": 1}'),
        RefusalDelta("no"),
    ]
    completion = events[-1]
    assert isinstance(completion, Completion)
    assert completion.tool_calls == (ToolCall("call_1", "lookup", '{"q": 1}'),)
    assert accumulated == completion.tool_calls
    assert plain[0] == "Hm"
    assert len(plain) == 2
    assert isinstance(plain[1], Completion)
    request = gateway.servicer.calls_to("StreamComplete")[0].request
    assert isinstance(request, gateway_pb2.StreamCompleteRequest)
    assert request.tools[0].parameters == '{"type": "object"}'
    assert request.tool_choice.mode == gateway_pb2.TOOL_CHOICE_MODE_REQUIRED


async def test_sync_complete_and_count_tokens_send_tools(gateway: ScriptedGateway) -> None:
    tool = Tool("lookup", parameters={"type": "object"})

    def work() -> None:
        with Client(gateway.target) as client:
            client.complete("default", "Hi", tools=[tool], tool_choice="none")
            client.count_tokens("default", "Hi", tools=[tool])

    await asyncio.to_thread(work)

    complete = gateway.servicer.request_to("Complete", gateway_pb2.CompleteRequest)
    assert complete.tools[0].parameters == '{"type": "object"}'
    assert complete.tool_choice.mode == gateway_pb2.TOOL_CHOICE_MODE_NONE
    count = gateway.servicer.request_to("CountTokens", gateway_pb2.CountTokensRequest)
    assert [t.name for t in count.tools] == ["lookup"]


async def test_sync_stream_that_ends_without_a_result_raises_protocol_error(
    gateway: ScriptedGateway,
) -> None:
    gateway.servicer.stream = streaming("partial")

    def work() -> None:
        with Client(gateway.target) as client:
            client.stream("default", "Hello").collect()

    with pytest.raises(llmgateway_client.ProtocolError):
        await asyncio.to_thread(work)


async def test_sync_client_raises_typed_errors(gateway: ScriptedGateway) -> None:
    gateway.servicer.complete = aborting(
        rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad request",
            "INVALID_REQUEST",
            details=[bad_request(("top_p", "must be in (0, 1]"))],
        )
    )
    gateway.servicer.stream = streaming(
        "a", status=rich_status(grpc.StatusCode.NOT_FOUND, "no such model", "MODEL_NOT_FOUND")
    )

    def complete() -> None:
        with Client(gateway.target) as client:
            client.complete("default", "Hello", top_p=5)

    def stream() -> None:
        with Client(gateway.target) as client:
            list(client.stream("default", "Hello"))

    with pytest.raises(llmgateway_client.InvalidRequest) as caught:
        await asyncio.to_thread(complete)
    assert caught.value.field_violations == [("top_p", "must be in (0, 1]")]
    with pytest.raises(llmgateway_client.ModelNotFound):
        await asyncio.to_thread(stream)


async def test_sync_unavailable_is_retried_by_the_service_config(
    gateway: ScriptedGateway,
) -> None:
    failures = [rich_status(grpc.StatusCode.UNAVAILABLE, "down", "SHUTTING_DOWN")]

    async def flaky(request: Any, context: Any) -> gateway_pb2.CompleteResponse:
        if failures:
            await context.abort_with_status(failures.pop())
        return gateway_pb2.CompleteResponse(completion=completion_pb("ok"))

    gateway.servicer.complete = flaky

    def work() -> Completion:
        with Client(gateway.target) as client:
            return client.complete("default", "Hello")

    assert (await asyncio.to_thread(work)).content == "ok"
    assert len(gateway.servicer.calls_to("Complete")) == 2


async def test_sync_breaking_out_of_the_stream_cancels_the_rpc(
    gateway: ScriptedGateway,
) -> None:
    async def one_delta_then_hang(request: Any, context: Any) -> Any:
        yield gateway_pb2.StreamCompleteResponse(delta=gateway_pb2.Delta(text="first"))
        await hang_forever()

    gateway.servicer.stream = one_delta_then_hang
    done = threading.Event()

    def work() -> None:
        with Client(gateway.target) as client:
            for item in client.stream("default", "Hello"):
                assert item == "first"
                break
            done.set()

    await asyncio.to_thread(work)

    assert done.is_set()
    await asyncio.wait_for(gateway.servicer.cancelled.wait(), timeout=5)


def test_sync_client_deadline_raises_deadline_exceeded_against_a_silent_server() -> None:
    with socket.socket() as listener:  # accepts connections, never speaks HTTP/2
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        with (
            Client(target, timeout=0.1) as client,
            pytest.raises(llmgateway_client.DeadlineExceeded),
        ):
            client.list_models()
