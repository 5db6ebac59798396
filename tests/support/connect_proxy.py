"""A small HTTP proxy on 127.0.0.1 for tests: CONNECT tunnels and absolute-form forwarding.

It records every request it was asked to relay (``relayed``), so a test can see what
went through it and with which ``Proxy-Authorization``. With ``credentials`` set it
answers 407 to a request without the matching Basic credentials.

- ``CONNECT host:port``: a TCP connection to that address, ``200``, then bytes both ways
  until either side closes (TLS runs inside, end to end).
- ``POST http://host:port/path``: forwarded in origin form (Proxy-Authorization removed),
  the answer relayed back; answers must be framed by Content-Length (the test upstreams'
  are). Requests on one client connection are relayed one after the other.

    async with ConnectProxy() as proxy:
        ...proxy.url, proxy.relayed...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received: method, target, headers (lower-cased names)."""

    method: str
    target: str
    headers: dict[str, str]


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
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
    return line, headers


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


class ConnectProxy:
    """The proxy; ``credentials`` (``user:password``) makes it require them."""

    def __init__(self, *, credentials: str | None = None) -> None:
        self._expected = (
            "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
        )
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.relayed: list[ProxiedRequest] = []
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no credentials in it)."""
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (head := await _read_head(reader)) is not None:
                line, headers = head
                method, target, _version = line.split(" ", 2)
                self.relayed.append(ProxiedRequest(method, target, headers))
                if self._expected and headers.get("proxy-authorization") != self._expected:
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b"proxy-authenticate: Basic\r\ncontent-length: 0\r\n"
                        b"connection: close\r\n\r\n"
                    )
                    await writer.drain()
                    return
                if method == "CONNECT":
                    await self._tunnel(target, reader, writer)
                    return
                upstream = await self._forward(method, target, headers, reader, writer, upstream)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # either side went away; that is how tunnels end
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        self._writers.append(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _forward(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        if upstream is None:
            assert parts.hostname is not None
            assert parts.port is not None
            upstream = await asyncio.open_connection(parts.hostname, parts.port)
            self._writers.append(upstream[1])
        up_reader, up_writer = upstream
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k != "proxy-authorization"]
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await up_writer.drain()
        answer = await up_reader.readuntil(b"\r\n\r\n")
        length = 0
        for raw in answer.decode("latin-1").split("\r\n")[1:]:
            name, _, value = raw.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        writer.write(answer + await up_reader.readexactly(length))
        await writer.drain()
        return upstream

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
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
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
