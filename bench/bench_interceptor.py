"""What a pass-through grpc.aio server interceptor costs per unary call.

The gateway authenticates and access-logs in an interceptor (DESIGN.md); this measures
what that layer costs. Runs a trivial GatewayService on 127.0.0.1 with and without a
no-op interceptor, alternately, and prints client latency and server CPU per call. On
the shared 2-core machine the difference ranged from nothing to ~0.1 ms per call between
runs: within the machine's drift, so the interceptor stays.

    .venv/bin/python bench/bench_interceptor.py [--calls 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


class _Servicer(pb_grpc.GatewayServiceServicer):
    async def Complete(
        self, request: pb.CompleteRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CompleteResponse:
        return pb.CompleteResponse(completion=pb.Completion(content="hi"))


class _PassThrough(aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return await continuation(handler_call_details)


async def _serve(with_interceptor: bool) -> None:
    server = aio.server(interceptors=[_PassThrough()] if with_interceptor else None)
    servicer = _Servicer()  # type: ignore[abstract]  # only Complete is measured
    pb_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _load(port: int, calls: int) -> float:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        request = pb.CompleteRequest(model="x")
        for _ in range(300):
            await stub.Complete(request, timeout=5)
        started = time.perf_counter()
        for _ in range(calls):
            await stub.Complete(request, timeout=5)
        return (time.perf_counter() - started) / calls


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main() -> None:
    """Measure both servers, alternating, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=["plain", "intercepted"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve == "intercepted"))
        return
    ticks_per_s = 100
    for _ in range(args.rounds):
        for kind in ("plain", "intercepted"):
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE
            )
            try:
                assert proc.stdout is not None
                port = int(proc.stdout.readline())
                before = _cpu_ticks(proc.pid)
                latency = asyncio.run(_load(port, args.calls))
                cpu = (_cpu_ticks(proc.pid) - before) / ticks_per_s / (args.calls + 300)
            finally:
                proc.terminate()
                proc.wait()
            print(
                f"{kind:12s} latency {latency * 1e6:6.0f} us/call   "
                f"server CPU {cpu * 1e6:6.0f} us/call"
            )


if __name__ == "__main__":
    main()
