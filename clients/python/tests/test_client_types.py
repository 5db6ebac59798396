"""The protobuf-free domain types and the public surface of the package."""

from __future__ import annotations

import dataclasses
import decimal
import json
from pathlib import Path

import llmgateway_client
import pytest
from llmgateway_client import (
    Completion,
    Cost,
    Image,
    ImagePart,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolCallAccumulator,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from llmgateway_client._config import channel_options, service_config


def test_cost_usd_is_an_exact_decimal() -> None:
    assert Cost(total_nano_usd=42).usd == decimal.Decimal("0.000000042")
    assert Cost(total_nano_usd=1_500_000_000).usd == decimal.Decimal("1.5")
    assert f"{Cost(total_nano_usd=42).usd:.9f}" == "0.000000042"


def test_message_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        Message("robot", "hi")  # type: ignore[arg-type]


def test_message_shortcuts_set_the_role() -> None:
    assert Message.system("a") == Message("system", "a")
    assert Message.user("b", name="ann") == Message("user", "b", "ann")
    assert Message.assistant("c").role == "assistant"


def test_domain_types_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Message.user("hi").content = "changed"  # type: ignore[misc]


async def test_messages_must_be_message_instances(client: llmgateway_client.AsyncClient) -> None:
    with pytest.raises(TypeError, match="Message"):
        await client.complete("default", [{"role": "user", "content": "hi"}])  # type: ignore[list-item]


def test_service_config_retries_unavailable_only_when_enabled() -> None:
    (method,) = json.loads(service_config(retry_unavailable=True))["methodConfig"]
    assert method["name"] == [{"service": "llmgateway.v1.GatewayService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.2s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    (method,) = json.loads(service_config(retry_unavailable=False))["methodConfig"]
    assert "retryPolicy" not in method
    assert (
        dict(channel_options(retry_unavailable=False, max_message_bytes=1))["grpc.enable_retries"]
        == 0
    )


def test_public_names_are_exported_and_sorted() -> None:
    assert llmgateway_client.__all__ == sorted(llmgateway_client.__all__)
    for name in llmgateway_client.__all__:
        assert hasattr(llmgateway_client, name)


# --- Messages --------------------------------------------------------------------------


def test_message_shortcuts_take_parts() -> None:
    image = Image.from_url("https://example.com/a.png")
    message = Message.user(["Look:", image, TextPart("ok", cache="5m")])

    assert message.content == ""
    assert message.parts == (TextPart("Look:"), ImagePart(image), TextPart("ok", cache="5m"))
    assert Message.user(["a", "b"], cache="1h").parts == (TextPart("a"), TextPart("b", "1h"))
    assert Message.system("rules", cache="5m") == Message("system", "rules", cache="5m")


def test_tool_result_and_assistant_tool_calls() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')

    assert Message.tool_result("call_1", "21C") == Message("tool", "21C", tool_call_id="call_1")
    failed = Message.tool_result("call_1", "timeout", is_error=True)
    assert (failed.role, failed.is_error) == ("tool", True)
    assert Message.assistant(tool_calls=[call]).tool_calls == (call,)
    completion = Completion(
        "Let me check.", "tool_calls", Usage(), Cost(), "mock", "mock-echo", tool_calls=(call,)
    )
    assert completion.to_message() == Message("assistant", "Let me check.", tool_calls=(call,))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Message("tool", "21C"), "tool_call_id"),
        (lambda: Message("user", "hi", tool_call_id="call_1"), "tool_call_id"),
        (lambda: Message("user", "hi", is_error=True), "is_error"),
        (lambda: Message("user", tool_calls=(ToolCall("c", "f"),)), "tool_calls"),
        (lambda: Message("user", "hi", parts=(TextPart("hi"),)), "content or parts"),
        (lambda: Message("user", parts=(TextPart("hi"),), cache="5m"), "on a part"),
        (lambda: Message("user", "hi", cache="2h"), "cache"),  # type: ignore[arg-type]
        (lambda: Message.user([], cache="5m"), "needs content"),
    ],
)
def test_message_rejects_inconsistent_fields(build: object, match: str) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=match):
        build()


def test_message_parts_must_be_parts() -> None:
    with pytest.raises(TypeError, match="parts"):
        Message.user([b"bytes"])  # type: ignore[list-item]


# --- Images ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("magic", "media_type"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    ],
)
def test_image_from_file_sniffs_the_media_type_from_the_bytes(
    tmp_path: Path, magic: bytes, media_type: str
) -> None:
    path = tmp_path / "misleading.png.txt"  # the name is never used for the type
    path.write_bytes(magic + b"rest of the file")

    image = Image.from_file(path, detail="low")

    assert image == Image(data=magic + b"rest of the file", media_type=media_type, detail="low")
    assert Image.from_file(str(path)).media_type == media_type
    assert Image.from_bytes(magic).media_type == media_type


def test_image_of_an_unknown_format_needs_its_media_type(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"BM\x00\x00 a BMP")

    with pytest.raises(ValueError, match=r"picture\.png: not a PNG, JPEG, GIF or WebP"):
        Image.from_file(path)
    with pytest.raises(ValueError, match="media_type"):
        Image.from_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    assert Image.from_file(path, media_type="image/bmp").media_type == "image/bmp"
    with pytest.raises(FileNotFoundError):
        Image.from_file(tmp_path / "missing.png")


def test_image_has_one_source_and_keeps_its_bytes_out_of_repr() -> None:
    with pytest.raises(ValueError, match="either data or a url"):
        Image(data=b"x", url="https://example.com/x.png", media_type="image/png")
    with pytest.raises(ValueError, match="either data or a url"):
        Image()
    with pytest.raises(ValueError, match="media_type"):
        Image(data=b"\x89PNG")
    with pytest.raises(ValueError, match="detail"):
        Image.from_url("https://example.com/x.png", detail="medium")  # type: ignore[arg-type]

    image = Image.from_bytes(b"\xff\xd8\xff" + b"\x00" * 5000)
    assert repr(image) == "Image(data=<5003 bytes>, media_type='image/jpeg')"
    assert repr(Image.from_url("https://x.test/a.gif", detail="auto")) == (
        "Image(url='https://x.test/a.gif', media_type='', detail='auto')"
    )


# --- Tools, tool choice, response format -----------------------------------------------

RAW_PARAMETERS = (
    '{"type":"object", "$defs": {"n": {"type": "integer", "maximum": 12345678901234567890123}},'
    '\n "properties": {"z": {"$ref": "#/$defs/n"}, "a": {"type": "string"}}}'
)


def test_tool_parameters_as_text_are_kept_and_as_a_dict_serialized_in_order() -> None:
    assert Tool("f", parameters=RAW_PARAMETERS).parameters == RAW_PARAMETERS
    ordered = Tool("f", parameters={"z": 1, "a": [1, 2], "m": {"y": None, "b": "é"}})
    assert ordered.parameters == '{"z": 1, "a": [1, 2], "m": {"y": null, "b": "é"}}'
    assert Tool("f").parameters == ""
    with pytest.raises(ValueError, match="name"):
        Tool("")
    with pytest.raises(ValueError, match="JSON compliant"):
        Tool("f", parameters={"maximum": float("nan")})
    assert dataclasses.replace(ordered, strict=True).parameters == ordered.parameters


def test_tool_from_json_keeps_the_parameters_source_text() -> None:
    text = (
        '\n{ "strict" : true ,"parameters" :\t' + RAW_PARAMETERS + " ,\n"
        ' "description": "A \\"quoted\\" tool, {braces}", "name": "lookup"}\n'
    )

    tool = Tool.from_json(text, cache="1h")

    assert tool == Tool(
        "lookup", 'A "quoted" tool, {braces}', RAW_PARAMETERS, strict=True, cache="1h"
    )
    assert Tool.from_json('{"name": "ping"}') == Tool("ping")
    assert Tool.from_json('{"name": "p", "parameters": {}}').parameters == "{}"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[]", "JSON object"),
        ('{"name": "f", "params": {}}', "unknown tool definition keys: params"),
        ('{"description": "no name"}', "name"),
        ('{"name": "f", "parameters": "{}"}', "parameters"),
        ('{"name": "f", "strict": "yes"}', "strict"),
        ('{"name": "f",', "Expecting"),
    ],
)
def test_tool_from_json_rejects_bad_definitions(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Tool.from_json(text)


def test_tool_choice_names_a_tool_only_in_tool_mode() -> None:
    assert ToolChoice.tool("f") == ToolChoice("tool", "f")
    assert ToolChoice.required(disable_parallel=True).disable_parallel
    with pytest.raises(ValueError, match="tool name"):
        ToolChoice("tool")
    with pytest.raises(ValueError, match="tool name"):
        ToolChoice("auto", "f")
    with pytest.raises(ValueError, match="mode"):
        ToolChoice("any")  # type: ignore[arg-type]


def test_response_format_shortcuts_and_checks() -> None:
    schema = ResponseFormat.json_schema("person", RAW_PARAMETERS, strict=True)
    assert (schema.type, schema.name, schema.schema, schema.strict) == (
        "json_schema",
        "person",
        RAW_PARAMETERS,
        True,
    )
    assert ResponseFormat.json_schema("p", {"b": 1, "a": 2}).schema == '{"b": 1, "a": 2}'
    assert ResponseFormat.json_object() == ResponseFormat("json_object")
    assert ResponseFormat.text().type == "text"
    with pytest.raises(ValueError, match="needs a name and a schema"):
        ResponseFormat.json_schema("", RAW_PARAMETERS)
    with pytest.raises(ValueError, match="go with a json_schema"):
        ResponseFormat("json_object", schema=RAW_PARAMETERS)


# --- Streamed tool calls ---------------------------------------------------------------


def test_tool_call_accumulator_puts_fragments_together_by_index() -> None:
    calls = ToolCallAccumulator(
        [
            ToolCallDelta(1, "call_b", "second"),
            ToolCallDelta(0, "call_a", "first", '{"q": '),
            ToolCallDelta(1, arguments="[1, "),
            ToolCallDelta(0, arguments='"x"}'),
        ]
    )

    assert calls.tool_calls == (
        ToolCall("call_a", "first", '{"q": "x"}', False),
        ToolCall("call_b", "second", "[1, ", True),
    )
    calls.add(ToolCallDelta(1, arguments="2]"))
    calls.add(ToolCallDelta(2, "call_c", "third"))
    assert list(calls.tool_calls[1:]) == [
        ToolCall("call_b", "second", "[1, 2]", False),
        ToolCall("call_c", "third", "{}", False),
    ]
    assert ToolCallAccumulator().tool_calls == ()


def test_usage_prompt_tokens_adds_every_input_count() -> None:
    usage = Usage(input_tokens=10, cached_input_tokens=200, cache_write_tokens=30)
    assert usage.prompt_tokens == 240
