"""kill -9 of the gateway mid-stream and mid-settle, restarted on the same SQLite file.

Seeded runs: streams and unary calls are in flight when the process is SIGKILLed at a
random moment; a new process opens the same file. Then: every call the client saw finish
has exactly one ledger row, with the tokens and cost of the result it received (the
upstream's own report); every call the upstream saw has a row (the ones cut short are
``abandoned``, charged their reservation); and nothing stays reserved past its lease.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import grpc
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc
from llmgateway_server.pipeline.budget import periods_at
from llmgateway_server.storage.base import UsageQuery
from llmgateway_server.storage.sqlite import SqliteBudgetStore, SqliteDatabase, SqliteLedger

from tests.support.configs import ENV
from tests.support.gateway import user
from tests.support.processes import gateway_process
from tests.support.upstream import FakeUpstream, Respond

# One seeded run per event loop the suite runs on (two runs in all); more with
# LLMGATEWAY_CRASH_SEEDS=1,2,3,...
SEEDS = {"asyncio": (11,), "uvloop": (29,)}
CALLS = 16
DEADLINE_S = 2.5
TEAM_KEY = "team-key-crash-recovery-01"


def _config(base_url: str, database: Path) -> str:
    return f"""
server:
  default_deadline_s: 30
  log_level: warning
storage:
  url: sqlite:///{database}
budgets:
  lease_grace_s: 0.5
  lease_sweep_s: 0.2
auth:
  tenants:
    - name: team
      api_key_env: TEAM_KEY
      budgets: {{usd_per_day: "100"}}
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
    price: {{input_per_million_usd: "3", output_per_million_usd: "15", version: crash}}
routes:
  gpt:
    targets: [gpt]
    default_max_tokens: 64
"""


async def _call(stub: pb_grpc.GatewayServiceStub, n: int) -> pb.Completion | None:
    """The final result the client saw, or None (the call was cut short)."""
    metadata = (("authorization", f"Bearer {TEAM_KEY}"),)
    request_id = f"r{n}"
    try:
        if n % 2:
            reply = await stub.Complete(
                pb.CompleteRequest(
                    model="gpt", messages=[user(f"call {n}")], request_id=request_id
                ),
                metadata=metadata,
                timeout=DEADLINE_S,
            )
            return reply.completion
        result = None
        async for event in stub.StreamComplete(
            pb.StreamCompleteRequest(
                model="gpt", messages=[user(f"call {n}")], request_id=request_id
            ),
            metadata=metadata,
            timeout=DEADLINE_S,
        ):
            if event.HasField("result"):
                result = event.result
        return result
    except grpc.aio.AioRpcError:
        return None


def _seeds(loop: str) -> tuple[int, ...]:
    extra = os.environ.get("LLMGATEWAY_CRASH_SEEDS", "")
    return tuple(int(s) for s in extra.split(",") if s) or SEEDS[loop]


def _seen_by_upstream(upstream: FakeUpstream) -> set[str]:
    """Request ids of the calls whose request reached the upstream (by their prompt)."""
    seen = set()
    for request in upstream.requests:
        text = request.body["messages"][-1]["content"]
        seen.add("r" + text.removeprefix("call "))
    return seen


async def test_kill_9_mid_call_loses_no_record_and_strands_no_reservation(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    for seed in _seeds(loop):
        rng = random.Random(seed)
        upstream.requests.clear()
        # Each answer streams 12 chunks 40 ms apart: calls are mid-stream for ~0.5 s.
        upstream.set_default(None, Respond(chunks=12, chunk_delay_s=0.04))
        database = tmp_path / f"seed{seed}.db"
        text = _config(upstream.base_url, database)
        env = {**ENV, "TEAM_KEY": TEAM_KEY}
        finished: dict[str, pb.Completion] = {}
        async with (
            gateway_process(tmp_path / f"a{seed}", text, env) as first,
            grpc.aio.insecure_channel(first.address) as channel,
        ):
            stub = pb_grpc.GatewayServiceStub(channel)
            calls = {f"r{n}": asyncio.ensure_future(_call(stub, n)) for n in range(CALLS)}
            # Calls start staggered, so the kill finds some done, some mid-stream.
            await asyncio.sleep(rng.uniform(0.15, 0.6))
            first.kill()
            for request_id, call in calls.items():
                result = await call
                if result is not None:
                    finished[request_id] = result
        seen = _seen_by_upstream(upstream)
        async with gateway_process(tmp_path / f"b{seed}", text, env) as second:
            # The new process's sweep finds the dead one's reservations once their
            # leases (deadline + 0.5 s) pass.
            await asyncio.sleep(DEADLINE_S + 1.5)
            assert await second.stop() == 0
        db = await SqliteDatabase.open(database)
        budgets, ledger = SqliteBudgetStore(db), SqliteLedger(db)
        try:
            rows = {n: await ledger.get(n) for n in seen | set(finished)}
            counter = await budgets.counter("tenant", "team", "day", periods_at(time.time()).day)
            (total,) = await ledger.usage(UsageQuery(0, time.time() + 60, ("tenant",)))
        finally:
            await budgets.aclose()
            await ledger.aclose()
        assert seen - set(finished), f"seed {seed}: the kill cut no call short"
        assert any(rows[n] and rows[n].outcome == "abandoned" for n in seen - set(finished))
        for request_id, result in finished.items():
            row = rows[request_id]
            assert row is not None, (seed, request_id)
            assert row.outcome == "success", (seed, request_id)
            assert (row.input_tokens, row.output_tokens, row.cost_nano_usd) == (
                result.usage.input_token_count,
                result.usage.output_token_count,
                result.cost.total_nano_usd,
            )
        for request_id in seen:
            row = rows[request_id]
            assert row is not None, f"seed {seed}: {request_id} reached the upstream, no row"
            assert row.outcome in ("success", "abandoned", "cancelled", "failed"), row.outcome
        assert counter.reserved_nano_usd == 0, f"seed {seed}: a reservation outlived its lease"
        assert counter.spent_nano_usd == total.cost_nano_usd, "budgets charge what the ledger says"
