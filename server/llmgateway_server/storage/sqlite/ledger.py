"""The usage ledger in SQLite: one row per request_id, its tags and attempts, and reports.

``write`` returns once the row is committed (group commit: concurrent writes share a
transaction, see db.py); the first record of a request_id stands and later ones are
ignored. ``usage`` sums calls, tokens and cost grouped by tenant, key prefix, route,
model, provider, UTC day or the value of one tag.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from operator import attrgetter

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
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "image_input_tokens",
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
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "image_input_tokens",
)
# An attempt's values in _ATTEMPT_COLUMNS order (columns are named as its fields).
_attempt_values = attrgetter(*_ATTEMPT_COLUMNS)
_INSERT_ATTEMPT = (
    f"INSERT INTO usage_attempts (call_id, seq, {', '.join(_ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(_ATTEMPT_COLUMNS) + 2))})"
)

# What a report sums, in UsageRow's order after ``calls`` (named as its fields).
_SUMMED = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_nano_usd",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "image_input_tokens",
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
            [(call_id, seq, *_attempt_values(a)) for seq, a in enumerate(record.attempts)],
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
        f"COUNT(*), {', '.join(f'SUM(c.{name})' for name in _SUMMED)} "
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
                **{name: int(value) for name, value in zip(_SUMMED, sums, strict=True)},
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
        _attempt(dict(zip(_ATTEMPT_COLUMNS, a, strict=True)))
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


def _attempt(values: dict[str, object]) -> AttemptRecord:
    values["usage_estimated"] = bool(values["usage_estimated"])
    return AttemptRecord(**values)  # type: ignore[arg-type]
