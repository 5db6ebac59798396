"""In-memory TenantStore and UsageReader, implementing storage/base.py's protocols exactly,
for tests of what sits on top of them (AdminService, UsageService, key caching).

``down = True`` makes every method raise StoreUnavailable, as a store that cannot be
reached does; ``lookups`` counts key_by_digest calls (how often the cache asked).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from llmgateway_server.storage.base import (
    AlreadyExists,
    KeyRecord,
    NotFound,
    StoreUnavailable,
    TenantRecord,
    UsageQuery,
    UsageRecord,
    UsageRow,
)


@dataclass
class MemoryTenantStore:
    """TenantStore in dicts."""

    tenants: dict[str, TenantRecord] = field(default_factory=dict)
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    down: bool = False
    lookups: int = 0

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("memory store is down")

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Add a tenant; AlreadyExists if the name is taken."""
        self._check()
        if tenant.name in self.tenants:
            raise AlreadyExists(tenant.name)
        self.tenants[tenant.name] = tenant

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Replace a tenant's routes and limits; NotFound if there is none."""
        self._check()
        current = self.tenants.get(tenant.name)
        if current is None:
            raise NotFound(tenant.name)
        self.tenants[tenant.name] = replace(tenant, created_at_unix_s=current.created_at_unix_s)

    async def get_tenant(self, name: str) -> TenantRecord | None:
        """One tenant."""
        self._check()
        return self.tenants.get(name)

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by name."""
        self._check()
        return [self.tenants[n] for n in sorted(self.tenants)]

    async def add_key(self, key: KeyRecord) -> None:
        """Store a new key (NotFound if its tenant does not exist)."""
        self._check()
        if key.tenant not in self.tenants:
            raise NotFound(key.tenant)
        if key.id in self.keys:
            raise AlreadyExists(key.id)
        self.keys[key.id] = key

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """A tenant's keys, revoked ones included, oldest first."""
        self._check()
        return sorted(
            (k for k in self.keys.values() if k.tenant == tenant),
            key=lambda k: k.created_at_unix_s,
        )

    async def revoke_key(self, key_id: str, now_unix_s: float) -> KeyRecord:
        """Mark a key revoked (idempotent); NotFound if there is no such key."""
        self._check()
        key = self.keys.get(key_id)
        if key is None:
            raise NotFound(key_id)
        if key.revoked_at_unix_s is None:
            key = self.keys[key_id] = replace(key, revoked_at_unix_s=now_unix_s)
        return key

    async def key_by_digest(self, sha256: str) -> KeyRecord | None:
        """The key with this digest, revoked or not."""
        self._check()
        self.lookups += 1
        return next((k for k in self.keys.values() if k.sha256 == sha256), None)

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        """Record when keys (by id) were last used."""
        self._check()
        for key_id, at in last_used.items():
            key = self.keys.get(key_id)
            if key is not None and (key.last_used_at_unix_s or 0) < at:
                self.keys[key_id] = replace(key, last_used_at_unix_s=at)

    async def aclose(self) -> None:
        """Nothing to close."""


@dataclass
class MemoryUsageReader:
    """UsageReader over the records ``records`` returns (e.g. a MemoryLedger's)."""

    records: Callable[[], Sequence[UsageRecord]]
    down: bool = False

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Rows ordered by group values."""
        if self.down:
            raise StoreUnavailable("memory reader is down")
        sums: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        for r in self.records():
            if not query.start_unix_s <= r.finished_at_unix_s < query.end_unix_s:
                continue
            if query.tenant is not None and r.tenant != query.tenant:
                continue
            key = tuple(_value(r, g, query.tag_name) for g in query.group_by)
            total = sums[key]
            total[0] += 1
            total[1] += r.input_tokens
            total[2] += r.output_tokens
            total[3] += r.cached_input_tokens
            total[4] += r.cost_nano_usd
        return [
            UsageRow(dict(zip(query.group_by, key, strict=True)), *sums[key])
            for key in sorted(sums)
        ]


def _value(record: UsageRecord, group: str, tag_name: str) -> str:
    if group == "tenant":
        return record.tenant
    if group == "key":
        return record.key_prefix
    if group == "route":
        return record.route
    if group == "model":
        return record.upstream_model
    if group == "provider":
        return record.provider
    if group == "day":
        return datetime.fromtimestamp(record.finished_at_unix_s, tz=UTC).strftime("%Y-%m-%d")
    return record.tags.get(tag_name, "")
