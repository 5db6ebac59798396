"""Protobuf <-> domain conversion, with request validation (BadRequest field violations)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable

from llmgateway.v1 import gateway_pb2 as pb

from llmgateway_server.errors import FieldViolation, invalid_request
from llmgateway_server.gateway import TokenCount
from llmgateway_server.routes import Route
from llmgateway_server.types import (
    AttemptOutcome,
    ChatMessage,
    Completion,
    CompletionRequest,
    ContextPolicy,
    FinishReason,
    Role,
)

MAX_MESSAGES = 10_000
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_TAGS = 32
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_REQUEST_ID = 128
MAX_NAME = 64
MAX_MODEL = 128
MAX_TOKENS_CEILING = 1_000_000

_ROLES = {pb.ROLE_SYSTEM: Role.SYSTEM, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_POLICIES = {
    pb.CONTEXT_POLICY_UNSPECIFIED: None,
    pb.CONTEXT_POLICY_TRIM: ContextPolicy.TRIM,
    pb.CONTEXT_POLICY_REJECT: ContextPolicy.REJECT,
}
_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.OTHER: pb.FINISH_REASON_OTHER,
}
_OUTCOME = {o: pb.AttemptOutcome.Value(f"ATTEMPT_OUTCOME_{o.value}") for o in AttemptOutcome}
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:/\-]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
# What a route name may be (config.py checks the same for the configured ones).
_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")

CompletionProto = pb.CompleteRequest | pb.StreamCompleteRequest


def _messages(
    messages: Iterable[pb.Message], violations: list[FieldViolation]
) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    items = list(messages)
    if not items:
        violations.append(FieldViolation("messages", "at least one message is required"))
    if len(items) > MAX_MESSAGES:
        violations.append(FieldViolation("messages", f"at most {MAX_MESSAGES} messages"))
        return ()
    for i, m in enumerate(items):
        role = _ROLES.get(m.role)
        if role is None:
            violations.append(
                FieldViolation(
                    f"messages[{i}].role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
                )
            )
            continue
        if len(m.name) > MAX_NAME:
            violations.append(
                FieldViolation(f"messages[{i}].name", f"at most {MAX_NAME} characters")
            )
        out.append(ChatMessage(role=role, content=m.content, name=m.name or None))
    if out and len(out) == len(items) and all(m.role is Role.SYSTEM for m in out):
        violations.append(
            FieldViolation("messages", "at least one user or assistant message is required")
        )
    return tuple(out)


def to_request(msg: CompletionProto) -> tuple[CompletionRequest, list[FieldViolation]]:
    """Validate and convert a (Stream)CompleteRequest.

    Returns the request and every problem found. The request holds validated values
    only, whatever the problems: an invalid model, request id or tag is left out (a fresh
    request id stands in), so a refused call's usage record and log lines never carry
    what the caller sent unchecked.
    """
    v: list[FieldViolation] = []
    model = msg.model
    if not model:
        v.append(FieldViolation("model", "required"))
    elif not (len(model) <= MAX_MODEL and _NAME.fullmatch(model)):
        v.append(FieldViolation("model", f"1-{MAX_MODEL} of A-Z a-z 0-9 _ . : -"))
        model = ""
    messages = _messages(msg.messages, v)
    max_tokens: int | None = None
    if msg.HasField("max_tokens"):
        if not 1 <= msg.max_tokens <= MAX_TOKENS_CEILING:
            v.append(FieldViolation("max_tokens", f"must be between 1 and {MAX_TOKENS_CEILING}"))
        else:
            max_tokens = msg.max_tokens
    temperature: float | None = None
    if msg.HasField("temperature"):
        if not (math.isfinite(msg.temperature) and 0.0 <= msg.temperature <= 2.0):
            v.append(FieldViolation("temperature", "must be a number between 0 and 2"))
        else:
            temperature = msg.temperature
    top_p: float | None = None
    if msg.HasField("top_p"):
        if not (math.isfinite(msg.top_p) and 0.0 < msg.top_p <= 1.0):
            v.append(FieldViolation("top_p", "must be a number greater than 0 and at most 1"))
        else:
            top_p = msg.top_p
    stop: tuple[str, ...] = ()
    if len(msg.stop) > MAX_STOP:
        v.append(FieldViolation("stop", f"at most {MAX_STOP} sequences"))
    else:
        for i, s in enumerate(msg.stop):
            if not s or len(s) > MAX_STOP_CHARS:
                v.append(FieldViolation(f"stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters"))
        stop = tuple(msg.stop)
    tags = _tags(msg, v)
    request_id = msg.request_id
    if request_id and not (len(request_id) <= MAX_REQUEST_ID and _PRINTABLE.fullmatch(request_id)):
        v.append(
            FieldViolation(
                "request_id", f"1-{MAX_REQUEST_ID} printable ASCII characters, no spaces"
            )
        )
        request_id = ""
    context_policy = _POLICIES.get(msg.context_policy)
    if msg.context_policy not in _POLICIES:
        v.append(FieldViolation("context_policy", "unknown value"))
    request = CompletionRequest(
        route=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        tags=tags,
        request_id=request_id or uuid.uuid4().hex,
        context_policy=context_policy,
    )
    return request, v


def _tags(msg: CompletionProto, v: list[FieldViolation]) -> dict[str, str]:
    """The valid tags (none when there are too many)."""
    if len(msg.tags) > MAX_TAGS:
        v.append(FieldViolation("tags", f"at most {MAX_TAGS} tags"))
        return {}
    tags: dict[str, str] = {}
    for key, value in msg.tags.items():
        if not (0 < len(key) <= MAX_TAG_KEY and _TAG_KEY.fullmatch(key)):
            v.append(
                FieldViolation(
                    f"tags[{key[:MAX_TAG_KEY]}]",
                    f"key must be 1-{MAX_TAG_KEY} of A-Z a-z 0-9 _ . : / -",
                )
            )
            continue
        if len(value) > MAX_TAG_VALUE:
            v.append(FieldViolation(f"tags[{key}]", f"value at most {MAX_TAG_VALUE} characters"))
            continue
        tags[key] = value
    return tags


def to_count_messages(msg: pb.CountTokensRequest) -> tuple[ChatMessage, ...]:
    """Validate a CountTokensRequest's messages."""
    v: list[FieldViolation] = []
    if not msg.model:
        v.append(FieldViolation("model", "required"))
    elif not (len(msg.model) <= MAX_MODEL and _NAME.fullmatch(msg.model)):
        v.append(FieldViolation("model", f"1-{MAX_MODEL} of A-Z a-z 0-9 _ . : -"))
    messages = _messages(msg.messages, v)
    if v:
        raise invalid_request(v)
    return messages


def fill_completion(out: pb.Completion, c: Completion) -> None:
    """Domain Completion -> proto, written into ``out`` (a field of the response being
    built), setting nested fields in place: a nested message passed to a constructor is
    copied, and this runs once per call."""
    out.content = c.content
    out.finish_reason = _FINISH[c.finish_reason]
    out.provider = c.provider
    out.upstream_model = c.upstream_model
    out.request_id = c.request_id
    out.trimmed_message_count = c.trimmed_message_count
    usage = out.usage
    usage.input_token_count = c.usage.input_tokens
    usage.output_token_count = c.usage.output_tokens
    usage.cached_input_token_count = c.usage.cached_input_tokens
    cost = out.cost
    cost.total_nano_usd = c.cost.total_nano_usd
    cost.input_nano_usd = c.cost.input_nano_usd
    cost.output_nano_usd = c.cost.output_nano_usd
    cost.price_version = c.cost.price_version
    for a in c.attempts:
        attempt = out.attempts.add(
            provider=a.provider,
            upstream_model=a.upstream_model,
            outcome=_OUTCOME[a.outcome],
            detail=a.detail,
        )
        whole = int(a.latency_s)
        attempt.latency.seconds = whole
        attempt.latency.nanos = int((a.latency_s - whole) * 1e9)


def token_count_to_proto(count: TokenCount) -> pb.CountTokensResponse:
    """Domain TokenCount -> proto."""
    return pb.CountTokensResponse(
        input_token_count=count.input_tokens,
        context_window_token_count=count.context_window,
        exact=count.exact,
    )


def model_to_proto(route: Route) -> pb.Model:
    """A route as ListModels shows it."""
    return pb.Model(
        name=route.name,
        context_window_token_count=route.context_window,
        default_max_tokens=route.default_max_tokens,
        targets=[
            pb.Target(
                provider=t.provider_name,
                upstream_model=t.upstream_model,
                context_window_token_count=t.context_window,
                price=pb.Price(
                    input_nano_usd_per_million_tokens=t.price.input_nano_per_million,
                    output_nano_usd_per_million_tokens=t.price.output_nano_per_million,
                    cached_input_nano_usd_per_million_tokens=t.price.cached_input_nano_per_million,
                    version=t.price.version,
                ),
            )
            for t in route.targets
        ],
    )
