"""Delivery of the ledger outbox to PostgreSQL: oldest rows first, in batches.

Each batch is one statement, so one transaction: the calls are inserted with ``ON
CONFLICT (request_id) DO NOTHING`` and the attempts only of the calls that statement
inserted. Rows leave the outbox only after that commit. A batch sent again (its commit's
acknowledgement was lost, or the process died before removing it) changes nothing.

PostgreSQL down: the batch stays, the deliverer retries with capped exponential backoff
and jitter on a connection of its own (no pool backoff between PostgreSQL coming back and
the next attempt). A row PostgreSQL refuses as data (a NUL byte, a number out of range)
is found by sending the batch's rows one by one, and set aside in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Mapping, Sequence

import orjson
import psycopg

from llmgateway_server.storage.base import UsageRecord
from llmgateway_server.storage.postgres.connection import (
    TRANSIENT,
    Connection,
    connect_timeout,
)
from llmgateway_server.storage.postgres.outbox import Outbox

log = logging.getLogger("llmgateway.storage")

# A record PostgreSQL refuses as data (or psycopg before sending it), or one JSON cannot
# carry (TypeError: an integer past 64 bits): sending it again cannot help.
REFUSED: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError, TypeError)

# PostgreSQL unreachable or not answering, or the outbox file busy or failing: the rows
# stay where they are, and the deliverer tries again.
_RETRYABLE: tuple[type[Exception], ...] = (*TRANSIENT, TimeoutError, sqlite3.Error)

# (column, PostgreSQL type) of usage_calls and usage_attempts, named as the records'
# fields (but an attempt's request_id and its index in the call's attempts).
CALL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"),
    ("tenant", "text"),
    ("route", "text"),
    ("outcome", "text"),
    ("finished_at_unix_s", "float8"),
    ("key_prefix", "text"),
    ("key_id", "text"),
    ("provider", "text"),
    ("upstream_model", "text"),
    ("tags", "jsonb"),
    ("input_tokens", "int8"),
    ("output_tokens", "int8"),
    ("cached_input_tokens", "int8"),
    ("cache_write_tokens", "int8"),
    ("cache_write_1h_tokens", "int8"),
    ("reasoning_tokens", "int8"),
    ("image_input_tokens", "int8"),
    ("cost_nano_usd", "int8"),
    ("price_version", "text"),
    ("usage_estimated", "bool"),
    ("streaming", "bool"),
    ("error_reason", "text"),
    ("finish_reason", "text"),
    ("attempt_count", "int4"),
    ("trimmed_message_count", "int4"),
    ("latency_s", "float8"),
    ("time_to_first_token_s", "float8"),
    ("guardrails", "jsonb"),
)
ATTEMPT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"),
    ("attempt_index", "int4"),
    ("provider", "text"),
    ("upstream_model", "text"),
    ("outcome", "text"),
    ("latency_s", "float8"),
    ("input_tokens", "int8"),
    ("output_tokens", "int8"),
    ("cached_input_tokens", "int8"),
    ("cost_nano_usd", "int8"),
    ("usage_estimated", "bool"),
    ("cache_write_tokens", "int8"),
    ("cache_write_1h_tokens", "int8"),
    ("reasoning_tokens", "int8"),
    ("image_input_tokens", "int8"),
)


def _insert_statement() -> str:
    calls = ", ".join(name for name, _ in CALL_COLUMNS)
    call_types = ", ".join(f"{name} {kind}" for name, kind in CALL_COLUMNS)
    attempts = ", ".join(name for name, _ in ATTEMPT_COLUMNS)
    attempt_values = ", ".join(
        "b.request_id"
        if name == "request_id"
        else "e.n - 1"
        if name == "attempt_index"
        else f"(e.value ->> '{name}')::{kind}"
        for name, kind in ATTEMPT_COLUMNS
    )
    # The batch is one JSON array of records (orjson writes it in C; PostgreSQL reads it
    # into rows), so a batch is one statement, one round trip, one transaction. The
    # attempts join the RETURNING of the calls' insert: a call that was there already (a
    # redelivery, another replica's row) adds no attempt.
    return f"""
        WITH batch AS (
            SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r({call_types}, attempts jsonb)
        ), inserted AS (
            INSERT INTO usage_calls ({calls})
            SELECT {calls} FROM batch
            ON CONFLICT (request_id) DO NOTHING
            RETURNING request_id
        )
        INSERT INTO usage_attempts ({attempts})
        SELECT {attempt_values}
        FROM batch AS b
        JOIN inserted USING (request_id)
        CROSS JOIN LATERAL jsonb_array_elements(b.attempts) WITH ORDINALITY AS e(value, n)
    """


_INSERT = _insert_statement()


def batch_json(records: Sequence[UsageRecord]) -> str:
    """The statement's parameter for ``records``: a JSON array of them, every field
    (callers pass at most one record per request_id). ``TypeError`` for a record JSON
    cannot carry (an integer past 64 bits, which no bigint column could hold either)."""
    return orjson.dumps(list(records), default=_tags_as_dict).decode()


def _tags_as_dict(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot send {type(value).__name__} in a usage record")


class Deliverer:
    """Moves outbox rows to PostgreSQL until cancelled (``run``), or once (``deliver``)."""

    def __init__(
        self,
        url: str,
        outbox: Outbox,
        *,
        batch_size: int = 500,
        timeout_s: float = 10.0,
        retry_min_s: float = 0.05,
        retry_max_s: float = 2.0,
        lease_s: float = 15.0,
        poll_s: float = 1.0,
        linger_s: float = 0.05,
    ) -> None:
        """Deliver ``outbox`` to ``url`` in batches of ``batch_size``, each bounded by
        ``timeout_s``; hold the file's drain lease for ``lease_s`` at a time."""
        self._url = url
        self._outbox = outbox
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._lease_s = lease_s
        self._poll_s = poll_s
        # Rows are durable in the outbox already: waiting a moment before delivering lets
        # a batch gather, so a trickle of writes is not one PostgreSQL round trip each.
        self._linger_s = linger_s
        self._conn: Connection | None = None
        self._lease_taken_at = -float("inf")

    async def run(self) -> None:
        """Deliver for as long as the task runs: ``linger_s`` after an append (so a batch
        can gather), and every ``poll_s`` for rows appended by other processes sharing
        the file; after a fault, again after a backoff of at most ``retry_max_s``."""
        delay = self._retry_min_s
        failing_since: float | None = None
        while True:
            self._outbox.appended.clear()
            try:
                if not await self._hold_lease():
                    await self._idle(self._lease_s / 3)  # another process delivers
                    continue
                moved = await self.deliver()
            except _RETRYABLE as exc:
                # PostgreSQL unreachable, or the outbox file busy or failing: the rows
                # stay where they are; retry.
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("ledger delivery to PostgreSQL failing, will retry: %s", exc)
                await self._drop_connection()
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self._retry_max_s)
                continue
            except psycopg.Error as exc:
                # PostgreSQL answers but refuses the statement for every row alike (a
                # missing table: not migrated yet?). Loud, and retried slowly.
                log.error("ledger delivery to PostgreSQL refused: %s", exc)
                await self._drop_connection()
                await asyncio.sleep(self._retry_max_s)
                continue
            if failing_since is not None:
                log.warning(
                    "ledger delivery to PostgreSQL resumed after %.1f s",
                    time.monotonic() - failing_since,
                )
                failing_since = None
            delay = self._retry_min_s
            if moved < self._batch_size:  # caught up: wait for more, then let it gather
                await self._idle(self._poll_s)
                await asyncio.sleep(self._linger_s)

    async def _hold_lease(self) -> bool:
        # Renewed at a third of its length, so it never lapses while this process lives.
        if time.monotonic() - self._lease_taken_at < self._lease_s / 3:
            return True
        if await self._outbox.take_lease(self._lease_s):
            self._lease_taken_at = time.monotonic()
            return True
        return False

    async def _idle(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._outbox.appended.wait()
        except TimeoutError:
            return

    async def deliver(self) -> int:
        """Deliver (or set aside) up to one batch of the oldest rows; how many left the
        outbox (0: it was empty). PostgreSQL faults propagate; the rows stay."""
        rows = await self._outbox.oldest(self._batch_size)
        if not rows:
            return 0
        good: list[tuple[int, UsageRecord]] = []
        for seq, record in rows:
            if isinstance(record, UsageRecord):
                good.append((seq, record))
            else:
                log.error("ledger outbox row %d cannot be decoded: set aside", seq)
                await self._outbox.reject(seq, "cannot be decoded")
        if good:
            try:
                await self._send([record for _, record in good])
            except REFUSED:
                await self._send_one_by_one(good)
            else:
                await self._outbox.remove([seq for seq, _ in good])
        return len(rows)

    async def _send_one_by_one(self, rows: Sequence[tuple[int, UsageRecord]]) -> None:
        for seq, record in rows:
            try:
                await self._send([record])
            except REFUSED as exc:
                log.error(
                    "PostgreSQL refused usage record %r: set aside in the outbox: %s",
                    record.request_id,
                    exc,
                )
                await self._outbox.reject(seq, str(exc))
            else:
                await self._outbox.remove([seq])

    async def _send(self, records: Sequence[UsageRecord]) -> None:
        payload = batch_json(records)
        async with asyncio.timeout(self._timeout_s):
            conn = await self._connection()
            await conn.execute(_INSERT, (payload,))  # autocommit: committed when it returns

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=connect_timeout(self._timeout_s)
            )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def aclose(self) -> None:
        """Close the connection (cancel ``run`` first)."""
        await self._drop_connection()
