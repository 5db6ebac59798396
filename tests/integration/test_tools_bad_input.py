"""Malformed tool conversations, schemas and images are refused with INVALID_ARGUMENT and
a field violation naming the field, before any upstream call."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import error_info, running_gateway, user
from tests.support.upstream import FakeUpstream

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def _call_msg(call_id: str = "call_1", arguments: str = "{}") -> pb.Message:
    return pb.Message(
        role=pb.ROLE_ASSISTANT,
        tool_calls=[pb.ToolCall(id=call_id, name="get_weather", arguments=arguments)],
    )


def _result(call_id: str = "call_1") -> pb.Message:
    return pb.Message(role=pb.ROLE_TOOL, tool_call_id=call_id, content="18C")


def _image(**fields: Any) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(image=pb.Image(**fields))])


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "tool result without its call": (
        {"messages": [user("hi"), _result()]},
        "messages[1].tool_call_id",
    ),
    "unknown tool_call_id": (
        {"messages": [user("hi"), _call_msg("call_1"), _result("call_2")]},
        "messages[2].tool_call_id",
    ),
    "a call never answered": (
        {"messages": [user("hi"), _call_msg("call_1"), user("and?")]},
        "messages[1].tool_calls",
    ),
    "a call answered twice": (
        {"messages": [user("hi"), _call_msg(), _result(), _result()]},
        "messages[3].tool_call_id",
    ),
    "tool message without tool_call_id": (
        {"messages": [user("hi"), pb.Message(role=pb.ROLE_TOOL, content="x")]},
        "messages[1].tool_call_id",
    ),
    "tool calls on a user message": (
        {
            "messages": [
                pb.Message(
                    role=pb.ROLE_USER, tool_calls=[pb.ToolCall(id="c", name="f", arguments="{}")]
                )
            ]
        },
        "messages[0].tool_calls",
    ),
    "arguments that are not JSON": (
        {"messages": [user("hi"), _call_msg(arguments="{city"), _result()]},
        "messages[1].tool_calls[0].arguments",
    ),
    "invalid schema JSON": (
        {"messages": [user("hi")], "tools": [pb.Tool(name="f", parameters='{"type": "object"')]},
        "tools[0].parameters",
    ),
    "a schema that is not an object": (
        {"messages": [user("hi")], "tools": [pb.Tool(name="f", parameters="[1, 2]")]},
        "tools[0].parameters",
    ),
    "a bad tool name": (
        {"messages": [user("hi")], "tools": [pb.Tool(name="get weather")]},
        "tools[0].name",
    ),
    "two tools with one name": (
        {"messages": [user("hi")], "tools": [pb.Tool(name="f"), pb.Tool(name="f")]},
        "tools[1].name",
    ),
    "tool choice naming an unknown tool": (
        {
            "messages": [user("hi")],
            "tools": [pb.Tool(name="f")],
            "tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_TOOL, name="g"),
        },
        "tool_choice.name",
    ),
    "required tool choice without tools": (
        {"messages": [user("hi")], "tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)},
        "tool_choice.mode",
    ),
    "json schema output with a broken schema": (
        {
            "messages": [user("hi")],
            "response_format": pb.ResponseFormat(
                type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="x", schema="{"
            ),
        },
        "response_format.schema",
    ),
    "an image of the wrong type": (
        {"messages": [_image(data=JPEG_HEAD + b"\x00" * 32, media_type="image/png")]},
        "messages[0].parts[0].image.media_type",
    ),
    "bytes that are no image": (
        {"messages": [_image(data=b"GIF? no, text", media_type="image/gif")]},
        "messages[0].parts[0].image.data",
    ),
    "an unsupported media type": (
        {"messages": [_image(data=PNG, media_type="image/tiff")]},
        "messages[0].parts[0].image.media_type",
    ),
    "an image over the size limit": (
        {"messages": [_image(data=PNG + b"\x00" * (5 * 1024 * 1024), media_type="image/png")]},
        "messages[0].parts[0].image.data",
    ),
    "an http (not https) image URL": (
        {"messages": [_image(url="http://example.com/a.png")]},
        "messages[0].parts[0].image.url",
    ),
    "a data URL that is not base64": (
        {"messages": [_image(url="data:image/png;base64,***")]},
        "messages[0].parts[0].image.url",
    ),
    "too many images": (
        {
            "messages": [
                pb.Message(
                    role=pb.ROLE_USER,
                    parts=[
                        pb.ContentPart(image=pb.Image(data=PNG, media_type="image/png"))
                        for _ in range(101)
                    ],
                )
            ]
        },
        "messages",
    ),
    "an image in an assistant message": (
        {
            "messages": [
                user("hi"),
                pb.Message(
                    role=pb.ROLE_ASSISTANT,
                    parts=[pb.ContentPart(image=pb.Image(data=PNG, media_type="image/png"))],
                ),
            ]
        },
        "messages[1].parts[0].image",
    ),
    "content and parts together": (
        {
            "messages": [
                pb.Message(role=pb.ROLE_USER, content="a", parts=[pb.ContentPart(text="b")])
            ]
        },
        "messages[0].parts",
    ),
}


async def _send(stub: Any, streaming: bool, fields: dict[str, Any]) -> None:
    if streaming:
        async for _ in stub.StreamComplete(
            pb.StreamCompleteRequest(model="gpt", **fields), timeout=10
        ):
            pass
    else:
        await stub.Complete(pb.CompleteRequest(model="gpt", **fields), timeout=10)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streaming", [False, True])
async def test_refused_with_a_field_violation_and_nothing_sent(
    upstream: FakeUpstream, case: str, streaming: bool
) -> None:
    fields, field = CASES[case]
    # Room for the oversized image: the gateway's own limit refuses it, not gRPC's.
    config = providers_config(upstream.base_url).replace(
        "  default_deadline_s: 30\n", "  default_deadline_s: 30\n  max_request_bytes: 16777216\n"
    )
    async with running_gateway(config, env=ENV) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _send(gw.stub, streaming, fields)
        # The refusal is in the ledger like any other call.
        (record,) = gw.ledger.records
        assert record.outcome == "rejected"
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    reason, _, details = error_info(caught.value)
    assert reason == "INVALID_REQUEST"
    (bad,) = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    assert field in [v.field for v in bad.field_violations], [
        (v.field, v.description) for v in bad.field_violations
    ]
    assert upstream.request_count() == 0
