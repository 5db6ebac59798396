"""Targets within a tier are balanced by weight or by least in-flight."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from llmgateway.v1 import gateway_pb2 as pb

from tests.support.clock import FakeClock
from tests.support.gateway import running_gateway, user


class SeededClock(FakeClock):
    """A fake clock whose randomness is a seeded generator: reproducible draws."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def random(self) -> float:
        return self._rng.random()


def _tier_config(balance: str, latency_ms: int = 0) -> str:
    return f"""
auth:
  anonymous_tenant: local
providers:
  p1:
    type: mock
    first_token_latency_ms: {latency_ms}
  p2:
    type: mock
    first_token_latency_ms: {latency_ms}
targets:
  heavy: {{provider: p1, model: heavy, context_window: 8192}}
  light: {{provider: p2, model: light, context_window: 8192}}
routes:
  pool:
    tiers:
      - targets: [{{target: heavy, weight: 3}}, {{target: light, weight: 1}}]
        balance: {balance}
"""


async def test_weighted_tier_spreads_calls_by_weight() -> None:
    async with running_gateway(_tier_config("weighted"), clock=SeededClock(7)) as gw:
        served = Counter()
        for _ in range(400):
            reply = await gw.stub.Complete(
                pb.CompleteRequest(model="pool", messages=[user("x")]), timeout=10
            )
            served[reply.completion.upstream_model] += 1
    assert served["heavy"] + served["light"] == 400
    assert 250 <= served["heavy"] <= 350, served  # expected 300 of 400


async def test_least_in_flight_sends_a_concurrent_call_to_the_idle_target() -> None:
    async with running_gateway(_tier_config("least_in_flight", latency_ms=1500)) as gw:
        request = pb.CompleteRequest(model="pool", messages=[user("x")])
        first = asyncio.ensure_future(gw.stub.Complete(request, timeout=10))
        await asyncio.sleep(0.3)  # the first call is now in flight for another ~1.2 s
        second = await gw.stub.Complete(request, timeout=10)
        first_reply = await first
    assert {first_reply.completion.upstream_model, second.completion.upstream_model} == {
        "heavy",
        "light",
    }
