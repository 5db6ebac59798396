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


class FinishReason(enum.Enum):
    """Why the model stopped producing output."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    OTHER = "other"


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


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation."""

    role: Role
    content: str
    name: str | None = None


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


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a call. ``input_tokens`` excludes cached input tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Cost:
    """Exact cost in integer nano-USD."""

    input_nano_usd: int = 0
    output_nano_usd: int = 0
    price_version: str = ""

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


@dataclass(slots=True)  # built per chunk: frozen init costs a setattr per field
class TextDelta:
    """A piece of generated text, relayed to the client as it arrives."""

    text: str


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


StreamItem = TextDelta | UpstreamResult
"""A provider stream yields deltas and ends with exactly one UpstreamResult."""
