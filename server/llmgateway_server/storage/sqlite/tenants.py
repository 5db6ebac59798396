"""Tenants and their API keys in SQLite. Keys are stored as SHA-256 digests, never the key.

Writes go through the writer thread, reads (``get_tenant``, ``list_*``,
``key_by_digest``) run on the read threads; every process sharing the file sees a change
as soon as it is committed.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import orjson

from llmgateway_server.storage.base import (
    AlreadyExists,
    BudgetLimits,
    KeyRecord,
    NotFound,
    RateLimits,
    TenantRecord,
)
from llmgateway_server.storage.sqlite.db import SqliteDatabase

# A hex SHA-256 digest: anything else handed to the store may be a key in plain text.
_DIGEST = re.compile(r"[0-9a-f]{64}")

_TENANT_COLUMNS = (
    "name, routes, usd_per_day_nano, usd_per_month_nano, tokens_per_day, tokens_per_month, "
    "requests_per_minute, tokens_per_minute, created_at_unix_s"
)
_KEY_COLUMNS = (
    "id, tenant, prefix, sha256, created_at_unix_s, usd_per_day_nano, usd_per_month_nano, "
    "tokens_per_day, tokens_per_month, last_used_at_unix_s, revoked_at_unix_s"
)


class SqliteTenantStore:
    """TenantStore on the node's SQLite file."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._closed = False
        db.retain()

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Add a tenant; AlreadyExists if the name is taken."""
        await self._db.write(partial(_create_tenant, tenant))

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Replace a tenant's routes and limits (its creation time stays); NotFound if
        there is none."""
        await self._db.write(partial(_update_tenant, tenant))

    async def get_tenant(self, name: str) -> TenantRecord | None:
        """One tenant, or None."""
        return await self._db.read(partial(_get_tenant, name))

    async def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by name."""
        return await self._db.read(_list_tenants)

    async def add_key(self, key: KeyRecord) -> None:
        """Store a new key; NotFound if its tenant does not exist, AlreadyExists if its id
        or digest is taken, ValueError if ``sha256`` is not a hex SHA-256 digest."""
        if not _DIGEST.fullmatch(key.sha256):
            raise ValueError("a key is stored as its lower-case hex SHA-256 digest only")
        await self._db.write(partial(_add_key, key))

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        """A tenant's keys, revoked ones included, oldest first."""
        return await self._db.read(partial(_list_keys, tenant))

    async def revoke_key(self, key_id: str, now_unix_s: float) -> KeyRecord:
        """Mark a key revoked at ``now_unix_s`` (a key revoked already keeps its first
        revocation time); NotFound if there is no such key."""
        return await self._db.write(partial(_revoke_key, key_id, now_unix_s))

    async def key_by_digest(self, sha256: str) -> KeyRecord | None:
        """The key with this digest, revoked or not."""
        return await self._db.read(partial(_key_by_digest, sha256))

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        """Record when keys were last used (a time never moves back; unknown ids are
        ignored: a key may have been deleted meanwhile)."""
        if last_used:
            await self._db.write(partial(_touch_keys, dict(last_used)))

    async def aclose(self) -> None:
        """Let go of the database (closed by its last user)."""
        if not self._closed:
            self._closed = True
            await self._db.release()


def _limits_row(b: BudgetLimits) -> tuple[int | None, ...]:
    return (b.usd_per_day_nano, b.usd_per_month_nano, b.tokens_per_day, b.tokens_per_month)


def _tenant(row: Sequence[Any]) -> TenantRecord:
    return TenantRecord(
        name=row[0],
        routes=tuple(orjson.loads(row[1])),
        budgets=BudgetLimits(*row[2:6]),
        rate_limits=RateLimits(requests_per_minute=row[6], tokens_per_minute=row[7]),
        created_at_unix_s=row[8],
    )


def _key(row: Sequence[Any]) -> KeyRecord:
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


def _create_tenant(t: TenantRecord, conn: sqlite3.Connection) -> None:
    try:
        conn.execute(
            f"INSERT INTO tenants ({_TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.name,
                orjson.dumps(list(t.routes)).decode(),
                *_limits_row(t.budgets),
                t.rate_limits.requests_per_minute,
                t.rate_limits.tokens_per_minute,
                t.created_at_unix_s,
            ),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"tenant {t.name!r} exists already") from None


def _update_tenant(t: TenantRecord, conn: sqlite3.Connection) -> None:
    cursor = conn.execute(
        "UPDATE tenants SET routes = ?, usd_per_day_nano = ?, usd_per_month_nano = ?, "
        "tokens_per_day = ?, tokens_per_month = ?, requests_per_minute = ?, "
        "tokens_per_minute = ? WHERE name = ?",
        (
            orjson.dumps(list(t.routes)).decode(),
            *_limits_row(t.budgets),
            t.rate_limits.requests_per_minute,
            t.rate_limits.tokens_per_minute,
            t.name,
        ),
    )
    if cursor.rowcount == 0:
        raise NotFound(f"no tenant {t.name!r}")


def _get_tenant(name: str, conn: sqlite3.Connection) -> TenantRecord | None:
    row = conn.execute(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?", (name,)).fetchone()
    return None if row is None else _tenant(row)


def _list_tenants(conn: sqlite3.Connection) -> list[TenantRecord]:
    return [
        _tenant(r) for r in conn.execute(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name")
    ]


def _add_key(k: KeyRecord, conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (k.tenant,)).fetchone() is None:
        raise NotFound(f"no tenant {k.tenant!r}")
    try:
        conn.execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                k.id,
                k.tenant,
                k.prefix,
                k.sha256,
                k.created_at_unix_s,
                *_limits_row(k.budgets),
                k.last_used_at_unix_s,
                k.revoked_at_unix_s,
            ),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"a key with id {k.id!r} or the same digest exists already") from None


def _list_keys(tenant: str, conn: sqlite3.Connection) -> list[KeyRecord]:
    return [
        _key(r)
        for r in conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at_unix_s, id",
            (tenant,),
        )
    ]


def _revoke_key(key_id: str, now: float, conn: sqlite3.Connection) -> KeyRecord:
    conn.execute(
        "UPDATE api_keys SET revoked_at_unix_s = COALESCE(revoked_at_unix_s, ?) WHERE id = ?",
        (now, key_id),
    )
    row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"no key {key_id!r}")
    return _key(row)


def _key_by_digest(sha256: str, conn: sqlite3.Connection) -> KeyRecord | None:
    row = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE sha256 = ?", (sha256,)
    ).fetchone()
    return None if row is None else _key(row)


def _touch_keys(last_used: dict[str, float], conn: sqlite3.Connection) -> None:
    conn.executemany(
        "UPDATE api_keys SET last_used_at_unix_s = MAX(COALESCE(last_used_at_unix_s, ?), ?) "
        "WHERE id = ?",
        [(t, t, key_id) for key_id, t in last_used.items()],
    )
