"""The gateway's own HTTP/1.1 client: asyncio protocols, httptools' parser, httpx's types.

Why it exists, and is the default: it is the only client measured that passes the
hostile-upstream suite (tests/integration/test_hostile_upstream.py); aiohttp, httpx's
default transport and pyreqwest each fail cases of it that cannot be fixed from outside
them (README, "Upstream HTTP"). It is also among the cheapest: about as much CPU per
request as pyreqwest's Rust client, less per streamed chunk, and well under aiohttp's
and httpx's (bench/http_client_cpu.py). It does only what talking to an LLM
provider needs, and does it strictly:

- HTTP/1.1 with keep-alive, one request per connection at a time (no pipelining);
  bodies by Content-Length, chunked transfer coding (and no other: a Transfer-Encoding
  that is not exactly ``chunked`` is refused), or until the server closes; informational
  (1xx) responses skipped; TLS with the provider's trust store (providers/tls.py).
- A response ends where its framing says: any byte after it (a body longer than its
  Content-Length, an unrequested second response) is never parsed into the exchange, and
  the connection is closed instead of reused. Bytes on an idle connection close it too.
- The response head is bounded as it arrives, before the parser buffers it: at most
  64 KiB for the status line and headers (1xx heads included; this bounds the reason
  phrase and every header value) and at most 100 headers.
- Request headers are checked (http_rules.check_request_headers) before anything is sent.
- One pool per transport, bounded like httpx's (``max_connections``,
  ``max_keepalive_connections``, ``keepalive_expiry``); a connection the server closed
  while idle is dropped as soon as the loop sees it, never handed out; an idle connection
  is closed by a timer when its keep-alive expiry passes, not at the next use.
- An HTTP proxy when configured (providers/proxy.py): https origins through a CONNECT
  tunnel, http origins with absolute-form requests, ``Proxy-Authorization`` when the proxy
  URL carried credentials.
- One timer per exchange (``total_timeout_s``: waiting for a connection, sending, and
  reading the body to its end), not one per read.
- A response closed before its body ended (the caller went away) aborts its
  connection at once, so the upstream sees the request cancelled.
- Reading pauses when an unread body holds more than 256 KiB; a body read whole may be
  at most 64 MiB.
- A reader that leaves cleanly before the body's end (an SSE stream read to its
  ``[DONE]``) can ``linger``: the connection is kept if the last bytes follow within a
  grace period, instead of paying a new connection (and TLS handshake) next time.
- Failures are httpx's errors: ``ConnectError``/``ConnectTimeout`` (``ProxyError`` when
  the proxy refuses the tunnel), ``PoolTimeout`` (no connection became free: local
  saturation), ``ReadTimeout``, ``ReadError`` (a reset), ``RemoteProtocolError`` (a
  malformed, oversized or cut-short response), ``LocalProtocolError`` (a header that
  would break the request).

``HEAD`` and ``CONNECT`` are refused: their responses need framing rules the gateway
never uses.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import NoReturn, cast

import httptools
import httpx

from llmgateway_server.providers.http_rules import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    check_request_headers,
)
from llmgateway_server.providers.proxy import ProxyRoute
from llmgateway_server.providers.tls import TlsSettings, client_ssl_context

Origin = tuple[str, str, int]  # scheme, host, port

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Unread body bytes above which the socket stops being read, and below which it resumes.
_PAUSE_ABOVE = 256 * 1024
_RESUME_BELOW = 64 * 1024
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "host", "proxy-authorization"}
)


def _request_head(
    method: str,
    url: httpx.URL,
    headers: Sequence[tuple[str, str]],
    length: int,
    *,
    proxy_authorization: str | None,
    absolute_form: bool,
) -> bytes:
    """Request line and headers, with Host and Content-Length set here (and, through a
    forward proxy, the absolute-form target and Proxy-Authorization)."""
    check_request_headers(headers)
    host = url.netloc.decode("ascii")
    target = url.raw_path.decode("ascii")
    if absolute_form:
        target = f"{url.scheme}://{host}{target}"
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FRAMING_HEADERS:
            if lowered == "host":
                host = value
            continue  # framing (and the proxy's credentials) is the transport's job
        lines.append(f"{name}: {value}\r\n")
    if proxy_authorization is not None:
        lines.append(f"proxy-authorization: {proxy_authorization}\r\n")
    lines.append(f"host: {host}\r\ncontent-length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the exchange already says why."""


class _Exchange(httpx.AsyncByteStream):
    """One request and its response: the parser's callbacks, the body as httpx reads it."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_complete",
        "_connection",
        "_eof_body",
        "_error",
        "_header_count",
        "_informational",
        "_keep_alive",
        "_lingering",
        "_loop",
        "_paused",
        "_timer",
        "_waiter",
        "head_bytes",
        "headers",
        "parser",
        "status",
    )

    def __init__(
        self, connection: _Connection, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> None:
        self._connection = connection
        self._loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # bytes fed to the parser before the final head ended
        self._header_count = 0
        self._eof_body = True  # until a Content-Length or chunked coding says otherwise
        self._informational = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._keep_alive = False
        self._error: httpx.TransportError | None = None
        self._closed = False
        self._lingering = False
        self._timer = loop.call_at(deadline, self._expire)

    # -- httptools callbacks (called from data_received, in the event loop) -------------

    def on_message_begin(self) -> None:
        if self._complete:
            # Bytes after the response ended: never part of this exchange, and the
            # connection's framing can no longer be trusted (the connection aborts it).
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._refuse(f"the response has more than {MAX_HEADERS} headers")
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._eof_body = False
        elif lowered == b"transfer-encoding":
            # Only a lone "chunked" is understood; "chunked, gzip" or "gzip" would leave
            # the body delimited by the close and still encoded. A second
            # Transfer-Encoding header is refused too (it would mean "chunked, chunked").
            if value.strip().lower() != b"chunked" or not self._eof_body:
                self._refuse("unsupported transfer-encoding in the response")
            self._eof_body = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real response follows
            self._informational = True
            self.headers = []
            self._header_count = 0
            return
        self.status = status
        if status in (204, 304):
            self._eof_body = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._lingering:
            return  # the reader has what it wanted; only the body's end matters now
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_ABOVE and not self._paused:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._eof_body = True
            return
        self._keep_alive = self.parser.should_keep_alive()
        self._finish()

    def _refuse(self, reason: str) -> NoReturn:
        self.fail(httpx.RemoteProtocolError(reason))
        raise _Refused

    # -- events from the connection and the timer ---------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed under this exchange."""
        if self._complete or self._error is not None:
            return
        if self.status and self._eof_body:
            self._finish()  # a body delimited by the end of the connection has ended
        elif isinstance(exc, OSError):
            self.fail(httpx.ReadError(f"connection lost: {exc}"))
        elif self.status:
            self.fail(httpx.RemoteProtocolError("the server closed the connection mid-body"))
        elif self._connection.new_tls:
            # TLS 1.3 clients finish the handshake before the server checks their
            # certificate: a refused (or missing) client certificate looks like this.
            self.fail(
                httpx.RemoteProtocolError(
                    "the server closed a new TLS connection unanswered (as a server that "
                    "requires a client certificate does when none or an untrusted one is sent)"
                )
            )
        else:
            self.fail(httpx.RemoteProtocolError("the server closed the connection unanswered"))

    def fail(self, error: httpx.TransportError) -> None:
        """End the exchange with ``error`` for whoever reads it next."""
        if self._complete or self._error is not None:
            return
        self._error = error
        self._settle()

    def _finish(self) -> None:
        self._complete = True
        self._settle()

    def head_pending(self) -> bool:
        """The final response's head is still to come (1xx heads count as head), and
        the exchange has not failed."""
        return not self.status and self._error is None

    @property
    def ended(self) -> bool:
        """The response ended, complete or failed: nothing more belongs to it."""
        return self._complete or self._error is not None

    def _settle(self) -> None:
        # The body ended, one way or the other: no timer, the reader woken, and a
        # lingering exchange (nobody reads it any more) closed.
        self._timer.cancel()
        self._wake()
        if self._lingering:
            self._close()

    def _expire(self) -> None:
        self.fail(httpx.ReadTimeout("the exchange ran past its timeout"))
        self._connection.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # -- the consumer's side --------------------------------------------------------------

    async def response_head(self) -> None:
        """Wait for the status line and headers; raise the exchange's failure."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _RESUME_BELOW:
                    self._paused = False
                    self._connection.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                raise StopAsyncIteration
            await self._wait()

    async def read(self) -> bytes:
        """The rest of the body, at once (at most 64 MiB: no completion is that large)."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self:
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError("the response body is over 64 MiB")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Hand the connection back to the pool, or abort it if the body did not end."""
        self._close()

    def linger(self, grace_s: float) -> None:
        """Close for a reader that has all it wants although the body has not ended (an
        SSE stream read up to ``[DONE]``, its final chunk still on the way): the
        connection goes back to the pool if the body ends within ``grace_s``, and is
        aborted otherwise. A reader that gives up (cancelled, failed) uses ``aclose``,
        which aborts at once."""
        if self._closed:
            return
        if self._complete or self._error is not None:
            self._close()
            return
        self._lingering = True
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._connection.resume_reading()
        self._timer.cancel()
        self._timer = self._loop.call_later(grace_s, self._expire)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        reusable = self._complete and self._error is None and self._keep_alive
        self._connection.exchange_done(self, reusable=reusable)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to an origin, serving one exchange at a time."""

    def __init__(self, pool: _Pool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self._transport: asyncio.Transport | None = None
        self._exchange: _Exchange | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's max_connections slots
        self.idle_since = 0.0
        self._exchanges = 0

    @property
    def new_tls(self) -> bool:
        """A TLS connection on its first exchange."""
        return self._exchanges == 1 and self.origin[0] == "https"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.ended:
            # Bytes nobody asked for (on an idle connection, or after the response
            # ended): the connection cannot be trusted any more.
            self.abort()
            return
        if exchange.head_pending():
            # Still in the head: bound it before the parser sees (and buffers) it.
            budget = MAX_HEAD_BYTES - exchange.head_bytes
            if len(data) > budget:
                self._feed(exchange, memoryview(data)[:budget])
                if exchange.head_pending():
                    exchange.fail(
                        httpx.RemoteProtocolError(
                            f"the response head is over {MAX_HEAD_BYTES // 1024} KiB"
                        )
                    )
                    self.abort()
                    return
                data = data[budget:]
            else:
                exchange.head_bytes += len(data)
        self._feed(exchange, data)

    def _feed(self, exchange: _Exchange, data: bytes | memoryview) -> None:
        if self.closed:
            return
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            exchange.fail(httpx.RemoteProtocolError("the server switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            # After the response ended this is the next message starting (_Refused):
            # the exchange keeps its answer, the connection goes.
            exchange.fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self._exchange
        if exchange is not None:
            exchange.connection_lost(exc)
        else:
            self._pool.lost(self)

    def start(self, head: bytes, body: bytes, deadline: float) -> _Exchange:
        """Send a request; its response arrives in the returned exchange."""
        assert self._transport is not None
        assert self._exchange is None
        exchange = self._exchange = _Exchange(self, self._pool.loop, deadline)
        self._exchanges += 1
        self._transport.write(head + body)
        return exchange

    def exchange_done(self, exchange: _Exchange, *, reusable: bool) -> None:
        """The exchange's reader is finished with it."""
        if self._exchange is exchange:
            self._exchange = None
        if not reusable or self.closed:
            self.abort()
        self._pool.release(self)

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def abort(self) -> None:
        """Close at once (RST): whatever the server still sends is not wanted."""
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.abort()


class _Tunnel(asyncio.Protocol):
    """The CONNECT exchange with a proxy, before TLS starts inside the tunnel."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self._request = request
        self._head = bytearray()
        self.established: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.established.done():
            return  # nothing is expected before our TLS ClientHello: ignored, then failed
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._fail(f"the proxy's answer to CONNECT is over {MAX_HEAD_BYTES // 1024} KiB")
            return
        if end + 4 != len(self._head):
            self._fail("the proxy sent bytes after its answer to CONNECT")
            return
        status_line = bytes(self._head[: self._head.find(b"\r\n")])
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._fail("the proxy's answer to CONNECT is not HTTP")
        elif not 200 <= int(parts[1]) < 300:
            self._fail(f"the proxy refused the tunnel: HTTP {int(parts[1])}")
        else:
            self.established.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the proxy closed the connection before the tunnel was set up")

    def _fail(self, reason: str) -> None:
        if not self.established.done():
            self.established.set_exception(httpx.ProxyError(reason))


class _Pool:
    """Keep-alive connections by origin, with httpx's limits.

    Idle connections are closed by a timer when their keep-alive expiry passes: one
    timer per pool, armed for the oldest idle connection, not one per connection.
    """

    def __init__(
        self,
        limits: httpx.Limits,
        loop: asyncio.AbstractEventLoop,
        *,
        proxy: ProxyRoute | None = None,
    ) -> None:
        self.loop = loop
        self._max = limits.max_connections or 1 << 30
        keepalive = limits.max_keepalive_connections
        self._max_idle = self._max if keepalive is None else keepalive
        self._expiry = limits.keepalive_expiry
        self._proxy = proxy
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._idle_count = 0
        self._count = 0  # connections open or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(
        self,
        origin: Origin,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout_s: float,
        deadline: float,
        pool_deadline: float,
    ) -> _Connection:
        """A live idle connection to ``origin``, else a new one once a slot is free
        (waiting for one at most until ``pool_deadline``: then ``PoolTimeout``)."""
        while True:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()  # the most recently used is the likeliest alive
                self._idle_count -= 1
                fresh = self._expiry is None or self.loop.time() - connection.idle_since < (
                    self._expiry
                )
                if not connection.closed and fresh:
                    return connection
                self._discard(connection)
            if self._count < self._max:
                return await self._connect(origin, ssl_context, connect_timeout_s, deadline)
            if self._idle_count:
                self._evict_oldest()
                continue
            await self._wait_for_slot(min(deadline, pool_deadline))

    async def _connect(
        self,
        origin: Origin,
        ssl_context: ssl.SSLContext | None,
        connect_timeout_s: float,
        deadline: float,
    ) -> _Connection:
        _scheme, host, port = origin
        self._count += 1
        opened = False
        try:
            async with asyncio.timeout_at(min(deadline, self.loop.time() + connect_timeout_s)):
                if self._proxy is None:
                    _, connection = await self.loop.create_connection(
                        lambda: _Connection(self, origin),
                        host,
                        port,
                        ssl=ssl_context,
                        server_hostname=host if ssl_context is not None else None,
                    )
                else:
                    connection = await self._connect_through_proxy(self._proxy, origin, ssl_context)
            opened = True
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise httpx.ConnectError(f"connecting to {host}:{port} failed: {exc}") from None
        finally:
            if not opened:
                self._slot_freed()
        self._all.add(connection)
        return connection

    async def _connect_through_proxy(
        self, proxy: ProxyRoute, origin: Origin, ssl_context: ssl.SSLContext | None
    ) -> _Connection:
        """A connection to the proxy: as it is for an http origin (requests then go in
        absolute form), or a CONNECT tunnel with TLS inside for an https one."""
        _scheme, host, port = origin
        if ssl_context is None:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self, origin), proxy.host, proxy.port
            )
            return connection
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"]
        if proxy.authorization is not None:
            lines.append(f"proxy-authorization: {proxy.authorization.reveal()}\r\n")
        request = ("".join(lines) + "\r\n").encode("latin-1")
        raw, tunnel = await self.loop.create_connection(
            lambda: _Tunnel(request, self.loop), proxy.host, proxy.port
        )
        try:
            await tunnel.established
            connection = _Connection(self, origin)
            tls = await self.loop.start_tls(raw, connection, ssl_context, server_hostname=host)
        except BaseException:
            raw.abort()
            raise
        if tls is None:  # the loop lost the transport mid-handshake
            raise httpx.ConnectError("the tunnel closed during the TLS handshake")
        connection.connection_made(tls)
        return connection

    async def _wait_for_slot(self, deadline: float) -> None:
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        woken = False
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
            woken = True
        except TimeoutError:
            raise httpx.PoolTimeout("no connection became free in time") from None
        finally:
            if not woken:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving (cancelled): pass the free slot on
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, connection: _Connection) -> None:
        """An exchange on ``connection`` ended; keep it for reuse if it is still good."""
        if connection.closed or self._closed or self._max_idle == 0:
            self._discard(connection)
        else:
            if self._idle_count >= self._max_idle:
                self._evict_oldest()
            connection.idle_since = self.loop.time()
            self._idle.setdefault(connection.origin, deque()).append(connection)
            self._idle_count += 1
            if self._sweep is None:
                self._arm_sweep()
        self._wake()

    def _arm_sweep(self) -> None:
        """Arm the timer for the oldest idle connection's expiry (if any is idle)."""
        if self._expiry is None or not self._idle_count or self._closed:
            return
        oldest = min(idle[0].idle_since for idle in self._idle.values() if idle)
        self._sweep = self.loop.call_at(oldest + self._expiry, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the idle connections whose keep-alive expiry has passed."""
        self._sweep = None
        assert self._expiry is not None
        expired_before = self.loop.time() - self._expiry
        for idle in self._idle.values():
            # Each deque is in release order: the expired ones are at its left end.
            while idle and idle[0].idle_since <= expired_before:
                self._idle_count -= 1
                self._discard(idle.popleft())
        self._wake()
        self._arm_sweep()

    def lost(self, connection: _Connection) -> None:
        """The server closed an idle connection."""
        idle = self._idle.get(connection.origin)
        if idle is not None and connection in idle:
            idle.remove(connection)
            self._idle_count -= 1
        self._discard(connection)
        self._wake()

    def _evict_oldest(self) -> None:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        assert oldest is not None
        self._idle[oldest.origin].popleft()
        self._idle_count -= 1
        self._discard(oldest)

    def _discard(self, connection: _Connection) -> None:
        connection.abort()
        self._all.discard(connection)
        if connection.counted:
            connection.counted = False
            self._slot_freed()

    def _slot_freed(self) -> None:
        self._count -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Abort every connection, idle or busy; later ones are not kept."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._all):
            connection.abort()
        self._idle.clear()
        self._idle_count = 0


class H1Transport(httpx.AsyncBaseTransport):
    """httpx transport on the gateway's HTTP/1.1 client; one pool per transport.

    ``ssl_context`` verifies https origins (providers/tls.py builds it from a provider's
    settings; the default trusts certifi's CAs); ``proxy`` sends every connection through
    an HTTP proxy.
    """

    Body = _Exchange  # the type of its responses' streams

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
        proxy: ProxyRoute | None = None,
    ) -> None:
        self._limits = limits
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._proxy_authorization = (
            proxy.authorization.reveal()
            if proxy is not None and proxy.authorization is not None
            else None
        )
        self._pool: _Pool | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Built on first https use: certifi's CAs, as httpx's own transport trusts.
            self._ssl_context = client_ssl_context(TlsSettings())
        return self._ssl_context

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
        """Send one request given as plain values; the response streams its body.

        ``total_timeout_s`` bounds the whole exchange with one timer: waiting for a
        pooled connection (also bounded by ``pool_timeout_s``), connecting (also bounded
        by ``connect_timeout_s``), sending, and reading the body to its end.
        """
        if method in ("HEAD", "CONNECT"):
            raise httpx.UnsupportedProtocol(f"{method} is not supported by this transport")
        if not (method.isascii() and method.isalpha()):
            raise httpx.LocalProtocolError(f"invalid method {method!r}")
        scheme = url.scheme
        port = url.port or _DEFAULT_PORTS.get(scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        forward = self._proxy is not None and scheme == "http"
        head = _request_head(
            method,
            url,
            headers,
            len(body),
            proxy_authorization=self._proxy_authorization if forward else None,
            absolute_form=forward,
        )
        pool = self._pool
        if pool is None:
            pool = self._pool = _Pool(self._limits, asyncio.get_running_loop(), proxy=self._proxy)
        now = pool.loop.time()
        deadline = now + total_timeout_s
        connection = await pool.acquire(
            (scheme, url.host, port),
            ssl_context=self._tls() if scheme == "https" else None,
            connect_timeout_s=connect_timeout_s,
            deadline=deadline,
            pool_deadline=deadline if pool_timeout_s is None else now + pool_timeout_s,
        )
        exchange = connection.start(head, body, deadline)
        try:
            await exchange.response_head()
        except BaseException:  # cancelled, timed out or failed: the connection is spent
            await exchange.aclose()
            raise
        return httpx.Response(exchange.status, headers=exchange.headers, stream=exchange)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's entry point: the request's ``timeout`` extension is honoured (its
        read timeout bounds the whole exchange here)."""
        timeouts = request.extensions.get("timeout", {})
        read = timeouts.get("read")
        connect = timeouts.get("connect")
        pool = timeouts.get("pool")
        response = await self.send(
            request.method,
            request.url,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=await request.aread(),
            connect_timeout_s=connect if connect is not None else 3600.0,
            total_timeout_s=read if read is not None else 24 * 3600.0,
            pool_timeout_s=pool,
        )
        response.request = request
        return response

    async def aclose(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            self._pool.close()
