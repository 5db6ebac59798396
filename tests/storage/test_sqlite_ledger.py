"""The SQLite usage ledger: every field kept, one row per request_id, writes durable when
they return (even if the process is killed right after), commits shared, reports grouped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from llmgateway_server.pipeline.budget import ledger_spend, periods_at
from llmgateway_server.storage.base import (
    AttemptRecord,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageRow,
)
from llmgateway_server.storage.sqlite import SqliteDatabase, SqliteLedger

REPO = Path(__file__).resolve().parents[2]
DAY1 = 1_796_169_600.0  # 2026-12-02T00:00:00Z
DAY2 = DAY1 + 86_400  # 2026-12-03


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    db = await SqliteDatabase.open(tmp_path / "ledger.db")
    ledger = SqliteLedger(db)
    yield ledger
    await ledger.aclose()


def _record(request_id: str, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "tenant": "acme",
        "route": "default",
        "outcome": "success",
        "finished_at_unix_s": DAY1 + 60,
    }
    values.update(fields)
    return UsageRecord(request_id, **values)  # type: ignore[arg-type]


async def test_a_record_reads_back_with_every_field_tags_and_attempts(
    ledger: SqliteLedger,
) -> None:
    record = UsageRecord(
        request_id="req-1",
        tenant="acme",
        route="smart",
        outcome="success",
        finished_at_unix_s=DAY1 + 12.5,
        key_prefix="lgw_4f2a",
        key_id="key-7",
        provider="anthropic",
        upstream_model="claude-x",
        tags={"team": "search", "env": "prod"},
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
            AttemptRecord("openai", "gpt-x", "TRANSIENT", 0.5, 1200, 10, 0, 1_000, True),
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
                reasoning_tokens=120,
                image_input_tokens=765,
            ),
        ),
    )
    await ledger.write(record)
    assert await ledger.get("req-1") == record
    assert await ledger.get("req-2") is None


async def test_cache_write_reasoning_and_image_tokens_are_kept_per_call_and_per_attempt(
    ledger: SqliteLedger, tmp_path: Path
) -> None:
    attempts = (
        AttemptRecord("openai", "o-x", "TRANSIENT", 0.1, 10, 7, 0, 5, reasoning_tokens=5),
        AttemptRecord(
            "anthropic",
            "claude-x",
            "SUCCESS",
            0.2,
            30,
            9,
            100,
            50,
            cache_write_tokens=400,
            cache_write_1h_tokens=300,
            reasoning_tokens=2,
            image_input_tokens=25,
        ),
    )
    record = _record(
        "parts",
        input_tokens=40,
        output_tokens=16,
        cached_input_tokens=100,
        cache_write_tokens=400,
        cache_write_1h_tokens=300,
        reasoning_tokens=7,
        image_input_tokens=25,
        cost_nano_usd=55,
        attempts=attempts,
    )
    await ledger.write(record)
    assert await ledger.get("parts") == record
    # In their own columns, not only in the record read back.
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as conn:
        call = conn.execute(
            "SELECT cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, "
            "image_input_tokens FROM usage_calls WHERE request_id = 'parts'"
        ).fetchone()
        per_attempt = conn.execute(
            "SELECT cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, "
            "image_input_tokens FROM usage_attempts ORDER BY seq"
        ).fetchall()
    assert call == (400, 300, 7, 25)
    assert per_attempt == [(0, 0, 5, 0), (400, 300, 2, 25)]


async def test_usage_sums_cache_write_reasoning_and_image_tokens(ledger: SqliteLedger) -> None:
    await ledger.write(
        _record(
            "a",
            input_tokens=10,
            cached_input_tokens=100,
            cache_write_tokens=400,
            cache_write_1h_tokens=300,
            image_input_tokens=5,
            cost_nano_usd=1,
        )
    )
    await ledger.write(
        _record("b", output_tokens=20, reasoning_tokens=12, cache_write_tokens=8, cost_nano_usd=2)
    )
    await ledger.write(_record("c", tenant="zeta", cache_write_tokens=1, reasoning_tokens=3))
    rows = await ledger.usage(UsageQuery(DAY1, DAY2))
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
    assert rows[0].prompt_tokens == 10 + 100 + 408


async def test_the_first_record_of_a_request_id_stands(ledger: SqliteLedger) -> None:
    attempts = (AttemptRecord("p", "m", "SUCCESS"),)
    first = _record("dup", cost_nano_usd=5, tags={"a": "1"}, attempts=attempts)
    await ledger.write(first)
    await ledger.write(_record("dup", cost_nano_usd=9, tags={"b": "2"}, outcome="failed"))
    # Concurrent replays (two processes finishing the same request) change nothing either.
    await asyncio.gather(*(ledger.write(_record("dup", cost_nano_usd=i)) for i in range(20)))
    assert await ledger.get("dup") == first
    rows = await ledger.usage(UsageQuery(DAY1, DAY2))
    assert rows == [UsageRow({"tenant": "acme"}, 1, 0, 0, 0, 5)]


async def test_budget_counters_rebuilt_from_the_ledger_count_every_prompt_token(
    ledger: SqliteLedger,
) -> None:
    # A budget store that lost its counters is given the ledger's sums: the token
    # dimension counts cache reads and cache writes as prompt tokens, as settle does.
    periods = periods_at(DAY1 + 3600)
    await ledger.write(
        _record(
            "r",
            key_id="key-1",
            input_tokens=10,
            cached_input_tokens=100,
            cache_write_tokens=400,
            cache_write_1h_tokens=300,  # part of the 400
            output_tokens=20,
            reasoning_tokens=15,  # part of the 20
            image_input_tokens=5,  # part of the 10
            cost_nano_usd=7,
        )
    )
    spent = await ledger_spend(ledger, periods)
    assert spent[("acme", "tenant", "acme", "day", periods.day)] == (7, 530)
    assert spent[("acme", "key", "key-1", "month", periods.month)] == (7, 530)


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(tmp_path / "group.db")
    grouped = SqliteLedger(db)
    await asyncio.gather(*(grouped.write(_record(f"r{i}")) for i in range(200)))
    commits = db.commits
    await grouped.aclose()
    # One commit per write would be 200; the writer takes everything queued at once.
    assert commits <= 20
    with contextlib.closing(sqlite3.connect(tmp_path / "group.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM usage_calls").fetchone() == (200,)


async def test_usage_sums_groups_and_orders_over_a_half_open_range(ledger: SqliteLedger) -> None:
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
    # A call without the tag is grouped under "".
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


async def test_grouping_by_tag_needs_the_tag_name(ledger: SqliteLedger) -> None:
    with pytest.raises(ValueError, match="tag_name"):
        await ledger.usage(UsageQuery(DAY1, DAY2, group_by=("tag",)))


async def test_a_closed_ledger_refuses_writes_as_unavailable(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(tmp_path / "closed.db")
    ledger = SqliteLedger(db)
    await ledger.aclose()
    with pytest.raises(StoreUnavailable):
        await ledger.write(_record("late"))


async def test_a_row_is_there_when_the_writer_is_killed_right_after_write_returned(
    tmp_path: Path,
) -> None:
    path = tmp_path / "killed.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.storage.sqlite_workers",
        "write-until-killed",
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    returned: list[str] = []
    try:
        while len(returned) < 400:  # kill it mid-flight, with writes in progress
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert line, "the writer exited early"
            returned.append(line.decode().strip())
    finally:
        child.send_signal(signal.SIGKILL)
    rest = await child.stdout.read()  # ids it reported before it died
    returned += rest.decode().split()
    assert await child.wait() == -signal.SIGKILL

    with contextlib.closing(sqlite3.connect(path)) as conn:
        stored = {r for (r,) in conn.execute("SELECT request_id FROM usage_calls")}
    missing = [r for r in returned if r not in stored]
    assert missing == []
    assert len(stored) >= len(returned) >= 400
