"""What the Redis tests run in other processes: gateway replicas sharing one Redis.

``reserve_race`` is the target of a ``multiprocessing`` (spawn) process: its own
interpreter, event loop and connection pool, as a second replica has.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import uvloop
from llmgateway_server.storage.base import BudgetLimits, Periods, Refusal, Reservation, Scope
from llmgateway_server.storage.redis_budgets import RedisBudgetStore

# Far in the future: counters expire a week after their period ends, by Redis's clock.
DAY = datetime(2099, 12, 2, tzinfo=UTC).timestamp()
PERIODS = Periods(
    day="2099-12-02",
    month="2099-12",
    day_ends_unix_s=DAY + 86_400,
    month_ends_unix_s=datetime(2100, 1, 1, tzinfo=UTC).timestamp(),
)


@dataclass(frozen=True, slots=True)
class RaceSpec:
    """One replica's share of the race: ``calls`` concurrent reserves of ``amount``
    against tenant ``acme`` whose day limit is ``limit`` nano-USD."""

    url: str
    worker: int
    calls: int
    amount: int
    limit: int
    naive: bool
    uvloop: bool  # run on uvloop (else asyncio), as the parent test does


def race_reservation(spec: RaceSpec, i: int) -> Reservation:
    """The i-th reservation of a replica (request ids unique across replicas)."""
    return Reservation(
        request_id=f"w{spec.worker}-{i}",
        tenant="acme",
        scopes=(Scope("tenant", "acme", BudgetLimits(usd_per_day_nano=spec.limit)),),
        periods=PERIODS,
        nano_usd=spec.amount,
        tokens=1,
        lease_until_unix_s=DAY + 3600,
    )


def reserve_race(
    spec: RaceSpec, barrier: Barrier, results: Queue[tuple[list[str], list[Refusal]]]
) -> None:
    """Connect, wait for every replica, then reserve ``calls`` times at once; put the
    request ids held and the refusals on ``results``."""

    async def run() -> tuple[list[str], list[Refusal]]:
        # Generous timeout: 200 concurrent scripts on a loaded 2-core machine.
        store = RedisBudgetStore.from_url(
            spec.url, timeout_s=30.0, naive_for_tests=spec.naive, clock=lambda: DAY
        )
        try:
            await store.remaining((), PERIODS)  # imports and first objects out of the way
            barrier.wait(timeout=60)  # blocks this loop: nothing else runs on it yet
            outcomes = await asyncio.gather(
                *(store.reserve(race_reservation(spec, i)) for i in range(spec.calls))
            )
        finally:
            await store.aclose()
        held = [f"w{spec.worker}-{i}" for i, o in enumerate(outcomes) if o is None]
        return held, [o for o in outcomes if o is not None]

    runner = uvloop.run if spec.uvloop else asyncio.run
    results.put(runner(run()))
