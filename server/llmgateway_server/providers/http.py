"""The shared HTTP client of each provider: one keep-alive pool, limits set.

httpx is the API; the transport underneath is a measured choice (``server.http_transport``):
aiohttp's costs far less CPU per request than httpx's default (see bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import httpx

from llmgateway_server.providers.aiohttp_transport import AiohttpTransport

HttpTransportName = Literal["aiohttp", "httpx"]


class UpstreamClient:
    """POSTs to one provider through an httpx transport and its keep-alive pool.

    It uses httpx's transport API (``httpx.Request`` in, ``httpx.Response`` out) but not
    ``httpx.AsyncClient``: the client's per-request machinery (cookie jar, redirect and
    auth flows, URL merging) cost about a third of the gateway's CPU per call and
    nothing here needs it. Any httpx transport fits, ``httpx.MockTransport`` included.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, connect_timeout_s: float) -> None:
        self._transport = transport
        self._connect_timeout_s = connect_timeout_s

    @asynccontextmanager
    async def post(
        self, url: httpx.URL, *, headers: Sequence[tuple[str, str]], body: bytes, timeout_s: float
    ) -> AsyncIterator[httpx.Response]:
        """Send a POST; the response (streamed) is closed when the block exits, which
        closes its connection when the body was not read to the end."""
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            content=body,
            extensions={
                "timeout": {
                    "connect": min(self._connect_timeout_s, timeout_s),
                    "read": timeout_s,
                    "write": timeout_s,
                    "pool": timeout_s,
                }
            },
        )
        response = await self._transport.handle_async_request(request)
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()


def body_stream(response: httpx.Response) -> AsyncIterable[bytes]:
    """The body as the transport delivers it, without httpx's decoding layers: no
    compression is negotiated (no Accept-Encoding is sent), so there is nothing to
    decode, and each layer skipped is a generator hop per chunk."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "async transports stream asynchronously"
    return stream


async def read_body(response: httpx.Response) -> bytes:
    """The whole body."""
    return b"".join([chunk async for chunk in body_stream(response)])


def build_upstream_client(
    *,
    transport: HttpTransportName,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry_s: float,
    connect_timeout_s: float,
) -> UpstreamClient:
    """A client with a bounded keep-alive pool on the chosen transport."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry_s,
    )
    chosen: httpx.AsyncBaseTransport
    if transport == "aiohttp":
        chosen = AiohttpTransport(limits=limits)
    else:
        chosen = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    return UpstreamClient(chosen, connect_timeout_s=connect_timeout_s)
