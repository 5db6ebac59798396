"""The SQLite database's write paths: quick writes committed on the loop while the write
lock is free and handed to the writer thread when it is not (never waiting on the loop),
group commit, and one failing operation of a batch undoing only its own changes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from llmgateway_server.storage.sqlite import SqliteDatabase


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await SqliteDatabase.open(tmp_path / "db.sqlite")
    await database.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, thread TEXT)"))
    yield database
    await database.aclose()


def _insert(key: str, conn: sqlite3.Connection) -> str:
    """Insert ``key`` (a duplicate raises IntegrityError) and say which thread ran it."""
    thread = threading.current_thread().name
    conn.execute("INSERT INTO t (k, thread) VALUES (?, ?)", (key, thread))
    return thread


def _rows(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT k, thread FROM t").fetchall())


async def test_quick_writes_run_on_the_loop_and_share_one_commit(db: SqliteDatabase) -> None:
    commits = db.commits
    threads = await asyncio.gather(
        *(db.write(lambda c, i=i: _insert(f"k{i}", c), quick=True) for i in range(20))
    )
    assert set(threads) == {threading.current_thread().name}
    assert db.commits == commits + 1  # one loop iteration, one transaction
    assert len(_rows(db.path)) == 20


async def test_writes_that_are_not_quick_run_in_the_writer_thread(db: SqliteDatabase) -> None:
    thread = await db.write(lambda c: _insert("slow", c))
    assert thread == "llmgateway-sqlite-writer"


async def test_a_failing_operation_undoes_only_its_own_changes(db: SqliteDatabase) -> None:
    await db.write(lambda c: _insert("taken", c), quick=True)

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        _insert("half-done", conn)
        _insert("taken", conn)  # IntegrityError: this operation's first insert goes too

    for quick in (True, False):
        results = await asyncio.gather(
            db.write(lambda c, q=quick: _insert(f"before-{q}", c), quick=quick),
            db.write(insert_then_fail, quick=quick),
            db.write(lambda c, q=quick: _insert(f"after-{q}", c), quick=quick),
            return_exceptions=True,
        )
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert not isinstance(results[0], BaseException)
        assert not isinstance(results[2], BaseException)
    assert set(_rows(db.path)) == {
        "taken",
        "before-True",
        "after-True",
        "before-False",
        "after-False",
    }


async def test_quick_writes_go_to_the_thread_while_another_process_holds_the_lock(
    db: SqliteDatabase,
) -> None:
    """Another process (here: another connection) in a write transaction: the loop
    never waits for it (a ticker keeps running), and the writes commit once it ends."""
    other = sqlite3.connect(db.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    writes = asyncio.gather(
        *(db.write(lambda c, i=i: _insert(f"w{i}", c), quick=True) for i in range(5))
    )
    await asyncio.sleep(0.3)
    assert not writes.done()  # waiting for the lock, in the writer thread
    assert ticks >= 10  # the loop ran all along (30 ticks if nothing blocked it)
    other.execute("COMMIT")
    other.close()
    threads = await asyncio.wait_for(writes, timeout=5)
    tick_task.cancel()
    assert set(threads) == {"llmgateway-sqlite-writer"}
    assert len(_rows(db.path)) == 5


async def test_durable_quick_writes_fsync_in_the_thread_when_full(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(tmp_path / "full.sqlite", synchronous="FULL")
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, thread TEXT)"))
        durable = await db.write(lambda c: _insert("d", c), durable=True, quick=True)
        plain = await db.write(lambda c: _insert("p", c), quick=True)
    finally:
        await db.aclose()
    assert durable == "llmgateway-sqlite-writer"  # an fsync never runs on the loop
    assert plain == threading.current_thread().name


async def test_quick_writes_queued_at_close_are_committed(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(tmp_path / "close.sqlite")
    await db.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, thread TEXT)"))
    pending = [
        asyncio.ensure_future(db.write(lambda c, i=i: _insert(f"c{i}", c), quick=True))
        for i in range(3)
    ]
    await asyncio.sleep(0)  # the writes are queued, their iteration has not ended
    started = time.monotonic()
    await db.aclose()
    await asyncio.gather(*pending)
    assert time.monotonic() - started < 5
    assert len(_rows(tmp_path / "close.sqlite")) == 3
