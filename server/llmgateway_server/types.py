"""Protobuf-free domain types shared by the pipeline, the router and the providers."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Role(enum.Enum):
    """Author of a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    """Why the model stopped producing output."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    OTHER = "other"
    TOOL_CALLS = "tool_calls"
    REFUSAL = "refusal"


class ContextPolicy(enum.Enum):
    """What to do with a prompt that does not fit the context window."""

    TRIM = "trim"
    REJECT = "reject"


class FailureClass(enum.Enum):
    """How an upstream attempt failed, classified once by the provider adapter.

    Retry and fallback decisions read the class, never HTTP status codes.
    """

    RATE_LIMITED = "RATE_LIMITED"
    TRANSIENT = "TRANSIENT"
    TIMEOUT = "TIMEOUT"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    CREDENTIAL = "CREDENTIAL"
    CONTENT_POLICY = "CONTENT_POLICY"
    BAD_REQUEST = "BAD_REQUEST"
    # The gateway's own pool had no free connection in time: nothing reached the target.
    LOCAL_SATURATION = "LOCAL_SATURATION"


class AttemptOutcome(enum.Enum):
    """How one attempt against one target ended (success, a failure class, or a skip)."""

    SUCCESS = "SUCCESS"
    RATE_LIMITED = "RATE_LIMITED"
    TRANSIENT = "TRANSIENT"
    TIMEOUT = "TIMEOUT"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    CREDENTIAL = "CREDENTIAL"
    CONTENT_POLICY = "CONTENT_POLICY"
    BAD_REQUEST = "BAD_REQUEST"
    LOCAL_SATURATION = "LOCAL_SATURATION"
    CANCELLED = "CANCELLED"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    SKIPPED_CONTEXT_WINDOW = "SKIPPED_CONTEXT_WINDOW"

    @classmethod
    def from_failure(cls, failure: FailureClass) -> AttemptOutcome:
        """The outcome that records an attempt which failed with ``failure``."""
        return cls(failure.value)


class CallOutcome(enum.Enum):
    """How a whole call ended, as written to the usage ledger."""

    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    REJECTED = "rejected"
    # The gateway died mid-call: found at the next start from its reservation, and charged
    # the reserved amount (an upper bound).
    ABANDONED = "abandoned"


class CacheTTL(enum.Enum):
    """How long a prompt-cache breakpoint keeps the prefix before it."""

    MINUTES_5 = "5m"
    HOUR_1 = "1h"


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a prompt: its checked bytes, or an https URL the provider fetches."""

    media_type: str  # "" only for a URL given without one
    data: bytes | None = None
    url: str | None = None
    detail: str | None = None  # "auto", "low" or "high"; None: the provider's default


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One piece of a message's content: text or an image, and maybe a cache breakpoint."""

    text: str | None = None
    image: Image | None = None
    cache: CacheTTL | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a tool by the model. ``id`` is the gateway's (never an upstream's);
    ``arguments`` is JSON text as produced, flagged when it does not parse."""

    id: str
    name: str
    arguments: str
    arguments_invalid: bool = False


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation.

    Content is ``content`` (plain text) or ``parts``, never both. An assistant turn may
    carry ``tool_calls``; a TOOL turn answers the call named by ``tool_call_id``.
    ``cache`` is a prompt-cache breakpoint after plain-text content.
    """

    role: Role
    content: str
    name: str | None = None
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    is_error: bool = False
    cache: CacheTTL | None = None

    @property
    def plain(self) -> bool:
        """Only text content (no parts, calls or breakpoint): the common, cheap case."""
        return not (self.parts or self.tool_calls or self.tool_call_id or self.cache)

    @property
    def text(self) -> str:
        """Every text of the message: its content, or its text parts joined."""
        if not self.parts:
            return self.content
        return "".join(p.text for p in self.parts if p.text is not None)

    @property
    def images(self) -> tuple[Image, ...]:
        """The images among the parts."""
        return tuple(p.image for p in self.parts if p.image is not None)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call. ``parameters`` is JSON Schema text, sent as is."""

    name: str
    description: str = ""
    parameters: str = ""
    strict: bool = False
    cache: CacheTTL | None = None


class ToolChoiceMode(enum.Enum):
    """Whether the model may, must or must not call tools."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode`` None: the provider's default; ``name`` with TOOL."""

    mode: ToolChoiceMode | None = None
    name: str = ""
    disable_parallel: bool = False


class ResponseFormatType(enum.Enum):
    """The shape of the output."""

    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """JSON schema output: ``schema`` is JSON text, sent as is."""

    type: ResponseFormatType
    name: str = ""
    schema: str = ""
    strict: bool = False


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated completion request, as the pipeline sees it."""

    route: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    context_policy: ContextPolicy | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None

    @property
    def cache_breakpoints(self) -> bool:
        """Whether any message, part or tool asks for a prompt-cache breakpoint."""
        return any(t.cache for t in self.tools) or any(
            m.cache or any(p.cache for p in m.parts) for m in self.messages if not m.plain
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a call, provider-neutral; the input counts do not overlap.

    ``input_tokens`` is billed at the input price (neither read from nor written to the
    cache; images included, ``image_input_tokens`` of them); ``cached_input_tokens`` were
    read from the cache; ``cache_write_tokens`` written to it (``cache_write_1h_tokens``
    of them with the 1-hour TTL). ``output_tokens`` includes ``reasoning_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    image_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every input token, however billed."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


@dataclass(frozen=True, slots=True)
class Cost:
    """Exact cost in integer nano-USD: ``input_nano_usd`` and ``output_nano_usd`` are the
    sums of their lines; the other fields are lines of them (pricing.cost_of)."""

    input_nano_usd: int = 0
    output_nano_usd: int = 0
    price_version: str = ""
    cache_read_nano_usd: int = 0
    cache_write_5m_nano_usd: int = 0
    cache_write_1h_nano_usd: int = 0
    image_input_nano_usd: int = 0
    reasoning_nano_usd: int = 0

    @property
    def total_nano_usd(self) -> int:
        """Input plus output."""
        return self.input_nano_usd + self.output_nano_usd


@dataclass(frozen=True, slots=True)
class Metered:
    """Usage and cost of a call, and whether the usage was counted by the gateway."""

    usage: Usage
    cost: Cost
    estimated: bool


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class Attempt:
    """One try against one target."""

    provider: str
    upstream_model: str
    outcome: AttemptOutcome
    latency_s: float
    detail: str = ""
    # What the upstream may bill for this attempt (metering.py); None: nothing.
    metered: Metered | None = None


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class Completion:
    """A finished completion, returned by unary calls and as a stream's last event."""

    content: str
    finish_reason: FinishReason
    usage: Usage
    cost: Cost
    provider: str
    upstream_model: str
    attempts: Sequence[Attempt]
    request_id: str
    trimmed_message_count: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""


@dataclass(slots=True)  # built per chunk: frozen init costs a setattr per field
class TextDelta:
    """A piece of generated text, relayed to the client as it arrives."""

    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a tool call: the first of a call has its id and name, the rest
    pieces of its arguments. ``index`` is the call's position in the result's list."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class RefusalDelta:
    """A piece of the model's refusal."""

    text: str


OutputDelta = TextDelta | ToolCallDelta | RefusalDelta
"""What a stream relays before its result."""


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class UpstreamCall:
    """What a provider adapter is asked to do: one HTTP call to one upstream model."""

    upstream_model: str
    messages: Sequence[ChatMessage]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: Sequence[str]
    timeout_s: float
    tools: Sequence[Tool] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    # Set by the provider once the upstream accepted the request (a 2xx status): from
    # then on it may bill the prompt even if the attempt fails.
    accepted: bool = False


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class UpstreamResult:
    """What a provider reports at the end of a call (unary) or a stream."""

    content: str
    finish_reason: FinishReason
    usage: Usage | None
    upstream_model: str
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""


StreamItem = TextDelta | ToolCallDelta | RefusalDelta | UpstreamResult
"""A provider stream yields deltas and ends with exactly one UpstreamResult."""
