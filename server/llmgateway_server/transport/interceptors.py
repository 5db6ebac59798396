"""Metadata-level concerns only: authentication (-> tenant) and the access log."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from grpc import aio

from llmgateway_server.auth import Authenticator
from llmgateway_server.errors import AuthenticationFailed
from llmgateway_server.transport.context import current_tenant
from llmgateway_server.transport.status import to_status

access_log = logging.getLogger("llmgateway.access")

SERVICE_PREFIX = "/llmgateway.v1.GatewayService/"

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


def _replace_behavior(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Behavior
) -> grpc.RpcMethodHandler[Any, Any]:
    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class RequestContextInterceptor(aio.ServerInterceptor):
    """Authenticates gateway calls, sets the tenant for the servicer, logs each call.

    The wrapped handlers are built once per method, not per call: they read the tenant
    from the request context, so one handler serves every caller.
    """

    def __init__(self, authenticator: Authenticator, *, access_log_enabled: bool = True) -> None:
        self._authenticator = authenticator
        self._access_log = access_log_enabled
        # The handler of each method (wrapped for the access log), looked up once.
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Authenticate, then hand over to the servicer (wrapped for the access log)."""
        method = handler_call_details.method
        if not method.startswith(SERVICE_PREFIX):
            return await continuation(handler_call_details)
        try:
            tenant = self._authenticator.authenticate(
                _metadata(handler_call_details, "authorization")
            )
        except AuthenticationFailed as exc:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            self._log(method, "-", "UNAUTHENTICATED", 0.0)
            return _replace_behavior(handler, _refusal(to_status(exc)))
        current_tenant.set(tenant)
        logged = self._handlers.get(method)
        if logged is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            logged = self._wrap(method, handler) if self._access_log else handler
            self._handlers[method] = logged
        return logged

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        raw = handler.unary_stream if handler.response_streaming else handler.unary_unary
        if raw is None or not inspect.iscoroutinefunction(raw):
            return handler
        inner = cast(Behavior, raw)

        async def logged(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException as exc:  # logged, then re-raised unchanged
                code = _code_name(context, exc)
                raise
            finally:
                self._log(method, current_tenant.get(), code, time.perf_counter() - started)

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
