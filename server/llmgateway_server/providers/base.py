"""The provider interface and the failure classification every adapter shares.

What a caller may see of a failed attempt (``ProviderError.message``, copied to the
attempt's detail and to error messages) is the gateway's classification only: the HTTP
status, the failure class and the provider's error type/code when it is a short token.
Never upstream body text: an upstream that repeats the request's headers in its error
message would otherwise hand the provider key to every caller. The message is read here,
to classify, and goes no further.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Protocol

import httpx
import orjson

from llmgateway_server.errors import ProviderError
from llmgateway_server.providers.http import UpstreamClient, body_stream, read_body
from llmgateway_server.types import (
    FailureClass,
    RefusalDelta,
    StreamItem,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UpstreamResult,
)

_MAX_ERROR_BODY = 64 * 1024
# The shape of a provider's error type/code ("rate_limit_error", "context_length_exceeded").
_ERROR_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
JSON_HEADERS = (
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("user-agent", "llmgateway/0.1"),
)
# How providers word a refusal by their safety systems (OpenAI, Azure, Anthropic).
_CONTENT_POLICY_MARKERS = (
    "content_policy",
    "content_filter",
    "content filtering",
    "content management policy",
    "safety system",
)


class Provider(Protocol):
    """One configured upstream provider. Two calls, both for a single upstream model."""

    name: str

    async def complete(self, call: UpstreamCall) -> UpstreamResult:
        """Run a non-streaming call and return the whole answer."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncGenerator[StreamItem, None]:
        """Stream text deltas; the last item is exactly one UpstreamResult."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...


def error_token(value: object, *, api_key: str | None = None) -> str:
    """The provider's error type/code if it is safe to show a caller, else "".

    Safe means a short token (1 to 64 letters, digits, ``_``, ``.``, ``-``) that neither is
    part of nor contains the key this provider sends: a hostile upstream could echo the key
    there too.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or _ERROR_TOKEN.fullmatch(value) is None:
        return ""
    if api_key and (value in api_key or api_key in value):
        return ""
    return value


def failure_detail(
    provider: str, failure: FailureClass, *, status: int | None = None, code: str = ""
) -> str:
    """A failed attempt as callers see it: ``openai: HTTP 429 RATE_LIMITED rate_limit_exceeded``
    (``stream error`` instead of the status for an error event inside a stream).
    ``code`` must come from ``error_token``."""
    where = f"HTTP {status}" if status is not None else "stream error"
    return f"{provider}: {where} {failure.value} {code}".rstrip()


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass  # fall through to retry-after
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not seconds: try the HTTP-date form
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify_status(status: int, *, code: str = "", message: str = "") -> FailureClass:
    """Map an HTTP error status (plus the provider's error code/message) to a class."""
    lowered = f"{code} {message}".lower()
    if status == 429:
        # An exhausted account quota is not going to clear by retrying.
        return (
            FailureClass.CREDENTIAL
            if "insufficient_quota" in lowered
            else FailureClass.RATE_LIMITED
        )
    if status in (401, 403):
        return FailureClass.CREDENTIAL
    if status in (400, 404, 413, 422):
        if (
            "context_length" in lowered
            or "maximum context length" in lowered  # vLLM: no code, only this message
            or "prompt is too long" in lowered
            or "too many tokens" in lowered
        ):
            return FailureClass.CONTEXT_TOO_LONG
        if any(marker in lowered for marker in _CONTENT_POLICY_MARKERS):
            return FailureClass.CONTENT_POLICY
        return FailureClass.BAD_REQUEST
    if status in (408, 409, 425) or status >= 500:
        return FailureClass.TRANSIENT
    return FailureClass.BAD_REQUEST


def http_error(
    status: int,
    headers: Mapping[str, str],
    *,
    provider: str,
    code: str = "",
    message: str = "",
    api_key: str | None = None,
) -> ProviderError:
    """Build the ProviderError for an HTTP error response: ``code`` and ``message`` (the
    upstream's words) classify it; only ``code``, if it is a safe token, is shown."""
    failure = classify_status(status, code=code, message=message)
    return ProviderError(
        failure,
        failure_detail(provider, failure, status=status, code=error_token(code, api_key=api_key)),
        status_code=status,
        retry_after_s=parse_retry_after(headers),
    )


async def raise_for_status(
    response: httpx.Response, *, provider: str, api_key: str | None = None
) -> None:
    """Raise the classified ProviderError for an error response (OpenAI or Anthropic body).

    Both formats put ``{"error": {"type", "message", "code"?}}`` in the body. ``api_key`` is
    the key this provider sent, never shown even if the upstream puts it in ``code``.
    """
    if response.status_code < 400:
        return
    raw = await _error_body(response)
    code, message = "", ""
    try:
        err = orjson.loads(raw).get("error") or {}
        if isinstance(err, dict):
            # OpenAI's code is the finer token; vLLM puts the HTTP status there, a number.
            fine = err.get("code")
            code = str((fine if isinstance(fine, str) else None) or err.get("type") or "")
            message = str(err.get("message") or "")
        elif isinstance(err, str):  # {"error": "..."}, as Ollama and some proxies answer
            message = err
    except (ValueError, AttributeError):
        message = raw[:200].decode("utf-8", "replace")  # to classify, never to show
    raise http_error(
        response.status_code,
        response.headers,
        provider=provider,
        code=code,
        message=message,
        api_key=api_key,
    )


async def _error_body(response: httpx.Response) -> bytes:
    """The first 64 KiB of an error body: enough to classify any real provider's error,
    and a hostile upstream's endless error body costs no more (the connection is closed
    rather than read to its end)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body_stream(response):
        parts.append(chunk)
        size += len(chunk)
        if size >= _MAX_ERROR_BODY:
            break
    return b"".join(parts)[:_MAX_ERROR_BODY]


def is_json(response: httpx.Response) -> bool:
    """Whether the response says its body is JSON (``application/json``, any parameters)."""
    media_type = str(response.headers.get("content-type", "")).partition(";")[0]
    return media_type.strip().lower() == "application/json"


def transport_error(provider: str, exc: httpx.HTTPError) -> ProviderError:
    """Classify a connection-level failure."""
    if isinstance(exc, httpx.PoolTimeout):
        # The gateway's own pool had no free connection in time: nothing reached the
        # upstream, so this says nothing about its health.
        return ProviderError(
            FailureClass.LOCAL_SATURATION, f"{provider}: no free connection in the local pool"
        )
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(FailureClass.TIMEOUT, f"{provider}: upstream timed out")
    return ProviderError(
        FailureClass.TRANSIENT, f"{provider}: connection failed ({type(exc).__name__})"
    )


def encode_json(body: dict[str, Any]) -> bytes:
    """A request body as JSON bytes.

    Copied out of orjson's result, which keeps its 4 KiB working buffer: the body stays
    referenced for as long as its request is open, so every open stream would hold 4 KiB
    (4 MB per 1,000 streams) for a few hundred bytes of JSON.
    """
    return bytes(memoryview(orjson.dumps(body)))


async def post_json(
    client: UpstreamClient,
    url: httpx.URL,
    body: dict[str, Any],
    *,
    headers: Sequence[tuple[str, str]],
    timeout_s: float,
    provider: str,
    api_key: str | None = None,
) -> Any:
    """POST a JSON body and return the parsed JSON answer, or raise a ProviderError."""
    try:
        async with client.post(
            url, headers=headers, body=encode_json(body), timeout_s=timeout_s
        ) as response:
            await raise_for_status(response, provider=provider, api_key=api_key)
            return orjson.loads(await read_body(response))
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc) from None
    except ValueError as exc:  # a 200 whose body is not JSON
        raise malformed(provider, exc) from None


def malformed(provider: str, exc: Exception) -> ProviderError:
    """A body or stream that does not parse: transient (another try may well work)."""
    return ProviderError(
        FailureClass.TRANSIENT, f"{provider}: malformed response ({type(exc).__name__})"
    )


def replay(result: UpstreamResult) -> list[StreamItem]:
    """A whole answer given to a streaming request, as the stream it stands for: its
    text, refusal and tool calls as one delta each, then the result."""
    items: list[StreamItem] = []
    if result.content:
        items.append(TextDelta(result.content))
    if result.refusal:
        items.append(RefusalDelta(result.refusal))
    for i, call in enumerate(result.tool_calls):
        items.append(ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments))
    items.append(result)
    return items
