"""The thin servicer: proto -> domain, call the gateway, domain -> proto, errors -> status."""

from __future__ import annotations

import logging
from typing import Any

from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

from llmgateway_server.call import CallState
from llmgateway_server.errors import GatewayError
from llmgateway_server.gateway import Gateway
from llmgateway_server.transport.context import current_caller, current_tenant
from llmgateway_server.transport.convert import (
    CompletionProto,
    delta_to_proto,
    fill_completion,
    model_to_proto,
    to_count_request,
    to_request,
    token_count_to_proto,
)
from llmgateway_server.transport.status import internal_status, to_status
from llmgateway_server.types import Completion, OutputDelta

log = logging.getLogger("llmgateway.servicer")

Context = aio.ServicerContext[Any, Any]


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    """Implements llmgateway.v1.GatewayService over the Gateway core."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def _open(
        self, message: CompletionProto, context: Context, *, streaming: bool
    ) -> CallState:
        request, violations = to_request(message)
        return await self._gateway.open_call(
            request,
            violations=violations,
            tenant=current_tenant.get(),
            time_remaining_s=context.time_remaining(),
            streaming=streaming,
            caller=current_caller.get(None),
        )

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        """Unary completion: the streaming path, aggregated."""
        try:
            state = await self._open(request, context, streaming=False)
            completions: list[Completion] = []

            async def keep(item: OutputDelta | Completion) -> None:
                if isinstance(item, Completion):
                    completions.append(item)

            await self._gateway.drive(state, keep)
            (completion,) = completions  # the pipeline ends every call with one Completion
            response = pb.CompleteResponse()
            fill_completion(response.completion, completion)
            return response
        except GatewayError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:  # a bug: INTERNAL for the caller, the traceback for the logs
            log.exception("Complete failed")
            await context.abort_with_status(internal_status())
        raise AssertionError("abort_with_status always raises")

    # A coroutine that writes (not an async generator that yields): when the caller goes
    # away, cancellation lands in Gateway.drive, which closes the upstream at once.
    async def StreamComplete(  # type: ignore[override]
        self, request: pb.StreamCompleteRequest, context: Context
    ) -> None:
        """Streamed completion: deltas as they arrive, then one result."""
        try:
            state = await self._open(request, context, streaming=True)

            async def send(item: OutputDelta | Completion) -> None:
                if not isinstance(item, Completion):
                    await context.write(delta_to_proto(item))
                else:
                    last = pb.StreamCompleteResponse()
                    fill_completion(last.result, item)
                    await context.write(last)

            await self._gateway.drive(state, send)
        except GatewayError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:  # a bug: INTERNAL for the caller, the traceback for the logs
            log.exception("StreamComplete failed")
            await context.abort_with_status(internal_status())

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: Context
    ) -> pb.CountTokensResponse:
        """Token count of a prompt on a route; no provider is called."""
        try:
            messages, tools = to_count_request(request)
            count = self._gateway.count_tokens(request.model, messages, current_tenant.get(), tools)
            return token_count_to_proto(count)
        except GatewayError as exc:
            await context.abort_with_status(to_status(exc))
        raise AssertionError("abort_with_status always raises")

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        """The routes the caller may use."""
        routes = self._gateway.list_models(current_tenant.get())
        return pb.ListModelsResponse(models=[model_to_proto(r) for r in routes])
