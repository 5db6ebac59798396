"""Storage protocols and the records they hold. Nothing here knows about gRPC.

Three concerns, one protocol each, each with a single-node implementation (SQLite) and a
multi-replica one (PostgreSQL for the ledger and the tenants, Redis for budgets and rate
limits):

- ``UsageLedger`` / ``UsageReader``: one row per call, keyed by request_id, written once;
  durable when ``write`` returns; spend grouped for reports.
- ``BudgetStore``: reservations against USD and token budgets (per tenant and per key,
  per UTC day and month), settled to the actual amount, expired after a lease; token
  buckets for rate limits. Every operation is atomic, and idempotent by request_id.
- ``TenantStore``: tenants, their limits and allowed routes, and their API keys (stored
  as SHA-256 digests with a short visible prefix).

Money is integer nano-USD everywhere; times are Unix seconds (floats) unless named
otherwise; days and months are UTC, written ``YYYY-MM-DD`` and ``YYYY-MM``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


class StoreUnavailable(Exception):
    """The store cannot be reached or did not answer in time (a fault, not a verdict).

    Implementations raise this, and only this, for connection-level failures, so the
    gateway can answer UNAVAILABLE (or admit, if ``budgets.on_store_error: open``)."""


class CountersLost(StoreUnavailable):
    """The budget store lost its counters (a Redis restarted without its data, a
    failover to a replica that missed writes): nothing may be admitted until the
    counters are rebuilt from the ledger and the held reservations (the Redis store's
    ``rebuild``). Raised by every operation until then."""


class AlreadyExists(Exception):
    """A tenant (or key) with that name/id exists already."""


class NotFound(Exception):
    """No tenant or key with that name/id."""


class DuplicateRequest(Exception):
    """A reservation for this request_id exists already (held, settled or expired): the
    request was seen before and must not reach an upstream, or be charged, again."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer gateway than this one: refuse to start."""


# -- the ledger ---------------------------------------------------------------------------


@dataclass(slots=True)  # built per attempt: frozen init costs a setattr per field
class AttemptRecord:
    """One attempt of a call against one target, with what the upstream billed for it."""

    provider: str
    upstream_model: str
    outcome: str  # AttemptOutcome value, e.g. "SUCCESS", "TRANSIENT"
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_nano_usd: int = 0
    usage_estimated: bool = False  # counted by the gateway: the upstream reported none
    # Parts of the counts above, as in types.Usage (after usage_estimated: the fields
    # before keep their positions).
    cache_write_tokens: int = 0  # prompt tokens written to the cache, every TTL
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens with the 1-hour TTL
    reasoning_tokens: int = 0  # the part of output_tokens spent reasoning
    image_input_tokens: int = 0  # the part of input_tokens that images took


@dataclass(slots=True)  # built per call: frozen init costs a setattr per field
class UsageRecord:
    """Exactly one per call, keyed by ``request_id``: success, failure, rejection,
    cancellation, or abandoned (found at start-up from a dead process's reservation).

    Token counts and cost are the call's total over its attempts; ``attempts`` holds each
    one's share. The counts are those of ``types.Usage``: ``input_tokens``,
    ``cached_input_tokens`` and ``cache_write_tokens`` do not overlap;
    ``cache_write_1h_tokens`` is part of ``cache_write_tokens``, ``reasoning_tokens`` of
    ``output_tokens``, ``image_input_tokens`` of ``input_tokens``.
    """

    request_id: str
    tenant: str
    route: str
    outcome: str  # types.CallOutcome value ("success", ..., "abandoned")
    finished_at_unix_s: float
    key_prefix: str = ""
    key_id: str = ""  # the store key's id ("" for config-defined keys and anonymous calls)
    provider: str = ""
    upstream_model: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    image_input_tokens: int = 0
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
    attempts: Sequence[AttemptRecord] = ()
    # What the guardrails found: "LABEL:action:direction" -> count, e.g.
    # {"EMAIL:redact:output": 2} (labels only, never the matched text).
    guardrails: Mapping[str, int] = field(default_factory=dict)


class UsageLedger(Protocol):
    """Where usage records go: the source of truth for cost attribution."""

    async def write(self, record: UsageRecord) -> None:
        """Persist one record, durably before returning (implementations batch
        concurrent writes into one commit). A second record with the same request_id
        is ignored: the first one stands. Raises StoreUnavailable only when the record
        could not be kept anywhere (a multi-replica ledger keeps a local outbox)."""
        ...

    async def aclose(self) -> None:
        """Flush and close."""
        ...


GroupBy = Literal["tenant", "key", "key_id", "route", "model", "provider", "day", "tag"]
"""``key`` groups by the visible key prefix (reports); ``key_id`` by the store key's id
(rebuilding per-key budget counters)."""


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Spend over ``[start, end)`` grouped by ``group_by`` (``tag`` groups by the value
    of the tag named ``tag_name``); ``tenant`` restricts to one tenant's rows."""

    start_unix_s: float
    end_unix_s: float
    group_by: tuple[GroupBy, ...] = ("tenant",)
    tenant: str | None = None
    tag_name: str = ""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of a usage report: the sums of its records' counts. The cache-write,
    reasoning and image counts come after the cost and default to 0 (a row built
    positionally without them stays valid)."""

    group: Mapping[str, str]  # group_by name -> value ("" where the row has none)
    calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nano_usd: int
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    image_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every input token, however billed (as ``types.Usage.prompt_tokens``)."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


class UsageReader(Protocol):
    """Reads the ledger back."""

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Rows ordered by group values."""
        ...


# -- budgets and rate limits --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Spend limits of one scope (a tenant or a key); None means unlimited."""

    usd_per_day_nano: int | None = None
    usd_per_month_nano: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    @property
    def unlimited(self) -> bool:
        """No limit at all: nothing to reserve against."""
        return (
            self.usd_per_day_nano is None
            and self.usd_per_month_nano is None
            and self.tokens_per_day is None
            and self.tokens_per_month is None
        )


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Token-bucket rate limits of a tenant; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


ScopeKind = Literal["tenant", "key"]
Window = Literal["day", "month"]
Dimension = Literal["usd", "tokens"]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a reservation counts against: a tenant's or a key's budgets."""

    kind: ScopeKind
    id: str  # tenant name, or key id
    limits: BudgetLimits


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a reservation counts in (fixed when it is made, so a call
    that crosses midnight settles in the day it was admitted)."""

    day: str  # "2026-12-02"
    month: str  # "2026-12"
    day_ends_unix_s: float
    month_ends_unix_s: float


@dataclass(frozen=True, slots=True)
class Remaining:
    """What the tightest limit across the scopes still allows (None: unlimited)."""

    nano_usd: int | None
    tokens: int | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on budget for one call, until it is settled or its lease passes."""

    request_id: str
    tenant: str
    scopes: tuple[Scope, ...]
    periods: Periods
    nano_usd: int
    tokens: int
    lease_until_unix_s: float
    key_prefix: str = ""
    route: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation or a rate-limit take was refused: which scope, window and limit."""

    scope_kind: ScopeKind
    scope_id: str
    window: Literal["day", "month", "minute"]
    dimension: Literal["usd", "tokens", "requests"]
    limit: int
    used: int  # spent + reserved (or, for rate limits, what the bucket lacks)
    retry_after_s: float  # until the window resets (or the bucket refills enough)


class BudgetStore(Protocol):
    """Budget counters and rate-limit buckets. Every method is one atomic operation."""

    async def remaining(self, scopes: Sequence[Scope], periods: Periods) -> Remaining:
        """What is left across ``scopes`` in ``periods`` (limit - spent - reserved, the
        smallest over every limit that applies). A read: ``reserve`` decides."""
        ...

    async def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold ``nano_usd`` and ``tokens`` against every limit of every scope, all or
        nothing; None when held, else the first limit that would be exceeded. Every call
        reserves, even with no limit at all (``scopes`` empty, or every scope unlimited):
        the reservation is how a request_id is known to have been seen, and how a call
        cut short by a crash is found. The same request_id again (held, settled or
        expired) raises DuplicateRequest and changes nothing."""
        ...

    async def settle(self, request_id: str, tenant: str, nano_usd: int, tokens: int) -> None:
        """Turn the reservation into spend of the actual amounts (in the periods it was
        made in), releasing the rest. Idempotent; unknown or already settled: no-op."""
        ...

    async def expire(self, now_unix_s: float) -> list[Reservation]:
        """Charge every reservation whose lease has passed at its reserved amount and
        return them (for the ledger's ``abandoned`` rows). Each is returned once."""
        ...

    async def take(
        self, tenant: str, limits: RateLimits, *, requests: int, tokens: int, now_unix_s: float
    ) -> Refusal | None:
        """Take from the tenant's buckets (requests and tokens per minute), all or nothing:
        None when taken, else the bucket that is short and when it will have enough."""
        ...

    async def admit(
        self,
        reservation: Reservation,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now_unix_s: float,
    ) -> Refusal | None:
        """``take`` then ``reserve``, as one operation where the store can (SQLite: one
        transaction, one round trip, and a take undone when the reservation is refused;
        Redis: the two scripts in turn). None when both hold; else the refusal, a rate
        limit's (window ``minute``) before a budget's. DuplicateRequest as ``reserve``."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


# -- tenants and keys ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant defined in the store (config-defined tenants are added beside them)."""

    name: str
    routes: tuple[str, ...] = ("*",)
    budgets: BudgetLimits = BudgetLimits()
    rate_limits: RateLimits = RateLimits()
    created_at_unix_s: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key: its digest (never the key), a visible prefix, its own budgets."""

    id: str
    tenant: str
    prefix: str  # the key's first characters, shown in listings and the ledger
    sha256: str
    created_at_unix_s: float
    budgets: BudgetLimits = BudgetLimits()
    last_used_at_unix_s: float | None = None
    revoked_at_unix_s: float | None = None


class TenantStore(Protocol):
    """Tenants and keys that change without a restart."""

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Add a tenant; AlreadyExists if the name is taken."""
        ...

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Replace a tenant's routes and limits; NotFound if there is none."""
        ...

    async def get_tenant(self, name: str) -> TenantRecord | None:
        """One tenant."""
        ...

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by name."""
        ...

    async def add_key(self, key: KeyRecord) -> None:
        """Store a new key (NotFound if its tenant does not exist)."""
        ...

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """A tenant's keys, revoked ones included, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now_unix_s: float) -> KeyRecord:
        """Mark a key revoked (idempotent); NotFound if there is no such key."""
        ...

    async def key_by_digest(self, sha256: str) -> KeyRecord | None:
        """The key with this digest, revoked or not."""
        ...

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        """Record when keys (by id) were last used (batched by the caller)."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...
