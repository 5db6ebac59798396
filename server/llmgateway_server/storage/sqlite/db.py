"""One SQLite file per node: its connections, the writer thread, and reads off the loop.

Every write goes through one thread per process (``SqliteDatabase.write``): it takes all
the operations queued while the previous transaction committed and runs them in ONE
``BEGIN IMMEDIATE`` transaction, each under its own savepoint (group commit), so many
concurrent calls share a commit. A caller's future resolves only after that COMMIT has
returned. Reads run on a small pool of read-only connections in threads
(``SqliteDatabase.read``); WAL lets them proceed while a write is in progress, in this
process or another. Nothing here ever runs SQLite on the event loop.

Several gateway processes may share the file (SO_REUSEPORT workers): WAL, ``BEGIN
IMMEDIATE`` (a transaction takes the write lock before it reads, so check-then-write in
one transaction cannot interleave with another process's) and a busy timeout make that
safe.

Durability (``synchronous``): in WAL mode a commit with ``NORMAL`` has written its pages
to the WAL file (the OS has them) when COMMIT returns, so it survives the process being
killed (kill -9, OOM); only a power loss or kernel crash can lose the last commits (the
database stays consistent). ``FULL`` also fsyncs the WAL at every commit: durable against
power loss, at about 1 ms per commit on this machine kind (30 µs for ``NORMAL``;
bench/bench_ledger.py). The default is ``NORMAL``: the issue's failure is a killed
gateway, and an fsync per call's ledger write would cost more than the gateway's whole
per-call budget. With ``FULL``, only transactions holding a ``durable=True`` operation
(ledger rows) pay the fsync; budget and rate-limit operations commit with ``NORMAL``
(the next durable commit fsyncs them too, since the WAL is written in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._max_batch = max_batch
        writer, self.schema_version = _open_migrated(self.path, busy_timeout_s, migrations)
        self._writer = writer
        self._sync_now: Synchronous = "NORMAL"
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._read_conns: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_read_conns: list[sqlite3.Connection] = []
        for _ in range(readers):
            conn = connect(self.path, busy_timeout_s=busy_timeout_s, read_only=True)
            self._all_read_conns.append(conn)
            self._read_conns.put(conn)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="llmgateway-sqlite-read")
        self._thread = threading.Thread(
            target=self._run_writer, name="llmgateway-sqlite-writer", daemon=True
        )
        self._closed = False
        self._users = 0
        # Write transactions this process has committed (each may hold many operations).
        self.commits = 0
        self._thread.start()

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

    async def write(self, fn: Operation[T], *, durable: bool = False) -> T:
        """Run ``fn(connection)`` in the writer thread inside a write transaction shared
        with whatever else is queued, and return its result once that transaction has
        COMMITTED. If ``fn`` raises, only its own changes are rolled back and the
        exception is raised here. ``durable``: the commit must survive a power loss when
        the database is configured ``FULL``.

        Cancelling the caller does not cancel the operation: it may still commit."""
        if self._closed:
            raise StoreUnavailable(f"SQLite database {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, durable, loop, future))
        return await future

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Op] = [first]  # type: ignore[list-item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # finish what was queued before aclose, then stop
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(batch)
        self._writer.close()

    def _commit(self, batch: list[_Op]) -> None:
        conn = self._writer
        results: list[tuple[bool, Any]] = []
        try:
            wanted: Synchronous = self.synchronous if any(op.durable for op in batch) else "NORMAL"
            if wanted != self._sync_now:
                conn.execute(f"PRAGMA synchronous = {wanted}")
                self._sync_now = wanted
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn)
                except Exception as exc:  # handed to its caller, who re-raises it
                    if is_fault(exc):
                        raise  # the database failed, not this operation: the batch fails
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the failure
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            # Nothing of the batch was committed: each caller gets its own error.
            results = [
                (False, unavailable(self.path, exc) if is_fault(exc) else exc) for _ in batch
            ]
        for op, (ok, value) in zip(batch, results, strict=True):
            _deliver(op, ok, value)

    # -- reads -----------------------------------------------------------------------------

    async def read(self, fn: Operation[T]) -> T:
        """Run ``fn(connection)`` on a read-only connection in a thread, inside one read
        transaction (a consistent snapshot across its statements)."""
        if self._closed:
            raise StoreUnavailable(f"SQLite database {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Operation[T]) -> T:
        conn = self._read_conns.get()
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")  # a read transaction: ends the snapshot
        except sqlite3.Error as exc:
            if not is_fault(exc):
                raise
            raise unavailable(self.path, exc) from exc
        finally:
            self._read_conns.put(conn)

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
        """Commit what is queued, stop the writer, close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._readers.shutdown, wait=True)
        for conn in self._all_read_conns:
            conn.close()


def _deliver(op: _Op, ok: bool, value: Any) -> None:
    """Resolve the caller's future on its own loop (futures are not thread-safe)."""
    if op.loop.is_closed():
        return  # the caller's loop is gone: nobody is waiting
    try:
        op.loop.call_soon_threadsafe(_resolve, op.future, ok, value)
    except RuntimeError:
        return  # the loop closed between the check and the call: nobody is waiting


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
