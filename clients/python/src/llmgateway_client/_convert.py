"""Conversion between the domain types and the protobuf messages of the contract.

The only module that touches `gateway_pb2` message fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from llmgateway.v1 import gateway_pb2

from ._types import (
    Attempt,
    AttemptOutcome,
    Completion,
    ContextPolicy,
    Cost,
    FinishReason,
    Message,
    ModelInfo,
    ModelTarget,
    Price,
    Role,
    TokenCount,
    Usage,
)

_ROLE_TO_PROTO: dict[Role, gateway_pb2.Role.ValueType] = {
    "system": gateway_pb2.ROLE_SYSTEM,
    "user": gateway_pb2.ROLE_USER,
    "assistant": gateway_pb2.ROLE_ASSISTANT,
}

_CONTEXT_POLICY_TO_PROTO: dict[ContextPolicy, gateway_pb2.ContextPolicy.ValueType] = {
    "trim": gateway_pb2.CONTEXT_POLICY_TRIM,
    "reject": gateway_pb2.CONTEXT_POLICY_REJECT,
}

_FINISH_REASON_FROM_PROTO: dict[int, FinishReason] = {
    gateway_pb2.FINISH_REASON_UNSPECIFIED: "unspecified",
    gateway_pb2.FINISH_REASON_STOP: "stop",
    gateway_pb2.FINISH_REASON_LENGTH: "length",
    gateway_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    gateway_pb2.FINISH_REASON_CANCELLED: "cancelled",
    gateway_pb2.FINISH_REASON_OTHER: "other",
}

_OUTCOME_FROM_PROTO: dict[int, AttemptOutcome] = {
    gateway_pb2.ATTEMPT_OUTCOME_UNSPECIFIED: "unspecified",
    gateway_pb2.ATTEMPT_OUTCOME_SUCCESS: "success",
    gateway_pb2.ATTEMPT_OUTCOME_RATE_LIMITED: "rate_limited",
    gateway_pb2.ATTEMPT_OUTCOME_TRANSIENT: "transient",
    gateway_pb2.ATTEMPT_OUTCOME_TIMEOUT: "timeout",
    gateway_pb2.ATTEMPT_OUTCOME_CONTEXT_TOO_LONG: "context_too_long",
    gateway_pb2.ATTEMPT_OUTCOME_CREDENTIAL: "credential",
    gateway_pb2.ATTEMPT_OUTCOME_CONTENT_POLICY: "content_policy",
    gateway_pb2.ATTEMPT_OUTCOME_BAD_REQUEST: "bad_request",
    gateway_pb2.ATTEMPT_OUTCOME_CANCELLED: "cancelled",
    gateway_pb2.ATTEMPT_OUTCOME_CIRCUIT_OPEN: "circuit_open",
    gateway_pb2.ATTEMPT_OUTCOME_SKIPPED_CONTEXT_WINDOW: "skipped_context_window",
    gateway_pb2.ATTEMPT_OUTCOME_LOCAL_SATURATION: "local_saturation",
}

MessagesInput = str | Sequence[Message]
"""A prompt (sent as one user message) or a conversation, oldest first."""

_Request = TypeVar("_Request", gateway_pb2.CompleteRequest, gateway_pb2.StreamCompleteRequest)


def messages_to_proto(messages: MessagesInput) -> list[gateway_pb2.Message]:
    """Encode a prompt or a conversation."""
    if isinstance(messages, str):
        messages = [Message("user", messages)]
    encoded = []
    for message in messages:
        if not isinstance(message, Message):
            raise TypeError(f"messages must be Message instances, not {type(message).__name__}")
        encoded.append(
            gateway_pb2.Message(
                role=_ROLE_TO_PROTO[message.role],
                content=message.content,
                name=message.name or "",
            )
        )
    return encoded


def completion_request(
    request_type: type[_Request],
    model: str,
    messages: MessagesInput,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: Iterable[str],
    tags: Mapping[str, str] | None,
    request_id: str | None,
    context_policy: ContextPolicy | None,
) -> _Request:
    """Build a `CompleteRequest` or a `StreamCompleteRequest` (same fields)."""
    if isinstance(stop, str):
        stop = [stop]
    request = request_type(
        model=model,
        messages=messages_to_proto(messages),
        stop=list(stop),
        tags=dict(tags or {}),
        request_id=request_id or "",
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if context_policy is not None:
        if context_policy not in _CONTEXT_POLICY_TO_PROTO:
            raise ValueError(f"context_policy must be 'trim' or 'reject', not {context_policy!r}")
        request.context_policy = _CONTEXT_POLICY_TO_PROTO[context_policy]
    return request


def count_tokens_request(model: str, messages: MessagesInput) -> gateway_pb2.CountTokensRequest:
    """Build a `CountTokensRequest`."""
    return gateway_pb2.CountTokensRequest(model=model, messages=messages_to_proto(messages))


def completion_from_proto(completion: gateway_pb2.Completion) -> Completion:
    """Decode a `Completion`."""
    usage = completion.usage
    cost = completion.cost
    return Completion(
        content=completion.content,
        finish_reason=_FINISH_REASON_FROM_PROTO.get(completion.finish_reason, "other"),
        usage=Usage(
            input_tokens=usage.input_token_count,
            output_tokens=usage.output_token_count,
            cached_input_tokens=usage.cached_input_token_count,
        ),
        cost=Cost(
            total_nano_usd=cost.total_nano_usd,
            input_nano_usd=cost.input_nano_usd,
            output_nano_usd=cost.output_nano_usd,
            price_version=cost.price_version,
        ),
        provider=completion.provider,
        upstream_model=completion.upstream_model,
        attempts=tuple(
            Attempt(
                provider=attempt.provider,
                upstream_model=attempt.upstream_model,
                outcome=_OUTCOME_FROM_PROTO.get(attempt.outcome, "unspecified"),
                latency_s=attempt.latency.seconds + attempt.latency.nanos / 1e9,
                detail=attempt.detail,
            )
            for attempt in completion.attempts
        ),
        request_id=completion.request_id,
        trimmed_message_count=completion.trimmed_message_count,
    )


def token_count_from_proto(response: gateway_pb2.CountTokensResponse) -> TokenCount:
    """Decode a `CountTokensResponse`."""
    return TokenCount(
        input_tokens=response.input_token_count,
        context_window_tokens=response.context_window_token_count,
        exact=response.exact,
    )


def models_from_proto(response: gateway_pb2.ListModelsResponse) -> list[ModelInfo]:
    """Decode a `ListModelsResponse`."""
    return [
        ModelInfo(
            name=model.name,
            context_window_tokens=model.context_window_token_count,
            default_max_tokens=model.default_max_tokens,
            targets=tuple(
                ModelTarget(
                    provider=target.provider,
                    upstream_model=target.upstream_model,
                    context_window_tokens=target.context_window_token_count,
                    price=Price(
                        input_nano_usd_per_million_tokens=(
                            target.price.input_nano_usd_per_million_tokens
                        ),
                        output_nano_usd_per_million_tokens=(
                            target.price.output_nano_usd_per_million_tokens
                        ),
                        cached_input_nano_usd_per_million_tokens=(
                            target.price.cached_input_nano_usd_per_million_tokens
                        ),
                        version=target.price.version,
                    ),
                )
                for target in model.targets
            ),
        )
        for model in response.models
    ]
