"""A scripted HTTP/1.1 server on 127.0.0.1 that writes exactly the bytes a test tells it to.

For the transport's edge cases that a well-behaved server never produces: bodies split
into single bytes, bodies that end when the connection does, a connection closed or reset
mid-answer, a server that never answers.

    async def answer(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nhi")
        return True  # keep reading requests on this connection

    async with RawServer(answer) as server:
        ...server.url, server.connections, server.requests...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(frozen=True)
class RawRequest:
    """One request as it arrived: request line, headers (lower-cased names), body, and
    the index of the connection it came on (in ``RawServer.connections``)."""

    line: str
    headers: dict[str, str]
    body: bytes
    connection: int = 0


@dataclass
class RawConnection:
    """The server's side of one connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_bytes: int = 0
    requests: list[RawRequest] = field(default_factory=list)

    async def send(self, data: bytes) -> None:
        """Write and drain (blocks while the client does not read)."""
        self.writer.write(data)
        await self.writer.drain()
        self.sent_bytes += len(data)

    async def send_repeated(self, piece: bytes, total: int) -> None:
        """Send ``piece`` over and over, ``total`` bytes in all, without ever holding
        them all: the way to offer a client 64 MiB and see how much of it it read
        (``sent_bytes``) before it hung up (ConnectionError)."""
        left = total
        while left > 0:
            part = piece if left >= len(piece) else piece[:left]
            await self.send(part)
            left -= len(part)

    async def trickle(self, data: bytes, *, every_s: float) -> None:
        """Send ``data`` one byte at a time, ``every_s`` apart (a slow-loris server)."""
        for i in range(len(data)):
            await self.send(data[i : i + 1])
            await asyncio.sleep(every_s)

    def close(self) -> None:
        """FIN."""
        self.writer.close()

    def reset(self) -> None:
        """RST: close with SO_LINGER 0."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Answer = Callable[[RawConnection, RawRequest], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader, connection: int) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for raw in rest:
        if raw:
            name, _, value = raw.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(line=line, headers=headers, body=body, connection=connection)


class RawServer:
    """Answers every request with ``answer``; records connections and requests."""

    def __init__(self, answer: Answer, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._answer = answer
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self.connections: list[RawConnection] = []
        self.requests: list[RawRequest] = []
        self._arrived = asyncio.Event()
        self.port = 0

    async def wait_for_requests(self, n: int, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Until ``n`` requests have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < n:
                self._arrived.clear()
                await self._arrived.wait()

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (https with a TLS context)."""
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConnection(reader, writer)
        self.connections.append(conn)
        index = len(self.connections) - 1
        try:
            while (request := await _read_request(reader, index)) is not None:
                self.requests.append(request)
                conn.requests.append(request)
                self._arrived.set()
                if not await self._answer(conn, request):
                    break
            # Wait for the client's side to go away (or the test to end).
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request; that is what some tests do
        finally:
            conn.closed.set()
            writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.writer.transport.abort()
        await self._server.wait_closed()
