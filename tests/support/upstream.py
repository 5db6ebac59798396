"""A fake upstream LLM provider: a real HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks the OpenAI Chat Completions wire format (``POST /v1/chat/completions``, also what
vLLM and Ollama serve as "OpenAI-compatible") and the Anthropic Messages wire format
(``POST /v1/messages``): JSON bodies, SSE streams, error bodies and ``retry-after`` headers as
the real APIs send them, so the official SDKs parse every answer (see
``tests/integration/test_fake_upstream_conformance.py``, which pins that).

Default answer: ``"Echo: " + <last user message text>`` (or ``fixed_text``), cut so that it
never exceeds ``max_tokens`` / ``max_completion_tokens`` "tokens". The double's own token
arithmetic counts a token as a whitespace-separated word:

* prompt tokens = words across all message contents (and the Anthropic ``system`` prompt)
  + 3 per message (the ``system`` prompt counts as one message);
* completion tokens = words produced.

Behaviours are scripted per model name, because a gateway fallback chain calls different
models on the same server::

    async with FakeUpstream() as up:
        up.script("gpt-primary", Error(429, retry_after="2"), Respond(text="hi"))
        up.set_default("gpt-broken", Error(500))
        ...
        assert up.request_count("gpt-primary") == 2

Recorded provider answers (tool calls, structured output, refusals, images, prompt-cache
usage; ``tests/data/recorded/README.md`` lists them) are replayed byte for byte::

    up.script("gpt-4o", Replay("tool_call"))  # JSON or SSE, as the request asks

A request takes, in this order: the next behaviour queued by ``script(model, ...)``, else the
next one queued by ``script_any(...)``, else ``set_default(model, ...)``, else
``set_default(None, ...)``, else the normal answer.

Run as a process (benchmarks, subprocess tests)::

    python -m tests.support.upstream --host 127.0.0.1 --port 0 [--latency-ms N] [--chunks N]
        [--chunk-delay-ms N] [--text TEXT] [--api-key KEY] [--uvloop]

prints ``LISTENING http://127.0.0.1:PORT`` (flushed) and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import re
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

__all__ = [
    "RECORDED_DIR",
    "Behaviour",
    "ContentPolicy",
    "ContextTooLong",
    "EchoHeaders",
    "Error",
    "FakeUpstream",
    "Gate",
    "Hang",
    "IgnoreStream",
    "MalformedSSE",
    "RecordedRequest",
    "Replay",
    "Reset",
    "Respond",
    "StopMidway",
    "StreamError",
    "main",
    "recorded_body",
    "recorded_path",
    "recorded_scenarios",
    "sse_events",
]

Api: TypeAlias = Literal["openai", "anthropic"]


# --------------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """A successful answer (JSON, or SSE when the request has ``"stream": true``).

    ``text=None`` answers the default text (echo or ``fixed_text``, cut at ``max_tokens``);
    an explicit ``text`` is sent verbatim. ``finish_reason`` accepts either provider's
    vocabulary and is translated (``stop``<->``end_turn``, ``length``<->``max_tokens``,
    ``tool_calls``<->``tool_use``, ``content_filter``<->``refusal``).
    ``input_tokens`` is the total prompt size *including* ``cached_input_tokens``: OpenAI
    reports it as ``prompt_tokens`` (with ``prompt_tokens_details.cached_tokens``), Anthropic
    as ``input_tokens = input_tokens - cached`` plus ``cache_read_input_tokens = cached``.
    ``first_byte_delay_s`` adds to the server's ``latency_s``; ``chunk_delay_s`` overrides
    the server's ``chunk_delay_s``; ``chunks`` overrides ``default_chunks``.
    """

    text: str | None = None
    chunks: int | None = None
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int = 0
    first_byte_delay_s: float = 0
    chunk_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """An HTTP error with the provider's real error body and ``request-id`` headers.

    ``kind`` overrides the error category: Anthropic ``error.type``; OpenAI ``error.type``
    and ``error.code`` (e.g. ``kind="insufficient_quota"``). ``message=None`` uses the
    provider's usual message for the status. ``retry_after`` / ``retry_after_ms`` are sent
    verbatim as the ``retry-after`` / ``retry-after-ms`` headers.
    """

    status: int
    retry_after: str | None = None
    retry_after_ms: str | None = None
    kind: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ContextTooLong:
    """400 "context length exceeded" as each provider words it.

    ``prompt_tokens=None`` reports the request's own prompt size (at least ``limit + 1``);
    ``limit=None`` is 128000 (OpenAI) / 200000 (Anthropic).
    """

    prompt_tokens: int | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ContentPolicy:
    """400 rejection by the provider's safety system.

    OpenAI: ``invalid_request_error`` with ``code`` (``"content_policy_violation"``; Azure
    OpenAI uses ``"content_filter"``). Anthropic: ``invalid_request_error`` "Output blocked
    by content filtering policy".
    """

    message: str | None = None
    code: str = "content_policy_violation"


@dataclass(frozen=True, slots=True)
class Hang:
    """Read the request, then never answer (no headers) until the client disconnects."""


@dataclass(frozen=True, slots=True)
class Gate:
    """Hold the request until ``opened`` is set (or the client goes away), then answer as
    ``then`` says (the normal answer by default): calls held until a test lets them go."""

    opened: asyncio.Event
    then: Respond = Respond()


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the TCP connection (RST) without sending any response."""


@dataclass(frozen=True, slots=True)
class MalformedSSE:
    """200 stream: the preamble and one valid content chunk, then a ``data:`` line that is
    not JSON, then the body ends. A non-streaming request gets a truncated JSON body."""


@dataclass(frozen=True, slots=True)
class StopMidway:
    """Stream the preamble and ``after_chunks`` content chunks, then close the connection:
    no final chunk, no usage, no ``[DONE]`` / ``message_stop``, and no terminating HTTP
    chunk. ``clean_eof=True`` ends the HTTP body properly instead (the SSE stream is still
    cut short). A non-streaming request gets half its JSON body, then the connection closes.
    """

    after_chunks: int = 1
    clean_eof: bool = False


@dataclass(frozen=True, slots=True)
class StreamError:
    """Stream ``after_chunks`` content chunks, then an in-band error and the end of the body.

    Anthropic: ``event: error`` with ``error.type = kind`` (default ``overloaded_error``).
    OpenAI: ``data: {"error": {...}}`` with ``type = kind`` (default ``server_error``).
    A non-streaming request gets the equivalent HTTP error (529 / 500).
    """

    after_chunks: int = 1
    kind: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class EchoHeaders:
    """An error whose body repeats the request's headers, provider key included, as some
    proxies and misconfigured servers do. ``shape``: ``"typed"``, the provider's error
    format with the headers in ``error.message``; ``"untyped"``, the same without
    ``type``/``code``; ``"key_as_type"``, the bare key in ``error.type`` (and OpenAI's
    ``error.code``) too; ``"text"``, a plain-text body of the headers. ``in_stream=True``
    answers a streaming request 200 and then, before any content, an in-band error event
    (``"text"`` sends it untyped).
    """

    status: int = 400
    shape: Literal["typed", "untyped", "key_as_type", "text"] = "typed"
    in_stream: bool = False


@dataclass(frozen=True, slots=True)
class IgnoreStream:
    """Answer the whole non-streaming JSON body even when the request has ``"stream":
    true``, as LiteLLM's Anthropic-compatible endpoint does for mocked models."""

    text: str | None = None


RECORDED_DIR: Final = Path(__file__).resolve().parents[1] / "data" / "recorded"
_SCENARIO_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_]*")


def recorded_path(api: Api, scenario: str, *, stream: bool) -> Path:
    """``tests/data/recorded/<api>/<scenario>.sse`` (``stream``) or ``.json``."""
    if not _SCENARIO_NAME.fullmatch(scenario):
        raise ValueError(f"not a recorded scenario name: {scenario!r}")
    return RECORDED_DIR / api / f"{scenario}.{'sse' if stream else 'json'}"


@functools.lru_cache(maxsize=128)
def _read_recorded(path: Path) -> bytes:
    return path.read_bytes()


def recorded_body(api: Api, scenario: str, *, stream: bool) -> bytes:
    """The recorded response body, exactly as stored (FileNotFoundError when there is none)."""
    return _read_recorded(recorded_path(api, scenario, stream=stream))


def recorded_scenarios(api: Api) -> list[str]:
    """The scenarios recorded for ``api`` (a scenario may have only one of .json / .sse)."""
    return sorted(
        {p.stem for p in (RECORDED_DIR / api).glob("*.*") if p.suffix in {".json", ".sse"}}
    )


def sse_events(body: bytes) -> list[bytes]:
    """An SSE body cut into its events, each with its terminating blank line."""
    events = [event + b"\n\n" for event in body.split(b"\n\n")]
    if events[-1] == b"\n\n":
        events.pop()
    else:
        events[-1] = events[-1][:-2]  # a body without a final blank line keeps its tail as is
    return events


@dataclass(frozen=True, slots=True)
class Replay:
    """A recorded provider answer, sent byte for byte: ``RECORDED_DIR/<api>/<scenario>.json``
    for a non-streaming request, ``.sse`` for ``"stream": true`` (the API is the request
    path's). The JSON goes out as ``application/json``; the SSE stream event by event, with
    ``chunk_delay_s`` (default: the server's) between events. Both carry the usual request-id
    header. The recording is not adapted to the request: its ``model``, ids and usage (and an
    OpenAI stream's final usage chunk, even without ``stream_options.include_usage``) are
    what was recorded. A request with no recording for its API and mode gets a 500 saying
    so. ``first_byte_delay_s`` adds to the server's ``latency_s``.
    """

    scenario: str
    chunk_delay_s: float | None = None
    first_byte_delay_s: float = 0

    def __post_init__(self) -> None:
        if not any(
            recorded_path(api, self.scenario, stream=stream).is_file()
            for api in ("openai", "anthropic")
            for stream in (False, True)
        ):
            raise ValueError(f"no recording named {self.scenario!r} under {RECORDED_DIR}")


Behaviour: TypeAlias = (
    Respond
    | Error
    | ContextTooLong
    | ContentPolicy
    | Hang
    | Gate
    | Reset
    | MalformedSSE
    | StopMidway
    | StreamError
    | EchoHeaders
    | IgnoreStream
    | Replay
)


# --------------------------------------------------------------------------------------------
# Observability
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake upstream saw it."""

    api: Api | None
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was not JSON
    model: str | None
    stream: bool
    time: float  # time.monotonic() at arrival
    disconnected: bool = False  # the client went away while this request was in progress
    raw: bytes = b""  # the body's bytes as received

    @property
    def json(self) -> Any:
        return self.body


# --------------------------------------------------------------------------------------------
# Text and token arithmetic
# --------------------------------------------------------------------------------------------

_WORD_PIECE: Final = re.compile(r"\s*\S+")


_dumps: Final[Callable[[Any], str]] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


def _content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return " ".join(parts)
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += len(_content_text(message.get("content")).split()) + 3
    system = body.get("system")
    if system:
        total += len(_content_text(system).split()) + 3
    return total


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    return ""


@functools.lru_cache(maxsize=256)
def _word_pieces(text: str) -> tuple[str, ...]:
    """Split ``text`` into one piece per word (leading whitespace attached); joins to text."""
    pieces = _WORD_PIECE.findall(text)
    rest = text[sum(map(len, pieces)) :]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces.append(rest)
    return tuple(pieces)


@functools.lru_cache(maxsize=256)
def _split_chunks(text: str, chunks: int | None) -> tuple[str, ...]:
    """``text`` cut into ``chunks`` pieces (at most ``len(text)``); None = one per word."""
    words = _word_pieces(text)
    if chunks is None or not text:
        return words
    n = max(1, chunks)
    if n <= len(words):
        bounds = [i * len(words) // n for i in range(n + 1)]
        return tuple("".join(words[bounds[i] : bounds[i + 1]]) for i in range(n))
    n = min(n, len(text))
    bounds = [i * len(text) // n for i in range(n + 1)]
    return tuple(text[bounds[i] : bounds[i + 1]] for i in range(n))


def _truncate(text: str, limit: int | None) -> tuple[str, bool]:
    if limit is None:
        return text, False
    words = _word_pieces(text)
    if len(words) <= limit:
        return text, False
    return "".join(words[: max(0, limit)]), True


_TO_ANTHROPIC_STOP: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TO_OPENAI_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


@dataclass(slots=True)
class _Plan:
    """What a successful answer contains."""

    text: str
    pieces: tuple[str, ...]
    finish: str  # already in the provider's vocabulary
    prompt_tokens: int  # total, including cached
    completion_tokens: int
    cached_tokens: int
    chunk_delay_s: float


# --------------------------------------------------------------------------------------------
# Provider error bodies
# --------------------------------------------------------------------------------------------

# status -> (type, code, message); "{model}" is substituted.
_OPENAI_ERRORS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-****. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    429: (
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fakeupstream on tokens per min "
        "(TPM): Limit 30000, Used 30000, Requested 100. Please try again in 2s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}
_OPENAI_KIND_MESSAGES: Final = {
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing "
    "details. For more information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
}

# status -> (type, message)
_ANTHROPIC_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: (
        "billing_error",
        "Your credit balance is too low to access the Anthropic API. Please go to "
        "Plans & Billing to upgrade or purchase credits.",
    ),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization "
        "(00000000-0000-0000-0000-000000000000) of 50,000 input tokens per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
        "response headers for current usage. Please reduce the prompt length or the maximum "
        "tokens requested, or try again later. You may also contact sales at "
        "https://www.anthropic.com/contact-sales to discuss your options for a rate limit "
        "increase.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

_OPENAI_PATHS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})
_ANTHROPIC_PATHS: Final = frozenset({"/v1/messages"})
_SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
_JSON_CONTENT_TYPE: Final = "application/json"
_FINGERPRINT: Final = "fp_fakeupstream"
_MAX_BODY: Final = 64 * 1024 * 1024
_MALFORMED: Final[dict[Api, bytes]] = {
    "openai": b"data: {this is not json\n\n",
    "anthropic": b"event: content_block_delta\ndata: {this is not json\n\n",
}


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _Conn:
    """One TCP connection; ``lost`` resolves when the connection goes away."""

    __slots__ = ("lost", "transport")

    def __init__(self, transport: asyncio.Transport | None, lost: asyncio.Future[None]) -> None:
        self.transport = transport
        self.lost = lost


class _Server(web.Server):
    """aiohttp's low-level server, reporting connection open/close to the FakeUpstream."""

    def __init__(self, owner: FakeUpstream, **kwargs: Any) -> None:
        super().__init__(owner._handle, request_factory=self._make_big_request, **kwargs)
        self._owner = owner

    def _make_big_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # aiohttp caps request bodies at 1 MiB by default; long-context prompts are bigger.
        return web.BaseRequest(
            message, payload, protocol, writer, task, self._loop, client_max_size=_MAX_BODY
        )

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._owner._connection_made(handler, transport)

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self._owner._connection_lost(handler)


class _Ctx:
    """Per-request state."""

    __slots__ = ("api", "body", "conn", "model", "rec", "req_id", "request", "stream")

    def __init__(
        self,
        api: Api,
        body: dict[str, Any],
        model: str,
        stream: bool,
        rec: RecordedRequest,
        conn: _Conn,
        request: web.BaseRequest,
        req_id: str,
    ) -> None:
        self.api: Api = api
        self.body = body
        self.model = model
        self.stream = stream
        self.rec = rec
        self.conn = conn
        self.request = request
        self.req_id = req_id


class FakeUpstream:
    """A scriptable OpenAI + Anthropic compatible HTTP server (see the module docstring).

    Knobs (constructor arguments and mutable attributes): ``latency_s`` (delay before the
    response headers), ``chunk_delay_s`` (between SSE chunks), ``default_chunks`` (content
    pieces per stream; None = one per word), ``fixed_text`` (answer this instead of the
    echo), ``require_api_key`` (401 unless ``x-api-key`` / ``authorization: Bearer`` equals
    it), ``record`` (keep ``requests``; turn off for long benchmarks).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        default_chunks: int | None = None,
        fixed_text: str | None = None,
        require_api_key: str | None = None,
        record: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.chunk_delay_s = chunk_delay_s
        self.default_chunks = default_chunks
        self.fixed_text = fixed_text
        self.require_api_key = require_api_key
        self.record = record

        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.total_connections = 0

        self._queues: dict[str, deque[Behaviour]] = {}
        self._any_queue: deque[Behaviour] = deque()
        self._defaults: dict[str | None, Behaviour] = {}
        self._counts: dict[str | None, int] = {}
        self._total_requests = 0
        self._conns: dict[web.RequestHandler, _Conn] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._closing = False
        # POST /v1/moderations (OpenAI's format): a word in the input -> (category,
        # score); every other category scores 0.01. A delay before answering, or an error
        # status instead of an answer.
        self.moderation_words: dict[str, tuple[str, float]] = {}
        self.moderation_delay_s = 0.0
        self.moderation_status = 200

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeUpstream already started")
        self._closing = False
        server = _Server(self, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        sockets = [s for s in runner.addresses if isinstance(s, tuple)]
        if sockets:
            self.port = int(sockets[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        await runner.cleanup()
        self._notify()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash, no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scripting ---------------------------------------------------------------------------

    def script(self, model: str, *behaviours: Behaviour) -> None:
        """Queue behaviours for ``model``, consumed one per request."""
        self._queues.setdefault(model, deque()).extend(behaviours)

    def script_any(self, *behaviours: Behaviour) -> None:
        """Queue behaviours used by requests for any model (after that model's own queue)."""
        self._any_queue.extend(behaviours)

    def set_default(self, model: str | None, behaviour: Behaviour | None) -> None:
        """What ``model`` gets once its queues are empty (None model = every model;
        None behaviour = back to the normal answer)."""
        if behaviour is None:
            self._defaults.pop(model, None)
        else:
            self._defaults[model] = behaviour

    def pending(self, model: str | None = None) -> int:
        """Scripted behaviours not yet consumed (for ``model``, or in all queues)."""
        if model is not None:
            return len(self._queues.get(model, ()))
        return sum(map(len, self._queues.values())) + len(self._any_queue)

    def clear_scripts(self) -> None:
        self._queues.clear()
        self._any_queue.clear()
        self._defaults.clear()

    def reset(self) -> None:
        """Forget scripts, defaults, recorded requests and counters (not the connections)."""
        self.clear_scripts()
        self.requests.clear()
        self._counts.clear()
        self._total_requests = 0
        self.disconnects = 0

    def _next_behaviour(self, model: str) -> Behaviour | None:
        queue = self._queues.get(model)
        if queue:
            return queue.popleft()
        if self._any_queue:
            return self._any_queue.popleft()
        behaviour = self._defaults.get(model)
        if behaviour is None:
            behaviour = self._defaults.get(None)
        return behaviour

    # -- observability -----------------------------------------------------------------------

    def request_count(self, model: str | None = None) -> int:
        """Requests received (for ``model``, or in total), whatever their outcome."""
        if model is None:
            return self._total_requests
        return self._counts.get(model, 0)

    @property
    def open_connections(self) -> int:
        """TCP connections currently open."""
        return len(self._conns)

    async def wait_for_disconnects(self, n: int = 1, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """Wait until at least ``n`` in-progress requests saw their client disconnect."""
        return await self.wait_until(lambda: self.disconnects >= n, timeout)

    async def wait_for_requests(
        self,
        n: int = 1,
        model: str | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> bool:
        """Wait until at least ``n`` requests (for ``model``) have arrived."""
        return await self.wait_until(lambda: self.request_count(model) >= n, timeout)

    async def wait_for_open_connections(self, n: int = 0, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """Wait until exactly ``n`` TCP connections are open (0: the client closed them all)."""
        return await self.wait_until(lambda: self.open_connections == n, timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds, re-checked whenever a request arrives, a client
        disconnects or a connection opens or closes. False on timeout."""
        if predicate():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return predicate()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if predicate():
                return True

    def _notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        self._conns[handler] = _Conn(transport, asyncio.get_running_loop().create_future())
        self.total_connections += 1
        self._notify()

    def _connection_lost(self, handler: web.RequestHandler) -> None:
        conn = self._conns.pop(handler, None)
        if conn is not None and not conn.lost.done():
            conn.lost.set_result(None)
        self._notify()

    def _note_disconnect(self, rec: RecordedRequest) -> None:
        if self._closing or rec.disconnected:
            return
        rec.disconnected = True
        self.disconnects += 1
        self._notify()

    async def _pause(self, ctx: _Ctx, delay: float | None) -> bool:
        """Sleep ``delay`` seconds (None: forever) unless the client goes away first.
        True when the client has gone (recorded as a disconnect)."""
        lost = ctx.conn.lost
        if not lost.done():
            if delay is None:
                await asyncio.wait((lost,))
            elif delay > 0:
                await asyncio.wait((lost,), timeout=delay)
        if lost.done():
            self._note_disconnect(ctx.rec)
            return True
        return False

    async def _write(self, ctx: _Ctx, resp: web.StreamResponse, data: bytes) -> bool:
        """Write ``data``; False (recorded as a disconnect) when the client has gone."""
        try:
            await resp.write(data)
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
            return False
        return True

    # -- request handling --------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/_control/state" and request.method == "GET":
            # For tests in other languages (clients/conformance): what the upstream saw.
            return web.json_response(
                {
                    "requests": self._total_requests,
                    "disconnects": self.disconnects,
                    "open_connections": self.open_connections,
                }
            )
        api: Api | None
        if path in _OPENAI_PATHS:
            api = "openai"
        elif path in _ANTHROPIC_PATHS:
            api = "anthropic"
        else:
            api = None
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        obj: dict[str, Any] | None = body if isinstance(body, dict) else None
        model_field = obj.get("model") if obj is not None else None
        model = model_field if isinstance(model_field, str) else None
        stream = obj is not None and obj.get("stream") is True
        rec = RecordedRequest(
            api=api,
            method=request.method,
            path=path,
            headers={k.lower(): v for k, v in request.headers.items()} if self.record else {},
            body=body,
            model=model,
            stream=stream,
            time=time.monotonic(),
            raw=raw if self.record else b"",
        )
        if self.record:
            self.requests.append(rec)
        self._total_requests += 1
        self._counts[model] = self._counts.get(model, 0) + 1
        self._notify()

        n = next(self._ids)
        req_id = f"req_fake{n:024d}"
        if path == "/v1/moderations":
            return await self._moderate(obj, req_id)
        if api is None:
            return self._openai_error(
                404,
                "invalid_request_error",
                None,
                None,
                f"Invalid URL ({request.method} {path})",
                req_id,
            )
        if request.method != "POST":
            return self._api_error(api, 405, None, f"Method {request.method} not allowed", req_id)
        if self.require_api_key is not None:
            denied = self._check_api_key(api, request, req_id)
            if denied is not None:
                return denied
        if obj is None:
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)"
                if api == "openai"
                else "Request body must be a JSON object"
            )
            return self._api_error(api, 400, None, message, req_id)
        invalid = self._validate(api, obj, model, req_id)
        if invalid is not None:
            return invalid
        assert model is not None  # checked by _validate
        conn = self._conns.get(request.protocol)
        if conn is None:  # the connection is already gone
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lost.set_result(None)
            conn = _Conn(None, lost)
        ctx = _Ctx(api, obj, model, stream, rec, conn, request, req_id)
        return await self._run(ctx, self._next_behaviour(model))

    async def _moderate(self, body: dict[str, Any] | None, req_id: str) -> web.Response:
        """OpenAI's moderation endpoint: one result per input text."""
        if self.moderation_delay_s:
            await asyncio.sleep(self.moderation_delay_s)
        if self.moderation_status != 200:
            return self._openai_error(
                self.moderation_status, "server_error", None, None, "moderation failed", req_id
            )
        raw = (body or {}).get("input")
        texts = [raw] if isinstance(raw, str) else [t for t in raw or () if isinstance(t, str)]
        categories = {"hate", "harassment", "violence", "sexual", "self-harm"}
        categories.update(c for c, _ in self.moderation_words.values())
        results = []
        for text in texts:
            scores = dict.fromkeys(sorted(categories), 0.01)
            for word, (category, score) in self.moderation_words.items():
                if word.lower() in text.lower():
                    scores[category] = max(scores[category], score)
            results.append(
                {
                    "flagged": any(v >= 0.5 for v in scores.values()),
                    "categories": {c: v >= 0.5 for c, v in scores.items()},
                    "category_scores": scores,
                }
            )
        model = (body or {}).get("model") or "omni-moderation-latest"
        return web.json_response({"id": f"modr-{req_id}", "model": model, "results": results})

    def _check_api_key(
        self, api: Api, request: web.BaseRequest, req_id: str
    ) -> web.Response | None:
        if api == "anthropic":
            key = request.headers.get("x-api-key")
            if key is None:
                bearer = request.headers.get("authorization", "")
                key = bearer[7:] if bearer.startswith("Bearer ") else None
            if key == self.require_api_key:
                return None
            message = "x-api-key header is required" if key is None else "invalid x-api-key"
            return self._anthropic_error(401, "authentication_error", message, req_id)
        auth = request.headers.get("authorization")
        if auth is None or not auth.startswith("Bearer "):
            return self._openai_error(
                401,
                "invalid_request_error",
                None,
                None,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                req_id,
            )
        key = auth[7:]
        if key == self.require_api_key:
            return None
        shown = f"{key[:3]}****{key[-4:]}" if len(key) > 8 else "****"
        return self._openai_error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            None,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            req_id,
        )

    def _validate(
        self, api: Api, body: dict[str, Any], model: str | None, req_id: str
    ) -> web.Response | None:
        if api == "openai":
            if model is None:
                return self._openai_error(
                    400,
                    "invalid_request_error",
                    None,
                    None,
                    "you must provide a model parameter",
                    req_id,
                )
            if not isinstance(body.get("messages"), list):
                return self._openai_error(
                    400,
                    "invalid_request_error",
                    "missing_required_parameter",
                    "messages",
                    "Missing required parameter: 'messages'.",
                    req_id,
                )
            return None
        for field, ok in (
            ("model", model is not None),
            ("messages", isinstance(body.get("messages"), list)),
            ("max_tokens", type(body.get("max_tokens")) is int),
        ):
            if not ok:
                return self._anthropic_error(
                    400, "invalid_request_error", f"{field}: Field required", req_id
                )
        return None

    async def _run(self, ctx: _Ctx, behaviour: Behaviour | None) -> web.StreamResponse:
        delay = self.latency_s
        if isinstance(behaviour, Respond | Replay):
            delay += behaviour.first_byte_delay_s
        if delay > 0 and await self._pause(ctx, delay):
            return web.Response()  # the client has gone; aiohttp drops this quietly
        if behaviour is None or isinstance(behaviour, Respond):
            return await self._respond(ctx, self._plan(ctx, behaviour))
        if isinstance(behaviour, Error):
            return self._error(ctx, behaviour)
        if isinstance(behaviour, ContextTooLong):
            return self._context_too_long(ctx, behaviour)
        if isinstance(behaviour, ContentPolicy):
            if ctx.api == "openai":
                message = behaviour.message or (
                    "Your request was rejected as a result of our safety system. Your prompt "
                    "may contain text that is not allowed by our safety system."
                )
                return self._openai_error(
                    400, "invalid_request_error", behaviour.code, None, message, ctx.req_id
                )
            message = behaviour.message or "Output blocked by content filtering policy"
            return self._anthropic_error(400, "invalid_request_error", message, ctx.req_id)
        if isinstance(behaviour, Hang):
            await self._pause(ctx, None)
            return web.Response()
        if isinstance(behaviour, Gate):
            gone = ctx.conn.lost
            opened = asyncio.ensure_future(behaviour.opened.wait())
            try:
                await asyncio.wait((gone, opened), return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
            if gone.done():
                self._note_disconnect(ctx.rec)
                return web.Response()
            return await self._respond(ctx, self._plan(ctx, behaviour.then))
        if isinstance(behaviour, Reset):
            self._abort(ctx.request)
            return web.Response()
        if isinstance(behaviour, MalformedSSE):
            plan = self._plan(ctx, None)
            if not ctx.stream:
                return web.Response(
                    body=self._full_body(ctx, plan)[:-5],
                    content_type=_JSON_CONTENT_TYPE,
                    headers=self._id_headers(ctx.api, ctx.req_id),
                )
            return await self._respond(ctx, plan, upto=1, tail=_MALFORMED[ctx.api])
        if isinstance(behaviour, StopMidway):
            plan = self._plan(ctx, None)
            if not ctx.stream:
                return await self._half_body(ctx, plan)
            return await self._respond(
                ctx, plan, upto=behaviour.after_chunks, tail=b"", cut=not behaviour.clean_eof
            )
        if isinstance(behaviour, EchoHeaders):
            return await self._echo_headers(ctx, behaviour)
        if isinstance(behaviour, IgnoreStream):
            return web.Response(
                body=self._full_body(ctx, self._plan(ctx, Respond(text=behaviour.text))),
                content_type=_JSON_CONTENT_TYPE,
                headers=self._id_headers(ctx.api, ctx.req_id),
            )
        if isinstance(behaviour, Replay):
            return await self._replay(ctx, behaviour)
        return await self._stream_error(ctx, behaviour)

    # -- successful answers ------------------------------------------------------------------

    def _plan(self, ctx: _Ctx, r: Respond | None) -> _Plan:
        body = ctx.body
        if r is not None and r.text is not None:
            text, truncated = r.text, False
        else:
            base = self.fixed_text
            if base is None:
                base = "Echo: " + _last_user_text(body)
            limit = body.get("max_completion_tokens")
            if limit is None:
                limit = body.get("max_tokens")
            text, truncated = _truncate(base, limit if type(limit) is int else None)
        chunks = r.chunks if r is not None and r.chunks is not None else self.default_chunks
        if r is not None and r.finish_reason is not None:
            finish = r.finish_reason
        else:
            finish = "length" if truncated else "stop"
        if ctx.api == "anthropic":
            finish = _TO_ANTHROPIC_STOP.get(finish, finish)
        else:
            finish = _TO_OPENAI_FINISH.get(finish, finish)
        prompt = r.input_tokens if r is not None and r.input_tokens is not None else None
        completion = r.output_tokens if r is not None and r.output_tokens is not None else None
        chunk_delay = r.chunk_delay_s if r is not None and r.chunk_delay_s is not None else None
        return _Plan(
            text=text,
            pieces=_split_chunks(text, chunks),
            finish=finish,
            prompt_tokens=_prompt_tokens(body) if prompt is None else prompt,
            completion_tokens=len(text.split()) if completion is None else completion,
            cached_tokens=r.cached_input_tokens if r is not None else 0,
            chunk_delay_s=self.chunk_delay_s if chunk_delay is None else chunk_delay,
        )

    def _id_headers(self, api: Api, req_id: str) -> dict[str, str]:
        return {"request-id": req_id} if api == "anthropic" else {"x-request-id": req_id}

    def _openai_usage(self, plan: _Plan) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _anthropic_usage(self, plan: _Plan, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": max(0, plan.prompt_tokens - plan.cached_tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": plan.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _full_body(self, ctx: _Ctx, plan: _Plan) -> bytes:
        n = ctx.req_id[8:]
        if ctx.api == "openai":
            obj: dict[str, Any] = {
                "id": f"chatcmpl-fake{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": ctx.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": plan.text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": plan.finish,
                    }
                ],
                "usage": self._openai_usage(plan),
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
            }
        else:
            obj = {
                "id": f"msg_fake{n}",
                "type": "message",
                "role": "assistant",
                "model": ctx.model,
                "content": [{"type": "text", "text": plan.text}],
                "stop_reason": plan.finish,
                "stop_sequence": None,
                "usage": self._anthropic_usage(plan, plan.completion_tokens),
            }
        return _dumps(obj).encode()

    def _stream_parts(self, ctx: _Ctx, plan: _Plan) -> tuple[bytes, list[bytes], bytes]:
        """(preamble, one event per content piece, closing events) of an SSE answer."""
        n = ctx.req_id[8:]
        model = _dumps(ctx.model)
        if ctx.api == "openai":
            options = ctx.body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            head = (
                f'data: {{"id":"chatcmpl-fake{n}","object":"chat.completion.chunk",'
                f'"created":{int(time.time())},"model":{model},'
                f'"system_fingerprint":"{_FINGERPRINT}","choices":[{{"index":0,"delta":'
            )
            usage_null = ',"usage":null' if include_usage else ""
            tail = f',"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'
            preamble = f'{head}{{"role":"assistant","content":"","refusal":null}}{tail}'
            pieces = [f'{head}{{"content":{_dumps(p)}}}{tail}'.encode() for p in plan.pieces]
            closing = (
                f'{head}{{}},"logprobs":null,"finish_reason":{_dumps(plan.finish)}}}]'
                f"{usage_null}}}\n\n"
            )
            if include_usage:
                closing += (
                    f'data: {{"id":"chatcmpl-fake{n}","object":"chat.completion.chunk",'
                    f'"created":{int(time.time())},"model":{model},'
                    f'"system_fingerprint":"{_FINGERPRINT}","choices":[],'
                    f'"usage":{_dumps(self._openai_usage(plan))}}}\n\n'
                )
            closing += "data: [DONE]\n\n"
            return preamble.encode(), pieces, closing.encode()

        message: dict[str, Any] = {
            "id": f"msg_fake{n}",
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._anthropic_usage(plan, 1),
        }
        preamble = (
            "event: message_start\n"
            f'data: {{"type":"message_start","message":{_dumps(message)}}}\n\n'
            "event: content_block_start\n"
            'data: {"type":"content_block_start","index":0,'
            '"content_block":{"type":"text","text":""}}\n\n'
            "event: ping\n"
            'data: {"type": "ping"}\n\n'
        )
        pieces = [
            (
                "event: content_block_delta\n"
                'data: {"type":"content_block_delta","index":0,'
                f'"delta":{{"type":"text_delta","text":{_dumps(p)}}}}}\n\n'
            ).encode()
            for p in plan.pieces
        ]
        usage = {
            "input_tokens": max(0, plan.prompt_tokens - plan.cached_tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": plan.cached_tokens,
            "output_tokens": plan.completion_tokens,
        }
        closing = (
            "event: content_block_stop\n"
            'data: {"type":"content_block_stop","index":0}\n\n'
            "event: message_delta\n"
            f'data: {{"type":"message_delta","delta":{{"stop_reason":{_dumps(plan.finish)},'
            f'"stop_sequence":null}},"usage":{_dumps(usage)}}}\n\n'
            "event: message_stop\n"
            'data: {"type":"message_stop"}\n\n'
        )
        return preamble.encode(), pieces, closing.encode()

    async def _respond(
        self,
        ctx: _Ctx,
        plan: _Plan,
        *,
        upto: int | None = None,
        tail: bytes | None = None,
        cut: bool = False,
    ) -> web.StreamResponse:
        """Answer ``plan``. With ``upto``: only that many content events, then ``tail``
        instead of the closing events, then (``cut``) close the connection mid-body."""
        if not ctx.stream:
            return web.Response(
                body=self._full_body(ctx, plan),
                content_type=_JSON_CONTENT_TYPE,
                headers=self._id_headers(ctx.api, ctx.req_id),
            )
        preamble, pieces, closing = self._stream_parts(ctx, plan)
        if upto is not None:
            pieces = pieces[: max(0, upto)]
            closing = tail or b""
        headers = self._id_headers(ctx.api, ctx.req_id)
        headers["Content-Type"] = _SSE_CONTENT_TYPE
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        try:
            await resp.prepare(ctx.request)
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
            return resp
        delay = plan.chunk_delay_s
        if delay <= 0 and not cut:
            # One write: headers, the whole stream and the terminating chunk go out together.
            try:
                await resp.write_eof(b"".join((preamble, *pieces, closing)))
            except ConnectionResetError:
                self._note_disconnect(ctx.rec)
            return resp
        if delay <= 0:
            if not await self._write(ctx, resp, b"".join((preamble, *pieces, closing))):
                return resp
        else:
            if not await self._write(ctx, resp, preamble):
                return resp
            for i, piece in enumerate(pieces):
                if i and await self._pause(ctx, delay):
                    return resp
                if not await self._write(ctx, resp, piece):
                    return resp
            if closing and (
                await self._pause(ctx, delay) or not await self._write(ctx, resp, closing)
            ):
                return resp
        if cut:
            transport = ctx.request.transport
            if transport is not None:
                transport.close()  # flushes what was written, then FIN: no final HTTP chunk
            return resp
        try:
            await resp.write_eof()
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
        return resp

    async def _replay(self, ctx: _Ctx, r: Replay) -> web.StreamResponse:
        """Send a recorded answer (see ``Replay``)."""
        try:
            body = recorded_body(ctx.api, r.scenario, stream=ctx.stream)
        except FileNotFoundError:
            path = recorded_path(ctx.api, r.scenario, stream=ctx.stream)
            message = f"FakeUpstream: no recording {path.relative_to(RECORDED_DIR)}"
            return self._api_error(ctx.api, 500, None, message, ctx.req_id, ctx.model)
        headers = self._id_headers(ctx.api, ctx.req_id)
        if not ctx.stream:
            return web.Response(body=body, content_type=_JSON_CONTENT_TYPE, headers=headers)
        headers["Content-Type"] = _SSE_CONTENT_TYPE
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        try:
            await resp.prepare(ctx.request)
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
            return resp
        delay = self.chunk_delay_s if r.chunk_delay_s is None else r.chunk_delay_s
        if delay > 0:
            for i, event in enumerate(sse_events(body)):
                if i and await self._pause(ctx, delay):
                    return resp
                if not await self._write(ctx, resp, event):
                    return resp
            body = b""
        try:
            await resp.write_eof(body)
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
        return resp

    async def _half_body(self, ctx: _Ctx, plan: _Plan) -> web.StreamResponse:
        body = self._full_body(ctx, plan)
        resp = web.StreamResponse(headers=self._id_headers(ctx.api, ctx.req_id))
        resp.content_type = _JSON_CONTENT_TYPE
        resp.content_length = len(body)
        try:
            await resp.prepare(ctx.request)
            await resp.write(body[: len(body) // 2])
        except ConnectionResetError:
            self._note_disconnect(ctx.rec)
            return resp
        transport = ctx.request.transport
        if transport is not None:
            transport.close()
        return resp

    # -- failures ----------------------------------------------------------------------------

    @staticmethod
    def _abort(request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _openai_error(
        self,
        status: int,
        etype: str | None,
        code: str | None,
        param: str | None,
        message: str,
        req_id: str,
        extra_headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        headers = {"x-request-id": req_id}
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(
            status=status,
            body=_dumps(body).encode(),
            content_type=_JSON_CONTENT_TYPE,
            headers=headers,
        )

    def _anthropic_error(
        self,
        status: int,
        etype: str,
        message: str,
        req_id: str,
        extra_headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": req_id}
        headers = {"request-id": req_id}
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(
            status=status,
            body=_dumps(body).encode(),
            content_type=_JSON_CONTENT_TYPE,
            headers=headers,
        )

    def _api_error(
        self,
        api: Api,
        status: int,
        kind: str | None,
        message: str | None,
        req_id: str,
        model: str = "",
        extra_headers: dict[str, str] | None = None,
    ) -> web.Response:
        """The provider's usual error for ``status``, optionally re-kinded / re-worded."""
        if api == "openai":
            default_type, code, default_message = _OPENAI_ERRORS.get(
                status,
                ("server_error" if status >= 500 else "invalid_request_error", None, "Error."),
            )
            etype = default_type
            if kind is not None:
                etype = code = kind
                default_message = _OPENAI_KIND_MESSAGES.get(kind, default_message)
            return self._openai_error(
                status,
                etype,
                code,
                None,
                message or default_message.replace("{model}", model),
                req_id,
                extra_headers,
            )
        default_type, default_message = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        return self._anthropic_error(
            status,
            kind or default_type,
            message or default_message.replace("{model}", model),
            req_id,
            extra_headers,
        )

    def _error(self, ctx: _Ctx, e: Error) -> web.Response:
        extra: dict[str, str] = {}
        if e.retry_after is not None:
            extra["retry-after"] = e.retry_after
        if e.retry_after_ms is not None:
            extra["retry-after-ms"] = e.retry_after_ms
        return self._api_error(ctx.api, e.status, e.kind, e.message, ctx.req_id, ctx.model, extra)

    def _context_too_long(self, ctx: _Ctx, c: ContextTooLong) -> web.Response:
        if ctx.api == "openai":
            limit = 128000 if c.limit is None else c.limit
            prompt = c.prompt_tokens
            if prompt is None:
                prompt = max(_prompt_tokens(ctx.body), limit + 1)
            return self._openai_error(
                400,
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
                f"This model's maximum context length is {limit} tokens. However, your "
                f"messages resulted in {prompt} tokens. Please reduce the length of the "
                "messages.",
                ctx.req_id,
            )
        limit = 200000 if c.limit is None else c.limit
        prompt = c.prompt_tokens
        if prompt is None:
            prompt = max(_prompt_tokens(ctx.body), limit + 1)
        return self._anthropic_error(
            400,
            "invalid_request_error",
            f"prompt is too long: {prompt} tokens > {limit} maximum",
            ctx.req_id,
        )

    async def _echo_headers(self, ctx: _Ctx, e: EchoHeaders) -> web.StreamResponse:
        headers = ctx.request.headers
        message = "Bad request. Request headers: " + "; ".join(
            f"{name}: {value}" for name, value in headers.items()
        )
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else bearer)
        kind = {"typed": "invalid_request_error", "key_as_type": key}.get(e.shape)
        error: dict[str, Any] = {"message": message}
        if kind is not None:
            error["type"] = kind
            if ctx.api == "openai":
                error["code"] = kind
        if e.in_stream and ctx.stream:
            if ctx.api == "anthropic":
                event = {"type": "error", "error": error}
                tail = f"event: error\ndata: {_dumps(event)}\n\n".encode()
            else:
                tail = f"data: {_dumps({'error': error})}\n\n".encode()
            return await self._respond(ctx, self._plan(ctx, None), upto=0, tail=tail)
        if e.shape == "text":
            return web.Response(status=e.status, text=message, headers={"x-request-id": ctx.req_id})
        body = {"type": "error", "error": error} if ctx.api == "anthropic" else {"error": error}
        return web.Response(
            status=e.status,
            body=_dumps(body).encode(),
            content_type=_JSON_CONTENT_TYPE,
            headers=self._id_headers(ctx.api, ctx.req_id),
        )

    async def _stream_error(self, ctx: _Ctx, s: StreamError) -> web.StreamResponse:
        if ctx.api == "anthropic":
            kind = s.kind or "overloaded_error"
            message = s.message or ("Overloaded" if kind == "overloaded_error" else "Error.")
            if not ctx.stream:
                return self._api_error(ctx.api, 529, kind, message, ctx.req_id, ctx.model)
            event = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": ctx.req_id,
            }
            tail = f"event: error\ndata: {_dumps(event)}\n\n".encode()
        else:
            kind = s.kind or "server_error"
            message = s.message or _OPENAI_ERRORS[500][2]
            if not ctx.stream:
                return self._openai_error(500, kind, None, None, message, ctx.req_id)
            error = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            tail = f"data: {_dumps(error)}\n\n".encode()
        return await self._respond(ctx, self._plan(ctx, None), upto=s.after_chunks, tail=tail)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.upstream",
        description="Fake OpenAI/Anthropic upstream. Prints 'LISTENING <base_url>' when ready.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before headers")
    parser.add_argument("--chunks", type=int, default=None, help="SSE pieces (default: per word)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    parser.add_argument("--text", default=None, help="answer this text instead of the echo")
    parser.add_argument("--api-key", default=None, help="401 unless requests carry this key")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    upstream = FakeUpstream(
        args.host,
        args.port,
        latency_s=args.latency_ms / 1000,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        default_chunks=args.chunks,
        fixed_text=args.text,
        require_api_key=args.api_key,
        record=False,
    )
    await upstream.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {upstream.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await upstream.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed; using asyncio", file=sys.stderr)
        else:
            uvloop.run(_serve(args))
            return 0
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
