"""The gateway every client's conformance suite runs against (clients/conformance/).

    .venv/bin/python -m tests.support.conformance_server

Starts, on 127.0.0.1: the fake OpenAI upstream (tests/support/upstream.py) scripted per
model, the real gateway (in this process, its state in a temporary SQLite file) with the
routes the scenarios name, and an "odd" gRPC server whose every call fails with a status
carrying a detail of a type no client knows. Prints one JSON line, then serves until its
standard input closes (or SIGTERM):

    {"gateway": "127.0.0.1:PORT", "odd": "127.0.0.1:PORT", "api_key": "...",
     "upstream_state": "http://127.0.0.1:PORT/_control/state"}

``upstream_state`` answers ``{"requests": N, "disconnects": N, "open_connections": N}``:
a client's test reads ``disconnects`` to see that the gateway closed its upstream request
after a deadline or a cancel.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import grpc
import uvloop
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

from tests.support.gateway import running_gateway
from tests.support.upstream import Error, FakeUpstream, Hang, Respond

API_KEY = "lgw-conformance-0123456789abcdef"
KEY_ENV = "CONFORMANCE_TENANT_KEY"
UPSTREAM_KEY = "sk-conformance-upstream-0123456789"

TEXT = "Hello from the conformance upstream, one word at a time."
LONG_TEXT = " ".join(["Streaming slowly so that the caller can cancel."] * 20)


def config(base_url: str) -> str:
    """Routes: ok, unavailable, stall, slow, costly, tiny (one target each)."""
    price = '{input_per_million_usd: "1", output_per_million_usd: "2", version: conf}'
    targets = "\n".join(
        f"""  {name}:
    provider: up
    model: conf-{name}
    context_window: {window}
    price: {price}"""
        for name, window in (
            ("ok", 128000),
            ("unavailable", 128000),
            ("stall", 128000),
            ("slow", 128000),
            ("tiny", 64),
        )
    )
    return f"""
server:
  default_deadline_s: 30
auth:
  tenants:
    - name: conformance
      api_key_env: {KEY_ENV}
providers:
  up:
    type: openai
    base_url: {base_url}/v1
    api_key_env: CONFORMANCE_UPSTREAM_KEY
targets:
{targets}
routes:
  ok:
    targets: [ok]
  unavailable:
    targets: [unavailable]
    retry: {{max_attempts: 1}}
  stall:
    targets: [stall]
  slow:
    targets: [slow]
  costly:
    targets: [ok]
    max_cost_usd: "0.000000001"
  tiny:
    targets: [tiny]
    context_policy: reject
"""


class OddServicer(pb_grpc.GatewayServiceServicer):
    """Fails every call with INVALID_ARGUMENT, an ErrorInfo (reason CONFORMANCE_ODD) and
    a detail of an unknown type: clients must surface the error, not crash on it."""

    @staticmethod
    def _status() -> status_pb2.Status:
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason="CONFORMANCE_ODD", domain="llmgateway", metadata={"k": "v"}
            )
        )
        unknown = any_pb2.Any(
            type_url="type.googleapis.com/conformance.NoClientKnowsThis", value=b"\x08\x01"
        )
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message="a status with a detail of an unknown type",
            details=[unknown, info],
        )

    async def _fail(self, context: aio.ServicerContext) -> None:
        status = self._status()
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            status.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )

    async def Complete(
        self, request: pb.CompleteRequest, context: aio.ServicerContext
    ) -> pb.CompleteResponse:
        await self._fail(context)
        raise AssertionError("abort raises")

    async def StreamComplete(
        self, request: pb.StreamCompleteRequest, context: aio.ServicerContext
    ) -> None:
        await self._fail(context)


async def serve() -> None:
    """Start everything, print the addresses, serve until stdin closes or SIGTERM."""
    async with FakeUpstream(require_api_key=UPSTREAM_KEY) as upstream:
        upstream.set_default("conf-ok", Respond(text=TEXT))
        upstream.set_default("conf-tiny", Respond(text=TEXT))
        upstream.set_default("conf-unavailable", Error(503, retry_after="7"))
        upstream.set_default("conf-stall", Hang())
        upstream.set_default("conf-slow", Respond(text=LONG_TEXT, chunk_delay_s=0.1))
        env = {KEY_ENV: API_KEY, "CONFORMANCE_UPSTREAM_KEY": UPSTREAM_KEY}
        async with running_gateway(config(upstream.base_url), env=env) as gw:
            odd = aio.server()
            pb_grpc.add_GatewayServiceServicer_to_server(OddServicer(), odd)
            odd_port = odd.add_insecure_port("127.0.0.1:0")
            await odd.start()
            ready = {
                "gateway": gw.address,
                "odd": f"127.0.0.1:{odd_port}",
                "api_key": API_KEY,
                "upstream_state": f"{upstream.base_url}/_control/state",
            }
            print(json.dumps(ready), flush=True)
            try:
                await _until_stopped()
            finally:
                await odd.stop(0)


async def _until_stopped() -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stop_wait = asyncio.ensure_future(stopped.wait())
    await asyncio.wait([stdin_closed, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()


if __name__ == "__main__":
    uvloop.run(serve())
