"""The gateway's request -> an Anthropic Messages body.

- System messages become the top-level ``system`` (text blocks when one carries a cache
  breakpoint).
- Turns alternate: consecutive messages of one role merge into one turn; ROLE_TOOL
  messages are user turns holding ``tool_result`` blocks, placed before any text of the
  turn (OpenAI's separate tool messages become one user turn).
- Tool calls are ``tool_use`` blocks; their arguments (JSON text) go in as ``input``
  byte for byte (``orjson.Fragment``), as do tool schemas and the response schema.
- ``required`` is ``any``; disabling parallel calls is ``disable_parallel_tool_use``.
- JSON schema output is the native ``output_config.format``. A bare JSON object has no
  native form: the system prompt gains one instruction asking for it.
- Cache breakpoints are ``cache_control`` on the block they follow (5 minutes, or
  ``"ttl": "1h"``).

A conversation of plain text messages keeps the plain form: string contents.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from llmgateway_server.types import (
    CacheTTL,
    ChatMessage,
    ContentPart,
    ResponseFormatType,
    Role,
    Tool,
    ToolChoice,
    ToolChoiceMode,
    UpstreamCall,
)

JSON_OBJECT_INSTRUCTION = "Answer with one JSON object and nothing else."
_EPHEMERAL = {"type": "ephemeral"}
_EPHEMERAL_1H = {"type": "ephemeral", "ttl": "1h"}


def _cache(block: dict[str, Any], ttl: CacheTTL | None) -> dict[str, Any]:
    if ttl is not None:
        block["cache_control"] = _EPHEMERAL_1H if ttl is CacheTTL.HOUR_1 else _EPHEMERAL
    return block


def _image(part: ContentPart) -> dict[str, Any]:
    image = part.image
    assert image is not None
    if image.data is not None:
        source: dict[str, Any] = {
            "type": "base64",
            "media_type": image.media_type,
            "data": base64.b64encode(image.data).decode("ascii"),
        }
    else:
        source = {"type": "url", "url": image.url}
    return _cache({"type": "image", "source": source}, part.cache)


def _text_blocks(m: ChatMessage) -> list[dict[str, Any]]:
    """The message's content as blocks (empty texts left out: the API refuses them)."""
    if not m.parts:
        return [_cache({"type": "text", "text": m.content}, m.cache)] if m.content else []
    blocks: list[dict[str, Any]] = []
    for p in m.parts:
        if p.text is not None:
            if p.text:
                blocks.append(_cache({"type": "text", "text": p.text}, p.cache))
        else:
            blocks.append(_image(p))
    return blocks


def _blocks(m: ChatMessage) -> list[dict[str, Any]]:
    if m.role is Role.TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
        text = m.text
        if text:
            result["content"] = text
        if m.is_error:
            result["is_error"] = True
        cache = m.cache or next((p.cache for p in reversed(m.parts) if p.cache), None)
        return [_cache(result, cache)]
    blocks = _text_blocks(m)
    for c in m.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": orjson.Fragment(c.arguments)}
        )
    return blocks


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    if all(m.plain for m in messages):
        for m in messages:
            # Alternating turns: merge consecutive same-role ones.
            if turns and turns[-1]["role"] == m.role.value:
                turns[-1]["content"] += "\n\n" + m.content
            else:
                turns.append({"role": m.role.value, "content": m.content})
        return turns
    for m in messages:
        role = "user" if m.role is Role.TOOL else m.role.value
        blocks = _blocks(m)
        if turns and turns[-1]["role"] == role:
            content = turns[-1]["content"]
            if m.role is Role.TOOL:
                # Results first: before any text already in the turn.
                at = next(
                    (i for i, b in enumerate(content) if b["type"] != "tool_result"), len(content)
                )
                content[at:at] = blocks
            else:
                content.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _system(system: list[ChatMessage], json_object: bool) -> str | list[dict[str, Any]] | None:
    texts = [m for m in system if m.text]
    if any(not m.plain for m in texts):
        blocks = [b for m in texts for b in _text_blocks(m)]
        if json_object:
            blocks.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
        return blocks
    parts = [m.content for m in texts]
    if json_object:
        parts.append(JSON_OBJECT_INSTRUCTION)
    return "\n\n".join(parts) or None


def _tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["input_schema"] = (
        orjson.Fragment(tool.parameters) if tool.parameters else {"type": "object"}
    )
    if tool.strict:
        out["strict"] = True
    return _cache(out, tool.cache)


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    mode = choice.mode
    if mode is ToolChoiceMode.TOOL:
        out: dict[str, Any] = {"type": "tool", "name": choice.name}
    elif mode is ToolChoiceMode.REQUIRED:
        out = {"type": "any"}
    elif mode is ToolChoiceMode.NONE:
        return {"type": "none"}
    else:
        out = {"type": "auto"}
    if choice.disable_parallel:
        out["disable_parallel_tool_use"] = True
    return out


def body(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
    """The JSON body of one Messages call."""
    system = [m for m in call.messages if m.role is Role.SYSTEM]
    fmt = call.response_format
    json_object = fmt is not None and fmt.type is ResponseFormatType.JSON_OBJECT
    out: dict[str, Any] = {
        "model": call.upstream_model,
        "messages": _messages([m for m in call.messages if m.role is not Role.SYSTEM]),
        "max_tokens": call.max_tokens,
    }
    system_value = _system(system, json_object)
    if system_value:
        out["system"] = system_value
    if call.temperature is not None:
        out["temperature"] = min(call.temperature, 1.0)  # Anthropic's range is [0, 1]
    if call.top_p is not None:
        out["top_p"] = call.top_p
    if call.stop:
        out["stop_sequences"] = list(call.stop)
    if call.tools:
        out["tools"] = [_tool(t) for t in call.tools]
        if call.tool_choice is not None:
            out["tool_choice"] = _tool_choice(call.tool_choice)
    if fmt is not None and fmt.type is ResponseFormatType.JSON_SCHEMA:
        out["output_config"] = {
            "format": {"type": "json_schema", "schema": orjson.Fragment(fmt.schema)}
        }
    if stream:
        out["stream"] = True
    return out
