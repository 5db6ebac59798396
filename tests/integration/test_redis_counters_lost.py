"""A Redis that loses its data (restarted without persistence, FLUSHALL) loses no budget:
the next call finds the counters gone, the gateway rebuilds them from the ledger (and the
reservations it holds) before admitting anything, and the limit holds as before."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import gateway_pb2 as pb
from redis.asyncio import Redis

from tests.support.configs import ENV
from tests.support.gateway import RunningGateway, error_info, running_gateway, user
from tests.support.servers import RedisServer
from tests.support.upstream import FakeUpstream, Respond

MAX_TOKENS = 100
PER_CALL_NANO = MAX_TOKENS * 1_000  # output at $1 per million tokens, input free
K = 6
LIMIT_NANO = K * PER_CALL_NANO


def _config(base_url: str, database: Path, redis_url: str) -> str:
    return f"""
server:
  default_deadline_s: 30
storage:
  url: sqlite:///{database}
  budgets_url: {redis_url}
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
    price: {{input_per_million_usd: "0", output_per_million_usd: "1", version: v1}}
routes:
  gpt:
    targets: [gpt]
    default_max_tokens: {MAX_TOKENS}
    min_max_tokens: {MAX_TOKENS}
"""


async def _complete(gw: RunningGateway, n: int) -> str:
    try:
        await gw.stub.Complete(
            pb.CompleteRequest(model="gpt", messages=[user(f"call {n}")], request_id=f"r{n}"),
            metadata=gw.metadata("team-key-redis-lost-001"),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        return error_info(exc)[0]
    return "OK"


async def test_counters_lost_by_redis_are_rebuilt_from_the_ledger_before_admitting(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Each call really spends its whole reservation: 100 output tokens at 1,000 nano-USD.
    upstream.set_default(None, Respond(text=" ".join(["w"] * MAX_TOKENS), output_tokens=MAX_TOKENS))
    env = {**ENV, "TEAM_KEY": "team-key-redis-lost-001"}
    text = _config(upstream.base_url, tmp_path / "replica.db", redis_server.url)
    async with running_gateway(text, env=env) as gw:
        assert [await _complete(gw, n) for n in range(K // 2)] == ["OK"] * (K // 2)
        redis = Redis.from_url(redis_server.url)
        try:
            await redis.flushall()  # Redis forgets every counter
        finally:
            await redis.aclose()
        # Half the budget was spent before the loss, and the ledger remembers it.
        outcomes = [await _complete(gw, n) for n in range(K // 2, K + 2)]
    assert outcomes == ["OK"] * (K - K // 2) + ["BUDGET_EXCEEDED"] * 2
    assert upstream.request_count() == K


pytestmark = pytest.mark.slow
