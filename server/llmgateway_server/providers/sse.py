"""Server-sent events parsing: bytes in, (event, data) pairs out.

Works on raw byte chunks rather than decoded lines: this is the hot path of streaming.
Reads may cut the stream anywhere (inside a line, a CRLF pair, a multi-byte character or
the byte order mark); the events are the same however it is cut.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

_MAX_EVENT_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_CR = 13


class SSEDecodeError(ValueError):
    """The byte stream is not valid server-sent events."""


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[tuple[str, str], None]:
    """Yield ``(event, data)`` for each event; ``event`` is "message" when unnamed.

    As the SSE specification says: one leading UTF-8 byte order mark is ignored, CRLF, LF
    and CR all end a line, multi-line ``data`` fields are joined with newlines, comments
    and other fields (``id``, ``retry``) are skipped. An event still open when the body
    ends is delivered. A line or an event over 1 MiB raises SSEDecodeError; text that is
    not UTF-8 raises UnicodeDecodeError.
    """
    buffer = b""  # the unfinished last line
    event = ""
    data: list[bytes] = []
    size = 0  # bytes of data in the current event
    at_start = True  # a byte order mark may still be (partly) to come
    pending_cr = False  # the last read ended with CR: a LF opening the next one is its pair
    async for chunk in chunks:
        if not chunk:
            continue
        if at_start:
            chunk = buffer + chunk
            buffer = b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                buffer = chunk  # the mark itself is split across reads
                continue
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
            at_start = False
        if pending_cr:
            pending_cr = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        if b"\r" in chunk:
            # Normalised per read, never across the buffer: a CR at the end of this read
            # already ends its line, so the LF that may open the next read is dropped.
            pending_cr = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            buffer += chunk
            if len(buffer) > _MAX_EVENT_BYTES:
                raise SSEDecodeError("line longer than 1 MiB")
            continue
        lines = (buffer + chunk).split(b"\n") if buffer else chunk.split(b"\n")
        buffer = lines.pop()
        for raw in lines:
            if not raw:
                if data:
                    text = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    size = 0
                    yield event or "message", text.decode()
                event = ""
            elif raw.startswith(b"data:"):
                value = raw[6:] if raw[5:6] == b" " else raw[5:]
                size += len(value) + 1
                if size > _MAX_EVENT_BYTES:
                    raise SSEDecodeError("event larger than 1 MiB")
                data.append(value)
            elif raw.startswith(b"event:"):
                event = (raw[7:] if raw[6:7] == b" " else raw[6:]).decode()
            elif raw == b"data":  # a field name alone: the field with an empty value
                data.append(b"")
            elif raw == b"event":
                event = ""
            # anything else: a comment (":..."), id, retry or an unknown field
    if data:
        yield event or "message", b"\n".join(data).decode()
