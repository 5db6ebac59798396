"""A scripted stand-in for the gateway, for the client's tests only (not the server).

`ScriptedGatewayServicer` is a real `GatewayServiceServicer` served by a real
`grpc.aio` server on 127.0.0.1: tests swap its per-method handlers to script answers
(`replying`, `streaming` with text, tool-call and refusal deltas) and rich error
statuses, and read back what it received in `calls` (or `request_to`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmgateway.v1 import gateway_pb2, gateway_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
UnaryHandler: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
StreamHandler: TypeAlias = Callable[
    [gateway_pb2.StreamCompleteRequest, Context],
    AsyncIterator[gateway_pb2.StreamCompleteResponse],
]
_Request = TypeVar("_Request", bound=ProtoMessage)


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    metadata: Mapping[str, str] | None = None,
    details: Sequence[ProtoMessage] = (),
) -> grpc.Status:
    """A gRPC status carrying an ErrorInfo (domain "llmgateway") and more details."""
    status = status_pb2.Status(code=code.value[0], message=message)
    messages: list[ProtoMessage] = []
    if reason is not None:
        messages.append(
            error_details_pb2.ErrorInfo(
                reason=reason, domain="llmgateway", metadata=dict(metadata or {})
            )
        )
    messages.extend(details)
    for detail in messages:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    grpc_status: grpc.Status = rpc_status.to_status(status)
    return grpc_status


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def quota_failure(*violations: tuple[str, str]) -> error_details_pb2.QuotaFailure:
    return error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
            for subject, description in violations
        ]
    )


def bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )


def completion_pb(content: str = "Hello from mock", **overrides: Any) -> gateway_pb2.Completion:
    """A finished completion as the mock provider would report it."""
    fields: dict[str, Any] = {
        "content": content,
        "finish_reason": gateway_pb2.FINISH_REASON_STOP,
        "usage": gateway_pb2.Usage(
            input_token_count=12, output_token_count=5, cached_input_token_count=0
        ),
        "cost": gateway_pb2.Cost(
            total_nano_usd=42, input_nano_usd=30, output_nano_usd=12, price_version="test-1"
        ),
        "provider": "mock",
        "upstream_model": "mock-echo",
        "request_id": "req-1",
    }
    fields.update(overrides)
    return gateway_pb2.Completion(**fields)


def tool_call_pb(
    call_id: str, name: str, arguments: str = "{}", *, invalid: bool = False
) -> gateway_pb2.ToolCall:
    """A tool call as the gateway returns it."""
    return gateway_pb2.ToolCall(
        id=call_id, name=name, arguments=arguments, arguments_invalid=invalid
    )


def tool_call_delta(
    index: int, call_id: str = "", name: str = "", arguments: str = ""
) -> gateway_pb2.Delta:
    """A stream delta carrying one fragment of a tool call."""
    return gateway_pb2.Delta(
        tool_call=gateway_pb2.ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)
    )


def refusal_delta(text: str) -> gateway_pb2.Delta:
    """A stream delta carrying a piece of the model's refusal."""
    return gateway_pb2.Delta(refusal=text)


def replying(completion: gateway_pb2.Completion) -> UnaryHandler:
    """A Complete handler that answers `completion`."""

    async def handler(request: Any, context: Context) -> gateway_pb2.CompleteResponse:
        return gateway_pb2.CompleteResponse(completion=completion)

    return handler


def aborting(status: grpc.Status) -> UnaryHandler:
    """A unary handler that fails with `status`."""

    async def handler(request: Any, context: Context) -> Any:
        await context.abort_with_status(status)

    return handler


def streaming(
    *deltas: str | gateway_pb2.Delta,
    result: gateway_pb2.Completion | None = None,
    status: grpc.Status | None = None,
) -> StreamHandler:
    """A stream handler that sends `deltas` (a `str` is a text delta), then `result`
    if any, then ends with `status` (OK when None)."""

    async def handler(
        request: gateway_pb2.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.StreamCompleteResponse]:
        for delta in deltas:
            if isinstance(delta, str):
                delta = gateway_pb2.Delta(text=delta)
            yield gateway_pb2.StreamCompleteResponse(delta=delta)
        if result is not None:
            yield gateway_pb2.StreamCompleteResponse(result=result)
        if status is not None:
            await context.abort_with_status(status)

    return handler


async def echo_complete(
    request: gateway_pb2.CompleteRequest, context: Context
) -> gateway_pb2.CompleteResponse:
    return gateway_pb2.CompleteResponse(completion=completion_pb())


async def echo_stream(
    request: gateway_pb2.StreamCompleteRequest, context: Context
) -> AsyncIterator[gateway_pb2.StreamCompleteResponse]:
    async for event in streaming("Hello", " from", " mock", result=completion_pb())(
        request, context
    ):
        yield event


async def fixed_count_tokens(
    request: gateway_pb2.CountTokensRequest, context: Context
) -> gateway_pb2.CountTokensResponse:
    return gateway_pb2.CountTokensResponse(
        input_token_count=12, context_window_token_count=128_000, exact=True
    )


async def fixed_list_models(
    request: gateway_pb2.ListModelsRequest, context: Context
) -> gateway_pb2.ListModelsResponse:
    price = gateway_pb2.Price(
        input_nano_usd_per_million_tokens=150_000_000,
        output_nano_usd_per_million_tokens=600_000_000,
        cached_input_nano_usd_per_million_tokens=75_000_000,
        version="2024-07",
    )
    return gateway_pb2.ListModelsResponse(
        models=[
            gateway_pb2.Model(
                name="default",
                context_window_token_count=128_000,
                default_max_tokens=1024,
                targets=[
                    gateway_pb2.Target(
                        provider="mock",
                        upstream_model="mock-echo",
                        context_window_token_count=128_000,
                        price=price,
                    )
                ],
            )
        ]
    )


@dataclasses.dataclass
class ReceivedCall:
    """One call the scripted gateway received."""

    method: str
    request: ProtoMessage
    metadata: dict[str, str]
    time_remaining: float | None


class ScriptedGatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """The test servicer: each RPC records the call, then runs its scripted handler."""

    def __init__(self) -> None:
        self.calls: list[ReceivedCall] = []
        self.complete: UnaryHandler = echo_complete
        self.stream: StreamHandler = echo_stream
        self.count_tokens: UnaryHandler = fixed_count_tokens
        self.list_models: UnaryHandler = fixed_list_models
        self.called = asyncio.Event()  # set when a call arrives
        self.cancelled = asyncio.Event()  # set when a handler is cancelled by its caller

    def calls_to(self, method: str) -> list[ReceivedCall]:
        return [call for call in self.calls if call.method == method]

    def request_to(self, method: str, request_type: type[_Request]) -> _Request:
        """The request of the last call to `method`, checked to be a `request_type`."""
        request = self.calls_to(method)[-1].request
        assert isinstance(request, request_type)
        return request

    def _record(self, method: str, request: ProtoMessage, context: Context) -> None:
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        }
        self.calls.append(ReceivedCall(method, request, metadata, context.time_remaining()))
        self.called.set()

    async def Complete(self, request: Any, context: Any) -> Any:
        self._record("Complete", request, context)
        return await self._cancellable(self.complete(request, context))

    async def StreamComplete(self, request: Any, context: Any) -> Any:
        self._record("StreamComplete", request, context)
        try:
            async for event in self.stream(request, context):
                yield event
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def CountTokens(self, request: Any, context: Any) -> Any:
        self._record("CountTokens", request, context)
        return await self._cancellable(self.count_tokens(request, context))

    async def ListModels(self, request: Any, context: Any) -> Any:
        self._record("ListModels", request, context)
        return await self._cancellable(self.list_models(request, context))

    async def _cancellable(self, answer: Awaitable[Any]) -> Any:
        try:
            return await answer
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@dataclasses.dataclass
class ScriptedGateway:
    """A running scripted gateway: its `target` and its `servicer`."""

    target: str
    servicer: ScriptedGatewayServicer


async def hang_forever() -> None:
    await asyncio.Event().wait()
