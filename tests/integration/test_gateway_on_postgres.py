"""The gateway with its ledger in a real PostgreSQL (storage.ledger_url): every call's row
reaches PostgreSQL with the figures the caller saw; with PostgreSQL stopped, calls go on
(the rows wait in the local outbox) and are delivered once, when it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.servers import PostgresServer
from tests.support.upstream import FakeUpstream


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
