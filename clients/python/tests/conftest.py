from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc.aio
import llmgateway_client
import pytest
from llmgateway.v1 import gateway_pb2_grpc
from scripted_gateway import ScriptedGateway, ScriptedGatewayServicer

API_KEY = "sk-test-0123456789"


@pytest.fixture
async def gateway() -> AsyncIterator[ScriptedGateway]:
    """A real grpc.aio server on 127.0.0.1 serving the scripted test servicer."""
    servicer = ScriptedGatewayServicer()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield ScriptedGateway(f"127.0.0.1:{port}", servicer)
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def client(gateway: ScriptedGateway) -> AsyncIterator[llmgateway_client.AsyncClient]:
    """An async client of the scripted gateway with an API key, retries off."""
    async with llmgateway_client.AsyncClient(
        gateway.target, api_key=API_KEY, timeout=10, retry_unavailable=False
    ) as client:
        yield client


@pytest.fixture
def unused_target() -> str:
    """A 127.0.0.1 address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
