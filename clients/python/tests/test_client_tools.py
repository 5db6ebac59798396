"""Tools, images, cache breakpoints, structured output and refusals, through AsyncClient
against the scripted gateway: what each request carries, field by field, and how the
answers and streamed events come back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import llmgateway_client
import pytest
from llmgateway.v1 import gateway_pb2
from llmgateway_client import (
    AsyncClient,
    Completion,
    Image,
    ImagePart,
    Message,
    RefusalDelta,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallAccumulator,
    ToolCallDelta,
    ToolChoice,
)
from scripted_gateway import (
    ScriptedGateway,
    completion_pb,
    refusal_delta,
    replying,
    streaming,
    tool_call_delta,
    tool_call_pb,
)

# A schema whose text a re-serialization would change: odd key order and spacing, $defs
# and $ref, an integer beyond 64 bits, an exponent, an escaped character.
SCHEMA = (
    '{ "type" : "object",\n'
    '  "$defs": {"unit": {"enum": ["c", "f"], "description": "caf\\u00e9"}},\n'
    '  "required": ["city"],\n'
    '  "properties": {"unit": {"$ref": "#/$defs/unit"},\n'
    '                 "city": {"type": "string", "maxLength": 12345678901234567890123},\n'
    '                 "days": {"type": "number", "maximum": 1.0e2}},\n'
    '  "additionalProperties": false }'
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


async def test_tools_are_sent_field_by_field_with_the_schema_byte_for_byte(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.complete(
        "default",
        "Weather in Paris?",
        tools=[
            Tool("get_weather", "The weather in a city.", SCHEMA, strict=True, cache="1h"),
            Tool("get_time", parameters={"type": "object", "b": 1, "a": {"z": 2, "y": 3}}),
            Tool("ping"),
        ],
    )

    request = gateway.servicer.request_to("Complete", gateway_pb2.CompleteRequest)
    weather, time, ping = request.tools
    assert weather.name == "get_weather"
    assert weather.description == "The weather in a city."
    assert weather.parameters == SCHEMA
    assert weather.strict is True
    assert weather.HasField("cache_control")
    assert weather.cache_control.ttl == gateway_pb2.CACHE_TTL_1H
    # A dict is serialized with json.dumps, in its own key order.
    assert time.parameters == '{"type": "object", "b": 1, "a": {"z": 2, "y": 3}}'
    assert time.strict is False
    assert not time.HasField("cache_control")
    assert (ping.name, ping.description, ping.parameters) == ("ping", "", "")
    assert not request.HasField("tool_choice")
    assert not request.HasField("response_format")


@pytest.mark.parametrize(
    ("choice", "mode", "name", "disable_parallel"),
    [
        ("auto", gateway_pb2.TOOL_CHOICE_MODE_AUTO, "", False),
        ("none", gateway_pb2.TOOL_CHOICE_MODE_NONE, "", False),
        ("required", gateway_pb2.TOOL_CHOICE_MODE_REQUIRED, "", False),
        (ToolChoice.auto(disable_parallel=True), gateway_pb2.TOOL_CHOICE_MODE_AUTO, "", True),
        (ToolChoice.none(), gateway_pb2.TOOL_CHOICE_MODE_NONE, "", False),
        (ToolChoice.required(), gateway_pb2.TOOL_CHOICE_MODE_REQUIRED, "", False),
        (
            ToolChoice.tool("get_weather", disable_parallel=True),
            gateway_pb2.TOOL_CHOICE_MODE_TOOL,
            "get_weather",
            True,
        ),
    ],
)
async def test_tool_choice_is_sent(
    gateway: ScriptedGateway,
    client: AsyncClient,
    choice: ToolChoice | Literal["auto", "none", "required"],
    mode: int,
    name: str,
    disable_parallel: bool,
) -> None:
    await client.complete(
        "default",
        "Hi",
        tools=[Tool("get_weather", parameters=SCHEMA)],
        tool_choice=choice,
    )

    request = gateway.servicer.request_to("Complete", gateway_pb2.CompleteRequest)
    assert request.HasField("tool_choice")
    assert request.tool_choice.mode == mode
    assert request.tool_choice.name == name
    assert request.tool_choice.disable_parallel_tool_calls is disable_parallel


async def test_a_tool_choice_string_other_than_a_mode_is_refused(client: AsyncClient) -> None:
    with pytest.raises(ValueError, match=r"ToolChoice\.tool"):
        await client.complete("default", "Hi", tool_choice="get_weather")  # type: ignore[arg-type]


async def test_json_schema_response_format_is_sent_byte_for_byte(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.complete(
        "default", "Weather?", response_format=ResponseFormat.json_schema("weather", SCHEMA)
    )
    await client.complete(
        "default",
        "Weather?",
        response_format=ResponseFormat.json_schema(
            "forecast", {"type": "object", "properties": {}}, strict=True
        ),
    )
    await client.complete("default", "Weather?", response_format=ResponseFormat.json_object())

    first, second, third = (call.request for call in gateway.servicer.calls_to("Complete"))
    assert isinstance(first, gateway_pb2.CompleteRequest)
    assert first.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="weather", schema=SCHEMA
    )
    assert isinstance(second, gateway_pb2.CompleteRequest)
    assert second.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        name="forecast",
        schema='{"type": "object", "properties": {}}',
        strict=True,
    )
    assert isinstance(third, gateway_pb2.CompleteRequest)
    assert third.HasField("response_format")
    assert third.response_format == gateway_pb2.ResponseFormat(
        type=gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    )


async def test_parts_images_and_cache_breakpoints_are_sent_field_by_field(
    gateway: ScriptedGateway, client: AsyncClient, tmp_path: Path
) -> None:
    (tmp_path / "chart.bin").write_bytes(PNG)  # the media type comes from the bytes
    await client.complete(
        "default",
        [
            Message.system("A long, stable preamble.", cache="1h"),
            Message.user(
                [
                    "Compare these:",
                    Image.from_file(tmp_path / "chart.bin", detail="high"),
                    Image.from_url("https://example.com/cat.webp"),
                    ImagePart(Image.from_bytes(b"GIF89a...", detail="low"), cache="5m"),
                    TextPart("Which is bigger?"),
                ],
                name="ann",
            ),
            Message.user(["Again, briefly."], cache="5m"),
        ],
    )

    request = gateway.servicer.request_to("Complete", gateway_pb2.CompleteRequest)
    system, user, again = request.messages
    assert system.content == "A long, stable preamble."
    assert system.cache_control.ttl == gateway_pb2.CACHE_TTL_1H
    assert not system.parts
    assert (user.role, user.content, user.name) == (gateway_pb2.ROLE_USER, "", "ann")
    assert not user.HasField("cache_control")
    assert list(user.parts) == [
        gateway_pb2.ContentPart(text="Compare these:"),
        gateway_pb2.ContentPart(
            image=gateway_pb2.Image(
                data=PNG, media_type="image/png", detail=gateway_pb2.IMAGE_DETAIL_HIGH
            )
        ),
        gateway_pb2.ContentPart(image=gateway_pb2.Image(url="https://example.com/cat.webp")),
        gateway_pb2.ContentPart(
            image=gateway_pb2.Image(
                data=b"GIF89a...", media_type="image/gif", detail=gateway_pb2.IMAGE_DETAIL_LOW
            ),
            cache_control=gateway_pb2.CacheControl(ttl=gateway_pb2.CACHE_TTL_5M),
        ),
        gateway_pb2.ContentPart(text="Which is bigger?"),
    ]
    assert user.parts[2].image.WhichOneof("source") == "url"
    # A shortcut's breakpoint on a message with parts goes on its last part.
    assert not again.HasField("cache_control")
    assert list(again.parts) == [
        gateway_pb2.ContentPart(
            text="Again, briefly.",
            cache_control=gateway_pb2.CacheControl(ttl=gateway_pb2.CACHE_TTL_5M),
        )
    ]


async def test_a_tool_call_round_trip(gateway: ScriptedGateway, client: AsyncClient) -> None:
    gateway.servicer.complete = replying(
        completion_pb(
            "Let me check.",
            finish_reason=gateway_pb2.FINISH_REASON_TOOL_CALLS,
            tool_calls=[
                tool_call_pb("call_1", "get_weather", '{"city": "Paris"}'),
                tool_call_pb("call_2", "get_weather", '{"city": "Lyo', invalid=True),
            ],
        )
    )
    weather = Tool("get_weather", "The weather in a city.", SCHEMA)
    messages = [Message.user("Weather in Paris and Lyon?")]

    completion = await client.complete("default", messages, tools=[weather])

    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}', False),
        ToolCall("call_2", "get_weather", '{"city": "Lyo', True),
    )
    first, second = completion.tool_calls
    assert first.parse_arguments() == {"city": "Paris"}
    with pytest.raises(json.JSONDecodeError):
        second.parse_arguments()

    messages.append(completion.to_message())
    messages.append(Message.tool_result(first.id, '{"temp_c": 21}'))
    messages.append(Message.tool_result(second.id, "truncated arguments", is_error=True))
    await client.complete("default", messages, tools=[weather])

    request = gateway.servicer.request_to("Complete", gateway_pb2.CompleteRequest)
    _, assistant, result_1, result_2 = request.messages
    assert assistant.role == gateway_pb2.ROLE_ASSISTANT
    assert assistant.content == "Let me check."
    # Sent back as returned, except arguments_invalid: always false in requests.
    assert list(assistant.tool_calls) == [
        gateway_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
        gateway_pb2.ToolCall(id="call_2", name="get_weather", arguments='{"city": "Lyo'),
    ]
    assert (result_1.role, result_1.tool_call_id, result_1.content, result_1.is_error) == (
        gateway_pb2.ROLE_TOOL,
        "call_1",
        '{"temp_c": 21}',
        False,
    )
    assert (result_2.role, result_2.tool_call_id, result_2.is_error) == (
        gateway_pb2.ROLE_TOOL,
        "call_2",
        True,
    )


async def test_refusal_and_its_finish_reason(gateway: ScriptedGateway, client: AsyncClient) -> None:
    gateway.servicer.complete = replying(
        completion_pb(
            "", finish_reason=gateway_pb2.FINISH_REASON_REFUSAL, refusal="I can't help with that."
        )
    )

    completion = await client.complete("default", "Something bad")

    assert completion.finish_reason == "refusal"
    assert completion.refusal == "I can't help with that."
    assert completion.content == ""
    assert completion.tool_calls == ()


async def test_usage_cost_and_price_lines_are_decoded(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.complete = replying(
        completion_pb(
            usage=gateway_pb2.Usage(
                input_token_count=100,
                output_token_count=50,
                cached_input_token_count=1000,
                cache_write_input_token_count=400,
                cache_write_1h_input_token_count=300,
                reasoning_token_count=20,
                image_input_token_count=85,
            ),
            cost=gateway_pb2.Cost(
                total_nano_usd=9_000,
                input_nano_usd=6_000,
                output_nano_usd=3_000,
                price_version="v2",
                cache_read_nano_usd=1_000,
                cache_write_5m_nano_usd=500,
                cache_write_1h_nano_usd=1_500,
                image_input_nano_usd=800,
                reasoning_nano_usd=1_200,
            ),
        )
    )

    completion = await client.complete("default", "Hi")

    assert completion.usage == llmgateway_client.Usage(
        input_tokens=100,
        output_tokens=50,
        cached_input_tokens=1000,
        cache_write_tokens=400,
        cache_write_1h_tokens=300,
        reasoning_tokens=20,
        image_input_tokens=85,
    )
    assert completion.usage.prompt_tokens == 1500
    assert completion.cost == llmgateway_client.Cost(
        total_nano_usd=9_000,
        input_nano_usd=6_000,
        output_nano_usd=3_000,
        price_version="v2",
        cache_read_nano_usd=1_000,
        cache_write_5m_nano_usd=500,
        cache_write_1h_nano_usd=1_500,
        image_input_nano_usd=800,
        reasoning_nano_usd=1_200,
    )

    async def priced(request: object, context: object) -> gateway_pb2.ListModelsResponse:
        price = gateway_pb2.Price(
            input_nano_usd_per_million_tokens=3_000_000_000,
            output_nano_usd_per_million_tokens=15_000_000_000,
            cached_input_nano_usd_per_million_tokens=300_000_000,
            version="2025-01",
            cache_write_5m_nano_usd_per_million_tokens=3_750_000_000,
            cache_write_1h_nano_usd_per_million_tokens=6_000_000_000,
            reasoning_nano_usd_per_million_tokens=15_000_000_000,
            image_input_nano_usd_per_million_tokens=3_000_000_000,
        )
        target = gateway_pb2.Target(provider="anthropic", upstream_model="claude", price=price)
        return gateway_pb2.ListModelsResponse(models=[gateway_pb2.Model(targets=[target])])

    gateway.servicer.list_models = priced
    ((target,),) = [model.targets for model in await client.list_models()]
    assert target.price == llmgateway_client.Price(
        input_nano_usd_per_million_tokens=3_000_000_000,
        output_nano_usd_per_million_tokens=15_000_000_000,
        cached_input_nano_usd_per_million_tokens=300_000_000,
        version="2025-01",
        cache_write_5m_nano_usd_per_million_tokens=3_750_000_000,
        cache_write_1h_nano_usd_per_million_tokens=6_000_000_000,
        reasoning_nano_usd_per_million_tokens=15_000_000_000,
        image_input_nano_usd_per_million_tokens=3_000_000_000,
    )


TOOL_STREAM = (
    "Checking",
    tool_call_delta(0, "call_1", "get_weather"),
    tool_call_delta(0, arguments='{"city":'),
    tool_call_delta(1, "call_2", "get_time", arguments=""),
    tool_call_delta(0, arguments=' "Paris"}'),
    tool_call_delta(1, arguments='{"tz": "CET"}'),
)
TOOL_RESULT = completion_pb(
    "Checking",
    finish_reason=gateway_pb2.FINISH_REASON_TOOL_CALLS,
    tool_calls=[
        tool_call_pb("call_1", "get_weather", '{"city": "Paris"}'),
        tool_call_pb("call_2", "get_time", '{"tz": "CET"}'),
    ],
)


async def test_stream_events_include_tool_call_deltas_and_accumulate_into_calls(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(*TOOL_STREAM, result=TOOL_RESULT)
    stream = client.stream("default", "Weather?", tools=[Tool("get_weather", parameters=SCHEMA)])

    events = [event async for event in stream.events()]

    assert events[:-1] == [
        TextDelta("Checking"),
        ToolCallDelta(0, "call_1", "get_weather", ""),
        ToolCallDelta(0, "", "", '{"city":'),
        ToolCallDelta(1, "call_2", "get_time", ""),
        ToolCallDelta(0, "", "", ' "Paris"}'),
        ToolCallDelta(1, "", "", '{"tz": "CET"}'),
    ]
    result = events[-1]
    assert isinstance(result, Completion)
    assert stream.completion is result
    expected = (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_2", "get_time", '{"tz": "CET"}'),
    )
    assert result.tool_calls == expected
    assert stream.tool_calls == expected
    accumulator = ToolCallAccumulator(e for e in events if isinstance(e, ToolCallDelta))
    assert accumulator.tool_calls == expected
    request = gateway.servicer.request_to("StreamComplete", gateway_pb2.StreamCompleteRequest)
    assert request.tools[0].parameters == SCHEMA


async def test_accumulated_calls_show_partial_arguments_as_they_form(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(*TOOL_STREAM, result=TOOL_RESULT)
    seen: list[tuple[ToolCall, ...]] = []
    accumulator = ToolCallAccumulator()

    async for event in client.stream("default", "Weather?").events():
        if isinstance(event, ToolCallDelta):
            accumulator.add(event)
            seen.append(accumulator.tool_calls)

    assert seen[0] == (ToolCall("call_1", "get_weather", "{}", False),)
    assert seen[1] == (ToolCall("call_1", "get_weather", '{"city":', True),)
    assert seen[-1][0].parse_arguments() == {"city": "Paris"}
    assert seen[-1][1].parse_arguments() == {"tz": "CET"}


async def test_plain_iteration_still_yields_only_text_then_the_completion(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(
        "Hel", *TOOL_STREAM[1:3], "lo", refusal_delta("no"), result=TOOL_RESULT
    )
    stream = client.stream("default", "Hi")

    items = [item async for item in stream]

    assert items[:2] == ["Hel", "lo"]
    assert len(items) == 3
    assert isinstance(items[2], Completion)
    assert stream.text == "Hello"
    assert stream.refusal == "no"
    assert stream.tool_calls == (ToolCall("call_1", "get_weather", '{"city":', True),)


async def test_stream_refusal_deltas_are_typed_events(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(
        refusal_delta("I can't"),
        refusal_delta(" help."),
        result=completion_pb(
            "", finish_reason=gateway_pb2.FINISH_REASON_REFUSAL, refusal="I can't help."
        ),
    )
    stream = client.stream("default", "Something bad")

    events: list[StreamEvent] = [event async for event in stream.events()]

    assert events[:2] == [RefusalDelta("I can't"), RefusalDelta(" help.")]
    assert isinstance(events[2], Completion)
    assert events[2].refusal == "I can't help."
    assert events[2].finish_reason == "refusal"
    assert stream.refusal == "I can't help."
    assert stream.text == ""


async def test_one_delta_with_every_field_gives_its_events_in_order(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = streaming(
        gateway_pb2.Delta(
            text="a",
            tool_call=gateway_pb2.ToolCallDelta(index=0, id="c", name="f", arguments="{}"),
            refusal="r",
        ),
        result=completion_pb("a"),
    )

    events = [event async for event in client.stream("default", "Hi").events()]

    assert events[:3] == [TextDelta("a"), ToolCallDelta(0, "c", "f", "{}"), RefusalDelta("r")]
    assert isinstance(events[3], Completion)


async def test_stream_sends_tools_choice_and_format(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    await client.stream(
        "default",
        "Hi",
        tools=[Tool("f", parameters=SCHEMA)],
        tool_choice=ToolChoice.tool("f"),
        response_format=ResponseFormat.json_object(),
    ).collect()

    request = gateway.servicer.request_to("StreamComplete", gateway_pb2.StreamCompleteRequest)
    assert [tool.parameters for tool in request.tools] == [SCHEMA]
    assert request.tool_choice == gateway_pb2.ToolChoice(
        mode=gateway_pb2.TOOL_CHOICE_MODE_TOOL, name="f"
    )
    assert request.response_format.type == gateway_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT


async def test_count_tokens_sends_the_tools(gateway: ScriptedGateway, client: AsyncClient) -> None:
    await client.count_tokens(
        "default", "Weather?", tools=[Tool("get_weather", "The weather.", SCHEMA, cache="5m")]
    )

    request = gateway.servicer.request_to("CountTokens", gateway_pb2.CountTokensRequest)
    assert list(request.tools) == [
        gateway_pb2.Tool(
            name="get_weather",
            description="The weather.",
            parameters=SCHEMA,
            cache_control=gateway_pb2.CacheControl(ttl=gateway_pb2.CACHE_TTL_5M),
        )
    ]
