"""AdminService's logic, protobuf-free: tenants and API keys in the store, validated.

Keys: ``lgw_`` and 43 characters of URL-safe base64 (32 random bytes), issued once. The
store keeps the key's SHA-256 digest and its first ``PREFIX_LENGTH`` characters (the
visible prefix usage records carry: 8 random characters, 48 of the 256 bits). Ids are
16 random hex digits.

Tenants of the config are shown beside the store's but never changed here; a store
tenant cannot take a config tenant's name. Every change that affects authentication is
applied to this replica's key cache at once (``StoreKeyCache.forget_*``); other replicas
see it when their cache entries expire.

Field names in BadRequest violations are the API's (``tenant.budgets.usd_per_day``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TypeVar

from llmgateway_server.config import AuthConfig
from llmgateway_server.errors import (
    FieldViolation,
    KeyNotFound,
    KeyRevoked,
    StorageUnavailable,
    TenantAlreadyExists,
    TenantDefinedInConfig,
    TenantNotFound,
    invalid_request,
)
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.storage.base import (
    AlreadyExists,
    BudgetLimits,
    KeyRecord,
    NotFound,
    RateLimits,
    StoreUnavailable,
    TenantRecord,
    TenantStore,
)

KEY_PREFIX = "lgw_"
PREFIX_LENGTH = len(KEY_PREFIX) + 8
MAX_TENANT_NAME = 64
MAX_ROUTES = 1_000
# Limits far beyond any real budget, well inside int64 nano-USD (9.2e9 USD).
MAX_USD = Decimal(1_000_000_000)
MAX_TOKENS = 10**15
MAX_RATE = 10**12
_TENANT_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_USD = re.compile(r"[0-9]+(\.[0-9]+)?")  # ASCII digits only: \d matches any script's
_NANO = Decimal(1_000_000_000)

STORE_DOWN = "the tenant store is unavailable"


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """Budgets as an admin writes them: decimal USD strings and token counts (None:
    unlimited). ``limits`` validates them."""

    usd_per_day: str | None = None
    usd_per_month: str | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def limits(self, field: str, violations: list[FieldViolation]) -> BudgetLimits:
        """As the store counts them; each invalid field appended to ``violations``."""
        return BudgetLimits(
            usd_per_day_nano=_usd(self.usd_per_day, f"{field}.usd_per_day", violations),
            usd_per_month_nano=_usd(self.usd_per_month, f"{field}.usd_per_month", violations),
            tokens_per_day=_count(
                self.tokens_per_day, f"{field}.tokens_per_day", 0, MAX_TOKENS, violations
            ),
            tokens_per_month=_count(
                self.tokens_per_month, f"{field}.tokens_per_month", 0, MAX_TOKENS, violations
            ),
        )


@dataclass(frozen=True, slots=True)
class RateSpec:
    """Rate limits as an admin writes them (None: unlimited)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def limits(self, field: str, violations: list[FieldViolation]) -> RateLimits:
        """As the store counts them; each invalid field appended to ``violations``."""
        return RateLimits(
            requests_per_minute=_count(
                self.requests_per_minute, f"{field}.requests_per_minute", 1, MAX_RATE, violations
            ),
            tokens_per_minute=_count(
                self.tokens_per_minute, f"{field}.tokens_per_minute", 1, MAX_RATE, violations
            ),
        )


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant as an admin writes it. ``budgets``/``rate_limits`` None: not given."""

    name: str
    routes: tuple[str, ...] = ()
    budgets: BudgetSpec | None = None
    rate_limits: RateSpec | None = None


@dataclass(frozen=True, slots=True)
class TenantView:
    """A tenant as AdminService shows it."""

    record: TenantRecord
    config_defined: bool


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: its record, and the key itself (shown once, kept nowhere)."""

    record: KeyRecord
    api_key: str


# The fields UpdateTenant's mask may name: a whole field, or one field of budgets or
# rate_limits.
BUDGET_FIELDS = ("usd_per_day", "usd_per_month", "tokens_per_day", "tokens_per_month")
RATE_FIELDS = ("requests_per_minute", "tokens_per_minute")
UPDATE_PATHS = frozenset(
    ["routes", "budgets", "rate_limits"]
    + [f"budgets.{f}" for f in BUDGET_FIELDS]
    + [f"rate_limits.{f}" for f in RATE_FIELDS]
)


def generate_key() -> str:
    """A new API key: printable ASCII without spaces, as ``auth`` requires."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(api_key: str) -> str:
    """The SHA-256 hex digest the store and the authenticator know a key by."""
    return hashlib.sha256(api_key.encode("ascii")).hexdigest()


def config_tenant_records(auth: AuthConfig) -> dict[str, TenantRecord]:
    """The config's tenants (and the anonymous one), as AdminService lists them."""
    records = {
        t.name: TenantRecord(t.name, tuple(t.routes), t.budgets.limits(), t.rate_limits.limits())
        for t in auth.tenants
    }
    if auth.anonymous_tenant is not None:
        records.setdefault(auth.anonymous_tenant, TenantRecord(auth.anonymous_tenant))
    return records


class Admin:
    """What AdminService does: one instance per server, built by ``app``."""

    def __init__(
        self,
        store: TenantStore,
        *,
        config_tenants: Mapping[str, TenantRecord],
        route_names: Collection[str],
        key_cache: StoreKeyCache | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config_tenants = dict(config_tenants)
        self._route_names = frozenset(route_names)
        self._key_cache = key_cache
        self._wall = wall_clock

    async def create_tenant(self, spec: TenantSpec) -> TenantView:
        """Add a store tenant (empty routes: every route)."""
        violations: list[FieldViolation] = []
        _check_name(spec.name, "tenant.name", violations)
        routes = self._routes(spec.routes or ("*",), violations)
        budgets = (spec.budgets or BudgetSpec()).limits("tenant.budgets", violations)
        rates = (spec.rate_limits or RateSpec()).limits("tenant.rate_limits", violations)
        if violations:
            raise invalid_request(violations)
        if spec.name in self._config_tenants:
            raise _exists(spec.name)
        record = TenantRecord(spec.name, routes, budgets, rates, self._wall())
        try:
            await self._store.create_tenant(record)
        except AlreadyExists:
            raise _exists(spec.name) from None
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        return TenantView(record, config_defined=False)

    async def get_tenant(self, name: str) -> TenantView:
        """One tenant, of the config or the store."""
        _valid_name(name, "name")
        configured = self._config_tenants.get(name)
        if configured is not None:
            return TenantView(configured, config_defined=True)
        return TenantView(await self._store_tenant(name), config_defined=False)

    async def list_tenants(self) -> list[TenantView]:
        """Every tenant, by name."""
        try:
            stored = await self._store.list_tenants()
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        views = [TenantView(r, config_defined=True) for r in self._config_tenants.values()]
        views += [
            TenantView(r, config_defined=False)
            for r in stored
            if r.name not in self._config_tenants
        ]
        return sorted(views, key=lambda v: v.record.name)

    async def update_tenant(self, spec: TenantSpec, paths: Sequence[str]) -> TenantView:
        """Replace the fields ``paths`` name (every field ``spec`` sets when empty)."""
        violations: list[FieldViolation] = []
        _check_name(spec.name, "tenant.name", violations)
        wanted = list(paths) or [
            name
            for name, given in (
                ("routes", bool(spec.routes)),
                ("budgets", spec.budgets is not None),
                ("rate_limits", spec.rate_limits is not None),
            )
            if given
        ]
        if not wanted:
            violations.append(FieldViolation("update_mask", "names no field to update"))
        for path in wanted:
            if path not in UPDATE_PATHS:
                violations.append(
                    FieldViolation(
                        "update_mask", f"{path!r} is not one of {', '.join(sorted(UPDATE_PATHS))}"
                    )
                )
        if "routes" in wanted and not spec.routes:
            violations.append(FieldViolation("tenant.routes", "at least one route, or '*'"))
        routes = self._routes(spec.routes, violations)
        budgets = (spec.budgets or BudgetSpec()).limits("tenant.budgets", violations)
        rates = (spec.rate_limits or RateSpec()).limits("tenant.rate_limits", violations)
        if violations:
            raise invalid_request(violations)
        if spec.name in self._config_tenants:
            raise _in_config(spec.name)
        current = await self._store_tenant(spec.name)
        updated = replace(
            current,
            routes=routes if "routes" in wanted else current.routes,
            budgets=_merged(current.budgets, budgets, "budgets", wanted),
            rate_limits=_merged(current.rate_limits, rates, "rate_limits", wanted),
        )
        try:
            await self._store.update_tenant(updated)
        except NotFound:
            raise _no_tenant(spec.name) from None
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        finally:
            if self._key_cache is not None:
                self._key_cache.forget_tenant(spec.name)
        return TenantView(updated, config_defined=False)

    async def create_key(self, tenant: str, budgets: BudgetSpec | None = None) -> IssuedKey:
        """Issue a key for a store tenant."""
        violations: list[FieldViolation] = []
        _check_name(tenant, "tenant", violations)
        limits = (budgets or BudgetSpec()).limits("budgets", violations)
        if violations:
            raise invalid_request(violations)
        if tenant in self._config_tenants:
            raise _in_config(tenant)
        return await self._issue(tenant, limits)

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """A store tenant's keys, oldest first."""
        _valid_name(tenant, "tenant")
        if tenant in self._config_tenants:
            raise _in_config(tenant)
        await self._store_tenant(tenant)
        try:
            return await self._store.list_keys(tenant)
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc

    async def revoke_key(self, tenant: str, key_id: str) -> KeyRecord:
        """Revoke a key; refused by this replica from the next call on."""
        key = await self._key(tenant, key_id)
        return await self._revoke(key)

    async def rotate_key(self, tenant: str, key_id: str) -> tuple[IssuedKey, KeyRecord]:
        """A new key with the old key's budgets, and the old key revoked. If the old key
        cannot be revoked, the new one is revoked instead (best effort) and the call
        fails: the old key is still the one that works."""
        old = await self._key(tenant, key_id)
        if old.revoked_at_unix_s is not None:
            raise KeyRevoked(
                f"key {key_id!r} of tenant {tenant!r} is revoked; create a new key instead",
                metadata={"tenant": tenant, "key_id": key_id},
            )
        new = await self._issue(tenant, old.budgets)
        try:
            revoked = await self._revoke(old)
        except StorageUnavailable:
            # If this fails too, no one holds the new key anyway: it was never returned.
            with contextlib.suppress(StorageUnavailable):
                await self._revoke(new.record)
            raise
        return new, revoked

    async def _issue(self, tenant: str, budgets: BudgetLimits) -> IssuedKey:
        api_key = generate_key()
        digest = key_digest(api_key)
        record = KeyRecord(
            id=secrets.token_hex(8),
            tenant=tenant,
            prefix=api_key[:PREFIX_LENGTH],
            sha256=digest,
            created_at_unix_s=self._wall(),
            budgets=budgets,
        )
        try:
            await self._store.add_key(record)
        except NotFound:
            raise _no_tenant(tenant) from None
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        if self._key_cache is not None:
            self._key_cache.forget_key(digest)  # in case the key was tried before it existed
        return IssuedKey(record, api_key)

    async def _revoke(self, key: KeyRecord) -> KeyRecord:
        try:
            return await self._store.revoke_key(key.id, self._wall())
        except NotFound:
            raise _no_key(key.tenant, key.id) from None
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        finally:
            # Whatever the store said: a revocation that may have committed is honoured here.
            if self._key_cache is not None:
                self._key_cache.forget_key(key.sha256)

    async def _key(self, tenant: str, key_id: str) -> KeyRecord:
        violations: list[FieldViolation] = []
        _check_name(tenant, "tenant", violations)
        if not _KEY_ID.fullmatch(key_id):
            violations.append(FieldViolation("key_id", "is not a key id"))
        if violations:
            raise invalid_request(violations)
        for key in await self.list_keys(tenant):
            if key.id == key_id:
                return key
        raise _no_key(tenant, key_id)

    async def _store_tenant(self, name: str) -> TenantRecord:
        try:
            record = await self._store.get_tenant(name)
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        if record is None:
            raise _no_tenant(name)
        return record

    def _routes(self, routes: Sequence[str], violations: list[FieldViolation]) -> tuple[str, ...]:
        if len(routes) > MAX_ROUTES:
            violations.append(FieldViolation("tenant.routes", f"at most {MAX_ROUTES} routes"))
            return ()
        for i, route in enumerate(routes):
            if route != "*" and route not in self._route_names:
                violations.append(
                    FieldViolation(
                        f"tenant.routes[{i}]", f"no route named {route[:128]!r} is configured"
                    )
                )
        return tuple(dict.fromkeys(routes))  # in order, once each


def _check_name(name: str, field: str, violations: list[FieldViolation]) -> None:
    if not name:
        violations.append(FieldViolation(field, "is required"))
    elif len(name) > MAX_TENANT_NAME or not _TENANT_NAME.fullmatch(name):
        violations.append(
            FieldViolation(
                field, f"letters, digits, '_', '.' or '-', at most {MAX_TENANT_NAME} characters"
            )
        )


def _valid_name(name: str, field: str) -> None:
    violations: list[FieldViolation] = []
    _check_name(name, field, violations)
    if violations:
        raise invalid_request(violations)


def _usd(value: str | None, field: str, violations: list[FieldViolation]) -> int | None:
    if value is None:
        return None
    if not _USD.fullmatch(value):
        violations.append(
            FieldViolation(field, "must be a non-negative decimal amount of USD, e.g. '12.50'")
        )
        return None
    amount = Decimal(value)
    if amount > MAX_USD:
        violations.append(FieldViolation(field, f"must be at most {MAX_USD} USD"))
        return None
    nano = amount * _NANO
    if nano != nano.to_integral_value():
        violations.append(FieldViolation(field, "has more than 9 decimal places (1e-9 USD)"))
        return None
    return int(nano)


def _count(
    value: int | None, field: str, low: int, high: int, violations: list[FieldViolation]
) -> int | None:
    if value is None:
        return None
    if not low <= value <= high:
        violations.append(FieldViolation(field, f"must be between {low} and {high}"))
        return None
    return value


_Limits = TypeVar("_Limits", BudgetLimits, RateLimits)


def _merged(current: _Limits, given: _Limits, name: str, paths: Collection[str]) -> _Limits:
    """``current`` with the fields of ``given`` that ``paths`` name (all for ``name``)."""
    if name in paths:
        return given
    fields = BUDGET_FIELDS if name == "budgets" else RATE_FIELDS
    changes = {
        _limit_attribute(f): getattr(given, _limit_attribute(f))
        for f in fields
        if f"{name}.{f}" in paths
    }
    return replace(current, **changes) if changes else current


def _limit_attribute(api_field: str) -> str:
    """The BudgetLimits/RateLimits attribute of an API field (USD amounts are nano)."""
    return f"{api_field}_nano" if api_field.startswith("usd_") else api_field


def _exists(name: str) -> TenantAlreadyExists:
    return TenantAlreadyExists(f"tenant {name!r} exists already", metadata={"tenant": name})


def _no_tenant(name: str) -> TenantNotFound:
    return TenantNotFound(f"no tenant {name!r}", metadata={"tenant": name})


def _no_key(tenant: str, key_id: str) -> KeyNotFound:
    return KeyNotFound(
        f"tenant {tenant!r} has no key {key_id!r}", metadata={"tenant": tenant, "key_id": key_id}
    )


def _in_config(name: str) -> TenantDefinedInConfig:
    return TenantDefinedInConfig(
        f"tenant {name!r} is defined in the config file: change it there",
        metadata={"tenant": name},
    )
