"""API keys to callers: who is calling, the routes they may use, the limits that apply.

A key is looked up by its SHA-256 digest, in this order: the config's admin keys, the
config's tenant keys (both in memory: no I/O per call), then the store's keys through
``StoreKeyCache`` (key_cache.py), which keeps each answer a short, documented time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from llmgateway_server.errors import AuthenticationFailed, ConfigError, ModelNotAllowed
from llmgateway_server.storage.base import BudgetLimits, RateLimits, Scope

# RFC 7235: the scheme is case-insensitive; one space separates it from the token.
_SCHEME = "bearer"
# Printable ASCII, no space: a key with anything else (a trailing space or NBSP, a tab, a
# control character, a non-ASCII byte) is a different key, never a spelling of a known one.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DUMMY_DIGEST = "0" * 64

# The only messages an authentication failure carries: none of them echoes the value sent.
MISSING = "missing authorization: Bearer <api key>"
MALFORMED = "authorization must be 'Bearer <api key>', the key printable ASCII without spaces"
UNKNOWN = "unknown API key"

_UNLIMITED = BudgetLimits()
_NO_RATE_LIMITS = RateLimits()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as the gateway needs it; the interceptor puts one in the request
    context (``transport.context.current_caller``) for every authenticated call.

    ``key_id`` is the store key's id ("" for a config key and for anonymous callers);
    ``key_prefix`` what usage records show of the key: a store key's visible prefix, or
    ``sha256:`` and the first 8 hex digits of a config key's digest (never key
    material), "" for anonymous callers. ``routes`` None means every route. An admin
    (``admin``, tenant "") may call AdminService and read every tenant's usage; it is
    not a tenant and makes no gateway calls.
    """

    tenant: str
    key_id: str = ""
    key_prefix: str = ""
    tenant_budgets: BudgetLimits = _UNLIMITED
    key_budgets: BudgetLimits = _UNLIMITED
    rate_limits: RateLimits = _NO_RATE_LIMITS
    routes: frozenset[str] | None = None
    admin: bool = False

    def may_use(self, route: str) -> bool:
        """Whether the caller may use ``route``."""
        return self.routes is None or route in self.routes

    @property
    def budget_scopes(self) -> tuple[Scope, ...]:
        """What this caller's calls count against: the tenant's budgets and the key's,
        each only when it has a limit."""
        scopes: list[Scope] = []
        if not self.tenant_budgets.unlimited:
            scopes.append(Scope("tenant", self.tenant, self.tenant_budgets))
        if self.key_id and not self.key_budgets.unlimited:
            scopes.append(Scope("key", self.key_id, self.key_budgets))
        return tuple(scopes)


ADMIN = Caller(tenant="", key_prefix="admin", admin=True)
"""The caller of every admin key."""


def route_set(routes: Iterable[str]) -> frozenset[str] | None:
    """A tenant's allowed routes as ``Caller.routes`` holds them ("*": None, all)."""
    allowed = frozenset(routes)
    return None if "*" in allowed else allowed


def config_key_prefix(digest: str) -> str:
    """What usage records show of a config key: part of its digest, never of the key."""
    return f"sha256:{digest[:8]}"


class StoreKeys(Protocol):
    """The store's keys, looked up by digest (``key_cache.StoreKeyCache``)."""

    async def caller(self, digest: str) -> Caller | None:
        """The caller of an active store key, None for an unknown or revoked one;
        errors.StorageUnavailable when the store cannot answer."""
        ...

    def routes_of(self, tenant: str) -> frozenset[str] | None:
        """The routes a store tenant's last key lookup found (None: every route; empty
        for a tenant not looked up)."""
        ...


class Authenticator:
    """Derives the caller from ``authorization: Bearer <key>``.

    The value is parsed strictly and the key compared exactly: ``Bearer`` (any case), one
    space, then the key as sent, which must be printable ASCII (0x21-0x7e). Nothing is
    trimmed, so a key with a byte added is unknown, not the key's tenant. Keys are compared
    by SHA-256 digest, so the config and memory hold digests only.

    Config keys (tenants' and admins') are answered from memory; any other key is asked
    of ``store_keys`` when there is a store. Config tenants' limits come from
    ``budgets_by_tenant`` and ``rate_limits_by_tenant``; store tenants' from the store.
    """

    def __init__(
        self,
        tenant_by_digest: Mapping[str, str],
        routes_by_tenant: Mapping[str, Iterable[str]],
        anonymous_tenant: str | None,
        *,
        budgets_by_tenant: Mapping[str, BudgetLimits] | None = None,
        rate_limits_by_tenant: Mapping[str, RateLimits] | None = None,
        admin_digests: Iterable[str] = (),
        store_keys: StoreKeys | None = None,
    ) -> None:
        budgets = budgets_by_tenant or {}
        rates = rate_limits_by_tenant or {}
        self._routes: dict[str, frozenset[str] | None] = {
            tenant: route_set(routes) for tenant, routes in routes_by_tenant.items()
        }

        def config_caller(tenant: str, prefix: str) -> Caller:
            return Caller(
                tenant=tenant,
                key_prefix=prefix,
                tenant_budgets=budgets.get(tenant, _UNLIMITED),
                rate_limits=rates.get(tenant, _NO_RATE_LIMITS),
                routes=self._routes.get(tenant),
            )

        # One Caller per config key, built once: authenticating one costs a dict lookup.
        self._config_callers: dict[str, Caller] = {
            digest: config_caller(tenant, config_key_prefix(digest))
            for digest, tenant in tenant_by_digest.items()
        }
        for digest in admin_digests:
            if digest in self._config_callers:
                raise ConfigError("auth.admin: an admin key is also a tenant's key")
            self._config_callers[digest] = ADMIN
        self._anonymous: Caller | None = None
        if anonymous_tenant is not None:
            self._routes.setdefault(anonymous_tenant, None)
            self._anonymous = config_caller(anonymous_tenant, "")
        self._store_keys = store_keys

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an ``authorization`` metadata value, or AuthenticationFailed
        (errors.StorageUnavailable when a key must be looked up and the store is down).

        No value (or an empty one) is the anonymous tenant when one is configured. A
        metadata value that arrived as bytes is passed decoded as latin-1 (one character
        per byte), so any byte outside printable ASCII is refused here.
        """
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise AuthenticationFailed(MISSING)
        scheme, space, token = authorization.partition(" ")
        if not (space and scheme.lower() == _SCHEME and _TOKEN.fullmatch(token)):
            raise AuthenticationFailed(MALFORMED)
        digest = hashlib.sha256(token.encode("ascii")).hexdigest()
        caller = self._config_callers.get(digest)
        if caller is not None:
            return caller
        if self._store_keys is not None:
            caller = await self._store_keys.caller(digest)
            if caller is not None:
                return caller
        # Constant-time compare against a dummy so unknown keys take as long as known ones.
        hmac.compare_digest(digest, _DUMMY_DIGEST)
        raise AuthenticationFailed(UNKNOWN)

    def check_route(self, tenant: str, route: str) -> None:
        """Raise ModelNotAllowed unless ``tenant`` may use ``route``."""
        if not self.may_use(tenant, route):
            raise ModelNotAllowed(
                f"tenant {tenant!r} may not use model {route!r}",
                metadata={"model": route, "tenant": tenant},
            )

    def may_use(self, tenant: str, route: str) -> bool:
        """Whether ``tenant`` may use ``route``: a config tenant by the config, a store
        tenant by the routes its key's lookup last found (``Caller.may_use`` answers
        the same from the caller itself)."""
        if tenant in self._routes:
            allowed = self._routes[tenant]
        elif self._store_keys is not None:
            allowed = self._store_keys.routes_of(tenant)
        else:
            return False
        return allowed is None or route in allowed
