"""``PostgresLedger``: the usage ledger of many replicas, in PostgreSQL, via an outbox.

``write`` returns once the record is committed to this replica's SQLite outbox, so a
PostgreSQL outage neither fails nor slows a call; a background task (``Deliverer``)
moves the outbox to PostgreSQL, idempotently by request_id. ``usage`` groups in
PostgreSQL and adds what this replica's outbox still holds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import psycopg

from llmgateway_server.storage.base import StoreUnavailable, UsageQuery, UsageRecord, UsageRow
from llmgateway_server.storage.postgres.delivery import Deliverer
from llmgateway_server.storage.postgres.outbox import Outbox
from llmgateway_server.storage.postgres.usage import PostgresUsageReader

log = logging.getLogger("llmgateway.storage")


def _report_crash(task: asyncio.Task[None]) -> None:
    # The deliverer handles every fault it expects; anything else is a bug worth a
    # loud log line, not a silently stalled outbox.
    if not task.cancelled() and task.exception() is not None:
        log.error("ledger delivery stopped", exc_info=task.exception())


class PostgresLedger:
    """``UsageLedger`` and ``UsageReader`` on PostgreSQL, durable through a local outbox."""

    def __init__(
        self,
        outbox: Outbox,
        deliverer: Deliverer,
        reader: PostgresUsageReader,
        *,
        close_timeout_s: float,
    ) -> None:
        """Use ``await PostgresLedger.open(...)``."""
        self._outbox = outbox
        self._deliverer = deliverer
        self._reader = reader
        self._close_timeout_s = close_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writes = 0
        self._no_writes = asyncio.Event()
        self._no_writes.set()

    @classmethod
    async def open(
        cls,
        url: str,
        outbox_path: Path,
        *,
        batch_size: int = 500,
        timeout_s: float = 10.0,
        retry_max_s: float = 2.0,
        poll_s: float = 1.0,
        close_timeout_s: float = 5.0,
    ) -> PostgresLedger:
        """A ledger writing to the outbox at ``outbox_path`` and delivering to ``url``.
        PostgreSQL need not be up; the schema must have been migrated (``migrate``).

        ``batch_size`` rows go in one PostgreSQL transaction; ``timeout_s`` bounds one
        batch and one report; a failed delivery is retried after at most
        ``retry_max_s``; ``poll_s`` is how often rows appended by other processes on the
        same outbox are looked for; ``aclose`` delivers for at most ``close_timeout_s``."""
        outbox = await Outbox.open(outbox_path)
        try:
            reader = await PostgresUsageReader.open(url, outbox=outbox, timeout_s=timeout_s)
        except BaseException:
            await outbox.aclose()
            raise
        deliverer = Deliverer(
            url,
            outbox,
            batch_size=batch_size,
            timeout_s=timeout_s,
            retry_max_s=retry_max_s,
            poll_s=poll_s,
        )
        ledger = cls(outbox, deliverer, reader, close_timeout_s=close_timeout_s)
        ledger._task = asyncio.create_task(deliverer.run(), name="ledger-delivery")
        ledger._task.add_done_callback(_report_crash)
        return ledger

    async def write(self, record: UsageRecord) -> None:
        """Commit ``record`` to the outbox (durable when this returns; concurrent writes
        share a commit). Never waits for PostgreSQL. ``StoreUnavailable`` only if the
        outbox file cannot be written, or after ``aclose``."""
        if self._closing:
            raise StoreUnavailable("the usage ledger is closed")
        self._writes += 1
        self._no_writes.clear()
        try:
            await self._outbox.append(record)
        finally:
            self._writes -= 1
            if self._writes == 0:
                self._no_writes.set()

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Spend over the range, grouped, delivered rows and this replica's outbox alike;
        ``StoreUnavailable`` when PostgreSQL cannot answer."""
        return await self._reader.usage(query)

    async def get(self, request_id: str) -> UsageRecord | None:
        """The record kept for ``request_id`` (delivered, or still in the outbox)."""
        return await self._reader.get(request_id)

    @property
    def outbox_commits(self) -> int:
        """Outbox commits so far: writes over commits is how well writes share them."""
        return self._outbox.commits

    async def pending(self) -> int:
        """Records in the outbox, waiting for PostgreSQL."""
        return await self._outbox.count()

    async def aclose(self) -> None:
        """Stop taking writes, let those under way commit, deliver what PostgreSQL takes
        within ``close_timeout_s``, close. What is left stays in the outbox for the next
        start (of this process or of any sharing the file)."""
        if self._closing:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        try:
            await self._final_delivery()
        finally:
            await self._deliverer.aclose()
            await self._outbox.aclose()
            await self._reader.aclose()

    async def _final_delivery(self) -> None:
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await self._no_writes.wait()
                if await self._outbox.take_lease(self._close_timeout_s):
                    while await self._deliverer.deliver():
                        pass
        except (psycopg.Error, sqlite3.Error, TimeoutError) as exc:
            # Nothing is lost: the rows wait in the outbox file.
            log.warning("ledger closed before the outbox was delivered: %r", exc)
        left = await self._outbox.count()
        if left:
            log.warning(
                "%d usage records stay in %s for the next start to deliver",
                left,
                self._outbox.path,
            )
