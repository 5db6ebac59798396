"""Protobuf -> domain for what a conversation carries: messages with parts and images,
tool calls and their results, tool definitions, tool choice and response format.

Every problem becomes a BadRequest field violation; nothing invalid reaches a provider.
JSON given as text (schemas, arguments) is checked to parse as an object and then kept
as the caller's text, byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import orjson
from llmgateway.v1 import gateway_pb2 as pb

from llmgateway_server.errors import FieldViolation
from llmgateway_server.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_URL_CHARS,
    MEDIA_TYPES,
    parse_data_url,
    sniff,
)
from llmgateway_server.types import (
    CacheTTL,
    ChatMessage,
    ContentPart,
    Image,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)

MAX_MESSAGES = 10_000
MAX_NAME = 64
MAX_PARTS = 1_000
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
MAX_DESCRIPTION = 16_384
MAX_SCHEMA_CHARS = 256 * 1024
MAX_ARGUMENTS_CHARS = 1024 * 1024

_ROLES = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
}
_TTL = {pb.CACHE_TTL_UNSPECIFIED: CacheTTL.MINUTES_5, pb.CACHE_TTL_5M: CacheTTL.MINUTES_5}
_TTL[pb.CACHE_TTL_1H] = CacheTTL.HOUR_1
_DETAIL = {
    pb.IMAGE_DETAIL_UNSPECIFIED: None,
    pb.IMAGE_DETAIL_AUTO: "auto",
    pb.IMAGE_DETAIL_LOW: "low",
    pb.IMAGE_DETAIL_HIGH: "high",
}
_CHOICE = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: None,
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
    pb.TOOL_CHOICE_MODE_TOOL: ToolChoiceMode.TOOL,
}
_FORMAT = {
    pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED: None,
    pb.RESPONSE_FORMAT_TYPE_TEXT: ResponseFormatType.TEXT,
    pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: ResponseFormatType.JSON_OBJECT,
    pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: ResponseFormatType.JSON_SCHEMA,
}
# Tool names, tool-call ids and schema names: what both providers accept.
_IDENT = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def json_object_problem(text: str) -> str | None:
    """Why ``text`` is not a JSON object, or None. orjson parses first (fast); what it
    refuses is tried again with the standard library, which keeps integers of any size
    (the text itself is what is sent on, so nothing is lost either way). NaN and Infinity
    are not JSON, whatever the standard library's defaults say."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text, parse_constant=_not_json)
        except (ValueError, RecursionError):
            return "must be valid JSON"
    if not isinstance(value, dict):
        return "must be a JSON object"
    return None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _cache(field: pb.CacheControl, has: bool) -> CacheTTL | None:
    return _TTL.get(field.ttl, CacheTTL.MINUTES_5) if has else None


class _Messages:
    """Converts and checks a conversation: each message alone, then the tool-call
    pairing across messages."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.v = violations
        self.images = 0
        self.tool_turns = False  # any tool call or tool result: pairing to check

    def convert(self, messages: Sequence[pb.Message]) -> tuple[ChatMessage, ...]:
        v = self.v
        if not messages:
            v.append(FieldViolation("messages", "at least one message is required"))
        if len(messages) > MAX_MESSAGES:
            v.append(FieldViolation("messages", f"at most {MAX_MESSAGES} messages"))
            return ()
        out: list[ChatMessage] = []
        for i, m in enumerate(messages):
            message = self._message(i, m)
            if message is not None:
                out.append(message)
        if out and len(out) == len(messages):
            if all(m.role is Role.SYSTEM for m in out):
                v.append(
                    FieldViolation("messages", "at least one user or assistant message is required")
                )
            if self.tool_turns:
                self._pair_tool_calls(out)
        if self.images > MAX_IMAGES:
            v.append(FieldViolation("messages", f"at most {MAX_IMAGES} images in a request"))
        return tuple(out)

    def _message(self, i: int, m: pb.Message) -> ChatMessage | None:
        v = self.v
        where = f"messages[{i}]"
        role = _ROLES.get(m.role)
        if role is None:
            v.append(
                FieldViolation(
                    f"{where}.role",
                    "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
                )
            )
            return None
        if len(m.name) > MAX_NAME:
            v.append(FieldViolation(f"{where}.name", f"at most {MAX_NAME} characters"))
        if not (
            role is Role.TOOL
            or m.parts
            or m.tool_calls
            or m.tool_call_id
            or m.is_error
            or m.HasField("cache_control")
        ):
            return ChatMessage(role=role, content=m.content, name=m.name or None)
        self.tool_turns = self.tool_turns or bool(m.tool_calls) or role is Role.TOOL
        parts = self._parts(where, role, m.parts)
        if m.parts and m.content:
            v.append(FieldViolation(f"{where}.parts", "set either content or parts, not both"))
        tool_calls = self._tool_calls(where, role, m.tool_calls)
        if role is Role.TOOL:
            if not m.tool_call_id:
                v.append(FieldViolation(f"{where}.tool_call_id", "required in a ROLE_TOOL message"))
        else:
            if m.tool_call_id:
                v.append(FieldViolation(f"{where}.tool_call_id", "only in ROLE_TOOL messages"))
            if m.is_error:
                v.append(FieldViolation(f"{where}.is_error", "only in ROLE_TOOL messages"))
        return ChatMessage(
            role=role,
            content=m.content,
            name=m.name or None,
            parts=parts,
            tool_calls=tool_calls,
            tool_call_id=m.tool_call_id,
            is_error=m.is_error,
            cache=_cache(m.cache_control, m.HasField("cache_control")),
        )

    def _parts(
        self, where: str, role: Role, parts: Sequence[pb.ContentPart]
    ) -> tuple[ContentPart, ...]:
        v = self.v
        if len(parts) > MAX_PARTS:
            v.append(FieldViolation(f"{where}.parts", f"at most {MAX_PARTS} parts"))
            return ()
        out: list[ContentPart] = []
        for j, p in enumerate(parts):
            at = f"{where}.parts[{j}]"
            cache = _cache(p.cache_control, p.HasField("cache_control"))
            kind = p.WhichOneof("part")
            if kind == "text":
                out.append(ContentPart(text=p.text, cache=cache))
            elif kind == "image":
                if role is not Role.USER:
                    v.append(FieldViolation(f"{at}.image", "images only in ROLE_USER messages"))
                    continue
                self.images += 1
                image = self._image(f"{at}.image", p.image)
                if image is not None:
                    out.append(ContentPart(image=image, cache=cache))
            else:
                v.append(FieldViolation(at, "set text or image"))
        return tuple(out)

    def _image(self, at: str, image: pb.Image) -> Image | None:
        v = self.v
        detail = _DETAIL.get(image.detail)
        if image.detail not in _DETAIL:
            v.append(FieldViolation(f"{at}.detail", "unknown value"))
        media_type = image.media_type.lower()
        if media_type and media_type not in MEDIA_TYPES:
            v.append(FieldViolation(f"{at}.media_type", f"must be one of {', '.join(MEDIA_TYPES)}"))
            return None
        source = image.WhichOneof("source")
        if source == "url":
            url = image.url
            if url.startswith("data:"):
                try:
                    url_type, data = parse_data_url(url)
                except ValueError as exc:
                    v.append(FieldViolation(f"{at}.url", str(exc)))
                    return None
                if media_type and url_type != media_type:
                    v.append(FieldViolation(f"{at}.media_type", "differs from the data URL's type"))
                    return None
                return self._checked(at, "url", data, url_type, detail)
            if not url.startswith("https://") or len(url) > MAX_URL_CHARS:
                v.append(
                    FieldViolation(
                        f"{at}.url",
                        f"must be an https URL or a base64 data URL, at most {MAX_URL_CHARS} "
                        "characters",
                    )
                )
                return None
            return Image(media_type=media_type, url=url, detail=detail)
        if source == "data":
            if not media_type:
                v.append(FieldViolation(f"{at}.media_type", "required with data"))
                return None
            return self._checked(at, "data", image.data, media_type, detail)
        v.append(FieldViolation(at, "set data or url"))
        return None

    def _checked(
        self, at: str, field: str, data: bytes, media_type: str, detail: str | None
    ) -> Image | None:
        v = self.v
        if len(data) > MAX_IMAGE_BYTES:
            v.append(FieldViolation(f"{at}.{field}", f"at most {MAX_IMAGE_BYTES} bytes"))
            return None
        actual = sniff(data)
        if actual is None:
            v.append(
                FieldViolation(
                    f"{at}.{field}", f"not an image of a supported type ({', '.join(MEDIA_TYPES)})"
                )
            )
            return None
        if actual != media_type:
            v.append(
                FieldViolation(f"{at}.media_type", f"says {media_type} but the bytes are {actual}")
            )
            return None
        return Image(media_type=media_type, data=data, detail=detail)

    def _tool_calls(
        self, where: str, role: Role, calls: Sequence[pb.ToolCall]
    ) -> tuple[ToolCall, ...]:
        v = self.v
        if not calls:
            return ()
        if role is not Role.ASSISTANT:
            v.append(FieldViolation(f"{where}.tool_calls", "only in ROLE_ASSISTANT messages"))
            return ()
        if len(calls) > MAX_TOOL_CALLS:
            v.append(FieldViolation(f"{where}.tool_calls", f"at most {MAX_TOOL_CALLS} calls"))
            return ()
        out: list[ToolCall] = []
        for j, c in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            ok = True
            if not _IDENT.fullmatch(c.id):
                v.append(FieldViolation(f"{at}.id", "1-64 of A-Z a-z 0-9 _ -"))
                ok = False
            if not _IDENT.fullmatch(c.name):
                v.append(FieldViolation(f"{at}.name", "1-64 of A-Z a-z 0-9 _ -"))
                ok = False
            arguments = c.arguments or "{}"
            problem = (
                f"at most {MAX_ARGUMENTS_CHARS} characters"
                if len(arguments) > MAX_ARGUMENTS_CHARS
                else json_object_problem(arguments)
            )
            if problem is not None:
                v.append(FieldViolation(f"{at}.arguments", problem))
                ok = False
            if ok:
                out.append(ToolCall(id=c.id, name=c.name, arguments=arguments))
        return tuple(out)

    def _pair_tool_calls(self, messages: Sequence[ChatMessage]) -> None:
        """Each tool call is answered exactly once, by the ROLE_TOOL messages right after
        its assistant turn (both providers require it); no result without its call."""
        v = self.v
        seen: set[str] = set()
        pending: dict[str, int] = {}  # unanswered call id -> index of its assistant turn
        for i, m in enumerate(messages):
            if m.role is Role.TOOL:
                if m.tool_call_id in pending:
                    del pending[m.tool_call_id]
                elif m.tool_call_id in seen:
                    v.append(
                        FieldViolation(
                            f"messages[{i}].tool_call_id", "this tool call was already answered"
                        )
                    )
                else:
                    v.append(
                        FieldViolation(
                            f"messages[{i}].tool_call_id",
                            "no tool call with this id in the assistant turn before it",
                        )
                    )
                continue
            self._unanswered(pending)
            pending.clear()
            for j, call in enumerate(m.tool_calls):
                if call.id in seen:
                    v.append(
                        FieldViolation(
                            f"messages[{i}].tool_calls[{j}].id",
                            "used by an earlier tool call of the conversation",
                        )
                    )
                seen.add(call.id)
                pending[call.id] = i
        self._unanswered(pending)

    def _unanswered(self, pending: dict[str, int]) -> None:
        for call_id, i in pending.items():
            self.v.append(
                FieldViolation(
                    f"messages[{i}].tool_calls",
                    f"call {call_id} has no ROLE_TOOL answer right after this message",
                )
            )


def to_messages(
    messages: Sequence[pb.Message], violations: list[FieldViolation]
) -> tuple[ChatMessage, ...]:
    """Validate and convert a conversation."""
    return _Messages(violations).convert(messages)


def to_tools(tools: Iterable[pb.Tool], v: list[FieldViolation]) -> tuple[Tool, ...]:
    """Validate and convert tool definitions."""
    items = list(tools)
    if len(items) > MAX_TOOLS:
        v.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
        return ()
    out: list[Tool] = []
    names: set[str] = set()
    for i, t in enumerate(items):
        # Each field read once: every read of a string field makes a new Python string.
        name, description, parameters = t.name, t.description, t.parameters
        ok = True
        if not _IDENT.fullmatch(name):
            v.append(FieldViolation(f"tools[{i}].name", "1-64 of A-Z a-z 0-9 _ -"))
            ok = False
        elif name in names:
            v.append(FieldViolation(f"tools[{i}].name", "two tools have this name"))
            ok = False
        names.add(name)
        if len(description) > MAX_DESCRIPTION:
            v.append(
                FieldViolation(f"tools[{i}].description", f"at most {MAX_DESCRIPTION} characters")
            )
            ok = False
        if parameters:
            problem = (
                f"at most {MAX_SCHEMA_CHARS} characters"
                if len(parameters) > MAX_SCHEMA_CHARS
                else json_object_problem(parameters)
            )
            if problem is not None:
                v.append(FieldViolation(f"tools[{i}].parameters", problem))
                ok = False
        if ok:
            has_cache = t.HasField("cache_control")
            out.append(
                Tool(
                    name=name,
                    description=description,
                    parameters=parameters,
                    strict=t.strict,
                    cache=_cache(t.cache_control, True) if has_cache else None,
                )
            )
    return tuple(out)


def to_tool_choice(
    choice: pb.ToolChoice, has: bool, tools: Sequence[Tool], v: list[FieldViolation]
) -> ToolChoice | None:
    """Validate and convert a tool choice against the request's tools."""
    if not has:
        return None
    if choice.mode not in _CHOICE:
        v.append(FieldViolation("tool_choice.mode", "unknown value"))
        return None
    mode = _CHOICE[choice.mode]
    if mode is ToolChoiceMode.TOOL:
        if not any(t.name == choice.name for t in tools):
            v.append(FieldViolation("tool_choice.name", "must name one of the request's tools"))
    elif choice.name:
        v.append(FieldViolation("tool_choice.name", "only with TOOL_CHOICE_MODE_TOOL"))
    if mode in (ToolChoiceMode.AUTO, ToolChoiceMode.REQUIRED) and not tools:
        v.append(FieldViolation("tool_choice.mode", "needs tools"))
    return ToolChoice(
        mode=mode, name=choice.name, disable_parallel=choice.disable_parallel_tool_calls
    )


def to_response_format(
    fmt: pb.ResponseFormat, has: bool, v: list[FieldViolation]
) -> ResponseFormat | None:
    """Validate and convert a response format."""
    if not has:
        return None
    if fmt.type not in _FORMAT:
        v.append(FieldViolation("response_format.type", "unknown value"))
        return None
    kind = _FORMAT[fmt.type]
    if kind is None or kind is ResponseFormatType.TEXT:
        if fmt.name or fmt.schema or fmt.strict:
            v.append(FieldViolation("response_format", "name, schema and strict need JSON_SCHEMA"))
        return None
    if kind is ResponseFormatType.JSON_OBJECT:
        if fmt.name or fmt.schema or fmt.strict:
            v.append(FieldViolation("response_format", "name, schema and strict need JSON_SCHEMA"))
        return ResponseFormat(type=kind)
    if not _IDENT.fullmatch(fmt.name):
        v.append(FieldViolation("response_format.name", "1-64 of A-Z a-z 0-9 _ -"))
    problem = (
        f"at most {MAX_SCHEMA_CHARS} characters"
        if len(fmt.schema) > MAX_SCHEMA_CHARS
        else json_object_problem(fmt.schema)
    )
    if problem is not None:
        v.append(FieldViolation("response_format.schema", problem))
        return None
    return ResponseFormat(type=kind, name=fmt.name, schema=fmt.schema, strict=fmt.strict)
