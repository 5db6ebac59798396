"""Budget and rate-limit policy: reserve the worst case before any upstream call, settle
to what the ledger records after it.

Before, in one store operation (``admit``): the tenant's rate limits are taken (one
request, and the prompt's token bound plus max_tokens) and a reservation is made against
the tenant's and the key's budgets (USD and tokens, per UTC day and month): the
prompt's token bound at the input price
plus max_tokens at the output price, at the dearest target the chain may try. When the
budget can afford less than the requested max_tokens, the call goes on with the
max_tokens it can afford; below the route's ``min_max_tokens`` it is refused
(BUDGET_EXCEEDED, naming the scope, window and limit, with RetryInfo until the window
resets). Every call reserves, even one without limits: the reservation is how a reused
request_id is caught (it is refused, never sent or charged twice) and how a call cut
short by a crash is found (its lease passes, it is charged in full and recorded as
abandoned by ``sweep_abandoned``).

After: the reservation is settled to the call's metered total, the same figures the
ledger records. A settle that cannot reach the store leaves the reservation to expire:
it is then charged at the reserved amount, an upper bound.

A store that cannot answer refuses new calls (UNAVAILABLE) unless
``budgets.on_store_error`` is ``open``: then calls go on without a reservation, and
each one logs that it did.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.errors import (
    BudgetExceeded,
    QuotaViolation,
    RateLimited,
    RequestIdReused,
    StorageUnavailable,
)
from llmgateway_server.metering import total
from llmgateway_server.pricing import affordable_output_tokens, worst_case_nano
from llmgateway_server.storage.base import (
    BudgetStore,
    CountersLost,
    DuplicateRequest,
    Periods,
    Refusal,
    Remaining,
    Reservation,
    ScopeKind,
    StoreUnavailable,
    UsageLedger,
    UsageQuery,
    UsageReader,
    UsageRecord,
    Window,
)
from llmgateway_server.types import CallOutcome

log = logging.getLogger("llmgateway.budget")

# A reservation refused because another call took the budget in between is re-planned
# against what is left this many times before the call is refused.
_RESERVE_TRIES = 3


def periods_at(unix_s: float) -> Periods:
    """The UTC day and month of ``unix_s`` and when each ends."""
    return _periods_of_day(int(unix_s // 86_400))


@functools.lru_cache(maxsize=4)
def _periods_of_day(day: int) -> Periods:
    # Once per UTC day (a POSIX day is 86,400 s): formatting dates is a good share of
    # what the policy costs per call.
    now = datetime.fromtimestamp(day * 86_400, tz=UTC)
    day_start = datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp()
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()
    return Periods(
        day=now.strftime("%Y-%m-%d"),
        month=now.strftime("%Y-%m"),
        day_ends_unix_s=day_start + 86_400,
        month_ends_unix_s=month_start + days_in_month * 86_400,
    )


@runtime_checkable
class Rebuildable(Protocol):
    """A budget store that can lose its counters (Redis) and be given them back."""

    async def rebuild(
        self, spent: Mapping[SpentKey, tuple[int, int]], held: Sequence[Reservation]
    ) -> None:
        """Restore the counters from the ledger's sums and the held reservations."""
        ...


SpentKey = tuple[str, ScopeKind, str, Window, str]  # tenant, scope kind, id, window, period


class BudgetPolicy:
    """Reserves before the router, settles after it.

    With a store that can lose its counters (``Rebuildable``: Redis restarted without its
    data), the first call that finds them lost rebuilds them from the ledger's sums for the
    current day and month and from the reservations this process holds, before anything
    is admitted.
    """

    def __init__(
        self,
        store: BudgetStore,
        clock: Clock,
        *,
        fail_open: bool,
        lease_grace_s: float,
        ledger: UsageReader | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self._fail_open = fail_open
        self._lease_grace_s = lease_grace_s
        self._ledger = ledger
        self._wall = wall_clock
        self._held: dict[str, Reservation] = {}  # this process's calls in flight
        self._rebuilding = asyncio.Lock()

    async def before(self, state: CallState) -> None:
        """Take the rate limits, then reserve; may lower ``state.max_tokens``."""
        now = self._wall()
        try:
            try:
                await self._admit(state, now)
            except CountersLost:
                await self._rebuild(now)
                await self._admit(state, now)
        except StoreUnavailable as exc:
            if not self._fail_open:
                raise StorageUnavailable(
                    "the budget store is unavailable; no call is admitted without a "
                    "reservation (budgets.on_store_error: closed)"
                ) from exc
            log.warning(
                "budget store unavailable: call admitted without a reservation "
                "(budgets.on_store_error: open)",
                extra={"request_id": state.request_id, "tenant": state.tenant},
            )

    async def _admit(self, state: CallState, now: float) -> None:
        """Take the rate limits and reserve (one store operation); after a budget's
        refusal, try again for the max_tokens that what is left affords."""
        periods = periods_at(now)
        scopes = state.budget_scopes
        limits = state.rate_limits
        floor = min(state.route.min_max_tokens, state.max_tokens)
        lease = now + max(0.0, state.deadline - self._clock.now()) + self._lease_grace_s
        refusal: Refusal | None = None
        # The requested max_tokens first (one round trip when the budget covers it, the
        # usual case); after a refusal, what is left decides how much to try for.
        max_tokens = state.max_tokens
        for _ in range(_RESERVE_TRIES):
            tokens = _prompt_bound(state) + max_tokens
            reservation = Reservation(
                request_id=state.request_id,
                tenant=state.tenant,
                scopes=scopes,
                periods=periods,
                nano_usd=self._worst_case(state, max_tokens),
                tokens=tokens,
                lease_until_unix_s=lease,
                key_prefix=state.key_prefix,
                route=state.route.name,
            )
            try:
                refusal = await self._store.admit(
                    reservation, limits, requests=1, tokens=tokens, now_unix_s=now
                )
            except DuplicateRequest:
                raise RequestIdReused(
                    f"request_id {state.request_id!r} was used before; a request is "
                    "never sent or charged twice",
                    metadata={"request_id": state.request_id},
                ) from None
            if refusal is None:
                if max_tokens < state.max_tokens:
                    log.info(
                        "max_tokens lowered to what the budget affords",
                        extra={
                            "request_id": state.request_id,
                            "requested": state.max_tokens,
                            "granted": max_tokens,
                        },
                    )
                state.max_tokens = max_tokens
                state.reservation = reservation
                self._held[reservation.request_id] = reservation
                return
            if refusal.window == "minute":
                raise RateLimited(
                    f"tenant {state.tenant!r} is over its rate limit of {refusal.limit} "
                    f"{refusal.dimension} per minute",
                    metadata=_refusal_metadata(refusal),
                    retry_after_s=refusal.retry_after_s,
                    quota_violations=[_violation(refusal)],
                )
            if max_tokens <= floor:
                break  # even the floor does not fit: refuse, naming the limit
            remaining = await self._store.remaining(scopes, periods)
            max_tokens = max(floor, min(state.max_tokens, self._affordable(state, remaining)))
        assert refusal is not None, "every try that does not return was refused"
        raise BudgetExceeded(
            f"the {refusal.window} {refusal.dimension} budget of {refusal.scope_kind} "
            f"{refusal.scope_id!r} ({_amount(refusal.dimension, refusal.limit)}) cannot "
            f"cover this request (max_tokens at least {floor})",
            metadata=_refusal_metadata(refusal),
            retry_after_s=refusal.retry_after_s,
            quota_violations=[_violation(refusal)],
        )

    @staticmethod
    def _worst_case(state: CallState, max_tokens: int) -> int:
        worst = 0
        for target in state.route.targets:
            prompt = state.prompt_for(target)
            if prompt is not None:
                worst = max(
                    worst,
                    worst_case_nano(
                        prompt.token_bound,
                        max_tokens,
                        target.price,
                        cache_writes=state.request.cache_breakpoints,
                    ),
                )
        return worst

    @staticmethod
    def _affordable(state: CallState, remaining: Remaining) -> int:
        """The most output tokens every target the chain may try can afford."""
        affordable = state.max_tokens
        prompt_tokens = _prompt_bound(state)
        if remaining.tokens is not None:
            affordable = min(affordable, remaining.tokens - prompt_tokens)
        if remaining.nano_usd is not None:
            for target in state.route.targets:
                prompt = state.prompt_for(target)
                if prompt is None:
                    continue
                fits = affordable_output_tokens(
                    remaining.nano_usd,
                    prompt.token_bound,
                    target.price,
                    cache_writes=state.request.cache_breakpoints,
                )
                if fits is not None:
                    affordable = min(affordable, fits)
        return affordable

    async def after(self, state: CallState) -> None:
        """Settle the reservation to the call's metered total."""
        reservation = state.reservation
        if reservation is None:
            return
        metered = state.metered if state.metered is not None else total(state.attempts)
        usage = metered.usage
        tokens = usage.prompt_tokens + usage.output_tokens
        settle = self._store.settle
        try:
            try:
                await settle(
                    reservation.request_id, reservation.tenant, metered.cost.total_nano_usd, tokens
                )
            except CountersLost:
                await self._rebuild(self._wall())  # restores this reservation, then settle
                await settle(
                    reservation.request_id, reservation.tenant, metered.cost.total_nano_usd, tokens
                )
        except StoreUnavailable:
            log.error(
                "budget store unavailable at settle: the reservation will be charged in "
                "full when its lease passes",
                extra={"request_id": reservation.request_id, "tenant": reservation.tenant},
            )
        finally:
            self._held.pop(reservation.request_id, None)

    async def _rebuild(self, now: float) -> None:
        """Give a store that lost its counters the ledger's sums and the held
        reservations (one rebuild at a time; a second finds the work done, or redoes it
        harmlessly: it sets, never adds)."""
        store = self._store
        if self._ledger is None or not isinstance(store, Rebuildable):
            raise StorageUnavailable("the budget store lost its counters and cannot rebuild")
        async with self._rebuilding:
            spent = await ledger_spend(self._ledger, periods_at(now))
            log.warning(
                "budget counters lost: rebuilding from the ledger",
                extra={"scopes": len(spent), "held": len(self._held)},
            )
            await store.rebuild(spent, list(self._held.values()))


async def ledger_spend(ledger: UsageReader, periods: Periods) -> dict[SpentKey, tuple[int, int]]:
    """What the ledger says each tenant and key spent (nano-USD, tokens) in the current
    day and month: the counters a budget store that lost them is rebuilt with."""
    day_start = periods.day_ends_unix_s - 86_400
    month_start = datetime.strptime(periods.month, "%Y-%m").replace(tzinfo=UTC).timestamp()
    spent: dict[SpentKey, tuple[int, int]] = {}
    for window, start, end, period in (
        ("day", day_start, periods.day_ends_unix_s, periods.day),
        ("month", month_start, periods.month_ends_unix_s, periods.month),
    ):
        window_name: Window = "day" if window == "day" else "month"
        for row in await ledger.usage(UsageQuery(start, end, ("tenant", "key_id"))):
            tenant, key_id = row.group["tenant"], row.group["key_id"]
            amount = (
                row.cost_nano_usd,
                row.prompt_tokens + row.output_tokens,
            )
            tenant_key: SpentKey = (tenant, "tenant", tenant, window_name, period)
            before = spent.get(tenant_key, (0, 0))
            spent[tenant_key] = (before[0] + amount[0], before[1] + amount[1])
            if key_id:
                spent[(tenant, "key", key_id, window_name, period)] = amount
    return spent


def _prompt_bound(state: CallState) -> int:
    """The largest prompt token bound over the targets that can take the call."""
    bound = 0
    for target in state.route.targets:
        prompt = state.prompt_for(target)
        if prompt is not None:
            bound = max(bound, prompt.token_bound)
    return bound


def _amount(dimension: str, value: int) -> str:
    if dimension == "usd":
        return f"${value / 1e9:.9f}".rstrip("0").rstrip(".")
    return f"{value} {dimension}"


def _violation(refusal: Refusal) -> QuotaViolation:
    return QuotaViolation(
        subject=f"{refusal.scope_kind}:{refusal.scope_id}",
        description=(
            f"{refusal.window} {refusal.dimension} limit "
            f"{_amount(refusal.dimension, refusal.limit)}"
        ),
    )


def _refusal_metadata(refusal: Refusal) -> dict[str, str]:
    return {
        "scope": f"{refusal.scope_kind}:{refusal.scope_id}",
        "window": refusal.window,
        "dimension": refusal.dimension,
        "limit": str(refusal.limit),
        "used": str(refusal.used),
    }


async def sweep_abandoned(store: BudgetStore, ledger: UsageLedger, now_unix_s: float) -> int:
    """Charge reservations whose lease passed (their call's process died) and record
    each as an ``abandoned`` call, charged the reserved amount (an upper bound: tokens
    are all counted as input, and marked estimated). Returns how many were found."""
    expired = await store.expire(now_unix_s)
    for reservation in expired:
        await ledger.write(
            UsageRecord(
                request_id=reservation.request_id,
                tenant=reservation.tenant,
                route=reservation.route,
                outcome=CallOutcome.ABANDONED.value,
                finished_at_unix_s=now_unix_s,
                key_prefix=reservation.key_prefix,
                input_tokens=reservation.tokens,
                cost_nano_usd=reservation.nano_usd,
                usage_estimated=True,
                error_reason="ABANDONED",
            )
        )
    if expired:
        log.warning("abandoned calls charged", extra={"count": len(expired)})
    return len(expired)
