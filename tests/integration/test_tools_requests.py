"""What the upstream receives for tools, tool results, structured output, images and cache
breakpoints: the translated request of each provider checked field by field, for unary
and streaming calls, against the fake upstream over real HTTP."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, system, user
from tests.support.upstream import FakeUpstream, Respond

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER_SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
TOOLS = [
    pb.Tool(name="get_weather", description="Weather in a city", parameters=WEATHER_SCHEMA),
    pb.Tool(name="get_time", parameters='{"type":"object","properties":{}}', strict=True),
]


def _tool_conversation() -> list[pb.Message]:
    """A user question, the model's two parallel calls, both results and a follow-up."""
    return [
        system("Be brief."),
        user("Weather in Paris and Tokyo?"),
        pb.Message(
            role=pb.ROLE_ASSISTANT,
            content="Checking.",
            tool_calls=[
                pb.ToolCall(id="call_a1", name="get_weather", arguments='{"city":"Paris"}'),
                pb.ToolCall(id="call_b2", name="get_weather", arguments='{"city":"Tokyo"}'),
            ],
        ),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_a1", content="18C"),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_b2", content="timeout", is_error=True),
        user("And tomorrow?"),
    ]


async def _call(up: FakeUpstream, route: str, streaming: bool, **fields: Any) -> dict[str, Any]:
    """Make one call on ``route`` and return the JSON body the upstream received."""
    up.script_any(Respond(text="ok", input_tokens=10, output_tokens=1))
    async with running_gateway(providers_config(up.base_url), env=ENV) as gw:
        stub: Any = gw.stub
        if streaming:
            events = [
                e
                async for e in stub.StreamComplete(
                    pb.StreamCompleteRequest(model=route, max_tokens=64, **fields), timeout=10
                )
            ]
            assert events[-1].HasField("result")
        else:
            await stub.Complete(
                pb.CompleteRequest(model=route, max_tokens=64, **fields), timeout=10
            )
    body = up.requests[-1].body
    assert isinstance(body, dict)
    assert body.get("stream", False) is streaming
    return body


@pytest.mark.parametrize("streaming", [False, True])
async def test_openai_receives_tools_choice_and_the_tool_conversation(
    upstream: FakeUpstream, streaming: bool
) -> None:
    body = await _call(
        upstream,
        "gpt",
        streaming,
        messages=_tool_conversation(),
        tools=TOOLS,
        tool_choice=pb.ToolChoice(
            mode=pb.TOOL_CHOICE_MODE_REQUIRED, disable_parallel_tool_calls=True
        ),
    )
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        },
    ]
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_b2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b2", "content": "timeout"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_receives_tool_results_as_one_user_turn_before_the_text(
    upstream: FakeUpstream, streaming: bool
) -> None:
    body = await _call(
        upstream,
        "claude",
        streaming,
        messages=_tool_conversation(),
        tools=TOOLS,
        tool_choice=pb.ToolChoice(
            mode=pb.TOOL_CHOICE_MODE_REQUIRED, disable_parallel_tool_calls=True
        ),
    )
    assert body["system"] == "Be brief."
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}, "strict": True},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_a1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_b2",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b2",
                    "content": "timeout",
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("mode", "name", "openai", "anthropic"),
    [
        (pb.TOOL_CHOICE_MODE_AUTO, "", "auto", {"type": "auto"}),
        (pb.TOOL_CHOICE_MODE_NONE, "", "none", {"type": "none"}),
        (pb.TOOL_CHOICE_MODE_REQUIRED, "", "required", {"type": "any"}),
        (
            pb.TOOL_CHOICE_MODE_TOOL,
            "get_time",
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
)
async def test_tool_choice_translates_for_each_provider(
    upstream: FakeUpstream, mode: int, name: str, openai: Any, anthropic: Any
) -> None:
    fields: dict[str, Any] = {
        "messages": [user("time?")],
        "tools": TOOLS,
        "tool_choice": pb.ToolChoice(mode=mode, name=name),  # type: ignore[arg-type]
    }
    body = await _call(upstream, "gpt", False, **fields)
    assert body["tool_choice"] == openai
    assert "parallel_tool_calls" not in body
    body = await _call(upstream, "claude", False, **fields)
    assert body["tool_choice"] == anthropic


@pytest.mark.parametrize("streaming", [False, True])
async def test_structured_output_uses_each_providers_native_form(
    upstream: FakeUpstream, streaming: bool
) -> None:
    schema = (
        '{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],'
        '"additionalProperties":false}'
    )
    fmt = pb.ResponseFormat(
        type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="person", schema=schema, strict=True
    )
    body = await _call(upstream, "gpt", streaming, messages=[user("who?")], response_format=fmt)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    body = await _call(upstream, "claude", streaming, messages=[user("who?")], response_format=fmt)
    assert body["output_config"] == {
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        }
    }
    assert "tools" not in body  # native structured output, not tool-forcing
    assert "tool_choice" not in body


async def test_json_object_output(upstream: FakeUpstream) -> None:
    fmt = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    body = await _call(upstream, "gpt", False, messages=[user("json")], response_format=fmt)
    assert body["response_format"] == {"type": "json_object"}
    body = await _call(
        upstream, "claude", False, messages=[system("Be brief."), user("json")], response_format=fmt
    )
    assert body["system"] == "Be brief.\n\nAnswer with one JSON object and nothing else."
    assert "output_config" not in body


@pytest.mark.parametrize("streaming", [False, True])
async def test_images_as_data_and_urls(upstream: FakeUpstream, streaming: bool) -> None:
    message = pb.Message(
        role=pb.ROLE_USER,
        parts=[
            pb.ContentPart(text="What is in these?"),
            pb.ContentPart(
                image=pb.Image(data=PNG, media_type="image/png", detail=pb.IMAGE_DETAIL_LOW)
            ),
            pb.ContentPart(image=pb.Image(url="https://example.com/cat.jpg")),
        ],
    )
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = await _call(upstream, "gpt", streaming, messages=[message])
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    body = await _call(upstream, "claude", streaming, messages=[message])
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(PNG).decode(),
                    },
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


async def test_a_data_url_image_is_decoded_and_checked(upstream: FakeUpstream) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    message = pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(image=pb.Image(url=data_url))])
    body = await _call(upstream, "claude", False, messages=[message])
    source = body["messages"][0]["content"][0]["source"]
    assert source == {"type": "base64", "media_type": "image/png", "data": data_url.split(",")[1]}


async def test_cache_breakpoints_reach_anthropic_and_not_openai(upstream: FakeUpstream) -> None:
    hour = pb.CacheControl(ttl=pb.CACHE_TTL_1H)
    five = pb.CacheControl()
    fields: dict[str, Any] = {
        "messages": [
            pb.Message(role=pb.ROLE_SYSTEM, content="Long policy text.", cache_control=hour),
            pb.Message(
                role=pb.ROLE_USER,
                parts=[
                    pb.ContentPart(text="A long document.", cache_control=five),
                    pb.ContentPart(text="Q?"),
                ],
            ),
        ],
        "tools": [pb.Tool(name="lookup", parameters='{"type":"object"}', cache_control=hour)],
    }
    body = await _call(upstream, "claude", False, **fields)
    assert body["system"] == [
        {
            "type": "text",
            "text": "Long policy text.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    assert body["tools"] == [
        {
            "name": "lookup",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "A long document.",
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Q?"},
            ],
        }
    ]
    body = await _call(upstream, "gpt", False, **fields)
    assert "cache_control" not in str(body)
    assert body["messages"][0] == {"role": "system", "content": "Long policy text."}


async def test_plain_text_requests_keep_their_plain_form(upstream: FakeUpstream) -> None:
    body = await _call(upstream, "claude", False, messages=[system("S"), user("a"), user("b")])
    assert body["messages"] == [{"role": "user", "content": "a\n\nb"}]
    assert body["system"] == "S"
    for key in ("tools", "tool_choice", "output_config"):
        assert key not in body
    body = await _call(upstream, "gpt", False, messages=[user("a")])
    for key in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
        assert key not in body


# Key order that is not sorted, $defs and $ref nested two deep, a big integer beyond 64
# bits, a float written with an exponent, and spacing: what a parse-and-reserialize loses.
REF_SCHEMA = (
    '{"type": "object", "$defs": {"address": {"type": "object", "properties": '
    '{"zip": {"type": "string"}, "city": {"$ref": "#/$defs/city"}}}, "city": '
    '{"type": "string", "maxLength": 12345678901234567890123}}, "properties": '
    '{"home": {"$ref": "#/$defs/address"}, "ratio": {"type": "number", "maximum": 1.0e2}}}'
)


@pytest.mark.parametrize("route", ["gpt", "claude"])
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_nested_ref_schema_arrives_upstream_byte_for_byte(
    upstream: FakeUpstream, route: str, streaming: bool
) -> None:
    await _call(
        upstream,
        route,
        streaming,
        messages=[user("where?")],
        tools=[pb.Tool(name="locate", parameters=REF_SCHEMA)],
        response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="place", schema=REF_SCHEMA
        ),
    )
    raw = upstream.requests[-1].raw
    # Once as the tool's schema, once as the output schema.
    assert raw.count(REF_SCHEMA.encode()) == 2
