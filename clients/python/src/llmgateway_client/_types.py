"""The domain types of the client: plain frozen dataclasses, free of protobuf.

Requests take `Message`s (text, or parts with `Image`s; tool calls and their results),
`Tool`s, a `ToolChoice` and a `ResponseFormat`; calls return `Completion`, `TokenCount`
and `ModelInfo`, and streams yield `StreamEvent`s. Money is exact: integer
nano-US-dollars (1e-9 USD), with `Cost.usd` as a `Decimal`. JSON given as text (tool
parameters, schemas) is sent byte for byte.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "CacheTTL",
    "Completion",
    "ContentPart",
    "ContextPolicy",
    "Cost",
    "FinishReason",
    "Image",
    "ImageDetail",
    "ImagePart",
    "Message",
    "ModelInfo",
    "ModelTarget",
    "Price",
    "RefusalDelta",
    "ResponseFormat",
    "ResponseFormatType",
    "Role",
    "StreamEvent",
    "TextDelta",
    "TextPart",
    "TokenCount",
    "Tool",
    "ToolCall",
    "ToolCallAccumulator",
    "ToolCallDelta",
    "ToolChoice",
    "ToolChoiceMode",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
"""Who wrote a chat message; `"tool"` messages carry the result of a tool call."""

FinishReason = Literal[
    "unspecified",
    "stop",
    "length",
    "content_filter",
    "cancelled",
    "other",
    "tool_calls",
    "refusal",
]
"""Why the model stopped: `"stop"` (natural end or stop sequence), `"length"` (hit
max_tokens), `"content_filter"` (output withheld by moderation; not an error),
`"tool_calls"` (it called tools: `Completion.tool_calls`), `"refusal"` (it refused:
`Completion.refusal`), `"cancelled"`, `"other"`, or `"unspecified"` when the gateway did
not say."""

AttemptOutcome = Literal[
    "unspecified",
    "success",
    "rate_limited",
    "transient",
    "timeout",
    "context_too_long",
    "credential",
    "content_policy",
    "bad_request",
    "cancelled",
    "circuit_open",
    "skipped_context_window",
    "local_saturation",
]
"""How one attempt against one upstream target ended."""

ContextPolicy = Literal["trim", "reject"]
"""What to do when a prompt does not fit the context window: `"trim"` drops the
oldest user/assistant turns, `"reject"` fails with `ContextWindowExceeded`. When not
given, the route's configured policy applies."""

CacheTTL = Literal["5m", "1h"]
"""A prompt-cache breakpoint: the prompt up to it may be cached, for five minutes or
one hour (each written at its own price). Used by providers with explicit caching
(Anthropic), ignored by the others."""

ImageDetail = Literal["auto", "low", "high"]
"""How closely the model looks at an image (providers without the setting ignore it)."""

ToolChoiceMode = Literal["auto", "none", "required", "tool"]
"""Whether the model may (`"auto"`), must not (`"none"`) or must (`"required"`) call
tools, or must call one named tool (`"tool"`)."""

ResponseFormatType = Literal["text", "json_object", "json_schema"]
"""The shape of the output: text, any JSON object, or JSON matching a schema."""

_ROLES: frozenset[str] = frozenset(typing.get_args(Role))
_CACHE_TTLS: frozenset[str] = frozenset(typing.get_args(CacheTTL))
_IMAGE_DETAILS: frozenset[str] = frozenset(typing.get_args(ImageDetail))
_TOOL_CHOICE_MODES: frozenset[str] = frozenset(typing.get_args(ToolChoiceMode))
_RESPONSE_FORMAT_TYPES: frozenset[str] = frozenset(typing.get_args(ResponseFormatType))
_NANO = decimal.Decimal(1).scaleb(-9)
_JSON_WHITESPACE = " \t\n\r"


def _check_cache(cache: str | None) -> None:
    if cache is not None and cache not in _CACHE_TTLS:
        raise ValueError(f"cache must be one of {sorted(_CACHE_TTLS)} or None, not {cache!r}")


def _json_text(value: str | Mapping[str, Any]) -> str:
    """JSON text as given, or a mapping serialized with its key order."""
    if isinstance(value, str):
        return value
    return json.dumps(dict(value), ensure_ascii=False, allow_nan=False)


# --- Content ---------------------------------------------------------------------------

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff_media_type(data: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF or WebP bytes, from their magic bytes."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Image:
    """An image given to the model: its bytes, or a URL the provider fetches.

    ```python
    Image.from_file("chart.png")                  # media type sniffed: image/png
    Image.from_bytes(jpeg_bytes, detail="low")    # media type sniffed: image/jpeg
    Image.from_url("https://example.com/cat.webp")
    ```

    Exactly one of `data` and `url` is set. `media_type` (image/png, image/jpeg,
    image/gif or image/webp) is required with `data`, optional with an https URL; the
    gateway checks it against the bytes. `url` may also be a
    `data:<media type>;base64,...` URL. Images go in user messages.
    """

    data: bytes | None = None
    url: str | None = None
    media_type: str = ""
    detail: ImageDetail | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("an Image has either data or a url, not both or neither")
        if self.data is not None and not self.media_type:
            raise ValueError("an Image with data needs its media_type")
        if self.detail is not None and self.detail not in _IMAGE_DETAILS:
            raise ValueError(
                f"detail must be one of {sorted(_IMAGE_DETAILS)} or None, not {self.detail!r}"
            )

    def __repr__(self) -> str:
        source = f"data=<{len(self.data)} bytes>" if self.data is not None else f"url={self.url!r}"
        detail = f", detail={self.detail!r}" if self.detail is not None else ""
        return f"Image({source}, media_type={self.media_type!r}{detail})"

    @classmethod
    def from_bytes(
        cls, data: bytes, media_type: str | None = None, *, detail: ImageDetail | None = None
    ) -> Image:
        """An image from its file's bytes; `media_type` is sniffed from the magic bytes
        (PNG, JPEG, GIF, WebP) when not given. Raises ValueError for another format."""
        if media_type is None:
            media_type = _sniff_media_type(data)
            if media_type is None:
                raise ValueError("not a PNG, JPEG, GIF or WebP image: give its media_type")
        return cls(data=bytes(data), media_type=media_type, detail=detail)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        media_type: str | None = None,
        detail: ImageDetail | None = None,
    ) -> Image:
        """An image read from a file; `media_type` is sniffed from the magic bytes (PNG,
        JPEG, GIF, WebP) when not given, never guessed from the file name. Raises
        OSError if the file cannot be read, ValueError for another format."""
        data = Path(path).read_bytes()
        if media_type is None:
            media_type = _sniff_media_type(data)
            if media_type is None:
                raise ValueError(f"{os.fspath(path)}: not a PNG, JPEG, GIF or WebP image")
        return cls(data=data, media_type=media_type, detail=detail)

    @classmethod
    def from_url(
        cls, url: str, *, media_type: str = "", detail: ImageDetail | None = None
    ) -> Image:
        """An image the provider fetches from an https URL (or a `data:` URL)."""
        return cls(url=url, media_type=media_type, detail=detail)


@dataclasses.dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of text in a message's parts; `cache` puts a prompt-cache breakpoint
    after it."""

    text: str
    cache: CacheTTL | None = None

    def __post_init__(self) -> None:
        _check_cache(self.cache)


@dataclasses.dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in a message's parts; `cache` puts a prompt-cache breakpoint after it."""

    image: Image
    cache: CacheTTL | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image):
            raise TypeError(f"image must be an Image, not {type(self.image).__name__}")
        _check_cache(self.cache)


ContentPart: TypeAlias = TextPart | ImagePart
"""One piece of a message's content: text or an image."""

PartsInput: TypeAlias = Sequence[str | Image | TextPart | ImagePart]
"""Parts as the `Message` shortcuts take them: a `str` is a `TextPart`, an `Image` an
`ImagePart`."""


def _parts(items: PartsInput) -> tuple[ContentPart, ...]:
    parts: list[ContentPart] = []
    for item in items:
        if isinstance(item, str):
            parts.append(TextPart(item))
        elif isinstance(item, Image):
            parts.append(ImagePart(item))
        elif isinstance(item, TextPart | ImagePart):
            parts.append(item)
        else:
            raise TypeError(
                f"parts must be str, Image, TextPart or ImagePart, not {type(item).__name__}"
            )
    return tuple(parts)


def _content(
    content: str | PartsInput, cache: CacheTTL | None
) -> tuple[str, tuple[ContentPart, ...], CacheTTL | None]:
    """`(content, parts, message cache)` for a shortcut: with parts, a breakpoint goes on
    the last part (the contract puts it there)."""
    if isinstance(content, str):
        return content, (), cache
    parts = _parts(content)
    if cache is not None:
        if not parts:
            raise ValueError("a cache breakpoint needs content")
        parts = (*parts[:-1], dataclasses.replace(parts[-1], cache=cache))
    return "", parts, None


# --- Tools -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool by the model.

    `id` is the gateway's id of the call (the same whichever provider made it): answer
    it with `Message.tool_result(call.id, ...)`. `arguments` is JSON text exactly as the
    model produced it (`"{}"` when it gave none); `arguments_invalid` is True when it
    is not valid JSON (a truncated or malformed answer, delivered as produced).
    """

    id: str
    name: str
    arguments: str = "{}"
    arguments_invalid: bool = False

    def parse_arguments(self) -> Any:
        """The arguments parsed as JSON (a dict for a well-behaved model); raises
        `json.JSONDecodeError` (a ValueError) when they are not valid JSON."""
        return json.loads(self.arguments)


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Tool:
    """A function the model may call.

    ```python
    Tool("get_weather", "The weather in a city.", {"type": "object", ...})
    Tool("get_weather", parameters=schema_text, strict=True)
    ```

    `parameters` is the JSON Schema of the arguments (an object), given as JSON text or
    as a dict. Text is sent byte for byte: key order, `$defs`/`$ref` and big integers
    reach the provider as written. A dict is serialized with `json.dumps`, keeping its
    key order. Empty: no arguments. `strict` asks the provider to make the arguments
    match the schema exactly; `cache` puts a prompt-cache breakpoint after this tool's
    definition.
    """

    name: str
    description: str
    parameters: str
    strict: bool
    cache: CacheTTL | None

    def __init__(
        self,
        name: str,
        description: str = "",
        parameters: str | Mapping[str, Any] = "",
        *,
        strict: bool = False,
        cache: CacheTTL | None = None,
    ) -> None:
        if not name:
            raise ValueError("a Tool needs a name")
        _check_cache(cache)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "parameters", _json_text(parameters))
        object.__setattr__(self, "strict", strict)
        object.__setattr__(self, "cache", cache)

    @classmethod
    def from_json(cls, text: str, *, cache: CacheTTL | None = None) -> Tool:
        """A tool from a JSON object `{"name", "description", "parameters", "strict"}`
        (only `name` required). The `parameters` value is kept as its exact source text,
        so it is sent byte for byte. Raises ValueError for anything else."""
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("a tool definition is a JSON object")
        unknown = sorted(set(document) - {"name", "description", "parameters", "strict"})
        if unknown:
            raise ValueError(f"unknown tool definition keys: {', '.join(unknown)}")
        name, description = document.get("name"), document.get("description", "")
        strict = document.get("strict", False)
        if not isinstance(name, str) or not isinstance(description, str):
            raise ValueError("a tool definition's name and description are strings")
        if not isinstance(strict, bool):
            raise ValueError("a tool definition's strict is true or false")
        parameters = ""
        if "parameters" in document:
            if not isinstance(document["parameters"], dict):
                raise ValueError("a tool definition's parameters are a JSON object")
            parameters = _raw_members(text)["parameters"]
        return cls(name, description, parameters, strict=strict, cache=cache)


def _raw_members(text: str) -> dict[str, str]:
    """The members of a valid JSON object, each value as its exact source text."""
    decoder = json.JSONDecoder()

    def skip(index: int) -> int:
        while text[index] in _JSON_WHITESPACE:
            index += 1
        return index

    members: dict[str, str] = {}
    index = skip(0) + 1  # after "{"
    while text[index := skip(index)] != "}":
        key, index = decoder.raw_decode(text, index)
        index = skip(skip(index) + 1)  # after ":"
        _, end = decoder.raw_decode(text, index)
        members[key] = text[index:end]
        index = skip(end)
        if text[index] == ",":
            index += 1
    return members


@dataclasses.dataclass(frozen=True, slots=True)
class ToolChoice:
    """Whether and which tools the model must call.

    `ToolChoice.auto()`, `ToolChoice.none()`, `ToolChoice.required()` or
    `ToolChoice.tool("get_weather")`; `disable_parallel=True` allows at most one tool
    call per answer. Requests also take `"auto"`, `"none"` and `"required"` as
    shortcuts.
    """

    mode: ToolChoiceMode
    name: str = ""
    disable_parallel: bool = False

    def __post_init__(self) -> None:
        if self.mode not in _TOOL_CHOICE_MODES:
            raise ValueError(f"mode must be one of {sorted(_TOOL_CHOICE_MODES)}, not {self.mode!r}")
        if (self.mode == "tool") != bool(self.name):
            raise ValueError("a tool name is given with mode 'tool', and only then")

    @classmethod
    def auto(cls, *, disable_parallel: bool = False) -> ToolChoice:
        """The model decides whether to call tools."""
        return cls("auto", disable_parallel=disable_parallel)

    @classmethod
    def none(cls) -> ToolChoice:
        """The model calls no tool."""
        return cls("none")

    @classmethod
    def required(cls, *, disable_parallel: bool = False) -> ToolChoice:
        """The model calls at least one tool."""
        return cls("required", disable_parallel=disable_parallel)

    @classmethod
    def tool(cls, name: str, *, disable_parallel: bool = False) -> ToolChoice:
        """The model calls the tool `name`."""
        return cls("tool", name, disable_parallel)


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class ResponseFormat:
    """The shape of the output: `ResponseFormat.json_schema(name, schema, strict=True)`,
    `ResponseFormat.json_object()` or `ResponseFormat.text()`.

    With `"json_schema"`, `schema` is the JSON Schema (an object) as text, sent byte for
    byte, or as a dict, serialized with `json.dumps` keeping its key order; `name` is
    1-64 of A-Z a-z 0-9 _ -.
    """

    type: ResponseFormatType
    name: str
    schema: str
    strict: bool

    def __init__(
        self,
        type: ResponseFormatType,
        *,
        name: str = "",
        schema: str | Mapping[str, Any] = "",
        strict: bool = False,
    ) -> None:
        if type not in _RESPONSE_FORMAT_TYPES:
            raise ValueError(f"type must be one of {sorted(_RESPONSE_FORMAT_TYPES)}, not {type!r}")
        schema = _json_text(schema)
        if type == "json_schema" and not (name and schema):
            raise ValueError("a json_schema response format needs a name and a schema")
        if type != "json_schema" and (name or schema or strict):
            raise ValueError("name, schema and strict go with a json_schema response format")
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "strict", strict)

    @classmethod
    def text(cls) -> ResponseFormat:
        """Text (the default)."""
        return cls("text")

    @classmethod
    def json_object(cls) -> ResponseFormat:
        """Any JSON object."""
        return cls("json_object")

    @classmethod
    def json_schema(
        cls, name: str, schema: str | Mapping[str, Any], *, strict: bool = False
    ) -> ResponseFormat:
        """JSON matching `schema`, with the provider's native structured output;
        `strict` asks it to follow the schema exactly."""
        return cls("json_schema", name=name, schema=schema, strict=strict)


# --- Messages --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One turn of a chat conversation.

    `Message("user", "Hello")`, or with the shortcuts `Message.user("Hello")`,
    `Message.system(...)`, `Message.assistant(...)`, `Message.tool_result(...)`, and
    `Completion.to_message()` for the model's answer (with its tool calls).

    The content is either text (`content`) or `parts` (`TextPart`s and `ImagePart`s),
    never both. An assistant message may carry the `tool_calls` the model made; a
    `"tool"` message answers the call `tool_call_id` (`is_error` when the tool failed).
    `cache` puts a prompt-cache breakpoint after the text content (with parts, set it on
    a part; the shortcuts do so).
    """

    role: Role
    content: str = ""
    name: str | None = None
    _: dataclasses.KW_ONLY
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    is_error: bool = False
    cache: CacheTTL | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, not {self.role!r}")
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        for part in self.parts:
            if not isinstance(part, TextPart | ImagePart):
                raise TypeError(f"parts must be TextPart or ImagePart, not {type(part).__name__}")
        for call in self.tool_calls:
            if not isinstance(call, ToolCall):
                raise TypeError(f"tool_calls must be ToolCall instances, not {type(call).__name__}")
        if self.content and self.parts:
            raise ValueError("a message has content or parts, not both")
        if self.cache is not None and self.parts:
            raise ValueError("with parts, set the cache breakpoint on a part")
        _check_cache(self.cache)
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.role == "tool") != bool(self.tool_call_id):
            raise ValueError("a 'tool' role message needs a tool_call_id, and only it takes one")
        if self.is_error and self.role != "tool":
            raise ValueError("only a 'tool' role message takes is_error")

    @classmethod
    def system(
        cls,
        content: str | PartsInput,
        *,
        name: str | None = None,
        cache: CacheTTL | None = None,
    ) -> Message:
        """A message with instructions for the model."""
        text, parts, cache = _content(content, cache)
        return cls("system", text, name, parts=parts, cache=cache)

    @classmethod
    def user(
        cls,
        content: str | PartsInput,
        *,
        name: str | None = None,
        cache: CacheTTL | None = None,
    ) -> Message:
        """A message from the end user: text, or parts, e.g.
        `Message.user(["What is this?", Image.from_file("cat.png")])`."""
        text, parts, cache = _content(content, cache)
        return cls("user", text, name, parts=parts, cache=cache)

    @classmethod
    def assistant(
        cls,
        content: str | PartsInput = "",
        *,
        name: str | None = None,
        tool_calls: Iterable[ToolCall] = (),
        cache: CacheTTL | None = None,
    ) -> Message:
        """One of the model's earlier answers, with the tool calls it made."""
        text, parts, cache = _content(content, cache)
        return cls("assistant", text, name, parts=parts, tool_calls=tuple(tool_calls), cache=cache)

    @classmethod
    def tool_result(
        cls,
        call_id: str,
        content: str | PartsInput,
        *,
        is_error: bool = False,
        cache: CacheTTL | None = None,
    ) -> Message:
        """The result of the tool call `call_id` (`ToolCall.id`): text, or text parts.
        `is_error` says the tool failed and `content` says how."""
        text, parts, cache = _content(content, cache)
        return cls("tool", text, parts=parts, tool_call_id=call_id, is_error=is_error, cache=cache)


# --- Results ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used. The input counts do not overlap.

    `input_tokens` are billed at the input price (neither read from nor written to the
    cache; images included, `image_input_tokens` of them). `cached_input_tokens` were
    read from the provider's cache, `cache_write_tokens` written to it
    (`cache_write_1h_tokens` of them with the 1-hour TTL). `output_tokens` include
    `reasoning_tokens`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    image_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every input token, however billed: input, cache reads and cache writes."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """What a call cost, exactly, in integer nano-US-dollars (1e-9 USD).

    `input_nano_usd` and `output_nano_usd` add up to the total. The `cache_*`, `image_*`
    and `reasoning_*` fields are lines of them: cache reads, cache writes (5-minute and
    1-hour TTL) and images of the input, reasoning of the output.
    """

    total_nano_usd: int = 0
    input_nano_usd: int = 0
    output_nano_usd: int = 0
    price_version: str = ""
    cache_read_nano_usd: int = 0
    cache_write_5m_nano_usd: int = 0
    cache_write_1h_nano_usd: int = 0
    image_input_nano_usd: int = 0
    reasoning_nano_usd: int = 0

    @property
    def usd(self) -> decimal.Decimal:
        """The total in US dollars, exact: `Decimal("0.000000042")` for 42 nano-USD."""
        return decimal.Decimal(self.total_nano_usd) * _NANO


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one upstream target; `detail` explains a failed one."""

    provider: str
    upstream_model: str
    outcome: AttemptOutcome
    latency_s: float
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """A finished chat completion.

    For streams, `content` is the concatenation of every text delta.
    `attempts` lists every attempt in order, failed ones included.
    `trimmed_message_count` says how many messages the context-window policy
    removed from the prompt. `tool_calls` are the tools the model called (finish
    reason `"tool_calls"`), in order; `refusal` its words when it refused (finish
    reason `"refusal"`).
    """

    content: str
    finish_reason: FinishReason
    usage: Usage
    cost: Cost
    provider: str
    upstream_model: str
    attempts: tuple[Attempt, ...] = ()
    request_id: str = ""
    trimmed_message_count: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""

    @property
    def served_by(self) -> str:
        """`"<provider>/<upstream model>"`, e.g. `"openai/gpt-4o-mini"`."""
        return f"{self.provider}/{self.upstream_model}"

    def to_message(self) -> Message:
        """This answer as an assistant `Message`, its tool calls included, to continue
        the conversation (append the `Message.tool_result`s after it)."""
        return Message.assistant(self.content, tool_calls=self.tool_calls)


# --- Streaming -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the answer."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call being streamed.

    `index` is the call's position in `Completion.tool_calls`. The first fragment of a
    call carries its `id` and `name`; the following ones (same index) carry pieces of
    its `arguments`. `ToolCallAccumulator` puts them together.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RefusalDelta:
    """New text of the model's refusal."""

    text: str


StreamEvent: TypeAlias = TextDelta | ToolCallDelta | RefusalDelta | Completion
"""What a stream's `events()` yields: deltas, then the `Completion`, last."""


@dataclasses.dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = dataclasses.field(default_factory=list)


class ToolCallAccumulator:
    """Puts streamed `ToolCallDelta`s together into complete `ToolCall`s.

    ```python
    calls = ToolCallAccumulator()
    async for event in stream.events():
        if isinstance(event, ToolCallDelta):
            calls.add(event)
    calls.tool_calls  # (ToolCall(id=..., name=..., arguments=...), ...)
    ```

    Streams keep one already (`stream.tool_calls`), and the final `Completion` has the
    gateway's own list; this is for showing calls as they form.
    """

    __slots__ = ("_calls",)

    def __init__(self, deltas: Iterable[ToolCallDelta] = ()) -> None:
        self._calls: dict[int, _PartialCall] = {}
        for delta in deltas:
            self.add(delta)

    def __repr__(self) -> str:
        return f"<ToolCallAccumulator {len(self._calls)} calls>"

    def add(self, delta: ToolCallDelta) -> None:
        """Add one fragment: its id and name, if given, and the next piece of its
        arguments."""
        call = self._calls.setdefault(delta.index, _PartialCall())
        if delta.id:
            call.id = delta.id
        if delta.name:
            call.name = delta.name
        if delta.arguments:
            call.arguments.append(delta.arguments)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The calls so far, by index. Arguments not received yet read `"{}"`;
        `arguments_invalid` is True while (or if) they are not valid JSON."""
        calls = []
        for index in sorted(self._calls):
            partial = self._calls[index]
            arguments = "".join(partial.arguments) or "{}"
            calls.append(ToolCall(partial.id, partial.name, arguments, not _is_json(arguments)))
        return tuple(calls)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# --- Token counts and models -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TokenCount:
    """How many input tokens a prompt uses on a route, and the route's context window.

    `exact` is False when the gateway estimated the count (an estimate errs high).
    """

    input_tokens: int
    context_window_tokens: int
    exact: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """A price table entry, in integer nano-USD per million tokens.

    `cached_input_*` is the cache-read price, `cache_write_5m_*` and `cache_write_1h_*`
    the cache-write prices by TTL; `reasoning_*` and `image_input_*` price those tokens.
    """

    input_nano_usd_per_million_tokens: int
    output_nano_usd_per_million_tokens: int
    cached_input_nano_usd_per_million_tokens: int
    version: str
    cache_write_5m_nano_usd_per_million_tokens: int = 0
    cache_write_1h_nano_usd_per_million_tokens: int = 0
    reasoning_nano_usd_per_million_tokens: int = 0
    image_input_nano_usd_per_million_tokens: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ModelTarget:
    """One upstream provider model behind a route."""

    provider: str
    upstream_model: str
    context_window_tokens: int
    price: Price


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """One route the caller may use: pass `name` as the `model` of a request.

    `context_window_tokens` is the smallest among the targets; `targets` are in
    fallback order.
    """

    name: str
    context_window_tokens: int
    default_max_tokens: int
    targets: tuple[ModelTarget, ...] = ()
