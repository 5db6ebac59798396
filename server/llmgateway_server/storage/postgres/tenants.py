"""``PostgresTenantStore``: tenants and API keys shared by every replica, in PostgreSQL.

Keys are stored as SHA-256 digests with a short visible prefix, never the key. Each
operation is one statement on an autocommit connection (touching keys is two, in one
transaction), bounded by a timeout; a connection fault is ``StoreUnavailable``.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.rows import TupleRow

from llmgateway_server.storage.base import (
    AlreadyExists,
    BudgetLimits,
    KeyRecord,
    NotFound,
    RateLimits,
    TenantRecord,
)
from llmgateway_server.storage.postgres.connection import Pool, open_pool, run_bounded

_TENANT_COLUMNS = (
    "name, routes, usd_per_day_nano, usd_per_month_nano, tokens_per_day, tokens_per_month, "
    "requests_per_minute, tokens_per_minute, created_at_unix_s"
)
_KEY_COLUMNS = (
    "id, tenant, prefix, sha256, created_at_unix_s, usd_per_day_nano, usd_per_month_nano, "
    "tokens_per_day, tokens_per_month, last_used_at_unix_s, revoked_at_unix_s"
)


def _budgets(b: BudgetLimits) -> tuple[int | None, ...]:
    return (b.usd_per_day_nano, b.usd_per_month_nano, b.tokens_per_day, b.tokens_per_month)


def _tenant_params(t: TenantRecord) -> tuple[object, ...]:
    return (
        t.name,
        list(t.routes),
        *_budgets(t.budgets),
        t.rate_limits.requests_per_minute,
        t.rate_limits.tokens_per_minute,
        t.created_at_unix_s,
    )


def _tenant(row: TupleRow) -> TenantRecord:
    return TenantRecord(
        name=row[0],
        routes=tuple(row[1]),
        budgets=BudgetLimits(*row[2:6]),
        rate_limits=RateLimits(requests_per_minute=row[6], tokens_per_minute=row[7]),
        created_at_unix_s=row[8],
    )


def _key(row: TupleRow) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        tenant=row[1],
        prefix=row[2],
        sha256=row[3],
        created_at_unix_s=row[4],
        budgets=BudgetLimits(*row[5:9]),
        last_used_at_unix_s=row[9],
        revoked_at_unix_s=row[10],
    )


class PostgresTenantStore:
    """``TenantStore`` in PostgreSQL (tables ``tenants`` and ``api_keys``)."""

    def __init__(self, pool: Pool, *, timeout_s: float) -> None:
        """Use ``await PostgresTenantStore.open(url)``."""
        self._pool = pool
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, url: str, *, timeout_s: float = 5.0, max_connections: int = 4
    ) -> PostgresTenantStore:
        """A store on the (migrated) database at ``url``; it connects in the background,
        and every operation waits at most ``timeout_s``."""
        pool = await open_pool(
            url, name="llmgateway-tenants", max_size=max_connections, timeout_s=timeout_s
        )
        return cls(pool, timeout_s=timeout_s)

    async def _fetch(self, what: str, sql: str, params: tuple[object, ...]) -> list[TupleRow]:
        async def fetch() -> list[TupleRow]:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                return await cur.fetchall() if cur.description is not None else []

        return await run_bounded(what, self._timeout_s, fetch)

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Add a tenant; ``AlreadyExists`` if the name is taken."""
        try:
            await self._fetch(
                "create tenant",
                f"INSERT INTO tenants ({_TENANT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                _tenant_params(tenant),
            )
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(f"tenant {tenant.name!r} exists already") from exc

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Replace a tenant's routes and limits (its creation time stays); ``NotFound``
        if there is none."""
        rows = await self._fetch(
            "update tenant",
            "UPDATE tenants SET routes = %s, usd_per_day_nano = %s, usd_per_month_nano = %s, "
            "tokens_per_day = %s, tokens_per_month = %s, requests_per_minute = %s, "
            "tokens_per_minute = %s WHERE name = %s RETURNING name",
            (*_tenant_params(tenant)[1:8], tenant.name),
        )
        if not rows:
            raise NotFound(f"no tenant {tenant.name!r}")

    async def get_tenant(self, name: str) -> TenantRecord | None:
        """One tenant, or None."""
        rows = await self._fetch(
            "get tenant", f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = %s", (name,)
        )
        return _tenant(rows[0]) if rows else None

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by name (code point order, whatever the database's collation)."""
        rows = await self._fetch(
            "list tenants", f'SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name COLLATE "C"', ()
        )
        return [_tenant(row) for row in rows]

    async def add_key(self, key: KeyRecord) -> None:
        """Store a new key: ``NotFound`` if its tenant does not exist, ``AlreadyExists``
        if its id or digest is taken."""
        try:
            await self._fetch(
                "add key",
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    key.id,
                    key.tenant,
                    key.prefix,
                    key.sha256,
                    key.created_at_unix_s,
                    *_budgets(key.budgets),
                    key.last_used_at_unix_s,
                    key.revoked_at_unix_s,
                ),
            )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise NotFound(f"no tenant {key.tenant!r}") from exc
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(f"a key with id {key.id!r} or its digest exists already") from exc

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """A tenant's keys, revoked ones included, oldest first ([] for no such tenant)."""
        rows = await self._fetch(
            "list keys",
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = %s "
            'ORDER BY created_at_unix_s, id COLLATE "C"',
            (tenant,),
        )
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str, now_unix_s: float) -> KeyRecord:
        """Mark a key revoked at ``now_unix_s``; revoking it again keeps the first time.
        ``NotFound`` if there is no such key."""
        rows = await self._fetch(
            "revoke key",
            "UPDATE api_keys SET revoked_at_unix_s = coalesce(revoked_at_unix_s, %s) "
            f"WHERE id = %s RETURNING {_KEY_COLUMNS}",
            (now_unix_s, key_id),
        )
        if not rows:
            raise NotFound(f"no key {key_id!r}")
        return _key(rows[0])

    async def key_by_digest(self, sha256: str) -> KeyRecord | None:
        """The key with this digest, revoked or not."""
        rows = await self._fetch(
            "look up key", f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE sha256 = %s", (sha256,)
        )
        return _key(rows[0]) if rows else None

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        """Record when keys were last used; a time never moves back (replicas report in
        any order). Unknown ids are ignored."""
        if not last_used:
            return
        ids = sorted(last_used)

        async def touch() -> None:
            async with self._pool.connection() as conn, conn.transaction():
                # Lock the rows in one order first: two replicas touching the same keys
                # would otherwise deadlock, each holding a row the other waits for.
                await conn.execute(
                    "SELECT 1 FROM api_keys WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)
                )
                await conn.execute(
                    "UPDATE api_keys AS k "
                    "SET last_used_at_unix_s = greatest(k.last_used_at_unix_s, t.at) "
                    "FROM unnest(%s::text[], %s::float8[]) AS t(id, at) WHERE k.id = t.id",
                    (ids, [last_used[i] for i in ids]),
                )

        await run_bounded("touch keys", self._timeout_s, touch)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._pool.close()
