"""The one request every path sends, and the keys: the same bytes direct, relayed or gatewayed.

The gateway sends the upstream ``{"model", "messages", "max_tokens"}`` (plus ``stream`` and
``stream_options`` for streams); the direct client sends exactly those bytes, the bare relay
the same document serialised by the standard library's ``json``.
"""

from __future__ import annotations

from typing import Any

import orjson
from llmgateway.v1 import gateway_pb2 as pb

UPSTREAM_MODEL = "gpt-4"  # counted with tiktoken cl100k_base by the gateway (exact)
MAX_TOKENS = 64
UPSTREAM_KEY = "bench-upstream-key-0123456789"
TENANT_KEY = "bench-tenant-key-0123456789"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
TENANT_KEY_ENV = "BENCH_TENANT_KEY"

SYSTEM_PROMPT = "You are a concise assistant. Answer in two sentences."
USER_PROMPT = (
    "Our gateway relays chat completions from internal services to several providers. "
    "Explain in plain words why the deadline of the caller should bound every retry."
)
# The fake upstream answers this (40 words) instead of echoing, cut into STREAM_CHUNKS.
ANSWER_TEXT = (
    "Every retry spends time the caller has already budgeted, so the gateway must carve "
    "each attempt and each backoff out of the remaining deadline. Otherwise a slow "
    "provider turns one late answer into many wasted calls that nobody is waiting for."
)
STREAM_CHUNKS = 20

_ROLES = ((pb.ROLE_SYSTEM, "system", SYSTEM_PROMPT), (pb.ROLE_USER, "user", USER_PROMPT))


def openai_body(*, stream: bool) -> dict[str, Any]:
    """The Chat Completions body the gateway sends for the benchmark request."""
    body: dict[str, Any] = {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": role, "content": text} for _, role, text in _ROLES],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def openai_body_bytes(*, stream: bool) -> bytes:
    """``openai_body`` serialised as the gateway serialises it (``orjson.dumps``)."""
    return orjson.dumps(openai_body(stream=stream))


def upstream_headers() -> dict[str, str]:
    """Headers of a direct call: the gateway's, with the upstream key."""
    return {
        "content-type": "application/json",
        "accept": "application/json",
        "authorization": f"Bearer {UPSTREAM_KEY}",
    }


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """The tenant's bearer key (auth is on in the gateway; the relay ignores it)."""
    return (("authorization", f"Bearer {TENANT_KEY}"),)


def messages() -> list[pb.Message]:
    """The conversation as protobuf messages."""
    return [pb.Message(role=role, content=text) for role, _, text in _ROLES]


def complete_request(route: str) -> pb.CompleteRequest:
    """The unary request on ``route``."""
    return pb.CompleteRequest(model=route, messages=messages(), max_tokens=MAX_TOKENS)


def stream_request(route: str) -> pb.StreamCompleteRequest:
    """The streaming request on ``route``."""
    return pb.StreamCompleteRequest(model=route, messages=messages(), max_tokens=MAX_TOKENS)
