"""The domain types of the client: plain frozen dataclasses, free of protobuf.

Requests take `Message`s; calls return `Completion`, `TokenCount` and `ModelInfo`.
Money is exact: integer nano-US-dollars (1e-9 USD), with `Cost.usd` as a `Decimal`.
"""

from __future__ import annotations

import dataclasses
import decimal
import typing
from typing import Literal

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "Completion",
    "ContextPolicy",
    "Cost",
    "FinishReason",
    "Message",
    "ModelInfo",
    "ModelTarget",
    "Price",
    "Role",
    "TokenCount",
    "Usage",
]

Role = Literal["system", "user", "assistant"]
"""Who wrote a chat message."""

FinishReason = Literal["unspecified", "stop", "length", "content_filter", "cancelled", "other"]
"""Why the model stopped: `"stop"` (natural end or stop sequence), `"length"` (hit
max_tokens), `"content_filter"` (output withheld by moderation; not an error),
`"cancelled"`, `"other"`, or `"unspecified"` when the gateway did not say."""

AttemptOutcome = Literal[
    "unspecified",
    "success",
    "rate_limited",
    "transient",
    "timeout",
    "context_too_long",
    "credential",
    "content_policy",
    "bad_request",
    "cancelled",
    "circuit_open",
    "skipped_context_window",
    "local_saturation",
]
"""How one attempt against one upstream target ended."""

ContextPolicy = Literal["trim", "reject"]
"""What to do when a prompt does not fit the context window: `"trim"` drops the
oldest user/assistant turns, `"reject"` fails with `ContextWindowExceeded`. When not
given, the route's configured policy applies."""

_ROLES: frozenset[str] = frozenset(typing.get_args(Role))
_NANO = decimal.Decimal(1).scaleb(-9)


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One turn of a chat conversation.

    `Message("user", "Hello")`, or with the shortcuts `Message.user("Hello")`,
    `Message.system(...)` and `Message.assistant(...)`.
    """

    role: Role
    content: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, not {self.role!r}")

    @classmethod
    def system(cls, content: str, *, name: str | None = None) -> Message:
        """A message with instructions for the model."""
        return cls("system", content, name)

    @classmethod
    def user(cls, content: str, *, name: str | None = None) -> Message:
        """A message from the end user."""
        return cls("user", content, name)

    @classmethod
    def assistant(cls, content: str, *, name: str | None = None) -> Message:
        """One of the model's earlier answers."""
        return cls("assistant", content, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used.

    `input_tokens` are billed at the input price and exclude `cached_input_tokens`,
    which were served from the provider's cache and billed at the cached price.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """What a call cost, exactly, in integer nano-US-dollars (1e-9 USD)."""

    total_nano_usd: int = 0
    input_nano_usd: int = 0
    output_nano_usd: int = 0
    price_version: str = ""

    @property
    def usd(self) -> decimal.Decimal:
        """The total in US dollars, exact: `Decimal("0.000000042")` for 42 nano-USD."""
        return decimal.Decimal(self.total_nano_usd) * _NANO


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one upstream target; `detail` explains a failed one."""

    provider: str
    upstream_model: str
    outcome: AttemptOutcome
    latency_s: float
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """A finished chat completion.

    For streams, `content` is the concatenation of every text delta.
    `attempts` lists every attempt in order, failed ones included.
    `trimmed_message_count` says how many messages the context-window policy
    removed from the prompt.
    """

    content: str
    finish_reason: FinishReason
    usage: Usage
    cost: Cost
    provider: str
    upstream_model: str
    attempts: tuple[Attempt, ...] = ()
    request_id: str = ""
    trimmed_message_count: int = 0

    @property
    def served_by(self) -> str:
        """`"<provider>/<upstream model>"`, e.g. `"openai/gpt-4o-mini"`."""
        return f"{self.provider}/{self.upstream_model}"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenCount:
    """How many input tokens a prompt uses on a route, and the route's context window.

    `exact` is False when the gateway estimated the count (an estimate errs high).
    """

    input_tokens: int
    context_window_tokens: int
    exact: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """A price table entry, in integer nano-USD per million tokens."""

    input_nano_usd_per_million_tokens: int
    output_nano_usd_per_million_tokens: int
    cached_input_nano_usd_per_million_tokens: int
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class ModelTarget:
    """One upstream provider model behind a route."""

    provider: str
    upstream_model: str
    context_window_tokens: int
    price: Price


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """One route the caller may use: pass `name` as the `model` of a request.

    `context_window_tokens` is the smallest among the targets; `targets` are in
    fallback order.
    """

    name: str
    context_window_tokens: int
    default_max_tokens: int
    targets: tuple[ModelTarget, ...] = ()
