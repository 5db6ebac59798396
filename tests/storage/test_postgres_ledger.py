"""The PostgreSQL ledger against a real PostgreSQL: every field kept, one row per
request_id whichever replica wrote it and however often it was delivered, writes durable
in the local outbox before they return (PostgreSQL up, down, stopped mid-load, or the
writer killed), reports grouped in PostgreSQL with the outbox counted once; migrations
numbered, applied once by concurrent replicas, refused when newer than the code."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import psycopg
import pytest
from llmgateway_server.storage.base import (
    AttemptRecord,
    SchemaTooNew,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageRow,
)
from llmgateway_server.storage.postgres import (
    LATEST_VERSION,
    MIGRATIONS,
    Outbox,
    PostgresLedger,
    PostgresUsageReader,
    migrate,
    outbox_path_for,
)
from llmgateway_server.storage.postgres.migrations import Migration
from llmgateway_server.storage.postgres.outbox import decode_record, encode_record

from tests.support.servers import (  # noqa: F401 (postgres_server: a fixture)
    PostgresServer,
    ServerMissing,
    postgres_server,
)

DAY1 = 1_796_169_600.0  # 2026-12-02T00:00:00Z
DAY2 = DAY1 + 86_400  # 2026-12-03
# Generous: a loaded CI machine must never make these fail; they bound waits, never
# measure anything.
DELIVERY_BOUND_S = 60.0


def _record(request_id: str, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "tenant": "acme",
        "route": "default",
        "outcome": "success",
        "finished_at_unix_s": DAY1 + 60,
    }
    values.update(fields)
    return UsageRecord(request_id, **values)  # type: ignore[arg-type]


def _full_record(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant="acme",
        route="smart",
        outcome="success",
        finished_at_unix_s=DAY1 + 12.123456789,  # not a whole microsecond: kept exactly
        key_prefix="lgw_4f2a",
        key_id="key-7",
        provider="anthropic",
        upstream_model="claude-x",
        tags={"team": "search", "env": "prod", "ünï": "cødé"},
        guardrails={"EMAIL:redact:output": 2, "CARD:block:input": 1},
        input_tokens=1200,
        output_tokens=345,
        cached_input_tokens=1000,
        cache_write_tokens=2048,
        cache_write_1h_tokens=1024,
        reasoning_tokens=120,
        image_input_tokens=765,
        cost_nano_usd=9_876_543_210,
        price_version="2026-11",
        usage_estimated=True,
        streaming=True,
        error_reason="",
        finish_reason="STOP",
        attempt_count=2,
        trimmed_message_count=3,
        latency_s=1.25,
        time_to_first_token_s=0.4,
        attempts=(
            AttemptRecord(
                "openai", "gpt-x", "TRANSIENT", 0.5, 1200, 10, 0, 1_000, True, reasoning_tokens=4
            ),
            AttemptRecord(
                "anthropic",
                "claude-x",
                "SUCCESS",
                0.7,
                1200,
                335,
                1000,
                9_876_542_210,
                cache_write_tokens=2048,
                cache_write_1h_tokens=1024,
                reasoning_tokens=116,
                image_input_tokens=765,
            ),
        ),
    )


async def _scalar(url: str, sql: str, *params: object) -> object:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DELIVERY_BOUND_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DELIVERY_BOUND_S} s: {what}")
        await asyncio.sleep(0.02)


async def _delivered(ledger: PostgresLedger) -> None:
    async def empty() -> bool:
        return await ledger.pending() == 0

    await _eventually(empty, "the outbox is empty")


_databases = itertools.count()


@pytest.fixture
def empty_url(shared_server: PostgresServer) -> str:
    """A new, empty database on the shared server."""
    return shared_server.create_database(f"ledger_{next(_databases)}")


@pytest.fixture
async def url(empty_url: str) -> str:
    """A new, migrated database on the shared server."""
    await migrate(empty_url)
    return empty_url


async def _migrated(server: PostgresServer) -> str:
    await migrate(server.url)
    return server.url


@pytest.fixture
async def ledger(url: str, tmp_path: Path) -> AsyncIterator[PostgresLedger]:
    ledger = await PostgresLedger.open(url, tmp_path / "outbox.db", poll_s=0.1)
    yield ledger
    await ledger.aclose()


# -- migrations ---------------------------------------------------------------------------


async def test_migrate_applies_every_step_once_and_then_changes_nothing(
    empty_url: str,
) -> None:
    url = empty_url
    assert await migrate(url) == LATEST_VERSION == len(MIGRATIONS)
    assert await migrate(url) == LATEST_VERSION
    versions = await _scalar(url, "SELECT array_agg(version ORDER BY version) FROM schema_version")
    assert versions == list(range(1, LATEST_VERSION + 1))


async def test_replicas_migrating_at_once_apply_each_step_once(empty_url: str) -> None:
    # Without the advisory lock, concurrent CREATE TABLEs fail on each other.
    results = await asyncio.gather(*(migrate(empty_url) for _ in range(8)))
    assert results == [LATEST_VERSION] * 8
    assert await _scalar(empty_url, "SELECT count(*) FROM schema_version") == LATEST_VERSION


async def test_a_schema_newer_than_the_code_refuses_to_start(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO schema_version (version, description) VALUES (%s, 'from the future')",
            (LATEST_VERSION + 1,),
        )
    with pytest.raises(SchemaTooNew, match=f"version {LATEST_VERSION + 1}"):
        await migrate(url)


async def test_a_failing_step_is_rolled_back_whole_and_the_version_stays(url: str) -> None:
    bad = Migration(
        LATEST_VERSION + 1,
        "half a step",
        ("CREATE TABLE half_done (x int)", "SELECT no_such_function()"),
    )
    with pytest.raises(psycopg.errors.UndefinedFunction):
        await migrate(url, steps=(*MIGRATIONS, bad))
    assert await _scalar(url, "SELECT max(version) FROM schema_version") == LATEST_VERSION
    assert await _scalar(url, "SELECT to_regclass('half_done') IS NULL") is True


async def test_a_version_3_database_gets_the_token_part_columns_and_keeps_its_rows(
    empty_url: str, tmp_path: Path
) -> None:
    url = empty_url
    assert await migrate(url, steps=MIGRATIONS[:3]) == 3
    # A call and its attempt as the version-3 gateway's delivery wrote them.
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO usage_calls (request_id, tenant, route, outcome, finished_at_unix_s, "
            "key_prefix, key_id, provider, upstream_model, tags, input_tokens, output_tokens, "
            "cached_input_tokens, cost_nano_usd, price_version, usage_estimated, streaming, "
            "error_reason, finish_reason, attempt_count, trimmed_message_count, latency_s, "
            "time_to_first_token_s, guardrails) VALUES ('old', 'acme', 'default', 'success', "
            "%s, '', '', 'p', 'm', '{}', 5, 6, 7, 8, 'v', false, false, '', 'stop', 1, 0, 0.5, "
            "NULL, '{}')",
            (DAY1 + 1,),
        )
        await conn.execute(
            "INSERT INTO usage_attempts VALUES "
            "('old', 0, 'p', 'm', 'SUCCESS', 0.5, 5, 6, 7, 8, false)"
        )

    assert await migrate(url) == LATEST_VERSION
    versions = await _scalar(url, "SELECT array_agg(version ORDER BY version) FROM schema_version")
    assert versions == list(range(1, LATEST_VERSION + 1))
    ledger = await PostgresLedger.open(url, tmp_path / "outbox.db", poll_s=0.1)
    try:
        new = _record(
            "new",
            input_tokens=1,
            cache_write_tokens=40,
            cache_write_1h_tokens=30,
            reasoning_tokens=20,
            image_input_tokens=1,
            attempts=(
                AttemptRecord(
                    "p",
                    "m",
                    "SUCCESS",
                    input_tokens=1,
                    cache_write_tokens=40,
                    cache_write_1h_tokens=30,
                    reasoning_tokens=20,
                    image_input_tokens=1,
                ),
            ),
        )
        await ledger.write(new)
        await _delivered(ledger)
        old = await ledger.get("old")
        assert await ledger.get("new") == new
        rows = await ledger.usage(UsageQuery(DAY1, DAY2))
    finally:
        await ledger.aclose()
    # The new counts of a row written before the step read back as 0.
    assert old == _record(
        "old",
        finished_at_unix_s=DAY1 + 1,
        provider="p",
        upstream_model="m",
        input_tokens=5,
        output_tokens=6,
        cached_input_tokens=7,
        cost_nano_usd=8,
        price_version="v",
        finish_reason="stop",
        attempt_count=1,
        latency_s=0.5,
        attempts=(AttemptRecord("p", "m", "SUCCESS", 0.5, 5, 6, 7, 8),),
    )
    assert rows == [UsageRow({"tenant": "acme"}, 2, 6, 6, 7, 8, 40, 30, 20, 1)]


def test_migration_steps_are_numbered_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


async def test_migrate_without_postgresql_is_store_unavailable(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    postgres_server.stop()
    with pytest.raises(StoreUnavailable, match="migrate"):
        await migrate(postgres_server.url, timeout_s=5)


# -- writing and reading back -------------------------------------------------------------


async def test_a_record_reads_back_from_postgresql_with_every_field(
    ledger: PostgresLedger, url: str
) -> None:
    record = _full_record("req-1")
    await ledger.write(record)
    await _delivered(ledger)
    assert await _scalar(url, "SELECT count(*) FROM usage_calls WHERE request_id = 'req-1'") == 1
    assert await ledger.get("req-1") == record
    assert await ledger.get("req-2") is None


_PART_COLUMNS = "cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, image_input_tokens"


async def _all(url: str, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql)
        return list(await cur.fetchall())


async def test_cache_write_reasoning_and_image_tokens_reach_their_columns_and_read_back(
    ledger: PostgresLedger, url: str
) -> None:
    record = _full_record("parts")
    await ledger.write(record)
    assert await ledger.get("parts") == record  # from the outbox, before delivery
    await _delivered(ledger)
    assert await ledger.get("parts") == record  # from PostgreSQL
    assert await _all(url, f"SELECT {_PART_COLUMNS} FROM usage_calls") == [(2048, 1024, 120, 765)]
    assert await _all(
        url, f"SELECT {_PART_COLUMNS} FROM usage_attempts ORDER BY attempt_index"
    ) == [(0, 0, 4, 0), (2048, 1024, 116, 765)]


async def test_the_first_record_of_a_request_id_stands(ledger: PostgresLedger, url: str) -> None:
    first = _record("dup", cost_nano_usd=5, attempts=(AttemptRecord("p", "m", "SUCCESS"),))
    await ledger.write(first)
    await ledger.write(_record("dup", cost_nano_usd=9, outcome="failed"))  # still in outbox
    await _delivered(ledger)
    await ledger.write(_record("dup", cost_nano_usd=7))  # after delivery
    await _delivered(ledger)
    assert await ledger.get("dup") == first
    assert await _scalar(url, "SELECT count(*) FROM usage_attempts") == 1


async def test_replicas_with_their_own_outboxes_write_one_row_per_request_id(
    url: str, tmp_path: Path
) -> None:
    a = await PostgresLedger.open(url, tmp_path / "a.db", poll_s=0.1)
    b = await PostgresLedger.open(url, tmp_path / "b.db", poll_s=0.1)
    attempts = (AttemptRecord("p", "m", "TRANSIENT"), AttemptRecord("p", "m", "SUCCESS"))
    # Both replicas finish the same 100 requests at once (a retried client, say).
    await asyncio.gather(
        *(
            ledger.write(_record(f"r{i}", cost_nano_usd=cost, attempts=attempts))
            for i in range(100)
            for ledger, cost in ((a, 1), (b, 2))
        )
    )
    await _delivered(a)
    await _delivered(b)
    await a.aclose()
    await b.aclose()
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 100
    # Only the call that was inserted brought its attempts: never both replicas'.
    assert await _scalar(url, "SELECT count(*) FROM usage_attempts") == 200
    assert (
        await _scalar(
            url,
            "SELECT count(*) FROM usage_calls c WHERE (SELECT count(*) FROM usage_attempts a "
            "WHERE a.request_id = c.request_id) <> 2",
        )
        == 0
    )


async def test_a_batch_delivered_again_after_a_lost_acknowledgement_changes_nothing(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    # PostgreSQL down: the records wait in the outbox; copy it as it is then.
    postgres_server.stop()
    writer = await PostgresLedger.open(url, tmp_path / "outbox.db", close_timeout_s=0.5)
    for i in range(20):
        await writer.write(_record(f"r{i}", attempts=(AttemptRecord("p", "m", "SUCCESS"),)))
    await writer.aclose()
    shutil.copy(tmp_path / "outbox.db", tmp_path / "copy.db")
    postgres_server.start()
    # The first ledger delivers and removes; the copy is what a process killed between
    # PostgreSQL's commit and the outbox's removal would find at its next start.
    for path in (tmp_path / "outbox.db", tmp_path / "copy.db"):
        ledger = await PostgresLedger.open(url, path, poll_s=0.1)
        await _delivered(ledger)
        await ledger.aclose()
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 20
    assert await _scalar(url, "SELECT count(*) FROM usage_attempts") == 20


async def test_writes_return_while_postgresql_is_down_and_are_delivered_when_it_is_back(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    ledger = await PostgresLedger.open(url, tmp_path / "outbox.db", retry_max_s=0.2, timeout_s=1.0)
    postgres_server.stop()
    await asyncio.gather(*(ledger.write(_record(f"r{i}")) for i in range(50)))
    assert await ledger.pending() == 50
    with pytest.raises(StoreUnavailable):
        await ledger.usage(UsageQuery(DAY1, DAY2))
    postgres_server.start()
    await _delivered(ledger)
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 50
    await ledger.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_postgresql_stopped_and_restarted_during_load_loses_and_doubles_nothing(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
    outage: str,
) -> None:
    url = await _migrated(postgres_server)
    ledger = await PostgresLedger.open(
        url, tmp_path / "outbox.db", batch_size=20, retry_max_s=0.5, poll_s=0.1
    )
    attempts = (AttemptRecord("p", "m", "TRANSIENT"), AttemptRecord("p", "m", "SUCCESS"))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(500):
        queue.put_nowait(i)
    down = asyncio.Event()

    async def writer() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if i >= 250:
                await down.wait()  # the second half is written during the outage
            await ledger.write(_record(f"r{i}", cost_nano_usd=i, attempts=attempts))

    async def outage_() -> None:
        async def some_delivered() -> bool:
            return await ledger.pending() < 250 and queue.qsize() < 500 - 150

        await _eventually(some_delivered, "deliveries before the outage")
        # "kill": SIGKILL mid-batch, so a commit can land without its acknowledgement.
        await asyncio.to_thread(postgres_server.stop if outage == "stop" else postgres_server.kill)
        down.set()
        await asyncio.sleep(2.0)  # down for a while, writes keep landing in the outbox
        await asyncio.to_thread(postgres_server.start)

    await asyncio.gather(outage_(), *(writer() for _ in range(32)))
    await _delivered(ledger)
    await ledger.aclose()
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 500
    assert await _scalar(url, "SELECT count(*) FROM usage_attempts") == 1000
    assert await _scalar(url, "SELECT sum(cost_nano_usd) FROM usage_calls") == sum(range(500))
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as outbox:
        assert outbox.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


_KILLED_WRITER = """
import asyncio, sys
from pathlib import Path
from llmgateway_server.storage.base import UsageRecord
from llmgateway_server.storage.postgres import PostgresLedger

async def main() -> None:
    ledger = await PostgresLedger.open(sys.argv[1], Path(sys.argv[2]))
    await ledger.write(UsageRecord("killed-1", "acme", "default", "success", float(sys.argv[3]),
                                   cost_nano_usd=42))
    print("written", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_record_written_before_kill_9_with_postgresql_down_is_delivered_later(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    postgres_server.stop()
    outbox_path = tmp_path / "outbox.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_WRITER,
        url,
        str(outbox_path),
        str(DAY1),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        async with asyncio.timeout(DELIVERY_BOUND_S):
            line = await child.stdout.readline()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert line == b"written\n"
    postgres_server.start()
    ledger = await PostgresLedger.open(url, outbox_path, poll_s=0.1)
    await _delivered(ledger)
    await ledger.aclose()
    assert await _scalar(url, "SELECT cost_nano_usd FROM usage_calls") == 42


async def test_aclose_delivers_what_is_waiting_when_postgresql_is_back(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    # A long retry delay: only aclose's own delivery can move these rows in time.
    ledger = await PostgresLedger.open(url, tmp_path / "outbox.db", retry_max_s=600)
    postgres_server.stop()
    await asyncio.gather(*(ledger.write(_record(f"r{i}")) for i in range(30)))
    postgres_server.start()
    await ledger.aclose()
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 30


async def test_aclose_returns_within_its_bound_when_postgresql_hangs(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    ledger = await PostgresLedger.open(
        url, tmp_path / "outbox.db", retry_max_s=600, timeout_s=1.0, close_timeout_s=1.0
    )
    postgres_server.pause()  # accepts connections, never answers
    try:
        await ledger.write(_record("stays"))
        async with asyncio.timeout(30):  # the bound is 1 s; 30 never flakes
            await ledger.aclose()
    finally:
        postgres_server.resume()
    outbox = await Outbox.open(tmp_path / "outbox.db")
    assert await outbox.count() == 1
    await outbox.aclose()


async def test_a_closed_ledger_refuses_writes_as_unavailable(ledger: PostgresLedger) -> None:
    await ledger.aclose()
    with pytest.raises(StoreUnavailable):
        await ledger.write(_record("late"))


async def test_a_record_postgresql_refuses_is_set_aside_and_the_rest_delivered(
    ledger: PostgresLedger, url: str, tmp_path: Path
) -> None:
    # PostgreSQL text cannot hold NUL, nor a bigint 2**70: those rows can never be
    # delivered. They are kept (written, then set aside), and block nothing behind them.
    await asyncio.gather(
        ledger.write(_record("nul", tags={"team": "a\x00b"})),
        ledger.write(_record("huge", cost_nano_usd=2**70)),
        *(ledger.write(_record(f"r{i}")) for i in range(10)),
    )
    await _delivered(ledger)
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 10
    outbox = await Outbox.open(tmp_path / "outbox.db")
    rejected = await outbox.rejected()
    await outbox.aclose()
    assert sorted(request_id for request_id, _ in rejected) == ["huge", "nul"]


async def test_processes_sharing_one_outbox_deliver_every_row_once(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "shared.db"
    workers = [await PostgresLedger.open(url, path, poll_s=0.1) for _ in range(3)]
    await asyncio.gather(
        *(w.write(_record(f"w{n}-{i}")) for n, w in enumerate(workers) for i in range(100))
    )
    for w in workers:
        await _delivered(w)
    for w in workers:
        await w.aclose()
    assert await _scalar(url, "SELECT count(*) FROM usage_calls") == 300


# -- the outbox ---------------------------------------------------------------------------


async def test_concurrent_writes_share_outbox_commits(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db")
    await asyncio.gather(*(outbox.append(_record(f"r{i}")) for i in range(200)))
    # One commit per write would be 200: a commit takes everything queued behind it.
    assert outbox.commits <= 20
    assert await outbox.count() == 200
    await outbox.aclose()


async def test_an_outbox_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew, match="format 99"):
        await Outbox.open(path)


async def test_an_unwritable_outbox_makes_write_unavailable(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", busy_timeout_s=0.1)
    # Another process holds the write lock for longer than the outbox waits for it.
    blocker = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="cannot be written"):
            await outbox.append(_record("r"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await outbox.append(_record("r"))  # the lock released, writes work again
    assert await outbox.count() == 1
    await outbox.aclose()


async def test_an_outbox_record_of_the_previous_gateway_is_delivered_with_zero_new_counts(
    ledger: PostgresLedger, url: str, tmp_path: Path
) -> None:
    # Written by a gateway whose records had no cache-write, reasoning or image counts:
    # a restart after the upgrade finds it in the outbox and delivers it.
    older = orjson.loads(encode_record(_record("older", input_tokens=3, cost_nano_usd=9)))
    for name in _PART_COLUMNS.split(", "):
        del older[name]
    older["attempts"] = [{"provider": "p", "upstream_model": "m", "outcome": "SUCCESS"}]
    assert decode_record(orjson.dumps(older)) == _record(
        "older", input_tokens=3, cost_nano_usd=9, attempts=(AttemptRecord("p", "m", "SUCCESS"),)
    )
    await ledger.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as db, db:
        db.execute(
            "INSERT INTO outbox (request_id, tenant, finished_at_unix_s, record) "
            "VALUES ('older', 'acme', ?, ?)",
            (DAY1 + 60, orjson.dumps(older)),
        )
    reopened = await PostgresLedger.open(url, tmp_path / "outbox.db", poll_s=0.1)
    try:
        await _delivered(reopened)
    finally:
        await reopened.aclose()
    assert await _all(url, f"SELECT input_tokens, {_PART_COLUMNS} FROM usage_calls") == [
        (3, 0, 0, 0, 0)
    ]
    assert await _all(url, f"SELECT {_PART_COLUMNS} FROM usage_attempts") == [(0, 0, 0, 0)]


def test_the_outbox_lives_beside_the_local_store() -> None:
    assert outbox_path_for(Path("data/llmgateway.db")) == Path("data/llmgateway.outbox.db")


# -- reports ------------------------------------------------------------------------------


async def test_usage_sums_groups_and_orders_over_a_half_open_range(
    ledger: PostgresLedger,
) -> None:
    rows = [
        _record("a", tenant="zeta", key_prefix="k_z", input_tokens=10, cost_nano_usd=100),
        _record(
            "b",
            tenant="acme",
            key_prefix="k_2",
            tags={"team": "ml"},
            output_tokens=7,
            cost_nano_usd=30,
            provider="openai",
            upstream_model="gpt-x",
            route="smart",
        ),
        _record(
            "c",
            tenant="acme",
            key_prefix="k_1",
            tags={"team": "ml"},
            cached_input_tokens=4,
            cost_nano_usd=20,
            provider="anthropic",
            upstream_model="claude-x",
        ),
        _record(
            "d",
            tenant="acme",
            key_prefix="k_1",
            tags={"team": "web"},
            cost_nano_usd=1,
            finished_at_unix_s=DAY2 + 5,
        ),
        _record("e", tenant="acme", key_prefix="k_1", finished_at_unix_s=DAY2 + 86_400),  # after
        _record("f", tenant="acme", key_prefix="k_1", finished_at_unix_s=DAY1 - 1),  # before
    ]
    for r in rows:
        await ledger.write(r)
    await _delivered(ledger)
    end = DAY2 + 86_400  # exclusive: "e" finished exactly then

    assert await ledger.usage(UsageQuery(DAY1, end)) == [
        UsageRow({"tenant": "acme"}, 3, 0, 7, 4, 51),
        UsageRow({"tenant": "zeta"}, 1, 10, 0, 0, 100),
    ]
    by_day = await ledger.usage(UsageQuery(DAY1, end, group_by=("day", "tenant")))
    assert [(r.group["day"], r.group["tenant"], r.calls) for r in by_day] == [
        ("2026-12-02", "acme", 2),
        ("2026-12-02", "zeta", 1),
        ("2026-12-03", "acme", 1),
    ]
    by_tag = await ledger.usage(UsageQuery(DAY1, end, group_by=("tag",), tag_name="team"))
    assert [(r.group["tag"], r.calls, r.cost_nano_usd) for r in by_tag] == [
        ("", 1, 100),
        ("ml", 2, 50),
        ("web", 1, 1),
    ]
    by_key = await ledger.usage(UsageQuery(DAY1, end, group_by=("key",), tenant="acme"))
    assert [(r.group, r.calls) for r in by_key] == [({"key": "k_1"}, 2), ({"key": "k_2"}, 1)]
    by_model = await ledger.usage(
        UsageQuery(DAY1, end, group_by=("route", "provider", "model"), tenant="acme")
    )
    assert [tuple(r.group.values()) for r in by_model] == [
        ("default", "", ""),
        ("default", "anthropic", "claude-x"),
        ("smart", "openai", "gpt-x"),
    ]
    assert await ledger.usage(UsageQuery(DAY1, end, tenant="nobody")) == []
    assert await ledger.usage(UsageQuery(DAY1, end, group_by=())) == [
        UsageRow({}, 4, 10, 7, 4, 151)
    ]
    with pytest.raises(ValueError, match="tag_name"):
        await ledger.usage(UsageQuery(DAY1, end, group_by=("tag",)))


async def test_usage_sums_cache_write_reasoning_and_image_tokens_delivered_or_waiting(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    ledger = await PostgresLedger.open(url, tmp_path / "delivered.db", poll_s=0.1)
    await ledger.write(
        _record(
            "d1",
            input_tokens=10,
            cached_input_tokens=100,
            cache_write_tokens=400,
            cache_write_1h_tokens=300,
            image_input_tokens=5,
            cost_nano_usd=1,
        )
    )
    await ledger.write(_record("d2", tenant="zeta", cache_write_tokens=1, reasoning_tokens=3))
    await _delivered(ledger)
    await ledger.aclose()
    postgres_server.stop()
    waiting = await PostgresLedger.open(url, tmp_path / "waiting.db", close_timeout_s=0.5)
    await waiting.write(
        _record("w1", output_tokens=20, reasoning_tokens=12, cache_write_tokens=8, cost_nano_usd=2)
    )
    await waiting.aclose()
    postgres_server.start()

    outbox = await Outbox.open(tmp_path / "waiting.db")  # read, never delivered
    reader = await PostgresUsageReader.open(url, outbox=outbox)
    try:
        rows = await reader.usage(UsageQuery(DAY1, DAY2))
    finally:
        await reader.aclose()
        await outbox.aclose()
    assert rows == [
        UsageRow(
            {"tenant": "acme"},
            calls=2,
            input_tokens=10,
            output_tokens=20,
            cached_input_tokens=100,
            cost_nano_usd=3,
            cache_write_tokens=408,
            cache_write_1h_tokens=300,
            reasoning_tokens=12,
            image_input_tokens=5,
        ),
        UsageRow({"tenant": "zeta"}, 1, 0, 0, 0, 0, cache_write_tokens=1, reasoning_tokens=3),
    ]


async def test_usage_counts_rows_still_in_the_outbox_once(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = await _migrated(postgres_server)
    # Delivered: d1, d2. Waiting in the outbox: w1, w2 (PostgreSQL was down), and d1
    # again (a copy of a row whose delivery was acknowledged late: counted once).
    ledger = await PostgresLedger.open(url, tmp_path / "delivered.db", poll_s=0.1)
    await ledger.write(_record("d1", cost_nano_usd=1, finished_at_unix_s=DAY1 + 1))
    await ledger.write(_record("d2", cost_nano_usd=2, tenant="zeta"))
    await _delivered(ledger)
    await ledger.aclose()
    postgres_server.stop()
    waiting = await PostgresLedger.open(url, tmp_path / "waiting.db", close_timeout_s=0.5)
    await waiting.write(_record("w1", cost_nano_usd=10, finished_at_unix_s=DAY2 + 1))
    await waiting.write(_record("w2", cost_nano_usd=20, tenant="zeta"))
    await waiting.write(_record("d1", cost_nano_usd=1, finished_at_unix_s=DAY1 + 1))
    await waiting.write(_record("late", cost_nano_usd=99, finished_at_unix_s=DAY2 + 86_400))
    await waiting.aclose()
    postgres_server.start()

    outbox = await Outbox.open(tmp_path / "waiting.db")  # read, never delivered
    reader = await PostgresUsageReader.open(url, outbox=outbox)
    try:
        assert await reader.usage(UsageQuery(DAY1, DAY2 + 86_400, group_by=("tenant", "day"))) == [
            UsageRow({"tenant": "acme", "day": "2026-12-02"}, 1, 0, 0, 0, 1),
            UsageRow({"tenant": "acme", "day": "2026-12-03"}, 1, 0, 0, 0, 10),
            UsageRow({"tenant": "zeta", "day": "2026-12-02"}, 2, 0, 0, 0, 22),
        ]
        assert await reader.usage(UsageQuery(DAY1, DAY2, tenant="zeta")) == [
            UsageRow({"tenant": "zeta"}, 2, 0, 0, 0, 22)
        ]
        assert await reader.get("w1") == _record(
            "w1", cost_nano_usd=10, finished_at_unix_s=DAY2 + 1
        )
    finally:
        await reader.aclose()
        await outbox.aclose()


async def test_usage_when_postgresql_hangs_is_unavailable_within_its_timeout(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    url = await _migrated(postgres_server)
    reader = await PostgresUsageReader.open(url, timeout_s=1.0)
    try:
        assert await reader.usage(UsageQuery(DAY1, DAY2)) == []
        postgres_server.pause()
        try:
            async with asyncio.timeout(30):  # the bound is 1 s; 30 never flakes
                with pytest.raises(StoreUnavailable, match="usage report"):
                    await reader.usage(UsageQuery(DAY1, DAY2))
        finally:
            postgres_server.resume()
    finally:
        await reader.aclose()
