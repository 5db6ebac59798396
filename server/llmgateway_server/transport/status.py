"""The one map from gateway errors to gRPC statuses with google.rpc details."""

from __future__ import annotations

import math
from typing import NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmgateway_server.errors import ERROR_DOMAIN, GatewayError

INTERNAL_MESSAGE = "internal error; the gateway logged the details"
_PUSHBACK = "grpc-retry-pushback-ms"


class _StatusFields(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _Status(_StatusFields, grpc.Status):
    """A grpc.Status with our own trailing metadata (as grpc_status builds its own)."""


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_delay(seconds: float) -> duration_pb2.Duration:
    seconds = max(0.0, seconds)
    whole = math.floor(seconds)
    return duration_pb2.Duration(
        seconds=whole, nanos=round((seconds - whole) * 1e9) % 1_000_000_000
    )


def to_status(error: GatewayError) -> grpc.Status:
    """A grpc.Status carrying ErrorInfo and, as the error says, BadRequest, QuotaFailure
    and RetryInfo."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        details.append(
            _pack(error_details_pb2.RetryInfo(retry_delay=_retry_delay(error.retry_after_s)))
        )
    code = getattr(code_pb2, error.code)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=error.message, details=details)
    )
    if error.reason == "UPSTREAM_UNAVAILABLE":
        # The gateway already retried and fell back; a negative pushback tells gRPC
        # clients' retry policies not to multiply that (gRFC A6). RetryInfo still says
        # when trying again makes sense.
        return _Status(
            status.code,
            status.details,
            (*status.trailing_metadata, (_PUSHBACK, "-1")),
        )
    return status


def internal_status() -> grpc.Status:
    """INTERNAL with a generic message: a bug's details stay in the logs."""
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=INTERNAL_MESSAGE,
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
        )
    )
    return status
