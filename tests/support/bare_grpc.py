"""A bare HTTP/2 gRPC caller for tests that reads the answer: it sends metadata values
that grpc's own client refuses to send (non-ASCII bytes, tabs, control characters) and
returns the gRPC status, message and response messages the server gave.

Just enough HTTP/2 and HPACK for one unary call on a fresh connection: headers are sent
as literals (no Huffman, no indexing); replies are decoded with the static and dynamic
tables. A Huffman-coded reply value (gRPC core uses it for ``-bin`` values only) is kept
undecoded as ``None``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_STREAM = 1

# RFC 7541 appendix A.
_STATIC: list[tuple[bytes, bytes]] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    *(
        (name, b"")
        for name in (
            b"accept-language accept-ranges accept access-control-allow-origin age allow "
            b"authorization cache-control content-disposition content-encoding "
            b"content-language content-length content-location content-range content-type "
            b"cookie date etag expect expires from host if-match if-modified-since "
            b"if-none-match if-range if-unmodified-since last-modified link location "
            b"max-forwards proxy-authenticate proxy-authorization range referer refresh "
            b"retry-after server set-cookie strict-transport-security transfer-encoding "
            b"user-agent vary via www-authenticate"
        ).split()
    ),
]
assert len(_STATIC) == 61


@dataclass
class RawReply:
    """What came back for one call: gRPC status and message, and the response messages."""

    status: int | None
    message: str | None
    responses: list[bytes] = field(default_factory=list)
    headers: list[tuple[bytes, bytes | None]] = field(default_factory=list)


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    # Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2).
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


class _HpackDecoder:
    def __init__(self) -> None:
        self._dynamic: list[tuple[bytes, bytes | None]] = []

    def _entry(self, index: int) -> tuple[bytes, bytes | None]:
        if index <= len(_STATIC):
            return _STATIC[index - 1]
        return self._dynamic[index - len(_STATIC) - 1]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes | None]]:
        out: list[tuple[bytes, bytes | None]] = []
        pos = 0

        def integer(prefix_bits: int) -> int:
            nonlocal pos
            limit = (1 << prefix_bits) - 1
            value = block[pos] & limit
            pos += 1
            if value < limit:
                return value
            shift = 0
            while True:
                byte = block[pos]
                pos += 1
                value += (byte & 127) << shift
                shift += 7
                if not byte & 128:
                    return value

        def string() -> bytes | None:
            nonlocal pos
            huffman = bool(block[pos] & 0x80)
            length = integer(7)
            raw = block[pos : pos + length]
            pos += length
            return None if huffman else raw

        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                out.append(self._entry(integer(7)))
            elif byte & 0xC0 == 0x40:  # literal with incremental indexing
                index = integer(6)
                name = self._entry(index)[0] if index else string()
                value = string()
                assert name is not None, "Huffman-coded header name"
                self._dynamic.insert(0, (name, value))
                out.append((name, value))
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                integer(5)
            else:  # literal without indexing / never indexed
                index = integer(4)
                name = self._entry(index)[0] if index else string()
                value = string()
                assert name is not None, "Huffman-coded header name"
                out.append((name, value))
        return out


async def unary_call(
    host: str,
    port: int,
    method: str,
    request: bytes,
    metadata: Sequence[tuple[bytes, bytes]] = (),
    *,
    timeout_s: float = 10.0,
) -> RawReply:
    """One unary gRPC call of ``method`` (``/package.Service/Method``) with ``request``
    (serialized) and ``metadata`` sent byte for byte."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(
            _exchange(reader, writer, f"{host}:{port}", method, request, metadata), timeout_s
        )
    finally:
        writer.close()
        await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    authority: str,
    method: str,
    request: bytes,
    metadata: Sequence[tuple[bytes, bytes]],
) -> RawReply:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *metadata,
    ]
    block = b"".join(_literal(k, v) for k, v in headers)
    body = b"\x00" + struct.pack(">I", len(request)) + request
    writer.write(
        _PREFACE
        + _frame(_SETTINGS, 0, 0, b"")
        + _frame(_HEADERS, _END_HEADERS, _STREAM, block)
        + _frame(_DATA, _END_STREAM, _STREAM, body)
    )
    await writer.drain()
    decoder = _HpackDecoder()
    received: list[tuple[bytes, bytes | None]] = []
    data = b""
    pending = b""  # a header block continued in CONTINUATION frames
    ending = False  # END_STREAM seen; the call ends with its header block
    while True:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == _SETTINGS and not flags & _ACK:
            writer.write(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING and not flags & _ACK:
            writer.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY or (kind == _RST_STREAM and stream == _STREAM):
            raise ConnectionError(f"stream ended by frame type {kind}: {payload.hex()}")
        elif stream == _STREAM and kind in (_HEADERS, _CONTINUATION, _DATA):
            if kind != _CONTINUATION and flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if kind == _HEADERS and flags & _PRIORITY:
                payload = payload[5:]
            if kind != _CONTINUATION and flags & _END_STREAM:
                ending = True
            if kind == _DATA:
                data += payload
            else:
                pending += payload
                if flags & _END_HEADERS:
                    received += decoder.decode(pending)
                    pending = b""
            if ending and not pending:
                break
    responses = []
    while data:
        size = int.from_bytes(data[1:5], "big")
        responses.append(data[5 : 5 + size])
        data = data[5 + size :]
    values = dict(received)
    status = values.get(b"grpc-status")
    message = values.get(b"grpc-message")
    return RawReply(
        status=None if status is None else int(status),
        # grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
        message=None if message is None else unquote(message.decode("ascii")),
        responses=responses,
        headers=received,
    )
