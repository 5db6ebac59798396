"""Conversion between the domain types and the protobuf messages of the contract.

The only module that touches `gateway_pb2` message fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TypeVar

from llmgateway.v1 import gateway_pb2

from ._types import (
    Attempt,
    AttemptOutcome,
    CacheTTL,
    Completion,
    ContentPart,
    ContextPolicy,
    Cost,
    FinishReason,
    Image,
    ImageDetail,
    ImagePart,
    Message,
    ModelInfo,
    ModelTarget,
    Price,
    RefusalDelta,
    ResponseFormat,
    ResponseFormatType,
    Role,
    StreamEvent,
    TextDelta,
    TokenCount,
    Tool,
    ToolCall,
    ToolCallAccumulator,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)

_ROLE_TO_PROTO: dict[Role, gateway_pb2.Role.ValueType] = {
    "system": gateway_pb2.ROLE_SYSTEM,
    "user": gateway_pb2.ROLE_USER,
    "assistant": gateway_pb2.ROLE_ASSISTANT,
    "tool": gateway_pb2.ROLE_TOOL,
}

_CACHE_TTL_TO_PROTO: dict[CacheTTL, gateway_pb2.CacheTtl.ValueType] = {
    "5m": gateway_pb2.CACHE_TTL_5M,
    "1h": gateway_pb2.CACHE_TTL_1H,
}

_IMAGE_DETAIL_TO_PROTO: dict[ImageDetail, gateway_pb2.ImageDetail.ValueType] = {
    "auto": gateway_pb2.IMAGE_DETAIL_AUTO,
    "low": gateway_pb2.IMAGE_DETAIL_LOW,
    "high": gateway_pb2.IMAGE_DETAIL_HIGH,
}

_TOOL_CHOICE_MODE_TO_PROTO: dict[ToolChoiceMode, gateway_pb2.ToolChoiceMode.ValueType] = {
    "auto": gateway_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": gateway_pb2.TOOL_CHOICE_MODE_NONE,
    "required": gateway_pb2.TOOL_CHOICE_MODE_REQUIRED,
    "tool": gateway_pb2.TOOL_CHOICE_MODE_TOOL,
}

_RESPONSE_FORMAT_TYPE_TO_PROTO: dict[
    ResponseFormatType, gateway_pb2.ResponseFormatType.ValueType
] = {
    "text": gateway_pb2.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
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
    gateway_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    gateway_pb2.FINISH_REASON_REFUSAL: "refusal",
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

ToolChoiceInput = ToolChoice | Literal["auto", "none", "required"]
"""A `ToolChoice`, or the mode alone."""

_Request = TypeVar("_Request", gateway_pb2.CompleteRequest, gateway_pb2.StreamCompleteRequest)


def _cache_control(cache: CacheTTL | None) -> gateway_pb2.CacheControl | None:
    return None if cache is None else gateway_pb2.CacheControl(ttl=_CACHE_TTL_TO_PROTO[cache])


def _image_to_proto(image: Image) -> gateway_pb2.Image:
    encoded = gateway_pb2.Image(media_type=image.media_type)
    if image.data is not None:
        encoded.data = image.data
    else:
        encoded.url = image.url or ""
    if image.detail is not None:
        encoded.detail = _IMAGE_DETAIL_TO_PROTO[image.detail]
    return encoded


def _part_to_proto(part: ContentPart) -> gateway_pb2.ContentPart:
    cache_control = _cache_control(part.cache)
    if isinstance(part, ImagePart):
        return gateway_pb2.ContentPart(
            image=_image_to_proto(part.image), cache_control=cache_control
        )
    return gateway_pb2.ContentPart(text=part.text, cache_control=cache_control)


def _tool_call_to_proto(call: ToolCall) -> gateway_pb2.ToolCall:
    # arguments_invalid is never sent: the contract has it false in requests.
    return gateway_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)


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
                parts=[_part_to_proto(part) for part in message.parts],
                tool_calls=[_tool_call_to_proto(call) for call in message.tool_calls],
                tool_call_id=message.tool_call_id,
                is_error=message.is_error,
                cache_control=_cache_control(message.cache),
            )
        )
    return encoded


def tools_to_proto(tools: Iterable[Tool]) -> list[gateway_pb2.Tool]:
    """Encode tool definitions; `parameters` text is copied as is."""
    encoded = []
    for tool in tools:
        if not isinstance(tool, Tool):
            raise TypeError(f"tools must be Tool instances, not {type(tool).__name__}")
        encoded.append(
            gateway_pb2.Tool(
                name=tool.name,
                description=tool.description,
                parameters=tool.parameters,
                strict=tool.strict,
                cache_control=_cache_control(tool.cache),
            )
        )
    return encoded


def _tool_choice_to_proto(choice: ToolChoiceInput) -> gateway_pb2.ToolChoice:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ValueError(
                "tool_choice must be a ToolChoice, 'auto', 'none' or 'required', not"
                f" {choice!r} (force one tool with ToolChoice.tool(name))"
            )
        choice = ToolChoice(choice)
    if not isinstance(choice, ToolChoice):
        raise TypeError(f"tool_choice must be a ToolChoice, not {type(choice).__name__}")
    return gateway_pb2.ToolChoice(
        mode=_TOOL_CHOICE_MODE_TO_PROTO[choice.mode],
        name=choice.name,
        disable_parallel_tool_calls=choice.disable_parallel,
    )


def _response_format_to_proto(response_format: ResponseFormat) -> gateway_pb2.ResponseFormat:
    if not isinstance(response_format, ResponseFormat):
        raise TypeError(
            f"response_format must be a ResponseFormat, not {type(response_format).__name__}"
        )
    return gateway_pb2.ResponseFormat(
        type=_RESPONSE_FORMAT_TYPE_TO_PROTO[response_format.type],
        name=response_format.name,
        schema=response_format.schema,
        strict=response_format.strict,
    )


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
    tools: Iterable[Tool] = (),
    tool_choice: ToolChoiceInput | None = None,
    response_format: ResponseFormat | None = None,
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
        tools=tools_to_proto(tools),
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
    if tool_choice is not None:
        request.tool_choice.CopyFrom(_tool_choice_to_proto(tool_choice))
    if response_format is not None:
        request.response_format.CopyFrom(_response_format_to_proto(response_format))
    return request


def count_tokens_request(
    model: str, messages: MessagesInput, tools: Iterable[Tool] = ()
) -> gateway_pb2.CountTokensRequest:
    """Build a `CountTokensRequest`."""
    return gateway_pb2.CountTokensRequest(
        model=model, messages=messages_to_proto(messages), tools=tools_to_proto(tools)
    )


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
            cache_write_tokens=usage.cache_write_input_token_count,
            cache_write_1h_tokens=usage.cache_write_1h_input_token_count,
            reasoning_tokens=usage.reasoning_token_count,
            image_input_tokens=usage.image_input_token_count,
        ),
        cost=Cost(
            total_nano_usd=cost.total_nano_usd,
            input_nano_usd=cost.input_nano_usd,
            output_nano_usd=cost.output_nano_usd,
            price_version=cost.price_version,
            cache_read_nano_usd=cost.cache_read_nano_usd,
            cache_write_5m_nano_usd=cost.cache_write_5m_nano_usd,
            cache_write_1h_nano_usd=cost.cache_write_1h_nano_usd,
            image_input_nano_usd=cost.image_input_nano_usd,
            reasoning_nano_usd=cost.reasoning_nano_usd,
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
        tool_calls=tuple(
            ToolCall(
                id=call.id,
                name=call.name,
                arguments=call.arguments,
                arguments_invalid=call.arguments_invalid,
            )
            for call in completion.tool_calls
        ),
        refusal=completion.refusal,
    )


class StreamState:
    """What a stream received so far: decodes each `Delta` into its events (text, tool
    call fragment, refusal, in that order, empty ones skipped) and accumulates them."""

    __slots__ = ("_refusal", "_text", "tool_calls")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._refusal: list[str] = []
        self.tool_calls = ToolCallAccumulator()

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def refusal(self) -> str:
        return "".join(self._refusal)

    def feed(self, delta: gateway_pb2.Delta) -> list[StreamEvent]:
        """Record one delta; return its events."""
        events: list[StreamEvent] = []
        if delta.text:
            self._text.append(delta.text)
            events.append(TextDelta(delta.text))
        if delta.HasField("tool_call"):
            fragment = delta.tool_call
            call_delta = ToolCallDelta(
                index=fragment.index,
                id=fragment.id,
                name=fragment.name,
                arguments=fragment.arguments,
            )
            self.tool_calls.add(call_delta)
            events.append(call_delta)
        if delta.refusal:
            self._refusal.append(delta.refusal)
            events.append(RefusalDelta(delta.refusal))
        return events


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
                        cache_write_5m_nano_usd_per_million_tokens=(
                            target.price.cache_write_5m_nano_usd_per_million_tokens
                        ),
                        cache_write_1h_nano_usd_per_million_tokens=(
                            target.price.cache_write_1h_nano_usd_per_million_tokens
                        ),
                        reasoning_nano_usd_per_million_tokens=(
                            target.price.reasoning_nano_usd_per_million_tokens
                        ),
                        image_input_nano_usd_per_million_tokens=(
                            target.price.image_input_nano_usd_per_million_tokens
                        ),
                    ),
                )
                for target in model.targets
            ),
        )
        for model in response.models
    ]
