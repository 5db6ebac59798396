"""The gateway's own HTTP/1.1 client (providers/h1_transport.py) against real sockets.

Well-behaved traffic goes through the fake OpenAI upstream (aiohttp's server); the edge
cases go through tests/support/raw_http.py, which writes exactly the bytes a test asks for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trustme
from llmgateway_server.providers.h1_transport import H1Transport
from llmgateway_server.providers.http import UpstreamClient, read_body
from llmgateway_server.providers.openai import OpenAIProvider
from llmgateway_server.types import ChatMessage, Role, TextDelta, UpstreamCall, UpstreamResult

from tests.support.raw_http import Answer, RawConnection, RawRequest, RawServer
from tests.support.upstream import FakeUpstream, Respond

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=30)
OK_HI = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"


@pytest.fixture
async def transport() -> AsyncIterator[H1Transport]:
    t = H1Transport(limits=LIMITS)
    yield t
    await t.aclose()


async def send(
    transport: H1Transport,
    url: str,
    *,
    method: str = "POST",
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
    body: bytes = b"{}",
    timeout_s: float = 5.0,
) -> httpx.Response:
    """The response, its body still to read."""
    return await transport.send(
        method,
        httpx.URL(url),
        headers=headers,
        body=body,
        connect_timeout_s=2.0,
        total_timeout_s=timeout_s,
    )


async def post(
    transport: H1Transport,
    url: str,
    *,
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
    body: bytes = b"{}",
    timeout_s: float = 5.0,
) -> tuple[int, httpx.Headers, bytes]:
    """Status, headers and the whole body."""
    response = await send(transport, url, headers=headers, body=body, timeout_s=timeout_s)
    try:
        return response.status_code, response.headers, await read_body(response)
    finally:
        await response.aclose()


def answer_with(*replies: bytes, keep: bool = True) -> Answer:
    """An answer that sends ``replies`` in turn (the last one repeats)."""
    sent = 0

    async def answer(conn: RawConnection, request: RawRequest) -> bool:
        nonlocal sent
        await conn.send(replies[min(sent, len(replies) - 1)])
        sent += 1
        return keep

    return answer


# -- well-behaved traffic: the fake OpenAI upstream ------------------------------------------


async def test_json_and_sse_from_the_openai_fake_reuse_one_keep_alive_connection(
    upstream: FakeUpstream, transport: H1Transport
) -> None:
    url = f"{upstream.base_url}/v1/chat/completions"
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a b"}],"max_tokens":9}'
    headers = (("content-type", "application/json"), ("authorization", "Bearer sk-test-openai"))
    for _ in range(3):
        status, _, raw = await post(transport, url, headers=headers, body=body)
        assert status == 200
        assert b'"Echo: a b"' in raw
    upstream.script("gpt-4o-mini", Respond(text="one two three", chunks=3))
    stream_body = body[:-1] + b',"stream":true}'
    response = await send(transport, url, headers=headers, body=stream_body)
    assert response.headers["content-type"].startswith("text/event-stream")
    received = b"".join([chunk async for chunk in response.stream])
    await response.aclose()
    events = [line[6:] for line in received.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert text == "one two three"
    assert upstream.total_connections == 1


async def test_httpx_async_client_runs_on_the_transport(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(transport=H1Transport(limits=LIMITS)) as client:
        response = await client.post(
            f"{upstream.base_url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x y"}]},
            headers={"authorization": "Bearer sk-test-openai"},
            timeout=5.0,
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: x y"


# -- a stream read to its [DONE] through the OpenAI adapter ---------------------------------

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def sse_chunk(data: bytes) -> bytes:
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


SSE_EVENTS = sse_chunk(b'{"choices":[{"delta":{"content":"hi"}}]}') + sse_chunk(
    b'{"choices":[{"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
)


def sse_answer(*, end_after_s: float | None) -> Answer:
    """[DONE], then the chunked body's terminator after ``end_after_s`` (None: never)."""

    async def answer(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(SSE_HEAD + SSE_EVENTS + sse_chunk(b"[DONE]"))
        if end_after_s is None:
            return True  # the body never ends; the server just waits
        await asyncio.sleep(end_after_s)
        await conn.send(b"0\r\n\r\n")
        return True

    return answer


async def stream_once(provider: OpenAIProvider) -> str:
    call = UpstreamCall(
        upstream_model="m",
        messages=[ChatMessage(Role.USER, "x")],
        max_tokens=5,
        temperature=None,
        top_p=None,
        stop=(),
        timeout_s=5.0,
    )
    text = ""
    async for item in provider.stream(call):
        if isinstance(item, TextDelta):
            text += item.text
        else:
            assert isinstance(item, UpstreamResult)
    return text


def openai_at(server: RawServer, transport: H1Transport) -> OpenAIProvider:
    client = UpstreamClient(transport, connect_timeout_s=2.0)
    return OpenAIProvider("openai", client, base_url=f"{server.url}/v1", api_key=None)


async def test_stream_whose_body_end_is_late_keeps_its_connection(
    transport: H1Transport,
) -> None:
    async with RawServer(sse_answer(end_after_s=0.1)) as server:
        provider = openai_at(server, transport)
        assert await stream_once(provider) == "hi"
        await server.wait_for_requests(1)
        await asyncio.sleep(0.3)  # the terminator arrives while the connection lingers
        assert await stream_once(provider) == "hi"
        assert len(server.connections) == 1


async def test_stream_whose_body_never_ends_loses_its_connection_after_the_grace(
    transport: H1Transport,
) -> None:
    async with RawServer(sse_answer(end_after_s=None)) as server:
        provider = openai_at(server, transport)
        assert await stream_once(provider) == "hi"  # the caller is not kept waiting
        await asyncio.wait_for(server.connections[0].closed.wait(), 3.0)
        assert await stream_once(provider) == "hi"
        assert len(server.connections) == 2


# -- the request on the wire -----------------------------------------------------------------


async def test_request_carries_host_length_and_the_callers_headers(
    transport: H1Transport,
) -> None:
    async with RawServer(answer_with(OK_HI)) as server:
        await post(
            transport,
            f"{server.url}/v1/chat/completions?api-version=2024",
            headers=(("authorization", "Bearer k"), ("content-length", "999")),
            body=b'{"a":1}',
        )
    (request,) = server.requests
    assert request.line == "POST /v1/chat/completions?api-version=2024 HTTP/1.1"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["content-length"] == "7"  # the transport frames, not the caller
    assert request.headers["authorization"] == "Bearer k"
    assert request.body == b'{"a":1}'


async def test_header_with_a_line_break_is_refused_before_anything_is_sent(
    transport: H1Transport,
) -> None:
    async with RawServer(answer_with(OK_HI)) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await post(transport, server.url, headers=(("x-evil", "a\r\nx-injected: 1"),))
        assert server.connections == []


async def test_head_requests_are_refused(transport: H1Transport) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await send(transport, "http://127.0.0.1:9/", method="HEAD")


# -- response framing ------------------------------------------------------------------------


async def test_chunked_body_sent_one_byte_at_a_time_is_reassembled(
    transport: H1Transport,
) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-trace: 7\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    async def trickle(conn: RawConnection, request: RawRequest) -> bool:
        for i in range(len(wire)):
            await conn.send(wire[i : i + 1])
        return True

    async with RawServer(trickle) as server:
        status, headers, body = await post(transport, server.url)
        assert (status, headers["x-trace"], body) == (200, "7", b"hello world")
        await post(transport, server.url)  # the connection is clean for the next one
        assert len(server.connections) == 1


async def test_body_delimited_by_close_is_read_to_its_end_and_not_reused(
    transport: H1Transport,
) -> None:
    async def until_close(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        conn.close()
        return False

    async with RawServer(until_close) as server:
        assert (await post(transport, server.url))[2] == b"all of it"
        assert (await post(transport, server.url))[2] == b"all of it"
        assert len(server.connections) == 2


async def test_connection_close_header_makes_the_next_request_open_a_new_connection(
    transport: H1Transport,
) -> None:
    reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
    async with RawServer(answer_with(reply, keep=False)) as server:
        await post(transport, server.url)
        await post(transport, server.url)
        assert len(server.connections) == 2


async def test_informational_response_before_the_answer_is_skipped(
    transport: H1Transport,
) -> None:
    async def continue_first(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.05)  # the client reads the 100 on its own
        await conn.send(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nhi")
        return True

    async with RawServer(continue_first) as server:
        status, _, body = await post(transport, server.url)
    assert (status, body) == (201, b"hi")


async def test_error_status_and_body_reach_the_caller(transport: H1Transport) -> None:
    reply = (
        b'HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 11\r\n\r\n{"error":1}'
    )
    async with RawServer(answer_with(reply)) as server:
        status, headers, body = await post(transport, server.url)
    assert (status, headers["retry-after"], body) == (429, "3", b'{"error":1}')


# -- connections that go wrong ---------------------------------------------------------------


async def test_idle_connection_the_server_closed_is_not_reused(transport: H1Transport) -> None:
    async def answer_then_hang_up(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(OK_HI)  # keep-alive by default, then closed anyway
        conn.close()
        return False

    async with RawServer(answer_then_hang_up) as server:
        await post(transport, server.url)
        await server.connections[0].closed.wait()
        await asyncio.sleep(0.05)  # the client's loop sees the FIN
        status, _, body = await post(transport, server.url)
        assert (status, body) == (200, b"hi")
        assert len(server.connections) == 2


async def test_close_mid_body_is_a_remote_protocol_error(transport: H1Transport) -> None:
    async def half(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        conn.close()
        return False

    async with RawServer(half) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
            await post(transport, server.url)


async def test_close_without_an_answer_is_a_remote_protocol_error(
    transport: H1Transport,
) -> None:
    async def hang_up(conn: RawConnection, request: RawRequest) -> bool:
        conn.close()
        return False

    async with RawServer(hang_up) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="unanswered"):
            await post(transport, server.url)


async def test_reset_is_a_read_error(transport: H1Transport) -> None:
    async def reset(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
        await asyncio.sleep(0.05)
        conn.reset()
        return False

    async with RawServer(reset) as server:
        with pytest.raises(httpx.ReadError):
            await post(transport, server.url)


async def test_malformed_response_is_a_remote_protocol_error(transport: H1Transport) -> None:
    async with RawServer(answer_with(b"SMTP ready\r\n\r\n")) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await post(transport, server.url)


async def test_refused_connection_is_a_connect_error(transport: H1Transport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await post(transport, f"http://127.0.0.1:{port}/")


async def test_body_read_whole_is_capped_at_64_mib(transport: H1Transport) -> None:
    async def huge(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (128 << 20))
        await conn.send(b"x" * (65 << 20))  # and then nothing: the body is half sent
        return True

    async with RawServer(huge) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="64 MiB"):
            await post(transport, server.url, timeout_s=30)
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


# -- timeouts and cancellation ---------------------------------------------------------------


async def test_silent_server_is_cut_at_the_total_timeout_and_sees_its_connection_close(
    transport: H1Transport,
) -> None:
    async def silent(conn: RawConnection, request: RawRequest) -> bool:
        return True

    async with RawServer(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await post(transport, server.url, timeout_s=0.2)
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


async def test_stream_that_stalls_after_headers_is_cut_at_the_total_timeout(
    transport: H1Transport,
) -> None:
    async def stall(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        return True

    async with RawServer(stall) as server:
        response = await send(transport, server.url, timeout_s=0.3)
        chunks: list[bytes] = []

        async def read_all() -> None:
            async for chunk in response.stream:
                chunks.append(chunk)

        with pytest.raises(httpx.ReadTimeout):
            await read_all()
        await response.aclose()
        assert chunks == [b"abc"]
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


async def test_closing_a_response_mid_body_closes_its_connection_at_once(
    transport: H1Transport,
) -> None:
    async def endless(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            await conn.send(b"5\r\nchunk\r\n")
            await asyncio.sleep(0.01)

    async with RawServer(endless) as server:
        response = await send(transport, server.url, timeout_s=5)
        async for _ in response.stream:
            break
        await response.aclose()
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


async def test_cancelled_request_closes_its_connection(transport: H1Transport) -> None:
    async def silent(conn: RawConnection, request: RawRequest) -> bool:
        return True

    async with RawServer(silent) as server:
        task = asyncio.create_task(post(transport, server.url))
        await server.wait_for_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)


# -- the pool --------------------------------------------------------------------------------


async def test_pool_limit_queues_a_request_until_a_connection_is_free() -> None:
    transport = H1Transport(limits=httpx.Limits(max_connections=1))
    gate = asyncio.Event()

    async def gated(conn: RawConnection, request: RawRequest) -> bool:
        await gate.wait()
        await conn.send(OK_HI)
        return True

    try:
        async with RawServer(gated) as server:
            first = asyncio.create_task(post(transport, server.url))
            second = asyncio.create_task(post(transport, server.url))
            await asyncio.sleep(0.1)
            assert len(server.requests) == 1  # the second waits for the only connection
            gate.set()
            assert [(await first)[2], (await second)[2]] == [b"hi", b"hi"]
            assert len(server.connections) == 1
    finally:
        await transport.aclose()


async def test_waiting_for_a_connection_past_the_timeout_is_a_pool_timeout() -> None:
    transport = H1Transport(limits=httpx.Limits(max_connections=1))

    async def silent(conn: RawConnection, request: RawRequest) -> bool:
        return True

    try:
        async with RawServer(silent) as server:
            holder = asyncio.create_task(post(transport, server.url, timeout_s=5))
            await server.wait_for_requests(1)
            with pytest.raises(httpx.PoolTimeout):
                await post(transport, server.url, timeout_s=0.2)
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            # The slot came back: the next request gets a connection.
            async with RawServer(answer_with(OK_HI)) as other:
                assert (await post(transport, other.url))[2] == b"hi"
    finally:
        await transport.aclose()


async def test_connection_idle_past_the_keepalive_expiry_is_not_reused() -> None:
    transport = H1Transport(limits=httpx.Limits(keepalive_expiry=0.1))
    try:
        async with RawServer(answer_with(OK_HI)) as server:
            await post(transport, server.url)
            await post(transport, server.url)  # at once: reused
            await asyncio.sleep(0.25)
            await post(transport, server.url)  # idle too long: a new connection
            assert len(server.connections) == 2
            await asyncio.wait_for(server.connections[0].closed.wait(), 2.0)
    finally:
        await transport.aclose()


async def test_unread_body_stops_the_socket_being_read(transport: H1Transport) -> None:
    size = 32 * 1024 * 1024
    payload = hashlib.sha256(b"seed").digest() * (size // 32)
    finished = asyncio.Event()

    async def big(conn: RawConnection, request: RawRequest) -> bool:
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        await conn.send(payload)
        finished.set()
        return True

    async with RawServer(big) as server:
        response = await send(transport, server.url, timeout_s=30)
        await asyncio.sleep(0.5)
        # Not read yet: the client holds at most its buffer, so the server is blocked.
        assert not finished.is_set()
        body = await read_body(response)
        await response.aclose()
    assert len(body) == size
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


# -- TLS and IPv6 ----------------------------------------------------------------------------


async def test_tls_to_a_trusted_server_works_and_an_untrusted_certificate_is_refused() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    trusting = H1Transport(limits=LIMITS, ssl_context=client_context)
    default = H1Transport(limits=LIMITS)  # httpx's trust store: never heard of this CA
    try:
        async with RawServer(answer_with(OK_HI), ssl_context=server_context) as server:
            assert server.url.startswith("https://")
            assert (await post(trusting, server.url))[2] == b"hi"
            assert (await post(trusting, server.url))[2] == b"hi"
            assert len(server.connections) == 1
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(default, server.url)
    finally:
        await trusting.aclose()
        await default.aclose()


async def test_ipv6_loopback(transport: H1Transport) -> None:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK_HI)
        await writer.drain()
        writer.close()

    v6 = await asyncio.start_server(on_connect, "::1", 0)  # needs the IPv6 loopback
    port = v6.sockets[0].getsockname()[1]
    try:
        status, _, body = await post(transport, f"http://[::1]:{port}/", body=b"")
        assert (status, body) == (200, b"hi")
    finally:
        v6.close()
        await v6.wait_closed()
