"""Budgets and rate limits as a caller meets them: max_tokens lowered to what the budget
affords, a refusal below the route's floor that names the limit, a reused request id
refused without reaching the upstream, rate limits, and a budget store that is down."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV
from tests.support.gateway import RunningGateway, error_info, running_gateway, user
from tests.support.servers import RedisServer
from tests.support.upstream import FakeUpstream

KEY = "team-key-budgets-000001"
ENV_WITH_KEY = {**ENV, "TEAM_KEY": KEY}


def _config(
    base_url: str,
    database: Path,
    *,
    budgets: str = "{}",
    rate_limits: str = "{}",
    min_max_tokens: int = 16,
    storage_extra: str = "",
    on_store_error: str = "closed",
) -> str:
    return f"""
server:
  default_deadline_s: 30
storage:
  url: sqlite:///{database}{storage_extra}
budgets:
  on_store_error: {on_store_error}
auth:
  tenants:
    - name: team
      api_key_env: TEAM_KEY
      budgets: {budgets}
      rate_limits: {rate_limits}
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
    # Output at $1 per million tokens, input free: N output tokens cost N x 1,000 nano.
    price: {{input_per_million_usd: "0", output_per_million_usd: "1", version: v1}}
routes:
  gpt:
    targets: [gpt]
    default_max_tokens: 100
    min_max_tokens: {min_max_tokens}
"""


async def _complete(gw: RunningGateway, request_id: str) -> pb.Completion:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model="gpt", messages=[user("hello")], request_id=request_id),
        metadata=gw.metadata(KEY),
        timeout=10,
    )
    return reply.completion


async def _refused(gw: RunningGateway, request_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _complete(gw, request_id)
    return caught.value


async def test_max_tokens_is_lowered_to_what_the_budget_affords(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # $0.00006 a day: 60 output tokens.
    text = _config(upstream.base_url, tmp_path / "s.db", budgets='{usd_per_day: "0.00006"}')
    async with running_gateway(text, env=ENV_WITH_KEY) as gw:
        completion = await _complete(gw, "r1")
    (request,) = upstream.requests
    assert request.body["max_tokens"] == 60
    assert completion.cost.total_nano_usd <= 60_000


async def test_below_the_routes_floor_the_call_is_refused_naming_the_limit(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    text = _config(
        upstream.base_url, tmp_path / "s.db", budgets='{usd_per_day: "0.00006"}', min_max_tokens=80
    )
    async with running_gateway(text, env=ENV_WITH_KEY) as gw:
        error = await _refused(gw, "r1")
        record = await gw.ledger.wait_for("r1")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, metadata, details = error_info(error)
    assert reason == "BUDGET_EXCEEDED"
    assert metadata["scope"] == "tenant:team"
    assert (metadata["window"], metadata["dimension"], metadata["limit"]) == ("day", "usd", "60000")
    assert any(isinstance(d, error_details_pb2.QuotaFailure) for d in details)
    assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details)
    assert upstream.request_count() == 0
    assert (record.outcome, record.error_reason) == ("rejected", "BUDGET_EXCEEDED")


async def test_a_reused_request_id_is_refused_and_never_reaches_the_upstream_again(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with running_gateway(
        _config(upstream.base_url, tmp_path / "s.db"), env=ENV_WITH_KEY
    ) as gw:
        first = await _complete(gw, "same-id")
        error = await _refused(gw, "same-id")
        records = gw.ledger.by_request("same-id")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error)[0] == "REQUEST_ID_REUSED"
    assert upstream.request_count() == 1
    assert first.cost.total_nano_usd > 0
    # The refusal's record is offered too, but the ledger keeps the first row only.
    assert records[0].outcome == "success"


async def test_a_tenant_over_its_requests_per_minute_is_rate_limited(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    text = _config(upstream.base_url, tmp_path / "s.db", rate_limits="{requests_per_minute: 2}")
    async with running_gateway(text, env=ENV_WITH_KEY) as gw:
        await _complete(gw, "r1")
        await _complete(gw, "r2")
        error = await _refused(gw, "r3")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, metadata, details = error_info(error)
    assert (reason, metadata["window"], metadata["dimension"]) == (
        "RATE_LIMITED",
        "minute",
        "requests",
    )
    (retry,) = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    assert 0 < retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 <= 60
    assert upstream.request_count() == 2


@pytest.mark.parametrize("on_store_error", ["closed", "open"])
async def test_a_budget_store_that_is_down_fails_closed_unless_told_open(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, on_store_error: str
) -> None:
    text = _config(
        upstream.base_url,
        tmp_path / "s.db",
        budgets='{usd_per_day: "10"}',
        storage_extra=f"\n  budgets_url: {redis_server.url}",
        on_store_error=on_store_error,
    )
    async with running_gateway(text, env=ENV_WITH_KEY) as gw:
        await _complete(gw, "before")
        redis_server.kill()
        if on_store_error == "closed":
            error = await _refused(gw, "during")
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error)[0] == "STORE_UNAVAILABLE"
            assert upstream.request_count() == 1, "no call without a reservation"
        else:
            await _complete(gw, "during")
            assert upstream.request_count() == 2
