"""The shared HTTP client of each provider: one keep-alive pool, limits set.

httpx is the API; the transport underneath is a measured choice (``server.http_transport``):
the gateway's own HTTP/1.1 client (``h1``) costs far less CPU per request than aiohttp's,
and aiohttp's far less than httpx's default (see bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from types import TracebackType
from typing import Literal, Protocol

import httpx

from llmgateway_server.errors import ConfigError
from llmgateway_server.providers.aiohttp_transport import AiohttpTransport, ResponseStream
from llmgateway_server.providers.h1_transport import H1Transport

HttpTransportName = Literal["h1", "aiohttp", "httpx", "httpx-aiohttp"]
# How long a connection whose reader left cleanly may wait for its body's last bytes.
LINGER_S = 1.0


class DirectTransport(Protocol):
    """A transport that takes a request's parts without an ``httpx.Request``."""

    async def send(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        connect_timeout_s: float,
        total_timeout_s: float,
    ) -> httpx.Response:
        """Send one request; ``total_timeout_s`` bounds the whole exchange."""
        ...


class _BodyReader(Protocol):
    async def read(self) -> bytes: ...


class UpstreamClient:
    """POSTs to one provider through an httpx transport and its keep-alive pool.

    Providers get httpx's types (``httpx.Response``, httpx's errors) but not
    ``httpx.AsyncClient``: the client's per-request machinery (cookie jar, redirect and
    auth flows, URL merging) cost about a third of the gateway's CPU per call and
    nothing here needs it. Any httpx transport fits, ``httpx.MockTransport`` included;
    the gateway's own transports are handed the request's parts directly, without an
    ``httpx.Request`` they would only take apart again.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, connect_timeout_s: float) -> None:
        self._transport = transport
        self._direct: DirectTransport | None = (
            transport if isinstance(transport, H1Transport | AiohttpTransport) else None
        )
        self._connect_timeout_s = connect_timeout_s

    def post(
        self, url: httpx.URL, *, headers: Sequence[tuple[str, str]], body: bytes, timeout_s: float
    ) -> Exchange:
        """Send a POST (``async with client.post(...) as response``); the response
        (streamed) is closed when the block exits, which closes its connection when the
        body was not read to the end."""
        return Exchange(self, url, headers, body, timeout_s)

    async def send(
        self, url: httpx.URL, headers: Sequence[tuple[str, str]], body: bytes, timeout_s: float
    ) -> httpx.Response:
        """Send a POST; the caller closes the response."""
        connect_s = min(self._connect_timeout_s, timeout_s)
        if self._direct is not None:
            return await self._direct.send(
                "POST",
                url,
                headers=headers,
                body=body,
                connect_timeout_s=connect_s,
                total_timeout_s=timeout_s,
            )
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            content=body,
            extensions={
                "timeout": {
                    "connect": connect_s,
                    "read": timeout_s,
                    "write": timeout_s,
                    "pool": timeout_s,
                }
            },
        )
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()


class Exchange:
    """One POST as an async context manager: the response, closed on exit.

    A class rather than ``@asynccontextmanager``: it runs once per upstream call, and the
    generator-based manager costs a frame and a generator on every one.
    """

    __slots__ = ("_body", "_client", "_headers", "_response", "_timeout_s", "_url")

    def __init__(
        self,
        client: UpstreamClient,
        url: httpx.URL,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._url = url
        self._headers = headers
        self._body = body
        self._timeout_s = timeout_s
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        self._response = await self._client.send(
            self._url, self._headers, self._body, self._timeout_s
        )
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        response = self._response
        if response is None:
            return
        stream: object = response.stream
        if exc_type is None and isinstance(stream, H1Transport.Body):
            # Left cleanly (a stream read to its [DONE]): keep the connection if the
            # body's last bytes are merely late, instead of reconnecting next time.
            stream.linger(LINGER_S)
        else:
            await response.aclose()  # gave up mid-body: the upstream sees the close now


def body_stream(response: httpx.Response) -> AsyncIterable[bytes]:
    """The body as the transport delivers it, without httpx's decoding layers: no
    compression is negotiated (no Accept-Encoding is sent), so there is nothing to
    decode, and each layer skipped is a generator hop per chunk."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "async transports stream asynchronously"
    return stream


async def read_body(response: httpx.Response) -> bytes:
    """The whole body (in one read when one of the gateway's transports carries it)."""
    stream: object = response.stream
    if isinstance(stream, ResponseStream | H1Transport.Body):
        reader: _BodyReader = stream
        return await reader.read()
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
    if transport == "h1":
        chosen = H1Transport(limits=limits)
    elif transport == "aiohttp":
        chosen = AiohttpTransport(limits=limits)
    elif transport == "httpx-aiohttp":
        chosen = _httpx_aiohttp_transport(limits)
    else:
        chosen = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    return UpstreamClient(chosen, connect_timeout_s=connect_timeout_s)


def _httpx_aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The ``httpx-aiohttp`` package's transport: measured in bench/RESULTS.md, optional."""
    try:
        from httpx_aiohttp import AiohttpTransport as PackageTransport
    except ImportError:
        raise ConfigError(
            "server.http_transport httpx-aiohttp needs the httpx-aiohttp package: "
            "pip install 'llmgateway-server[httpx-aiohttp]'"
        ) from None
    return PackageTransport(limits=limits, trust_env=False)
