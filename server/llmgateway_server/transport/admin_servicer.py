"""The thin AdminService and UsageService servicers: proto -> domain, call, domain ->
proto, errors -> status. The interceptor has already checked who may call (an admin key
for AdminService; any key for UsageService) and put the caller in the request context."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from grpc import aio
from llmgateway.v1 import admin_pb2 as pb
from llmgateway.v1 import admin_pb2_grpc as pb_grpc
from llmgateway.v1 import usage_pb2, usage_pb2_grpc

from llmgateway_server.admin import (
    Admin,
    BudgetSpec,
    IssuedKey,
    RateSpec,
    TenantSpec,
    TenantView,
)
from llmgateway_server.errors import GatewayError
from llmgateway_server.storage.base import BudgetLimits, KeyRecord, RateLimits
from llmgateway_server.transport.context import current_caller
from llmgateway_server.transport.status import internal_status, to_status
from llmgateway_server.usage_report import UsageReports

log = logging.getLogger("llmgateway.servicer")

Context = aio.ServicerContext[Any, Any]
T = TypeVar("T")

ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
USAGE_SERVICE_NAME = usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name
_NANO = 1_000_000_000


async def _answer(context: Context, method: str, work: Awaitable[T]) -> T:
    """``work``'s result, or the call aborted with the status of its error."""
    try:
        return await work
    except GatewayError as exc:
        await context.abort_with_status(to_status(exc))
    except Exception:  # a bug: INTERNAL for the caller, the traceback for the logs
        log.exception("%s failed", method)
        await context.abort_with_status(internal_status())
    raise AssertionError("abort_with_status always raises")


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Implements llmgateway.v1.AdminService over ``admin.Admin``."""

    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: Context
    ) -> pb.CreateTenantResponse:
        """Add a store tenant."""
        view = await _answer(
            context, "CreateTenant", self._admin.create_tenant(_tenant_spec(request.tenant))
        )
        return pb.CreateTenantResponse(tenant=_tenant(view))

    async def GetTenant(
        self, request: pb.GetTenantRequest, context: Context
    ) -> pb.GetTenantResponse:
        """One tenant."""
        view = await _answer(context, "GetTenant", self._admin.get_tenant(request.name))
        return pb.GetTenantResponse(tenant=_tenant(view))

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: Context
    ) -> pb.ListTenantsResponse:
        """Every tenant."""
        views = await _answer(context, "ListTenants", self._admin.list_tenants())
        return pb.ListTenantsResponse(tenants=[_tenant(v) for v in views])

    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, context: Context
    ) -> pb.UpdateTenantResponse:
        """Replace the fields the mask names."""
        view = await _answer(
            context,
            "UpdateTenant",
            self._admin.update_tenant(
                _tenant_spec(request.tenant), list(request.update_mask.paths)
            ),
        )
        return pb.UpdateTenantResponse(tenant=_tenant(view))

    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: Context
    ) -> pb.CreateKeyResponse:
        """Issue a key, returned once."""
        budgets = _budget_spec(request.budgets) if request.HasField("budgets") else None
        issued: IssuedKey = await _answer(
            context, "CreateKey", self._admin.create_key(request.tenant, budgets)
        )
        return pb.CreateKeyResponse(key=_key(issued.record), api_key=issued.api_key)

    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        """A tenant's keys."""
        keys = await _answer(context, "ListKeys", self._admin.list_keys(request.tenant))
        return pb.ListKeysResponse(keys=[_key(k) for k in keys])

    async def RevokeKey(
        self, request: pb.RevokeKeyRequest, context: Context
    ) -> pb.RevokeKeyResponse:
        """Revoke a key."""
        key = await _answer(
            context, "RevokeKey", self._admin.revoke_key(request.tenant, request.key_id)
        )
        return pb.RevokeKeyResponse(key=_key(key))

    async def RotateKey(
        self, request: pb.RotateKeyRequest, context: Context
    ) -> pb.RotateKeyResponse:
        """A new key for an old one."""
        issued, revoked = await _answer(
            context, "RotateKey", self._admin.rotate_key(request.tenant, request.key_id)
        )
        return pb.RotateKeyResponse(
            key=_key(issued.record), api_key=issued.api_key, revoked_key=_key(revoked)
        )


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    """Implements llmgateway.v1.UsageService over ``usage_report.UsageReports``."""

    def __init__(self, reports: UsageReports) -> None:
        self._reports = reports

    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        """Usage over a time range, grouped."""
        lines = await _answer(
            context,
            "GetUsage",
            self._reports.usage(
                current_caller.get(),
                start_unix_s=_seconds(request.start_time)
                if request.HasField("start_time")
                else None,
                end_unix_s=_seconds(request.end_time) if request.HasField("end_time") else None,
                group_by=list(request.group_by),
                tenant=request.tenant,
            ),
        )
        return usage_pb2.GetUsageResponse(
            rows=[
                usage_pb2.UsageRow(
                    group=line.group,
                    call_count=line.calls,
                    input_token_count=line.input_tokens,
                    output_token_count=line.output_tokens,
                    cached_input_token_count=line.cached_input_tokens,
                    cost_nano_usd=line.cost_nano_usd,
                    cache_write_input_token_count=line.cache_write_tokens,
                    cache_write_1h_input_token_count=line.cache_write_1h_tokens,
                    reasoning_token_count=line.reasoning_tokens,
                    image_input_token_count=line.image_input_tokens,
                )
                for line in lines
            ]
        )


def add_admin_services(server: aio.Server, *, admin: Admin, usage: UsageReports) -> tuple[str, ...]:
    """Register AdminService and UsageService on ``server``; returns their full names
    (for reflection)."""
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(admin), server)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(usage), server)
    return ADMIN_SERVICE_NAME, USAGE_SERVICE_NAME


# -- conversion ---------------------------------------------------------------------------


def _tenant_spec(message: pb.Tenant) -> TenantSpec:
    return TenantSpec(
        name=message.name,
        routes=tuple(message.routes),
        budgets=_budget_spec(message.budgets) if message.HasField("budgets") else None,
        rate_limits=_rate_spec(message.rate_limits) if message.HasField("rate_limits") else None,
    )


def _budget_spec(message: pb.Budgets) -> BudgetSpec:
    return BudgetSpec(
        usd_per_day=message.usd_per_day if message.HasField("usd_per_day") else None,
        usd_per_month=message.usd_per_month if message.HasField("usd_per_month") else None,
        tokens_per_day=message.tokens_per_day if message.HasField("tokens_per_day") else None,
        tokens_per_month=message.tokens_per_month if message.HasField("tokens_per_month") else None,
    )


def _rate_spec(message: pb.RateLimits) -> RateSpec:
    return RateSpec(
        requests_per_minute=message.requests_per_minute
        if message.HasField("requests_per_minute")
        else None,
        tokens_per_minute=message.tokens_per_minute
        if message.HasField("tokens_per_minute")
        else None,
    )


def _usd(nano: int | None) -> str | None:
    """Exact decimal USD, without trailing zeros ("12.5", "0.000000001")."""
    if nano is None:
        return None
    whole, fraction = divmod(nano, _NANO)
    return f"{whole}.{fraction:09d}".rstrip("0").rstrip(".") if fraction else str(whole)


def _budgets(limits: BudgetLimits) -> pb.Budgets:
    return pb.Budgets(
        usd_per_day=_usd(limits.usd_per_day_nano),
        usd_per_month=_usd(limits.usd_per_month_nano),
        tokens_per_day=limits.tokens_per_day,
        tokens_per_month=limits.tokens_per_month,
    )


def _rate_limits(limits: RateLimits) -> pb.RateLimits:
    return pb.RateLimits(
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
    )


def _timestamp(unix_s: float | None) -> timestamp_pb2.Timestamp | None:
    if not unix_s:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(unix_s * 1e9))
    return stamp


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _tenant(view: TenantView) -> pb.Tenant:
    record = view.record
    return pb.Tenant(
        name=record.name,
        routes=list(record.routes),
        budgets=_budgets(record.budgets),
        rate_limits=_rate_limits(record.rate_limits),
        create_time=_timestamp(record.created_at_unix_s),
        config_defined=view.config_defined,
    )


def _key(record: KeyRecord) -> pb.Key:
    return pb.Key(
        id=record.id,
        tenant=record.tenant,
        prefix=record.prefix,
        budgets=_budgets(record.budgets),
        create_time=_timestamp(record.created_at_unix_s),
        last_use_time=_timestamp(record.last_used_at_unix_s),
        revoke_time=_timestamp(record.revoked_at_unix_s),
    )
