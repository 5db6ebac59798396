"""The SSE parser handles every framing the spec allows."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmgateway_server.providers.sse import iter_sse


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(*parts: bytes) -> list[tuple[str, str]]:
    return [e async for e in iter_sse(_chunks(*parts))]


async def test_events_split_across_chunks_are_reassembled() -> None:
    events = await _collect(b"event: ping\nda", b'ta: {"a"', b": 1}\n", b"\n")
    assert events == [("ping", '{"a": 1}')]


async def test_unnamed_events_are_messages_and_comments_are_skipped() -> None:
    events = await _collect(b": keep-alive\n\ndata: x\n\ndata: y\n\n")
    assert events == [("message", "x"), ("message", "y")]


async def test_crlf_and_multiline_data() -> None:
    events = await _collect(b"data: a\r\ndata: b\r\n\r\n")
    assert events == [("message", "a\nb")]


async def test_trailing_event_without_blank_line_is_delivered() -> None:
    assert await _collect(b"data: [DONE]\n") == [("message", "[DONE]")]
