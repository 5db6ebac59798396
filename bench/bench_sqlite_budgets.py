"""What budgets and rate limits cost per call on SQLite: take + reserve + settle.

One process, uvloop, a fresh file: each call takes from its tenant's rate-limit buckets,
reserves against a tenant and a key scope with day and month limits, and settles, as the
gateway's budget policy does. Sequential calls give the latency a call adds; 64 concurrent
calls show what the writer's group commit does under load. CPU is the process's (every
thread) over the calls.

    .venv/bin/python bench/bench_sqlite_budgets.py [--calls 3000] [--concurrency 1 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
from llmgateway_server.storage.base import BudgetLimits, Periods, RateLimits, Reservation, Scope
from llmgateway_server.storage.sqlite import SqliteBudgetStore, SqliteDatabase

LIMITS = BudgetLimits(
    usd_per_day_nano=10**15,
    usd_per_month_nano=10**16,
    tokens_per_day=10**12,
    tokens_per_month=10**13,
)
RATES = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12)
SCOPES = (Scope("tenant", "acme", LIMITS), Scope("key", "key-1", LIMITS))


async def run(path: Path, calls: int, concurrency: int) -> dict[str, float]:
    """``calls`` take+reserve+settle sequences, ``concurrency`` at a time."""
    db = await SqliteDatabase.open(path)
    store = SqliteBudgetStore(db)
    now = time.time()
    periods = Periods("2026-12-02", "2026-12", now + 86_400, now + 30 * 86_400)
    latencies: list[float] = []
    commits0 = db.commits

    async def call(i: int) -> None:
        start = time.perf_counter()
        await store.take("acme", RATES, requests=1, tokens=1500, now_unix_s=time.time())
        await store.reserve(
            Reservation(f"c{concurrency}-{i}", "acme", SCOPES, periods, 2_000_000, 1500, now + 60)
        )
        await store.settle(f"c{concurrency}-{i}", "acme", 1_234_567, 1400)
        latencies.append(time.perf_counter() - start)

    cpu0, t0 = time.process_time(), time.perf_counter()
    for first in range(0, calls, concurrency):
        await asyncio.gather(*(call(i) for i in range(first, min(calls, first + concurrency))))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    commits = db.commits - commits0
    await store.aclose()
    latencies.sort()
    return {
        "calls_per_s": calls / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us_per_call": cpu / calls * 1e6,
        "ops_per_commit": 3 * calls / max(1, commits),
    }


def main() -> None:
    """Print a Markdown table, one row per concurrency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    print("| concurrency | calls/s | p50 ms | p99 ms | CPU µs/call | operations/commit |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in args.concurrency:
            path = Path(tmp) / f"budgets-{concurrency}.db"
            r = uvloop.run(run(path, args.calls, concurrency))
            print(
                f"| {concurrency} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['cpu_us_per_call']:.0f} | {r['ops_per_commit']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
