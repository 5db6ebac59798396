"""The SSE parser gives the same events however the network cuts the stream.

Recorded streams (tests/data/sse/) as the real APIs send them, in their LF form and in
CRLF, CR and byte-order-mark variants, are fed split at every byte position and at seeded
random multi-cuts; every split must give the events an independent reference decoder (a
direct reading of the specification over the whole text) gives.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest
from llmgateway_server.providers.sse import SSEDecodeError, iter_sse

_DATA = Path(__file__).resolve().parent.parent / "data" / "sse"
_RECORDINGS = ("openai_chat.sse", "anthropic_messages.sse", "spec_edge_cases.sse")
_BOM = b"\xef\xbb\xbf"


def _variants(lf: bytes) -> dict[str, bytes]:
    # The recordings' JSON never holds a raw newline, so every LF is a line end.
    return {
        "lf": lf,
        "crlf": lf.replace(b"\n", b"\r\n"),
        "cr": lf.replace(b"\n", b"\r"),
        "bom-lf": _BOM + lf,
        "bom-crlf": _BOM + lf.replace(b"\n", b"\r\n"),
    }


_STREAMS = {
    f"{name.removesuffix('.sse')}-{variant}": data
    for name in _RECORDINGS
    for variant, data in _variants((_DATA / name).read_bytes()).items()
}


def _reference(stream: bytes) -> list[tuple[str, str]]:
    """The specification's algorithm over the whole decoded text (plus the gateway's one
    liberty: an event still open at the end of the body is delivered)."""
    text = stream.decode("utf-8").removeprefix("\ufeff")
    lines = re.split("\r\n|\r|\n", text)
    lines.pop()  # the unterminated rest after the last line end
    events: list[tuple[str, str]] = []
    event, data = "", []
    for line in lines:
        if not line:
            if data:
                events.append((event or "message", "\n".join(data)))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        events.append((event or "message", "\n".join(data)))
    return events


async def _feed(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect_async(parts: Sequence[bytes]) -> list[tuple[str, str]]:
    return [e async for e in iter_sse(_feed(parts))]


def _run(coro: Coroutine[Any, Any, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    # Nothing here waits on I/O, so the coroutine finishes in one step: no event loop
    # needed, which keeps tens of thousands of parses fast.
    try:
        coro.send(None)
    except StopIteration as done:
        result: list[tuple[str, str]] = done.value
        return result
    coro.close()
    raise AssertionError("the parser waited on something other than its input")


def _collect(*parts: bytes) -> list[tuple[str, str]]:
    return _run(_collect_async(parts))


def _cut(stream: bytes, positions: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(positions), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def test_recordings_hold_what_the_property_test_needs() -> None:
    openai = (_DATA / "openai_chat.sse").read_bytes()
    anthropic = (_DATA / "anthropic_messages.sse").read_bytes()
    assert openai.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{"prompt_tokens"' in openai
    for event in (b"message_start", b"ping", b"content_block_delta", b"message_stop"):
        assert b"event: " + event + b"\n" in anthropic
    for stream in (openai, anthropic):
        # multi-byte characters, 2, 3 and 4 bytes long, to be cut inside
        assert any(len(ch.encode()) == 4 for ch in stream.decode())
        assert any(len(ch.encode()) == 3 for ch in stream.decode())
        assert any(len(ch.encode()) == 2 for ch in stream.decode())


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_whole_stream_gives_the_reference_events(name: str) -> None:
    stream = _STREAMS[name]
    expected = _reference(stream)
    assert len(expected) >= 6
    assert _collect(stream) == expected


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_every_single_cut_gives_the_same_events(name: str) -> None:
    stream = _STREAMS[name]
    expected = _reference(stream)
    for at in range(1, len(stream)):
        assert _collect(stream[:at], stream[at:]) == expected, f"cut at byte {at}"


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_random_multi_cuts_give_the_same_events(name: str) -> None:
    stream = _STREAMS[name]
    expected = _reference(stream)
    rng = random.Random(f"sse-{name}")
    for _ in range(300):
        positions = rng.sample(range(1, len(stream)), rng.randint(2, 40))
        assert _collect(*_cut(stream, positions)) == expected, f"cuts at {sorted(positions)}"
    # and the extreme: every byte its own read
    assert _collect(*_cut(stream, range(1, len(stream)))) == expected


def test_openai_recording_text_and_done() -> None:
    events = _collect(_STREAMS["openai_chat-crlf"])
    assert events[-1] == ("message", "[DONE]")
    assert len(events) == 19


def test_anthropic_crlf_cut_after_every_cr_is_one_line_break() -> None:
    # The reported failure: each CR at the end of one read, its LF opening the next.
    stream = _STREAMS["anthropic_messages-crlf"]
    positions = [i + 1 for i, byte in enumerate(stream) if byte == 0x0D]
    events = _collect(*_cut(stream, positions))
    assert [e for e, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    assert events[-1] == ("message_stop", '{"type":"message_stop"}')
    assert events == _reference(stream)


def test_leading_byte_order_mark_is_stripped_even_when_split() -> None:
    assert _collect(_BOM + b"data: Hello\n\n") == [("message", "Hello")]
    assert _collect(b"\xef", b"\xbb", b"\xbfdata: Hello\n\n") == [("message", "Hello")]
    assert _collect(b"\xef\xbb", b"\xbf", b"data: Hello\n\n") == [("message", "Hello")]


def test_only_the_first_byte_order_mark_is_stripped() -> None:
    # A second mark is content, and makes the first line's field name unknown.
    assert _collect(_BOM + _BOM + b"data: x\n\ndata: y\n\n") == [("message", "y")]


def test_empty_reads_do_not_break_a_pending_crlf() -> None:
    assert _collect(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == [("message", "a\nb")]


def test_events_split_across_chunks_are_reassembled() -> None:
    events = _collect(b"event: ping\nda", b'ta: {"a"', b": 1}\n", b"\n")
    assert events == [("ping", '{"a": 1}')]


def test_unnamed_events_are_messages_and_comments_are_skipped() -> None:
    events = _collect(b": keep-alive\n\ndata: x\n\ndata: y\n\n")
    assert events == [("message", "x"), ("message", "y")]


def test_crlf_and_multiline_data() -> None:
    assert _collect(b"data: a\r\ndata: b\r\n\r\n") == [("message", "a\nb")]


def test_trailing_event_without_blank_line_is_delivered() -> None:
    assert _collect(b"data: [DONE]\n") == [("message", "[DONE]")]


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(UnicodeDecodeError):
        _collect(b"data: \xff\xfe\n\n")


def test_a_line_over_one_mib_is_refused() -> None:
    with pytest.raises(SSEDecodeError):
        _collect(b"data: ", b"x" * (1024 * 1024 + 1))


def test_an_event_over_one_mib_of_short_lines_is_refused() -> None:
    with pytest.raises(SSEDecodeError):
        _collect(b"data: xxxxxxxxxxxxxxx\n" * 70_000)
