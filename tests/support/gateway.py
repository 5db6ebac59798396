"""Run the real gateway in-process on 127.0.0.1 for tests, with a ledger the test can read."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc
from llmgateway_server.app import Components, GatewayServer, build_components, open_storage
from llmgateway_server.clock import Clock
from llmgateway_server.config import (
    GatewayConfig,
    StorageConfig,
    parse_config,
    resolve_admin_keys,
    resolve_secrets,
)
from llmgateway_server.storage.base import UsageLedger, UsageRecord


@dataclass
class MemoryLedger:
    """Keeps usage records in a list so tests can assert on them, after writing each to
    ``inner`` (the real ledger) when there is one."""

    records: list[UsageRecord] = field(default_factory=list)
    inner: UsageLedger | None = None

    async def write(self, record: UsageRecord) -> None:
        """Write the record through, then keep it."""
        if self.inner is not None:
            await self.inner.write(record)
        self.records.append(record)

    async def aclose(self) -> None:
        """Close the real ledger."""
        if self.inner is not None:
            await self.inner.aclose()

    def by_request(self, request_id: str) -> list[UsageRecord]:
        """Records of one request id."""
        return [r for r in self.records if r.request_id == request_id]

    async def wait_for(self, request_id: str, timeout: float = 2.0) -> UsageRecord:  # noqa: ASYNC109
        """The one record of ``request_id``, waiting for a call that is still settling."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not self.by_request(request_id):
            if loop.time() > until:
                raise AssertionError(f"no usage record for {request_id} within {timeout}s")
            await asyncio.sleep(0.01)
        (record,) = self.by_request(request_id)
        return record


@dataclass
class RunningGateway:
    """A started gateway and a channel to it."""

    server: GatewayServer
    config: GatewayConfig
    channel: aio.Channel
    stub: pb_grpc.GatewayServiceStub
    ledger: MemoryLedger
    address: str

    def metadata(self, key: str | None) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying ``key`` as a bearer token."""
        return (("authorization", f"Bearer {key}"),) if key else ()


@asynccontextmanager
async def running_gateway(
    config_text: str,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    grace_s: float = 1.0,
) -> AsyncIterator[RunningGateway]:
    """Start the gateway for ``config_text`` on a free port; stop it afterwards."""
    config = parse_config(config_text)
    provider_keys, tenant_keys = resolve_secrets(config, environ=env or {})
    with tempfile.TemporaryDirectory(prefix="llmgateway-test-") as scratch:
        if "\nstorage:" not in config_text:  # never the working tree's data/ directory
            config = config.model_copy(
                update={"storage": StorageConfig(url=f"sqlite:///{scratch}/gateway.db")}
            )
        storage = await open_storage(config)
        ledger = MemoryLedger(inner=storage.ledger)
        components = build_components(
            config,
            provider_keys,
            tenant_keys,
            clock=clock,
            ledger=ledger,
            storage=storage,
            admin_keys=resolve_admin_keys(config, environ=env or {}),
        )
        async with _serving(config, components, ledger, grace_s) as running:
            yield running


@asynccontextmanager
async def _serving(
    config: GatewayConfig, components: Components, ledger: MemoryLedger, grace_s: float
) -> AsyncIterator[RunningGateway]:
    server = GatewayServer(config, components)
    port = await server.start("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    try:
        yield RunningGateway(
            server=server,
            config=config,
            channel=channel,
            stub=pb_grpc.GatewayServiceStub(channel),
            ledger=ledger,
            address=address,
        )
    finally:
        await channel.close()
        await server.stop(grace_s)


def user(text: str) -> pb.Message:
    """A user message."""
    return pb.Message(role=pb.ROLE_USER, content=text)


def system(text: str) -> pb.Message:
    """A system message."""
    return pb.Message(role=pb.ROLE_SYSTEM, content=text)


def assistant(text: str) -> pb.Message:
    """An assistant message."""
    return pb.Message(role=pb.ROLE_ASSISTANT, content=text)


def error_info(exc: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], list[object]]:
    """(reason, metadata, all detail messages) decoded from a rich status."""
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no status details on {exc.code()}: {exc.details()}"
    status = status_pb2.Status.FromString(raw)
    details: list[object] = []
    reason, metadata = "", {}
    for any_detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if any_detail.Is(cls.DESCRIPTOR):
                msg = cls()
                any_detail.Unpack(msg)
                details.append(msg)
                if isinstance(msg, error_details_pb2.ErrorInfo):
                    reason, metadata = msg.reason, dict(msg.metadata)
    return reason, metadata, details
