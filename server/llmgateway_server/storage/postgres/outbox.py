"""The PostgreSQL ledger's local outbox: a SQLite file where usage records wait.

A record is durable once ``append`` returns: its commit is synced (WAL, ``synchronous=
FULL``), and concurrent appends share one commit (group commit). Rows leave the outbox
only after PostgreSQL has committed them (``remove``), so a crash anywhere loses nothing;
a crash between the two commits delivers a row twice, which the ledger's ``ON CONFLICT
DO NOTHING`` makes harmless. A row PostgreSQL refuses as data (``reject``) moves to
``outbox_rejected``: kept, never retried, never blocking the rows behind it.

Several processes may share one file (workers on one host): a drain lease in the file
lets one of them deliver at a time, so rows are not pushed once per process. A lease
whose holder's process is gone is taken over at once (its pid is in the lease), so a
restart after kill -9 delivers without waiting for the lease to run out. The lease is an
economy, never a guarantee: two deliverers at once only duplicate harmless work.

Only the standard library's sqlite3, on one thread of the outbox's own: the event loop
never waits for the disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from llmgateway_server.storage.base import (
    AttemptRecord,
    SchemaTooNew,
    StoreUnavailable,
    UsageRecord,
)

T = TypeVar("T")

# The file's format (PRAGMA user_version). A newer file than the code: SchemaTooNew.
OUTBOX_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: delivery order
    request_id TEXT NOT NULL UNIQUE,        -- the first record with an id stands
    tenant TEXT NOT NULL,
    finished_at_unix_s REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_rejected (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    record BLOB NOT NULL,
    error TEXT NOT NULL,
    rejected_at_unix_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS drain_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    until_unix_s REAL NOT NULL
);
"""

_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(UsageRecord))
_ATTEMPT_FIELDS = frozenset(f.name for f in dataclasses.fields(AttemptRecord))
# A record orjson cannot write (an integer past 64 bits) is written by the json module,
# marked by this first byte (orjson's output starts with "{"), and read back by it.
_JSON_MARK = b"J"


def outbox_path_for(sqlite_path: Path) -> Path:
    """The outbox file beside the local store's (``data/llmgateway.db`` ->
    ``data/llmgateway.outbox.db``): its own file, so its synced commits never wait for
    the local store's writers, and its format is versioned on its own."""
    return sqlite_path.with_name(f"{sqlite_path.stem}.outbox{sqlite_path.suffix or '.db'}")


def _default(value: object) -> object:
    if isinstance(value, Mapping):  # tags given as a read-only mapping
        return dict(value)
    raise TypeError(f"cannot store {type(value).__name__} in a usage record")


def encode_record(record: UsageRecord) -> bytes:
    """The record as JSON, every field (attempts nested)."""
    try:
        return orjson.dumps(record, default=_default)
    except TypeError:
        # Only an out-of-range integer gets here; the json module writes any integer
        # (PostgreSQL will refuse it, and the row lands in outbox_rejected, kept).
        return _JSON_MARK + json.dumps(_plain(record)).encode()


def _plain(record: UsageRecord) -> dict[str, Any]:
    fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
    fields["tags"] = dict(record.tags)
    fields["guardrails"] = dict(record.guardrails)
    fields["attempts"] = [dataclasses.asdict(a) for a in record.attempts]
    return fields


def decode_record(blob: bytes) -> UsageRecord:
    """The record ``encode_record`` wrote. Fields this code does not know (written by a
    newer gateway) are dropped; fields it lacks (an older one) take their defaults."""
    fields = json.loads(blob[1:]) if blob[:1] == _JSON_MARK else orjson.loads(blob)
    attempts = tuple(
        AttemptRecord(**{k: v for k, v in a.items() if k in _ATTEMPT_FIELDS})
        for a in fields.get("attempts", ())
    )
    known = {k: v for k, v in fields.items() if k in _RECORD_FIELDS}
    known["attempts"] = attempts
    return UsageRecord(**known)


class Outbox:
    """A durable local queue of usage records, in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        """Use ``await Outbox.open(path)``."""
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-outbox")
        self._db: sqlite3.Connection | None = None
        self._synced = True  # the connection's synchronous setting is FULL
        self._pending: list[tuple[UsageRecord, asyncio.Future[None]]] = []
        self._wake_committer = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False
        # This instance's name in the drain lease: "pid:random".
        self.holder = f"{os.getpid()}:{uuid.uuid4().hex}"
        # Set after every commit that added rows: the deliverer's cue.
        self.appended = asyncio.Event()
        # Group commits of appended records so far (how well appends share commits).
        self.commits = 0

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_s: float = 10.0) -> Outbox:
        """Open (creating it and its directory if needed) the outbox file at ``path``.
        Raises ``SchemaTooNew`` for a file written by a newer gateway, ``StoreUnavailable``
        for one that cannot be opened."""
        outbox = cls(path, busy_timeout_s=busy_timeout_s)
        try:
            await outbox._call(outbox._open_sync)
        except sqlite3.Error as exc:
            outbox._executor.shutdown(wait=False)
            raise StoreUnavailable(f"ledger outbox {path} cannot be opened: {exc}") from exc
        except BaseException:
            outbox._executor.shutdown(wait=False)
            raise
        outbox._committer = asyncio.create_task(outbox._commit_loop(), name="outbox-commit")
        return outbox

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- writing (group commit) ---------------------------------------------------------

    async def append(self, record: UsageRecord) -> None:
        """Add ``record`` and return once its commit is durable. A record whose
        request_id is already in the outbox is ignored (the first one stands). Raises
        ``StoreUnavailable`` when the file cannot be written (disk full, I/O error)."""
        if self._closed:
            raise StoreUnavailable("the ledger outbox is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wake_committer.set()
        # A caller cancelled here still has its record committed, with its batch.
        await future

    async def _commit_loop(self) -> None:
        try:
            while not (self._closed and not self._pending):
                await self._wake_committer.wait()
                self._wake_committer.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self._commit(batch)
        except BaseException as exc:
            # Nobody may wait forever on a committer that is gone.
            self._closed = True
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(StoreUnavailable(f"ledger outbox stopped: {exc!r}"))
            raise

    async def _commit(self, batch: list[tuple[UsageRecord, asyncio.Future[None]]]) -> None:
        try:
            errors = await self._call(self._append_sync, [record for record, _ in batch])
        except sqlite3.Error as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        StoreUnavailable(f"ledger outbox {self.path} cannot be written: {exc}")
                    )
            return
        self.commits += 1
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():  # its caller was cancelled: the record is kept all the same
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self.appended.set()

    def _append_sync(self, records: Sequence[UsageRecord]) -> list[Exception | None]:
        rows: list[tuple[str, str, float, bytes]] = []
        errors: list[Exception | None] = []
        for record in records:
            try:
                blob = encode_record(record)
            except (TypeError, ValueError) as exc:  # not a storable record: its caller's bug
                errors.append(exc)
                continue
            errors.append(None)
            rows.append((record.request_id, record.tenant, record.finished_at_unix_s, blob))
        if rows:
            with self._write(durable=True) as db:
                db.executemany(
                    "INSERT OR IGNORE INTO outbox "
                    "(request_id, tenant, finished_at_unix_s, record) VALUES (?, ?, ?, ?)",
                    rows,
                )
        return errors

    # -- delivering ---------------------------------------------------------------------

    async def take_lease(self, lease_s: float) -> bool:
        """Become (or stay) the one deliverer of this file for ``lease_s`` seconds;
        False while another live instance holds the lease."""
        return await self._call(self._take_lease_sync, lease_s)

    def _take_lease_sync(self, lease_s: float) -> bool:
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT holder, until_unix_s FROM drain_lease").fetchone()
            held_by_another = row is not None and row[0] != self.holder and row[1] > now
            if held_by_another and _process_alive(row[0]):
                return False
            db.execute(
                "INSERT INTO drain_lease (id, holder, until_unix_s) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
                "until_unix_s = excluded.until_unix_s",
                (self.holder, now + lease_s),
            )
        return True

    async def oldest(self, limit: int) -> list[tuple[int, UsageRecord | bytes]]:
        """Up to ``limit`` rows, oldest first, as (seq, record); a row that cannot be
        decoded comes back as its raw bytes, for ``reject``."""
        return await self._call(self._oldest_sync, limit)

    def _oldest_sync(self, limit: int) -> list[tuple[int, UsageRecord | bytes]]:
        rows = (
            self._conn()
            .execute("SELECT seq, record FROM outbox ORDER BY seq LIMIT ?", (limit,))
            .fetchall()
        )
        taken: list[tuple[int, UsageRecord | bytes]] = []
        for seq, blob in rows:
            try:
                taken.append((seq, decode_record(blob)))
            except (ValueError, TypeError):  # a corrupt row: kept aside, never retried
                taken.append((seq, bytes(blob)))
        return taken

    async def remove(self, seqs: Sequence[int]) -> None:
        """Delete delivered rows (after PostgreSQL committed them)."""
        await self._call(self._remove_sync, seqs)

    def _remove_sync(self, seqs: Sequence[int]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    async def reject(self, seq: int, error: str) -> None:
        """Move a row PostgreSQL refused as data to ``outbox_rejected``, with why."""
        await self._call(self._reject_sync, seq, error)

    def _reject_sync(self, seq: int, error: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO outbox_rejected "
                "(seq, request_id, record, error, rejected_at_unix_s) "
                "SELECT seq, request_id, record, ?, ? FROM outbox WHERE seq = ?",
                (error, time.time(), seq),
            )
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    # -- reading ------------------------------------------------------------------------

    async def records_between(
        self, start_unix_s: float, end_unix_s: float, tenant: str | None
    ) -> list[UsageRecord]:
        """Records waiting for delivery that finished in ``[start, end)`` (one tenant's
        when ``tenant`` is given)."""
        return await self._call(self._between_sync, start_unix_s, end_unix_s, tenant)

    def _between_sync(self, start: float, end: float, tenant: str | None) -> list[UsageRecord]:
        sql = "SELECT record FROM outbox WHERE finished_at_unix_s >= ? AND finished_at_unix_s < ?"
        params: tuple[object, ...] = (start, end)
        if tenant is not None:
            sql += " AND tenant = ?"
            params = (*params, tenant)
        records = []
        for (blob,) in self._conn().execute(sql, params):
            try:
                records.append(decode_record(blob))
            except (ValueError, TypeError):  # corrupt: counted nowhere, moved aside on drain
                continue
        return records

    async def get(self, request_id: str) -> UsageRecord | None:
        """The record waiting for delivery under ``request_id``, if any."""
        return await self._call(self._get_sync, request_id)

    def _get_sync(self, request_id: str) -> UsageRecord | None:
        row = (
            self._conn()
            .execute("SELECT record FROM outbox WHERE request_id = ?", (request_id,))
            .fetchone()
        )
        return None if row is None else decode_record(row[0])

    async def count(self) -> int:
        """Rows waiting for delivery."""
        return await self._call(self._count_sync)

    def _count_sync(self) -> int:
        (count,) = self._conn().execute("SELECT count(*) FROM outbox").fetchone()
        assert isinstance(count, int)
        return count

    async def rejected(self) -> list[tuple[str, str]]:
        """(request_id, error) of every row PostgreSQL refused, oldest first."""
        return await self._call(self._rejected_sync)

    def _rejected_sync(self) -> list[tuple[str, str]]:
        rows = (
            self._conn()
            .execute("SELECT request_id, error FROM outbox_rejected ORDER BY seq")
            .fetchall()
        )
        return [(str(r), str(e)) for r, e in rows]

    # -- lifecycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Commit what is pending, give up the drain lease, close the file."""
        if self._closed and self._committer is None:
            return
        self._closed = True
        self._wake_committer.set()
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer
        try:
            await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            with _transaction(db):
                db.execute("DELETE FROM drain_lease WHERE holder = ?", (self.holder,))
        finally:
            db.close()

    # -- SQLite -------------------------------------------------------------------------

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns (NORMAL in WAL mode may lose the
            # last commits on power loss). The record's durability is the contract.
            db.execute("PRAGMA synchronous=FULL")
            self._synced = True
            self._check_format(db)
            if db.execute("PRAGMA user_version").fetchone()[0] < OUTBOX_FORMAT:
                with _transaction(db):  # re-read under the lock: another process may win
                    if self._check_format(db) < OUTBOX_FORMAT:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(f"PRAGMA user_version = {OUTBOX_FORMAT}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _check_format(self, db: sqlite3.Connection) -> int:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > OUTBOX_FORMAT:
            raise SchemaTooNew(
                f"ledger outbox {self.path} has format {version}, newer than this "
                f"gateway knows ({OUTBOX_FORMAT}): run a newer gateway"
            )
        assert isinstance(version, int)
        return version

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("the ledger outbox is closed")
        return self._db

    def _write(self, *, durable: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; ``durable``: synced to disk when it commits.

        Only appends need that. Removing a delivered row, setting one aside or renewing
        the lease commits unsynced (``synchronous=NORMAL``): in WAL mode the next synced
        commit syncs it too, and one lost to a power cut is redone harmlessly (a row
        delivered again, a lease taken again). One fsync fewer per delivered batch."""
        db = self._conn()
        if durable != self._synced:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._synced = durable
        return _transaction(db)


def _process_alive(holder: str) -> bool:
    """Whether the process named in a lease holder ("pid:random") is running here."""
    pid_text, _, _ = holder.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when anything fails (a failed
    COMMIT included). IMMEDIATE takes the write lock at once, so two processes never
    deadlock upgrading a read lock."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
