"""The llmgateway-client command line, run in a worker thread against the scripted
gateway, with stdout and stderr captured."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import API_KEY
from llmgateway.v1 import gateway_pb2
from llmgateway_client import Completion, Cost, ModelInfo, ModelTarget, Price, Usage
from llmgateway_client.cli import format_model, format_summary, main
from scripted_gateway import (
    ScriptedGateway,
    aborting,
    completion_pb,
    refusal_delta,
    replying,
    retry_info,
    rich_status,
    streaming,
    tool_call_delta,
    tool_call_pb,
)

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


# A schema whose text a re-serialization would change (key order, spacing, $defs/$ref,
# an integer beyond 64 bits): the CLI sends it byte for byte.
SCHEMA = (
    '{"type": "object",  "required": ["name"],\n'
    ' "$defs": {"age": {"type": "integer", "maximum": 12345678901234567890123}},\n'
    ' "properties": {"name": {"type": "string"}, "age": {"$ref": "#/$defs/age"}}}\n'
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8


async def test_complete_attaches_images_before_the_prompt(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "chart").write_bytes(PNG)
    (tmp_path / "photo.png").write_bytes(JPEG)  # sniffed, not taken from the name

    code = await run_cli(
        "--target",
        gateway.target,
        "complete",
        "--system",
        "Be brief.",
        "--image",
        str(tmp_path / "chart"),
        "--image-url",
        "https://example.com/cat.webp",
        "--image",
        str(tmp_path / "photo.png"),
        "Compare them",
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "Hello from mock\n"  # the plain-text output is unchanged
    assert err == USAGE_LINE + "\n"
    request = gateway.servicer.request_to("StreamComplete", gateway_pb2.StreamCompleteRequest)
    system, user = request.messages
    assert (system.role, system.content) == (gateway_pb2.ROLE_SYSTEM, "Be brief.")
    assert (user.role, user.content) == (gateway_pb2.ROLE_USER, "")
    assert list(user.parts) == [
        gateway_pb2.ContentPart(image=gateway_pb2.Image(data=PNG, media_type="image/png")),
        gateway_pb2.ContentPart(image=gateway_pb2.Image(url="https://example.com/cat.webp")),
        gateway_pb2.ContentPart(image=gateway_pb2.Image(data=JPEG, media_type="image/jpeg")),
        gateway_pb2.ContentPart(text="Compare them"),
    ]
    assert not request.tools
    assert not request.HasField("response_format")
    assert not request.HasField("tool_choice")


async def test_complete_json_schema_sends_the_file_byte_for_byte_named_by_its_stem(
    gateway: ScriptedGateway, tmp_path: Path
) -> None:
    path = tmp_path / "person.schema.json"
    path.write_text(SCHEMA, encoding="utf-8")

    await run_cli("--target", gateway.target, "complete", "--json-schema", str(path), "Ann, 41")
    await run_cli(
        "--target",
        gateway.target,
        "complete",
        "--no-stream",
        "--json-schema",
        str(path),
        "--schema-name",
        "person",
        "--strict",
        "Ann, 41",
    )
    await run_cli("--target", gateway.target, "complete", "--no-stream", "--json", "Ann, 41")

    streamed = gateway.servicer.request_to("StreamComplete", gateway_pb2.StreamCompleteRequest)
    assert streamed.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="person_schema", schema=SCHEMA
    )

    named, json_object = (call.request for call in gateway.servicer.calls_to("Complete"))
    assert isinstance(named, gateway_pb2.CompleteRequest)
    assert named.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        name="person",
        schema=SCHEMA,
        strict=True,
    )
    assert isinstance(json_object, gateway_pb2.CompleteRequest)
    assert json_object.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    )


async def test_complete_json_schema_keeps_crlf_line_ends(
    gateway: ScriptedGateway, tmp_path: Path
) -> None:
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + SCHEMA.replace("\n", "\r\n").encode())  # BOM, CRLF

    await run_cli("--target", gateway.target, "complete", "--json-schema", str(path), "Hi")

    request = gateway.servicer.request_to("StreamComplete", gateway_pb2.StreamCompleteRequest)
    assert request.response_format.name == "windows"
    assert request.response_format.schema == SCHEMA.replace("\n", "\r\n")


async def test_complete_sends_tools_from_files_and_the_tool_choice(
    gateway: ScriptedGateway, tmp_path: Path
) -> None:
    parameters = SCHEMA.strip()
    (tmp_path / "lookup.json").write_text(
        '{"name": "lookup", "description": "Find a person.",\n "parameters":  '
        + parameters
        + ', "strict": true}',
        encoding="utf-8",
    )
    (tmp_path / "ping.json").write_text('{"name": "ping"}', encoding="utf-8")

    await run_cli(
        "--target",
        gateway.target,
        "complete",
        "--tool",
        str(tmp_path / "lookup.json"),
        "--tool",
        str(tmp_path / "ping.json"),
        "--tool-choice",
        "lookup",
        "Who is Ann?",
    )
    await run_cli(
        "--target",
        gateway.target,
        "complete",
        "--tool",
        str(tmp_path / "ping.json"),
        "--tool-choice",
        "required",
        "Ping",
    )

    first, second = (call.request for call in gateway.servicer.calls_to("StreamComplete"))
    assert isinstance(first, gateway_pb2.StreamCompleteRequest)
    assert list(first.tools) == [
        gateway_pb2.Tool(
            name="lookup", description="Find a person.", parameters=parameters, strict=True
        ),
        gateway_pb2.Tool(name="ping"),
    ]
    assert first.tool_choice == gateway_pb2.ToolChoice(
        mode=gateway_pb2.TOOL_CHOICE_MODE_TOOL, name="lookup"
    )
    assert isinstance(second, gateway_pb2.StreamCompleteRequest)
    assert second.tool_choice == gateway_pb2.ToolChoice(mode=gateway_pb2.TOOL_CHOICE_MODE_REQUIRED)


TOOL_CALLS = [
    tool_call_pb("call_1", "lookup", '{"name": "Ann"}'),
    tool_call_pb("call_2", "ping", '{"n": ', invalid=True),
]


async def test_complete_prints_the_tool_calls(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    result = completion_pb(
        "Let me look.", finish_reason=gateway_pb2.FINISH_REASON_TOOL_CALLS, tool_calls=TOOL_CALLS
    )
    gateway.servicer.complete = replying(result)
    gateway.servicer.stream = streaming(
        "Let me",
        " look.",
        tool_call_delta(0, "call_1", "lookup", '{"name": "Ann"}'),
        tool_call_delta(1, "call_2", "ping", '{"n": '),
        result=result,
    )
    expected = (
        "Let me look.\n"
        'tool call: lookup({"name": "Ann"})\n'
        'tool call: ping({"n": ) (arguments are not valid JSON)\n'
    )

    for mode in ("--no-stream", None):
        code = await run_cli("--target", gateway.target, "complete", *filter(None, [mode]), "Hi")

        out, err = capsys.readouterr()
        assert code == 0
        assert out == expected
        assert err == USAGE_LINE + " · finish tool_calls\n"


async def test_complete_prints_the_refusal(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.servicer.stream = streaming(
        refusal_delta("I can't"),
        refusal_delta(" help with that."),
        result=completion_pb(
            "",
            finish_reason=gateway_pb2.FINISH_REASON_REFUSAL,
            refusal="I can't help with that.",
        ),
    )

    code = await run_cli("--target", gateway.target, "complete", "Something bad")

    out, err = capsys.readouterr()
    assert code == 0
    assert out == "refusal: I can't help with that.\n"
    assert err == USAGE_LINE + " · finish refusal\n"


async def test_count_tokens_sends_images_and_tools(
    gateway: ScriptedGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.gif").write_bytes(b"GIF89a\x01\x00")
    (tmp_path / "ping.json").write_text('{"name": "ping"}', encoding="utf-8")

    code = await run_cli(
        "--target",
        gateway.target,
        "count-tokens",
        "--image",
        str(tmp_path / "a.gif"),
        "--tool",
        str(tmp_path / "ping.json"),
        "What is this?",
    )

    assert code == 0
    assert capsys.readouterr().out == "12 input tokens (exact) · context window 128000\n"
    request = gateway.servicer.request_to("CountTokens", gateway_pb2.CountTokensRequest)
    assert [part.image.media_type or part.text for part in request.messages[0].parts] == [
        "image/gif",
        "What is this?",
    ]
    assert [tool.name for tool in request.tools] == ["ping"]


@pytest.mark.parametrize(
    ("files", "argv", "message"),
    [
        ({}, ["--image", "{tmp}/missing.png"], "argument --image: [Errno 2]"),
        ({"a.bmp": b"BM.."}, ["--image", "{tmp}/a.bmp"], "not a PNG, JPEG, GIF or WebP image"),
        ({"t.json": b'{"name": "f", "params": {}}'}, ["--tool", "{tmp}/t.json"], "params"),
        ({"s.json": b"[1]"}, ["--json-schema", "{tmp}/s.json"], "is a JSON object"),
        ({"s.json": b"{"}, ["--json-schema", "{tmp}/s.json"], "argument --json-schema"),
        ({"s.json": b"{}"}, ["--json", "--json-schema", "{tmp}/s.json"], "not allowed with"),
        ({}, ["--strict"], "--strict goes with --json-schema"),
        ({}, ["--schema-name", "person"], "--schema-name goes with --json-schema"),
        ({"s.json": b"{}"}, ["--json-schema", "{tmp}/s.json", "--schema-name", "a b"], "1-64"),
        ({}, ["--tool-choice", ""], "tool name"),
    ],
)
def test_complete_refuses_bad_flags_before_calling(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, bytes],
    argv: list[str],
    message: str,
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    with pytest.raises(SystemExit) as caught:
        main(["complete", *(arg.format(tmp=tmp_path) for arg in argv), "Hi"])

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_summary_and_models_show_the_new_lines_only_when_present() -> None:
    completion = Completion(
        "",
        "stop",
        Usage(12, 5, 100, cache_write_tokens=400, reasoning_tokens=3, image_input_tokens=85),
        Cost(total_nano_usd=42),
        "anthropic",
        "claude",
    )
    assert format_summary(completion) == (
        "usage: 12 in / 5 out (100 cached, 400 cache write, 3 reasoning, 85 image)"
        " · cost $0.000000042 · served by anthropic/claude"
    )
    price = Price(
        3_000_000_000,
        15_000_000_000,
        300_000_000,
        "v1",
        cache_write_5m_nano_usd_per_million_tokens=3_750_000_000,
        cache_write_1h_nano_usd_per_million_tokens=6_000_000_000,
    )
    model = ModelInfo("smart", 200_000, 1024, (ModelTarget("anthropic", "claude", 200_000, price),))
    assert format_model(model).splitlines()[1] == (
        "  anthropic/claude  context 200000 · per 1M tokens: $3 in / $15 out / $0.3 cached"
        " / $3.75 cache write 5m / $6 cache write 1h (prices v1)"
    )


def _aborting_stream(status: grpc.Status) -> Any:
    async def handler(request: Any, context: Any) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (makes this an async generator)

    return handler
