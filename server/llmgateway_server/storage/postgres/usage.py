"""Usage reports from the PostgreSQL ledger, counting the rows still in the local outbox.

The grouping runs in PostgreSQL (``GROUP BY`` over the range). Records this replica has
not delivered yet are added from its outbox, each once: the outbox is read first, then in
one snapshot PostgreSQL's groups and which of those records it already holds; a record is
counted from the outbox only if PostgreSQL does not hold its request_id. Other replicas'
outboxes are theirs: a report sees their rows once they are delivered.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from operator import attrgetter

from psycopg.rows import TupleRow

from llmgateway_server.storage.base import (
    AttemptRecord,
    GroupBy,
    UsageQuery,
    UsageRecord,
    UsageRow,
)
from llmgateway_server.storage.postgres.connection import Pool, open_pool, run_bounded
from llmgateway_server.storage.postgres.delivery import ATTEMPT_COLUMNS, CALL_COLUMNS
from llmgateway_server.storage.postgres.outbox import Outbox

# What each group_by name groups by; ``day`` is the UTC day number, named in Python.
_GROUP_SQL: dict[GroupBy, str] = {
    "tenant": "tenant",
    "key": "key_prefix",
    "key_id": "key_id",
    "route": "route",
    "model": "upstream_model",
    "provider": "provider",
    "day": "floor(finished_at_unix_s / 86400)::bigint",
    "tag": "coalesce(tags ->> %(tag)s::text, '')",
}
_EPOCH = dt.date(1970, 1, 1)

# What a report sums, in UsageRow's order after ``calls`` (named as its fields, and as
# the columns of usage_calls).
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
_record_sums = attrgetter(*_SUMMED)

Totals = list[int]  # calls, then each of _SUMMED


def _names(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def _day(day_number: int) -> str:
    return (_EPOCH + dt.timedelta(days=day_number)).isoformat()


def _record_group(record: UsageRecord, query: UsageQuery) -> tuple[str, ...]:
    values: list[str] = []
    for name in query.group_by:
        if name == "tenant":
            values.append(record.tenant)
        elif name == "key":
            values.append(record.key_prefix)
        elif name == "key_id":
            values.append(record.key_id)
        elif name == "route":
            values.append(record.route)
        elif name == "model":
            values.append(record.upstream_model)
        elif name == "provider":
            values.append(record.provider)
        elif name == "day":
            # The same arithmetic as the SQL: float division, then floor.
            values.append(_day(math.floor(record.finished_at_unix_s / 86400)))
        else:
            values.append(record.tags.get(query.tag_name, ""))
    return tuple(values)


def _statement(query: UsageQuery) -> str:
    groups = [_GROUP_SQL[name] for name in query.group_by]
    columns = ", ".join(
        [
            *groups,
            "count(*)",
            *(f"coalesce(sum({name}), 0)" for name in _SUMMED),
        ]
    )
    where = "finished_at_unix_s >= %(start)s AND finished_at_unix_s < %(end)s"
    if query.tenant is not None:
        where += " AND tenant = %(tenant)s"
    # Grouping by position: the tag expression holds a parameter, which PostgreSQL would
    # not match between the select list and a repeated GROUP BY expression.
    group_by = ", ".join(str(i) for i in range(1, len(groups) + 1)) or "()"
    return f"SELECT {columns} FROM usage_calls WHERE {where} GROUP BY {group_by}"


class PostgresUsageReader:
    """``UsageReader`` over the PostgreSQL ledger (and, if given, this replica's outbox)."""

    def __init__(self, pool: Pool, outbox: Outbox | None, *, timeout_s: float) -> None:
        """Use ``await PostgresUsageReader.open(...)``; the reader closes ``pool``, not
        ``outbox``."""
        self._pool = pool
        self._outbox = outbox
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, url: str, *, outbox: Outbox | None = None, timeout_s: float = 10.0
    ) -> PostgresUsageReader:
        """A reader with a small pool of its own (it connects in the background)."""
        pool = await open_pool(url, name="llmgateway-usage", max_size=2, timeout_s=timeout_s)
        return cls(pool, outbox, timeout_s=timeout_s)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Spend over the range, grouped; ``StoreUnavailable`` if PostgreSQL is not."""
        if "tag" in query.group_by and not query.tag_name:
            raise ValueError("grouping by tag needs the tag's name (tag_name)")
        waiting: list[UsageRecord] = []
        if self._outbox is not None:
            waiting = await self._outbox.records_between(
                query.start_unix_s, query.end_unix_s, query.tenant
            )
        params = {
            "start": query.start_unix_s,
            "end": query.end_unix_s,
            "tenant": query.tenant,
            "tag": query.tag_name,
        }

        async def read() -> tuple[list[TupleRow], set[str]]:
            async with self._pool.connection() as conn, conn.transaction():
                # One snapshot for both reads: a record delivered after the outbox was
                # read is either in it (and skipped from the outbox) or not (and counted
                # from the outbox), never both.
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = await conn.execute(_statement(query), params)
                grouped = await cur.fetchall()
                if not waiting:
                    return grouped, set()
                cur = await conn.execute(
                    "SELECT request_id FROM usage_calls WHERE request_id = ANY(%s)",
                    ([r.request_id for r in waiting],),
                )
                return grouped, {row[0] for row in await cur.fetchall()}

        grouped, delivered = await run_bounded("usage report", self._timeout_s, read)
        return _merge(query, grouped, [r for r in waiting if r.request_id not in delivered])

    async def get(self, request_id: str) -> UsageRecord | None:
        """The record PostgreSQL holds for ``request_id`` or, failing that, the one
        waiting in the outbox (None: neither)."""
        # The outbox first: a record delivered meanwhile is then found in PostgreSQL.
        waiting = None if self._outbox is None else await self._outbox.get(request_id)

        async def read() -> tuple[TupleRow | None, list[TupleRow]]:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    f"SELECT {_names(CALL_COLUMNS)} FROM usage_calls WHERE request_id = %s",
                    (request_id,),
                )
                call = await cur.fetchone()
                cur = await conn.execute(
                    f"SELECT {_names(ATTEMPT_COLUMNS[2:])} FROM usage_attempts "
                    "WHERE request_id = %s ORDER BY attempt_index",
                    (request_id,),
                )
                return call, await cur.fetchall()

        call, attempts = await run_bounded("read usage record", self._timeout_s, read)
        if call is None:
            return waiting
        fields = dict(zip((name for name, _ in CALL_COLUMNS), call, strict=True))
        fields["attempts"] = tuple(
            AttemptRecord(**dict(zip((n for n, _ in ATTEMPT_COLUMNS[2:]), a, strict=True)))
            for a in attempts
        )
        return UsageRecord(**fields)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._pool.close()


def _merge(
    query: UsageQuery, grouped: Sequence[TupleRow], waiting: Sequence[UsageRecord]
) -> list[UsageRow]:
    width = len(query.group_by)
    totals: dict[tuple[str, ...], Totals] = {}
    for row in grouped:
        key = tuple(
            _day(int(value)) if name == "day" else str(value)
            for name, value in zip(query.group_by, row[:width], strict=True)
        )
        counts = [int(v) for v in row[width:]]
        if counts[0]:  # GROUP BY () answers one row even over no rows
            totals[key] = counts
    for record in waiting:
        sums = totals.setdefault(_record_group(record, query), [0] * (1 + len(_SUMMED)))
        sums[0] += 1
        for i, value in enumerate(_record_sums(record), start=1):
            sums[i] += value
    return [
        UsageRow(
            group=dict(zip(query.group_by, key, strict=True)),
            calls=sums[0],
            **dict(zip(_SUMMED, sums[1:], strict=True)),
        )
        for key, sums in sorted(totals.items())
    ]
