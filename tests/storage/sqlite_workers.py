"""What the SQLite tests run in other processes: gateway workers sharing one file.

Functions here are the targets of ``multiprocessing`` processes (``processes()``); ``python -m
tests.storage.sqlite_workers write-until-killed PATH`` is the ledger writer that the
durability test kills.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.context
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import uvloop
from llmgateway_server.storage.base import (
    BudgetLimits,
    Periods,
    Refusal,
    Reservation,
    Scope,
    UsageRecord,
)
from llmgateway_server.storage.sqlite import (
    SqliteBudgetStore,
    SqliteDatabase,
    SqliteLedger,
)


def processes() -> multiprocessing.context.ForkServerContext:
    """Where the workers run: forked from a server process that has imported this module
    already (fast to start, and no threads of the test's process are forked)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


PERIODS = Periods(
    day="2026-12-02",
    month="2026-12",
    day_ends_unix_s=time.time() + 3600,
    month_ends_unix_s=time.time() + 86_400,
)


@dataclass(frozen=True, slots=True)
class RaceSpec:
    """One worker's share of the race: ``calls`` concurrent reserves of ``amount``
    against a tenant whose day limit is ``limit`` nano-USD."""

    path: str
    worker: int
    calls: int
    amount: int
    limit: int
    naive: bool
    uvloop: bool  # run on uvloop (else asyncio), as the parent test does


def race_reservation(spec: RaceSpec, i: int) -> Reservation:
    """The i-th reservation of a worker (request ids unique across workers)."""
    scope = Scope("tenant", "acme", BudgetLimits(usd_per_day_nano=spec.limit))
    return Reservation(
        request_id=f"w{spec.worker}-{i}",
        tenant="acme",
        scopes=(scope,),
        periods=PERIODS,
        nano_usd=spec.amount,
        tokens=0,
        lease_until_unix_s=time.time() + 3600,
    )


def reserve_race(
    spec: RaceSpec, barrier: Barrier, results: Queue[tuple[list[str], list[Refusal]]]
) -> None:
    """Open the file, wait for every worker, fire ``calls`` reserves at once; report the
    request ids held and the refusals."""

    async def main() -> tuple[list[str], list[Refusal]]:
        db = await SqliteDatabase.open(spec.path)
        local = asyncio.Barrier(spec.calls)
        crossed = asyncio.Event()

        async def gap() -> None:
            # Naive mode only: every call of every worker has checked before any charges,
            # so a check-then-charge store over-admits every time, not just sometimes.
            if await local.wait() == 0:
                await asyncio.to_thread(barrier.wait)
                crossed.set()
            await crossed.wait()

        store = SqliteBudgetStore(db, naive_for_tests=spec.naive, naive_gap=gap)
        await asyncio.to_thread(barrier.wait)  # every worker open and ready
        reservations = [race_reservation(spec, i) for i in range(spec.calls)]
        outcomes = await asyncio.gather(*(store.reserve(r) for r in reservations))
        await store.aclose()
        held = [r.request_id for r, o in zip(reservations, outcomes, strict=True) if o is None]
        return held, [o for o in outcomes if o is not None]

    results.put(uvloop.run(main()) if spec.uvloop else asyncio.run(main()))


def migrate_at_once(path: str, worker: int, barrier: Barrier) -> None:
    """Wait for every worker, then open the (fresh) file and write one ledger row."""

    async def main() -> None:
        await asyncio.to_thread(barrier.wait)
        db = await SqliteDatabase.open(path)
        ledger = SqliteLedger(db)
        await ledger.write(UsageRecord(f"start-{worker}", "acme", "default", "success", 1.0))
        await ledger.aclose()

    asyncio.run(main())


def write_until_killed(path: str) -> None:
    """Write ledger rows, 16 at a time, for ever; print each request id on its own line
    as soon as its ``write`` has returned (the parent kills this process at any time)."""

    async def main() -> None:
        db = await SqliteDatabase.open(path)
        ledger = SqliteLedger(db)
        n = 0
        while True:
            ids = [f"kill-{n + i}" for i in range(16)]
            n += 16

            async def one(request_id: str) -> None:
                await ledger.write(
                    UsageRecord(request_id, "acme", "default", "success", time.time())
                )
                # os.write: unbuffered, so what the parent reads is what had returned.
                os.write(1, f"{request_id}\n".encode())

            await asyncio.gather(*(one(r) for r in ids))

    asyncio.run(main())


if __name__ == "__main__":
    command, file = sys.argv[1], sys.argv[2]
    if command != "write-until-killed":
        raise SystemExit(f"unknown command {command!r}")
    write_until_killed(file)
