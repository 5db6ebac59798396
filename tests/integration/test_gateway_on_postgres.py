"""The gateway with its ledger in a real PostgreSQL (storage.ledger_url): every call's row
reaches PostgreSQL with the figures the caller saw; with PostgreSQL stopped, calls go on
(the rows wait in the local outbox) and are delivered once, when it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
from google.protobuf import timestamp_pb2
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import usage_pb2 as upb
from llmgateway.v1 import usage_pb2_grpc as upb_grpc
from llmgateway_server.storage.base import AttemptRecord, UsageRecord

from tests.support import admin
from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.servers import PostgresServer
from tests.support.upstream import FakeUpstream, Replay


def _config(base_url: str, tmp_path: Path, postgres_server: PostgresServer) -> str:
    storage = f"""
storage:
  url: sqlite:///{tmp_path}/gateway.db
  ledger_url: {postgres_server.url}
"""
    return providers_config(base_url, extra=storage)


async def _rows(url: str) -> dict[str, tuple[int, int, int]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT request_id, input_tokens, output_tokens, cost_nano_usd FROM usage_calls"
        )
        return {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}


async def _until_rows(
    url: str, request_ids: set[str], timeout_s: float = 15.0
) -> dict[str, tuple[int, int, int]]:
    until = time.monotonic() + timeout_s
    while True:
        rows = await _rows(url)
        if request_ids <= rows.keys() or time.monotonic() > until:
            return rows
        await asyncio.sleep(0.1)


async def _complete(gw: object, text: str) -> pb.Completion:
    stub = gw.stub  # type: ignore[attr-defined]
    reply = await stub.Complete(
        pb.CompleteRequest(model="gpt", messages=[user(text)], max_tokens=32), timeout=10
    )
    return reply.completion  # type: ignore[no-any-return]


async def test_every_call_has_its_row_in_postgresql_with_the_figures_the_caller_saw(
    upstream: FakeUpstream, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    async with running_gateway(
        _config(upstream.base_url, tmp_path, postgres_server), env=ENV
    ) as gw:
        results = [await _complete(gw, f"Question number {i}") for i in range(3)]
        rows = await _until_rows(postgres_server.url, {r.request_id for r in results})
    for r in results:
        assert rows[r.request_id] == (
            r.usage.input_token_count,
            r.usage.output_token_count,
            r.cost.total_nano_usd,
        )


async def test_calls_go_on_while_postgresql_is_down_and_their_rows_arrive_once_it_is_back(
    upstream: FakeUpstream, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    async with running_gateway(
        _config(upstream.base_url, tmp_path, postgres_server), env=ENV
    ) as gw:
        before = await _complete(gw, "Before the outage")
        await asyncio.to_thread(postgres_server.stop)
        during = [await _complete(gw, f"During the outage {i}") for i in range(3)]
        await asyncio.to_thread(postgres_server.start)
        wanted = {before.request_id, *(r.request_id for r in during)}
        rows = await _until_rows(postgres_server.url, wanted)
    assert wanted <= rows.keys()
    async with await psycopg.AsyncConnection.connect(postgres_server.url) as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT request_id) FROM usage_calls")
        total, distinct = (await cur.fetchone()) or (0, 0)
    assert total == distinct == len(wanted)  # none lost, none doubled


_PARTS = "cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, image_input_tokens"


async def _fetch(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


async def test_cache_writes_reach_postgresql_per_call_and_per_attempt_as_the_caller_saw_them(
    upstream: FakeUpstream, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    # A recorded Anthropic answer that wrote 2500 prompt tokens to the cache (1000 of them
    # with the 1-hour TTL) and read 1800 from it.
    upstream.script("claude-haiku", Replay("prompt_caching"))
    async with running_gateway(
        _config(upstream.base_url, tmp_path, postgres_server), env=ENV
    ) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(model="claude", messages=[user("Can we terminate?")]), timeout=10
        )
        result = reply.completion
        await _until_rows(postgres_server.url, {result.request_id})
    usage = result.usage
    seen = (
        usage.cache_write_input_token_count,
        usage.cache_write_1h_input_token_count,
        usage.reasoning_token_count,
        usage.image_input_token_count,
    )
    assert seen[:2] == (2500, 1000)
    url = postgres_server.url
    assert await _fetch(
        url,
        f"SELECT input_tokens, cached_input_tokens, {_PARTS} FROM usage_calls "
        "WHERE request_id = %s",
        result.request_id,
    ) == [(usage.input_token_count, usage.cached_input_token_count, *seen)]
    assert await _fetch(
        url, f"SELECT {_PARTS} FROM usage_attempts WHERE request_id = %s", result.request_id
    ) == [seen]


async def test_get_usage_on_postgresql_sums_cache_write_reasoning_and_image_tokens(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    sqlite = tmp_path / "gateway.db"
    config = admin.admin_config(sqlite).replace(
        f"url: sqlite:///{sqlite}\n",
        f"url: sqlite:///{sqlite}\n  ledger_url: {postgres_server.url}\n",
    )
    async with running_gateway(config, env=admin.ENV) as gw:
        now = time.time()
        # Through the gateway's ledger (outbox, then PostgreSQL), as the ledger policy
        # writes a call's record (the mock provider reports none of these counts).
        for request_id, writes, writes_1h, reasoning, images in (
            ("a", 400, 300, 12, 5),
            ("b", 8, 0, 0, 1),
        ):
            await gw.ledger.write(
                UsageRecord(
                    request_id,
                    "acme",
                    "echo",
                    "success",
                    now,
                    input_tokens=10,
                    output_tokens=20,
                    cache_write_tokens=writes,
                    cache_write_1h_tokens=writes_1h,
                    reasoning_tokens=reasoning,
                    image_input_tokens=images,
                    cost_nano_usd=3,
                    attempts=(AttemptRecord("mock", "mock-echo", "SUCCESS"),),
                )
            )
        reply = await upb_grpc.UsageServiceStub(gw.channel).GetUsage(
            upb.GetUsageRequest(start_time=_stamp(now - 60)),
            metadata=gw.metadata(admin.ADMIN_KEY),
            timeout=10,
        )
        rows = await _until_rows(postgres_server.url, {"a", "b"})
    assert {"a", "b"} <= rows.keys()  # delivered, and counted once whether or not yet
    assert list(reply.rows) == [
        upb.UsageRow(
            group={"tenant": "acme"},
            call_count=2,
            input_token_count=20,
            output_token_count=40,
            cost_nano_usd=6,
            cache_write_input_token_count=408,
            cache_write_1h_input_token_count=300,
            reasoning_token_count=12,
            image_input_token_count=6,
        )
    ]


def _stamp(unix_s: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(unix_s * 1e9))
    return stamp
