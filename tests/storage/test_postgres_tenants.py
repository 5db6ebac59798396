"""The PostgreSQL tenant store against a real PostgreSQL: tenants and keys round-trip,
names and digests are unique, revocation keeps its first time and is seen by every
replica at once, last-used times never move back, and a PostgreSQL that is down or hung
is ``StoreUnavailable`` within the store's timeout (and the store recovers after it)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from llmgateway_server.storage.base import (
    AlreadyExists,
    BudgetLimits,
    KeyRecord,
    NotFound,
    RateLimits,
    StoreUnavailable,
    TenantRecord,
)
from llmgateway_server.storage.postgres import PostgresTenantStore, migrate

from tests.support.servers import (  # noqa: F401 (postgres_server: a fixture)
    PostgresServer,
    ServerMissing,
    postgres_server,
)

T0 = 1_796_169_600.123456789  # not a whole microsecond: times are kept exactly


_databases = itertools.count()


@pytest.fixture
async def url(shared_server: PostgresServer) -> str:
    url = shared_server.create_database(f"tenants_{next(_databases)}")
    await migrate(url)
    return url


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresTenantStore]:
    store = await PostgresTenantStore.open(url)
    yield store
    await store.aclose()


def _key(key_id: str, tenant: str = "acme", **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "prefix": f"lgw_{key_id}",
        "sha256": f"{key_id:0>64}",
        "created_at_unix_s": T0,
    }
    values.update(fields)
    return KeyRecord(key_id, tenant, **values)  # type: ignore[arg-type]


async def test_a_tenant_round_trips_with_its_routes_and_limits(
    store: PostgresTenantStore,
) -> None:
    tenant = TenantRecord(
        name="acme",
        routes=("default", "smart"),
        budgets=BudgetLimits(usd_per_day_nano=5_000_000_000, tokens_per_month=10**12),
        rate_limits=RateLimits(requests_per_minute=600, tokens_per_minute=None),
        created_at_unix_s=T0,
    )
    await store.create_tenant(tenant)
    assert await store.get_tenant("acme") == tenant
    assert await store.get_tenant("nobody") is None


async def test_a_tenant_name_is_taken_once(store: PostgresTenantStore) -> None:
    await store.create_tenant(TenantRecord("acme"))
    with pytest.raises(AlreadyExists, match="acme"):
        await store.create_tenant(TenantRecord("acme", routes=("other",)))
    assert await store.get_tenant("acme") == TenantRecord("acme")


async def test_update_replaces_routes_and_limits_and_keeps_the_creation_time(
    store: PostgresTenantStore,
) -> None:
    await store.create_tenant(TenantRecord("acme", created_at_unix_s=T0))
    updated = TenantRecord(
        "acme",
        routes=("smart",),
        budgets=BudgetLimits(usd_per_month_nano=1),
        rate_limits=RateLimits(tokens_per_minute=1000),
        created_at_unix_s=T0 + 999,
    )
    await store.update_tenant(updated)
    got = await store.get_tenant("acme")
    assert got is not None
    assert (got.routes, got.budgets, got.rate_limits) == (
        ("smart",),
        BudgetLimits(usd_per_month_nano=1),
        RateLimits(tokens_per_minute=1000),
    )
    assert got.created_at_unix_s == T0
    with pytest.raises(NotFound, match="ghost"):
        await store.update_tenant(TenantRecord("ghost"))


async def test_tenants_are_listed_by_name(store: PostgresTenantStore) -> None:
    for name in ("zeta", "Acme", "beta", "acme"):
        await store.create_tenant(TenantRecord(name))
    assert [t.name for t in await store.list_tenants()] == ["Acme", "acme", "beta", "zeta"]


async def test_keys_round_trip_oldest_first_and_are_found_by_digest(
    store: PostgresTenantStore,
) -> None:
    await store.create_tenant(TenantRecord("acme"))
    await store.create_tenant(TenantRecord("other"))
    newer = _key("k2", created_at_unix_s=T0 + 10, budgets=BudgetLimits(tokens_per_day=99))
    older = _key("k1")
    await store.add_key(newer)
    await store.add_key(older)
    await store.add_key(_key("k3", tenant="other"))
    assert await store.list_keys("acme") == [older, newer]
    assert await store.list_keys("nobody") == []
    assert await store.key_by_digest(newer.sha256) == newer
    assert await store.key_by_digest("f" * 64) is None


async def test_a_key_needs_its_tenant_and_a_unique_id_and_digest(
    store: PostgresTenantStore,
) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.add_key(_key("k1", tenant="ghost"))
    await store.create_tenant(TenantRecord("acme"))
    await store.add_key(_key("k1"))
    with pytest.raises(AlreadyExists):
        await store.add_key(_key("k1", sha256="e" * 64))  # same id
    with pytest.raises(AlreadyExists):
        await store.add_key(_key("k2", sha256=_key("k1").sha256))  # same digest
    assert [k.id for k in await store.list_keys("acme")] == ["k1"]


async def test_revoking_keeps_the_first_time_and_an_unknown_key_is_not_found(
    store: PostgresTenantStore,
) -> None:
    await store.create_tenant(TenantRecord("acme"))
    await store.add_key(_key("k1"))
    revoked = await store.revoke_key("k1", T0 + 5)
    assert revoked.revoked_at_unix_s == T0 + 5
    again = await store.revoke_key("k1", T0 + 50)
    assert again.revoked_at_unix_s == T0 + 5
    assert (await store.key_by_digest(_key("k1").sha256)) == again
    with pytest.raises(NotFound, match="k9"):
        await store.revoke_key("k9", T0)


async def test_a_revocation_is_seen_by_another_replica_at_once(url: str) -> None:
    one = await PostgresTenantStore.open(url)
    two = await PostgresTenantStore.open(url)
    try:
        await one.create_tenant(TenantRecord("acme"))
        await one.add_key(_key("k1"))
        before = await two.key_by_digest(_key("k1").sha256)
        assert before is not None
        assert before.revoked_at_unix_s is None
        await one.revoke_key("k1", T0 + 1)
        after = await two.key_by_digest(_key("k1").sha256)
        assert after is not None
        assert after.revoked_at_unix_s == T0 + 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_last_used_times_only_move_forward_and_unknown_keys_are_ignored(
    store: PostgresTenantStore,
) -> None:
    await store.create_tenant(TenantRecord("acme"))
    await store.add_key(_key("k1"))
    await store.add_key(_key("k2"))
    await store.touch_keys({"k1": T0 + 10, "k2": T0 + 20, "ghost": T0})
    await store.touch_keys({"k1": T0 + 5})  # a replica reporting late
    await store.touch_keys({})
    used = {k.id: k.last_used_at_unix_s for k in await store.list_keys("acme")}
    assert used == {"k1": T0 + 10, "k2": T0 + 20}


async def test_replicas_touching_the_same_keys_in_any_order_do_not_deadlock(
    url: str,
) -> None:
    stores = [await PostgresTenantStore.open(url) for _ in range(4)]
    try:
        await stores[0].create_tenant(TenantRecord("acme"))
        ids = [f"k{i:02}" for i in range(20)]
        for key_id in ids:
            await stores[0].add_key(_key(key_id))
        # Each replica's batch lists the keys in another order (dicts keep insertion order).
        batches = [dict.fromkeys(ids if n % 2 else reversed(ids), T0 + n) for n in range(1, 41)]
        await asyncio.gather(*(stores[n % 4].touch_keys(batch) for n, batch in enumerate(batches)))
        used = {k.last_used_at_unix_s for k in await stores[0].list_keys("acme")}
        assert used == {T0 + 40}
    finally:
        for s in stores:
            await s.aclose()


async def test_every_operation_is_unavailable_while_postgresql_is_down_and_works_after(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    await migrate(postgres_server.url)
    # Down means refused: each operation waits at most timeout_s for the pool.
    store = await PostgresTenantStore.open(postgres_server.url, timeout_s=0.5)
    try:
        await store.create_tenant(TenantRecord("acme"))
        postgres_server.stop()
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: store.create_tenant(TenantRecord("beta")),
            lambda: store.update_tenant(TenantRecord("acme")),
            lambda: store.get_tenant("acme"),
            lambda: store.list_tenants(),
            lambda: store.add_key(_key("k1")),
            lambda: store.list_keys("acme"),
            lambda: store.revoke_key("k1", T0),
            lambda: store.key_by_digest("0" * 64),
            lambda: store.touch_keys({"k1": T0}),
        ]
        for operation in operations:
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                await operation()
        postgres_server.start()
        # The pool replaces the connections the restart broke: no error after it.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                tenant = await store.get_tenant("acme")
                break
            except StoreUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert tenant == TenantRecord("acme")
        assert [t.name for t in await store.list_tenants()] == ["acme"]
    finally:
        await store.aclose()


async def test_a_hung_postgresql_is_unavailable_within_the_timeout(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    await migrate(postgres_server.url)
    store = await PostgresTenantStore.open(postgres_server.url, timeout_s=1.0)
    try:
        assert await store.key_by_digest("0" * 64) is None
        postgres_server.pause()  # accepts, never answers
        try:
            # The bound is the store's 1 s, not psycopg's ~10 s clean-up of a cancelled
            # query (which the store leaves to the background); 5 s never flakes.
            async with asyncio.timeout(5):
                with pytest.raises(StoreUnavailable, match="within 1 s"):
                    await store.key_by_digest("0" * 64)
        finally:
            postgres_server.resume()
    finally:
        await store.aclose()
