"""The SQLite budget store: reservations against day and month limits of tenants and keys,
settled, expired and replayed; token buckets; a race of four processes on one file that
admits exactly what the limit allows (and the naive mode that does not)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from llmgateway_server.storage.base import (
    BudgetLimits,
    DuplicateRequest,
    Periods,
    RateLimits,
    Refusal,
    Remaining,
    Reservation,
    Scope,
    StoreUnavailable,
)
from llmgateway_server.storage.sqlite import BudgetCounter, SqliteBudgetStore, SqliteDatabase

from tests.storage import sqlite_workers

NOW = 1_796_212_800.0  # 2026-12-02T12:00:00Z
DEC2 = Periods("2026-12-02", "2026-12", 1_796_256_000.0, 1_798_761_600.0)
DEC3 = Periods("2026-12-03", "2026-12", 1_796_342_400.0, 1_798_761_600.0)
JAN1 = Periods("2027-01-01", "2027-01", 1_798_848_000.0, 1_801_440_000.0)


class Clock:
    """The store's wall clock, set by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteBudgetStore]:
    db = await SqliteDatabase.open(tmp_path / "budgets.db")
    store = SqliteBudgetStore(db, clock=clock)
    yield store
    await store.aclose()


def tenant(**limits: int) -> Scope:
    return Scope("tenant", "acme", BudgetLimits(**limits))


def key(**limits: int) -> Scope:
    return Scope("key", "key-1", BudgetLimits(**limits))


def reservation(
    request_id: str,
    nano_usd: int = 0,
    tokens: int = 0,
    *scopes: Scope,
    periods: Periods = DEC2,
    lease: float = NOW + 60,
) -> Reservation:
    return Reservation(
        request_id=request_id,
        tenant="acme",
        scopes=scopes,
        periods=periods,
        nano_usd=nano_usd,
        tokens=tokens,
        lease_until_unix_s=lease,
        key_prefix="lgw_ab",
        route="default",
    )


async def test_a_reservation_is_held_against_every_scope_and_window(
    store: SqliteBudgetStore,
) -> None:
    scopes = (tenant(usd_per_day_nano=1000, tokens_per_month=500), key(usd_per_month_nano=700))
    assert await store.reserve(reservation("r1", 300, 40, *scopes)) is None
    # The tightest limit left: key month 700-300, tenant day 1000-300; tokens 500-40.
    assert await store.remaining(scopes, DEC2) == Remaining(nano_usd=400, tokens=460)
    held = BudgetCounter(reserved_nano_usd=300, reserved_tokens=40)
    for kind, scope_id in (("tenant", "acme"), ("key", "key-1")):
        assert await store.counter(kind, scope_id, "day", "2026-12-02") == held  # type: ignore[arg-type]
        assert await store.counter(kind, scope_id, "month", "2026-12") == held  # type: ignore[arg-type]


async def test_remaining_is_none_without_limits_and_zero_when_over(
    store: SqliteBudgetStore,
) -> None:
    assert await store.remaining((tenant(),), DEC2) == Remaining(None, None)
    assert await store.remaining((), DEC2) == Remaining(None, None)
    await store.reserve(reservation("r1", 900, 0, tenant()))
    await store.settle("r1", "acme", 1500, 0)  # the upstream billed more than reserved
    assert await store.remaining((tenant(usd_per_day_nano=1000),), DEC2) == Remaining(0, None)


async def test_a_refusal_names_the_first_limit_exceeded_and_when_it_resets(
    store: SqliteBudgetStore, clock: Clock
) -> None:
    assert await store.reserve(reservation("r1", 600, 0, tenant(usd_per_day_nano=1000))) is None
    clock.now = NOW + 100
    refusal = await store.reserve(
        reservation("r2", 500, 10, tenant(usd_per_day_nano=1000, tokens_per_day=5))
    )
    assert refusal == Refusal(
        scope_kind="tenant",
        scope_id="acme",
        window="day",
        dimension="usd",
        limit=1000,
        used=600,
        retry_after_s=DEC2.day_ends_unix_s - NOW - 100,  # until the UTC day ends
    )


async def test_a_refusal_holds_nothing_anywhere(store: SqliteBudgetStore) -> None:
    scopes = (tenant(usd_per_day_nano=10_000), key(tokens_per_month=100))
    assert await store.reserve(reservation("r1", 100, 90, *scopes)) is None
    refusal = await store.reserve(reservation("r2", 100, 20, *scopes))
    assert refusal is not None
    assert (refusal.scope_kind, refusal.window, refusal.dimension) == ("key", "month", "tokens")
    assert (refusal.limit, refusal.used) == (100, 90)
    # The tenant's counters passed their check, yet hold nothing of r2: all or nothing.
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == BudgetCounter(
        reserved_nano_usd=100, reserved_tokens=90
    )
    # A refused request was never held, so it is not a replay when it comes again.
    await store.settle("r1", "acme", 100, 50)
    assert await store.reserve(reservation("r2", 100, 20, *scopes)) is None


async def test_the_limit_itself_is_admitted_and_one_more_is_not(store: SqliteBudgetStore) -> None:
    scope = tenant(usd_per_day_nano=1000)
    assert await store.reserve(reservation("r1", 1000, 0, scope)) is None
    assert await store.reserve(reservation("r2", 1, 0, scope)) is not None
    assert await store.reserve(reservation("r3", 0, 0, scope)) is None


async def test_a_new_day_resets_the_day_window_but_not_the_month(
    store: SqliteBudgetStore, clock: Clock
) -> None:
    scope = tenant(usd_per_day_nano=1000, usd_per_month_nano=1500)
    assert await store.reserve(reservation("r1", 1000, 0, scope)) is None
    refused = await store.reserve(reservation("r2", 1000, 0, scope))
    assert refused is not None
    assert refused.window == "day"

    clock.now = DEC3.day_ends_unix_s - 86_400 + 1
    refused = await store.reserve(reservation("r2", 1000, 0, scope, periods=DEC3))
    assert refused is not None
    assert (refused.window, refused.limit, refused.used) == ("month", 1500, 1000)
    assert refused.retry_after_s == pytest.approx(DEC3.month_ends_unix_s - clock.now)
    assert await store.reserve(reservation("r3", 500, 0, scope, periods=DEC3)) is None

    clock.now = JAN1.day_ends_unix_s - 86_400 + 1
    assert await store.reserve(reservation("r4", 1000, 0, scope, periods=JAN1)) is None


async def test_settle_charges_the_actual_amounts_in_the_periods_reserved(
    store: SqliteBudgetStore, clock: Clock
) -> None:
    await store.reserve(reservation("r1", 1000, 100, tenant(), key()))
    clock.now = DEC3.day_ends_unix_s - 3600  # the call ends after midnight
    await store.settle("r1", "acme", 250, 30)
    spent = BudgetCounter(spent_nano_usd=250, spent_tokens=30)
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == spent
    assert await store.counter("key", "key-1", "month", "2026-12") == spent
    assert await store.counter("tenant", "acme", "day", "2026-12-03") == BudgetCounter()


async def test_settle_is_idempotent_and_ignores_what_it_does_not_hold(
    store: SqliteBudgetStore,
) -> None:
    await store.reserve(reservation("r1", 1000, 100, tenant()))
    await store.settle("r1", "other-tenant", 1, 1)  # not that tenant's reservation
    await store.settle("unknown", "acme", 5, 5)
    await store.settle("r1", "acme", 250, 30)
    await store.settle("r1", "acme", 999, 99)  # a replay
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == BudgetCounter(
        spent_nano_usd=250, spent_tokens=30
    )


@pytest.mark.parametrize("then", ["held", "settled", "expired"])
async def test_a_request_id_reserved_before_raises_duplicate_and_changes_nothing(
    store: SqliteBudgetStore, then: str
) -> None:
    scope = tenant(usd_per_day_nano=10_000)
    await store.reserve(reservation("r1", 1000, 10, scope, lease=NOW + 1))
    if then == "settled":
        await store.settle("r1", "acme", 400, 4)
    elif then == "expired":
        await store.expire(NOW + 2)
    before = await store.counter("tenant", "acme", "day", "2026-12-02")
    with pytest.raises(DuplicateRequest):
        await store.reserve(reservation("r1", 1000, 10, scope))
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == before


async def test_every_call_reserves_even_with_no_limit(store: SqliteBudgetStore) -> None:
    assert await store.reserve(reservation("r1", 5, 5)) is None  # no scopes at all
    assert await store.reserve(reservation("r2", 5, 5, tenant())) is None
    for request_id in ("r1", "r2"):
        with pytest.raises(DuplicateRequest):
            await store.reserve(reservation(request_id, 5, 5))
    expired = await store.expire(NOW + 3600)
    assert [r.request_id for r in expired] == ["r1", "r2"]  # found after a crash


async def test_expire_charges_the_reserved_amount_once_and_returns_the_reservation(
    store: SqliteBudgetStore,
) -> None:
    early = reservation("early", 700, 70, tenant(usd_per_day_nano=5000), key(), lease=NOW + 10)
    await store.reserve(early)
    await store.reserve(reservation("late", 100, 10, tenant(), lease=NOW + 1000))
    await store.reserve(reservation("done", 100, 10, tenant(), lease=NOW + 5))
    await store.settle("done", "acme", 50, 5)

    assert await store.expire(NOW + 10) == []  # the lease has not passed yet
    assert await store.expire(NOW + 11) == [early]  # scopes, periods, amounts as made
    assert await store.expire(NOW + 11) == []
    await store.settle("early", "acme", 1, 1)  # too late: it was charged in full
    assert await store.counter("key", "key-1", "day", "2026-12-02") == BudgetCounter(
        spent_nano_usd=700, spent_tokens=70
    )
    assert await store.counter("tenant", "acme", "month", "2026-12") == BudgetCounter(
        spent_nano_usd=750, reserved_nano_usd=100, spent_tokens=75, reserved_tokens=10
    )


async def test_prune_deletes_old_finished_reservations_and_keeps_held_ones(
    store: SqliteBudgetStore, clock: Clock
) -> None:
    for i in range(5):
        await store.reserve(reservation(f"old-{i}", 10, 1, tenant()))
    await store.reserve(reservation("old-held", 10, 1, tenant(), lease=NOW + 86_400))
    for i in range(5):
        await store.settle(f"old-{i}", "acme", 10, 1)
    clock.now = NOW + 7200
    await store.reserve(reservation("recent", 10, 1, tenant()))
    await store.settle("recent", "acme", 10, 1)

    assert await store.prune(NOW + 3600, batch=2) == 5
    assert await store.prune(NOW + 3600) == 0
    # Pruned ids are forgotten; a held one and a recent one are still known.
    assert await store.reserve(reservation("old-0", 10, 1, tenant())) is None
    for kept in ("old-held", "recent"):
        with pytest.raises(DuplicateRequest):
            await store.reserve(reservation(kept, 10, 1, tenant()))
    # The counters are untouched by pruning.
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == BudgetCounter(
        spent_nano_usd=60, reserved_nano_usd=20, spent_tokens=6, reserved_tokens=2
    )


async def test_negative_amounts_are_refused(store: SqliteBudgetStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.reserve(reservation("r1", -1, 0, tenant()))
    await store.reserve(reservation("r1", 5, 5, tenant()))
    with pytest.raises(ValueError, match="negative"):
        await store.settle("r1", "acme", 0, -5)


async def test_a_locked_database_is_unavailable_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    db = await SqliteDatabase.open(path, busy_timeout_s=0.2)
    store = SqliteBudgetStore(db)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.reserve(reservation("r1", 1, 1, tenant()))
        other.execute("ROLLBACK")
    assert await store.reserve(reservation("r1", 1, 1, tenant())) is None  # and recovers
    await store.aclose()


# -- rate limits ----------------------------------------------------------------------------


async def test_take_is_all_or_nothing_across_buckets(store: SqliteBudgetStore) -> None:
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=100)
    assert await store.take("acme", limits, requests=1, tokens=80, now_unix_s=NOW) is None
    refusal = await store.take("acme", limits, requests=1, tokens=30, now_unix_s=NOW)
    assert refusal is not None
    assert (refusal.window, refusal.dimension, refusal.limit, refusal.used) == (
        "minute",
        "tokens",
        100,
        10,  # what the bucket lacks
    )
    assert refusal.retry_after_s == pytest.approx(10 / (100 / 60))
    # The refused take took no request either: nine requests are left.
    for _ in range(9):
        assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW) is None
    refusal = await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW)
    assert refusal is not None
    assert refusal.dimension == "requests"


async def test_buckets_refill_with_elapsed_time_up_to_the_limit(store: SqliteBudgetStore) -> None:
    limits = RateLimits(requests_per_minute=60)
    for _ in range(60):
        assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW) is None
    refusal = await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW)
    assert refusal is not None
    assert refusal.retry_after_s == pytest.approx(1.0)
    assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW + 1) is None
    # An hour idle refills one minute's worth, no more.
    later = NOW + 3600
    for _ in range(60):
        assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=later) is None
    assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=later) is not None
    # Another tenant has its own bucket.
    assert await store.take("globex", limits, requests=1, tokens=0, now_unix_s=later) is None


async def test_a_take_bigger_than_the_bucket_runs_when_full_and_leaves_debt(
    store: SqliteBudgetStore,
) -> None:
    limits = RateLimits(tokens_per_minute=600)
    assert await store.take("acme", limits, requests=1, tokens=900, now_unix_s=NOW) is None
    refusal = await store.take("acme", limits, requests=1, tokens=1, now_unix_s=NOW + 1)
    assert refusal is not None
    # 300 in debt, 10/s refill: 1 token needs 30.1 s from the take.
    assert refusal.retry_after_s == pytest.approx(30.1 - 1)


async def test_admit_takes_and_reserves_or_does_neither(store: SqliteBudgetStore) -> None:
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=1000)
    scopes = (tenant(usd_per_day_nano=500),)
    assert (
        await store.admit(
            reservation("a1", 300, 10, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
        )
        is None
    )
    # The budget refuses the next one: its take is given back.
    refusal = await store.admit(
        reservation("a2", 300, 10, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
    )
    assert refusal is not None
    assert (refusal.window, refusal.dimension) == ("day", "usd")
    # A request id seen before: refused, and its take given back too.
    with pytest.raises(DuplicateRequest):
        await store.admit(
            reservation("a1", 1, 1, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
        )
    # So one request is left in the bucket of two.
    assert (
        await store.admit(
            reservation("a3", 100, 10, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
        )
        is None
    )
    # The rate limit refuses before the budget is looked at, and holds nothing.
    refusal = await store.admit(
        reservation("a4", 1, 1, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
    )
    assert refusal is not None
    assert (refusal.window, refusal.dimension) == ("minute", "requests")
    assert await store.counter("tenant", "acme", "day", "2026-12-02") == BudgetCounter(
        reserved_nano_usd=400, reserved_tokens=20
    )
    # a4 was never reserved: it may come again.
    assert await store.reserve(reservation("a4", 100, 1, *scopes)) is None


async def test_a_zero_rate_limit_admits_nothing(store: SqliteBudgetStore) -> None:
    refusal = await store.take(
        "acme", RateLimits(requests_per_minute=0), requests=1, tokens=0, now_unix_s=NOW
    )
    assert refusal is not None
    assert refusal.dimension == "requests"


# -- several processes on one file ----------------------------------------------------------

WORKERS = 4
CALLS = 50
AMOUNT = 1_000
ADMITS = 37  # the limit admits exactly this many reservations of AMOUNT
LIMIT = ADMITS * AMOUNT + AMOUNT // 2


def _race(path: Path, *, naive: bool) -> tuple[list[str], list[Refusal]]:
    """Run the race in WORKERS processes on the event loop this test runs on."""
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    ctx = sqlite_workers.processes()
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=sqlite_workers.reserve_race,
            args=(
                sqlite_workers.RaceSpec(str(path), w, CALLS, AMOUNT, LIMIT, naive, on_uvloop),
                barrier,
                results,
            ),
        )
        for w in range(WORKERS)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * WORKERS
    held = [r for h, _ in outcomes for r in h]
    refusals = [r for _, f in outcomes for r in f]
    return held, refusals


async def test_four_processes_racing_admit_exactly_what_the_limit_allows(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "race.db"
    held, refusals = _race(path, naive=False)

    assert len(held) == ADMITS
    assert len(refusals) == WORKERS * CALLS - ADMITS
    for refusal in refusals:
        assert (refusal.scope_kind, refusal.scope_id) == ("tenant", "acme")
        assert (refusal.window, refusal.dimension, refusal.limit) == ("day", "usd", LIMIT)
        assert refusal.used + AMOUNT > LIMIT
        assert refusal.retry_after_s > 0
    db = await SqliteDatabase.open(path)
    store = SqliteBudgetStore(db, clock=clock)
    for request_id in held:
        await store.settle(request_id, "acme", AMOUNT, 0)
    period = sqlite_workers.PERIODS.day
    counter = await store.counter("tenant", "acme", "day", period)
    await store.aclose()
    assert counter.reserved_nano_usd == 0
    assert counter.spent_nano_usd == ADMITS * AMOUNT <= LIMIT


async def test_the_naive_check_then_charge_mode_over_admits_in_the_same_race(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "naive.db"
    held, _ = _race(path, naive=True)
    # The race harness sees the race: the naive store holds more than the limit allows.
    assert len(held) > ADMITS
    db = await SqliteDatabase.open(path)
    store = SqliteBudgetStore(db, clock=clock)
    counter = await store.counter("tenant", "acme", "day", sqlite_workers.PERIODS.day)
    await store.aclose()
    assert counter.reserved_nano_usd > LIMIT
