"""One SQLite file per node: its connections, the writer thread, and reads off the loop.

Writes (``SqliteDatabase.write``) are grouped: every operation queued together runs in ONE
``BEGIN IMMEDIATE`` transaction, each under its own savepoint (group commit), so many
concurrent calls share a commit. A caller's future resolves only after that COMMIT has
returned. Two ways in:

- The writer thread (one per process) takes all the operations queued while its
  previous transaction committed. Anything that may be slow goes there: sweeps, pruning,
  admin writes, an fsync (``FULL``), and whatever found the write lock taken.
- Quick writes (``quick=True``: a call's reservation, settle and ledger row, a few
  indexed statements each) run on the event loop, those of one loop iteration in one
  transaction at its end, when the write lock is free at that moment (never waiting for
  it: taken, they go to the writer thread). A call makes two of them on its path (admit
  before the upstream, settle and ledger row before the result). In the thread, each
  cost a hand-off each way and, under load, a wait for the GIL at every statement while
  the loop held it: bench/bench_sqlite_budgets.py and bench/RESULTS.md (0.38 ms for a
  reservation at 1 call in flight and 10-12 ms at 64, against 0.1 ms of work). On the
  loop, a commit in WAL mode with ``NORMAL`` is a write into the OS's page cache; the
  risk taken is that a disk so stalled that the page cache stops taking writes stalls
  the loop too (as it would the logs).

Reads (``SqliteDatabase.read``) run in a few threads on read-only connections, those
queued together in one read transaction; WAL lets them proceed while a write is in
progress, in this process or another. Results reach the event loop with one wake-up per
batch.

Several gateway processes may share the file (SO_REUSEPORT workers): WAL and ``BEGIN
IMMEDIATE`` (a transaction takes the write lock before it reads, so a check and the write
that depends on it cannot interleave with another process's) make that safe. A writer
waits for another process's transaction in naps of at most 2 ms, up to the busy timeout
(then StoreUnavailable). Checkpoints (copying the WAL into the database) run in a thread
of their own, so no commit pays for them.

Durability (``synchronous``): in WAL mode a commit with ``NORMAL`` has written its pages
to the WAL file (the OS has them) when COMMIT returns, so it survives the process being
killed (kill -9, OOM); only a power loss or kernel crash can lose the last commits (the
database stays consistent). ``FULL`` also fsyncs the WAL at every commit: durable against
power loss, at 1-2 ms per commit on this machine kind instead of about 0.1 ms
(bench/bench_ledger.py: one writer, 2,800 rows/s with NORMAL, 400-900 with FULL; with 64
concurrent writers sharing commits, 10,000 against 5,000-7,000). The default is
``NORMAL``: the failure the ledger must survive is a killed gateway, and an fsync in every
call's path would cost more than the gateway adds to a call in all. With ``FULL``, only
transactions holding a ``durable=True`` operation (ledger rows) pay the fsync; budget and
rate-limit operations commit with ``NORMAL`` (the next durable commit fsyncs them too,
since the WAL is written in order).

Cancelling a caller does not cancel its operation: a write queued may still commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from llmgateway_server.storage.base import SchemaTooNew, StoreUnavailable
from llmgateway_server.storage.sqlite.migrations import MIGRATIONS, Migration, migrate

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]
Operation = Callable[[sqlite3.Connection], T]

# A caller's mistake (a constraint violated, a bad statement, a value out of range): it
# reaches the caller as it is. Every other sqlite3 error is the database's own fault
# (locked past the busy timeout, disk full, I/O error, a corrupt file or not a database):
# the store is unavailable.
_CALLER_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError)


def is_fault(exc: BaseException) -> bool:
    """Whether ``exc`` means the database failed (rather than the operation was wrong)."""
    return isinstance(exc, sqlite3.Error) and not isinstance(exc, _CALLER_ERRORS)


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()


class _Busy(Exception):
    """The write lock was taken (by another process, or this one's writer thread)."""


def _is_busy(exc: BaseException) -> bool:
    return (
        isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # extended codes too
    )


def connect(path: Path, *, busy_timeout_s: float, read_only: bool = False) -> sqlite3.Connection:
    """A connection with the settings every connection to the file needs: autocommit
    (transactions are explicit), the busy timeout, foreign keys on."""
    # isolation_level=None: the sqlite3 module never opens transactions behind our back,
    # so BEGIN IMMEDIATE / COMMIT are exactly where the code says.
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA foreign_keys = ON")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    return conn


def enable_wal(conn: sqlite3.Connection, *, busy_timeout_s: float) -> None:
    """Switch the file to WAL (persistent: the first process to open a fresh file does
    it). Changing the journal mode needs the file to itself; several processes starting
    on a fresh file at once can find it busy, and SQLite does not always wait for that
    lock with the busy handler, so retry until the busy timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() == "wal":
            return
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"could not switch to WAL (journal mode {mode})")
        time.sleep(0.01)


def migrate_file(
    path: Path | str, *, busy_timeout_s: float = 5.0, migrations: tuple[Migration, ...] = MIGRATIONS
) -> int:
    """Create (with its directory) and migrate the file; return its schema version.

    What ``llmgateway migrate`` runs; opening a ``SqliteDatabase`` does the same."""
    conn, version = _open_migrated(Path(path), busy_timeout_s, migrations)
    conn.close()
    return version


def _open_migrated(
    path: Path, busy_timeout_s: float, migrations: tuple[Migration, ...]
) -> tuple[sqlite3.Connection, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = connect(path, busy_timeout_s=busy_timeout_s)
        try:
            enable_wal(conn, busy_timeout_s=busy_timeout_s)
            version = migrate(conn, migrations)
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
    except SchemaTooNew as exc:
        raise SchemaTooNew(f"SQLite database {path}: {exc}") from None
    except sqlite3.Error as exc:
        if not is_fault(exc):
            raise
        raise unavailable(path, exc) from exc
    return conn, version


def unavailable(path: Path, exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable that a database fault becomes (the cause kept, for logs)."""
    error = StoreUnavailable(f"SQLite database {path}: {exc}")
    error.__cause__ = exc
    return error


class SqliteDatabase:
    """The node's SQLite file: migrated when opened, one writer thread, read threads.

    Build it with ``await SqliteDatabase.open(path)`` from async code (opening and
    migrating touch the disk); the constructor does the same work synchronously. Stores
    built on it (``SqliteLedger``, ``SqliteBudgetStore``, ``SqliteTenantStore``) each
    hold a reference; the file is closed when the last of them (or ``aclose``) lets go.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = 5.0,
        readers: int = 2,
        max_batch: int = 512,
        checkpoint_interval_s: float = 0.1,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._max_batch = max_batch
        self._checkpoint_interval_s = checkpoint_interval_s
        writer, self.schema_version = _open_migrated(self.path, busy_timeout_s, migrations)
        # Checkpoints (copying the WAL into the file, with fsyncs) run in a thread of
        # their own, never in a commit: with SQLite's automatic checkpoint, one commit in
        # a few hundred took 5-50 ms here.
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        # The writer waits for the write lock itself (_begin), in short naps: SQLite's
        # busy handler sleeps up to 100 ms at a time, so under contention between
        # processes a waiter sleeps long past the lock's release (bench/bench_ledger.py,
        # four processes: p99 of a write 12-29 ms with it, 7-13 ms without, at 1,600
        # rows/s; 240-440 ms against 100-140 ms when they write as fast as they can).
        writer.execute("PRAGMA busy_timeout = 0")
        self._busy_timeout_s = busy_timeout_s
        self._writer = writer
        # The event loop's own connection, for quick writes while the write lock is free
        # (``write(quick=True)``); it never waits for the lock.
        inline = connect(self.path, busy_timeout_s=0)
        inline.execute("PRAGMA wal_autocheckpoint = 0")
        inline.execute("PRAGMA synchronous = NORMAL")
        self._inline = inline
        self._pending: list[_Op] = []  # quick writes of this loop iteration
        self._sync_now: Synchronous = "NORMAL"
        self._writes: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._closed = False
        self._users = 0
        # Write transactions this process has committed (each may hold many operations).
        self.commits = 0
        self._checkpointed_at = 0
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run_writer, name="llmgateway-sqlite-writer"),
            threading.Thread(
                target=self._run_checkpointer,
                args=(connect(self.path, busy_timeout_s=busy_timeout_s),),
                name="llmgateway-sqlite-checkpoint",
            ),
        ]
        self._readers = [
            threading.Thread(
                target=self._run_reader,
                args=(connect(self.path, busy_timeout_s=busy_timeout_s, read_only=True),),
                name="llmgateway-sqlite-read",
            )
            for _ in range(readers)
        ]
        for thread in (*self._threads, *self._readers):
            thread.daemon = True  # a gateway that exits without aclose does not hang
            thread.start()

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = 5.0,
        readers: int = 2,
    ) -> SqliteDatabase:
        """Open (creating it and its directory if needed) and migrate, off the loop.

        Raises SchemaTooNew if a newer gateway migrated the file, StoreUnavailable if it
        cannot be opened."""
        return await asyncio.to_thread(
            cls, path, synchronous=synchronous, busy_timeout_s=busy_timeout_s, readers=readers
        )

    # -- writes ----------------------------------------------------------------------------

    async def write(self, fn: Operation[T], *, durable: bool = False, quick: bool = False) -> T:
        """Run ``fn(connection)`` inside a write transaction shared with whatever else is
        queued, and return its result once that transaction has COMMITTED. If ``fn``
        raises, only its own changes are rolled back and the exception is raised here.
        ``durable``: the commit must survive a power loss when the database is configured
        ``FULL``.

        ``quick``: ``fn`` is a few indexed statements (a call's reservation, settle or
        ledger row). Then it runs on the event loop, with the other quick writes of the
        same loop iteration, in one transaction at the end of the iteration, if the
        write lock is free at that moment; else (another process or this one's writer
        thread holds it, or it must fsync) it goes to the writer thread like any other.

        Cancelling the caller does not cancel the operation: it may still commit."""
        if quick and not (durable and self.synchronous == "FULL"):
            return await self._submit_inline(fn, durable)
        return await self._submit(self._writes, fn, durable)

    async def _submit_inline(self, fn: Operation[T], durable: bool) -> T:
        if self._closed:
            raise StoreUnavailable(f"SQLite database {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # ``durable`` travels with it in case the lock is taken and the thread commits it.
        self._pending.append(_Op(fn, durable, loop, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush_inline)
        return await future

    def _flush_inline(self) -> None:
        """Commit the quick writes queued in this loop iteration, on the loop, if the
        write lock is free now; else hand them to the writer thread (which waits)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            results = self._commit(self._inline, batch, wait=False)
        except _Busy:
            for op in batch:
                self._writes.put(op)
            return
        loop = asyncio.get_running_loop()
        if all(op.loop is loop for op in batch):
            _resolve([(op.future, *result) for op, result in zip(batch, results, strict=True)])
        else:
            _deliver(batch, results)  # ops of another loop (tests): resolved on theirs

    def _run_writer(self) -> None:
        conn = self._writer
        while (batch := _take_batch(self._writes, self._max_batch)) is not None:
            _deliver(batch, self._commit(conn, batch))
        conn.close()

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Op], *, wait: bool = True
    ) -> list[tuple[bool, Any]]:
        """Run ``batch`` in one transaction on ``conn``. ``wait=False`` (the loop's
        connection): the write lock must be free at once, else nothing is done and
        ``_Busy`` is raised."""
        try:
            results = self._transaction(conn, batch, wait)
        except Exception as exc:  # every caller in the batch gets the failure
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            if not wait and _is_busy(exc):
                raise _Busy from exc  # nothing was committed: the writer thread redoes it
            # Nothing of the batch was committed: each caller gets its own error.
            return [(False, unavailable(self.path, exc) if is_fault(exc) else exc) for _ in batch]
        return results

    def _transaction(
        self, conn: sqlite3.Connection, batch: list[_Op], wait: bool
    ) -> list[tuple[bool, Any]]:
        # First the operations one after the other, as they come: the usual case, no
        # operation fails. One that raises (a caller's mistake, a request id seen before)
        # undoes the transaction, and the batch runs again with a savepoint around each
        # operation, so that one failing undoes only its own changes. (A savepoint for
        # every operation every time costs two statements each, a fifth of a call's.)
        self._start(conn, batch, wait)
        results: list[tuple[bool, Any]] = []
        for op in batch:
            try:
                results.append((True, op.fn(conn)))
            except Exception as exc:  # handed to its caller, who re-raises it
                if is_fault(exc):
                    raise  # the database failed, not this operation: the batch fails
                conn.execute("ROLLBACK")
                if len(batch) == 1:
                    return [(False, exc)]
                break
        else:
            conn.execute("COMMIT")
            self.commits += 1
            return results
        self._start(conn, batch, wait)
        results = []
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn)
            except Exception as exc:  # handed to its caller, who re-raises it
                if is_fault(exc):
                    raise
                conn.execute("ROLLBACK TO op")
                results.append((False, exc))
            else:
                results.append((True, value))
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
        self.commits += 1
        return results

    def _start(self, conn: sqlite3.Connection, batch: list[_Op], wait: bool) -> None:
        if not wait:
            conn.execute("BEGIN IMMEDIATE")  # busy: _Busy, and the writer thread waits
            return
        wanted: Synchronous = self.synchronous if any(op.durable for op in batch) else "NORMAL"
        if wanted != self._sync_now:
            conn.execute(f"PRAGMA synchronous = {wanted}")
            self._sync_now = wanted
        self._begin(conn)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write transaction to end in
        naps of at most 2 ms, up to the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout_s
        nap = 0.00025
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(nap * random.uniform(0.5, 1.5))  # jitter: waiters do not wake together
            nap = min(nap * 2, 0.002)

    def _run_checkpointer(self, conn: sqlite3.Connection) -> None:
        """Every interval in which this process committed, copy the WAL into the
        database (PASSIVE: it never waits for, nor blocks, readers and writers, here or
        in other processes). Once the WAL is all copied, the next write starts it again
        from the top, so the file stays small."""
        while not self._stopping.wait(self._checkpoint_interval_s):
            commits = self.commits
            if commits == self._checkpointed_at:
                continue
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.OperationalError:
                continue  # another process is checkpointing (busy): the next round will
            self._checkpointed_at = commits
        conn.close()

    # -- reads -----------------------------------------------------------------------------

    async def read(self, fn: Operation[T]) -> T:
        """Run ``fn(connection)`` on a read-only connection in a read thread, inside a
        read transaction begun after the call (it sees every write that returned before
        it); reads queued together share that transaction."""
        return await self._submit(self._reads, fn, False)

    def _run_reader(self, conn: sqlite3.Connection) -> None:
        while (batch := _take_batch(self._reads, self._max_batch)) is not None:
            _deliver(batch, self._read_batch(conn, batch))
        self._reads.put(_STOP)  # pass the stop on to the next reader
        conn.close()

    def _read_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN")  # one snapshot for the batch
            for op in batch:
                try:
                    results.append((True, op.fn(conn)))
                except Exception as exc:  # handed to its caller, who re-raises it
                    if is_fault(exc):
                        raise
                    results.append((False, exc))
            conn.execute("COMMIT")  # a read transaction: this only ends the snapshot
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return [(False, unavailable(self.path, exc)) for _ in batch]
        return results

    # -- both ------------------------------------------------------------------------------

    async def _submit(
        self, to: queue.SimpleQueue[_Op | object], fn: Operation[T], durable: bool
    ) -> T:
        if self._closed:
            raise StoreUnavailable(f"SQLite database {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        to.put(_Op(fn, durable, loop, future))
        return await future

    # -- lifetime --------------------------------------------------------------------------

    def retain(self) -> None:
        """A store now uses this database (``release`` when it closes)."""
        self._users += 1

    async def release(self) -> None:
        """A store is done with this database; the last one closes it."""
        self._users -= 1
        if self._users <= 0:
            await self.aclose()

    async def aclose(self) -> None:
        """Finish every queued operation, stop the threads, close every connection (the
        last connection to the file checkpoints it and removes the WAL). Idempotent."""
        if self._closed:
            return
        self._flush_inline()  # quick writes already queued are committed first
        self._closed = True
        self._inline.close()
        self._writes.put(_STOP)
        self._reads.put(_STOP)
        self._stopping.set()
        for thread in (*self._threads, *self._readers):
            await asyncio.to_thread(thread.join)


def _take_batch(source: queue.SimpleQueue[_Op | object], limit: int) -> list[_Op] | None:
    """Wait for an operation, then take every one queued behind it (up to ``limit``);
    None once the queue is stopped and what was queued before the stop is done."""
    first = source.get()
    if first is _STOP:
        return None
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is _STOP:
            source.put(_STOP)  # seen again once this batch is done
            break
        batch.append(item)
    return batch  # type: ignore[return-value]


def _deliver(batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
    """Resolve the callers' futures on their own loops (futures are not thread-safe),
    with one wake-up per loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for op, (ok, value) in zip(batch, results, strict=True):
        by_loop.setdefault(op.loop, []).append((op.future, ok, value))
    for loop, resolved in by_loop.items():
        if loop.is_closed():
            continue  # the caller's loop is gone: nobody is waiting
        try:
            loop.call_soon_threadsafe(_resolve, resolved)
        except RuntimeError:
            continue  # the loop closed between the check and the call: nobody is waiting


def _resolve(resolved: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in resolved:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
