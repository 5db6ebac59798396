"""`Client`: the blocking client, over gRPC's sync channel."""

from __future__ import annotations

import collections
import collections.abc
import contextlib
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc
from llmgateway.v1 import gateway_pb2, gateway_pb2_grpc

from ._config import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, call_metadata, channel_options
from ._convert import (
    MessagesInput,
    StreamState,
    ToolChoiceInput,
    completion_from_proto,
    completion_request,
    count_tokens_request,
    models_from_proto,
    token_count_from_proto,
)
from ._errors import ProtocolError, error_from_rpc_error
from ._types import (
    Completion,
    ContextPolicy,
    ModelInfo,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    TokenCount,
    Tool,
    ToolCall,
)

if TYPE_CHECKING:
    from typing import Self, TypeAlias

    _StreamCall: TypeAlias = grpc._CallIterator[gateway_pb2.StreamCompleteResponse]

__all__ = ["Client", "CompletionStream"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Client:
    """A blocking client of the gateway, with the methods of `AsyncClient`.

    ```python
    with llmgateway_client.Client("127.0.0.1:50051", api_key=key) as client:
        for item in client.stream("default", "Hello"):
            if isinstance(item, str):
                print(item, end="", flush=True)
    ```

    The arguments are `AsyncClient`'s. Safe to share between threads.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        retry_unavailable: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive or None")
        self._target = target
        self._timeout = timeout
        self._metadata = call_metadata(api_key)
        options = channel_options(
            retry_unavailable=retry_unavailable, max_message_bytes=max_message_bytes
        )
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._closed = False

    def __repr__(self) -> str:
        return f"<Client target={self._target!r}>"

    @property
    def target(self) -> str:
        """The gateway's address."""
        return self._target

    @property
    def is_closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    def complete(
        self,
        model: str,
        messages: MessagesInput,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Iterable[str] = (),
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
        context_policy: ContextPolicy | None = None,
        tools: Iterable[Tool] = (),
        tool_choice: ToolChoiceInput | None = None,
        response_format: ResponseFormat | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Run one chat completion and return the whole answer; see `AsyncClient.complete`."""
        request = completion_request(
            gateway_pb2.CompleteRequest,
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            tags=tags,
            request_id=request_id,
            context_policy=context_policy,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        response = self._unary(self._stub.Complete, request, timeout)
        if not response.HasField("completion"):
            raise ProtocolError("the gateway's Complete response has no completion")
        return completion_from_proto(response.completion)

    def stream(
        self,
        model: str,
        messages: MessagesInput,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Iterable[str] = (),
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
        context_policy: ContextPolicy | None = None,
        tools: Iterable[Tool] = (),
        tool_choice: ToolChoiceInput | None = None,
        response_format: ResponseFormat | None = None,
        timeout: float | None = None,
    ) -> CompletionStream:
        """Run one chat completion, streamed: text deltas (`str`), then the `Completion`.

        `events()` yields typed events instead. The call starts on the first
        iteration; see `CompletionStream` and `AsyncClient.stream`.
        """
        request = completion_request(
            gateway_pb2.StreamCompleteRequest,
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            tags=tags,
            request_id=request_id,
            context_policy=context_policy,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        deadline = self._call_timeout(timeout)

        def start() -> _StreamCall:
            self._check_open()
            return self._stub.StreamComplete(request, timeout=deadline, metadata=self._metadata)

        return CompletionStream(start)

    def count_tokens(
        self,
        model: str,
        messages: MessagesInput,
        *,
        tools: Iterable[Tool] = (),
        timeout: float | None = None,
    ) -> TokenCount:
        """Count the input tokens a prompt uses on a route, without calling a provider;
        the definitions of `tools` count as input."""
        request = count_tokens_request(model, messages, tools)
        return token_count_from_proto(self._unary(self._stub.CountTokens, request, timeout))

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """List the routes the caller may use, sorted by name."""
        request = gateway_pb2.ListModelsRequest()
        return models_from_proto(self._unary(self._stub.ListModels, request, timeout))

    def close(self) -> None:
        """Close the channel, cancelling calls in flight. Idempotent."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def _call_timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._timeout

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        self._check_open()
        try:
            return method(request, timeout=self._call_timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from exc


class CompletionStream(collections.abc.Iterator["str | Completion"]):
    """A streamed completion: iterate for the text deltas, then the `Completion`.

    The blocking twin of `AsyncCompletionStream`, with the same `events()`, `text`,
    `refusal` and `tool_calls`. Leaving the loop early cancels the call (when the
    stream is dropped; explicitly with `close()` or `with`), and so does a
    `KeyboardInterrupt` while waiting.
    """

    def __init__(self, start: Callable[[], _StreamCall]) -> None:
        self._start = start
        self._call: _StreamCall | None = None
        self._state = StreamState()
        self._pending: collections.deque[StreamEvent] = collections.deque()
        self._result: Completion | None = None
        self._completion: Completion | None = None
        self._finished = False

    @property
    def completion(self) -> Completion | None:
        """The `Completion` once the stream ended successfully, else None."""
        return self._completion

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._state.text

    @property
    def refusal(self) -> str:
        """The refusal text received so far."""
        return self._state.refusal

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls received so far, put together from their fragments."""
        return self._state.tool_calls.tool_calls

    def events(self) -> collections.abc.Iterator[StreamEvent]:
        """Iterate the stream as typed events: `TextDelta`, `ToolCallDelta` and
        `RefusalDelta` as they arrive, then the `Completion`; see
        `AsyncCompletionStream.events`."""
        return _Events(self)

    def __next__(self) -> str | Completion:
        while True:
            event = self._next_event()
            if isinstance(event, TextDelta):
                return event.text
            if isinstance(event, Completion):
                return event
            if event is None:
                raise StopIteration

    def _next_event(self) -> StreamEvent | None:
        """The next event, or None once the stream is over."""
        if self._pending:
            return self._pending.popleft()
        if self._finished:
            return None
        if self._call is None:
            self._call = self._start()
        call = self._call
        while True:
            try:
                event = next(call)
            except StopIteration:  # status OK
                self._finished = True
                if self._result is None:
                    raise ProtocolError("the stream ended without a result") from None
                self._completion = self._result
                return self._completion
            except grpc.RpcError as exc:
                self._finished = True
                raise error_from_rpc_error(exc) from exc
            except BaseException:  # KeyboardInterrupt while blocked
                self._finished = True
                call.cancel()
                raise
            if self._result is not None:
                self._finished = True
                call.cancel()
                raise ProtocolError("the stream sent an event after its result")
            kind = event.WhichOneof("event")
            if kind == "delta":
                events = self._state.feed(event.delta)
                if events:
                    self._pending.extend(events[1:])
                    return events[0]
            if kind == "result":
                # Returned once the stream ends, so a failing status still wins.
                self._result = completion_from_proto(event.result)

    def collect(self) -> Completion:
        """Consume the rest of the stream and return its `Completion`."""
        for item in self:
            if isinstance(item, Completion):
                return item
        if self._completion is None:
            raise RuntimeError("the stream was closed before its result")
        return self._completion

    def close(self) -> None:
        """Stop iterating, cancelling the call if it is still running."""
        self._finished = True
        self._pending.clear()
        if self._call is not None:
            self._call.cancel()

    def __del__(self) -> None:
        # Dropping the stream (leaving a `for` loop early) cancels the call.
        with contextlib.suppress(AttributeError):  # half-built
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Events(collections.abc.Iterator[StreamEvent]):
    """`CompletionStream.events()`: the stream's typed events."""

    def __init__(self, stream: CompletionStream) -> None:
        self._stream = stream

    def __next__(self) -> StreamEvent:
        event = self._stream._next_event()
        if event is None:
            raise StopIteration
        return event
