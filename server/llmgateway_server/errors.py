"""Every exception the gateway raises, in one place.

Each ``GatewayError`` knows its gRPC status code (by name, so this module stays free of
gRPC), its ``google.rpc.ErrorInfo`` reason, the details a client needs, and whether it is
a *rejection* (the gateway refused the request itself: the usage ledger records the call
as rejected, not failed); the transport turns them into a status in one function
(``transport/status.py``).

Hierarchy (R = rejection)::

    GatewayError
    ├── Rejection                                    R
    │   ├── AuthenticationFailed    UNAUTHENTICATED     API_KEY_INVALID
    │   ├── ModelNotAllowed         PERMISSION_DENIED   MODEL_NOT_ALLOWED
    │   ├── ModelNotFound           NOT_FOUND           MODEL_NOT_FOUND
    │   ├── InvalidRequest          INVALID_ARGUMENT    INVALID_REQUEST (+BadRequest)
    │   ├── ContextWindowExceeded   INVALID_ARGUMENT    CONTEXT_WINDOW_EXCEEDED
    │   ├── ContentBlocked          INVALID_ARGUMENT    CONTENT_BLOCKED
    │   ├── CostLimitExceeded       RESOURCE_EXHAUSTED  COST_LIMIT_EXCEEDED (+QuotaFailure)
    │   ├── BudgetExceeded          RESOURCE_EXHAUSTED  BUDGET_EXCEEDED (+QuotaFailure, RetryInfo)
    │   ├── RateLimited             RESOURCE_EXHAUSTED  RATE_LIMITED (+QuotaFailure, RetryInfo)
    │   ├── RequestIdReused         ALREADY_EXISTS      REQUEST_ID_REUSED
    │   │   (AdminService and UsageService:)
    │   ├── AdminKeyRequired        PERMISSION_DENIED   ADMIN_KEY_REQUIRED
    │   ├── TenantKeyRequired       PERMISSION_DENIED   TENANT_KEY_REQUIRED
    │   ├── TenantAccessDenied      PERMISSION_DENIED   TENANT_ACCESS_DENIED
    │   ├── TenantNotFound          NOT_FOUND           TENANT_NOT_FOUND
    │   ├── KeyNotFound             NOT_FOUND           KEY_NOT_FOUND
    │   ├── TenantAlreadyExists     ALREADY_EXISTS      TENANT_ALREADY_EXISTS
    │   ├── TenantDefinedInConfig   FAILED_PRECONDITION TENANT_DEFINED_IN_CONFIG
    │   └── KeyRevoked              FAILED_PRECONDITION KEY_REVOKED
    ├── StorageUnavailable      UNAVAILABLE         STORE_UNAVAILABLE
    ├── UpstreamUnavailable     UNAVAILABLE         UPSTREAM_UNAVAILABLE (+RetryInfo)
    └── DeadlineExceeded        DEADLINE_EXCEEDED   DEADLINE_EXCEEDED

    ProviderError               raised by provider adapters, carries a FailureClass;
                                the router turns exhausted failures into UpstreamUnavailable
    ConfigError                 invalid configuration or missing secret; fails start-up
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmgateway_server.types import Attempt, FailureClass

ERROR_DOMAIN = "llmgateway"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exceeded quota (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


class GatewayError(Exception):
    """Base of every error a caller can see. Subclasses fix ``code`` and ``reason``."""

    code: str = "INTERNAL"
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after_s = retry_after_s
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)


class Rejection(GatewayError):
    """The gateway refused the request itself, before or instead of serving it."""


class AuthenticationFailed(Rejection):
    """The API key is missing or unknown."""

    code = "UNAUTHENTICATED"
    reason = "API_KEY_INVALID"


class ModelNotAllowed(Rejection):
    """The tenant may not use this route."""

    code = "PERMISSION_DENIED"
    reason = "MODEL_NOT_ALLOWED"


class ModelNotFound(Rejection):
    """No route has this name."""

    code = "NOT_FOUND"
    reason = "MODEL_NOT_FOUND"


class InvalidRequest(Rejection):
    """The request is malformed; ``field_violations`` says where."""

    code = "INVALID_ARGUMENT"
    reason = "INVALID_REQUEST"


def invalid_request(violations: Sequence[FieldViolation]) -> InvalidRequest:
    """InvalidRequest listing every violation (the first five in the message)."""
    return InvalidRequest(
        "the request is invalid: "
        + "; ".join(f"{v.field}: {v.description}" for v in violations[:5]),
        field_violations=violations,
    )


class ContextWindowExceeded(Rejection):
    """The prompt does not fit any target's context window (after trimming, if allowed)."""

    code = "INVALID_ARGUMENT"
    reason = "CONTEXT_WINDOW_EXCEEDED"

    def __init__(self, *, input_tokens: int, max_tokens: int, context_window: int) -> None:
        super().__init__(
            f"prompt of {input_tokens} tokens plus max_tokens {max_tokens} does not fit "
            f"the context window of {context_window} tokens",
            metadata={
                "input_token_count": str(input_tokens),
                "max_tokens": str(max_tokens),
                "context_window_token_count": str(context_window),
            },
        )
        self.input_tokens = input_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window


class ContentBlocked(Rejection):
    """Input blocked by moderation."""

    code = "INVALID_ARGUMENT"
    reason = "CONTENT_BLOCKED"


class CostLimitExceeded(Rejection):
    """The worst-case cost of the request is over the per-request limit."""

    code = "RESOURCE_EXHAUSTED"
    reason = "COST_LIMIT_EXCEEDED"


class BudgetExceeded(Rejection):
    """The tenant's (or the key's) budget cannot cover even the route's floor of
    max_tokens; QuotaFailure names the scope, window and limit, RetryInfo when it resets."""

    code = "RESOURCE_EXHAUSTED"
    reason = "BUDGET_EXCEEDED"


class RateLimited(Rejection):
    """The tenant is over a rate limit; RetryInfo says when the bucket has enough."""

    code = "RESOURCE_EXHAUSTED"
    reason = "RATE_LIMITED"


class RequestIdReused(Rejection):
    """A call with this request_id was seen before: it is not sent or charged again."""

    code = "ALREADY_EXISTS"
    reason = "REQUEST_ID_REUSED"


class AdminKeyRequired(Rejection):
    """An AdminService call with a tenant's key: only the config's admin keys may."""

    code = "PERMISSION_DENIED"
    reason = "ADMIN_KEY_REQUIRED"


class TenantKeyRequired(Rejection):
    """A GatewayService call with an admin key: an admin is not a tenant, nothing to bill."""

    code = "PERMISSION_DENIED"
    reason = "TENANT_KEY_REQUIRED"


class TenantAccessDenied(Rejection):
    """A tenant's key asked about another tenant."""

    code = "PERMISSION_DENIED"
    reason = "TENANT_ACCESS_DENIED"


class TenantNotFound(Rejection):
    """No tenant has this name."""

    code = "NOT_FOUND"
    reason = "TENANT_NOT_FOUND"


class KeyNotFound(Rejection):
    """The tenant has no key with this id."""

    code = "NOT_FOUND"
    reason = "KEY_NOT_FOUND"


class TenantAlreadyExists(Rejection):
    """A tenant (of the store or the config) has this name already."""

    code = "ALREADY_EXISTS"
    reason = "TENANT_ALREADY_EXISTS"


class TenantDefinedInConfig(Rejection):
    """The tenant is defined in the config file: AdminService cannot change it."""

    code = "FAILED_PRECONDITION"
    reason = "TENANT_DEFINED_IN_CONFIG"


class KeyRevoked(Rejection):
    """The key is revoked: it cannot be rotated."""

    code = "FAILED_PRECONDITION"
    reason = "KEY_REVOKED"


class StorageUnavailable(GatewayError):
    """The budget or tenant store cannot answer, and the gateway fails closed."""

    code = "UNAVAILABLE"
    reason = "STORE_UNAVAILABLE"


class UpstreamUnavailable(GatewayError):
    """Every target failed, or the stream broke after the first delta."""

    code = "UNAVAILABLE"
    reason = "UPSTREAM_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Attempt] = (),
        retry_after_s: float | None = None,
    ) -> None:
        metadata = {"attempt_count": str(len(attempts))}
        for n, attempt in enumerate(attempts, start=1):
            metadata[f"attempt_{n}"] = (
                f"{attempt.provider}/{attempt.upstream_model}:{attempt.outcome.value}"
            )
        super().__init__(message, metadata=metadata, retry_after_s=retry_after_s)
        self.attempts = tuple(attempts)


class DeadlineExceeded(GatewayError):
    """The caller's deadline passed."""

    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class ProviderError(Exception):
    """An upstream attempt failed; ``failure_class`` drives retry and fallback.

    The message is the gateway's classification only (provider, HTTP status, failure
    class, the provider's error type or code): callers see it in attempt details, so it
    never holds upstream body text or a secret.
    """

    def __init__(
        self,
        failure_class: FailureClass,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.failure_class = failure_class
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class ConfigError(Exception):
    """The configuration is invalid or names a secret that is not there."""
