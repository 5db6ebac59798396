"""The shared HTTP client of each provider: one keep-alive pool, limits set, and the
rules every transport shares.

httpx is the API; the transport underneath is ``server.http_transport``. Selectable are
only the transports that pass the hostile-upstream suite
(tests/integration/test_hostile_upstream.py): today the gateway's own HTTP/1.1 client,
``h1`` (providers/h1_transport.py). The libraries measured beside it failed cases of that
suite that cannot be fixed from outside them (README: "Upstream HTTP"), so they are not
selectable. What holds whatever the transport, because it is done here, once:

- request headers are checked before anything is sent (http_rules.check_request_headers:
  an invalid name or value is ``httpx.LocalProtocolError``, and no connection is opened);
- a compressed body (Content-Encoding gzip or deflate, never asked for) is decoded with
  its decoded size capped, and any other coding is a clear ``httpx.DecodingError``
  (content_decoding.py);
- a body read whole is at most 64 MiB.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

import httpx

from llmgateway_server.providers.content_decoding import DecodedBody, needs_decoding
from llmgateway_server.providers.h1_transport import H1Transport
from llmgateway_server.providers.http_rules import MAX_BODY_BYTES, check_request_headers
from llmgateway_server.providers.proxy import ProxyRoute
from llmgateway_server.providers.tls import TlsSettings, client_ssl_context

HttpTransportName = Literal["h1"]
# How long a connection whose reader left cleanly may wait for its body's last bytes.
LINGER_S = 1.0
_DROPPED_WHEN_DECODED = frozenset({b"content-encoding", b"content-length"})


@runtime_checkable
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
        pool_timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send one request; ``total_timeout_s`` bounds the whole exchange, and
        ``pool_timeout_s`` the wait for a free pooled connection (``PoolTimeout``)."""
        ...


class UpstreamClient:
    """POSTs to one provider through an httpx transport and its keep-alive pool.

    Providers get httpx's types (``httpx.Response``, httpx's errors) but not
    ``httpx.AsyncClient``: the client's per-request machinery (cookie jar, redirect and
    auth flows, URL merging) cost about a third of the gateway's CPU per call and
    nothing here needs it. Any httpx transport fits, ``httpx.MockTransport`` included;
    the gateway's own transports are handed the request's parts directly, without an
    ``httpx.Request`` they would only take apart again.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        connect_timeout_s: float,
        pool_timeout_s: float = 5.0,
    ) -> None:
        self._transport = transport
        self._pool_timeout_s = pool_timeout_s
        # Checked once here, not per request (a runtime protocol check is slow).
        self._direct: DirectTransport | None = (
            transport if isinstance(transport, DirectTransport) else None
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
        check_request_headers(headers)
        connect_s = min(self._connect_timeout_s, timeout_s)
        # Waiting for the gateway's own pool may take at most half the attempt: it then
        # ends as PoolTimeout (local saturation, the next target) with time left, and
        # never races the attempt's own timeout, which would blame the upstream.
        pool_s = min(self._pool_timeout_s, timeout_s / 2)
        if self._direct is not None:
            response = await self._direct.send(
                "POST",
                url,
                headers=headers,
                body=body,
                connect_timeout_s=connect_s,
                total_timeout_s=timeout_s,
                pool_timeout_s=pool_s,
            )
            return _decoded(response)
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
                    "pool": pool_s,
                }
            },
        )
        return _decoded(await self._transport.handle_async_request(request))

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
        linger = getattr(response.stream, "linger", None)
        if exc_type is None and linger is not None:
            # Left cleanly (a stream read to its [DONE]): keep the connection if the
            # body's last bytes are merely late, instead of reconnecting next time.
            linger(LINGER_S)
        else:
            await response.aclose()  # gave up mid-body: the upstream sees the close now


def _decoded(response: httpx.Response) -> httpx.Response:
    """``response``, or the same response with its Content-Encoding undone as it is
    read (and the encoding's headers dropped, so httpx does not decode it again)."""
    if "content-encoding" not in response.headers:  # the usual case, and the cheap test
        return response
    coding = response.headers["content-encoding"]
    if not needs_decoding(coding):
        return response
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "async transports stream asynchronously"
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _DROPPED_WHEN_DECODED]
    return httpx.Response(response.status_code, headers=headers, stream=DecodedBody(stream, coding))


def body_stream(response: httpx.Response) -> AsyncIterable[bytes]:
    """The body as the transport delivers it (already decoded, see ``_decoded``), without
    httpx's own decoding layers: each layer skipped is a generator hop per chunk."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "async transports stream asynchronously"
    return stream


async def read_body(response: httpx.Response) -> bytes:
    """The whole body, at most 64 MiB (in one read when the stream can read itself)."""
    read = getattr(response.stream, "read", None)
    if read is not None:  # the stream reads itself whole (and caps what it reads)
        body: bytes = await read()
        return body
    parts: list[bytes] = []
    total = 0
    async for chunk in body_stream(response):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError("the response body is over 64 MiB")
        parts.append(chunk)
    return b"".join(parts)


def build_upstream_client(
    *,
    transport: HttpTransportName,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry_s: float,
    connect_timeout_s: float,
    pool_timeout_s: float = 5.0,
    proxy: ProxyRoute | None = None,
    tls: TlsSettings | None = None,
) -> UpstreamClient:
    """A client with a bounded keep-alive pool on the chosen transport, through
    ``proxy`` when set, trusting and presenting what ``tls`` names.

    A TLS context with custom settings is built here, at start-up, so a bad PEM file
    stops the gateway (``ConfigError``) instead of failing calls.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry_s,
    )
    tls = tls or TlsSettings()
    ssl_context = client_ssl_context(tls) if tls.customised else None
    assert transport == "h1", f"unknown transport {transport!r}"  # config's Literal checks it
    chosen = H1Transport(limits=limits, ssl_context=ssl_context, proxy=proxy)
    return UpstreamClient(
        chosen, connect_timeout_s=connect_timeout_s, pool_timeout_s=pool_timeout_s
    )
