"""Usage-ledger write rate on SQLite: rows/s and the latency of one ``write``.

Each configuration writes to a fresh file for ``--seconds``: ``--writers`` coroutines per
process, each writing one realistic record (two tags, one attempt) after another, in
``--processes`` gateway-like processes sharing the file (SO_REUSEPORT workers), with
``synchronous`` NORMAL (durable against a killed process) or FULL (also against power
loss); ``--rate`` paces each writer (the gateway's load is spread out; without it every
writer writes again at once, which measures the ceiling). Concurrent writes share commits
(group commit), so rows/s grows with writers.

Reported per configuration: rows/s over all processes, the write latency (p50, p99, from
the caller's ``await``), CPU per row (the processes' CPU, every thread, over the rows) and
rows per commit.

    .venv/bin/python bench/bench_ledger.py [--seconds 3] [--writers 1 64] \\
        [--processes 1 4] [--synchronous NORMAL FULL] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import uvloop
from llmgateway_server.storage.base import AttemptRecord, UsageRecord
from llmgateway_server.storage.sqlite import SqliteDatabase, SqliteLedger
from llmgateway_server.storage.sqlite.db import Synchronous


def _record(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant="acme",
        route="default",
        outcome="success",
        finished_at_unix_s=time.time(),
        key_prefix="lgw_4f2a",
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


def _worker(
    path: str,
    worker: int,
    writers: int,
    seconds: float,
    synchronous: Synchronous,
    rate: float,
    barrier: Barrier,
    results: Queue[dict[str, Any]],
) -> None:
    async def main() -> dict[str, Any]:
        db = await SqliteDatabase.open(path, synchronous=synchronous)
        ledger = SqliteLedger(db)
        latencies: list[float] = []
        await asyncio.to_thread(barrier.wait)
        cpu0, t0 = time.process_time(), time.perf_counter()
        commits0 = db.commits
        deadline = t0 + seconds

        async def writer(w: int) -> None:
            n = 0
            while (now := time.perf_counter()) < deadline:
                if rate:  # paced: the n-th write is due n / rate after the start
                    await asyncio.sleep(max(0.0, t0 + w / (writers * rate) + n / rate - now))
                record = _record(f"p{worker}-w{w}-{n}")
                n += 1
                start = time.perf_counter()
                await ledger.write(record)
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.perf_counter() - t0
        commits = db.commits - commits0
        cpu = time.process_time() - cpu0
        await ledger.aclose()
        return {
            "rows": len(latencies),
            "elapsed": elapsed,
            "cpu": cpu,
            "commits": commits,
            "latencies": latencies,
        }

    results.put(uvloop.run(main()))


def run(
    directory: Path,
    processes: int,
    writers: int,
    seconds: float,
    synchronous: Synchronous,
    rate: float = 0.0,
) -> dict[str, float]:
    """One configuration on a fresh file; the aggregate over its processes."""
    path = directory / f"ledger-{processes}p-{writers}w-{synchronous}.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results: Queue[dict[str, Any]] = ctx.Queue()
    children = [
        ctx.Process(
            target=_worker,
            args=(str(path), p, writers, seconds, synchronous, rate, barrier, results),
        )
        for p in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=seconds + 120) for _ in children]
    for child in children:
        child.join()
    rows = sum(o["rows"] for o in outcomes)
    latencies = sorted(lat for o in outcomes for lat in o["latencies"])
    return {
        "rows_per_s": rows / max(o["elapsed"] for o in outcomes),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us_per_row": sum(o["cpu"] for o in outcomes) / rows * 1e6,
        "rows_per_commit": rows / max(1, sum(o["commits"] for o in outcomes)),
    }


def main() -> None:
    """Run every configuration asked for and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--synchronous", nargs="+", default=["NORMAL", "FULL"], choices=["NORMAL", "FULL"]
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="writes/s per writer (default 0: each writer writes again as soon as it can)",
    )
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(
            "| synchronous | processes | writers/process | rows/s | p50 ms | p99 ms "
            "| CPU µs/row | rows/commit |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for synchronous in args.synchronous:
            for processes in args.processes:
                for writers in args.writers:
                    r = run(Path(tmp), processes, writers, args.seconds, synchronous, args.rate)
                    print(
                        f"| {synchronous} | {processes} | {writers} | {r['rows_per_s']:,.0f} "
                        f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us_per_row']:.0f} "
                        f"| {r['rows_per_commit']:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
