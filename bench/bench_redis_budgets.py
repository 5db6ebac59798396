"""What budgets cost per call on Redis: reserve + settle (and the rate-limit take).

A real redis-server on 127.0.0.1 (tests/support/servers.py), one client process on
uvloop: each call reserves against a tenant and a key scope with day and month limits
and settles, as the gateway's budget policy does (``--take`` adds the rate-limit take
before them). Sequential calls give the latency a call adds; 64 concurrent calls show
the throughput with the connection pool busy. Client CPU is this process's over the
calls (the benchmark loop included); Redis CPU is the server's (INFO cpu), both per call.
``--persistence`` runs the server without persistence, or with AOF fsynced on every
write (``appendfsync always``, what exact budgets across a Redis crash need).

    .venv/bin/python bench/bench_redis_budgets.py [--calls 3000] [--concurrency 1 64]
        [--persistence none always] [--take]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.servers

from llmgateway_server.storage.base import BudgetLimits, Periods, RateLimits, Reservation, Scope
from llmgateway_server.storage.redis_budgets import RedisBudgetStore

from tests.support.servers import RedisServer

LIMITS = BudgetLimits(
    usd_per_day_nano=10**15,
    usd_per_month_nano=10**15,
    tokens_per_day=10**12,
    tokens_per_month=10**13,
)
RATES = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12)
SCOPES = (Scope("tenant", "acme", LIMITS), Scope("key", "key-1", LIMITS))
WARMUP = 200


def _redis_cpu_s(server: RedisServer) -> float:
    with server.client() as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(
    server: RedisServer, label: str, calls: int, concurrency: int, take: bool
) -> dict[str, float]:
    """``calls`` (take +) reserve + settle sequences, ``concurrency`` at a time."""
    store = RedisBudgetStore.from_url(server.url, timeout_s=5.0)
    await store.rebuild({}, [])
    now = time.time()
    periods = Periods("2099-12-02", "2099-12", now + 86_400, now + 30 * 86_400)
    latencies: list[float] = []

    async def call(name: str) -> None:
        start = time.perf_counter()
        if take:
            await store.take("acme", RATES, requests=1, tokens=1500, now_unix_s=now)
        reservation = Reservation(name, "acme", SCOPES, periods, 2_000_000, 1500, now + 60)
        assert await store.reserve(reservation) is None
        await store.settle(name, "acme", 1_234_567, 1400)
        latencies.append(time.perf_counter() - start)

    async def batch(prefix: str, count: int) -> None:
        for first in range(0, count, concurrency):
            last = min(count, first + concurrency)
            await asyncio.gather(*(call(f"{prefix}-{i}") for i in range(first, last)))

    await batch(f"{label}-warm", WARMUP)
    latencies.clear()
    redis_cpu0 = _redis_cpu_s(server)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await batch(label, calls)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    redis_cpu = _redis_cpu_s(server) - redis_cpu0
    await store.aclose()
    latencies.sort()
    return {
        "calls_per_s": calls / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "client_cpu_us": cpu / calls * 1e6,
        "redis_cpu_us": redis_cpu / calls * 1e6,
    }


def main() -> None:
    """Print a Markdown table, one row per persistence mode and concurrency."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--persistence", nargs="+", default=["none", "always"])
    parser.add_argument("--take", action="store_true", help="take from rate limits too")
    args = parser.parse_args()
    what = "take + reserve + settle" if args.take else "reserve + settle"
    print(f"{what} per call: redis-server {_server_version()}, redis-py {redis.__version__}")
    print()
    print(
        "| persistence | concurrency | calls/s | p50 ms | p99 ms "
        "| client CPU µs/call | Redis CPU µs/call |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for persistence in args.persistence:
        with (
            tempfile.TemporaryDirectory() as tmp,
            RedisServer(tmp, appendonly=persistence == "always") as server,
        ):
            for concurrency in args.concurrency:
                label = f"{persistence}-{concurrency}"
                r = uvloop.run(run(server, label, args.calls, concurrency, args.take))
                print(
                    f"| {'AOF, fsync always' if persistence == 'always' else 'none'} "
                    f"| {concurrency} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.2f} "
                    f"| {r['p99_ms']:.2f} | {r['client_cpu_us']:.0f} "
                    f"| {r['redis_cpu_us']:.0f} |",
                    flush=True,
                )


def _server_version() -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(tmp) as server,
        server.client() as client,
    ):
        return str(client.info("server")["redis_version"])


if __name__ == "__main__":
    main()
