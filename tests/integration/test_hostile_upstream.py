"""Every selectable HTTP transport against a hostile upstream, over real sockets.

The calls go the way the providers make them: ``build_upstream_client(...)``,
``UpstreamClient.post(...)``, then ``read_body`` or ``body_stream``. The server
(tests/support/raw_http.py) writes exactly the bytes each case asks for. For every case
the caller gets the correct body or a clear httpx error of the kinds named (never a hang,
never an exception of another type), memory stays bounded (a 64 MiB header is refused
long before its end), and after an error the next request goes out on a new connection:
a connection whose framing was broken is never reused.

A transport that cannot pass this suite is not selectable (``server.http_transport``).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import httpx
import pytest
import trustme
from llmgateway_server.providers.http import (
    HttpTransportName,
    UpstreamClient,
    body_stream,
    build_upstream_client,
    read_body,
)
from llmgateway_server.providers.tls import TlsSettings

from tests.support.raw_http import RawConnection, RawRequest, RawServer

TRANSPORTS: tuple[str, ...] = get_args(HttpTransportName)
OK_HI = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
JSON = (("content-type", "application/json"), ("user-agent", "llmgateway-test"))
# No exchange in this suite may take this long: a hang fails the case instead of the run.
HANG_GUARD_S = 10.0
MiB = 1024 * 1024
MALFORMED = (httpx.RemoteProtocolError,)
# Decoding a body (not its framing) failed: the connection itself was not misframed.
UNDECODABLE = (httpx.DecodingError,)

Wire = Callable[[RawConnection], Awaitable[bool]]


def client_for(transport: str, **overrides: object) -> UpstreamClient:
    """An upstream client as app.build_provider makes one (small pool, short timeouts)."""
    settings: dict[str, object] = {
        "max_connections": 4,
        "max_keepalive_connections": 4,
        "keepalive_expiry_s": 30.0,
        "connect_timeout_s": 2.0,
        **overrides,
    }
    return build_upstream_client(transport=transport, **settings)  # type: ignore[arg-type]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def client(transport: str) -> AsyncIterator[UpstreamClient]:
    upstream = client_for(transport)
    yield upstream
    await upstream.aclose()


async def post(
    client: UpstreamClient,
    url: str,
    *,
    timeout_s: float = 3.0,
    stream: bool = False,
    headers: tuple[tuple[str, str], ...] = JSON,
) -> tuple[int, bytes]:
    """Status and body, read as the providers read them (whole, or as a stream)."""
    async with asyncio.timeout(HANG_GUARD_S):
        async with client.post(
            httpx.URL(url), headers=headers, body=b"{}", timeout_s=timeout_s
        ) as response:
            if stream:
                body = b"".join([chunk async for chunk in body_stream(response)])
            else:
                body = await read_body(response)
            return response.status_code, body


def first_then_ok(wire: Wire) -> Callable[[RawConnection, RawRequest], Awaitable[bool]]:
    """The hostile ``wire`` for the first request, a plain ``hi`` for every later one."""
    answered = 0

    async def answer(conn: RawConnection, request: RawRequest) -> bool:
        nonlocal answered
        answered += 1
        if answered == 1:
            try:
                return await wire(conn)
            except ConnectionError:
                return False  # the client hung up mid-answer, as it should for some cases
        await conn.send(OK_HI)
        return True

    return answer


def sends(data: bytes, *, then_close: bool = False) -> Wire:
    """Send ``data`` in one write (then FIN when asked)."""

    async def wire(conn: RawConnection) -> bool:
        await conn.send(data)
        if then_close:
            conn.close()
            return False
        return True

    return wire


def huge(prefix: bytes, piece: bytes, size: int, suffix: bytes) -> Wire:
    """``prefix``, then ``size`` bytes of ``piece`` repeated, then ``suffix``."""

    async def wire(conn: RawConnection) -> bool:
        await conn.send(prefix)
        await conn.send_repeated(piece, size)
        await conn.send(suffix)
        return True

    return wire


def reset_mid_body() -> Wire:
    async def wire(conn: RawConnection) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
        await asyncio.sleep(0.05)  # the head has been read; now the RST
        conn.reset()
        return False

    return wire


def trickle(data: bytes, *, head: bytes = b"") -> Wire:
    """``head`` at once, then ``data`` one byte every 20 ms (a slow-loris server)."""

    async def wire(conn: RawConnection) -> bool:
        await conn.send(head)
        await conn.trickle(data, every_s=0.02)
        return True

    return wire


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def with_length(head: bytes, body: bytes) -> bytes:
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


@functools.cache
def gzip_bomb() -> bytes:
    """100 MiB of zeros gzipped into ~450 KiB: over the decoded cap of 64 MiB."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(100)) + compressor.flush()


def gzip_bomb_wire() -> Wire:
    async def wire(conn: RawConnection) -> bool:
        await conn.send(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n", gzip_bomb()))
        return True

    return wire


@dataclass(frozen=True)
class Case:
    """One hostile answer and what the caller may get for it.

    ``body``: the correct answer, when a correct answer exists; ``errors``: the error
    types accepted instead (both set: either is fine). ``reuse_allowed``: the answer was
    framed correctly (only its content is odd), so its connection may be kept; otherwise
    the next request must come on a new one.
    """

    id: str
    wire: Wire
    body: bytes | None = None
    errors: tuple[type[Exception], ...] = ()
    reuse_allowed: bool = False
    stream: bool = False
    timeout_s: float = 3.0


HELLO_GZIP = gzip.compress(b"hello, gzip")
HELLO_ZLIB = zlib.compress(b"hello, deflate")
_raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
HELLO_RAW_DEFLATE = _raw_deflate.compress(b"hello, raw deflate") + _raw_deflate.flush()
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"

CASES = [
    # -- bytes after the response ----------------------------------------------------
    Case("extra-bytes-after-content-length", sends(OK_HI + b"world"), body=b"hi"),
    Case(
        "extra-bytes-after-content-length-streamed",
        sends(OK_HI + b"world"),
        body=b"hi",
        stream=True,
    ),
    Case(
        "unrequested-second-response",
        sends(OK_HI + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nworld"),
        body=b"hi",
    ),
    Case(
        "body-longer-than-content-length",
        sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhello"),
        body=b"he",
    ),
    Case(
        "extra-bytes-after-chunked-body",
        sends(CHUNKED + chunk(b"hi") + b"0\r\n\r\nHTTP/1.1 200 OK\r\n"),
        body=b"hi",
    ),
    # -- an oversized head -------------------------------------------------------------
    Case(
        "header-value-of-64-mib",
        huge(b"HTTP/1.1 200 OK\r\nx-big: ", b"a" * 65536, 64 * MiB, b"\r\n\r\n"),
        errors=MALFORMED,
    ),
    Case(
        "200000-headers",
        huge(
            b"HTTP/1.1 200 OK\r\n",
            b"x-h: 1\r\n" * 8192,
            200_000 * 8,
            b"content-length: 2\r\n\r\nhi",
        ),
        errors=MALFORMED,
    ),
    Case(
        "reason-phrase-of-16-mib",
        huge(b"HTTP/1.1 200 ", b"O" * 65536, 16 * MiB, b"\r\ncontent-length: 2\r\n\r\nhi"),
        errors=MALFORMED,
    ),
    Case(
        "endless-informational-responses",
        huge(b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 1024, 16 * MiB, OK_HI),
        errors=MALFORMED,
    ),
    # -- framing -------------------------------------------------------------------------
    Case(
        "chunk-size-not-hex",
        sends(CHUNKED + b"zz\r\nhi\r\n0\r\n\r\n"),
        errors=MALFORMED,
    ),
    Case(
        "chunk-size-overflowing",
        sends(CHUNKED + b"fffffffffffffffffffff\r\nhi\r\n0\r\n\r\n"),
        errors=MALFORMED,
    ),
    Case(
        "content-length-and-chunked",
        sends(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunk(b"hi")
            + b"0\r\n\r\n"
        ),
        body=b"hi",
        errors=MALFORMED,
    ),
    Case(
        "conflicting-content-lengths",
        sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nhello"),
        errors=MALFORMED,
    ),
    Case(
        "repeated-equal-content-lengths",
        sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nhi"),
        body=b"hi",
        errors=MALFORMED,
    ),
    Case(
        "negative-content-length",
        sends(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhi"),
        errors=MALFORMED,
    ),
    Case(
        "body-shorter-than-content-length-then-close",
        sends(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhi", then_close=True),
        errors=MALFORMED,
    ),
    Case(
        "transfer-encoding-chunked-gzip-then-close",
        sends(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n" + HELLO_GZIP,
            then_close=True,
        ),
        errors=MALFORMED,
    ),
    Case(
        "unknown-transfer-encoding-then-close",
        sends(b"HTTP/1.1 200 OK\r\ntransfer-encoding: foo\r\n\r\nhi", then_close=True),
        errors=MALFORMED,
    ),
    Case(
        "gzip-then-chunked-transfer-encoding",
        sends(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            + chunk(HELLO_GZIP)
            + b"0\r\n\r\n",
            then_close=True,
        ),
        errors=MALFORMED,
    ),
    Case("not-http", sends(b"SMTP ready\r\n\r\n"), errors=MALFORMED),
    Case(
        "switching-protocols",
        sends(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
        errors=MALFORMED,
    ),
    # -- compression nobody asked for ---------------------------------------------------
    Case(
        "unasked-gzip-is-decoded",
        sends(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n", HELLO_GZIP)),
        body=b"hello, gzip",
        reuse_allowed=True,
    ),
    Case(
        "unasked-gzip-is-decoded-streamed",
        sends(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(chunk(HELLO_GZIP[i : i + 3]) for i in range(0, len(HELLO_GZIP), 3))
            + b"0\r\n\r\n"
        ),
        body=b"hello, gzip",
        reuse_allowed=True,
        stream=True,
    ),
    Case(
        "unasked-deflate-is-decoded",
        sends(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\n", HELLO_ZLIB)),
        body=b"hello, deflate",
        reuse_allowed=True,
    ),
    Case(
        "unasked-raw-deflate-is-decoded",
        sends(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\n", HELLO_RAW_DEFLATE)),
        body=b"hello, raw deflate",
        reuse_allowed=True,
    ),
    Case("gzip-bomb-stops-at-the-cap", gzip_bomb_wire(), errors=UNDECODABLE, reuse_allowed=True),
    Case(
        "truncated-gzip",
        sends(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n", HELLO_GZIP[:-6])),
        errors=UNDECODABLE,
        reuse_allowed=True,
    ),
    Case(
        "unsupported-content-encoding",
        sends(with_length(b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n", b"\x8b\x02\x80hi\x03")),
        errors=UNDECODABLE,
        reuse_allowed=True,
    ),
    # -- connections that end badly -----------------------------------------------------
    Case("close-before-answering", sends(b"", then_close=True), errors=MALFORMED),
    Case(
        "close-mid-head",
        sends(b"HTTP/1.1 200 OK\r\ncontent-le", then_close=True),
        errors=MALFORMED,
    ),
    Case(
        "close-mid-body",
        sends(CHUNKED + chunk(b"hel"), then_close=True),
        errors=MALFORMED,
    ),
    Case(
        "close-mid-body-streamed",
        sends(CHUNKED + chunk(b"hel"), then_close=True),
        errors=MALFORMED,
        stream=True,
    ),
    Case("reset-mid-body", reset_mid_body(), errors=(httpx.ReadError,)),
    Case("reset-mid-body-streamed", reset_mid_body(), errors=(httpx.ReadError,), stream=True),
    Case(
        "slow-loris-head",
        trickle(b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 10_000),
        errors=(httpx.ReadTimeout,),
        timeout_s=0.3,
    ),
    Case(
        "slow-loris-body",
        trickle(b"a" * 10_000, head=CHUNKED + b"2710\r\n"),
        errors=(httpx.ReadTimeout,),
        timeout_s=0.3,
        stream=True,
    ),
    # -- well-formed, if unusual ----------------------------------------------------------
    Case(
        "informational-responses-before-the-answer",
        sends(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK_HI
        ),
        body=b"hi",
        reuse_allowed=True,
    ),
    Case(
        "http-1.0-body-until-close",
        sends(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it", then_close=True),
        body=b"all of it",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_answer_gives_the_body_or_a_clear_error_and_no_reuse_after_it(
    client: UpstreamClient, case: Case
) -> None:
    async with RawServer(first_then_ok(case.wire)) as server:
        outcome: bytes | httpx.HTTPError
        try:
            _, outcome = await post(
                client, server.url, timeout_s=case.timeout_s, stream=case.stream
            )
        except httpx.HTTPError as exc:  # anything else fails the test as it is
            outcome = exc
        if isinstance(outcome, httpx.HTTPError):
            assert case.errors, f"expected {case.body!r}, got {outcome!r}"
            assert isinstance(outcome, case.errors), f"unexpected {outcome!r}"
        else:
            assert case.body is not None, f"expected one of {case.errors}, got {outcome[:64]!r}"
            assert outcome == case.body

        # The next request is answered correctly, and on a new connection unless the
        # first answer was framed correctly.
        assert await post(client, server.url) == (200, b"hi")
        first, last = server.requests[0], server.requests[-1]
        if not case.reuse_allowed:
            assert last.connection != first.connection, "a connection was reused after it"


async def test_a_64_mib_header_is_refused_long_before_its_end(client: UpstreamClient) -> None:
    async def wire(conn: RawConnection) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\nx-big: ")
        await conn.send_repeated(b"a" * 65536, 64 * MiB)
        return True

    async with RawServer(first_then_ok(wire)) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, server.url)
        await asyncio.wait_for(server.connections[0].closed.wait(), 5.0)
        # What the socket buffers on both ends held, at most: the client stopped reading.
        assert server.connections[0].sent_bytes < 32 * MiB


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "internal-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_tls_certificate_for_another_name_is_refused(
    transport: str, ca: trustme.CA, ca_bundle: str
) -> None:
    upstream = client_for(transport, tls=TlsSettings(ca_bundle=ca_bundle))
    try:
        async with RawServer(
            first_then_ok(sends(OK_HI)), ssl_context=tls_server_context(ca, "other.example")
        ) as server:
            with pytest.raises(httpx.ConnectError):
                await post(upstream, server.url)
            assert server.requests == []
    finally:
        await upstream.aclose()


async def test_tls_certificate_from_an_untrusted_ca_is_refused(
    client: UpstreamClient, ca: trustme.CA
) -> None:
    async with RawServer(
        first_then_ok(sends(OK_HI)), ssl_context=tls_server_context(ca, "127.0.0.1")
    ) as server:
        with pytest.raises(httpx.ConnectError):
            await post(client, server.url)
        assert server.requests == []


async def test_tls_certificate_for_the_address_from_a_trusted_ca_is_accepted(
    transport: str, ca: trustme.CA, ca_bundle: str
) -> None:
    # The control for the two refusals above: TLS itself works.
    upstream = client_for(transport, tls=TlsSettings(ca_bundle=ca_bundle))
    try:
        async with RawServer(
            first_then_ok(sends(OK_HI)), ssl_context=tls_server_context(ca, "127.0.0.1")
        ) as server:
            assert await post(upstream, server.url) == (200, b"hi")
            assert await post(upstream, server.url) == (200, b"hi")
            assert len(server.connections) == 1
    finally:
        await upstream.aclose()


# -- the request side ------------------------------------------------------------------------

BAD_HEADERS = {
    "nul-in-value": ("x-a", "a\x00b"),
    "cr-lf-in-value": ("x-a", "a\r\nx-injected: 1"),
    "lf-in-value": ("x-a", "a\nb"),
    "del-in-value": ("x-a", "a\x7fb"),
    "not-latin-1-value": ("x-a", "\u2603"),
    "empty-name": ("", "v"),
    "space-in-name": ("x a", "v"),
    "colon-in-name": ("x:a", "v"),
    "separator-in-name": ("x(a)", "v"),
    "nul-in-name": ("x\x00a", "v"),
    "non-ascii-name": ("x-\u00e9", "v"),
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
async def test_invalid_request_header_is_refused_before_anything_is_sent(
    client: UpstreamClient, header: tuple[str, str]
) -> None:
    async with RawServer(first_then_ok(sends(OK_HI))) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await post(client, server.url, headers=(*JSON, header))
        assert server.connections == []


async def test_tab_and_latin_1_header_values_are_sent_as_they_are(
    client: UpstreamClient,
) -> None:
    async with RawServer(first_then_ok(sends(OK_HI))) as server:
        assert await post(client, server.url, headers=(("x-a", "a\tb \u00e9"),)) == (200, b"hi")
    assert server.requests[0].headers["x-a"] == "a\tb \u00e9"


# -- cancellation, local saturation, idle connections ----------------------------------------


async def silent(conn: RawConnection, request: RawRequest) -> bool:
    return True  # never answers


async def test_cancel_while_waiting_for_the_answer_closes_the_connection_at_once(
    client: UpstreamClient,
) -> None:
    async with RawServer(silent) as server:
        call = asyncio.create_task(post(client, server.url, timeout_s=30.0))
        await server.wait_for_requests(1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The upstream sees the request abandoned now, not when its timeout would end it.
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


async def test_closing_a_response_mid_body_closes_its_connection_at_once(
    client: UpstreamClient,
) -> None:
    async def endless(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(CHUNKED)
        while True:
            await conn.send(chunk(b"data"))
            await asyncio.sleep(0.01)

    async with RawServer(endless) as server:
        async with client.post(
            httpx.URL(server.url), headers=JSON, body=b"{}", timeout_s=30.0
        ) as response:
            async for _ in body_stream(response):
                break
            await response.aclose()
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


async def test_waiting_for_a_pooled_connection_that_never_frees_up_is_a_pool_timeout(
    transport: str,
) -> None:
    upstream = client_for(transport, max_connections=1, max_keepalive_connections=1)
    try:
        async with RawServer(silent) as server:
            holder = asyncio.create_task(post(upstream, server.url, timeout_s=10.0))
            await server.wait_for_requests(1)
            # Local saturation, not an upstream failure: PoolTimeout, not Connect/ReadTimeout.
            with pytest.raises(httpx.PoolTimeout):
                await post(upstream, server.url, timeout_s=0.3)
            assert len(server.connections) == 1
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
    finally:
        await upstream.aclose()


async def test_idle_connection_is_closed_at_its_keepalive_expiry_without_another_call(
    transport: str,
) -> None:
    upstream = client_for(transport, keepalive_expiry_s=0.2)
    try:
        async with RawServer(first_then_ok(sends(OK_HI))) as server:
            assert await post(upstream, server.url) == (200, b"hi")
            # Nothing else uses the client: a timer, not the next call, closes it.
            await asyncio.wait_for(server.connections[0].closed.wait(), 3.0)
    finally:
        await upstream.aclose()
