"""One call of each kind, timed at the client: gRPC (relay or gateway) or HTTP (direct).

A caller makes one complete call per ``__call__`` and returns its latency, its time to
first token (streams: the first message carrying text) and the number of text chunks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import workload
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

Mode = Literal["unary", "stream"]
CALL_TIMEOUT_S = 30.0
# What a failed call raises; the load generator counts these (a point with any is invalid).
CALL_ERRORS = (aio.AioRpcError, aiohttp.ClientError, RuntimeError, TimeoutError, ValueError)


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished call."""

    latency_s: float
    ttft_s: float | None
    chunks: int


class Caller(Protocol):
    """Makes one call; ``worker`` picks the connection."""

    async def __call__(self, worker: int) -> Sample:
        """One call, timed."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


class GrpcCaller:
    """Calls GatewayService (the gateway or the bare relay) over ``channels`` connections."""

    def __init__(self, address: str, route: str, mode: Mode, channels: int) -> None:
        # A local subchannel pool per channel: separate TCP connections, not one shared.
        self._channels = [
            aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, channels))
        ]
        self._stubs = [pb_grpc.GatewayServiceStub(c) for c in self._channels]
        self._metadata = workload.grpc_metadata()
        self._unary = workload.complete_request(route)
        self._stream = workload.stream_request(route)
        self._mode = mode

    async def __call__(self, worker: int) -> Sample:
        """One Complete or StreamComplete call."""
        if self._mode == "unary":
            return await self._call_unary(worker)
        return await self.stream(worker)

    async def _call_unary(self, worker: int) -> Sample:
        stub = self._stubs[worker % len(self._stubs)]
        started = time.perf_counter()
        response = await stub.Complete(self._unary, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        latency = time.perf_counter() - started
        if not response.completion.content:
            raise RuntimeError("empty completion")
        return Sample(latency, None, 1)

    def open_stream(
        self, worker: int, timeout_s: float = CALL_TIMEOUT_S
    ) -> aio.UnaryStreamCall[pb.StreamCompleteRequest, pb.StreamCompleteResponse]:
        """Start one StreamComplete call (read it with ``read()``)."""
        stub = self._stubs[worker % len(self._stubs)]
        return stub.StreamComplete(self._stream, metadata=self._metadata, timeout=timeout_s)

    async def stream(self, worker: int) -> Sample:
        """One StreamComplete, read to the end."""
        started = time.perf_counter()
        call = self.open_stream(worker)
        ttft: float | None = None
        chunks = 0
        result = False
        while True:
            message = await call.read()
            if not isinstance(message, pb.StreamCompleteResponse):
                break  # aio.EOF
            if message.HasField("delta"):
                if ttft is None:
                    ttft = time.perf_counter() - started
                chunks += 1
            else:
                result = True
        latency = time.perf_counter() - started
        if not result:
            raise RuntimeError("stream ended without a result")
        return Sample(latency, ttft, chunks)

    async def aclose(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close()


class HttpCaller:
    """Calls the upstream's Chat Completions endpoint directly with aiohttp."""

    def __init__(self, base_url: str, mode: Mode, concurrency: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._stream = mode == "stream"
        self._body = workload.openai_body_bytes(stream=self._stream)
        self._headers = workload.upstream_headers()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(100, concurrency)),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
        )

    async def __call__(self, worker: int) -> Sample:
        """One POST, JSON or SSE, read to the end."""
        started = time.perf_counter()
        async with self._session.post(self._url, data=self._body, headers=self._headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            if not self._stream:
                data = json.loads(await resp.read())
                latency = time.perf_counter() - started
                if not data["choices"][0]["message"]["content"]:
                    raise RuntimeError("empty completion")
                return Sample(latency, None, 1)
            ttft: float | None = None
            chunks = 0
            usage = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].rstrip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                usage = usage or bool(chunk.get("usage"))
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        chunks += 1
        latency = time.perf_counter() - started
        if not usage:
            raise RuntimeError("stream ended without usage")
        return Sample(latency, ttft, chunks)

    async def aclose(self) -> None:
        """Close the session."""
        await self._session.close()
