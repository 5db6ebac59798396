"""Every exception the client raises, decoded from gRPC statuses.

The gateway reports errors as gRPC statuses carrying `google.rpc` details: an
`ErrorInfo` (domain "llmgateway") whose `reason` picks the exception class, and for
some reasons `BadRequest`, `QuotaFailure` or `RetryInfo`. A reason this client does
not know falls back to the class for the status code.

Our exception hierarchy:

* GatewayError
  + AuthenticationError ...... UNAUTHENTICATED     API_KEY_INVALID
  + PermissionDenied ......... PERMISSION_DENIED   MODEL_NOT_ALLOWED
  + ModelNotFound ............ NOT_FOUND           MODEL_NOT_FOUND
  + InvalidRequest ........... INVALID_ARGUMENT    INVALID_REQUEST
    - ContextWindowExceeded .. INVALID_ARGUMENT    CONTEXT_WINDOW_EXCEEDED
    - ContentBlocked ......... INVALID_ARGUMENT    CONTENT_BLOCKED
  + ResourceExhausted ........ RESOURCE_EXHAUSTED  (any other reason)
    - CostLimitExceeded ...... RESOURCE_EXHAUSTED  COST_LIMIT_EXCEEDED
    - BudgetExceeded ......... RESOURCE_EXHAUSTED  BUDGET_EXCEEDED
    - RateLimited ............ RESOURCE_EXHAUSTED  RATE_LIMITED
    - RequestTooLarge ........ RESOURCE_EXHAUSTED  REQUEST_TOO_LARGE, or gRPC's own
                                                   message-size limit
  + Unavailable .............. UNAVAILABLE         UPSTREAM_UNAVAILABLE,
                                                   or no connection
  + DeadlineExceeded ......... DEADLINE_EXCEEDED
  + Cancelled ................ CANCELLED
  + InternalError ............ INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS
  + ProtocolError ............ the gateway broke the contract (e.g. a stream that
                               ended without its result)

Every exception keeps `.code` (a `grpc.StatusCode`), `.message`, `.reason` (the
ErrorInfo reason, or None), `.metadata` (ErrorInfo metadata), `.details` (every
decoded `google.rpc` detail message) and `.retry_after` (seconds, from RetryInfo).

Cancelling a call locally (task cancellation, closing a stream) raises
`asyncio.CancelledError` or ends the iteration, never `Cancelled`: `Cancelled` means
the gateway cancelled the call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "Cancelled",
    "ContentBlocked",
    "ContextWindowExceeded",
    "CostLimitExceeded",
    "DeadlineExceeded",
    "GatewayError",
    "InternalError",
    "InvalidRequest",
    "ModelNotFound",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "RequestTooLarge",
    "ResourceExhausted",
    "Unavailable",
]

ERROR_DOMAIN = "llmgateway"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ATTEMPT_KEY = re.compile(r"attempt_(\d+)")


class GatewayError(Exception):
    """Base class of every error the client raises.

    Attributes:
        code: the gRPC status code.
        message: the status message.
        reason: the `google.rpc.ErrorInfo` reason (e.g. "MODEL_NOT_FOUND"), or None
            when the status carried none (transport errors, client-side deadlines).
        domain: the ErrorInfo domain ("llmgateway"), or None.
        metadata: the ErrorInfo metadata.
        details: every decoded `google.rpc` detail of the status (ErrorInfo,
            BadRequest, RetryInfo, QuotaFailure...; unknown ones as `Any`).
        retry_after: seconds to wait before retrying, from `google.rpc.RetryInfo`,
            or None when the gateway gave no hint.
    """

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: Sequence[ProtoMessage] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.details: tuple[ProtoMessage, ...] = tuple(details)
        self.retry_after: float | None = None
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
                delay = detail.retry_delay
                self.retry_after = delay.seconds + delay.nanos / 1e9

    def __str__(self) -> str:
        label = self.reason or self.code.name
        return f"{label}: {self.message}" if self.message else label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r},"
            f" message={self.message!r})"
        )


class AuthenticationError(GatewayError):
    """The API key is missing, unknown or revoked (API_KEY_INVALID)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GatewayError):
    """The caller's tenant may not use the model (MODEL_NOT_ALLOWED).

    Attributes:
        model: the refused model, when the gateway said.
        tenant: the caller's tenant, when the gateway said.
    """

    default_code = grpc.StatusCode.PERMISSION_DENIED

    @property
    def model(self) -> str | None:
        """The refused model, when the gateway said."""
        return self.metadata.get("model")

    @property
    def tenant(self) -> str | None:
        """The caller's tenant, when the gateway said."""
        return self.metadata.get("tenant")


class ModelNotFound(GatewayError):
    """No route has the requested model name (MODEL_NOT_FOUND).

    Attributes:
        model: the unknown model, when the gateway said.
    """

    default_code = grpc.StatusCode.NOT_FOUND

    @property
    def model(self) -> str | None:
        """The unknown model, when the gateway said."""
        return self.metadata.get("model")


class InvalidRequest(GatewayError):
    """The request is malformed (INVALID_REQUEST).

    Attributes:
        field_violations: `(field, description)` pairs from `google.rpc.BadRequest`.
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """`(field, description)` pairs from `google.rpc.BadRequest`."""
        return [
            (violation.field, violation.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for violation in detail.field_violations
        ]


class ContextWindowExceeded(InvalidRequest):
    """The prompt does not fit the context window and the policy is to reject.

    Attributes:
        input_token_count: tokens the prompt uses.
        max_tokens: output tokens requested.
        context_window_token_count: the context window.

    Each is None when the gateway did not say.
    """

    @property
    def input_token_count(self) -> int | None:
        """Tokens the prompt uses."""
        return _int_or_none(self.metadata.get("input_token_count"))

    @property
    def max_tokens(self) -> int | None:
        """Output tokens requested."""
        return _int_or_none(self.metadata.get("max_tokens"))

    @property
    def context_window_token_count(self) -> int | None:
        """The context window."""
        return _int_or_none(self.metadata.get("context_window_token_count"))


class ContentBlocked(InvalidRequest):
    """Moderation refused the prompt (CONTENT_BLOCKED).

    Output blocked by moderation is not an error: see `Completion.finish_reason`.

    Attributes:
        category: the moderation category, when the gateway said.
    """

    @property
    def category(self) -> str | None:
        """The moderation category, when the gateway said."""
        return self.metadata.get("category")


class ResourceExhausted(GatewayError):
    """A limit was hit (RESOURCE_EXHAUSTED); the subclasses say which.

    Attributes:
        quota_violations: `(subject, description)` pairs from `google.rpc.QuotaFailure`.
    """

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def quota_violations(self) -> list[tuple[str, str]]:
        """`(subject, description)` pairs from `google.rpc.QuotaFailure`."""
        return [
            (violation.subject, violation.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.QuotaFailure)
            for violation in detail.violations
        ]


class CostLimitExceeded(ResourceExhausted):
    """The call's estimated cost is over the per-request cost limit.

    Attributes:
        limit_nano_usd: the limit, in nano-USD.
        estimated_nano_usd: the estimated cost, in nano-USD.

    Each is None when the gateway did not say.
    """

    @property
    def limit_nano_usd(self) -> int | None:
        """The per-request cost limit, in nano-USD."""
        return _int_or_none(self.metadata.get("limit_nano_usd"))

    @property
    def estimated_nano_usd(self) -> int | None:
        """The call's estimated cost, in nano-USD."""
        return _int_or_none(self.metadata.get("estimated_nano_usd"))


class BudgetExceeded(ResourceExhausted):
    """The tenant's budget is spent; `retry_after` says when it resets, if known."""


class RateLimited(ResourceExhausted):
    """The tenant is over its rate limit; `retry_after` says when to retry, if known."""


class RequestTooLarge(ResourceExhausted):
    """A message is over the gRPC message-size limit (of the gateway or this client)."""


class Unavailable(GatewayError):
    """The gateway or every upstream target is unavailable; worth retrying later.

    UPSTREAM_UNAVAILABLE (every target failed), or no connection to the
    gateway at all (reason None). The client already retries UNAVAILABLE unless
    built with `retry_unavailable=False`.

    Attributes:
        attempts: the gateway's attempts, in order, as
            `"<provider>/<model>:<CLASS>"` strings.
    """

    default_code = grpc.StatusCode.UNAVAILABLE

    @property
    def attempts(self) -> list[str]:
        """The gateway's attempts, in order, as `"<provider>/<model>:<CLASS>"`."""
        numbered = sorted(
            (int(match.group(1)), value)
            for key, value in self.metadata.items()
            if (match := _ATTEMPT_KEY.fullmatch(key))
        )
        return [value for _, value in numbered]


class DeadlineExceeded(GatewayError):
    """The call's deadline passed (the client's `timeout`, or the gateway's own)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(GatewayError):
    """The gateway cancelled the call."""

    default_code = grpc.StatusCode.CANCELLED


class InternalError(GatewayError):
    """The gateway failed internally; details are only in its logs."""

    default_code = grpc.StatusCode.INTERNAL


class ProtocolError(GatewayError):
    """The gateway broke the contract, e.g. a stream ended without its result."""


_BY_REASON: dict[str, type[GatewayError]] = {
    "API_KEY_INVALID": AuthenticationError,
    "MODEL_NOT_ALLOWED": PermissionDenied,
    "MODEL_NOT_FOUND": ModelNotFound,
    "INVALID_REQUEST": InvalidRequest,
    "CONTEXT_WINDOW_EXCEEDED": ContextWindowExceeded,
    "CONTENT_BLOCKED": ContentBlocked,
    "COST_LIMIT_EXCEEDED": CostLimitExceeded,
    "BUDGET_EXCEEDED": BudgetExceeded,
    "RATE_LIMITED": RateLimited,
    "REQUEST_TOO_LARGE": RequestTooLarge,
    "UPSTREAM_UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "INTERNAL": InternalError,
}

_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

# Detail types decoded from a status; others are kept as `google.protobuf.Any`.
_DETAIL_TYPES: tuple[type[ProtoMessage], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
    error_details_pb2.RequestInfo,
)


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> GatewayError:
    """Build the typed exception for a non-OK status and its trailing metadata.

    Reads `google.rpc.Status` from the `grpc-status-details-bin` trailer (what
    `grpc_status.rpc_status.from_call` does, without its strictness: a status proto
    whose code or message disagree with the call's still yields its details).
    """
    details = _decode_details(trailing_metadata)
    info = next((d for d in details if isinstance(d, error_details_pb2.ErrorInfo)), None)
    reason = (info.reason or None) if info is not None else None
    domain = (info.domain or None) if info is not None else None
    cls: type[GatewayError] | None = None
    if reason is not None and domain in (None, ERROR_DOMAIN):
        cls = _BY_REASON.get(reason)
    if cls is None:
        cls = _BY_CODE.get(code, GatewayError)
        if (
            cls is ResourceExhausted
            and info is None
            and "larger than max" in message  # gRPC's own message-size limit
        ):
            cls = RequestTooLarge
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=dict(info.metadata) if info is not None else None,
        details=details,
    )


def error_from_rpc_error(error: grpc.RpcError) -> GatewayError:
    """Build the typed exception for a failed call (sync `grpc.RpcError` or aio
    `grpc.aio.AioRpcError`; both are `grpc.Call`s with code, details, trailers)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code is None:
        return GatewayError(str(error) or type(error).__name__)
    message = error.details() or ""
    # Sync errors give a tuple of (key, value) namedtuples, aio errors a Metadata.
    trailing = cast("Iterable[tuple[str, str | bytes]] | None", error.trailing_metadata())
    return error_from_status(code, message, trailing)


def _decode_details(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> tuple[ProtoMessage, ...]:
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return ()
        return tuple(_unpack(detail) for detail in status.details)
    return ()


def _unpack(detail: any_pb2.Any) -> ProtoMessage:
    for detail_type in _DETAIL_TYPES:
        message = detail_type()
        if detail.Unpack(message):  # False unless the type matches
            return message
    return detail


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
