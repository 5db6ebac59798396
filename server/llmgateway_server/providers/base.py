"""The provider interface and the failure classification every adapter shares."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Protocol

import httpx
import orjson

from llmgateway_server.errors import ProviderError
from llmgateway_server.providers.http import UpstreamClient, read_body
from llmgateway_server.types import FailureClass, StreamItem, UpstreamCall, UpstreamResult

_SECRET_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-*.]{4,}|Bearer\s+\S+|[A-Za-z0-9_\-]{32,})")
_MAX_DETAIL = 200
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


def sanitize(message: str) -> str:
    """Shorten an upstream message and blank anything shaped like a credential."""
    return _SECRET_LIKE.sub("[redacted]", message)[:_MAX_DETAIL]


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
) -> ProviderError:
    """Build the ProviderError for an HTTP error response."""
    failure = classify_status(status, code=code, message=message)
    if failure is FailureClass.CREDENTIAL:
        detail = f"{provider}: HTTP {status} credential rejected"  # never echo key hints
    else:
        detail = f"{provider}: HTTP {status} {sanitize(code or message)}".rstrip()
    return ProviderError(
        failure,
        detail,
        status_code=status,
        retry_after_s=parse_retry_after(headers),
    )


async def raise_for_status(response: httpx.Response, *, provider: str) -> None:
    """Raise the classified ProviderError for an error response (OpenAI or Anthropic body).

    Both formats put ``{"error": {"type", "message", "code"?}}`` in the body.
    """
    if response.status_code < 400:
        return
    raw = await response.aread()
    code, message = "", ""
    try:
        err = orjson.loads(raw).get("error") or {}
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or "")
            message = str(err.get("message") or "")
    except (ValueError, AttributeError):
        message = raw[:200].decode("utf-8", "replace")
    raise http_error(
        response.status_code, response.headers, provider=provider, code=code, message=message
    )


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
) -> Any:
    """POST a JSON body and return the parsed JSON answer, or raise a ProviderError."""
    try:
        async with client.post(
            url, headers=headers, body=encode_json(body), timeout_s=timeout_s
        ) as response:
            await raise_for_status(response, provider=provider)
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
