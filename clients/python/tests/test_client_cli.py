"""The llmgateway-client command line, run in a worker thread against the scripted
gateway, with stdout and stderr captured."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from conftest import API_KEY
from llmgateway.v1 import gateway_pb2
from llmgateway_client.cli import main
from scripted_gateway import ScriptedGateway, aborting, completion_pb, retry_info, rich_status

USAGE_LINE = "usage: 12 in / 5 out (0 cached) · cost $0.000000042 · served by mock/mock-echo"


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMGATEWAY_API_KEY", API_KEY)
    monkeypatch.delenv("LLMGATEWAY_TARGET", raising=False)


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_complete_streams_the_answer_then_prints_usage_and_cost(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli("--target", gateway.target, "complete", "--model", "default", "Hello")

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "Hello from mock\n"
    assert err == USAGE_LINE + "\n"
    (call,) = gateway.servicer.calls
    assert call.method == "StreamComplete"
    assert call.metadata["authorization"] == f"Bearer {API_KEY}"


async def test_complete_no_stream_sends_system_message_and_max_tokens(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(
        "--target",
        gateway.target,
        "complete",
        "--no-stream",
        "--system",
        "Be brief.",
        "--max-tokens",
        "16",
        "Hello",
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "Hello from mock\n"
    assert err == USAGE_LINE + "\n"
    (call,) = gateway.servicer.calls
    assert call.method == "Complete"
    request = call.request
    assert isinstance(request, gateway_pb2.CompleteRequest)
    assert [(m.role, m.content) for m in request.messages] == [
        (gateway_pb2.ROLE_SYSTEM, "Be brief."),
        (gateway_pb2.ROLE_USER, "Hello"),
    ]
    assert request.max_tokens == 16


async def test_summary_mentions_an_unusual_finish_reason(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    async def truncated(request: Any, context: Any) -> gateway_pb2.CompleteResponse:
        return gateway_pb2.CompleteResponse(
            completion=completion_pb("Hel", finish_reason=gateway_pb2.FINISH_REASON_LENGTH)
        )

    gateway.servicer.complete = truncated

    await run_cli("--target", gateway.target, "complete", "--no-stream", "Hello")

    assert capsys.readouterr().err == USAGE_LINE + " · finish length\n"


async def test_failure_prints_one_error_line_and_exits_non_zero(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.servicer.stream = _aborting_stream(
        rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "tenant acme is over\nits rate limit",
            "RATE_LIMITED",
            details=[retry_info(2)],
        )
    )

    code = await run_cli("--target", gateway.target, "complete", "Hello")

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        "llmgateway-client: error: RATE_LIMITED: tenant acme is over its rate limit"
        " (retry after 2s)\n"
    )


async def test_api_key_is_never_printed(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.servicer.complete = aborting(
        rich_status(grpc.StatusCode.UNAUTHENTICATED, "unknown API key", "API_KEY_INVALID")
    )

    code = await run_cli("--target", gateway.target, "complete", "--no-stream", "Hello")

    out, err = capsys.readouterr()
    assert code == 1
    assert err == "llmgateway-client: error: API_KEY_INVALID: unknown API key\n"
    assert API_KEY not in out + err


async def test_api_key_is_read_from_the_named_environment_variable(
    gateway: ScriptedGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_KEY", "sk-other")

    await run_cli("--target", gateway.target, "--api-key-env", "OTHER_KEY", "models")

    assert gateway.servicer.calls[0].metadata["authorization"] == "Bearer sk-other"


async def test_target_comes_from_the_environment(
    gateway: ScriptedGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LLMGATEWAY_TARGET", gateway.target)

    code = await run_cli("count-tokens", "--model", "default", "Hello there")

    assert code == 0
    assert capsys.readouterr().out == "12 input tokens (exact) · context window 128000\n"
    request = gateway.servicer.calls[0].request
    assert isinstance(request, gateway_pb2.CountTokensRequest)
    assert request.messages[0].content == "Hello there"


async def test_models_lists_routes_with_targets_and_prices(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli("--target", gateway.target, "models")

    assert code == 0
    assert capsys.readouterr().out == (
        "default  context 128000 tokens · default max_tokens 1024\n"
        "  mock/mock-echo  context 128000 · per 1M tokens: $0.15 in / $0.6 out"
        " / $0.075 cached (prices 2024-07)\n"
    )


async def test_unreachable_gateway_exits_non_zero_with_unavailable(
    unused_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli("--target", unused_target, "--timeout", "5", "models")

    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("llmgateway-client: error: UNAVAILABLE: ")
    assert err.count("\n") == 1


def _aborting_stream(status: grpc.Status) -> Any:
    async def handler(request: Any, context: Any) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (makes this an async generator)

    return handler
