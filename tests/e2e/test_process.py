"""The gateway as a real process: start-up, SIGTERM draining, logs, and the CLIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc

from tests.support.configs import ENV, OPENAI_KEY, providers_config
from tests.support.gateway import user
from tests.support.processes import gateway_process as support_process
from tests.support.upstream import Error, FakeUpstream, Respond

REPO = Path(__file__).resolve().parents[2]
SERVICE = "llmgateway.v1.GatewayService"


@dataclass
class GatewayProcess:
    """A gateway subprocess and where its output goes."""

    proc: asyncio.subprocess.Process
    address: str
    log_path: Path

    def logs(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log_path.read_text()


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, config_text: str | None, env: dict[str, str]
) -> AsyncIterator[GatewayProcess]:
    """Start ``llmgateway run`` on a free port; kill it if the test did not stop it."""
    args = [sys.executable, "-m", "llmgateway_server", "run", "--listen", "127.0.0.1:0"]
    if config_text is not None:
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(config_text)
        args += ["--config", str(config_path)]
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=tmp_path,  # the default SQLite store goes to tmp_path/data/, never the repo
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.startswith(b"llmgateway listening on "), line + log_path.read_bytes()
        address = line.decode().rsplit(" ", 1)[1].strip()
        yield GatewayProcess(proc, address, log_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_reports_not_serving_and_lets_an_inflight_stream_finish(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    text = providers_config(upstream.base_url).replace(
        "default_deadline_s: 30", "default_deadline_s: 30\n  grace_period_s: 10"
    )
    upstream.script(
        "gpt-4o-mini",
        Respond(text=" ".join(f"w{i}" for i in range(30)), chunks=30, chunk_delay_s=0.03),
    )
    async with gateway_process(tmp_path, text, ENV) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=15)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            stub = pb_grpc.GatewayServiceStub(channel)
            stream = stub.StreamComplete(
                pb.StreamCompleteRequest(model="gpt", messages=[user("go")]), timeout=15
            )
            first = await stream.read()
            assert first.HasField("delta")
            gw.proc.send_signal(signal.SIGTERM)

            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

            events = [first]
            while (event := await stream.read()) != grpc.aio.EOF:
                events.append(event)
            assert events[-1].HasField("result"), "the in-flight stream finished with its result"
            assert events[-1].result.content == " ".join(f"w{i}" for i in range(30))

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Complete(
                    pb.CompleteRequest(model="echo", messages=[user("x")]), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(gw.proc.wait(), timeout=10) == 0
    logs = gw.logs()
    assert any(json.loads(line)["msg"] == "stopped" for line in logs.splitlines())


async def test_provider_keys_never_appear_in_logs(upstream: FakeUpstream, tmp_path: Path) -> None:
    # The upstream echoes the key back in its error message, as OpenAI's 401 does.
    upstream.set_default(
        "gpt-4o-mini", Error(401, message=f"Incorrect API key provided: {OPENAI_KEY}")
    )
    upstream.set_default("claude-haiku", Error(500, message=f"boom {ENV['TEST_ANTHROPIC_KEY']}"))
    text = providers_config(upstream.base_url).replace(
        "server:\n", "server:\n  log_level: debug\n", 1
    )
    async with gateway_process(tmp_path, text, ENV) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            for route, fails in (("gpt", True), ("claude", True), ("echo", False)):
                request = pb.CompleteRequest(model=route, messages=[user("x")])
                if not fails:
                    await stub.Complete(request, timeout=10)
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Complete(request, timeout=10)
                assert OPENAI_KEY not in str(info.value)
                assert ENV["TEST_ANTHROPIC_KEY"] not in str(info.value)
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gw.proc.wait(), timeout=10)
    logs = gw.logs()
    assert "attempt failed" in logs, "the failures were logged"
    database = tmp_path / "data" / "llmgateway.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        outcomes = sorted(row[0] for row in db.execute("SELECT outcome FROM usage_calls"))
    assert outcomes == ["failed", "failed", "success"], "the usage ledger has every call"
    stored = b"".join(p.read_bytes() for p in database.parent.iterdir())
    for secret in ENV.values():
        assert secret not in logs
        assert secret[-12:] not in logs
        assert secret.encode() not in stored


async def test_usage_records_land_in_the_sqlite_ledger_with_every_field(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # The embedded default keeps its ledger in data/llmgateway.db under the working
    # directory, whatever the log level, and the record is there when the call returns.
    async with gateway_process(tmp_path, providers_config(upstream.base_url), ENV) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            reply = await stub.Complete(
                pb.CompleteRequest(
                    model="gpt", messages=[user("x")], request_id="req-1", tags={"team": "a"}
                ),
                timeout=10,
            )
            with contextlib.closing(sqlite3.connect(tmp_path / "data" / "llmgateway.db")) as db:
                row = db.execute(
                    "SELECT id, provider, outcome, cost_nano_usd, input_tokens, output_tokens "
                    "FROM usage_calls WHERE request_id = 'req-1'"
                ).fetchone()
                tags = db.execute(
                    "SELECT name, value FROM usage_tags WHERE call_id = ?", (row[0],)
                ).fetchall()
                attempts = db.execute(
                    "SELECT outcome, cost_nano_usd FROM usage_attempts WHERE call_id = ?",
                    (row[0],),
                ).fetchall()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gw.proc.wait(), timeout=10)
    usage = reply.completion.usage
    assert row[1:] == (
        "openai",
        "success",
        reply.completion.cost.total_nano_usd,
        usage.input_token_count,
        usage.output_token_count,
    )
    assert row[3] > 0
    assert tags == [("team", "a")]
    assert attempts == [("SUCCESS", row[3])]
    access = [json.loads(line) for line in gw.logs().splitlines() if '"llmgateway.access"' in line]
    assert [(a["method"], a["code"], a["tenant"]) for a in access] == [("Complete", "OK", "local")]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_gateway_streams_on_either_event_loop(
    upstream: FakeUpstream, tmp_path: Path, loop: str
) -> None:
    text = providers_config(upstream.base_url).replace(
        "default_deadline_s: 30", f"default_deadline_s: 30\n  event_loop: {loop}"
    )
    upstream.script("claude-haiku", Respond(text="on any loop", chunks=3))
    async with gateway_process(tmp_path, text, ENV) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            events = [
                e
                async for e in stub.StreamComplete(
                    pb.StreamCompleteRequest(model="claude", messages=[user("x")]), timeout=10
                )
            ]
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.proc.wait(), timeout=10) == 0
    assert "".join(e.delta.text for e in events[:-1]) == "on any loop"
    assert events[-1].result.content == "on any loop"


async def test_embedded_default_serves_offline(tmp_path: Path) -> None:
    async with gateway_process(tmp_path, None, {}) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            reply = await stub.Complete(
                pb.CompleteRequest(model="default", messages=[user("hello")]), timeout=10
            )
            assert reply.completion.provider == "mock"
            assert reply.completion.cost.total_nano_usd > 0
        gw.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(gw.proc.wait(), timeout=10) == 0


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmgateway_server",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_config_accepts_the_examples_and_names_a_missing_variable(
    tmp_path: Path,
) -> None:
    code, out, _ = await _cli(
        "check-config",
        str(REPO / "config" / "example.yaml"),
        env={
            "OPENAI_API_KEY": "x" * 20,
            "ANTHROPIC_API_KEY": "y" * 20,
            "LLMGATEWAY_TEAM_SEARCH_KEY": "z" * 20,
        },
    )
    assert code == 0, out
    code, _, err = await _cli("check-config", str(REPO / "config" / "example.yaml"))
    assert code == 2
    assert "OPENAI_API_KEY is not set" in err


async def test_check_config_rejects_unknown_keys_with_their_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        providers_config("http://127.0.0.1:1").replace(
            "default_deadline_s: 30", "default_deadline: 30"
        )
    )
    code, _, err = await _cli("check-config", str(bad), env=ENV)
    assert code == 2
    assert "server.default_deadline: unknown key" in err


async def test_health_command_reports_serving(tmp_path: Path) -> None:
    async with gateway_process(tmp_path, None, {}) as gw:
        code, out, _ = await _cli("health", "--address", gw.address)
        assert (code, out.strip()) == (0, "SERVING")
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gw.proc.wait(), timeout=10)


async def test_the_embedded_default_keeps_its_ledger_and_llmgateway_usage_reads_it_back(
    tmp_path: Path,
) -> None:
    # What a new user's `make run` does: the embedded default, a SQLite file under data/
    # in the working directory; the ledger outlives a restart.
    async with support_process(tmp_path, None, {}) as gw:
        async with grpc.aio.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            await stub.Complete(
                pb.CompleteRequest(model="default", messages=[user("remember me")]), timeout=10
            )
        assert await gw.stop() == 0
    assert (tmp_path / "data" / "llmgateway.db").exists()
    async with support_process(tmp_path, None, {}) as gw:
        code, out, err = await _cli(
            "usage", "--address", gw.address, "--csv", "--group-by", "tenant,route"
        )
        assert await gw.stop() == 0
    assert code == 0, err
    header, row = out.strip().splitlines()
    fields = dict(zip(header.split(","), row.split(","), strict=True))
    assert (fields["tenant"], fields["route"], fields["calls"]) == ("local", "default", "1")
    assert int(fields["cost_nano_usd"]) > 0
