"""The store keys' cache: how long an answer is trusted, what forgetting does, one store
lookup for many concurrent callers, a store that is down, and last use in batches."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from llmgateway_server.auth import Authenticator
from llmgateway_server.errors import AuthenticationFailed, StorageUnavailable
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.storage.base import (
    BudgetLimits,
    KeyRecord,
    RateLimits,
    TenantRecord,
)

from tests.support.memory_stores import MemoryTenantStore

KEY = "lgw_store-key-one"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
UNKNOWN_DIGEST = hashlib.sha256(b"nobody").hexdigest()


class Ticks:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _store() -> MemoryTenantStore:
    store = MemoryTenantStore()
    store.tenants["acme"] = TenantRecord(
        "acme",
        routes=("echo",),
        budgets=BudgetLimits(usd_per_day_nano=5),
        rate_limits=RateLimits(requests_per_minute=7),
    )
    store.keys["k1"] = KeyRecord(
        id="k1",
        tenant="acme",
        prefix="lgw_store",
        sha256=DIGEST,
        created_at_unix_s=1.0,
        budgets=BudgetLimits(tokens_per_day=9),
    )
    return store


def _cache(store: MemoryTenantStore, ticks: Ticks, **kwargs: float) -> StoreKeyCache:
    return StoreKeyCache(store, monotonic=ticks, wall_clock=lambda: 1234.5, **kwargs)  # type: ignore[arg-type]


async def test_a_store_key_is_its_tenants_caller_with_the_stores_limits() -> None:
    cache = _cache(_store(), Ticks())
    caller = await cache.caller(DIGEST)
    assert caller is not None
    assert (caller.tenant, caller.key_id, caller.key_prefix) == ("acme", "k1", "lgw_store")
    assert caller.tenant_budgets == BudgetLimits(usd_per_day_nano=5)
    assert caller.key_budgets == BudgetLimits(tokens_per_day=9)
    assert caller.rate_limits == RateLimits(requests_per_minute=7)
    assert caller.may_use("echo")
    assert not caller.may_use("other")
    assert [(s.kind, s.id) for s in caller.budget_scopes] == [("tenant", "acme"), ("key", "k1")]
    await cache.aclose()


async def test_an_answer_is_trusted_for_the_ttl_and_no_longer() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks, ttl_s=2.0)
    assert await cache.caller(DIGEST) is not None
    await store.revoke_key("k1", 5.0)  # on another replica: this cache is not told
    ticks.t += 1.9
    assert await cache.caller(DIGEST) is not None
    assert store.lookups == 1
    ticks.t += 0.2
    assert await cache.caller(DIGEST) is None
    assert store.lookups == 2
    await cache.aclose()


async def test_an_unknown_key_is_cached_too() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks)
    for _ in range(10):
        assert await cache.caller(UNKNOWN_DIGEST) is None
    assert store.lookups == 1


async def test_forgetting_a_key_refuses_it_from_the_next_call() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks)
    assert await cache.caller(DIGEST) is not None
    await store.revoke_key("k1", 5.0)
    cache.forget_key(DIGEST)
    assert await cache.caller(DIGEST) is None
    await cache.aclose()


async def test_forgetting_a_tenant_applies_its_new_routes_at_once() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks)
    auth = Authenticator({}, {}, None, store_keys=cache)
    assert (await auth.authenticate(f"Bearer {KEY}")).tenant == "acme"
    assert auth.may_use("acme", "echo")
    await store.update_tenant(TenantRecord("acme", routes=("other",)))
    cache.forget_tenant("acme")
    caller = await auth.authenticate(f"Bearer {KEY}")
    assert caller.may_use("other")
    assert not caller.may_use("echo")
    assert auth.may_use("acme", "other")
    assert not auth.may_use("acme", "echo")
    assert not auth.may_use("never-seen", "echo")
    await cache.aclose()


class _GatedStore(MemoryTenantStore):
    """Holds every key lookup until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def key_by_digest(self, sha256: str) -> KeyRecord | None:
        record = await super().key_by_digest(sha256)
        await self.gate.wait()
        return record


def _gated() -> _GatedStore:
    store = _GatedStore()
    source = _store()
    store.tenants, store.keys = source.tenants, source.keys
    return store


async def test_concurrent_callers_with_one_new_key_share_one_lookup() -> None:
    store = _gated()
    cache = _cache(store, Ticks())
    waiting = [asyncio.ensure_future(cache.caller(DIGEST)) for _ in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    callers = await asyncio.gather(*waiting)
    assert {c.key_id if c else None for c in callers} == {"k1"}
    assert store.lookups == 1
    await cache.aclose()


async def test_a_lookup_in_flight_when_the_key_is_revoked_here_is_not_trusted_after() -> None:
    store = _gated()
    cache = _cache(store, Ticks())
    early = asyncio.ensure_future(cache.caller(DIGEST))
    for _ in range(100):  # the lookup reads the key (still active), then waits at the gate
        await asyncio.sleep(0)
    assert store.lookups == 1
    await store.revoke_key("k1", 5.0)
    cache.forget_key(DIGEST)
    late = asyncio.ensure_future(cache.caller(DIGEST))
    for _ in range(100):
        await asyncio.sleep(0)
    assert store.lookups == 2  # the late call did not join the early lookup
    store.gate.set()
    assert await early is not None  # began before the revocation: its answer is its own
    assert await late is None
    assert await cache.caller(DIGEST) is None  # and the early answer was not cached


async def test_an_answer_read_before_a_revocation_here_is_not_cached() -> None:
    store = _gated()
    cache = _cache(store, Ticks())
    early = asyncio.ensure_future(cache.caller(DIGEST))
    for _ in range(100):
        await asyncio.sleep(0)
    assert store.lookups == 1  # read the key while it was active
    await store.revoke_key("k1", 5.0)
    cache.forget_key(DIGEST)
    store.gate.set()
    assert await early is not None
    assert await cache.caller(DIGEST) is None
    assert store.lookups == 2


async def test_a_caller_going_away_does_not_cancel_the_lookup_others_wait_for() -> None:
    store = _gated()
    cache = _cache(store, Ticks())
    leaving = asyncio.ensure_future(cache.caller(DIGEST))
    staying = asyncio.ensure_future(cache.caller(DIGEST))
    await asyncio.sleep(0)
    leaving.cancel()
    store.gate.set()
    caller = await staying
    assert caller is not None
    assert leaving.cancelled()
    await cache.aclose()


async def test_a_store_that_is_down_fails_the_lookup_and_caches_nothing() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks)
    store.down = True
    with pytest.raises(StorageUnavailable):
        await cache.caller(DIGEST)
    store.down = False
    assert await cache.caller(DIGEST) is not None  # at once, not after a TTL
    await cache.aclose()


async def test_config_keys_work_while_the_store_is_down() -> None:
    store = _store()
    store.down = True
    config_digest = hashlib.sha256(b"config-key").hexdigest()
    auth = Authenticator(
        {config_digest: "team"}, {"team": ["*"]}, None, store_keys=_cache(store, Ticks())
    )
    assert (await auth.authenticate("Bearer config-key")).tenant == "team"
    with pytest.raises(StorageUnavailable):
        await auth.authenticate(f"Bearer {KEY}")


async def test_a_revoked_or_orphaned_key_is_unknown_to_the_authenticator() -> None:
    store = _store()
    store.keys["k2"] = KeyRecord("k2", "gone", "lgw_orph", UNKNOWN_DIGEST, 1.0)
    await store.revoke_key("k1", 5.0)
    auth = Authenticator({}, {}, None, store_keys=_cache(store, Ticks()))
    for key in (KEY, "nobody"):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {key}")


async def test_last_use_is_written_in_batches_and_at_close() -> None:
    store = _store()
    cache = _cache(store, Ticks(), touch_interval_s=3600)
    for _ in range(5):
        await cache.caller(DIGEST)
    assert store.keys["k1"].last_used_at_unix_s is None  # not one write per call
    store.down = True
    await cache.flush_last_used()  # fails: kept for the next write
    store.down = False
    await cache.aclose()
    assert store.keys["k1"].last_used_at_unix_s == 1234.5


async def test_the_oldest_entries_go_when_the_cache_is_full() -> None:
    store, ticks = _store(), Ticks()
    cache = _cache(store, ticks, max_entries=3)
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4)]
    for digest in digests:
        await cache.caller(digest)
    assert store.lookups == 4
    await cache.caller(digests[3])
    assert store.lookups == 4  # still cached
    await cache.caller(digests[0])
    assert store.lookups == 5  # evicted
