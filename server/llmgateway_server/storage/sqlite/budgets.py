"""Budgets and rate limits in SQLite: counters, reservations and token buckets.

Counters: one row per (scope kind, scope id, window, period) with spent and reserved
nano-USD and tokens. Every reservation updates the day and month rows of each of its
scopes, whether or not that scope has a limit in that window today (so a limit set
mid-month sees the month's spend). Reservations: one row per request_id, ``held`` until
``settle`` (spent += actual) or ``expire`` (spent += reserved: an upper bound for a call
whose gateway died), its scopes and periods stored so both act on the counters it was
made against. A request_id has one reservation for ever: a second ``reserve`` of it
raises DuplicateRequest (the request was seen: it must not run, or be charged, again).

Each operation is one write transaction in the writer thread (``BEGIN IMMEDIATE``): the
check of every limit and the charge happen under the file's write lock, so concurrent
calls in any number of processes cannot both take the last of a budget.

Rate limits: a token bucket per tenant and dimension (requests, tokens), holding at most
the per-minute limit and refilled at limit/60 per second by elapsed time. A take that
asks for more than the whole bucket is allowed when the bucket is full and leaves it in
debt (otherwise a call bigger than a minute's tokens could never run).

``naive_for_tests=True`` replaces ``reserve`` with a check in one transaction and a charge
in another, with an awaitable gap between them: the over-admitting design a race test
must catch. Never for production.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import orjson

from llmgateway_server.storage.base import (
    BudgetLimits,
    Dimension,
    DuplicateRequest,
    Periods,
    RateLimits,
    Refusal,
    Remaining,
    Reservation,
    Scope,
    ScopeKind,
    Window,
)
from llmgateway_server.storage.sqlite.db import SqliteDatabase

Clock = Callable[[], float]
NaiveGap = Callable[[], Awaitable[None]]

_SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class BudgetCounter:
    """What one scope has spent and holds in one window's period."""

    spent_nano_usd: int = 0
    reserved_nano_usd: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0


async def _default_naive_gap() -> None:
    # Long enough that concurrent calls' checks overlap their charges.
    await asyncio.sleep(0.05)


class SqliteBudgetStore:
    """BudgetStore on the node's SQLite file, shared by every process that opens it."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        clock: Clock = time.time,
        naive_for_tests: bool = False,
        naive_gap: NaiveGap = _default_naive_gap,
    ) -> None:
        self._db = db
        self._clock = clock
        self._naive = naive_for_tests
        self._naive_gap = naive_gap
        self._closed = False
        db.retain()

    async def remaining(self, scopes: Sequence[Scope], periods: Periods) -> Remaining:
        """The smallest ``limit - spent - reserved`` over every limit of ``scopes`` (0 when
        a scope is over its limit; None for a dimension without any limit)."""
        return await self._db.read(partial(_remaining, tuple(scopes), periods))

    async def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold the amounts against every limit of every scope in one transaction, or
        refuse with the first limit that would be exceeded. A request_id seen before
        (held, settled or expired) raises DuplicateRequest and changes nothing."""
        _check_amounts(reservation.nano_usd, reservation.tokens)
        if self._naive:
            return await self._naive_reserve(reservation)
        return await self._db.write(partial(_reserve, reservation, self._clock()), quick=True)

    async def settle(self, request_id: str, tenant: str, nano_usd: int, tokens: int) -> None:
        """Turn a held reservation into spend of the actual amounts; anything else
        (unknown, settled, expired, another tenant's) is a no-op."""
        _check_amounts(nano_usd, tokens)
        await self._db.write(
            partial(_finish, request_id, tenant, (nano_usd, tokens), "settled", self._clock()),
            quick=True,
        )

    async def expire(self, now_unix_s: float) -> list[Reservation]:
        """Charge every held reservation whose lease ended before ``now_unix_s`` at its
        reserved amounts and return them, oldest lease first; each is returned once,
        whichever process expires it."""
        return await self._db.write(partial(_expire, now_unix_s))

    async def take(
        self, tenant: str, limits: RateLimits, *, requests: int, tokens: int, now_unix_s: float
    ) -> Refusal | None:
        """Take ``requests`` and ``tokens`` from the tenant's per-minute buckets, all or
        nothing; a Refusal names the short bucket and when it will have enough."""
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return None
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens must not be negative")
        return await self._db.write(
            partial(_take, tenant, limits, requests, tokens, now_unix_s), quick=True
        )

    async def admit(
        self,
        reservation: Reservation,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now_unix_s: float,
    ) -> Refusal | None:
        """Take the rate limits and reserve in one transaction (one round trip to the
        writer): both hold, or neither does (a take is undone when the reservation is
        refused, or when the request_id was seen before)."""
        _check_amounts(reservation.nano_usd, reservation.tokens)
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens must not be negative")
        if self._naive:
            refusal = await self.take(
                reservation.tenant, limits, requests=requests, tokens=tokens, now_unix_s=now_unix_s
            )
            return refusal if refusal is not None else await self._naive_reserve(reservation)
        return await self._db.write(
            partial(_admit, reservation, limits, (requests, tokens, now_unix_s), self._clock()),
            quick=True,
        )

    async def prune(self, before_unix_s: float, *, batch: int = 1000) -> int:
        """Delete settled and expired reservations made before ``before_unix_s`` (held
        ones stay until they settle or expire), ``batch`` per transaction so writers are
        never held up long; return how many. A request_id pruned is no longer known to
        ``reserve``: keep reservations longer than any client would retry a request (the
        counters, and the ledger's one row per request_id, are untouched)."""
        pruned = 0
        while True:
            deleted = await self._db.write(partial(_prune, before_unix_s, batch))
            pruned += deleted
            if deleted < batch:
                return pruned

    async def counter(
        self, kind: ScopeKind, scope_id: str, window: Window, period: str
    ) -> BudgetCounter:
        """One scope's spent and reserved amounts in one period (zeros if none yet)."""
        return await self._db.read(partial(_counter, kind, scope_id, window, period))

    async def aclose(self) -> None:
        """Let go of the database (closed by its last user)."""
        if not self._closed:
            self._closed = True
            await self._db.release()

    async def _naive_reserve(self, reservation: Reservation) -> Refusal | None:
        now = self._clock()
        refusal = await self._db.read(
            partial(_first_refusal, reservation.scopes, reservation.periods, reservation, now)
        )
        if refusal is not None:
            return refusal
        await self._naive_gap()  # another call may charge here: the race
        await self._db.write(partial(_hold, reservation, now))
        return None


def _check_amounts(nano_usd: int, tokens: int) -> None:
    if nano_usd < 0 or tokens < 0:
        raise ValueError("amounts must not be negative")


# -- in the writer thread (or a read thread) ---------------------------------------------


def _windows(periods: Periods) -> tuple[tuple[Window, str, float], ...]:
    return (
        ("day", periods.day, periods.day_ends_unix_s),
        ("month", periods.month, periods.month_ends_unix_s),
    )


def _limits(limits: BudgetLimits, window: Window) -> tuple[int | None, int | None]:
    if window == "day":
        return limits.usd_per_day_nano, limits.tokens_per_day
    return limits.usd_per_month_nano, limits.tokens_per_month


def _counter(
    kind: ScopeKind, scope_id: str, window: Window, period: str, conn: sqlite3.Connection
) -> BudgetCounter:
    row = conn.execute(
        "SELECT spent_nano_usd, reserved_nano_usd, spent_tokens, reserved_tokens "
        "FROM budget_counters "
        "WHERE scope_kind = ? AND scope_id = ? AND window = ? AND period = ?",
        (kind, scope_id, window, period),
    ).fetchone()
    return BudgetCounter() if row is None else BudgetCounter(*row)


def _first_refusal(
    scopes: Sequence[Scope],
    periods: Periods,
    amounts: Reservation,
    now: float,
    conn: sqlite3.Connection,
) -> Refusal | None:
    """The first limit (scopes in order, day before month, USD before tokens) that the
    amounts would push past, or None."""
    for scope in scopes:
        for window, period, ends in _windows(periods):
            usd_limit, token_limit = _limits(scope.limits, window)
            if usd_limit is None and token_limit is None:
                continue
            c = _counter(scope.kind, scope.id, window, period, conn)
            checks: tuple[tuple[Dimension, int | None, int, int], ...] = (
                ("usd", usd_limit, c.spent_nano_usd + c.reserved_nano_usd, amounts.nano_usd),
                ("tokens", token_limit, c.spent_tokens + c.reserved_tokens, amounts.tokens),
            )
            for dimension, limit, used, amount in checks:
                if limit is not None and used + amount > limit:
                    return Refusal(
                        scope_kind=scope.kind,
                        scope_id=scope.id,
                        window=window,
                        dimension=dimension,
                        limit=limit,
                        used=used,
                        retry_after_s=max(0.0, ends - now),
                    )
    return None


def _remaining(scopes: tuple[Scope, ...], periods: Periods, conn: sqlite3.Connection) -> Remaining:
    usd: int | None = None
    tokens: int | None = None
    for scope in scopes:
        for window, period, _ in _windows(periods):
            usd_limit, token_limit = _limits(scope.limits, window)
            if usd_limit is None and token_limit is None:
                continue
            c = _counter(scope.kind, scope.id, window, period, conn)
            if usd_limit is not None:
                left = max(0, usd_limit - c.spent_nano_usd - c.reserved_nano_usd)
                usd = left if usd is None else min(usd, left)
            if token_limit is not None:
                left = max(0, token_limit - c.spent_tokens - c.reserved_tokens)
                tokens = left if tokens is None else min(tokens, left)
    return Remaining(nano_usd=usd, tokens=tokens)


def _add(
    conn: sqlite3.Connection,
    scopes: Sequence[tuple[str, str]],
    periods: tuple[tuple[str, str], ...],
    *,
    spent: tuple[int, int],
    reserved: tuple[int, int],
) -> None:
    """Add to the counters of every scope in both windows (creating rows as needed)."""
    conn.executemany(
        "INSERT INTO budget_counters (scope_kind, scope_id, window, period, spent_nano_usd, "
        "reserved_nano_usd, spent_tokens, reserved_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO UPDATE SET "
        "spent_nano_usd = spent_nano_usd + excluded.spent_nano_usd, "
        "reserved_nano_usd = reserved_nano_usd + excluded.reserved_nano_usd, "
        "spent_tokens = spent_tokens + excluded.spent_tokens, "
        "reserved_tokens = reserved_tokens + excluded.reserved_tokens",
        [
            (kind, scope_id, window, period, spent[0], reserved[0], spent[1], reserved[1])
            for kind, scope_id in scopes
            for window, period in periods
        ],
    )


def _scopes_json(scopes: Sequence[Scope]) -> bytes:
    return orjson.dumps(
        [
            {
                "kind": s.kind,
                "id": s.id,
                "limits": [
                    s.limits.usd_per_day_nano,
                    s.limits.usd_per_month_nano,
                    s.limits.tokens_per_day,
                    s.limits.tokens_per_month,
                ],
            }
            for s in scopes
        ]
    )


def _scopes_from_json(text: str | bytes) -> tuple[Scope, ...]:
    return tuple(
        Scope(kind=s["kind"], id=s["id"], limits=BudgetLimits(*s["limits"]))
        for s in orjson.loads(text)
    )


def _refuse_replay(request_id: str, conn: sqlite3.Connection) -> None:
    row = conn.execute(
        "SELECT 1 FROM budget_reservations WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is not None:  # held, settled or expired: seen before
        raise DuplicateRequest(f"request {request_id!r} has a reservation already")


def _reserve(r: Reservation, now: float, conn: sqlite3.Connection) -> Refusal | None:
    _refuse_replay(r.request_id, conn)
    refusal = _first_refusal(r.scopes, r.periods, r, now, conn)
    if refusal is not None:
        return refusal
    _record(r, now, conn)
    return None


def _admit(
    r: Reservation,
    limits: RateLimits,
    take: tuple[int, int, float],
    now: float,
    conn: sqlite3.Connection,
) -> Refusal | None:
    # Every check first (reads), then every write: a refusal changes nothing, and no
    # savepoint is needed (one costs two statements, a fifth of the operation).
    requests, tokens, rate_now = take
    _refuse_replay(r.request_id, conn)
    plan: list[_BucketRow] = []
    if limits.requests_per_minute is not None or limits.tokens_per_minute is not None:
        planned = _plan_take(r.tenant, limits, requests, tokens, rate_now, conn)
        if isinstance(planned, Refusal):
            return planned
        plan = planned
    refusal = _first_refusal(r.scopes, r.periods, r, now, conn)
    if refusal is not None:
        return refusal
    if plan:
        _apply_take(plan, conn)
    _record(r, now, conn)
    return None


def _hold(r: Reservation, now: float, conn: sqlite3.Connection) -> None:
    """Record the reservation and add it to the reserved counters (no limit checked)."""
    _refuse_replay(r.request_id, conn)
    _record(r, now, conn)


def _record(r: Reservation, now: float, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO budget_reservations (request_id, tenant, key_prefix, route, scopes, day, "
        "month, day_ends_unix_s, month_ends_unix_s, nano_usd, tokens, lease_until_unix_s, "
        "state, created_at_unix_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'held', ?)",
        (
            r.request_id,
            r.tenant,
            r.key_prefix,
            r.route,
            _scopes_json(r.scopes).decode(),
            r.periods.day,
            r.periods.month,
            r.periods.day_ends_unix_s,
            r.periods.month_ends_unix_s,
            r.nano_usd,
            r.tokens,
            r.lease_until_unix_s,
            now,
        ),
    )
    _add(
        conn,
        [(s.kind, s.id) for s in r.scopes],
        (("day", r.periods.day), ("month", r.periods.month)),
        spent=(0, 0),
        reserved=(r.nano_usd, r.tokens),
    )


_HELD_COLUMNS = (
    "request_id, tenant, key_prefix, route, scopes, day, month, day_ends_unix_s, "
    "month_ends_unix_s, nano_usd, tokens, lease_until_unix_s"
)


def _reservation(row: Sequence[Any]) -> Reservation:
    return Reservation(
        request_id=row[0],
        tenant=row[1],
        key_prefix=row[2],
        route=row[3],
        scopes=_scopes_from_json(row[4]),
        periods=Periods(day=row[5], month=row[6], day_ends_unix_s=row[7], month_ends_unix_s=row[8]),
        nano_usd=row[9],
        tokens=row[10],
        lease_until_unix_s=row[11],
    )


def _charge(
    conn: sqlite3.Connection,
    r: Reservation,
    charged: tuple[int, int],
    state: Literal["settled", "expired"],
    now: float,
) -> None:
    """Release the reservation's hold and charge ``charged`` in its own periods."""
    _add(
        conn,
        [(s.kind, s.id) for s in r.scopes],
        (("day", r.periods.day), ("month", r.periods.month)),
        spent=charged,
        reserved=(-r.nano_usd, -r.tokens),
    )
    conn.execute(
        "UPDATE budget_reservations SET state = ?, charged_nano_usd = ?, charged_tokens = ?, "
        "finished_at_unix_s = ? WHERE request_id = ?",
        (state, charged[0], charged[1], now, r.request_id),
    )


def _finish(
    request_id: str,
    tenant: str,
    charged: tuple[int, int],
    state: Literal["settled", "expired"],
    now: float,
    conn: sqlite3.Connection,
) -> None:
    # One statement marks it finished and returns what it held (nothing: not held).
    rows = conn.execute(
        "UPDATE budget_reservations SET state = ?, charged_nano_usd = ?, charged_tokens = ?, "
        "finished_at_unix_s = ? WHERE request_id = ? AND tenant = ? AND state = 'held' "
        f"RETURNING {_HELD_COLUMNS}",
        (state, charged[0], charged[1], now, request_id, tenant),
    ).fetchall()
    for row in rows:
        r = _reservation(row)
        _add(
            conn,
            [(s.kind, s.id) for s in r.scopes],
            (("day", r.periods.day), ("month", r.periods.month)),
            spent=charged,
            reserved=(-r.nano_usd, -r.tokens),
        )


def _expire(now: float, conn: sqlite3.Connection) -> list[Reservation]:
    rows = conn.execute(
        f"SELECT {_HELD_COLUMNS} FROM budget_reservations "
        "WHERE state = 'held' AND lease_until_unix_s < ? ORDER BY lease_until_unix_s, request_id",
        (now,),
    ).fetchall()
    expired = [_reservation(row) for row in rows]
    for r in expired:
        _charge(conn, r, (r.nano_usd, r.tokens), "expired", now)
    return expired


def _prune(before: float, batch: int, conn: sqlite3.Connection) -> int:
    cursor = conn.execute(
        "DELETE FROM budget_reservations WHERE request_id IN ("
        "SELECT request_id FROM budget_reservations "
        "WHERE created_at_unix_s < ? AND state != 'held' LIMIT ?)",
        (before, batch),
    )
    return cursor.rowcount


def _take(
    tenant: str,
    limits: RateLimits,
    requests: int,
    tokens: int,
    now: float,
    conn: sqlite3.Connection,
) -> Refusal | None:
    plan = _plan_take(tenant, limits, requests, tokens, now, conn)
    if isinstance(plan, Refusal):
        return plan
    _apply_take(plan, conn)
    return None


_BucketRow = tuple[str, str, float, float]  # tenant, dimension, level, updated_at


def _plan_take(
    tenant: str,
    limits: RateLimits,
    requests: int,
    tokens: int,
    now: float,
    conn: sqlite3.Connection,
) -> Refusal | list[_BucketRow]:
    """The buckets' new levels if the take fits them all, else the refusal (a read)."""
    buckets: list[tuple[Literal["requests", "tokens"], int, int]] = []
    if limits.requests_per_minute is not None:
        buckets.append(("requests", limits.requests_per_minute, requests))
    if limits.tokens_per_minute is not None:
        buckets.append(("tokens", limits.tokens_per_minute, tokens))
    rows: list[_BucketRow] = []
    stored = {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            "SELECT dimension, level, updated_at_unix_s FROM rate_buckets WHERE tenant = ?",
            (tenant,),
        )
    }
    for dimension, capacity, amount in buckets:
        row = stored.get(dimension)
        rate = capacity / _SECONDS_PER_MINUTE
        if row is None:
            level = float(capacity)
        else:
            # A clock that steps back (another process's, a little behind) refills nothing.
            level = min(float(capacity), row[0] + max(0.0, now - row[1]) * rate)
        # More than the whole bucket may be taken from a full one (a limit of 0 admits
        # nothing, though).
        need = min(amount, capacity) if capacity > 0 else amount
        if level < need:
            lacking = need - level
            return Refusal(
                scope_kind="tenant",
                scope_id=tenant,
                window="minute",
                dimension=dimension,
                limit=capacity,
                used=math.ceil(lacking),
                retry_after_s=lacking / rate if rate > 0 else _SECONDS_PER_MINUTE,
            )
        rows.append((tenant, dimension, level - amount, now))
    return rows


def _apply_take(rows: list[_BucketRow], conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT INTO rate_buckets (tenant, dimension, level, updated_at_unix_s) "
        "VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
        "level = excluded.level, updated_at_unix_s = excluded.updated_at_unix_s",
        rows,
    )
