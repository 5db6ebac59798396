"""Protobuf <-> domain conversion, with request validation (BadRequest field violations)."""

from __future__ import annotations

import math
import re
import uuid

from llmgateway.v1 import gateway_pb2 as pb

from llmgateway_server.errors import FieldViolation, invalid_request
from llmgateway_server.gateway import TokenCount
from llmgateway_server.routes import Route
from llmgateway_server.transport.content import (
    to_messages,
    to_response_format,
    to_tool_choice,
    to_tools,
)
from llmgateway_server.types import (
    AttemptOutcome,
    ChatMessage,
    Completion,
    CompletionRequest,
    ContextPolicy,
    FinishReason,
    OutputDelta,
    TextDelta,
    Tool,
    ToolCallDelta,
)

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_TAGS = 32
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_REQUEST_ID = 128
MAX_MODEL = 128
MAX_TOKENS_CEILING = 1_000_000

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
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.REFUSAL: pb.FINISH_REASON_REFUSAL,
}
_OUTCOME = {o: pb.AttemptOutcome.Value(f"ATTEMPT_OUTCOME_{o.value}") for o in AttemptOutcome}
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:/\-]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
# What a route name may be (config.py checks the same for the configured ones).
_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")

CompletionProto = pb.CompleteRequest | pb.StreamCompleteRequest


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
    messages = to_messages(msg.messages, v)
    tools = to_tools(msg.tools, v)
    tool_choice = to_tool_choice(msg.tool_choice, msg.HasField("tool_choice"), tools, v)
    response_format = to_response_format(msg.response_format, msg.HasField("response_format"), v)
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
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
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


def to_count_request(
    msg: pb.CountTokensRequest,
) -> tuple[tuple[ChatMessage, ...], tuple[Tool, ...]]:
    """Validate a CountTokensRequest's messages and tools."""
    v: list[FieldViolation] = []
    if not msg.model:
        v.append(FieldViolation("model", "required"))
    elif not (len(msg.model) <= MAX_MODEL and _NAME.fullmatch(msg.model)):
        v.append(FieldViolation("model", f"1-{MAX_MODEL} of A-Z a-z 0-9 _ . : -"))
    messages = to_messages(msg.messages, v)
    tools = to_tools(msg.tools, v)
    if v:
        raise invalid_request(v)
    return messages, tools


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
    u = c.usage
    usage = out.usage
    usage.input_token_count = u.input_tokens
    usage.output_token_count = u.output_tokens
    usage.cached_input_token_count = u.cached_input_tokens
    if u.cache_write_tokens or u.reasoning_tokens or u.image_input_tokens:
        usage.cache_write_input_token_count = u.cache_write_tokens
        usage.cache_write_1h_input_token_count = u.cache_write_1h_tokens
        usage.reasoning_token_count = u.reasoning_tokens
        usage.image_input_token_count = u.image_input_tokens
    k = c.cost
    cost = out.cost
    cost.total_nano_usd = k.total_nano_usd
    cost.input_nano_usd = k.input_nano_usd
    cost.output_nano_usd = k.output_nano_usd
    cost.price_version = k.price_version
    cost.cache_read_nano_usd = k.cache_read_nano_usd
    if k.cache_write_5m_nano_usd or k.cache_write_1h_nano_usd or k.reasoning_nano_usd:
        cost.cache_write_5m_nano_usd = k.cache_write_5m_nano_usd
        cost.cache_write_1h_nano_usd = k.cache_write_1h_nano_usd
        cost.reasoning_nano_usd = k.reasoning_nano_usd
    cost.image_input_nano_usd = k.image_input_nano_usd
    if c.tool_calls:
        for call in c.tool_calls:
            out.tool_calls.add(
                id=call.id,
                name=call.name,
                arguments=call.arguments,
                arguments_invalid=call.arguments_invalid,
            )
    if c.refusal:
        out.refusal = c.refusal
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
                    cache_write_5m_nano_usd_per_million_tokens=_or(
                        t.price.cache_write_5m_nano_per_million, t.price.input_nano_per_million
                    ),
                    cache_write_1h_nano_usd_per_million_tokens=_or(
                        t.price.cache_write_1h_nano_per_million, t.price.input_nano_per_million
                    ),
                    reasoning_nano_usd_per_million_tokens=_or(
                        t.price.reasoning_nano_per_million, t.price.output_nano_per_million
                    ),
                    image_input_nano_usd_per_million_tokens=_or(
                        t.price.image_input_nano_per_million, t.price.input_nano_per_million
                    ),
                ),
            )
            for t in route.targets
        ],
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def delta_to_proto(item: OutputDelta) -> pb.StreamCompleteResponse:
    """A stream event for a delta."""
    if isinstance(item, TextDelta):
        return pb.StreamCompleteResponse(delta=pb.Delta(text=item.text))
    if isinstance(item, ToolCallDelta):
        return pb.StreamCompleteResponse(
            delta=pb.Delta(
                tool_call=pb.ToolCallDelta(
                    index=item.index, id=item.id, name=item.name, arguments=item.arguments
                )
            )
        )
    return pb.StreamCompleteResponse(delta=pb.Delta(refusal=item.text))
