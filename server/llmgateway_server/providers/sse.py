"""Server-sent events parsing: bytes in, (event, data) pairs out.

Works on raw byte chunks rather than decoded lines: this is the hot path of streaming.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

_MAX_EVENT_BYTES = 1024 * 1024


class SSEDecodeError(ValueError):
    """The byte stream is not valid server-sent events."""


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[tuple[str, str], None]:
    """Yield ``(event, data)`` for each event; ``event`` is "message" when unnamed.

    Multi-line ``data`` fields are joined with newlines, comments are skipped, and CRLF
    or CR line endings are accepted, as the SSE specification says.
    """
    buffer = b""
    event = ""
    data: list[str] = []
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in buffer:
            if len(buffer) > _MAX_EVENT_BYTES:
                raise SSEDecodeError("event larger than 1 MiB")
            continue
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            if not raw:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
                continue
            line = raw.decode("utf-8")
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
    if data:
        yield event or "message", "\n".join(data)
