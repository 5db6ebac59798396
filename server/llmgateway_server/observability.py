"""Logs: one JSON object per line, written off the event loop, every secret redacted.

The root logger's one handler is a queue handler: on the thread that logs (the event
loop), a record is only captured in a form that is safe to format later (its message
arguments, ``extra=`` fields and exception snapshotted); a listener thread formats
records as JSON, redacts and writes them, in batches, so a slow or blocked stderr never
stalls the loop. ``configure_logging`` returns the pipeline; ``LogPipeline.stop`` (also
run at exit) drains the queue, so no record is lost.

Structured fields are passed with ``extra=`` and emitted as top-level keys. Redaction is
one regular-expression pass over each final line (skipped when a substring test finds no
candidate): every configured secret (provider and tenant keys, in every shape a log line
can hold them: plain, escaped, inside a ``repr`` of bytes, URL-encoded) and any
``Bearer <token>`` / ``x-api-key: <token>`` / ``authorization: <value>``. It applies to
every logger, the gRPC library's included (its records propagate to the root). Defence in
depth: the gateway's own code never logs keys.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "LogPipeline", "Redactor", "configure_logging"]

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}
_REDACTED = "[REDACTED]"
# Values that cannot change after they are logged: kept as they are until formatted.
# Exact types, looked up in a set: isinstance against a tuple costs ~10 times more.
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})
_EXC = "_llmgateway_exc"  # a record's exception, captured as a TracebackException
_STOP = object()  # queued by LogPipeline.stop: the listener writes what precedes it and ends
_BATCH_WAIT_S = 0.02
_MAX_BATCH = 1000
_WRITE_EVERY = 32

# A credential by its context, as it appears inside a JSON line (where a quote is \" and a
# backslash \\): a bearer token, or the value of a key/authorization header, in header
# ("x-api-key: v"), assignment ("api_key=v"), dict or tuple repr form. The token ends at
# whitespace or an unescaped quote, so the line stays valid JSON.
_CREDENTIAL = (
    r"(?P<prefix>(?i:\bbearer\s+"
    r"|\b(?:x-api-key|api[-_]key|proxy-authorization|authorization)(?:\\?[\"'])?"
    r"\s*[:=,]\s*(?:\\?[\"'])?(?:(?:bearer|basic)\s+)?))"
    r"(?:[^\s\"\\]|\\[\"\\/])+"
)


def _json_text(value: str) -> list[str]:
    """How ``value`` reads inside a JSON string, as the formatter writes it (and as its
    ASCII-only fallback does)."""
    forms = [json.dumps(value, ensure_ascii=True)[1:-1]]
    # Lone surrogates: orjson refuses them, only the fallback writes them.
    with contextlib.suppress(orjson.JSONEncodeError):
        forms.append(orjson.dumps(value).decode()[1:-1])
    return forms


def _shapes(secret: str) -> set[str]:
    """Every way ``secret`` can appear in a log line."""
    forms = {
        secret,
        repr(secret)[1:-1],  # inside a repr of a str, a tuple of headers, a dict
        repr(secret.encode("utf-8", "surrogateescape"))[2:-1],  # gRPC's "b'Bearer ...'"
        urllib.parse.quote(secret, safe=""),  # in a URL
    }
    return {text for form in forms if form for text in _json_text(form)}


class Redactor:
    """Removes secrets from a JSON log line in one regular-expression pass.

    Every configured secret is matched whatever its length or shape (longest first, so a
    secret that contains another is removed whole), as are credentials recognisable by
    their context (``_CREDENTIAL``). The pass runs only when a substring test finds a
    candidate: a line with no secret costs a few ``in`` tests (~1 µs), where the
    regular expression alone scans it several times slower.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = {shape for secret in secrets if secret for shape in _shapes(secret)}
        ordered = sorted(literals, key=lambda s: (-len(s), s))
        self._literals = tuple(ordered)
        alternatives = [*(re.escape(s) for s in ordered), _CREDENTIAL]
        self._pattern = re.compile("|".join(alternatives))

    def __call__(self, line: str) -> str:
        """``line`` with every secret replaced by ``[REDACTED]``."""
        lowered = line.lower()
        if (
            "bearer" in lowered
            or "authoriz" in lowered
            or "api-key" in lowered
            or "api_key" in lowered
            or any(literal in line for literal in self._literals)
        ):
            return self._pattern.sub(self._replace, line)
        return line

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        prefix = match.group("prefix")
        return _REDACTED if prefix is None else prefix + _REDACTED


def _default(value: object) -> str:
    return str(value)


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=_default).decode()
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses lone surrogates and integers over 64 bits; json writes both.
        return json.dumps(entry, default=str, ensure_ascii=True)


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON with every secret redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        captured: traceback.TracebackException | None = record.__dict__.get(_EXC)
        if captured is not None:
            entry["exc"] = "".join(captured.format()).rstrip("\n")
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return self._redact(_dumps(entry))


def _immutable(value: object) -> bool:
    return type(value) in _IMMUTABLE or isinstance(value, enum.Enum)


def _freeze(value: object, depth: int = 0) -> object:
    """A copy of ``value`` that later changes to it cannot reach: containers copied (a few
    levels deep), anything else that is not immutable turned into its ``str``."""
    if _immutable(value):
        return value
    if depth < 4:
        # The immutable test is inlined: a usage record is a dict of ~20 plain values.
        if isinstance(value, list | tuple | set | frozenset):
            return [
                item if type(item) in _IMMUTABLE else _freeze(item, depth + 1) for item in value
            ]
        if isinstance(value, Mapping):
            return {
                k if type(k) is str else str(k): v
                if type(v) in _IMMUTABLE
                else _freeze(v, depth + 1)
                for k, v in value.items()
            }
    return str(value)


class _CapturingQueueHandler(logging.handlers.QueueHandler):
    """Puts records on the queue without formatting them (the listener does), after
    making them safe to format later on another thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A shallow copy of ``record`` (other handlers may still see the original) with
        its mutable parts snapshotted."""
        cls = type(record)
        copy = cls.__new__(cls)
        fields = copy.__dict__
        fields.update(record.__dict__)
        args = record.args
        if not isinstance(record.msg, str) or (
            args and (type(args) is not tuple or not all(_immutable(a) for a in args))
        ):
            # Arguments that may change (a mapping, a list, an object; or a message that is
            # an object) are rendered now.
            fields["msg"] = record.getMessage()
            fields["args"] = None
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not _immutable(value):
                fields[key] = _freeze(value)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # The exception's text and frames now, its source lines later: no file is read
            # here, and no frame (with all its locals) is kept alive by the queue.
            _, exc, tb = record.exc_info
            fields[_EXC] = traceback.TracebackException(
                type(exc), exc, tb, lookup_lines=False, capture_locals=False
            )
        fields["exc_info"] = None
        return copy


class _Listener(threading.Thread):
    """Formats, redacts and writes queued records, in batches.

    One wake-up and one write per batch, not per record: the thread shares the GIL with
    the event loop, and handing it over for every record cost the loop more than the
    formatting itself. A record waits at most ``_BATCH_WAIT_S`` before it is written.
    """

    def __init__(self, records: queue.SimpleQueue[object], writer: logging.StreamHandler[TextIO]):
        super().__init__(name="llmgateway-log-writer", daemon=True)
        self._records = records
        self._writer = writer  # its formatter, its stream and its lock
        assert writer.formatter is not None
        self._formatter = writer.formatter

    def run(self) -> None:
        records, format_record = self._records, self._format
        while True:
            batch = [records.get()]
            time.sleep(_BATCH_WAIT_S)  # let the records of this burst join the batch
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            done = any(r is _STOP for r in batch)
            logged = [r for r in batch if isinstance(r, logging.LogRecord)]
            for start in range(0, len(logged), _WRITE_EVERY):
                # A write releases the GIL: the loop never waits for a whole batch.
                chunk = logged[start : start + _WRITE_EVERY]
                self._write("".join([format_record(r) + "\n" for r in chunk]))
            if done:
                return

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record)
        except (TypeError, ValueError, KeyError) as exc:
            # A message whose arguments do not fit its format string (formatted lazily,
            # here): say so rather than lose the record silently.
            fallback = logging.makeLogRecord(
                {
                    "name": record.name,
                    "levelno": record.levelno,
                    "levelname": record.levelname,
                    "created": record.created,
                    "msg": f"unformattable log record ({type(exc).__name__}): %s",
                    "args": (str(record.msg),),
                }
            )
            return self._formatter.format(fallback)

    def _write(self, text: str) -> None:
        writer = self._writer
        # The writer's lock: while stopping, records may also be written by it directly.
        writer.acquire()
        try:
            writer.stream.write(text)
            writer.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or broken: nowhere left to report it
        finally:
            writer.release()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._records.put(_STOP)
        self.join()


class LogPipeline:
    """The running queue listener behind the root logger."""

    def __init__(
        self, handler: logging.Handler, writer: logging.Handler, listener: _Listener
    ) -> None:
        self._handler = handler
        self._writer = writer
        self._listener = listener
        self._stopped = False

    def stop(self) -> None:
        """Write every queued record and stop the listener thread. Records logged later
        are written directly (there is no event loop left to protect). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.addHandler(self._writer)
        self._listener.stop()  # drains the queue first
        self._writer.flush()


_current: LogPipeline | None = None


def configure_logging(
    level: str, secrets: Iterable[str] = (), *, stream: TextIO | None = None
) -> LogPipeline:
    """Route every log record, through a listener thread, to ``stream`` (stderr) as JSON
    lines with ``secrets`` redacted. Replaces the root logger's handlers (and stops the
    pipeline of an earlier call); the pipeline is stopped at exit if not before."""
    global _current
    if _current is not None:
        _current.stop()
    writer = logging.StreamHandler(sys.stderr if stream is None else stream)
    writer.setFormatter(JsonFormatter(secrets))
    records: queue.SimpleQueue[object] = queue.SimpleQueue()
    handler = _CapturingQueueHandler(records)
    listener = _Listener(records, writer)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    listener.start()
    pipeline = LogPipeline(handler, writer, listener)
    atexit.register(pipeline.stop)
    _current = pipeline
    return pipeline
