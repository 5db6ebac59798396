"""The Redis budget store against a real redis-server: reservations against day and month
limits of tenants and keys, settled, expired and replayed; token buckets; two replicas in
two processes racing for one budget (and the naive mode that over-admits); Redis losing
its data (counters rebuilt before anything is admitted), killed, hung and restarted; and
every key of a tenant in one hash slot.

Every behaviour test runs twice: on a plain redis-server, and on one in cluster mode,
where Redis itself refuses a script that touches keys of two slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop
from llmgateway_server.storage import redis_budgets
from llmgateway_server.storage.base import (
    BudgetLimits,
    CountersLost,
    DuplicateRequest,
    Periods,
    RateLimits,
    Refusal,
    Remaining,
    Reservation,
    Scope,
    StoreUnavailable,
)
from llmgateway_server.storage.redis_budgets import RedisBudgetStore
from redis.exceptions import ResponseError

from tests.storage import redis_workers
from tests.support.servers import RedisServer, ServerMissing, skip_or_fail


def _utc(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


# Far in the future: Redis expires counters a week after their period ends by its own
# clock, so test periods must not have ended in real time.
NOW = _utc(2099, 12, 2, 12)
DEC2 = Periods("2099-12-02", "2099-12", _utc(2099, 12, 3), _utc(2100, 1, 1))
DEC3 = Periods("2099-12-03", "2099-12", _utc(2099, 12, 4), _utc(2100, 1, 1))
JAN1 = Periods("2100-01-01", "2100-01", _utc(2100, 1, 2), _utc(2100, 2, 1))
# Bounds on waits, never measurements: a loaded CI machine must not make them fail.
FAULT_BOUND_S = 10.0


# The store's scripts are the same in both modes, and a cluster-mode node restarts in
# ~2 s: these run on a plain server only.
STANDALONE_ONLY = pytest.mark.parametrize("server", ["standalone"], indirect=True)


class Clock:
    """The store's wall clock, set by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def shared_cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One cluster-mode node for the module: one takes ~2 s to start."""
    try:
        node = RedisServer(tmp_path_factory.mktemp("redis-cluster"), cluster=True)
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    with node:
        yield node


@pytest.fixture
def cluster_node(request: pytest.FixtureRequest) -> RedisServer:
    """The module's cluster-mode node, running and empty."""
    node: RedisServer = request.getfixturevalue("shared_cluster_node")
    node.start()  # a test may have killed it
    with node.client() as client:
        client.flushall()
        client.script_flush()
    return node


@pytest.fixture(params=["standalone", "cluster-mode"])
def server(request: pytest.FixtureRequest) -> RedisServer:
    """A plain redis-server, or one in cluster mode (cross-slot scripts fail there)."""
    name = "redis_server" if request.param == "standalone" else "cluster_node"
    found: RedisServer = request.getfixturevalue(name)
    return found


@pytest.fixture
async def store(server: RedisServer, clock: Clock) -> AsyncIterator[RedisBudgetStore]:
    """A store on a Redis initialised as at a first start (rebuilt from an empty ledger)."""
    store = RedisBudgetStore.from_url(
        server.url, timeout_s=FAULT_BOUND_S, clock=clock, rate_clock="caller"
    )
    await store.rebuild({}, [])
    yield store
    await store.aclose()


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at (or break) what the store wrote."""
    client = aioredis.Redis.from_url(server.url, socket_timeout=FAULT_BOUND_S)
    yield client
    await client.aclose()


def tenant(**limits: int) -> Scope:
    return Scope("tenant", "acme", BudgetLimits(**limits))


def key(key_id: str = "key-1", **limits: int) -> Scope:
    return Scope("key", key_id, BudgetLimits(**limits))


def reservation(
    request_id: str,
    nano_usd: int = 0,
    tokens: int = 0,
    *scopes: Scope,
    periods: Periods = DEC2,
    lease: float = NOW + 60,
    tenant_name: str = "acme",
) -> Reservation:
    return Reservation(
        request_id=request_id,
        tenant=tenant_name,
        scopes=scopes,
        periods=periods,
        nano_usd=nano_usd,
        tokens=tokens,
        lease_until_unix_s=lease,
        key_prefix="lgw_ab",
        route="default",
    )


async def counter(
    raw: aioredis.Redis, kind: str, scope_id: str, window: str, period: str
) -> dict[str, int]:
    """A counter as Redis holds it (the layout the module docstring documents)."""
    fields = await raw.hgetall(f"lg:{{acme}}:b:{kind}:{scope_id}:{window}:{period}")
    return {
        k.decode() if isinstance(k, bytes) else k: int(v) for k, v in fields.items() if int(v) != 0
    }


# -- reservations ----------------------------------------------------------------------------


async def test_a_reservation_is_held_against_every_scope_and_window(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    scopes = (tenant(usd_per_day_nano=1000, tokens_per_month=500), key(usd_per_month_nano=700))
    assert await store.reserve(reservation("r1", 300, 40, *scopes)) is None
    # The tightest limit left: key month 700-300, tenant day 1000-300; tokens 500-40.
    assert await store.remaining(scopes, DEC2) == Remaining(nano_usd=400, tokens=460)
    for kind, scope_id in (("tenant", "acme"), ("key", "key-1")):
        for window, period in (("day", "2099-12-02"), ("month", "2099-12")):
            assert await counter(raw, kind, scope_id, window, period) == {"ru": 300, "rt": 40}


async def test_remaining_is_none_without_limits_and_zero_when_over(
    store: RedisBudgetStore,
) -> None:
    assert await store.remaining((tenant(),), DEC2) == Remaining(None, None)
    assert await store.remaining((), DEC2) == Remaining(None, None)
    await store.reserve(reservation("r1", 900, 0, tenant()))
    await store.settle("r1", "acme", 1500, 0)  # the upstream billed more than reserved
    assert await store.remaining((tenant(usd_per_day_nano=1000),), DEC2) == Remaining(0, None)


async def test_remaining_of_a_key_alone_counts_what_any_replica_reserved(
    server: RedisServer, store: RedisBudgetStore, clock: Clock
) -> None:
    # The tenant has no limit, so the gateway asks about the key scope only: the store
    # finds the key's tenant (its hash tag) even on a replica that never reserved for it.
    await store.reserve(reservation("r1", 300, 30, tenant(), key(usd_per_day_nano=1000)))
    replica = RedisBudgetStore.from_url(server.url, timeout_s=FAULT_BOUND_S, clock=clock)
    try:
        alone = (key(usd_per_day_nano=1000, tokens_per_day=100),)
        assert await replica.remaining(alone, DEC2) == Remaining(nano_usd=700, tokens=70)
        never_used = (key("key-2", usd_per_day_nano=1000),)
        assert await replica.remaining(never_used, DEC2) == Remaining(nano_usd=1000, tokens=None)
    finally:
        await replica.aclose()


async def test_a_refusal_names_the_first_limit_exceeded_and_when_it_resets(
    store: RedisBudgetStore, clock: Clock
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
        retry_after_s=pytest.approx(DEC2.day_ends_unix_s - NOW - 100),
    )


async def test_a_refusal_holds_nothing_anywhere(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    scopes = (tenant(usd_per_day_nano=10_000), key(tokens_per_month=100))
    assert await store.reserve(reservation("r1", 100, 90, *scopes)) is None
    refusal = await store.reserve(reservation("r2", 100, 20, *scopes))
    assert refusal is not None
    assert (refusal.scope_kind, refusal.window, refusal.dimension) == ("key", "month", "tokens")
    assert (refusal.limit, refusal.used) == (100, 90)
    # The tenant's counters passed their check, yet hold nothing of r2: all or nothing.
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == {"ru": 100, "rt": 90}
    # A refused request was never held, so it is not a replay when it comes again.
    await store.settle("r1", "acme", 100, 50)
    assert await store.reserve(reservation("r2", 100, 20, *scopes)) is None


async def test_the_limit_itself_is_admitted_and_one_more_is_not(store: RedisBudgetStore) -> None:
    scope = tenant(usd_per_day_nano=1000)
    assert await store.reserve(reservation("r1", 1000, 0, scope)) is None
    assert await store.reserve(reservation("r2", 1, 0, scope)) is not None
    assert await store.reserve(reservation("r3", 0, 0, scope)) is None


async def test_a_new_day_resets_the_day_window_but_not_the_month(
    store: RedisBudgetStore, clock: Clock
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
    store: RedisBudgetStore, raw: aioredis.Redis, clock: Clock
) -> None:
    await store.reserve(reservation("r1", 1000, 100, tenant(), key()))
    clock.now = DEC3.day_ends_unix_s - 3600  # the call ends after midnight
    await store.settle("r1", "acme", 250, 30)
    spent = {"su": 250, "st": 30}
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == spent
    assert await counter(raw, "key", "key-1", "month", "2099-12") == spent
    assert await counter(raw, "tenant", "acme", "day", "2099-12-03") == {}


async def test_settle_is_idempotent_and_ignores_what_it_does_not_hold(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    await store.reserve(reservation("r1", 1000, 100, tenant()))
    await store.settle("r1", "other-tenant", 1, 1)  # not that tenant's reservation
    await store.settle("unknown", "acme", 5, 5)
    await store.settle("r1", "acme", 250, 30)
    await store.settle("r1", "acme", 999, 99)  # a replay
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == {"su": 250, "st": 30}


@pytest.mark.parametrize("then", ["held", "settled", "expired"])
async def test_a_request_id_reserved_before_raises_duplicate_and_changes_nothing(
    store: RedisBudgetStore, raw: aioredis.Redis, then: str
) -> None:
    scope = tenant(usd_per_day_nano=10_000)
    await store.reserve(reservation("r1", 1000, 10, scope, lease=NOW + 1))
    if then == "settled":
        await store.settle("r1", "acme", 400, 4)
    elif then == "expired":
        assert len(await store.expire(NOW + 2)) == 1
    before = await counter(raw, "tenant", "acme", "day", "2099-12-02")
    with pytest.raises(DuplicateRequest):
        await store.reserve(reservation("r1", 1000, 10, scope))
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == before


async def test_every_call_reserves_even_with_no_limit(store: RedisBudgetStore) -> None:
    assert await store.reserve(reservation("r1", 5, 5)) is None  # no scopes at all
    assert await store.reserve(reservation("r2", 5, 5, tenant())) is None
    for request_id in ("r1", "r2"):
        with pytest.raises(DuplicateRequest):
            await store.reserve(reservation(request_id, 5, 5))
    expired = await store.expire(NOW + 3600)
    assert sorted(r.request_id for r in expired) == ["r1", "r2"]  # found after a crash


async def test_expire_charges_the_reserved_amount_once_and_returns_the_reservation(
    store: RedisBudgetStore, raw: aioredis.Redis
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
    assert await counter(raw, "key", "key-1", "day", "2099-12-02") == {"su": 700, "st": 70}
    assert await counter(raw, "tenant", "acme", "month", "2099-12") == {
        "su": 750,
        "ru": 100,
        "st": 75,
        "rt": 10,
    }
    assert [r.request_id for r in await store.expire(NOW + 1001)] == ["late"]


async def test_expire_walks_every_tenant_and_forgets_tenants_with_nothing_held(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    for i, name in enumerate(("acme", "globex", "initech")):
        await store.reserve(reservation(f"r{i}", 10, 1, tenant_name=name, lease=NOW + 10 + i))
    await store.settle("r2", "initech", 5, 1)
    expired = await store.expire(NOW + 100)
    assert sorted((r.tenant, r.request_id) for r in expired) == [("acme", "r0"), ("globex", "r1")]
    # The index of tenants to look at is empty again: a sweep finds nothing to do.
    assert [k async for k in raw.scan_iter(match="lg:*:due")] == []


async def test_no_reservation_is_stranded_by_sweeps_racing_reserves_and_settles(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    """Sweeps running while reservations are made and settled (leases already passing)
    never leave one unindexed: at the end each was settled or expired, once."""
    scope = tenant(usd_per_day_nano=10**9)
    names = [f"t{i % 7}" for i in range(140)]  # several tenants, several slots

    async def call(i: int) -> str | None:
        r = reservation(f"r{i}", 10, 1, scope, tenant_name=names[i], lease=NOW + i % 5)
        await store.reserve(r)
        if i % 3 == 0:
            await store.settle(r.request_id, r.tenant, 10, 1)
            return r.request_id
        return None

    async def sweeps() -> list[Reservation]:
        found: list[Reservation] = []
        for k in range(20):
            found += await store.expire(NOW + k % 6)
            await asyncio.sleep(0)
        return found

    results = await asyncio.gather(sweeps(), *(call(i) for i in range(140)), sweeps())
    expired = [r.request_id for batch in (results[0], results[-1]) for r in batch]
    settled = [r for r in results[1:-1] if r is not None]
    expired += [r.request_id for r in await store.expire(NOW + 3600)]
    assert len(expired) == len(set(expired))  # each once
    assert sorted(expired + settled, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(140)]
    assert [k async for k in raw.scan_iter(match="lg:*:due")] == []


async def test_a_slot_whose_hint_was_lost_is_swept_by_the_next_full_scan(
    store: RedisBudgetStore, server: RedisServer, raw: aioredis.Redis, clock: Clock
) -> None:
    assert await store.expire(NOW) == []  # this process's first sweep: a full scan
    await store.reserve(reservation("r1", 10, 1, tenant(), lease=NOW + 1))
    await raw.delete("lg:{sweep}:slots")  # the replica died before it hinted the slot
    assert await store.expire(NOW + 2) == []  # a hinted sweep does not look there
    # Another process's first sweep (or this one's, full_scan_every_s later) scans
    # every slot and finds it.
    replica = RedisBudgetStore.from_url(server.url, timeout_s=FAULT_BOUND_S, clock=clock)
    try:
        assert [r.request_id for r in await replica.expire(NOW + 2)] == ["r1"]
    finally:
        await replica.aclose()


async def test_expired_reservations_whose_hand_over_failed_are_handed_out_again(
    store: RedisBudgetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that charged reservations but whose caller never got them (the reply, or
    the acknowledgement, was lost) must not drop them: their abandoned rows would be."""
    await store.reserve(reservation("r1", 10, 1, tenant(), lease=NOW + 1))
    real_eval = store._eval

    async def ack_fails(script: Any, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        if script is redis_budgets._ACK:
            raise StoreUnavailable("connection lost before the acknowledgement")
        return await real_eval(script, keys, args)

    monkeypatch.setattr(store, "_eval", ack_fails)
    with pytest.raises(StoreUnavailable):
        await store.expire(NOW + 2)
    monkeypatch.undo()
    assert await store.expire(NOW + 3) == []  # claimed by the first sweep for a while
    again = await store.expire(NOW + 2 + 31)  # the claim (30 s) ran out
    assert [r.request_id for r in again] == ["r1"]
    assert await store.expire(NOW + 100) == []  # acknowledged this time: once


async def test_a_sweep_returns_what_it_acknowledged_and_leaves_the_rest_for_later(
    store: RedisBudgetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.reserve(reservation("a1", 10, 1, tenant_name="acme", lease=NOW + 1))
    await store.reserve(reservation("g1", 10, 1, tenant_name="globex", lease=NOW + 1))
    real_eval = store._eval
    acks: list[str] = []

    async def second_ack_fails(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script is redis_budgets._ACK:
            acks.append(args[1])
            if len(acks) == 2:
                raise StoreUnavailable("connection lost before the acknowledgement")
        return await real_eval(script, keys, args)

    monkeypatch.setattr(store, "_eval", second_ack_fails)
    first = await store.expire(NOW + 2)
    monkeypatch.undo()
    # The tenant acknowledged first is returned; the other is not lost, only later.
    assert [(r.tenant, r.request_id) for r in first] == [(acks[0], f"{acks[0][0]}1")]
    later = await store.expire(NOW + 2 + 31)
    assert [(r.tenant, r.request_id) for r in later] == [(acks[1], f"{acks[1][0]}1")]


async def test_amounts_a_lua_double_cannot_compare_exactly_are_refused(
    store: RedisBudgetStore,
) -> None:
    with pytest.raises(ValueError, match="2\\^53"):
        await store.reserve(reservation("r1", 2**53, 0, tenant()))
    with pytest.raises(ValueError, match="2\\^53"):
        await store.reserve(reservation("r1", 1, 0, tenant(usd_per_month_nano=2**60)))
    with pytest.raises(ValueError, match="2\\^53"):
        await store.reserve(reservation("r1", -1, 0, tenant()))
    # Just below the bound, Redis keeps exact 64-bit integers.
    big = 2**53 - 1
    assert await store.reserve(reservation("r1", big, 0, tenant(usd_per_day_nano=big))) is None
    assert await store.reserve(reservation("r2", 1, 0, tenant(usd_per_day_nano=big))) is not None
    await store.settle("r1", "acme", big - 7, 0)
    assert await store.remaining((tenant(usd_per_day_nano=big),), DEC2) == Remaining(7, None)


async def test_a_redis_that_forgot_its_scripts_is_taught_them_again(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    await raw.script_flush()
    assert await store.reserve(reservation("r1", 1, 1, tenant(usd_per_day_nano=5))) is None
    await raw.script_flush()
    await store.settle("r1", "acme", 1, 1)
    await raw.script_flush()
    assert await store.remaining((tenant(usd_per_day_nano=5),), DEC2) == Remaining(4, None)


# -- rate limits ----------------------------------------------------------------------------


async def test_take_is_all_or_nothing_across_buckets(store: RedisBudgetStore) -> None:
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


async def test_admit_reserves_only_what_the_rate_limits_let_through(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    limits = RateLimits(requests_per_minute=2)
    scopes = (tenant(usd_per_day_nano=500),)
    assert (
        await store.admit(
            reservation("a1", 300, 10, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
        )
        is None
    )
    refusal = await store.admit(
        reservation("a2", 300, 10, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
    )
    assert refusal is not None
    assert (refusal.window, refusal.dimension) == ("day", "usd")
    # Two scripts in turn: the refused reservation's request still counted (two taken).
    refusal = await store.admit(
        reservation("a3", 1, 1, *scopes), limits, requests=1, tokens=10, now_unix_s=NOW
    )
    assert refusal is not None
    assert (refusal.window, refusal.dimension) == ("minute", "requests")
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == {"ru": 300, "rt": 10}


async def test_buckets_refill_with_elapsed_time_up_to_the_limit(store: RedisBudgetStore) -> None:
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
    store: RedisBudgetStore,
) -> None:
    limits = RateLimits(tokens_per_minute=600)
    assert await store.take("acme", limits, requests=1, tokens=900, now_unix_s=NOW) is None
    refusal = await store.take("acme", limits, requests=1, tokens=1, now_unix_s=NOW + 1)
    assert refusal is not None
    # 300 in debt, 10/s refill: 1 token needs 30.1 s from the take.
    assert refusal.retry_after_s == pytest.approx(30.1 - 1)


async def test_a_zero_rate_limit_admits_nothing(store: RedisBudgetStore) -> None:
    refusal = await store.take(
        "acme", RateLimits(requests_per_minute=0), requests=1, tokens=0, now_unix_s=NOW
    )
    assert refusal is not None
    assert refusal.dimension == "requests"


async def test_buckets_refill_by_the_redis_clock_whatever_the_replicas_say(
    server: RedisServer,
) -> None:
    """Replicas whose clocks disagree (here: one says 1970, one says 2099) share one
    bucket that refills by Redis's own clock."""
    store = RedisBudgetStore.from_url(server.url, timeout_s=FAULT_BOUND_S)
    try:
        await store.rebuild({}, [])
        limits = RateLimits(requests_per_minute=2)
        assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=0.0) is None
        assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW) is None
        refusal = await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW + 3600)
        assert refusal is not None
        # Refilling one request at 2/min takes up to 30 s, however far the caller's
        # clock jumped.
        assert 0 < refusal.retry_after_s <= 30.0
    finally:
        await store.aclose()


# -- two replicas, two processes, one budget ------------------------------------------------

REPLICAS = 2
CALLS = 100
AMOUNT = 1_000
ADMITS = 37  # the limit admits exactly this many reservations of AMOUNT
LIMIT = ADMITS * AMOUNT + AMOUNT // 2


async def _race(url: str, *, naive: bool) -> tuple[list[str], list[Refusal]]:
    """REPLICAS processes, each CALLS concurrent reserves, on this test's kind of loop."""
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    return await asyncio.to_thread(_run_race, url, naive, on_uvloop)


def _run_race(url: str, naive: bool, on_uvloop: bool) -> tuple[list[str], list[Refusal]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(REPLICAS)
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=redis_workers.reserve_race,
            args=(
                redis_workers.RaceSpec(url, w, CALLS, AMOUNT, LIMIT, naive, on_uvloop),
                barrier,
                results,
            ),
        )
        for w in range(REPLICAS)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * REPLICAS
    held = [r for h, _ in outcomes for r in h]
    refusals = [r for _, f in outcomes for r in f]
    return held, refusals


@STANDALONE_ONLY
async def test_two_replicas_racing_admit_exactly_what_the_limit_allows(
    store: RedisBudgetStore, server: RedisServer, raw: aioredis.Redis
) -> None:
    held, refusals = await _race(server.url, naive=False)

    assert len(held) == ADMITS
    assert len(refusals) == REPLICAS * CALLS - ADMITS
    for refusal in refusals:
        assert (refusal.scope_kind, refusal.scope_id) == ("tenant", "acme")
        assert (refusal.window, refusal.dimension, refusal.limit) == ("day", "usd", LIMIT)
        assert refusal.used + AMOUNT > LIMIT
        assert refusal.retry_after_s > 0
    for request_id in held:
        await store.settle(request_id, "acme", AMOUNT, 1)
    day = redis_workers.PERIODS.day
    assert await counter(raw, "tenant", "acme", "day", day) == {
        "su": ADMITS * AMOUNT,
        "st": ADMITS,
    }
    assert ADMITS * AMOUNT <= LIMIT


@STANDALONE_ONLY
async def test_the_naive_check_then_charge_mode_over_admits_in_the_same_race(
    store: RedisBudgetStore, server: RedisServer, raw: aioredis.Redis
) -> None:
    held, _ = await _race(server.url, naive=True)
    # The race harness sees the race: the naive store holds more than the limit allows.
    assert len(held) > ADMITS
    day = redis_workers.PERIODS.day
    assert (await counter(raw, "tenant", "acme", "day", day))["ru"] > LIMIT


# -- Redis losing its data -------------------------------------------------------------------


async def test_a_redis_never_initialised_admits_nothing_until_rebuilt(
    server: RedisServer, clock: Clock
) -> None:
    store = RedisBudgetStore.from_url(server.url, timeout_s=FAULT_BOUND_S, clock=clock)
    try:
        with pytest.raises(CountersLost):
            await store.reserve(reservation("r1", 1, 1, tenant()))
        await store.rebuild({}, [])  # a first start: the ledger is empty
        assert await store.reserve(reservation("r1", 1, 1, tenant())) is None
    finally:
        await store.aclose()


def _every_operation(store: RedisBudgetStore) -> list[Callable[[], Awaitable[object]]]:
    scope = tenant(usd_per_day_nano=1000)
    return [
        lambda: store.reserve(reservation("new", 1, 1, scope)),
        lambda: store.settle("r1", "acme", 1, 1),
        lambda: store.expire(NOW + 3600),
        lambda: store.remaining((scope,), DEC2),
        lambda: store.take(
            "acme", RateLimits(requests_per_minute=5), requests=1, tokens=0, now_unix_s=NOW
        ),
    ]


async def test_after_redis_lost_its_data_nothing_is_admitted_until_rebuilt_from_the_ledger(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    scopes = (tenant(usd_per_day_nano=1000), key(tokens_per_day=100))
    assert await store.reserve(reservation("settled", 600, 60, *scopes)) is None
    await store.settle("settled", "acme", 600, 60)
    in_flight = reservation("in-flight", 300, 30, *scopes, lease=NOW + 50)
    assert await store.reserve(in_flight) is None

    await raw.flushall()
    for operation in _every_operation(store):
        with pytest.raises(CountersLost):
            await operation()

    # The ledger says what was spent; the replica knows what it still holds.
    spent = {
        ("acme", "tenant", "acme", "day", "2099-12-02"): (600, 60),
        ("acme", "tenant", "acme", "month", "2099-12"): (600, 60),
        ("acme", "key", "key-1", "day", "2099-12-02"): (600, 60),
        ("acme", "key", "key-1", "month", "2099-12"): (600, 60),
    }
    await store.rebuild(spent, [in_flight])  # type: ignore[arg-type]

    # The limits hold as before the loss: 1000 - 600 spent - 300 held.
    assert await store.remaining(scopes, DEC2) == Remaining(nano_usd=100, tokens=10)
    assert await store.reserve(reservation("too-much", 101, 1, *scopes)) is not None
    with pytest.raises(DuplicateRequest):
        await store.reserve(in_flight)
    await store.settle("in-flight", "acme", 200, 20)
    assert await store.remaining(scopes, DEC2) == Remaining(nano_usd=200, tokens=20)
    assert await store.expire(NOW + 3600) == []  # settled: nothing to charge again


async def test_a_held_reservation_restored_by_rebuild_expires_like_any_other(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    lost = reservation("lost", 300, 30, tenant(usd_per_day_nano=1000), lease=NOW + 5)
    await store.reserve(lost)
    await raw.flushall()
    await store.rebuild({}, [lost])
    assert await store.expire(NOW + 6) == [lost]
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == {"su": 300, "st": 30}


async def test_each_replica_adds_its_own_held_reservations_to_a_rebuild(
    store: RedisBudgetStore, server: RedisServer, raw: aioredis.Redis, clock: Clock
) -> None:
    scope = tenant(usd_per_day_nano=1000)
    mine = reservation("mine", 300, 0, scope)
    theirs = reservation("theirs", 200, 0, scope)
    await store.reserve(mine)
    await store.reserve(theirs)
    await raw.flushall()
    spent = {("acme", "tenant", "acme", "day", "2099-12-02"): (100, 0)}
    other = RedisBudgetStore.from_url(server.url, timeout_s=FAULT_BOUND_S, clock=clock)
    try:
        await store.rebuild(spent, [mine])  # type: ignore[arg-type]
        # A second replica rebuilds with a later ledger sum: the spend stays the first
        # rebuild's (later settles may be in it already), its held reservation is added,
        # and one already known is not added twice.
        later = {("acme", "tenant", "acme", "day", "2099-12-02"): (999, 0)}
        await other.rebuild(later, [theirs, mine])  # type: ignore[arg-type]
    finally:
        await other.aclose()
    assert await counter(raw, "tenant", "acme", "day", "2099-12-02") == {"su": 100, "ru": 500}


@STANDALONE_ONLY
async def test_a_redis_restarted_without_persistence_is_a_data_loss(
    store: RedisBudgetStore, server: RedisServer
) -> None:
    await store.reserve(reservation("r1", 1, 1, tenant()))
    server.kill()
    server.start()
    with pytest.raises(CountersLost):
        await store.reserve(reservation("r2", 1, 1, tenant()))
    await store.rebuild({}, [])
    assert await store.reserve(reservation("r2", 1, 1, tenant())) is None


# -- faults ----------------------------------------------------------------------------------


async def test_a_killed_redis_is_unavailable_and_a_restarted_one_serves_again(
    redis_factory: Callable[..., RedisServer], clock: Clock
) -> None:
    server = redis_factory("aof", appendonly=True)
    store = RedisBudgetStore.from_url(server.url, clock=clock)  # the default 0.5 s
    try:
        await store.rebuild({}, [])
        scope = tenant(usd_per_day_nano=1000)
        # Several pooled connections, all of them broken by the kill.
        await asyncio.gather(
            *(store.reserve(reservation(f"r{i}", 100, 1, scope)) for i in range(8))
        )
        server.kill()
        for operation in _every_operation(store):
            with pytest.raises(StoreUnavailable) as caught:
                await asyncio.wait_for(operation(), FAULT_BOUND_S)
            assert not isinstance(caught.value, CountersLost)
        with pytest.raises(StoreUnavailable):
            await store.rebuild({}, [])

        server.start()  # same port, data kept (AOF): no rebuild needed
        outcomes = await asyncio.gather(
            *(store.reserve(reservation(f"s{i}", 100, 1, scope)) for i in range(8))
        )
        assert outcomes.count(None) == 2  # 800 held before the kill, 1000 the limit
        await store.settle("r0", "acme", 50, 1)
        assert await store.remaining((scope,), DEC2) == Remaining(50, None)
    finally:
        await store.aclose()


class ReplyDroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of Redis that, when armed, closes the client's
    connection as the next reply arrives: the command ran, its answer is lost."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.armed = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if self.armed:
                    self.armed = False
                    self.dropped += 1
                    break
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        up = asyncio.create_task(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await up


async def test_a_call_whose_reply_was_lost_is_resent_and_counted_once(
    redis_server: RedisServer, clock: Clock
) -> None:
    async with ReplyDroppingProxy(redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        store = RedisBudgetStore.from_url(
            url, timeout_s=FAULT_BOUND_S, clock=clock, rate_clock="caller"
        )
        try:
            await store.rebuild({}, [])
            # Redis knows every script (a reply lost to NOSCRIPT would prove nothing).
            warm = reservation("warm", 1, 0, tenant_name="globex")
            await store.reserve(warm)
            await store.settle("warm", "globex", 1, 0)
            await store.take("globex", RateLimits(1), requests=1, tokens=0, now_unix_s=NOW)
            await store.remaining((tenant(usd_per_day_nano=1),), DEC2)

            scope = tenant(usd_per_day_nano=1000)
            proxy.armed = True  # the reserve runs, its reply is lost, the client resends
            assert await store.reserve(reservation("r1", 600, 0, scope)) is None
            assert proxy.dropped == 1
            assert await store.remaining((scope,), DEC2) == Remaining(400, None)

            limits = RateLimits(requests_per_minute=2)
            proxy.armed = True
            assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW) is None
            assert proxy.dropped == 2
            # One request of two was taken, not two: one more fits.
            assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW) is None
            assert await store.take("acme", limits, requests=1, tokens=0, now_unix_s=NOW)

            proxy.armed = True
            await store.settle("r1", "acme", 500, 0)
            assert proxy.dropped == 3
            assert await store.remaining((scope,), DEC2) == Remaining(500, None)
        finally:
            await store.aclose()


async def test_a_burst_of_calls_is_not_refused_as_if_redis_were_down(
    redis_server: RedisServer, clock: Clock
) -> None:
    # More calls at once than redis-py's default pool (100 connections) would allow.
    store = RedisBudgetStore.from_url(redis_server.url, timeout_s=FAULT_BOUND_S, clock=clock)
    try:
        await store.rebuild({}, [])
        scope = tenant(usd_per_day_nano=10**9)
        outcomes = await asyncio.gather(
            *(store.reserve(reservation(f"r{i}", 1, 1, scope)) for i in range(300))
        )
        assert outcomes == [None] * 300
    finally:
        await store.aclose()


async def test_a_hung_redis_is_unavailable_after_the_timeout_not_never(
    server: RedisServer, clock: Clock
) -> None:
    store = RedisBudgetStore.from_url(server.url, timeout_s=0.2, clock=clock)
    try:
        await store.rebuild({}, [])
        server.pause()
        try:
            for operation in _every_operation(store):
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(operation(), FAULT_BOUND_S)
        finally:
            server.resume()
        assert await store.reserve(reservation("after", 1, 1, tenant())) is None
    finally:
        await store.aclose()


async def test_nothing_listening_is_unavailable(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory("gone")
    url = server.url
    server.stop()
    store = RedisBudgetStore.from_url(url)
    try:
        for operation in _every_operation(store):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(operation(), FAULT_BOUND_S)
    finally:
        await store.aclose()


# -- hash slots ------------------------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC16 as the Redis Cluster specification defines it (bit by bit, independent of
    the store's implementation)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of(key: bytes) -> int:
    """The hash slot of a key: of its hash tag when it has a non-empty one."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16_xmodem(key) % 16384


def test_the_crc16_of_the_cluster_specification() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the specification's check value


async def test_every_key_of_a_tenant_is_in_the_tenants_hash_slot(
    cluster_node: RedisServer, clock: Clock
) -> None:
    store = RedisBudgetStore.from_url(cluster_node.url, timeout_s=FAULT_BOUND_S, clock=clock)
    raw = aioredis.Redis.from_url(cluster_node.url)
    try:
        await store.rebuild({}, [])
        await raw.flushall()  # only the keys of the workload below, markers rebuilt:
        await store.rebuild(
            {("acme", "key", "key-9", "month", "2099-12"): (5, 5)},
            [reservation("restored", 1, 1, tenant(), key("key-9"))],
        )
        scopes = (tenant(usd_per_day_nano=10**6), key(tokens_per_month=10**6))
        await store.reserve(reservation("r1", 10, 1, *scopes, lease=NOW + 1))
        await store.reserve(reservation("r2", 10, 1, *scopes))
        await store.settle("r2", "acme", 5, 1)
        await store.expire(NOW + 2)
        await store.take("acme", RateLimits(5, 500), requests=1, tokens=5, now_unix_s=NOW)
        await store.remaining(scopes, DEC2)

        acme_slot = slot_of(b"{acme}")
        keys = [k async for k in raw.scan_iter(count=1000) if b"{acme}" in k]
        assert len(keys) >= 8  # counters, reservations, leases, buckets
        for k in keys:
            assert slot_of(k) == acme_slot == await raw.cluster("KEYSLOT", k), k
        # The slot's marker, which every script of the tenant checks, is in that slot too.
        marker = store._marker("acme").encode()
        assert await raw.exists(marker)
        assert slot_of(marker) == acme_slot
    finally:
        await raw.aclose()
        await store.aclose()


async def test_rebuild_marks_every_slot_so_any_tenant_is_admitted_after_it(
    store: RedisBudgetStore, raw: aioredis.Redis
) -> None:
    markers = {k async for k in raw.scan_iter(match="lg:*:ok", count=5000)}
    assert sorted({slot_of(m) for m in markers}) == list(range(16384))
    for name in ("a", "b", "tenant-with-a-long-name", "ünïcode"):
        assert await store.reserve(reservation(f"r-{name}", 1, 1, tenant_name=name)) is None


@STANDALONE_ONLY
async def test_a_cluster_that_refuses_scripts_across_slots_is_marked_and_swept_slot_by_slot(
    store: RedisBudgetStore, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Cluster of several nodes no one script may touch every slot: the store then
    marks every slot, and finds the tenants to sweep, one slot at a time."""
    real_eval = store._eval

    async def refuse_cross_node(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script in (
            redis_budgets._MARK_ALL_SLOTS,
            redis_budgets._DUE_TENANTS,
            redis_budgets._HINT_SLOTS,
        ):
            raise ResponseError("Script attempted to access a non local key in a cluster node")
        return await real_eval(script, keys, args)

    await raw.flushall()
    monkeypatch.setattr(store, "_eval", refuse_cross_node)
    await store.rebuild({}, [])
    markers = {k async for k in raw.scan_iter(match="lg:*:ok", count=5000)}
    assert sorted({slot_of(m) for m in markers}) == list(range(16384))

    for i, name in enumerate(("acme", "globex")):
        await store.reserve(reservation(f"r{i}", 1, 1, tenant_name=name, lease=NOW + 1))
    expired = await store.expire(NOW + 2)
    assert sorted(r.request_id for r in expired) == ["r0", "r1"]
    await raw.delete(store._marker("globex"))  # one slot lost its data
    with pytest.raises(CountersLost):
        await store.expire(NOW + 3)
