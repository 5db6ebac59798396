"""The interceptor over a real gRPC socket when the tenant store is down: config keys keep
working, every other key is refused UNAVAILABLE (STORE_UNAVAILABLE: fail closed, never
admitted on a stale answer, never INTERNAL), and store keys work again as soon as the store
answers. The caller the interceptor sets is what the servicer reads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc
from llmgateway_server.auth import Authenticator
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.storage.base import KeyRecord, TenantRecord
from llmgateway_server.transport.context import current_caller
from llmgateway_server.transport.interceptors import RequestContextInterceptor

from tests.support.gateway import error_info
from tests.support.memory_stores import MemoryTenantStore

CONFIG_KEY = "config-team-key"
STORE_KEY = "lgw_store-team-key"


async def _who(request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
    caller = current_caller.get()
    return pb.ListModelsResponse(models=[pb.Model(name=f"{caller.tenant}/{caller.key_prefix}")])


@asynccontextmanager
async def _server(store: MemoryTenantStore) -> AsyncIterator[pb_grpc.GatewayServiceStub]:
    cache = StoreKeyCache(store)
    digest = hashlib.sha256(CONFIG_KEY.encode()).hexdigest()
    auth = Authenticator({digest: "config-team"}, {"config-team": ["*"]}, None, store_keys=cache)
    server = aio.server(interceptors=[RequestContextInterceptor(auth, access_log_enabled=False)])
    handler = grpc.unary_unary_rpc_method_handler(
        _who,
        request_deserializer=pb.ListModelsRequest.FromString,
        response_serializer=pb.ListModelsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "llmgateway.v1.GatewayService", {"ListModels": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GatewayServiceStub(channel)
    finally:
        await server.stop(None)
        await cache.aclose()


async def _who_is(stub: pb_grpc.GatewayServiceStub, key: str) -> str:
    reply = await stub.ListModels(
        pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
    )
    return reply.models[0].name


async def test_store_keys_fail_closed_while_the_store_is_down_and_config_keys_work() -> None:
    store = MemoryTenantStore()
    store.tenants["acme"] = TenantRecord("acme")
    store.keys["k1"] = KeyRecord(
        "k1", "acme", "lgw_store", hashlib.sha256(STORE_KEY.encode()).hexdigest(), 1.0
    )
    async with _server(store) as stub:
        store.down = True
        config_digest = hashlib.sha256(CONFIG_KEY.encode()).hexdigest()
        assert await _who_is(stub, CONFIG_KEY) == f"config-team/sha256:{config_digest[:8]}"
        for key in (STORE_KEY, "some-unknown-key"):
            with pytest.raises(aio.AioRpcError) as info:
                await _who_is(stub, key)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(info.value)[0] == "STORE_UNAVAILABLE"
            assert key not in (info.value.details() or "")
        store.down = False
        assert await _who_is(stub, STORE_KEY) == "acme/lgw_store"
