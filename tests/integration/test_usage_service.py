"""UsageService against a real in-process gateway and its SQLite ledger: the sums match
the ledger's records, groups are as asked, and a tenant's key sees its own tenant only."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import usage_pb2 as upb
from llmgateway.v1 import usage_pb2_grpc as upb_grpc
from llmgateway_server.storage.base import UsageRecord

from tests.support.admin import ADMIN_KEY, TEAM_KEY, admin_gateway, create_key, create_tenant
from tests.support.gateway import RunningGateway, error_info, user


def _stamp(unix_s: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(unix_s * 1e9))
    return stamp


async def _call(gw: RunningGateway, key: str, tags: dict[str, str] | None = None) -> str:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model="echo", messages=[user("count these words")], tags=tags or {}),
        metadata=gw.metadata(key),
        timeout=10,
    )
    await gw.ledger.wait_for(reply.completion.request_id)
    return reply.completion.request_id


async def _usage(
    gw: RunningGateway,
    key: str,
    group_by: Sequence[str] = (),
    *,
    tenant: str = "",
    start: float | None = None,
    end: float | None = None,
) -> list[tuple[dict[str, str], int, int, int, int]]:
    request = upb.GetUsageRequest(
        start_time=_stamp(time.time() - 3600 if start is None else start),
        group_by=list(group_by),
        tenant=tenant,
    )
    if end is not None:
        request.end_time.CopyFrom(_stamp(end))
    reply = await upb_grpc.UsageServiceStub(gw.channel).GetUsage(
        request, metadata=gw.metadata(key), timeout=10
    )
    return [
        (
            dict(r.group),
            r.call_count,
            r.input_token_count,
            r.output_token_count,
            r.cost_nano_usd,
        )
        for r in reply.rows
    ]


async def _usage_error(
    gw: RunningGateway, key: str | None, **fields: object
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await upb_grpc.UsageServiceStub(gw.channel).GetUsage(
            upb.GetUsageRequest(**fields),  # type: ignore[arg-type]
            metadata=gw.metadata(key),
            timeout=10,
        )
    return info.value


def _sums(gw: RunningGateway, tenant: str) -> tuple[int, int, int, int]:
    records = [r for r in gw.ledger.records if r.tenant == tenant]
    return (
        len(records),
        sum(r.input_tokens for r in records),
        sum(r.output_tokens for r in records),
        sum(r.cost_nano_usd for r in records),
    )


async def test_an_admin_sees_every_tenant_with_the_ledgers_sums() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        acme_key = (await create_key(gw)).api_key
        for _ in range(3):
            await _call(gw, acme_key)
        await _call(gw, TEAM_KEY)
        rows = await _usage(gw, ADMIN_KEY, ["tenant"])
        assert rows == [
            ({"tenant": "acme"}, *_sums(gw, "acme")),
            ({"tenant": "team-config"}, *_sums(gw, "team-config")),
        ]
        assert rows[0][1] == 3
        assert rows[0][4] > 0  # the mock target has prices: calls cost something
        # Empty group_by means by tenant.
        assert await _usage(gw, ADMIN_KEY) == rows
        # One tenant on request.
        assert await _usage(gw, ADMIN_KEY, tenant="acme") == rows[:1]


async def test_a_tenants_key_sees_only_its_own_tenant() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        acme_key = (await create_key(gw)).api_key
        await _call(gw, acme_key)
        await _call(gw, TEAM_KEY)
        await _call(gw, TEAM_KEY)
        assert await _usage(gw, TEAM_KEY, ["tenant"]) == [
            ({"tenant": "team-config"}, *_sums(gw, "team-config"))
        ]
        assert await _usage(gw, acme_key, ["route"], tenant="acme") == [
            ({"route": "echo"}, *_sums(gw, "acme"))
        ]
        err = await _usage_error(gw, TEAM_KEY, start_time=_stamp(time.time() - 60), tenant="acme")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err)[:2] == ("TENANT_ACCESS_DENIED", {"tenant": "team-config"})


async def test_usage_groups_by_key_tag_model_provider_and_day() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        first = await create_key(gw)
        second = await create_key(gw)
        await _call(gw, first.api_key, {"team": "search"})
        await _call(gw, first.api_key, {"team": "ads"})
        await _call(gw, second.api_key)
        by_key = await _usage(gw, ADMIN_KEY, ["key"], tenant="acme")
        assert sorted((g["key"], calls) for g, calls, *_ in by_key) == sorted(
            [(first.key.prefix, 2), (second.key.prefix, 1)]
        )
        by_tag = await _usage(gw, ADMIN_KEY, ["tag:team"], tenant="acme")
        assert [(g, calls) for g, calls, *_ in by_tag] == [
            ({"tag:team": ""}, 1),
            ({"tag:team": "ads"}, 1),
            ({"tag:team": "search"}, 1),
        ]
        today = datetime.now(tz=UTC).strftime("%Y-%m-%d")
        rows = await _usage(gw, ADMIN_KEY, ["model", "provider", "day"], tenant="acme")
        assert [(g, calls) for g, calls, *_ in rows] == [
            ({"model": "mock-echo", "provider": "mock", "day": today}, 3)
        ]


async def test_usage_counts_only_calls_inside_the_range() -> None:
    async with admin_gateway() as gw:
        await _call(gw, TEAM_KEY)
        after_first = time.time()
        await _call(gw, TEAM_KEY)
        assert [calls for _, calls, *_ in await _usage(gw, ADMIN_KEY, start=after_first)] == [1]
        assert await _usage(gw, ADMIN_KEY, start=after_first - 3600, end=after_first - 1800) == []


async def test_usage_sums_cache_write_reasoning_and_image_tokens() -> None:
    async with admin_gateway() as gw:
        now = time.time()
        # Written through the gateway's own ledger (the mock provider reports none of
        # these counts), as the ledger policy writes a call's record.
        for request_id, tenant, counts in (
            ("a", "acme", (10, 100, 400, 300, 20, 12, 5)),
            ("b", "acme", (1, 0, 8, 0, 2, 0, 0)),
            ("c", "zeta", (0, 0, 1, 1, 3, 3, 0)),
        ):
            inputs, cached, writes, writes_1h, outputs, reasoning, images = counts
            await gw.ledger.write(
                UsageRecord(
                    request_id,
                    tenant,
                    "echo",
                    "success",
                    now,
                    input_tokens=inputs,
                    cached_input_tokens=cached,
                    cache_write_tokens=writes,
                    cache_write_1h_tokens=writes_1h,
                    output_tokens=outputs,
                    reasoning_tokens=reasoning,
                    image_input_tokens=images,
                    cost_nano_usd=7,
                )
            )
        reply = await upb_grpc.UsageServiceStub(gw.channel).GetUsage(
            upb.GetUsageRequest(start_time=_stamp(now - 60), group_by=["tenant"]),
            metadata=gw.metadata(ADMIN_KEY),
            timeout=10,
        )
    assert list(reply.rows) == [
        upb.UsageRow(
            group={"tenant": "acme"},
            call_count=2,
            input_token_count=11,
            output_token_count=22,
            cached_input_token_count=100,
            cost_nano_usd=14,
            cache_write_input_token_count=408,
            cache_write_1h_input_token_count=300,
            reasoning_token_count=12,
            image_input_token_count=5,
        ),
        upb.UsageRow(
            group={"tenant": "zeta"},
            call_count=1,
            output_token_count=3,
            cost_nano_usd=7,
            cache_write_input_token_count=1,
            cache_write_1h_input_token_count=1,
            reasoning_token_count=3,
        ),
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "start_time"),
        ({"group_by": ["tenant", "colour"]}, "group_by[1]"),
        ({"group_by": ["route", "route"]}, "group_by[1]"),
        ({"group_by": ["tag:"]}, "group_by[0]"),
        ({"group_by": ["tag:a", "tag:b"]}, "group_by[1]"),
        ({"end_time": "before start"}, "end_time"),
    ],
)
async def test_a_bad_usage_request_is_invalid_argument_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    start = time.time() - 60
    request: dict[str, object] = {"start_time": _stamp(start)} if field != "start_time" else {}
    for name, value in fields.items():
        request[name] = _stamp(start - 1) if value == "before start" else value
    async with admin_gateway() as gw:
        err = await _usage_error(gw, ADMIN_KEY, **request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = [d for d in error_info(err)[2] if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad.field_violations] == [field]


async def test_usage_needs_a_key() -> None:
    async with admin_gateway() as gw:
        err = await _usage_error(gw, None, start_time=_stamp(time.time() - 60))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
