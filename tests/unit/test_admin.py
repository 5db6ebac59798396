"""AdminService's logic without gRPC: exact money, the keys it issues, and a rotation that
fails halfway leaving the old key the one that works."""

from __future__ import annotations

import hashlib
import re

import pytest
from llmgateway_server.admin import (
    PREFIX_LENGTH,
    Admin,
    BudgetSpec,
    RateSpec,
    TenantSpec,
    config_tenant_records,
    generate_key,
)
from llmgateway_server.auth import Authenticator
from llmgateway_server.config import parse_config
from llmgateway_server.errors import (
    AuthenticationFailed,
    FieldViolation,
    InvalidRequest,
    StorageUnavailable,
)
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.storage.base import BudgetLimits, KeyRecord, RateLimits, StoreUnavailable

from tests.support.memory_stores import MemoryTenantStore


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        ("0", 0),
        ("12.5", 12_500_000_000),
        ("12.50", 12_500_000_000),
        ("0.000000001", 1),
        ("1000000000", 10**18),
        ("007", 7_000_000_000),
    ],
)
def test_usd_budgets_become_exact_nano_usd(usd: str, nano: int) -> None:
    violations: list[FieldViolation] = []
    limits = BudgetSpec(usd_per_day=usd, usd_per_month=usd).limits("b", violations)
    assert violations == []
    assert limits == BudgetLimits(usd_per_day_nano=nano, usd_per_month_nano=nano)


@pytest.mark.parametrize(
    "usd", ["-1", "1e3", "0.0000000001", "1000000000.000000001", "+1", ".5", "1.", "٣"]
)
def test_a_budget_that_is_not_an_exact_non_negative_amount_is_named(usd: str) -> None:
    violations: list[FieldViolation] = []
    BudgetSpec(usd_per_month=usd).limits("tenant.budgets", violations)
    assert [v.field for v in violations] == ["tenant.budgets.usd_per_month"]


def test_counts_have_bounds() -> None:
    violations: list[FieldViolation] = []
    BudgetSpec(tokens_per_day=-1, tokens_per_month=0).limits("b", violations)
    RateSpec(requests_per_minute=0, tokens_per_minute=10**13).limits("r", violations)
    assert [v.field for v in violations] == [
        "b.tokens_per_day",
        "r.requests_per_minute",
        "r.tokens_per_minute",
    ]


def test_issued_keys_are_distinct_printable_and_carry_a_short_prefix() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert re.fullmatch(r"lgw_[A-Za-z0-9_\-]{43}", key)
    assert PREFIX_LENGTH == 12


def _admin(store: MemoryTenantStore, cache: StoreKeyCache | None = None) -> Admin:
    return Admin(
        store,
        config_tenants={},
        route_names={"echo"},
        key_cache=cache,
        wall_clock=lambda: 1000.0,
    )


async def test_a_created_key_is_stored_as_its_digest_and_authenticates() -> None:
    store = MemoryTenantStore()
    cache = StoreKeyCache(store)
    admin = _admin(store, cache)
    await admin.create_tenant(TenantSpec("acme", rate_limits=RateSpec(requests_per_minute=5)))
    issued = await admin.create_key("acme", BudgetSpec(usd_per_day="1"))
    (stored,) = store.keys.values()
    assert stored.sha256 == hashlib.sha256(issued.api_key.encode()).hexdigest()
    assert stored.prefix == issued.api_key[:PREFIX_LENGTH]
    assert issued.api_key not in repr(stored)
    caller = await Authenticator({}, {}, None, store_keys=cache).authenticate(
        f"Bearer {issued.api_key}"
    )
    assert (caller.tenant, caller.key_id, caller.key_prefix) == ("acme", stored.id, stored.prefix)
    assert caller.key_budgets == BudgetLimits(usd_per_day_nano=10**9)
    assert caller.rate_limits == RateLimits(requests_per_minute=5)
    await cache.aclose()


class _RevokeFails(MemoryTenantStore):
    """A store that goes down when asked to revoke one key (the old one of a rotation)."""

    fail_for = ""

    async def revoke_key(self, key_id: str, now_unix_s: float) -> KeyRecord:
        if key_id == self.fail_for:
            raise StoreUnavailable("down at the worst moment")
        return await super().revoke_key(key_id, now_unix_s)


async def test_a_rotation_that_cannot_revoke_the_old_key_leaves_it_the_one_that_works() -> None:
    store = _RevokeFails()
    cache = StoreKeyCache(store)
    admin = _admin(store, cache)
    auth = Authenticator({}, {}, None, store_keys=cache)
    await admin.create_tenant(TenantSpec("acme"))
    old = await admin.create_key("acme")
    store.fail_for = old.record.id
    with pytest.raises(StorageUnavailable):
        await admin.rotate_key("acme", old.record.id)
    assert (await auth.authenticate(f"Bearer {old.api_key}")).key_id == old.record.id
    (new,) = [k for k in store.keys.values() if k.id != old.record.id]
    assert new.revoked_at_unix_s is not None  # issued, never returned, revoked
    await cache.aclose()


async def test_a_rotated_key_is_refused_at_once_through_the_same_cache() -> None:
    store = MemoryTenantStore()
    cache = StoreKeyCache(store)
    admin = _admin(store, cache)
    auth = Authenticator({}, {}, None, store_keys=cache)
    await admin.create_tenant(TenantSpec("acme"))
    old = await admin.create_key("acme")
    await auth.authenticate(f"Bearer {old.api_key}")  # cached as valid
    new, revoked = await admin.rotate_key("acme", old.record.id)
    assert revoked.revoked_at_unix_s == 1000.0
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {old.api_key}")
    assert (await auth.authenticate(f"Bearer {new.api_key}")).key_id == new.record.id
    await cache.aclose()


async def test_validation_comes_before_any_store_call() -> None:
    store = MemoryTenantStore()
    store.down = True  # a store call would raise StoreUnavailable, not InvalidRequest
    admin = _admin(store)
    with pytest.raises(InvalidRequest):
        await admin.create_tenant(TenantSpec("acme", routes=("nope",)))
    with pytest.raises(InvalidRequest):
        await admin.create_key("acme", BudgetSpec(usd_per_day="-1"))
    with pytest.raises(InvalidRequest):
        await admin.revoke_key("acme", "not a key id")


def test_config_tenants_and_the_anonymous_one_are_listed_with_their_limits() -> None:
    config = parse_config(
        """
auth:
  anonymous_tenant: local
  tenants:
    - name: team
      api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000000"]
      routes: [echo]
      budgets: {usd_per_day: "2.5"}
      rate_limits: {tokens_per_minute: 100}
providers:
  mock: {type: mock}
targets:
  echo: {provider: mock, model: m, context_window: 100}
routes:
  echo: {targets: [echo]}
"""
    )
    records = config_tenant_records(config.auth)
    assert sorted(records) == ["local", "team"]
    team = records["team"]
    assert team.routes == ("echo",)
    assert team.budgets == BudgetLimits(usd_per_day_nano=2_500_000_000)
    assert team.rate_limits == RateLimits(tokens_per_minute=100)
    assert records["local"].routes == ("*",)
