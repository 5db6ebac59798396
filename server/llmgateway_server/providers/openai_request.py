"""The gateway's request -> an OpenAI Chat Completions body (also what vLLM, Ollama and
other OpenAI-compatible servers take).

JSON the caller gave as text (tool schemas, the response schema, tool-call arguments) is
embedded with ``orjson.Fragment``: sent byte for byte, never parsed and re-serialized.
Prompt-cache breakpoints have no equivalent here (OpenAI caches prompt prefixes by
itself) and are left out; so is a tool result's ``is_error``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from llmgateway_server.types import (
    ChatMessage,
    ContentPart,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Tool,
    ToolChoice,
    ToolChoiceMode,
    UpstreamCall,
)


def image_url(part: ContentPart) -> dict[str, Any]:
    """An image part as an ``image_url`` content part (bytes as a data URL)."""
    image = part.image
    assert image is not None
    if image.data is not None:
        url = f"data:{image.media_type};base64,{base64.b64encode(image.data).decode('ascii')}"
    else:
        assert image.url is not None
        url = image.url
    spec: dict[str, Any] = {"url": url}
    if image.detail:
        spec["detail"] = image.detail
    return {"type": "image_url", "image_url": spec}


def _content(m: ChatMessage) -> str | list[dict[str, Any]]:
    if not m.parts:
        return m.content
    if m.role is not Role.USER:  # text parts only (the transport checked)
        return m.text
    return [
        {"type": "text", "text": p.text} if p.text is not None else image_url(p) for p in m.parts
    ]


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.plain:
        out: dict[str, Any] = {"role": m.role.value, "content": m.content}
        if m.name:
            out["name"] = m.name
        return out
    if m.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    out = {"role": m.role.value, "content": _content(m)}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        if not out["content"]:
            out["content"] = None
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.parameters:
        function["parameters"] = orjson.Fragment(tool.parameters)
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any] | None:
    mode = choice.mode
    if mode is ToolChoiceMode.TOOL:
        return {"type": "function", "function": {"name": choice.name}}
    return mode.value if mode is not None else None


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type is ResponseFormatType.JSON_OBJECT:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name, "schema": orjson.Fragment(fmt.schema)}
    if fmt.strict:
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}


def body(call: UpstreamCall, *, stream: bool, stream_usage: bool) -> dict[str, Any]:
    """The JSON body of one chat completion call."""
    out: dict[str, Any] = {
        "model": call.upstream_model,
        "messages": [_message(m) for m in call.messages],
        "max_tokens": call.max_tokens,
    }
    if call.temperature is not None:
        out["temperature"] = call.temperature
    if call.top_p is not None:
        out["top_p"] = call.top_p
    if call.stop:
        out["stop"] = list(call.stop)
    if call.tools:
        out["tools"] = [_tool(t) for t in call.tools]
    choice = call.tool_choice
    if choice is not None and call.tools:
        value = _tool_choice(choice)
        if value is not None:
            out["tool_choice"] = value
        if choice.disable_parallel and call.tools:
            out["parallel_tool_calls"] = False
    if call.response_format is not None:
        out["response_format"] = _response_format(call.response_format)
    if stream:
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}
    return out
