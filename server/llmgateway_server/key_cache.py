"""The store's API keys as callers, cached briefly, with their last use recorded in batches.

How long a change takes to be seen (README, "Tenants, keys and usage"):

- Each answer of the store (a key's caller, or "no such active key") is kept at most
  ``ttl_s`` (``KEY_CACHE_TTL_S``, 2 seconds). A key revoked on another replica is
  refused by this one within that time: the bound the README documents.
- The replica that revokes a key (or changes a tenant) drops its entries at once
  (``forget_key``, ``forget_tenant``), including the answer of a lookup still in
  flight, so it refuses the key from the next call on.
- Concurrent calls with the same uncached key share one store lookup.
- A store that cannot answer fails the call (errors.StorageUnavailable, UNAVAILABLE):
  no key is admitted on a stale answer.

Last use is recorded in memory per call (one dict assignment) and written to the store
every ``touch_interval_s`` seconds (``TOUCH_INTERVAL_S``, 10) and at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmgateway_server.auth import Caller, route_set
from llmgateway_server.errors import StorageUnavailable
from llmgateway_server.storage.base import StoreUnavailable, TenantStore

log = logging.getLogger("llmgateway.auth")

KEY_CACHE_TTL_S = 2.0
TOUCH_INTERVAL_S = 10.0
# Unknown keys are cached too (so a caller retrying a bad key costs no lookups), which an
# attacker sending random keys could grow without end: the oldest entries go first.
MAX_ENTRIES = 50_000

STORE_DOWN = "the tenant store is unavailable; store-defined API keys cannot be checked"


@dataclass(frozen=True, slots=True)
class _Entry:
    expires_at: float
    caller: Caller | None


class StoreKeyCache:
    """Callers of the store's keys by key digest (``auth.StoreKeys``)."""

    def __init__(
        self,
        store: TenantStore,
        *,
        ttl_s: float = KEY_CACHE_TTL_S,
        touch_interval_s: float = TOUCH_INTERVAL_S,
        max_entries: int = MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._touch_interval_s = touch_interval_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._wall = wall_clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Caller | None]] = {}
        # Bumped by every forget: a lookup that started before one does not cache its answer.
        self._generation = 0
        self._routes: dict[str, frozenset[str] | None] = {}
        self._last_used: dict[str, float] = {}
        self._toucher: asyncio.Task[None] | None = None
        self._closed = False

    async def caller(self, digest: str) -> Caller | None:
        """The caller of the active store key with this digest, or None."""
        entry = self._entries.get(digest)
        if entry is not None and entry.expires_at > self._monotonic():
            caller = entry.caller
        else:
            caller = await self._lookup(digest)
        if caller is not None:
            self._used(caller.key_id)
        return caller

    def routes_of(self, tenant: str) -> frozenset[str] | None:
        """The routes the tenant's last key lookup found (empty: not looked up)."""
        return self._routes.get(tenant, frozenset())

    def forget_key(self, digest: str) -> None:
        """Drop what is known of a key (it was revoked or created here)."""
        self._generation += 1
        self._entries.pop(digest, None)
        self._inflight.pop(digest, None)

    def forget_tenant(self, tenant: str) -> None:
        """Drop what is known of a tenant's keys (its routes or limits changed here)."""
        self._generation += 1
        stale = [d for d, e in self._entries.items() if e.caller and e.caller.tenant == tenant]
        for digest in stale:
            del self._entries[digest]
        self._inflight.clear()

    async def aclose(self) -> None:
        """Stop the last-use writer and write what it still holds."""
        self._closed = True
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
            self._toucher = None
        await self.flush_last_used()

    async def flush_last_used(self) -> None:
        """Write the last-use times gathered since the previous write."""
        if not self._last_used:
            return
        batch, self._last_used = self._last_used, {}
        try:
            await self._store.touch_keys(batch)
        except StoreUnavailable:
            # Kept for the next write; a newer use recorded meanwhile wins.
            for key_id, at in batch.items():
                self._last_used.setdefault(key_id, at)
            log.warning("could not record API keys' last use: the tenant store is unavailable")

    def _used(self, key_id: str) -> None:
        self._last_used[key_id] = self._wall()
        if self._toucher is None and not self._closed:
            self._toucher = asyncio.get_running_loop().create_task(self._touch_loop())

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self._touch_interval_s)
            await self.flush_last_used()

    async def _lookup(self, digest: str) -> Caller | None:
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(digest, self._generation))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda done: self._settled(digest, done))
        # Shielded: one caller going away does not cancel the lookup the others wait for.
        return await asyncio.shield(pending)

    def _settled(self, digest: str, done: asyncio.Future[Caller | None]) -> None:
        if self._inflight.get(digest) is done:
            del self._inflight[digest]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away

    async def _fetch(self, digest: str, generation: int) -> Caller | None:
        try:
            key = await self._store.key_by_digest(digest)
            tenant = None
            if key is not None and key.revoked_at_unix_s is None:
                tenant = await self._store.get_tenant(key.tenant)
        except StoreUnavailable as exc:
            raise StorageUnavailable(STORE_DOWN) from exc
        caller: Caller | None = None
        if key is not None and tenant is not None:
            routes = route_set(tenant.routes)
            caller = Caller(
                tenant=tenant.name,
                key_id=key.id,
                key_prefix=key.prefix,
                tenant_budgets=tenant.budgets,
                key_budgets=key.budgets,
                rate_limits=tenant.rate_limits,
                routes=routes,
            )
        if generation == self._generation:
            if caller is not None:
                self._routes[caller.tenant] = caller.routes
            self._store_entry(digest, caller)
        return caller

    def _store_entry(self, digest: str, caller: Caller | None) -> None:
        self._entries.pop(digest, None)  # re-inserted last: the dict's order is age
        self._entries[digest] = _Entry(self._monotonic() + self._ttl_s, caller)
        if len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
