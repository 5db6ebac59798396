"""Logging off the event loop: records logged on the loop are formatted, redacted and
written by the listener thread, captured as they were when logged, and all written by
the time the pipeline stops."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from llmgateway_server.observability import LogPipeline, configure_logging

SECRET = "k3y!"


class RecordingStream:
    """A text stream that remembers what was written, and from which thread."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.writes.append((threading.get_ident(), text))
        return len(text)

    def flush(self) -> None:
        """Nothing buffered."""

    def entries(self) -> list[dict[str, Any]]:
        text = "".join(t for _, t in self.writes)
        return [json.loads(line) for line in text.splitlines() if line]

    def threads(self) -> set[int]:
        return {thread for thread, _ in self.writes}


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def stream(restore_root_logger: None) -> RecordingStream:
    return RecordingStream()


def _configure(stream: RecordingStream) -> LogPipeline:
    return configure_logging("debug", [SECRET], stream=stream)


async def test_records_logged_on_the_loop_are_written_by_the_listener_thread(
    stream: RecordingStream,
) -> None:
    pipeline = _configure(stream)
    log = logging.getLogger("llmgateway.test")
    for n in range(200):
        log.info("record %d", n, extra={"n": n})
    pipeline.stop()
    entries = stream.entries()
    assert [e["n"] for e in entries] == list(range(200))  # every one, in order
    assert entries[7]["msg"] == "record 7"
    assert threading.get_ident() not in stream.threads()  # never written on the loop


async def test_a_secret_in_a_record_is_redacted(stream: RecordingStream) -> None:
    pipeline = _configure(stream)
    logging.getLogger("llmgateway.test").warning(
        "upstream said %s", f"bad key {SECRET}", extra={"echo": {"x-api-key": SECRET}}
    )
    pipeline.stop()
    ((entry,),) = [stream.entries()]
    assert SECRET not in json.dumps(entry)
    assert entry["msg"] == "upstream said bad key [REDACTED]"
    assert entry["echo"] == {"x-api-key": "[REDACTED]"}


async def test_records_keep_what_was_true_when_logged(stream: RecordingStream) -> None:
    pipeline = _configure(stream)
    log = logging.getLogger("llmgateway.test")
    routes = ["a"]
    state = {"attempts": 1}
    log.info("routes %s", routes, extra={"routes": routes, "state": state})
    log.info("attempts %(attempts)d", state)
    routes.append("b")  # changed after logging, before the listener formats it
    state["attempts"] = 2
    pipeline.stop()
    first, second = stream.entries()
    assert first["msg"] == "routes ['a']"
    assert (first["routes"], first["state"]) == (["a"], {"attempts": 1})
    assert second["msg"] == "attempts 1"


async def test_an_exception_is_written_with_its_traceback(stream: RecordingStream) -> None:
    pipeline = _configure(stream)
    log = logging.getLogger("llmgateway.test")

    def fail() -> None:
        raise RuntimeError(f"boom with {SECRET}")

    try:
        fail()
    except RuntimeError:
        log.exception("call failed")
    pipeline.stop()
    (entry,) = stream.entries()
    assert entry["level"] == "error"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "in fail" in entry["exc"]
    assert 'raise RuntimeError(f"boom with {SECRET}")' in entry["exc"]  # source line
    assert entry["exc"].endswith("RuntimeError: boom with [REDACTED]")


async def test_records_after_stop_are_still_written(stream: RecordingStream) -> None:
    pipeline = _configure(stream)
    pipeline.stop()
    pipeline.stop()  # idempotent
    logging.getLogger("llmgateway.test").info("late %s", SECRET)
    (entry,) = stream.entries()
    assert entry["msg"] == "late [REDACTED]"


def test_configuring_again_stops_the_previous_pipeline(stream: RecordingStream) -> None:
    first = _configure(stream)
    logging.getLogger("llmgateway.test").info("one")
    second_stream = RecordingStream()
    second = _configure(second_stream)
    logging.getLogger("llmgateway.test").info("two")
    second.stop()
    first.stop()
    assert [e["msg"] for e in stream.entries()] == ["one"]
    assert [e["msg"] for e in second_stream.entries()] == ["two"]


def test_level_filters_before_the_queue(stream: RecordingStream) -> None:
    pipeline = configure_logging("warning", stream=stream)
    log = logging.getLogger("llmgateway.test")
    log.info("dropped")
    log.warning("kept")
    pipeline.stop()
    assert [e["msg"] for e in stream.entries()] == ["kept"]


class BlockedStream(RecordingStream):
    """A stream whose writes wait until ``release`` is set (a stuck log shipper)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)


async def test_a_stuck_stream_does_not_block_the_loop(restore_root_logger: None) -> None:
    stream = BlockedStream()
    pipeline = configure_logging("info", stream=stream)
    # Released after 30 s whatever happens, so a regression fails instead of hanging.
    timer = threading.Timer(30.0, stream.release.set)
    timer.start()
    try:
        log = logging.getLogger("llmgateway.test")
        for n in range(2000):
            log.info("record %d", n)
        assert not stream.release.is_set(), "logging waited for the stream"
    finally:
        stream.release.set()
        timer.cancel()
    pipeline.stop()
    assert len(stream.entries()) == 2000


def test_a_record_whose_arguments_do_not_fit_is_reported(stream: RecordingStream) -> None:
    pipeline = _configure(stream)
    logging.getLogger("llmgateway.test").info("count %d", "not a number")
    logging.getLogger("llmgateway.test").info("next")
    pipeline.stop()
    first, second = stream.entries()
    assert first["msg"] == "unformattable log record (TypeError): count %d"
    assert (first["level"], first["logger"]) == ("info", "llmgateway.test")
    assert second["msg"] == "next"
