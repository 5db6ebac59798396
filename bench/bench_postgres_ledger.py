"""PostgreSQL ledger write rate: rows/s through the outbox, and into PostgreSQL.

A real PostgreSQL (``initdb`` + ``pg_ctl`` from tests/support/servers.py, fsync on) on
127.0.0.1, the outbox on disk (``--dir``, default the system temp dir: not tmpfs, or
fsync would cost nothing). For each ``--writers`` count, that many coroutines in one
uvloop process each write one realistic record (two tags, one attempt) after another
for ``--seconds``; then the ledger delivers what is left.

Reported per configuration:
- written rows/s: ``write`` returned (the record durable in the outbox, synchronous=FULL),
  with its latency p50/p99 and rows per outbox commit (group commit);
- delivered rows/s: rows in PostgreSQL over the time from the first write until the
  outbox was empty (the end-to-end rate the deliverer sustains);
- CPU per row: the process (every thread) over the rows.

    .venv/bin/python bench/bench_postgres_ledger.py [--seconds 3] [--writers 1 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.servers

from llmgateway_server.storage.base import AttemptRecord, UsageRecord
from llmgateway_server.storage.postgres import PostgresLedger, migrate

from tests.support.servers import PostgresServer


def _record(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant="acme",
        route="default",
        outcome="success",
        finished_at_unix_s=time.time(),
        key_prefix="lgw_4f2a",
        key_id="key-1",
        provider="openai",
        upstream_model="gpt-4.1-mini",
        tags={"team": "search", "env": "prod"},
        input_tokens=1200,
        output_tokens=300,
        cost_nano_usd=1_234_567,
        price_version="2026-11",
        finish_reason="STOP",
        attempt_count=1,
        latency_s=0.8,
        time_to_first_token_s=0.2,
        attempts=(
            AttemptRecord("openai", "gpt-4.1-mini", "SUCCESS", 0.8, 1200, 300, 0, 1_234_567),
        ),
    )


async def _count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM usage_calls")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _run(url: str, outbox: Path, writers: int, seconds: float) -> dict[str, Any]:
    ledger = await PostgresLedger.open(url, outbox, poll_s=0.05)
    before = await _count(url)
    latencies: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    commits0 = ledger.outbox_commits
    deadline = t0 + seconds

    async def writer(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await ledger.write(_record(f"{writers}-{w}-{n}"))
            latencies.append(time.perf_counter() - start)
            n += 1

    await asyncio.gather(*(writer(w) for w in range(writers)))
    written_s = time.perf_counter() - t0
    commits = ledger.outbox_commits - commits0
    while True:  # polled: the outbox count is the only signal of an empty outbox
        if not await ledger.pending():
            break
        await asyncio.sleep(0.005)
    delivered_s = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await ledger.aclose()
    rows = len(latencies)
    assert await _count(url) - before == rows, "every written row is in PostgreSQL"
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "writers": writers,
        "rows": rows,
        "written_rows_s": rows / written_s,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "rows_per_commit": rows / max(commits, 1),
        "delivered_rows_s": rows / delivered_s,
        "cpu_us_per_row": cpu / rows * 1e6,
    }


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    with PostgresServer(fsync=True) as server, tempfile.TemporaryDirectory(dir=args.dir) as d:
        await migrate(server.url)
        results = []
        for writers in args.writers:
            results.append(
                await _run(server.url, Path(d) / f"outbox-{writers}.db", writers, args.seconds)
            )
        return results


def main() -> None:
    """Run every configuration and print one table row per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--dir", default=None, help="where the outbox file goes")
    results = uvloop.run(_main(parser.parse_args()))
    print(
        "| writers | written rows/s | write p50 ms | write p99 ms | rows/commit "
        "| delivered rows/s | CPU µs/row |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['writers']} | {r['written_rows_s']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['rows_per_commit']:.1f} "
            f"| {r['delivered_rows_s']:,.0f} | {r['cpu_us_per_row']:.0f} |"
        )


if __name__ == "__main__":
    main()
