"""Bad input from callers, through a real in-process gateway: request bodies that do not
decode, a seeded fuzz corpus on every method, and authorization values grpc's own client
would not send (sent over a bare HTTP/2 connection)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway_server.auth import Authenticator
from llmgateway_server.transport.interceptors import (
    UNDECODABLE_MESSAGE,
    RequestContextInterceptor,
)

from tests.support.bare_grpc import unary_call
from tests.support.fuzz import METHODS, MOCK_CONFIG, SERVICE, Payload, corpus, decodes
from tests.support.gateway import RunningGateway, error_info, running_gateway, user

KEY = "gw-team-a-secret-key"
EDGE_CASES = Path(__file__).parent.parent / "data" / "fuzz" / "edge_cases.json"

CONFIG = MOCK_CONFIG
KEYED_CONFIG = CONFIG.replace(
    "  anonymous_tenant: local",
    f"  tenants:\n    - name: team-a\n"
    f"      api_key_sha256: [{hashlib.sha256(KEY.encode()).hexdigest()}]",
)
# A length-delimited field whose length runs 4 GiB past the end of the message.
UNDECODABLE = b"\x0a\xff\xff\xff\xff\x0f"
# What a caller must never see in a status message.
LEAKS = ("<class", "Traceback", "DecodeError", "Exception", "google.protobuf")


async def _call(
    channel: aio.Channel,
    method: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, str, aio.AioRpcError | None]:
    """Send ``body`` as the request bytes of ``method`` (identity serializers); the code,
    the message and the error, reading a stream to its end."""
    # No serializers: the body goes out as the bytes it is (the stubs type that as Never).
    stream: Any = channel.unary_stream(method)
    unary: Any = channel.unary_unary(method)
    try:
        if method.endswith(("/StreamComplete", "/Watch")):
            call = stream(body, metadata=metadata, timeout=10)
            async for _ in call:
                if method.endswith("/Watch"):
                    call.cancel()  # a sound Watch never ends by itself
                    return grpc.StatusCode.OK, "", None
        else:
            await unary(body, metadata=metadata, timeout=10)
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", exc
    return grpc.StatusCode.OK, "", None


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records no bad request may cause: errors and tracebacks."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()[:200]}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


def _assert_undecodable(code: grpc.StatusCode, message: str, error: aio.AioRpcError | None) -> None:
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
    assert error is not None
    reason, metadata, details = error_info(error)
    assert (reason, metadata) == ("INVALID_REQUEST", {})
    (info,) = details  # ErrorInfo only: no field to name in a BadRequest
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.domain == "llmgateway"


async def _access_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Until the access-log line is written: the server logs it as its behaviour returns,
    which can be just after the caller got the status."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 5
    while not any(r.name == "llmgateway.access" for r in caplog.records):
        assert loop.time() < until, "no access-log line within 5 s"
        await asyncio.sleep(0.005)


async def _still_serves(gw: RunningGateway, key: str | None = None) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model="echo", messages=[user("still there?")]),
        metadata=gw.metadata(key),
        timeout=10,
    )
    assert reply.completion.content
    health = health_pb2_grpc.HealthStub(gw.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("method", list(METHODS))
async def test_undecodable_request_is_invalid_argument_on_every_gateway_method(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(CONFIG) as gw:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            code, message, error = await _call(gw.channel, SERVICE + method, UNDECODABLE)
            _assert_undecodable(code, message, error)
            await _access_logged(caplog)
        assert _problems(caplog) == []
        # One access-log line says what happened; nothing else is logged for it.
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert [(r.name, getattr(r, "code", None)) for r in records] == [
            ("llmgateway.access", "INVALID_ARGUMENT")
        ]
        assert gw.ledger.records == []  # nothing decoded, so no call to record
        await _still_serves(gw)


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
async def test_undecodable_request_is_invalid_argument_on_health_and_reflection(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(CONFIG) as gw:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            if method.endswith("/ServerReflectionInfo"):
                reflection: Any = gw.channel.stream_stream(method)
                call = reflection(timeout=10)
                await call.write(UNDECODABLE)
                await call.done_writing()
                with pytest.raises(aio.AioRpcError) as info:
                    async for _ in call:
                        pass
                error: aio.AioRpcError | None = info.value
                code, message = info.value.code(), info.value.details() or ""
            else:
                code, message, error = await _call(gw.channel, method, UNDECODABLE)
        _assert_undecodable(code, message, error)
        assert _problems(caplog) == []
        await _still_serves(gw)


async def test_reflection_still_answers_a_sound_request_after_the_wrapping() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_gateway(CONFIG) as gw:
        stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
        call = stub.ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert "llmgateway.v1.GatewayService" in names


async def test_health_watch_still_streams_after_the_wrapping() -> None:
    async with running_gateway(CONFIG) as gw:
        health = health_pb2_grpc.HealthStub(gw.channel)
        call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = await call.read()
        call.cancel()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == health_pb2.HealthCheckResponse.SERVING


class _Shapes:
    """One method of each handler shape the interceptor wraps, echoing message contents."""

    @staticmethod
    async def unary_generator(request: pb.Message, context: object) -> AsyncIterator[pb.Message]:
        yield pb.Message(content=request.content)

    @staticmethod
    async def stream_coroutine(requests: AsyncIterator[pb.Message], context: object) -> pb.Message:
        return pb.Message(content="".join([r.content async for r in requests]))

    @staticmethod
    async def stream_writer(requests: AsyncIterator[pb.Message], context: Any) -> None:
        async for request in requests:
            await context.write(pb.Message(content=request.content))


async def test_every_handler_shape_answers_an_undecodable_request_and_serves_a_sound_one() -> None:
    codec: dict[str, Any] = {
        "request_deserializer": pb.Message.FromString,
        "response_serializer": pb.Message.SerializeToString,
    }
    handlers = {
        "UnaryGenerator": grpc.unary_stream_rpc_method_handler(_Shapes.unary_generator, **codec),
        "StreamCoroutine": grpc.stream_unary_rpc_method_handler(_Shapes.stream_coroutine, **codec),
        "StreamWriter": grpc.stream_stream_rpc_method_handler(_Shapes.stream_writer, **codec),
    }
    server = aio.server(interceptors=[RequestContextInterceptor(Authenticator({}, {}, "local"))])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Shapes", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sound = pb.Message(content="hi").SerializeToString()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary_stream: Any = channel.unary_stream("/test.Shapes/UnaryGenerator")
            stream_unary: Any = channel.stream_unary("/test.Shapes/StreamCoroutine")
            stream_stream: Any = channel.stream_stream("/test.Shapes/StreamWriter")
            assert [r async for r in unary_stream(sound, timeout=10)] == [sound]
            assert await stream_unary(iter([sound, sound]), timeout=10) == (
                pb.Message(content="hihi").SerializeToString()
            )
            assert [r async for r in stream_stream(iter([sound]), timeout=10)] == [sound]
            for call in (
                lambda: unary_stream(UNDECODABLE, timeout=10),
                lambda: stream_stream(iter([sound, UNDECODABLE]), timeout=10),
            ):
                with pytest.raises(aio.AioRpcError) as info:
                    async for _ in call():
                        pass
                _assert_undecodable(info.value.code(), info.value.details() or "", info.value)
            with pytest.raises(aio.AioRpcError) as info:
                await stream_unary(iter([sound, UNDECODABLE]), timeout=10)
            _assert_undecodable(info.value.code(), info.value.details() or "", info.value)
    finally:
        await server.stop(None)


async def test_an_unauthenticated_call_is_refused_before_its_body_is_decoded() -> None:
    async with running_gateway(KEYED_CONFIG) as gw:
        path = SERVICE + "Complete"
        for metadata in ((), (("authorization", "Bearer not-a-key"),)):
            code, _message, error = await _call(gw.channel, path, UNDECODABLE, metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert error is not None
            assert error_info(error)[0] == "API_KEY_INVALID"
        auth = (("authorization", f"Bearer {KEY}"),)
        _assert_undecodable(*await _call(gw.channel, path, UNDECODABLE, auth))


async def test_two_authorization_values_are_refused_even_if_one_is_valid() -> None:
    async with running_gateway(KEYED_CONFIG) as gw:
        for metadata in (
            (("authorization", f"Bearer {KEY}"), ("authorization", "Bearer other")),
            (("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")),
        ):
            with pytest.raises(aio.AioRpcError) as info:
                await gw.stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert KEY not in (info.value.details() or "")
        await _still_serves(gw, KEY)


def _context_policy_99() -> bytes:
    request = pb.CompleteRequest(model="echo", messages=[user("hi")])
    return request.SerializeToString() + b"\x48\x63"  # field 9 (context_policy) = 99


async def test_an_unknown_enum_value_decodes_and_validation_names_the_field() -> None:
    async with running_gateway(CONFIG) as gw:
        code, _message, error = await _call(gw.channel, SERVICE + "Complete", _context_policy_99())
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert error is not None
        _, _, details = error_info(error)
        (bad,) = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad.field_violations] == ["context_policy"]


def _edge_cases() -> list[dict[str, str]]:
    cases: list[dict[str, str]] = json.loads(EDGE_CASES.read_text())["cases"]
    return cases


@pytest.mark.parametrize("case", _edge_cases(), ids=lambda case: case["name"])
async def test_stored_edge_case(case: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    body = bytes.fromhex(case["hex"])
    payload = Payload("stored", case["method"], body)
    async with running_gateway(CONFIG) as gw:
        with caplog.at_level(logging.INFO):
            code, message, error = await _call(gw.channel, payload.path, body)
        assert code.name == case["expect"], message
        if not decodes(payload):
            _assert_undecodable(code, message, error)
        assert _problems(caplog) == []


# Payloads that decode are answered by the servicer's validation and the route lookup;
# with one mock route and anonymous callers nothing else can happen.
DECODED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
FUZZ_SEED = 20261202
FUZZ_PER_FAMILY = 28  # x 9 families x 4 methods = 1,008 calls


async def test_fuzz_corpus_is_answered_cleanly_on_every_method(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payloads = list(corpus(FUZZ_SEED, FUZZ_PER_FAMILY))
    gate = asyncio.Semaphore(32)
    failures: list[str] = []

    async def one(gw: RunningGateway, payload: Payload) -> bool:
        async with gate:
            code, message, error = await _call(gw.channel, payload.path, payload.body)
        decoded = decodes(payload)
        ok = (
            code in DECODED_CODES
            if decoded
            else (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
        )
        if error is not None and code != grpc.StatusCode.UNAUTHENTICATED:
            ok = ok and error_info(error)[0] in ("INVALID_REQUEST", "MODEL_NOT_FOUND")
        if not ok or any(leak in message for leak in LEAKS):
            failures.append(
                f"{payload.family} {payload.method} decodes={decoded} -> {code.name} "
                f"{message[:120]!r} body={payload.body[:64].hex()}"
            )
        return decoded

    async with running_gateway(CONFIG) as gw:
        with caplog.at_level(logging.INFO):
            decoded = await asyncio.gather(*(one(gw, p) for p in payloads))
            await _still_serves(gw)
        assert failures == []
        assert _problems(caplog) == []
        # The corpus exercises both sides: bodies that decode and bodies that do not.
        assert 0.2 < sum(decoded) / len(payloads) < 0.8


BAD_AUTHORIZATIONS = [
    pytest.param(f"Bearer {KEY}".encode() + b"\xa0", id="nbsp-latin1-byte"),
    pytest.param(f"Bearer {KEY}\xa0".encode(), id="nbsp-utf8"),
    pytest.param(f"Bearer {KEY} ".encode(), id="trailing-space"),
    pytest.param(f"Bearer {KEY}\t".encode(), id="trailing-tab"),
    pytest.param(f"Bearer\t{KEY}".encode(), id="tab-separator"),
    pytest.param(f"Bearer {KEY}\x01".encode(), id="control-char"),
    pytest.param(f"Bearer {KEY}\x7f".encode(), id="del"),
    pytest.param(f"Bearer  {KEY}".encode(), id="double-space"),
    pytest.param(b"Bearer ", id="empty-token"),
    pytest.param(f"Basic {KEY}".encode(), id="other-scheme"),
]


@pytest.mark.parametrize("value", BAD_AUTHORIZATIONS)
async def test_authorization_that_is_not_exactly_bearer_and_the_key_is_refused(
    value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(KEYED_CONFIG) as gw:
        host, _, port = gw.address.rpartition(":")
        path = SERVICE + "ListModels"
        with caplog.at_level(logging.INFO):
            reply = await unary_call(host, int(port), path, b"", [(b"authorization", value)])
        assert reply.status == grpc.StatusCode.UNAUTHENTICATED.value[0], reply
        assert reply.responses == []
        assert reply.message is not None
        assert KEY not in reply.message
        # The gateway's own log lines never carry the value. (gRPC's logger reports a
        # value that is not UTF-8 itself; the log redaction filters that one.)
        ours = [r for r in caplog.records if r.name.startswith("llmgateway")]
        assert [r for r in ours if KEY in r.getMessage() or KEY in str(r.__dict__)] == []
        # The same connection type with the exact key is served: the refusal is the value's.
        good = await unary_call(
            host, int(port), path, b"", [(b"authorization", b"Bearer " + KEY.encode())]
        )
        assert good.status == 0
        (models,) = good.responses
        assert [m.name for m in pb.ListModelsResponse.FromString(models).models] == ["echo"]


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(scheme: bytes) -> None:
    async with running_gateway(KEYED_CONFIG) as gw:
        host, _, port = gw.address.rpartition(":")
        value = scheme + b" " + KEY.encode()
        reply = await unary_call(
            host, int(port), SERVICE + "ListModels", b"", [(b"authorization", value)]
        )
        assert reply.status == 0
        assert len(reply.responses) == 1
