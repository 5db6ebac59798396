"""The usage ledger in SQLite: one row per request_id, its tags and attempts, and reports.

``write`` returns once the row is committed (group commit: concurrent writes share a
transaction, see db.py); the first record of a request_id stands and later ones are
ignored. ``usage`` sums calls, tokens and cost grouped by tenant, key prefix, route,
model, provider, UTC day or the value of one tag.
"""

from __future__ import annotations

import sqlite3
from functools import partial

import orjson

from llmgateway_server.storage.base import (
    AttemptRecord,
    GroupBy,
    UsageQuery,
    UsageRecord,
    UsageRow,
)
from llmgateway_server.storage.sqlite.db import SqliteDatabase

_CALL_COLUMNS = (
    "request_id",
    "tenant",
    "key_prefix",
    "key_id",
    "route",
    "provider",
    "upstream_model",
    "outcome",
    "finished_at_unix_s",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_nano_usd",
    "price_version",
    "usage_estimated",
    "streaming",
    "error_reason",
    "finish_reason",
    "attempt_count",
    "trimmed_message_count",
    "latency_s",
    "time_to_first_token_s",
    "guardrails",  # JSON
)
_INSERT_CALL = (
    f"INSERT INTO usage_calls ({', '.join(_CALL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_CALL_COLUMNS))}) "
    # Only a second record of the same request_id is ignored; any other constraint
    # failure (a NULL where none may be) still raises.
    "ON CONFLICT (request_id) DO NOTHING"
)
_ATTEMPT_COLUMNS = (
    "provider",
    "upstream_model",
    "outcome",
    "latency_s",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_nano_usd",
    "usage_estimated",
)
_INSERT_ATTEMPT = (
    f"INSERT INTO usage_attempts (call_id, seq, {', '.join(_ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(_ATTEMPT_COLUMNS) + 2))})"
)

# What each group_by name groups on.
_GROUP_EXPRESSIONS: dict[GroupBy, str] = {
    "tenant": "c.tenant",
    "key": "c.key_prefix",
    "key_id": "c.key_id",
    "route": "c.route",
    "model": "c.upstream_model",
    "provider": "c.provider",
    "day": "date(c.finished_at_unix_s, 'unixepoch')",  # UTC
    "tag": "COALESCE(t.value, '')",
}


class SqliteLedger:
    """UsageLedger and UsageReader on the node's SQLite file."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._closed = False
        db.retain()

    async def write(self, record: UsageRecord) -> None:
        """Commit the record (and its tags and attempts) unless its request_id has one
        already; returns when committed. StoreUnavailable if the file cannot be written."""
        await self._db.write(partial(_insert, record), durable=True, quick=True)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Sums over ``[start, end)`` grouped as asked, ordered by the group values."""
        return await self._db.read(partial(_usage, query))

    async def get(self, request_id: str) -> UsageRecord | None:
        """The record of one call, as written (None if there is none)."""
        return await self._db.read(partial(_get, request_id))

    async def aclose(self) -> None:
        """Let go of the database (closed, queued writes committed, by its last user)."""
        if not self._closed:
            self._closed = True
            await self._db.release()


def _insert(record: UsageRecord, conn: sqlite3.Connection) -> None:
    # Columns are named as the record's fields (booleans are stored as 0/1).
    values = [getattr(record, name) for name in _CALL_COLUMNS]
    values[-1] = orjson.dumps(dict(record.guardrails)).decode()
    cursor = conn.execute(_INSERT_CALL, values)
    if cursor.rowcount != 1:
        return  # the request_id has its record already: the first one stands
    call_id = cursor.lastrowid
    if record.tags:
        conn.executemany(
            "INSERT INTO usage_tags (call_id, name, value) VALUES (?, ?, ?)",
            [(call_id, name, value) for name, value in record.tags.items()],
        )
    if record.attempts:
        conn.executemany(
            _INSERT_ATTEMPT,
            [
                (
                    call_id,
                    seq,
                    a.provider,
                    a.upstream_model,
                    a.outcome,
                    a.latency_s,
                    a.input_tokens,
                    a.output_tokens,
                    a.cached_input_tokens,
                    a.cost_nano_usd,
                    a.usage_estimated,
                )
                for seq, a in enumerate(record.attempts)
            ],
        )


def _usage(query: UsageQuery, conn: sqlite3.Connection) -> list[UsageRow]:
    names = tuple(dict.fromkeys(query.group_by))  # each once, in the order asked
    if "tag" in names and not query.tag_name:
        raise ValueError("grouping by tag needs the tag's name (tag_name)")
    params: list[object] = []
    join = ""
    if "tag" in names:
        join = "LEFT JOIN usage_tags t ON t.call_id = c.id AND t.name = ?"
        params.append(query.tag_name)
    where = "c.finished_at_unix_s >= ? AND c.finished_at_unix_s < ?"
    params += [query.start_unix_s, query.end_unix_s]
    if query.tenant is not None:
        where += " AND c.tenant = ?"
        params.append(query.tenant)
    groups = [_GROUP_EXPRESSIONS[name] for name in names]
    positions = ", ".join(str(i + 1) for i in range(len(groups)))
    sql = (
        f"SELECT {''.join(g + ', ' for g in groups)}"
        "COUNT(*), SUM(c.input_tokens), SUM(c.output_tokens), "
        "SUM(c.cached_input_tokens), SUM(c.cost_nano_usd) "
        f"FROM usage_calls c {join} WHERE {where}"
    )
    if groups:
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    rows = []
    for row in conn.execute(sql, params):
        calls = int(row[len(groups)])
        if calls == 0:
            continue  # no GROUP BY and nothing in range: one all-NULL row
        sums = row[len(groups) + 1 :]
        rows.append(
            UsageRow(
                group={name: str(value) for name, value in zip(names, row, strict=False)},
                calls=calls,
                input_tokens=int(sums[0]),
                output_tokens=int(sums[1]),
                cached_input_tokens=int(sums[2]),
                cost_nano_usd=int(sums[3]),
            )
        )
    return rows


def _get(request_id: str, conn: sqlite3.Connection) -> UsageRecord | None:
    row = conn.execute(
        f"SELECT id, {', '.join(_CALL_COLUMNS)} FROM usage_calls WHERE request_id = ?",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    call_id = row[0]
    values = dict(zip(_CALL_COLUMNS, row[1:], strict=True))
    tags = dict(
        conn.execute(
            "SELECT name, value FROM usage_tags WHERE call_id = ? ORDER BY name", (call_id,)
        ).fetchall()
    )
    attempts = tuple(
        AttemptRecord(
            provider=a[0],
            upstream_model=a[1],
            outcome=a[2],
            latency_s=a[3],
            input_tokens=a[4],
            output_tokens=a[5],
            cached_input_tokens=a[6],
            cost_nano_usd=a[7],
            usage_estimated=bool(a[8]),
        )
        for a in conn.execute(
            f"SELECT {', '.join(_ATTEMPT_COLUMNS)} FROM usage_attempts "
            "WHERE call_id = ? ORDER BY seq",
            (call_id,),
        )
    )
    for flag in ("usage_estimated", "streaming"):
        values[flag] = bool(values[flag])
    values["guardrails"] = orjson.loads(values["guardrails"])
    return UsageRecord(**values, tags=tags, attempts=attempts)
