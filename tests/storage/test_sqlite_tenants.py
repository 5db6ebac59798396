"""The SQLite tenant store: tenants and their limits, keys stored as digests, revocation
and last use, seen by every process on the file."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from llmgateway_server.storage.base import (
    AlreadyExists,
    BudgetLimits,
    KeyRecord,
    NotFound,
    RateLimits,
    TenantRecord,
)
from llmgateway_server.storage.sqlite import SqliteDatabase, SqliteTenantStore


@pytest.fixture
async def tenants(tmp_path: Path) -> AsyncIterator[SqliteTenantStore]:
    db = await SqliteDatabase.open(tmp_path / "tenants.db")
    store = SqliteTenantStore(db)
    yield store
    await store.aclose()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ACME = TenantRecord(
    name="acme",
    routes=("default", "smart"),
    budgets=BudgetLimits(usd_per_day_nano=5_000_000_000, tokens_per_month=1_000_000),
    rate_limits=RateLimits(requests_per_minute=600, tokens_per_minute=None),
    created_at_unix_s=100.0,
)


def a_key(key_id: str, secret: str, *, tenant: str = "acme", created: float = 200.0) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        tenant=tenant,
        prefix=secret[:8],
        sha256=digest(secret),
        created_at_unix_s=created,
        budgets=BudgetLimits(usd_per_month_nano=10),
    )


async def test_tenants_are_created_read_and_listed_by_name(tenants: SqliteTenantStore) -> None:
    globex = TenantRecord(name="globex", created_at_unix_s=50.0)
    await tenants.create_tenant(globex)
    await tenants.create_tenant(ACME)
    assert await tenants.get_tenant("acme") == ACME
    assert await tenants.get_tenant("nobody") is None
    assert await tenants.list_tenants() == [ACME, globex]


async def test_a_taken_tenant_name_is_refused(tenants: SqliteTenantStore) -> None:
    await tenants.create_tenant(ACME)
    with pytest.raises(AlreadyExists):
        await tenants.create_tenant(TenantRecord(name="acme"))
    assert await tenants.get_tenant("acme") == ACME


async def test_update_replaces_routes_and_limits_and_keeps_the_creation_time(
    tenants: SqliteTenantStore,
) -> None:
    await tenants.create_tenant(ACME)
    changed = TenantRecord(
        name="acme",
        routes=("*",),
        budgets=BudgetLimits(usd_per_month_nano=1),
        rate_limits=RateLimits(tokens_per_minute=10),
        created_at_unix_s=999.0,
    )
    await tenants.update_tenant(changed)
    assert await tenants.get_tenant("acme") == TenantRecord(
        name="acme",
        routes=("*",),
        budgets=BudgetLimits(usd_per_month_nano=1),
        rate_limits=RateLimits(tokens_per_minute=10),
        created_at_unix_s=100.0,
    )
    with pytest.raises(NotFound):
        await tenants.update_tenant(TenantRecord(name="nobody"))


async def test_keys_are_stored_found_by_digest_and_listed_oldest_first(
    tenants: SqliteTenantStore,
) -> None:
    await tenants.create_tenant(ACME)
    await tenants.create_tenant(TenantRecord(name="globex"))
    newer = a_key("k2", "lgw_second_secret", created=300.0)
    older = a_key("k1", "lgw_first_secret", created=200.0)
    await tenants.add_key(newer)
    await tenants.add_key(older)
    await tenants.add_key(a_key("g1", "lgw_globex_secret", tenant="globex"))
    assert await tenants.list_keys("acme") == [older, newer]
    assert await tenants.key_by_digest(digest("lgw_first_secret")) == older
    assert await tenants.key_by_digest(digest("lgw_unknown")) is None


async def test_a_key_needs_an_existing_tenant_and_a_free_id_and_digest(
    tenants: SqliteTenantStore,
) -> None:
    with pytest.raises(NotFound):
        await tenants.add_key(a_key("k1", "lgw_secret_one", tenant="nobody"))
    await tenants.create_tenant(ACME)
    await tenants.add_key(a_key("k1", "lgw_secret_one"))
    with pytest.raises(AlreadyExists):
        await tenants.add_key(a_key("k1", "lgw_secret_two"))
    with pytest.raises(AlreadyExists):
        await tenants.add_key(a_key("k2", "lgw_secret_one"))
    assert [k.id for k in await tenants.list_keys("acme")] == ["k1"]


async def test_a_key_in_plain_text_is_never_stored(tenants: SqliteTenantStore) -> None:
    await tenants.create_tenant(ACME)
    plain = KeyRecord("k1", "acme", "lgw_plai", "lgw_plaintext_key_" + "x" * 46, 1.0)
    with pytest.raises(ValueError, match="digest"):
        await tenants.add_key(plain)
    assert await tenants.list_keys("acme") == []


async def test_revoking_is_idempotent_and_keeps_the_first_time(
    tenants: SqliteTenantStore,
) -> None:
    await tenants.create_tenant(ACME)
    await tenants.add_key(a_key("k1", "lgw_secret_one"))
    revoked = await tenants.revoke_key("k1", 500.0)
    assert revoked.revoked_at_unix_s == 500.0
    assert (await tenants.revoke_key("k1", 900.0)).revoked_at_unix_s == 500.0
    # Still found by its digest, so the caller can tell "revoked" from "unknown".
    found = await tenants.key_by_digest(digest("lgw_secret_one"))
    assert found is not None
    assert found.revoked_at_unix_s == 500.0
    with pytest.raises(NotFound):
        await tenants.revoke_key("nope", 1.0)


async def test_last_use_only_moves_forward_and_unknown_keys_are_ignored(
    tenants: SqliteTenantStore,
) -> None:
    await tenants.create_tenant(ACME)
    await tenants.add_key(a_key("k1", "lgw_secret_one"))
    await tenants.add_key(a_key("k2", "lgw_secret_two"))
    await tenants.touch_keys({"k1": 700.0, "gone": 1.0})
    await tenants.touch_keys({"k1": 650.0, "k2": 10.0})  # a batch from a slower replica
    used = {k.id: k.last_used_at_unix_s for k in await tenants.list_keys("acme")}
    assert used == {"k1": 700.0, "k2": 10.0}


async def test_a_change_is_seen_at_once_through_another_connection_to_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    one = SqliteTenantStore(await SqliteDatabase.open(path))
    two = SqliteTenantStore(await SqliteDatabase.open(path))  # another gateway process
    await one.create_tenant(ACME)
    await one.add_key(a_key("k1", "lgw_secret_one"))
    assert await two.get_tenant("acme") == ACME
    await one.revoke_key("k1", 42.0)
    seen = await two.key_by_digest(digest("lgw_secret_one"))
    assert seen is not None
    assert seen.revoked_at_unix_s == 42.0
    await one.aclose()
    await two.aclose()
