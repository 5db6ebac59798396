"""The Redis budget store on a real Redis Cluster of three primaries, through the cluster
client (``storage.budgets_cluster``): tenants spread over every node reserve, refuse and
settle; rate limits; expired reservations are found on every node; a node that lost its
data is detected and rebuilt; and the gateway runs on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway_server.storage.base import (
    BudgetLimits,
    CountersLost,
    Periods,
    RateLimits,
    Reservation,
    Scope,
)
from llmgateway_server.storage.redis_budgets import RedisBudgetStore, key_slot

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.servers import RedisServer, ServerMissing, skip_or_fail, start_cluster
from tests.support.upstream import FakeUpstream


def _utc(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


NOW = _utc(2099, 12, 2, 12)
DEC2 = Periods("2099-12-02", "2099-12", _utc(2099, 12, 3), _utc(2100, 1, 1))
TENANTS = [f"tenant-{i}" for i in range(24)]  # hash tags spread over the three nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    try:
        nodes = start_cluster(tmp_path_factory.mktemp("redis-cluster-3"))
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
async def store(cluster: list[RedisServer]) -> AsyncIterator[RedisBudgetStore]:
    for node in cluster:
        with node.client() as c:
            c.flushall()
    store = RedisBudgetStore.from_url(cluster[0].url.removesuffix("/0"), cluster=True)
    await store.rebuild({}, [])
    yield store
    await store.aclose()


def _owner(cluster: list[RedisServer], tenant: str) -> int:
    slot = key_slot(tenant)
    return min(i for i in range(3) if slot < (i + 1) * 16384 // 3)


def _reservation(
    tenant: str, request_id: str, nano_usd: int, lease: float = NOW + 60
) -> Reservation:
    limits = BudgetLimits(usd_per_day_nano=1000)
    return Reservation(
        request_id, tenant, (Scope("tenant", tenant, limits),), DEC2, nano_usd, 10, lease
    )


def test_the_tenants_are_spread_over_every_node(cluster: list[RedisServer]) -> None:
    assert {_owner(cluster, t) for t in TENANTS} == {0, 1, 2}


async def test_reserve_refuse_and_settle_on_every_node(store: RedisBudgetStore) -> None:
    for tenant in TENANTS:
        assert await store.reserve(_reservation(tenant, f"{tenant}-a", 700)) is None
        refusal = await store.reserve(_reservation(tenant, f"{tenant}-b", 400))
        assert refusal is not None
        assert (refusal.scope_id, refusal.limit, refusal.used) == (tenant, 1000, 700)
        await store.settle(f"{tenant}-a", tenant, 100, 5)
        assert await store.reserve(_reservation(tenant, f"{tenant}-c", 800)) is None


async def test_rate_limits_on_every_node(store: RedisBudgetStore) -> None:
    limits = RateLimits(requests_per_minute=2)
    for tenant in TENANTS:
        for _ in range(2):
            assert await store.take(tenant, limits, requests=1, tokens=0, now_unix_s=NOW) is None
        assert await store.take(tenant, limits, requests=1, tokens=0, now_unix_s=NOW) is not None


async def test_expired_reservations_are_found_on_every_node(store: RedisBudgetStore) -> None:
    for tenant in TENANTS:
        assert await store.reserve(_reservation(tenant, f"{tenant}-x", 10, lease=NOW - 1)) is None
    expired = await store.expire(NOW)
    assert sorted(r.request_id for r in expired) == sorted(f"{t}-x" for t in TENANTS)
    assert await store.expire(NOW) == []


async def test_a_node_that_lost_its_data_is_detected_and_rebuilt(
    store: RedisBudgetStore, cluster: list[RedisServer]
) -> None:
    tenant = next(t for t in TENANTS if _owner(cluster, t) == 1)
    assert await store.reserve(_reservation(tenant, "before", 100)) is None
    with cluster[1].client() as c:
        c.flushall()  # this node forgot its counters and its slots' markers
    with pytest.raises(CountersLost):
        await store.reserve(_reservation(tenant, "after", 100))
    await store.rebuild({}, [])
    assert await store.reserve(_reservation(tenant, "after", 100)) is None


async def test_the_gateway_runs_its_budgets_on_the_cluster(
    upstream: FakeUpstream, tmp_path: Path, cluster: list[RedisServer]
) -> None:
    for node in cluster:
        with node.client() as c:
            c.flushall()  # a new cluster: the gateway's first start initialises it
    extra = f"""
storage:
  url: sqlite:///{tmp_path}/gateway.db
  budgets_url: {cluster[2].url.removesuffix("/0")}
  budgets_cluster: true
"""
    async with running_gateway(providers_config(upstream.base_url, extra=extra), env=ENV) as gw:
        for i in range(3):
            reply = await gw.stub.Complete(
                pb.CompleteRequest(model="gpt", messages=[user(f"Hello {i}")], max_tokens=16),
                timeout=10,
            )
            assert reply.completion.content
    assert upstream.request_count() == 3
