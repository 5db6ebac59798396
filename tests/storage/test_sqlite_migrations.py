"""SQLite schema migrations: a fresh file, a re-run, an upgrade, a failed step, a file
newer than the code, and several processes starting on one fresh file at once."""

from __future__ import annotations

import contextlib
import sqlite3
from importlib import resources
from pathlib import Path

import pytest
from llmgateway_server import cli
from llmgateway_server.storage import postgres
from llmgateway_server.storage.base import (
    AttemptRecord,
    SchemaTooNew,
    UsageQuery,
    UsageRecord,
    UsageRow,
)
from llmgateway_server.storage.sqlite import (
    SCHEMA_VERSION,
    SqliteDatabase,
    SqliteLedger,
    migrate_file,
)
from llmgateway_server.storage.sqlite.migrations import MIGRATIONS, Migration

from tests.storage import sqlite_workers
from tests.support.servers import PostgresServer


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def _versions(path: Path) -> list[object]:
    return [v for (v,) in _query(path, "SELECT version FROM schema_version ORDER BY 1")]


def _tables(path: Path) -> set[object]:
    return {n for (n,) in _query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_fresh_file_is_created_in_a_new_directory_and_migrated_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sub" / "llmgateway.db"
    assert migrate_file(path) == SCHEMA_VERSION
    assert _versions(path) == list(range(1, SCHEMA_VERSION + 1))
    assert {"usage_calls", "budget_counters", "budget_reservations", "tenants"} <= _tables(path)
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]


async def test_rerun_keeps_the_version_and_the_data(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db = await SqliteDatabase.open(path)
    ledger = SqliteLedger(db)
    await ledger.write(UsageRecord("r1", "acme", "default", "success", 10.0, cost_nano_usd=7))
    await ledger.aclose()

    assert migrate_file(path) == SCHEMA_VERSION
    db = await SqliteDatabase.open(path)
    assert db.schema_version == SCHEMA_VERSION
    ledger = SqliteLedger(db)
    record = await ledger.get("r1")
    await ledger.aclose()
    assert record is not None
    assert record.cost_nano_usd == 7
    assert _versions(path) == list(range(1, SCHEMA_VERSION + 1))  # each step applied once


def test_an_older_file_is_upgraded_step_by_step(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    one = Migration(1, "a", ("CREATE TABLE a (x INTEGER)", "INSERT INTO a VALUES (1)"))
    two = Migration(2, "b", ("CREATE TABLE b (x INTEGER)",))
    assert migrate_file(path, migrations=(one,)) == 1
    assert migrate_file(path, migrations=(one, two)) == 2
    assert _versions(path) == [1, 2]
    assert _query(path, "SELECT x FROM a") == [(1,)]  # step 1 was not run again


def test_a_file_made_by_the_first_schema_gets_every_later_step(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    assert migrate_file(path, migrations=MIGRATIONS[:1]) == 1
    assert migrate_file(path) == SCHEMA_VERSION
    indexes = {n for (n,) in _query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "budget_reservations_created" in indexes  # step 2: what prune() searches by


async def test_a_version_3_file_gets_the_token_part_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    assert migrate_file(path, migrations=MIGRATIONS[:3]) == 3
    # A call and its attempt as the version-3 gateway wrote them.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO usage_calls (id, request_id, tenant, key_prefix, key_id, route, "
            "provider, upstream_model, outcome, finished_at_unix_s, input_tokens, "
            "output_tokens, cached_input_tokens, cost_nano_usd, price_version, "
            "usage_estimated, streaming, error_reason, finish_reason, attempt_count, "
            "trimmed_message_count, latency_s, time_to_first_token_s, guardrails) VALUES "
            "(1, 'old', 'acme', '', '', 'default', 'p', 'm', 'success', 10.0, 5, 6, 7, 8, "
            "'v', 0, 0, '', 'stop', 1, 0, 0.5, NULL, '{}')"
        )
        conn.execute(
            "INSERT INTO usage_attempts VALUES (1, 0, 'p', 'm', 'SUCCESS', 0.5, 5, 6, 7, 8, 0)"
        )

    assert migrate_file(path) == SCHEMA_VERSION
    assert _versions(path) == list(range(1, SCHEMA_VERSION + 1))
    db = await SqliteDatabase.open(path)
    ledger = SqliteLedger(db)
    try:
        old = await ledger.get("old")
        new = UsageRecord(
            "new",
            "acme",
            "default",
            "success",
            11.0,
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
        assert await ledger.get("new") == new
        rows = await ledger.usage(UsageQuery(0, 60))
    finally:
        await ledger.aclose()
    assert old == UsageRecord(
        "old",
        "acme",
        "default",
        "success",
        10.0,
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
    )  # the new counts of a row written before the step read back as 0
    assert rows == [UsageRow({"tenant": "acme"}, 2, 6, 6, 7, 8, 40, 30, 20, 1)]


def test_a_failing_step_is_rolled_back_whole_and_the_earlier_steps_stay(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    one = Migration(1, "a", ("CREATE TABLE a (x INTEGER)",))
    bad = Migration(
        2,
        "b, then a duplicate key",
        ("CREATE TABLE b (x PRIMARY KEY)", "INSERT INTO b VALUES (1)", "INSERT INTO b VALUES (1)"),
    )
    with pytest.raises(sqlite3.IntegrityError):
        migrate_file(path, migrations=(one, bad))
    assert _versions(path) == [1]
    assert "a" in _tables(path)
    assert "b" not in _tables(path)  # the step's first statement was undone with it


async def test_a_file_newer_than_the_code_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    migrate_file(path)
    newer = SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (newer,))

    with pytest.raises(SchemaTooNew) as refused:
        migrate_file(path)
    message = str(refused.value)
    assert f"schema version {newer}" in message
    assert f"gateway's {SCHEMA_VERSION}" in message
    assert str(path) in message
    with pytest.raises(SchemaTooNew):
        await SqliteDatabase.open(path)
    assert _versions(path)[-1] == newer  # nothing was touched


def test_four_processes_starting_on_one_fresh_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    ctx = sqlite_workers.processes()
    barrier = ctx.Barrier(4)
    workers = [
        ctx.Process(target=sqlite_workers.migrate_at_once, args=(str(path), i, barrier))
        for i in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert _versions(path) == list(range(1, SCHEMA_VERSION + 1))
    ids = sorted(str(r) for (r,) in _query(path, "SELECT request_id FROM usage_calls"))
    assert ids == [f"start-{i}" for i in range(4)]


def _config_with_file(tmp_path: Path, db: Path, extra: str = "") -> Path:
    """The embedded default config, with its SQLite file at ``db`` (and ``extra`` lines
    of ``storage:``)."""
    default = resources.files("llmgateway_server").joinpath("default.yaml").read_text()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"{default}\nstorage:\n  url: sqlite:///{db}\n{extra}")
    return config


def test_llmgateway_migrate_creates_the_configured_file_and_prints_its_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state" / "llmgateway.db"
    assert cli.main(["migrate", "--config", str(_config_with_file(tmp_path, db))]) == 0
    assert capsys.readouterr().out == f"sqlite {db}: schema version {SCHEMA_VERSION}\n"
    assert _versions(db) == list(range(1, SCHEMA_VERSION + 1))
    assert cli.main(["migrate", "--config", str(_config_with_file(tmp_path, db))]) == 0


def test_llmgateway_migrate_refuses_a_newer_file_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "llmgateway.db"
    migrate_file(db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'newer', 0)", (SCHEMA_VERSION + 1,))
    assert cli.main(["migrate", "--config", str(_config_with_file(tmp_path, db))]) == 1
    err = capsys.readouterr().err
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this gateway's {SCHEMA_VERSION}" in err


def test_llmgateway_migrate_also_migrates_the_postgresql_ledger_named_by_a_variable(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    postgres_server: PostgresServer,
) -> None:
    monkeypatch.setenv("TEST_LEDGER_URL", postgres_server.create_database("ledger"))
    db = tmp_path / "llmgateway.db"
    config = _config_with_file(tmp_path, db, "  ledger_url_env: TEST_LEDGER_URL\n")
    for _ in range(2):  # and again: nothing left to do
        assert cli.main(["migrate", "--config", str(config)]) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"sqlite {db}: schema version {SCHEMA_VERSION}",
            f"postgresql (storage.ledger_url): schema version {postgres.LATEST_VERSION}",
        ]
