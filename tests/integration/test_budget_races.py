"""Budgets hold under concurrency: 200 calls at once against a budget that admits exactly
K, spread over 4 gateway processes sharing one SQLite file. The upstream holds every
admitted call until all 200 are decided, so no call can settle (and free budget) before
the last one was judged: exactly K are admitted, spend never passes the limit, nothing
stays reserved, and every refusal says which limit and until when.

The same harness against the store's deliberately naive check-then-charge mode (a
test-only switch) must over-admit: proof that it sees the races the atomic mode prevents.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc
from llmgateway_server.config import NAIVE_BUDGETS_ENV
from llmgateway_server.pipeline.budget import periods_at
from llmgateway_server.storage.base import BudgetLimits, Scope
from llmgateway_server.storage.redis_budgets import RedisBudgetStore
from llmgateway_server.storage.sqlite import SqliteBudgetStore, SqliteDatabase, SqliteLedger

from tests.support.configs import ENV
from tests.support.gateway import error_info, user
from tests.support.processes import GatewayProcess, gateway_process
from tests.support.servers import RedisServer
from tests.support.upstream import FakeUpstream, Gate

CALLS = 200
PROCESSES = 4
K = 37
MAX_TOKENS = 100
# Output at $1 per million tokens (1,000 nano-USD a token), input free: every call
# reserves exactly MAX_TOKENS x 1,000 nano-USD whatever its prompt.
PER_CALL_NANO = MAX_TOKENS * 1_000
LIMIT_NANO = K * PER_CALL_NANO + PER_CALL_NANO // 2
TEAM_KEY = "team-key-budget-race-0001"


def _config(base_url: str, database: Path, redis_url: str | None = None) -> str:
    budgets = f"\n  budgets_url: {redis_url}" if redis_url else ""
    return f"""
server:
  default_deadline_s: 60
  log_level: warning
  access_log: false
storage:
  url: sqlite:///{database}{budgets}
auth:
  tenants:
    - name: team
      api_key_env: TEAM_KEY
      budgets: {{usd_per_day: "{LIMIT_NANO / 1e9:.9f}"}}
providers:
  openai:
    type: openai
    base_url: {base_url}/v1
    api_key_env: TEST_OPENAI_KEY
targets:
  gpt:
    provider: openai
    model: gpt-4o-mini
    context_window: 128000
    tokenizer: estimate
    price: {{input_per_million_usd: "0", output_per_million_usd: "1", version: race}}
routes:
  gpt:
    targets: [gpt]
    default_max_tokens: {MAX_TOKENS}
    min_max_tokens: {MAX_TOKENS}
"""


async def _call(stub: pb_grpc.GatewayServiceStub, n: int) -> grpc.aio.AioRpcError | pb.Completion:
    try:
        reply = await stub.Complete(
            pb.CompleteRequest(model="gpt", messages=[user(f"call {n}")], request_id=f"r{n}"),
            metadata=(("authorization", f"Bearer {TEAM_KEY}"),),
            timeout=60,
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return reply.completion


async def _race(
    upstream: FakeUpstream,
    tmp_path: Path,
    *,
    naive: bool,
    processes: int = PROCESSES,
    redis_url: str | None = None,
) -> tuple[list[pb.Completion], list[grpc.aio.AioRpcError], Path]:
    # On SQLite the processes share one file; on Redis each replica has its own local
    # file (its ledger) and the budgets live in Redis.
    database = tmp_path / "shared.db"
    opened = asyncio.Event()
    upstream.set_default(None, Gate(opened))
    env = {**ENV, "TEAM_KEY": TEAM_KEY, **({NAIVE_BUDGETS_ENV: "1"} if naive else {})}
    async with AsyncExitStack() as stack:
        gateways: list[GatewayProcess] = [
            await stack.enter_async_context(
                gateway_process(
                    tmp_path / f"gw{i}",
                    _config(
                        upstream.base_url,
                        tmp_path / f"replica{i}.db" if redis_url else database,
                        redis_url,
                    ),
                    env,
                    name=f"gw{i}",
                )
            )
            for i in range(processes)
        ]
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(g.address)) for g in gateways
        ]
        stubs = [pb_grpc.GatewayServiceStub(c) for c in channels]
        calls = [asyncio.ensure_future(_call(stubs[n % processes], n)) for n in range(CALLS)]

        async def decided() -> None:
            # Released once every call is either refused or waiting at the upstream.
            # (Refusals come back to the client, not the upstream: polled, not awaited.)
            while sum(c.done() for c in calls) + upstream.request_count() < CALLS:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            opened.set()

        await asyncio.wait_for(decided(), timeout=60)
        results = await asyncio.gather(*calls)
        for gateway in gateways:
            assert await gateway.stop() == 0, gateway.logs()[-2000:]
    served = [r for r in results if isinstance(r, pb.Completion)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    return served, refused, database


async def test_exactly_k_of_200_concurrent_calls_fit_a_budget_shared_by_4_processes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    served, refused, database = await _race(upstream, tmp_path, naive=False)
    assert len(served) == K
    assert upstream.request_count() == K, "no refused call reached the upstream"
    assert len(refused) == CALLS - K
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, metadata, details = error_info(error)
        assert reason == "BUDGET_EXCEEDED"
        assert (metadata["scope"], metadata["window"], metadata["limit"]) == (
            "tenant:team",
            "day",
            str(LIMIT_NANO),
        )
        (quota,) = [d for d in details if isinstance(d, error_details_pb2.QuotaFailure)]
        assert quota.violations[0].subject == "tenant:team"
        (retry,) = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
        assert 0 < retry.retry_delay.seconds <= 86_400  # until the UTC day ends
    db = await SqliteDatabase.open(database)
    budgets, ledger = SqliteBudgetStore(db), SqliteLedger(db)
    try:
        counter = await budgets.counter("tenant", "team", "day", periods_at(time.time()).day)
        rows = {r.request_id: r for r in [await ledger.get(f"r{n}") for n in range(CALLS)] if r}
    finally:
        await budgets.aclose()
        await ledger.aclose()
    assert counter.reserved_nano_usd == 0, "every reservation was settled"
    assert counter.spent_nano_usd == sum(c.cost.total_nano_usd for c in served)
    assert 0 < counter.spent_nano_usd <= LIMIT_NANO
    assert len(rows) == CALLS, "one ledger row per call, refusals included"
    assert sum(r.outcome == "success" for r in rows.values()) == K
    assert sum(r.cost_nano_usd for r in rows.values()) == counter.spent_nano_usd


async def test_the_naive_check_then_charge_mode_overspends_under_the_same_harness(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    served, _refused, _database = await _race(upstream, tmp_path, naive=True)
    assert len(served) > K, "the harness must see the race the atomic mode prevents"


async def test_exactly_k_of_200_concurrent_calls_fit_a_budget_shared_by_2_replicas_on_redis(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer
) -> None:
    served, refused, _database = await _race(
        upstream, tmp_path, naive=False, processes=2, redis_url=redis_server.url
    )
    assert len(served) == K
    assert upstream.request_count() == K
    assert {error_info(e)[0] for e in refused} == {"BUDGET_EXCEEDED"}
    assert len(refused) == CALLS - K
    store = RedisBudgetStore.from_url(redis_server.url)
    try:
        left = await store.remaining(
            [Scope("tenant", "team", BudgetLimits(usd_per_day_nano=LIMIT_NANO))],
            periods_at(time.time()),
        )
    finally:
        await store.aclose()
    # Nothing stays reserved: what is left is the limit less what the K calls cost.
    assert left.nano_usd == LIMIT_NANO - sum(c.cost.total_nano_usd for c in served)


async def test_the_naive_mode_overspends_on_redis_too(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer
) -> None:
    served, _refused, _database = await _race(
        upstream, tmp_path, naive=True, processes=2, redis_url=redis_server.url
    )
    assert len(served) > K


pytestmark = pytest.mark.slow
