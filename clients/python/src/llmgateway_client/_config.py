"""Channel settings shared by `AsyncClient` and `Client`."""

from __future__ import annotations

import json
from typing import Any

from .__version__ import __version__

SERVICE_NAME = "llmgateway.v1.GatewayService"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
USER_AGENT = f"llmgateway-client-python/{__version__}"

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""gRPC retries of UNAVAILABLE: the gateway or every upstream was down, or the
connection failed. Retries are done by gRPC itself, inside one call's deadline."""


def service_config(*, retry_unavailable: bool) -> str:
    """The `grpc.service_config` JSON for the gateway service."""
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    if retry_unavailable:
        method_config["retryPolicy"] = RETRY_POLICY
    return json.dumps({"methodConfig": [method_config]})


def channel_options(
    *, retry_unavailable: bool, max_message_bytes: int
) -> list[tuple[str, str | int]]:
    """Channel arguments: retries, keepalive and message-size limits."""
    return [
        ("grpc.primary_user_agent", USER_AGENT),
        ("grpc.enable_retries", 1 if retry_unavailable else 0),
        ("grpc.service_config", service_config(retry_unavailable=retry_unavailable)),
        # Ping an idle connection while calls are in flight (a long generation that
        # sends nothing) so a dead peer is noticed; not when no call is active, which
        # servers with default keepalive enforcement would punish.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer API key, when there is one."""
    if not api_key:
        return ()
    return (("authorization", f"Bearer {api_key}"),)
