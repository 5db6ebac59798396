"""No provider key and no tenant key reaches a caller or a log line, end to end.

Upstreams echo the request's headers (the provider key with them) in their error bodies,
for both provider formats, in the message, in the error type/code and in an error event
inside a stream; keys have shapes a pattern-based scrubber misses. Through the real
gateway, with logging configured as the server does (DEBUG, the queue pipeline), every
response field, status message, status detail and metadata, and every log line is
searched for every key. A tenant key sent with a byte gRPC cannot decode is logged by
gRPC's own logger: that line goes through the same redaction.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway_server.observability import LogPipeline, configure_logging

from tests.support.bare_grpc import unary_call
from tests.support.gateway import RunningGateway, running_gateway, user
from tests.support.upstream import EchoHeaders, FakeUpstream

PROVIDER_KEYS = {
    "KEY_SHORT": "k3y!",  # short, punctuated
    "KEY_HEX": "0123456789ab",  # 12 hex digits: looks like an ordinary token
    "KEY_UUID": "123e4567-e89b-12d3-a456-426614174000",
    "KEY_SK_ANT": "sk-ant-api03-Zx9_q-" + "A1b2C3d4" * 8,
}
TENANT_KEYS = {"TENANT_A_KEY": "tenant-A.k3y#1", "TENANT_B_KEY": "0f1e2d3c4b5a"}
ALL_KEYS = [*PROVIDER_KEYS.values(), *TENANT_KEYS.values()]
TENANT_A = TENANT_KEYS["TENANT_A_KEY"]
EchoShape: TypeAlias = Literal["typed", "untyped", "key_as_type", "text"]


def _config(base_url: str) -> str:
    return f"""
server:
  default_deadline_s: 30
  access_log: true
auth:
  tenants:
    - name: team-a
      api_key_env: TENANT_A_KEY
    - name: team-b
      api_key_env: TENANT_B_KEY
providers:
  oa_short:
    type: openai
    base_url: {base_url}/v1
    api_key_env: KEY_SHORT
  oa_hex:
    type: openai_compatible
    base_url: {base_url}/v1
    api_key_env: KEY_HEX
  an_uuid:
    type: anthropic
    base_url: {base_url}
    api_key_env: KEY_UUID
  an_sk:
    type: anthropic
    base_url: {base_url}
    api_key_env: KEY_SK_ANT
targets:
  oa_short_echo: {{provider: oa_short, model: echo-oa-short, context_window: 8192}}
  oa_hex_echo: {{provider: oa_hex, model: echo-oa-hex, context_window: 8192}}
  an_uuid_echo: {{provider: an_uuid, model: echo-an-uuid, context_window: 8192}}
  an_sk_echo: {{provider: an_sk, model: echo-an-sk, context_window: 8192}}
  oa_hex_ok: {{provider: oa_hex, model: ok-oa-hex, context_window: 8192}}
  an_uuid_ok: {{provider: an_uuid, model: ok-an-uuid, context_window: 8192}}
routes:
  openai-then-anthropic:
    targets: [oa_short_echo, an_uuid_ok]
  anthropic-then-openai:
    targets: [an_sk_echo, oa_hex_ok]
  all-fail:
    targets: [oa_short_echo, an_sk_echo, oa_hex_echo, an_uuid_echo]
"""


SHAPES = ["typed", "untyped", "key_as_type", "text"]
# What the first attempt's detail shows for each shape: the classification, plus the
# provider's error type when it is a safe token (never the key, never body text).
SHOWN = {"typed": " invalid_request_error", "untyped": "", "key_as_type": "", "text": ""}


def _echo_everywhere(upstream: FakeUpstream, shape: EchoShape) -> None:
    # Every echo target: the request's headers in its error, as an HTTP 400 for unary
    # calls and as an error event before any text for streams.
    for model in ("echo-oa-short", "echo-oa-hex", "echo-an-uuid", "echo-an-sk"):
        upstream.set_default(model, EchoHeaders(400, shape=shape, in_stream=True))


class _Stream:
    """A text stream that keeps what the log listener writes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        """Nothing buffered."""


class _Raw(logging.Handler):
    """Every record before redaction, to check the gateway's own code logs no key."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Logs:
    """What the configured pipeline wrote, and the raw records."""

    pipeline: LogPipeline
    stream: _Stream
    raw: _Raw = field(default_factory=_Raw)

    def lines(self) -> list[str]:
        """Every line, once the pipeline has written all it holds (it is stopped first:
        later records are written directly, to the same stream)."""
        self.pipeline.stop()
        return "".join(self.stream.parts).splitlines()


@pytest.fixture
def logs() -> Iterator[Logs]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = _Stream()
    pipeline = configure_logging("debug", ALL_KEYS, stream=stream)  # type: ignore[arg-type]
    captured = Logs(pipeline, stream)
    root.addHandler(captured.raw)
    try:
        yield captured
    finally:
        pipeline.stop()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def gateway(upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        _config(upstream.base_url), env={**PROVIDER_KEYS, **TENANT_KEYS}
    ) as gw:
        yield gw


def _forms(key: str) -> list[str]:
    return [key, repr(key)[1:-1], repr(key.encode())[2:-1], urllib.parse.quote(key, safe="")]


def _assert_clean(where: str, *blobs: str | bytes) -> None:
    for blob in blobs:
        text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
        raw = blob if isinstance(blob, bytes) else blob.encode()
        for key in ALL_KEYS:
            for form in _forms(key):
                assert form not in text, f"{where}: key {key!r} found as {form!r}"
            assert key.encode() not in raw, f"{where}: key {key!r} found in bytes"


def _message_blobs(message: Message) -> list[str | bytes]:
    return [message.SerializeToString(), text_format.MessageToString(message)]


def _metadata_blobs(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[str | bytes]:
    return [value for _, value in metadata or ()] + [name for name, _ in metadata or ()]


def _error_blobs(exc: grpc.aio.AioRpcError) -> list[str | bytes]:
    return [
        exc.details() or "",
        exc.debug_error_string() or "",
        *_metadata_blobs(exc.trailing_metadata()),  # grpc-status-details-bin included
        *_metadata_blobs(exc.initial_metadata()),
    ]


def _assert_logs_clean(logs: Logs) -> list[dict[str, Any]]:
    lines = logs.lines()
    assert lines, "nothing was logged"
    for line in lines:
        _assert_clean("log line", line)
    # Defence in depth: the gateway's own records hold no key even before redaction.
    for record in logs.raw.records:
        if record.name.startswith("llmgateway"):
            _assert_clean(f"raw record {record.name}", record.getMessage(), str(record.__dict__))
    return [json.loads(line) for line in lines]


def _attempt_details(completion: pb.Completion) -> list[str]:
    return [a.detail for a in completion.attempts]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("route", "served_by", "first_detail"),
    [
        ("openai-then-anthropic", "an_uuid", "oa_short: HTTP 400 BAD_REQUEST"),
        ("anthropic-then-openai", "oa_hex", "an_sk: HTTP 400 BAD_REQUEST"),
    ],
)
async def test_fallback_after_an_echoing_error_returns_no_key(
    upstream: FakeUpstream,
    gateway: RunningGateway,
    logs: Logs,
    route: str,
    served_by: str,
    first_detail: str,
    shape: EchoShape,
) -> None:
    _echo_everywhere(upstream, shape)
    call = gateway.stub.Complete(
        pb.CompleteRequest(model=route, messages=[user("hi")], max_tokens=20),
        metadata=gateway.metadata(TENANT_A),
        timeout=10,
    )
    reply = await call
    assert reply.completion.provider == served_by
    details = _attempt_details(reply.completion)
    assert details[0] == first_detail + SHOWN[shape]
    _assert_clean(
        "unary response",
        *_message_blobs(reply),
        *_metadata_blobs(await call.initial_metadata()),
        *_metadata_blobs(await call.trailing_metadata()),
    )

    stream = gateway.stub.StreamComplete(
        pb.StreamCompleteRequest(model=route, messages=[user("hi")], max_tokens=20),
        metadata=gateway.metadata(TENANT_A),
        timeout=10,
    )
    events = [event async for event in stream]
    result = events[-1].result
    assert result.provider == served_by
    assert "stream error" in result.attempts[0].detail
    for event in events:
        _assert_clean("stream event", *_message_blobs(event))
    _assert_clean(
        "stream metadata",
        *_metadata_blobs(await stream.initial_metadata()),
        *_metadata_blobs(await stream.trailing_metadata()),
    )
    await gateway.server.stop(1.0)  # every record of the calls written before the check
    logs_seen = _assert_logs_clean(logs)
    assert any(e.get("msg") == "attempt failed" for e in logs_seen)


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_target_failing_with_echoing_errors_returns_no_key(
    upstream: FakeUpstream, gateway: RunningGateway, logs: Logs, shape: EchoShape
) -> None:
    _echo_everywhere(upstream, shape)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await gateway.stub.Complete(
            pb.CompleteRequest(model="all-fail", messages=[user("hi")], max_tokens=20),
            metadata=gateway.metadata(TENANT_A),
            timeout=10,
        )
    assert unary.value.code() == grpc.StatusCode.UNAVAILABLE
    _assert_clean("unary error", *_error_blobs(unary.value))

    stream = gateway.stub.StreamComplete(
        pb.StreamCompleteRequest(model="all-fail", messages=[user("hi")], max_tokens=20),
        metadata=gateway.metadata(TENANT_A),
        timeout=10,
    )
    events: list[pb.StreamCompleteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        events.extend([event async for event in stream])
    assert events == []  # no delta, no result: the failure is the status
    assert streamed.value.code() == grpc.StatusCode.UNAVAILABLE
    _assert_clean("stream error", *_error_blobs(streamed.value))
    # Every echo target answered both calls (the stream's error events were retried).
    for model in ("echo-oa-short", "echo-oa-hex", "echo-an-uuid", "echo-an-sk"):
        assert upstream.request_count(model) >= 2
    await gateway.server.stop(1.0)
    _assert_logs_clean(logs)


async def test_tenant_key_that_grpc_cannot_decode_is_redacted_in_grpc_own_log(
    gateway: RunningGateway, logs: Logs
) -> None:
    host, _, port = gateway.address.rpartition(":")
    value = f"Bearer {TENANT_A}".encode() + b"\xa0"  # one byte that is not UTF-8
    method = "/llmgateway.v1.GatewayService/ListModels"
    reply = await unary_call(host, int(port), method, b"", [(b"authorization", value)])
    assert reply.status is not None
    assert reply.status != grpc.StatusCode.OK.value[0]
    _assert_clean("raw reply", reply.message or "", *(v for _, v in reply.headers if v))
    await gateway.server.stop(1.0)
    # gRPC's own logger saw the raw value; its record reached the pipeline by propagation.
    grpc_records = [r for r in logs.raw.records if r.name.startswith("grpc")]
    assert any(TENANT_A in r.getMessage() for r in grpc_records), "gRPC no longer logs it"
    entries = _assert_logs_clean(logs)
    from_grpc = [e for e in entries if e["logger"].startswith("grpc") and "[REDACTED]" in e["msg"]]
    assert from_grpc, "gRPC's record did not go through the redacting pipeline"
