"""The SQLite budget store against a model, over random sequences of reserve, settle,
expire, a new day, a crash (the store reopened on its file) and replays of request ids.

Invariants after every step: the counters are the model's; admitted spend plus holds never
pass a limit (actual amounts are at most the reserved ones, as the gateway's worst case
guarantees); spent equals the sum of what settled and expired reservations were charged.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from llmgateway_server.storage.base import (
    BudgetLimits,
    DuplicateRequest,
    Periods,
    Refusal,
    Reservation,
    Scope,
)
from llmgateway_server.storage.sqlite import BudgetCounter, SqliteBudgetStore, SqliteDatabase

T = TypeVar("T")
START = 1_796_169_600.0  # 2026-12-02T00:00:00Z
MONTH_ENDS = 1_798_761_600.0  # 2027-01-01T00:00:00Z
TENANT = Scope(
    "tenant",
    "acme",
    BudgetLimits(usd_per_day_nano=1_000, usd_per_month_nano=2_500, tokens_per_day=120),
)
KEY = Scope("key", "key-1", BudgetLimits(usd_per_month_nano=1_800))
SCOPES = (TENANT, KEY)


def periods(day: int) -> Periods:
    return Periods(
        day=f"2026-12-{day + 2:02d}",
        month="2026-12",
        day_ends_unix_s=START + (day + 1) * 86_400,
        month_ends_unix_s=MONTH_ENDS,
    )


@dataclass
class Held:
    """The model's view of one reservation."""

    reservation: Reservation
    state: str = "held"  # held | settled | expired
    charged: tuple[int, int] = (0, 0)


def _limit_checks(scope: Scope) -> list[tuple[str, str, int, int]]:
    """(window, dimension, limit, counter index of its spent) of every limit of a scope."""
    b = scope.limits
    found = []
    for window, usd, tokens in (
        ("day", b.usd_per_day_nano, b.tokens_per_day),
        ("month", b.usd_per_month_nano, b.tokens_per_month),
    ):
        if usd is not None:
            found.append((window, "usd", usd, 0))
        if tokens is not None:
            found.append((window, "tokens", tokens, 2))
    return found


class BudgetModel(RuleBasedStateMachine):
    """Drives a real store on a real file beside a dictionary model of it."""

    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="budget-model-"))
        self.loop = self.new_loop()
        self.now = START + 3600
        self.day = 0
        self.ids = itertools.count()
        self.known: dict[str, Held] = {}  # every request id the store holds a record of
        self.asked: dict[str, Reservation] = {}  # every reservation tried, held or refused
        # (kind, id, window, period) -> [spent usd, reserved usd, spent tokens, reserved tokens]
        self.counters: dict[tuple[str, str, str, str], list[int]] = {}
        self.store = self._open()

    def _open(self) -> SqliteBudgetStore:
        db = self.run(SqliteDatabase.open(self.dir / "budgets.db"))
        return SqliteBudgetStore(db, clock=lambda: self.now)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.store.aclose())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model --------------------------------------------------------------------------

    def _counter(self, scope: Scope, window: str, p: Periods) -> list[int]:
        period = p.day if window == "day" else p.month
        return self.counters.setdefault((scope.kind, scope.id, window, period), [0, 0, 0, 0])

    def _expected_refusal(self, r: Reservation) -> Refusal | None:
        for scope in r.scopes:
            for window, dimension, limit, spent_at in _limit_checks(scope):
                c = self._counter(scope, window, r.periods)
                used = c[spent_at] + c[spent_at + 1]
                amount = r.nano_usd if dimension == "usd" else r.tokens
                if used + amount > limit:
                    ends = (
                        r.periods.day_ends_unix_s
                        if window == "day"
                        else r.periods.month_ends_unix_s
                    )
                    return Refusal(
                        scope.kind,
                        scope.id,
                        window,  # type: ignore[arg-type]
                        dimension,  # type: ignore[arg-type]
                        limit,
                        used,
                        max(0.0, ends - self.now),
                    )
        return None

    def _move(self, r: Reservation, spent: tuple[int, int], reserved: tuple[int, int]) -> None:
        for scope in r.scopes:
            for window in ("day", "month"):
                c = self._counter(scope, window, r.periods)
                c[0] += spent[0]
                c[1] += reserved[0]
                c[2] += spent[1]
                c[3] += reserved[1]

    def _reserve(self, r: Reservation) -> None:
        expected = self._expected_refusal(r)
        got = self.run(self.store.reserve(r))
        assert got == expected
        if got is None:
            self.known[r.request_id] = Held(r)
            self._move(r, (0, 0), (r.nano_usd, r.tokens))

    # -- rules ------------------------------------------------------------------------------

    @rule(
        target=requests,
        # Round amounts, so that reaching a limit exactly is common.
        nano_usd=st.integers(0, 7).map(lambda n: n * 100),
        tokens=st.integers(0, 7).map(lambda n: n * 10),
        lease_s=st.floats(1, 600),
        key_scope=st.booleans(),
    )
    def reserve(self, nano_usd: int, tokens: int, lease_s: float, key_scope: bool) -> str:
        request_id = f"req-{next(self.ids)}"
        r = Reservation(
            request_id=request_id,
            tenant="acme",
            scopes=SCOPES if key_scope else (TENANT,),
            periods=periods(self.day),
            nano_usd=nano_usd,
            tokens=tokens,
            lease_until_unix_s=self.now + lease_s,
        )
        self.asked[request_id] = r
        self._reserve(r)
        return request_id

    @rule(request_id=requests)
    def replay_reserve(self, request_id: str) -> None:
        r = self.asked[request_id]
        if request_id in self.known:
            with pytest.raises(DuplicateRequest):
                self.run(self.store.reserve(r))
        else:  # refused before: never held, so it is decided afresh
            self._reserve(r)

    @rule(request_id=requests, share=st.integers(0, 100))
    def settle(self, request_id: str, share: int) -> None:
        held = self.known.get(request_id)
        r = self.asked[request_id]
        actual = (r.nano_usd * share // 100, r.tokens * share // 100)  # at most reserved
        self.run(self.store.settle(request_id, "acme", *actual))
        if held is not None and held.state == "held":
            held.state, held.charged = "settled", actual
            self._move(r, actual, (-r.nano_usd, -r.tokens))

    @rule(seconds=st.floats(0, 900))
    def time_passes_and_leases_expire(self, seconds: float) -> None:
        self.now += seconds
        expired = self.run(self.store.expire(self.now))
        expected = sorted(
            (
                h
                for h in self.known.values()
                if h.state == "held" and h.reservation.lease_until_unix_s < self.now
            ),
            key=lambda h: (h.reservation.lease_until_unix_s, h.reservation.request_id),
        )
        assert expired == [h.reservation for h in expected]
        for h in expected:
            r = h.reservation
            h.state, h.charged = "expired", (r.nano_usd, r.tokens)
            self._move(r, h.charged, (-r.nano_usd, -r.tokens))

    @rule()
    def next_day(self) -> None:
        if self.day < 25:
            self.day += 1
            self.now = max(self.now, START + self.day * 86_400 + 60)

    @rule()
    def crash_and_reopen(self) -> None:
        self.run(self.store.aclose())
        self.store = self._open()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def the_stores_counters_keep_the_invariants(self) -> None:
        month = periods(0).month
        keys = list(self.counters)
        keys += [k for s in SCOPES if (k := (s.kind, s.id, "month", month)) not in keys]

        async def read_all() -> list[BudgetCounter]:  # concurrently: one read transaction
            return await asyncio.gather(*(self.store.counter(*k) for k in keys))  # type: ignore[arg-type]

        stored = dict(zip(keys, self.run(read_all()), strict=True))
        # The model's counters, exactly.
        for key, c in self.counters.items():
            assert stored[key] == BudgetCounter(c[0], c[1], c[2], c[3]), key
        # Admitted spend plus holds never pass a limit.
        for scope in SCOPES:
            for window, dimension, limit, _ in _limit_checks(scope):
                for (kind, scope_id, w, _period), got in stored.items():
                    if (kind, scope_id, w) == (scope.kind, scope.id, window):
                        if dimension == "usd":
                            assert got.spent_nano_usd + got.reserved_nano_usd <= limit
                        else:
                            assert got.spent_tokens + got.reserved_tokens <= limit
        # Spent is the sum of what settled and expired reservations were charged.
        for scope in SCOPES:
            charged = [
                h.charged
                for h in self.known.values()
                if h.state != "held" and scope in h.reservation.scopes
            ]
            got = stored[(scope.kind, scope.id, "month", month)]
            assert got.spent_nano_usd == sum(c[0] for c in charged)
            assert got.spent_tokens == sum(c[1] for c in charged)


def test_the_budget_store_behaves_as_its_model() -> None:
    # On uvloop, the gateway's loop; how results reach a loop from the store's threads is
    # covered on both loops by every async storage test.
    machine = type("Machine", (BudgetModel,), {"new_loop": staticmethod(uvloop.new_event_loop)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            database=None,  # no .hypothesis directory in the working tree
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
