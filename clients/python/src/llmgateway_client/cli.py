"""The `llmgateway-client` command line.

```
llmgateway-client [--target HOST:PORT] [--api-key-env VAR] [--timeout S] [--tls]
                  complete [--model M] [--max-tokens N] [--temperature T]
                           [--system TEXT] [--no-stream]
                           [--image PATH]... [--image-url URL]...
                           [--tool PATH]... [--tool-choice auto|none|required|NAME]
                           [--json | --json-schema PATH [--schema-name NAME] [--strict]]
                           [PROMPT | -]
llmgateway-client models
llmgateway-client count-tokens [--model M] [--system TEXT] [--image PATH]...
                               [--image-url URL]... [--tool PATH]... [PROMPT | -]
```

`complete` streams the answer to stdout as it arrives, followed by the tool calls the
model made (`tool call: NAME(ARGUMENTS)`, one a line) and its refusal (`refusal: ...`),
if any; then it prints usage, cost and the serving target to stderr. Images (`--image`
files, their type sniffed, and `--image-url`s) go in the user message, before the
prompt. A
`--tool` file is a JSON object `{"name", "description", "parameters", "strict"}`; its
parameters, like a `--json-schema` file, are sent byte for byte. Failures print one
line, `llmgateway-client: error: <REASON>: <message>`, to stderr and exit with status
1. The API key is read from an environment variable (LLMGATEWAY_API_KEY by default)
and never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from .__version__ import __version__
from ._config import DEFAULT_TARGET
from ._convert import ToolChoiceInput
from ._errors import GatewayError, InvalidRequest
from ._sync import Client
from ._types import (
    Completion,
    Image,
    ImagePart,
    Message,
    ModelInfo,
    ResponseFormat,
    TextPart,
    TokenCount,
    Tool,
    ToolCall,
    ToolChoice,
)

__all__ = ["main"]

PROG = "llmgateway-client"
TARGET_ENV = "LLMGATEWAY_TARGET"
API_KEY_ENV = "LLMGATEWAY_API_KEY"

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "complete" and args.json_schema is None:
        if args.schema_name is not None:
            parser.error("complete: --schema-name goes with --json-schema")
        if args.strict:
            parser.error("complete: --strict goes with --json-schema")
    if args.command in ("complete", "count-tokens") and args.prompt in (None, "-"):
        if args.prompt is None and sys.stdin.isatty():
            parser.error(f"{args.command}: give a prompt, or '-' to read it from stdin")
        args.prompt = sys.stdin.read()
    client = Client(
        args.target,
        api_key=os.environ.get(args.api_key_env) or None,
        timeout=args.timeout,
        credentials=grpc.ssl_channel_credentials() if args.tls else None,
    )
    try:
        with client:
            if args.command == "complete":
                return _complete(client, args)
            if args.command == "models":
                return _models(client)
            return _count_tokens(client, args)
    except GatewayError as exc:
        _flush_stdout()
        print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _flush_stdout()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Call the llmgateway gRPC gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        help=f"the gateway's address (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        metavar="VAR",
        help=f"environment variable holding the API key (default: {API_KEY_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="deadline of the call in seconds (default: 60)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    complete = commands.add_parser("complete", help="run a chat completion")
    _add_prompt_arguments(complete)
    complete.add_argument("--max-tokens", type=int, metavar="N", help="most output tokens")
    complete.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    complete.add_argument(
        "--no-stream", action="store_true", help="wait for the whole answer instead of streaming"
    )
    complete.add_argument(
        "--tool-choice",
        type=_tool_choice,
        metavar="auto|none|required|NAME",
        help="whether the model may, must not or must call tools, or the tool it must call",
    )
    output = complete.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="ask for a JSON object")
    output.add_argument(
        "--json-schema",
        type=_json_schema_file,
        metavar="PATH",
        help="ask for JSON matching the JSON Schema in this file (sent byte for byte)",
    )
    complete.add_argument(
        "--schema-name",
        type=_schema_name,
        metavar="NAME",
        help="the schema's name (default: from the --json-schema file name)",
    )
    complete.add_argument(
        "--strict", action="store_true", help="ask the provider to follow the schema exactly"
    )

    commands.add_parser("models", help="list the routes you may use")

    count = commands.add_parser("count-tokens", help="count a prompt's input tokens")
    _add_prompt_arguments(count)
    return parser


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="the route (default: default)")
    parser.add_argument("--system", metavar="TEXT", help="a system message to send first")
    parser.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        type=_image_file,
        metavar="PATH",
        help="attach a PNG, JPEG, GIF or WebP file to the user message (repeatable)",
    )
    parser.add_argument(
        "--image-url",
        dest="images",
        action="append",
        type=_image_url,
        metavar="URL",
        help="attach an image the provider fetches from this URL (repeatable)",
    )
    parser.add_argument(
        "--tool",
        dest="tools",
        action="append",
        default=[],
        type=_tool_file,
        metavar="PATH",
        help='declare the tool in this JSON file, {"name", "description", "parameters"}'
        " (repeatable)",
    )
    parser.add_argument("prompt", nargs="?", help="the user message; '-' reads stdin")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _image_file(path: str) -> Image:
    try:
        return Image.from_file(path)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _image_url(url: str) -> Image:
    return Image.from_url(url)


def _read_json_text(path: str) -> str:
    """A file's text exactly (no newline translation; a UTF-8 byte order mark dropped)."""
    return Path(path).read_bytes().decode("utf-8-sig")


def _tool_file(path: str) -> Tool:
    try:
        return Tool.from_json(_read_json_text(path))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeError included
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from exc


def _json_schema_file(path: str) -> tuple[str, str]:
    """`(name from the file name, schema text as is)`."""
    try:
        text = _read_json_text(path)
        if not isinstance(json.loads(text), dict):
            raise ValueError("a JSON Schema is a JSON object")
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from exc
    # A schema name is 1-64 of A-Z a-z 0-9 _ -: "person.schema.json" gives "person_schema".
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64]
    return name or "schema", text


def _schema_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise argparse.ArgumentTypeError(f"must be 1-64 of A-Z a-z 0-9 _ -: {name!r}")
    return name


_TOOL_CHOICE_MODES: dict[str, ToolChoiceInput] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
}


def _tool_choice(value: str) -> ToolChoiceInput:
    """A mode, or else the name of the tool the model must call."""
    try:
        return _TOOL_CHOICE_MODES.get(value) or ToolChoice.tool(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _messages(args: argparse.Namespace) -> list[Message]:
    messages = [Message.system(args.system)] if args.system else []
    if args.images:
        parts: list[TextPart | ImagePart] = [ImagePart(image) for image in args.images]
        if args.prompt:
            parts.append(TextPart(args.prompt))
        messages.append(Message.user(parts))
    else:
        messages.append(Message.user(args.prompt))
    return messages


def _complete(client: Client, args: argparse.Namespace) -> int:
    response_format = None
    if args.json:
        response_format = ResponseFormat.json_object()
    elif args.json_schema is not None:
        default_name, schema = args.json_schema
        response_format = ResponseFormat.json_schema(
            args.schema_name or default_name, schema, strict=args.strict
        )
    messages = _messages(args)
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    completion: Completion | None = None
    if args.no_stream:
        completion = client.complete(
            args.model,
            messages,
            **options,
            tools=args.tools,
            tool_choice=args.tool_choice,
            response_format=response_format,
        )
        _write(completion.content)
    else:
        with client.stream(
            args.model,
            messages,
            **options,
            tools=args.tools,
            tool_choice=args.tool_choice,
            response_format=response_format,
        ) as stream:
            for item in stream:
                if isinstance(item, str):
                    _write(item)
                else:
                    completion = item
    assert completion is not None  # the stream raises when it ends without one
    if completion.content and not completion.content.endswith("\n"):
        _write("\n")
    for call in completion.tool_calls:
        _write(format_tool_call(call) + "\n")
    if completion.refusal:
        _write(f"refusal: {completion.refusal}\n")
    print(format_summary(completion), file=sys.stderr)
    return 0


def _models(client: Client) -> int:
    for model in client.list_models():
        print(format_model(model))
    return 0


def _count_tokens(client: Client, args: argparse.Namespace) -> int:
    count = client.count_tokens(args.model, _messages(args), tools=args.tools)
    print(format_token_count(count))
    return 0


def format_tool_call(call: ToolCall) -> str:
    """`tool call: get_weather({"city": "Paris"})`, the arguments as the model wrote them."""
    invalid = " (arguments are not valid JSON)" if call.arguments_invalid else ""
    return f"tool call: {call.name}({call.arguments}){invalid}"


def format_summary(completion: Completion) -> str:
    """`usage: 12 in / 5 out (0 cached) · cost $0.000000042 · served by mock/mock-echo`.

    Cache writes, reasoning and image tokens join the parentheses when there are any.
    """
    usage = completion.usage
    counts = [f"{usage.cached_input_tokens} cached"]
    for count, label in (
        (usage.cache_write_tokens, "cache write"),
        (usage.reasoning_tokens, "reasoning"),
        (usage.image_input_tokens, "image"),
    ):
        if count:
            counts.append(f"{count} {label}")
    parts = [
        f"usage: {usage.input_tokens} in / {usage.output_tokens} out ({', '.join(counts)})",
        f"cost ${completion.cost.usd:.9f}",
        f"served by {completion.served_by}",
    ]
    if completion.finish_reason != "stop":
        parts.append(f"finish {completion.finish_reason}")
    if completion.trimmed_message_count:
        parts.append(f"{completion.trimmed_message_count} messages trimmed")
    return " · ".join(parts)


def format_model(model: ModelInfo) -> str:
    """One route and its targets, one line each."""
    lines = [
        f"{model.name}  context {model.context_window_tokens} tokens"
        f" · default max_tokens {model.default_max_tokens}"
    ]
    for target in model.targets:
        price = target.price
        lines.append(
            f"  {target.provider}/{target.upstream_model}"
            f"  context {target.context_window_tokens}"
            f" · per 1M tokens: ${_usd(price.input_nano_usd_per_million_tokens)} in"
            f" / ${_usd(price.output_nano_usd_per_million_tokens)} out"
            f" / ${_usd(price.cached_input_nano_usd_per_million_tokens)} cached"
            + "".join(
                f" / ${_usd(nano_usd)} {label}"
                for nano_usd, label in (
                    (price.cache_write_5m_nano_usd_per_million_tokens, "cache write 5m"),
                    (price.cache_write_1h_nano_usd_per_million_tokens, "cache write 1h"),
                    (price.reasoning_nano_usd_per_million_tokens, "reasoning"),
                    (price.image_input_nano_usd_per_million_tokens, "image"),
                )
                if nano_usd
            )
            + (f" (prices {price.version})" if price.version else "")
        )
    return "\n".join(lines)


def format_token_count(count: TokenCount) -> str:
    """`12 input tokens (exact) · context window 128000`."""
    kind = "exact" if count.exact else "estimated"
    return (
        f"{count.input_tokens} input tokens ({kind}) · context window {count.context_window_tokens}"
    )


def _describe(error: GatewayError) -> str:
    text = " ".join(str(error).split())  # one line
    if isinstance(error, InvalidRequest) and error.field_violations:
        text += " (" + "; ".join(f"{f}: {d}" for f, d in error.field_violations) + ")"
    if error.retry_after is not None:
        text += f" (retry after {error.retry_after:g}s)"
    return text


def _usd(nano_usd: int) -> str:
    return f"{(decimal.Decimal(nano_usd).scaleb(-9)).normalize():f}"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _flush_stdout() -> None:
    with contextlib.suppress(OSError):
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
