"""An upstream's error body is read only as far as classifying it needs (64 KiB), over a
real socket: an endless error body costs a bounded read and a closed connection."""

from __future__ import annotations

import contextlib

import pytest
from llmgateway_server.errors import ProviderError
from llmgateway_server.providers.http import build_upstream_client
from llmgateway_server.providers.openai import OpenAIProvider
from llmgateway_server.secrets import Secret
from llmgateway_server.types import ChatMessage, FailureClass, Role, UpstreamCall

from tests.support.raw_http import RawConnection, RawRequest, RawServer

OFFERED = 256 * 1024 * 1024
CALL = UpstreamCall(
    upstream_model="m",
    messages=[ChatMessage(Role.USER, "hi")],
    max_tokens=5,
    temperature=None,
    top_p=None,
    stop=(),
    timeout_s=10.0,
)


async def test_a_huge_error_body_is_classified_from_its_start_and_not_read_to_the_end() -> None:
    connections: list[RawConnection] = []

    async def answer(conn: RawConnection, request: RawRequest) -> bool:
        connections.append(conn)
        head = f"HTTP/1.1 503 Service Unavailable\r\ncontent-length: {OFFERED}\r\n\r\n"
        await conn.send(head.encode())
        with contextlib.suppress(ConnectionError):
            await conn.send(b'{"error": {"type": "overloaded_error", "message": "')
            await conn.send_repeated(b"x" * 65536, OFFERED)
        return False

    async with RawServer(answer) as server:
        client = build_upstream_client(
            transport="h1",
            max_connections=4,
            max_keepalive_connections=4,
            keepalive_expiry_s=30,
            connect_timeout_s=2,
        )
        provider = OpenAIProvider(
            "openai", client, base_url=f"{server.url}/v1", api_key=Secret("k", source="t")
        )
        try:
            with pytest.raises(ProviderError) as caught:
                await provider.complete(CALL)
            await connections[0].closed.wait()
        finally:
            await provider.aclose()
    assert caught.value.failure_class is FailureClass.TRANSIENT
    assert caught.value.status_code == 503
    # What the server managed to push before the gateway hung up: socket buffers, not
    # the 256 MiB offered.
    assert connections[0].sent_bytes < 32 * 1024 * 1024
