"""Storage protocols and the records they hold. Nothing here knows about gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class UsageRecord:
    """Exactly one per finished call: success, failure, rejection or cancellation."""

    request_id: str
    tenant: str
    route: str
    outcome: str
    finished_at_unix_s: float
    provider: str = ""
    upstream_model: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_nano_usd: int = 0
    price_version: str = ""
    usage_estimated: bool = False
    streaming: bool = False
    error_reason: str = ""
    finish_reason: str = ""
    attempt_count: int = 0
    trimmed_message_count: int = 0
    latency_s: float = 0.0
    time_to_first_token_s: float | None = None


class UsageLedger(Protocol):
    """Where usage records go for cost attribution."""

    async def write(self, record: UsageRecord) -> None:
        """Persist one record. Must not raise for a well-formed record."""
        ...

    async def aclose(self) -> None:
        """Flush and close."""
        ...
