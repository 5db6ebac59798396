"""AdminService helpers for tests: a gateway config with an admin key, a config tenant and
two routes on the mock provider, and shorthands for the calls every admin test makes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from llmgateway.v1 import admin_pb2 as apb
from llmgateway.v1 import admin_pb2_grpc as apb_grpc
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.gateway import RunningGateway, running_gateway, user

ADMIN_KEY = "gw-admin-key-0123456789"
TEAM_KEY = "gw-team-config-key-0123"
ENV = {"TEST_ADMIN_KEY": ADMIN_KEY, "TEST_TEAM_KEY": TEAM_KEY}


def admin_config(sqlite_path: Path | None = None) -> str:
    """A mock-provider gateway with an admin key, a config tenant and two routes."""
    storage = f"storage:\n  url: sqlite:///{sqlite_path}\n" if sqlite_path else ""
    return f"""
server:
  default_deadline_s: 30
{storage}auth:
  admin:
    api_key_env: TEST_ADMIN_KEY
  tenants:
    - name: team-config
      api_key_env: TEST_TEAM_KEY
      routes: [echo]
      budgets: {{usd_per_day: "3"}}
providers:
  mock:
    type: mock
    first_token_latency_ms: 0
    chunk_latency_ms: 0
targets:
  echo:
    provider: mock
    model: mock-echo
    context_window: 8192
    price: {{input_per_million_usd: "1", output_per_million_usd: "2", version: "t1"}}
routes:
  echo:
    targets: [echo]
  other:
    targets: [echo]
"""


def admin_stub(gw: RunningGateway) -> apb_grpc.AdminServiceStub:
    """An AdminService stub on the gateway's channel."""
    return apb_grpc.AdminServiceStub(gw.channel)


def as_admin() -> tuple[tuple[str, str], ...]:
    """Metadata of an admin call."""
    return (("authorization", f"Bearer {ADMIN_KEY}"),)


async def complete(gw: RunningGateway, key: str, model: str = "echo") -> pb.CompleteResponse:
    """One Complete call on ``model`` with ``key``."""
    return await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=[user("hello")]),
        metadata=gw.metadata(key),
        timeout=10,
    )


@asynccontextmanager
async def admin_gateway(path: Path | None = None) -> AsyncIterator[RunningGateway]:
    """A running ``admin_config`` gateway (on the SQLite file ``path``, when given)."""
    async with running_gateway(admin_config(path), env=ENV) as gw:
        yield gw


async def create_tenant(gw: RunningGateway, name: str = "acme", **fields: object) -> apb.Tenant:
    """CreateTenant as the admin; the tenant created."""
    reply = await admin_stub(gw).CreateTenant(
        apb.CreateTenantRequest(tenant=apb.Tenant(name=name, **fields)),  # type: ignore[arg-type]
        metadata=as_admin(),
        timeout=10,
    )
    return reply.tenant


async def create_key(gw: RunningGateway, tenant: str = "acme") -> apb.CreateKeyResponse:
    """CreateKey as the admin, without budgets."""
    return await admin_stub(gw).CreateKey(
        apb.CreateKeyRequest(tenant=tenant), metadata=as_admin(), timeout=10
    )
