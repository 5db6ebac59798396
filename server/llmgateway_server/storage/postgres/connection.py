"""Connections to PostgreSQL, and what a connection fault becomes: ``StoreUnavailable``.

Only faults become ``StoreUnavailable`` (no connection, a connection lost, no answer in
time); an error PostgreSQL reports about a statement is a bug or a verdict, and
propagates as it is.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from llmgateway_server.storage.base import StoreUnavailable

T = TypeVar("T")

Connection = psycopg.AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]

# Connection-level failures: refused, reset, server shutting down, pool exhausted
# (psycopg_pool.PoolTimeout), serialization failures and deadlocks (all OperationalError).
TRANSIENT: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)

# How long the pool keeps retrying a failed connection before it gives up on that attempt
# (the next request starts a new one). psycopg_pool doubles its delay from 1 s up to this,
# so it also bounds how long after PostgreSQL is back the pool notices: a few seconds.
_RECONNECT_GIVE_UP_S = 5.0


def _summary(exc: BaseException) -> str:
    # libpq messages span lines (hint, detail); the first says what happened.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@asynccontextmanager
async def faults_as_unavailable(what: str, timeout_s: float) -> AsyncIterator[None]:
    """Bound the block by ``timeout_s`` and turn connection faults into
    ``StoreUnavailable`` naming ``what`` was being done."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise StoreUnavailable(
            f"PostgreSQL ({what}) did not answer within {timeout_s:g} s"
        ) from exc
    except TRANSIENT as exc:
        raise StoreUnavailable(f"PostgreSQL ({what}) unavailable: {_summary(exc)}") from exc


# Operations given up on at their timeout, still finishing their clean-up (psycopg, when
# cancelled mid-query, asks the server to cancel it and waits up to ~10 s for that): kept
# referenced until they end.
_abandoned: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a fault after the caller gave up is no news


async def run_bounded(what: str, timeout_s: float, operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation()`` and answer within ``timeout_s``, whatever PostgreSQL does:
    connection faults and no answer in time raise ``StoreUnavailable`` naming ``what``.

    Unlike ``asyncio.timeout``, this does not wait for a cancelled query's clean-up
    (psycopg asks a hung server to cancel it, for up to ~10 s): the operation is left to
    finish that in the background."""
    task = asyncio.ensure_future(operation())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        raise
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        raise StoreUnavailable(f"PostgreSQL ({what}) did not answer within {timeout_s:g} s")
    try:
        return task.result()
    except TRANSIENT as exc:
        raise StoreUnavailable(f"PostgreSQL ({what}) unavailable: {_summary(exc)}") from exc


def connect_timeout(timeout_s: float) -> int:
    """libpq's ``connect_timeout``: whole seconds, and at least 2 (libpq's own floor)."""
    return max(2, math.ceil(timeout_s))


@asynccontextmanager
async def connect(url: str, what: str, *, timeout_s: float) -> AsyncIterator[Connection]:
    """One autocommit connection, closed at the end of the block; the block is bounded by
    ``timeout_s`` and its connection faults raise ``StoreUnavailable``."""
    async with faults_as_unavailable(what, timeout_s):
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=connect_timeout(timeout_s)
        )
        async with conn:
            yield conn


async def open_pool(url: str, *, name: str, max_size: int, timeout_s: float) -> Pool:
    """A pool of autocommit connections that does not need PostgreSQL to be up yet: it
    connects in the background, checks a connection before handing it out (one lost in
    a restart is replaced, not returned), and waits at most ``timeout_s`` for one."""
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        timeout=timeout_s,
        reconnect_timeout=_RECONNECT_GIVE_UP_S,
        check=AsyncConnectionPool.check_connection,
        # Autocommit: a one-statement operation is one round trip; several statements
        # that belong together use ``conn.transaction()``.
        kwargs={"autocommit": True, "connect_timeout": connect_timeout(timeout_s)},
    )
    await pool.open(wait=False)
    return pool
