"""An httpx transport over one aiohttp ClientSession: httpx's API, aiohttp's speed.

The providers get httpx's types (``httpx.Response``, httpx's errors); underneath, this
transport costs about a third of the CPU per request of httpx's default one (measured in
bench/RESULTS.md). It is leaner than the ``httpx-aiohttp`` package it replaced: one read
layer instead of three, connection failures mapped to the right httpx errors (a reset is
a ``ReadError``, not a ``ConnectTimeout``), and no compression negotiated, so bodies
arrive as sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiohttp
import httpx

_TIMEOUT_ERRORS: tuple[tuple[type[BaseException], type[httpx.TimeoutException]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
)


def _map_error(exc: BaseException) -> httpx.TransportError:
    """The httpx error that says what happened to the connection."""
    for source, target in _TIMEOUT_ERRORS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
    return httpx.ReadError(str(exc) or type(exc).__name__)


class _Chunks:
    """The body's chunks as they arrive, aiohttp's errors mapped to httpx's.

    An iterator object, not an async generator: a generator left unfinished (a reader
    that stops at ``[DONE]``) is finalized by the event loop in a task of its own.
    """

    __slots__ = ("_content",)

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _map_error(exc) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class ResponseStream(httpx.AsyncByteStream):
    """The body of one aiohttp response, as httpx reads it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def read(self) -> bytes:
        """The whole body at once (one read, no per-chunk iteration)."""
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _map_error(exc) from exc

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Chunks(self._response.content)

    async def aclose(self) -> None:
        # A body read to the end hands the connection back to the pool; a body left
        # unread (the caller went away mid-stream) closes the connection at once.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with aiohttp; one keep-alive pool per transport."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop, as aiohttp requires.
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 30.0,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            trust_env=False,
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with httpx's timeouts (the read timeout is per socket read);
        the response body streams from the connection."""
        timeouts = request.extensions.get("timeout", {})
        response = await self._send(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            body=request.content,
            timeouts=aiohttp.ClientTimeout(
                total=None,
                sock_connect=timeouts.get("connect"),
                sock_read=timeouts.get("read"),
                connect=timeouts.get("pool"),
            ),
        )
        response.request = request
        return response

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
        """Send one request given as plain values, skipping the ``httpx.Request`` that
        ``handle_async_request`` would only take apart again.

        ``total_timeout_s`` bounds the whole exchange (waiting for a pooled connection,
        sending, and reading the body to its end) with one timer; past it, reading raises
        ``httpx.ReadTimeout``. A per-read timeout would re-arm a timer on every chunk of
        a stream, which costs more than relaying the chunk.
        """
        return await self._send(
            method,
            str(url),
            headers=headers,
            body=body,
            timeouts=aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s),
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeouts: aiohttp.ClientTimeout,
    ) -> httpx.Response:
        session = self._session or self._open()
        try:
            response = await session.request(
                method, url, data=body, headers=headers, allow_redirects=False, timeout=timeouts
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _map_error(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=ResponseStream(response),
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
