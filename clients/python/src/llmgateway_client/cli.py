"""The `llmgateway-client` command line.

```
llmgateway-client [--target HOST:PORT] [--api-key-env VAR] [--timeout S] [--tls]
                  complete [--model M] [--max-tokens N] [--temperature T]
                           [--system TEXT] [--no-stream] [PROMPT | -]
llmgateway-client models
llmgateway-client count-tokens [--model M] [--system TEXT] [PROMPT | -]
```

`complete` streams the answer to stdout as it arrives, then prints usage, cost and
the serving target to stderr. Failures print one line, `llmgateway-client: error:
<REASON>: <message>`, to stderr and exit with status 1. The API key is read from an
environment variable (LLMGATEWAY_API_KEY by default) and never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import os
import sys
from collections.abc import Sequence

import grpc

from .__version__ import __version__
from ._config import DEFAULT_TARGET
from ._errors import GatewayError, InvalidRequest
from ._sync import Client
from ._types import Completion, Message, ModelInfo, TokenCount

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

    commands.add_parser("models", help="list the routes you may use")

    count = commands.add_parser("count-tokens", help="count a prompt's input tokens")
    _add_prompt_arguments(count)
    return parser


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="the route (default: default)")
    parser.add_argument("--system", metavar="TEXT", help="a system message to send first")
    parser.add_argument("prompt", nargs="?", help="the user message; '-' reads stdin")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _messages(args: argparse.Namespace) -> list[Message]:
    messages = [Message.system(args.system)] if args.system else []
    messages.append(Message.user(args.prompt))
    return messages


def _complete(client: Client, args: argparse.Namespace) -> int:
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    completion: Completion | None = None
    if args.no_stream:
        completion = client.complete(args.model, _messages(args), **options)
        _write(completion.content)
    else:
        with client.stream(args.model, _messages(args), **options) as stream:
            for item in stream:
                if isinstance(item, str):
                    _write(item)
                else:
                    completion = item
    assert completion is not None  # the stream raises when it ends without one
    if completion.content and not completion.content.endswith("\n"):
        _write("\n")
    print(format_summary(completion), file=sys.stderr)
    return 0


def _models(client: Client) -> int:
    for model in client.list_models():
        print(format_model(model))
    return 0


def _count_tokens(client: Client, args: argparse.Namespace) -> int:
    print(format_token_count(client.count_tokens(args.model, _messages(args))))
    return 0


def format_summary(completion: Completion) -> str:
    """`usage: 12 in / 5 out (0 cached) · cost $0.000000042 · served by mock/mock-echo`."""
    usage = completion.usage
    parts = [
        f"usage: {usage.input_tokens} in / {usage.output_tokens} out"
        f" ({usage.cached_input_tokens} cached)",
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
