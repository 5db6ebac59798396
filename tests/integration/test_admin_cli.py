"""``llmgateway admin ...`` and ``llmgateway usage`` round trips against a real in-process
gateway: the command line runs in a thread (it is blocking gRPC) while the test's event
loop serves."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import grpc
import pytest
from llmgateway_server.cli import main

from tests.support.admin import ADMIN_KEY, TEAM_KEY, admin_gateway, complete
from tests.support.gateway import RunningGateway


async def _cli(
    capsys: pytest.CaptureFixture[str], gw: RunningGateway, *argv: str
) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before is not this command's
    code = await asyncio.to_thread(main, [*argv, "--address", gw.address])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin key where the command line reads it."""
    monkeypatch.setenv("LLMGATEWAY_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("LLMGATEWAY_API_KEY", raising=False)


@pytest.mark.usefixtures("admin_env")
async def test_tenants_and_keys_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_gateway() as gw:
        code, out, _ = await _cli(
            capsys,
            gw,
            "admin",
            "tenants",
            "create",
            "acme",
            "--routes",
            "echo",
            "--usd-per-day",
            "12.50",
            "--requests-per-minute",
            "60",
        )
        assert code == 0
        assert "budgets: usd_per_day=12.5" in out
        assert "rate_limits: requests_per_minute=60" in out

        code, out, _ = await _cli(capsys, gw, "admin", "tenants", "list")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["name", "defined_in", "routes", "budgets", "rate_limits"]
        assert lines[1].split()[:3] == ["acme", "store", "echo"]
        assert lines[2].split()[:2] == ["team-config", "config"]

        code, out, _ = await _cli(
            capsys, gw, "admin", "tenants", "update", "acme", "--usd-per-day", "none"
        )
        assert (code, "budgets: unlimited" in out) == (0, True)
        code, out, _ = await _cli(capsys, gw, "admin", "tenants", "get", "acme")
        assert "budgets: unlimited" in out
        assert "rate_limits: requests_per_minute=60" in out  # untouched by the update

        code, out, err = await _cli(capsys, gw, "admin", "keys", "create", "acme")
        assert code == 0
        key = out.strip()
        assert key.startswith("lgw_")
        assert out == f"{key}\n"  # the key alone on stdout
        assert "not shown again" in err
        assert key not in err
        await complete(gw, key)

        code, out, _ = await _cli(capsys, gw, "admin", "keys", "list", "acme")
        (row,) = out.splitlines()[1:]
        key_id, prefix, _created, _last_used, revoked, _budgets = row.split()
        assert (prefix, revoked) == (key[:12], "-")

        code, out, _ = await _cli(capsys, gw, "admin", "keys", "rotate", "acme", key_id)
        assert code == 0
        new_key = out.strip()
        await complete(gw, new_key)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(gw, key)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        code, out, _ = await _cli(capsys, gw, "admin", "keys", "list", "acme", "--json")
        new_id = next(k["id"] for k in json.loads(out)["keys"] if k["id"] != key_id)
        code, out, _ = await _cli(capsys, gw, "admin", "keys", "revoke", "acme", new_id)
        assert code == 0
        assert out.startswith(f"revoked key {new_id}")
        with pytest.raises(grpc.aio.AioRpcError):
            await complete(gw, new_key)


@pytest.mark.usefixtures("admin_env")
async def test_usage_as_csv_adds_up_to_the_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_gateway() as gw:
        for _ in range(3):
            await complete(gw, TEAM_KEY)
        code, out, _ = await _cli(
            capsys, gw, "usage", "--group-by", "tenant,route", "--from", "2000-01-01", "--csv"
        )
        assert code == 0
        rows = list(csv.DictReader(io.StringIO(out)))
        records = gw.ledger.records
        assert rows == [
            {
                "tenant": "team-config",
                "route": "echo",
                "calls": "3",
                "input_tokens": str(sum(r.input_tokens for r in records)),
                "output_tokens": str(sum(r.output_tokens for r in records)),
                "cached_input_tokens": "0",
                "cache_write_tokens": "0",
                "cache_write_1h_tokens": "0",
                "reasoning_tokens": "0",
                "image_input_tokens": "0",
                "cost_nano_usd": str(sum(r.cost_nano_usd for r in records)),
                "cost_usd": f"0.{sum(r.cost_nano_usd for r in records):09d}",
            }
        ]
        # A range that ends before the calls: no rows, just the header.
        code, out, _ = await _cli(
            capsys, gw, "usage", "--from", "2000-01-01", "--to", "2000-02-01", "--csv"
        )
        assert out.splitlines() == [
            "tenant,calls,input_tokens,output_tokens,cached_input_tokens,cache_write_tokens,"
            "cache_write_1h_tokens,reasoning_tokens,image_input_tokens,cost_nano_usd,cost_usd"
        ]


async def test_usage_with_a_tenants_key_sees_its_own_tenant_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMGATEWAY_ADMIN_KEY", raising=False)
    monkeypatch.setenv("LLMGATEWAY_API_KEY", TEAM_KEY)
    async with admin_gateway() as gw:
        await complete(gw, TEAM_KEY)
        code, out, _ = await _cli(capsys, gw, "usage")
        assert code == 0
        assert [line.split()[:2] for line in out.splitlines()[1:]] == [["team-config", "1"]]
        code, _, err = await _cli(capsys, gw, "usage", "--tenant", "acme")
        assert code == 1
        assert "PERMISSION_DENIED TENANT_ACCESS_DENIED" in err


@pytest.mark.usefixtures("admin_env")
async def test_a_refused_command_says_why_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_gateway() as gw:
        code, out, err = await _cli(
            capsys, gw, "admin", "tenants", "create", "acme", "--usd-per-day", "-5"
        )
        assert (code, out) == (1, "")
        assert "INVALID_ARGUMENT INVALID_REQUEST" in err
        assert "tenant.budgets.usd_per_day" in err
        code, _, err = await _cli(capsys, gw, "admin", "keys", "list", "ghost")
        assert code == 1
        assert "NOT_FOUND TENANT_NOT_FOUND" in err


async def test_without_a_key_in_the_environment_nothing_is_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMGATEWAY_ADMIN_KEY", raising=False)
    async with admin_gateway() as gw:
        code, out, err = await _cli(capsys, gw, "admin", "tenants", "list")
        assert (code, out) == (2, "")
        assert "LLMGATEWAY_ADMIN_KEY" in err
        assert "shell history" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["admin", "--help"],
        ["admin", "keys", "create", "--help"],
        ["admin", "tenants", "update", "--help"],
        ["usage", "--help"],
    ],
)
def test_help_says_keys_come_from_the_environment_never_an_argument(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LLMGATEWAY_ADMIN_KEY" in out
    assert "shell history" in out
    assert "--key " not in out
    assert "--api-key" not in out
