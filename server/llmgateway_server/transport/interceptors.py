"""Metadata-level concerns only: authentication (-> the caller), the access log, and the
answer to a request message that does not decode.

The contract of ``RequestContextInterceptor``, per call:

- GatewayService, AdminService and UsageService methods are authenticated from the
  ``authorization`` metadata before the request message is looked at, and the caller
  (``auth.Caller``) is put in the request context (``transport.context``). An
  unauthenticated call is refused UNAUTHENTICATED with its body unread, even a body that
  would not decode: a caller without a key learns nothing about its payload and costs no
  parse. Two ``authorization`` values are refused as well, whichever of them is valid.
  So is, PERMISSION_DENIED and unread, a tenant's key on AdminService
  (ADMIN_KEY_REQUIRED) and an admin key on GatewayService (TENANT_KEY_REQUIRED); either
  kind may call UsageService. A store key that cannot be checked because the store is
  down is refused UNAVAILABLE (STORE_UNAVAILABLE), unread too.
- On every method the server hosts (the three services above, health, reflection), a request
  message that protobuf cannot decode (corrupt or truncated wire format, invalid UTF-8 in
  a string, nesting past protobuf's depth limit) is answered INVALID_ARGUMENT with
  ErrorInfo reason INVALID_REQUEST and the plain message ``UNDECODABLE_MESSAGE``; no
  BadRequest, as there is no field to name. Left to gRPC it would be UNKNOWN, a Python
  type name for the caller and an ERROR traceback in the log. The servicers only ever see
  decoded messages. Such a call leaves no log record but its access-log line (code
  INVALID_ARGUMENT); health and reflection calls have none.
- Each method's handler is wrapped once, on its first call, and reused: the wrappers read
  the caller from the request context, so one handler serves every caller. Only async
  behaviours are wrapped (every service this server hosts); a sync one would be served
  as registered. A stream-request behaviour gets its requests through the iterator it is
  handed; one that called ``context.read()`` instead would see the stand-in for an
  undecodable message (none here does).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from llmgateway_server.auth import Authenticator, Caller
from llmgateway_server.errors import (
    AdminKeyRequired,
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    TenantKeyRequired,
)
from llmgateway_server.transport.context import current_caller, current_tenant
from llmgateway_server.transport.status import to_status

access_log = logging.getLogger("llmgateway.access")

GATEWAY_SERVICE = "llmgateway.v1.GatewayService"
ADMIN_SERVICE = "llmgateway.v1.AdminService"
USAGE_SERVICE = "llmgateway.v1.UsageService"
UNDECODABLE_MESSAGE = "the request message could not be decoded"
SEVERAL_AUTHORIZATIONS = "send one authorization: Bearer <api key>, not several"

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Any]
if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]

_UNDECODABLE_STATUS = to_status(InvalidRequest(UNDECODABLE_MESSAGE))

ADMIN_ONLY = "AdminService needs an admin key (auth.admin in the config), not a tenant's key"
TENANTS_ONLY = "an admin key makes no gateway calls: use a tenant's key"


def _admin_only(caller: Caller) -> None:
    if not caller.admin:
        raise AdminKeyRequired(ADMIN_ONLY)


def _tenants_only(caller: Caller) -> None:
    if caller.admin:
        raise TenantKeyRequired(TENANTS_ONLY)


def _anyone(caller: Caller) -> None:
    """UsageService: a tenant sees its own usage, an admin everyone's (the servicer
    enforces which)."""


# The services whose calls are authenticated, and who may call each.
_GUARDS: dict[str, Callable[[Caller], None]] = {
    GATEWAY_SERVICE: _tenants_only,
    ADMIN_SERVICE: _admin_only,
    USAGE_SERVICE: _anyone,
}


class _Undecodable:
    """Stands in for a request message that did not decode."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    """The one ``authorization`` value; AuthenticationFailed if there are several (which
    one to believe is not the gateway's to pick)."""
    found: str | None = None
    for k, v in details.invocation_metadata or ():
        if k == "authorization":
            if found is not None:
                raise AuthenticationFailed(SEVERAL_AUTHORIZATIONS)
            # gRPC hands over a value that is not UTF-8 as bytes; latin-1 keeps one
            # character per byte, so the authenticator sees (and refuses) every byte.
            found = v if isinstance(v, str) else v.decode("latin-1")
    return found


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize``, with a message that does not decode turned into a sentinel (gRPC
    would answer UNKNOWN for the exception; the behaviour answers for the sentinel)."""

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return _UNDECODABLE

    return tolerant


def _skip_body(raw: bytes) -> None:
    """The deserializer of a refused call: its body is never parsed."""


def _behavior(handler: Handler) -> Behavior | None:
    kinds = (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream)
    return cast(Behavior | None, next((b for b in kinds if b is not None), None))


def _replace_behavior(
    handler: Handler,
    behavior: Behavior,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """``handler`` of the same kind, with ``behavior`` and (if given) the deserializer."""
    if handler.request_streaming:
        factory: Callable[..., Handler] = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
    else:
        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    result: Handler = factory(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return result


async def _abort_undecodable(context: aio.ServicerContext[Any, Any]) -> None:
    await context.abort_with_status(_UNDECODABLE_STATUS)


async def _decoded(
    requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    """A request stream that ends the call at its first message that did not decode."""
    async for request in requests:
        if request is _UNDECODABLE:
            await _abort_undecodable(context)
        yield request


def _checked(handler: Handler) -> Handler:
    """``handler`` answering INVALID_ARGUMENT for a request that does not decode.

    The wrapper keeps the behaviour's shape (coroutine or async generator), which is how
    gRPC tells a writer-style streaming behaviour from a generator-style one.
    """
    inner = _behavior(handler)
    if handler.request_deserializer is None or inner is None:
        return handler  # bytes in as bytes: nothing to decode
    streaming_in = handler.request_streaming
    checked: Behavior
    if inspect.isasyncgenfunction(inner):

        async def checked_generator(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            if streaming_in:
                request = _decoded(request, context)
            elif request is _UNDECODABLE:
                await _abort_undecodable(context)
            async for response in inner(request, context):
                yield response

        checked = checked_generator
    elif inspect.iscoroutinefunction(inner):

        async def checked_coroutine(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            if streaming_in:
                request = _decoded(request, context)
            elif request is _UNDECODABLE:
                await _abort_undecodable(context)
            return await inner(request, context)

        checked = checked_coroutine
    else:
        return handler
    return _replace_behavior(handler, checked, _tolerant(handler.request_deserializer))


class RequestContextInterceptor(aio.ServerInterceptor):
    """Authenticates gateway, admin and usage calls, sets the caller for the servicers,
    logs each call, and answers INVALID_ARGUMENT for a request that does not decode (see
    the module's docstring for the contract)."""

    def __init__(self, authenticator: Authenticator, *, access_log_enabled: bool = True) -> None:
        self._authenticator = authenticator
        self._access_log = access_log_enabled
        # The handler of each method, wrapped once (decode check, access log).
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """Authenticate the guarded services' calls, then hand over to the wrapped handler."""
        method = handler_call_details.method
        guard = _GUARDS.get(method[1:].partition("/")[0])
        if guard is not None:
            caller: Caller | None = None
            try:
                caller = await self._authenticator.authenticate(
                    _authorization(handler_call_details)
                )
                guard(caller)
            except GatewayError as exc:  # unauthenticated, not permitted, or store down
                handler = await self._handler(method, continuation, handler_call_details)
                if handler is None:
                    return None
                self._log(method, "-" if caller is None else _identity(caller), exc.code, 0.0)
                return _replace_behavior(handler, _refusal(to_status(exc)), _skip_body)
            current_caller.set(caller)
            current_tenant.set(caller.tenant)
        return await self._handler(method, continuation, handler_call_details)

    async def _handler(
        self, method: str, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = self._handlers.get(method)
        if handler is None:
            found = await continuation(details)
            if found is None:
                return None  # not cached: only methods the server hosts fill the cache
            handler = _checked(found)
            if self._access_log and method[1:].partition("/")[0] in _GUARDS:
                handler = self._wrap(method, handler)
            self._handlers[method] = handler
        return handler

    def _wrap(self, method: str, handler: Handler) -> Handler:
        raw = handler.unary_stream if handler.response_streaming else handler.unary_unary
        if raw is None or not inspect.iscoroutinefunction(raw):
            return handler
        inner = cast(Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]], raw)

        async def logged(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException as exc:  # logged, then re-raised unchanged
                code = _code_name(context, exc)
                raise
            finally:
                self._log(
                    method, _identity(current_caller.get()), code, time.perf_counter() - started
                )

        return _replace_behavior(handler, logged)

    def _log(self, method: str, tenant: str, code: str, seconds: float) -> None:
        if self._access_log:
            access_log.info(
                "rpc",
                extra={
                    "method": method.rpartition("/")[2],
                    "tenant": tenant,
                    "code": code,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )


def _identity(caller: Caller) -> str:
    """Who the access log names: the tenant, or "(admin)" (not a valid tenant name)."""
    return "(admin)" if caller.admin else caller.tenant


def _refusal(status: grpc.Status) -> Behavior:
    async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort_with_status(status)

    return refuse


def _code_name(context: aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    # grpc.aio reports the aborted code here; the stubs promise a StatusCode, it may be None.
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"
