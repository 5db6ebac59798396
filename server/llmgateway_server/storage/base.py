"""Storage protocols and the records they hold. Nothing here knows about gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Exactly one per finished call: success, failure, rejection or cancellation."""

    request_id: str
    tenant: str
    route: str
    provider: str
    upstream_model: str
    tags: Mapping[str, str]
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nano_usd: int
    price_version: str
    usage_estimated: bool
    streaming: bool
    outcome: str
    error_reason: str
    finish_reason: str
    attempt_count: int
    trimmed_message_count: int
    latency_s: float
    time_to_first_token_s: float | None
    finished_at_unix_s: float


class UsageLedger(Protocol):
    """Where usage records go for cost attribution."""

    async def write(self, record: UsageRecord) -> None:
        """Persist one record. Must not raise for a well-formed record."""
        ...

    async def aclose(self) -> None:
        """Flush and close."""
        ...
