"""The Python client against the real gateway: typed results and typed errors decoded
from the statuses the server really sends."""

from __future__ import annotations

import asyncio
import hashlib

import llmgateway_client as lg
import pytest

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway
from tests.support.upstream import Error, FakeUpstream, Respond

KEY = "gw-client-test-key-123"


def _config(base_url: str) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    text = providers_config(base_url).replace(
        "  anonymous_tenant: local",
        f"  tenants:\n    - name: app\n      api_key_sha256: [{digest}]\n"
        "      routes: [gpt, claude, echo, dear]",
    )
    return text.replace(
        "  echo:\n    targets: [echo]",
        '  echo:\n    targets: [echo]\n  dear:\n    targets: [gpt]\n    max_cost_usd: "0.000001"',
    )


async def test_complete_and_stream_return_typed_results(upstream: FakeUpstream) -> None:
    upstream.script("gpt-4o-mini", Respond(text="hello there", input_tokens=9, output_tokens=2))
    upstream.script("claude-haiku", Respond(text="a b c", chunks=3))
    async with (
        running_gateway(_config(upstream.base_url), env=ENV) as gw,
        lg.AsyncClient(gw.address, api_key=KEY) as client,
    ):
        completion = await client.complete("gpt", "hi", tags={"feature": "test"})
        assert completion.content == "hello there"
        assert (completion.usage.input_tokens, completion.usage.output_tokens) == (9, 2)
        assert completion.cost.total_nano_usd > 0
        assert completion.provider == "openai"
        items = [item async for item in client.stream("claude", "go")]
        assert items[:-1] == ["a", " b", " c"]
        assert isinstance(items[-1], lg.Completion)
        assert items[-1].content == "a b c"


async def test_typed_errors_decode_the_gateways_statuses(upstream: FakeUpstream) -> None:
    upstream.set_default("claude-haiku", Error(503, retry_after="4"))
    async with (
        running_gateway(_config(upstream.base_url), env=ENV) as gw,
        lg.AsyncClient(gw.address, api_key=KEY) as client,
    ):
        with pytest.raises(lg.ModelNotFound):
            await client.complete("nope", "x")
        with pytest.raises(lg.PermissionDenied):
            await client.complete("llama", "x")
        with pytest.raises(lg.InvalidRequest) as bad:
            await client.complete("gpt", "x", temperature=9.0)
        assert any(field == "temperature" for field, _ in bad.value.field_violations)
        with pytest.raises(lg.CostLimitExceeded) as cost:
            await client.complete("dear", "x", max_tokens=1000)
        assert cost.value.limit_nano_usd == 1000
        assert cost.value.estimated_nano_usd is not None
        assert cost.value.estimated_nano_usd > 1000
        with pytest.raises(lg.ContextWindowExceeded) as ctx:
            await client.complete("echo", "word " * 40_000, max_tokens=10)
        assert ctx.value.context_window_token_count == 8192
        assert ctx.value.input_token_count is not None
        assert ctx.value.input_token_count > 8192
        with pytest.raises(lg.Unavailable) as down:
            await client.complete("claude", "x")
        assert down.value.retry_after == 4
        assert down.value.attempts[0].startswith("anthropic/claude-haiku:TRANSIENT")
        async with lg.AsyncClient(gw.address, api_key="wrong") as client:
            with pytest.raises(lg.AuthenticationError):
                await client.complete("gpt", "x")


async def test_client_does_not_multiply_retries_the_gateway_already_made(
    upstream: FakeUpstream,
) -> None:
    upstream.set_default("gpt-4o-mini", Error(500))
    text = _config(upstream.base_url) + "defaults:\n  retry: {max_attempts: 2, base_delay_s: 0}\n"
    async with (
        running_gateway(text, env=ENV) as gw,
        lg.AsyncClient(gw.address, api_key=KEY, retry_unavailable=True) as client,
    ):
        with pytest.raises(lg.Unavailable):
            await client.complete("gpt", "x")
    assert upstream.request_count("gpt-4o-mini") == 2


async def test_deadline_exceeded_is_typed(upstream: FakeUpstream) -> None:
    from tests.support.upstream import Hang

    upstream.set_default("gpt-4o-mini", Hang())
    async with (
        running_gateway(_config(upstream.base_url), env=ENV) as gw,
        lg.AsyncClient(gw.address, api_key=KEY, timeout=0.3) as client,
    ):
        with pytest.raises(lg.DeadlineExceeded):
            await client.complete("gpt", "x")


async def test_sync_client_and_cli_against_the_gateway(
    upstream: FakeUpstream, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmgateway_client import cli

    async with running_gateway(_config(upstream.base_url), env=ENV) as gw:

        def blocking() -> tuple[lg.Completion, int]:
            with lg.Client(gw.address, api_key=KEY) as client:
                completion = client.complete("gpt", "sync hello")
            monkeypatch.setenv("LLMGATEWAY_API_KEY", KEY)
            code = cli.main(["--target", gw.address, "complete", "--model", "claude", "cli hello"])
            return completion, code

        completion, code = await asyncio.to_thread(blocking)
    assert completion.content == "Echo: sync hello"
    assert code == 0
    out, err = capsys.readouterr()
    assert out.strip() == "Echo: cli hello"
    assert "usage:" in err
    assert "cost $" in err
    assert KEY not in out + err
