"""AdminService against a real in-process gateway on its SQLite store: every RPC, its
errors, who may call it, and keys that start and stop working without a restart (on the
gateway that changed them at once, on a second gateway sharing the file within the
documented 2 s, asserted with a generous 5 s bound)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import admin_pb2 as apb
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.admin import (
    ADMIN_KEY,
    TEAM_KEY,
    admin_gateway,
    admin_stub,
    as_admin,
    complete,
    create_key,
    create_tenant,
)
from tests.support.gateway import RunningGateway, error_info

# A revoked key is refused by another replica within 2 s (key_cache.KEY_CACHE_TTL_S);
# asserted with room for a slow machine.
REVOCATION_BOUND_S = 5.0


async def _refused(gw: RunningGateway, key: str, model: str = "echo") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(gw, key, model)
    return info.value


async def _admin_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


def _violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    (bad,) = [d for d in error_info(err)[2] if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad.field_violations}


# -- tenants ------------------------------------------------------------------------------


async def test_a_created_tenant_is_got_and_listed_beside_the_config_tenants() -> None:
    async with admin_gateway() as gw:
        created = await create_tenant(
            gw,
            routes=["echo"],
            budgets=apb.Budgets(usd_per_day="12.50", tokens_per_month=1000),
            rate_limits=apb.RateLimits(requests_per_minute=60),
        )
        assert created.name == "acme"
        assert list(created.routes) == ["echo"]
        assert created.budgets.usd_per_day == "12.5"
        assert not created.budgets.HasField("usd_per_month")  # unlimited
        assert created.budgets.tokens_per_month == 1000
        assert created.rate_limits.requests_per_minute == 60
        assert not created.rate_limits.HasField("tokens_per_minute")
        assert abs(created.create_time.seconds - time.time()) < 60
        assert not created.config_defined

        got = await admin_stub(gw).GetTenant(
            apb.GetTenantRequest(name="acme"), metadata=as_admin(), timeout=10
        )
        assert got.tenant == created

        listed = await admin_stub(gw).ListTenants(
            apb.ListTenantsRequest(), metadata=as_admin(), timeout=10
        )
        assert [(t.name, t.config_defined) for t in listed.tenants] == [
            ("acme", False),
            ("team-config", True),
        ]
        config_tenant = listed.tenants[1]
        assert list(config_tenant.routes) == ["echo"]
        assert config_tenant.budgets.usd_per_day == "3"


async def test_a_tenant_without_routes_may_use_every_route() -> None:
    async with admin_gateway() as gw:
        assert list((await create_tenant(gw)).routes) == ["*"]
        key = (await create_key(gw)).api_key
        assert (await complete(gw, key, "other")).completion.content


@pytest.mark.parametrize("name", ["acme", "team-config"])
async def test_a_taken_tenant_name_is_already_exists(name: str) -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        err = await _admin_error(create_tenant(gw, name))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        reason, metadata, _ = error_info(err)
        assert (reason, metadata) == ("TENANT_ALREADY_EXISTS", {"tenant": name})


@pytest.mark.parametrize(
    "budgets",
    [
        {"usd_per_day": "-1"},
        {"usd_per_day": "ten"},
        {"usd_per_day": "1e3"},
        {"usd_per_day": "1.0000000001"},  # below a nano-dollar
        {"usd_per_day": " 1"},
        {"usd_per_day": ""},
        {"usd_per_day": "NaN"},
        {"usd_per_day": "1,5"},
    ],
)
async def test_a_negative_or_non_decimal_budget_is_invalid_argument(
    budgets: dict[str, str],
) -> None:
    async with admin_gateway() as gw:
        err = await _admin_error(create_tenant(gw, budgets=apb.Budgets(**budgets)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err)[0] == "INVALID_REQUEST"
        assert list(_violations(err)) == ["tenant.budgets.usd_per_day"]
        listed = await admin_stub(gw).ListTenants(
            apb.ListTenantsRequest(), metadata=as_admin(), timeout=10
        )
        assert [t.name for t in listed.tenants] == ["team-config"]  # nothing was created


async def test_every_invalid_field_is_named_at_once() -> None:
    async with admin_gateway() as gw:
        err = await _admin_error(
            create_tenant(
                gw,
                name="bad name!",
                routes=["echo", "no-such-route"],
                budgets=apb.Budgets(usd_per_month="-0.5", tokens_per_day=-5),
                rate_limits=apb.RateLimits(requests_per_minute=0),
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(_violations(err)) == {
            "tenant.name",
            "tenant.routes[1]",
            "tenant.budgets.usd_per_month",
            "tenant.budgets.tokens_per_day",
            "tenant.rate_limits.requests_per_minute",
        }
        assert "no-such-route" in _violations(err)["tenant.routes[1]"]


async def test_unknown_tenants_and_keys_are_not_found() -> None:
    async with admin_gateway() as gw:
        stub = admin_stub(gw)
        md = as_admin()
        for call in (
            stub.GetTenant(apb.GetTenantRequest(name="ghost"), metadata=md, timeout=10),
            stub.UpdateTenant(
                apb.UpdateTenantRequest(
                    tenant=apb.Tenant(name="ghost", routes=["echo"]),
                    update_mask=field_mask_pb2.FieldMask(paths=["routes"]),
                ),
                metadata=md,
                timeout=10,
            ),
            stub.CreateKey(apb.CreateKeyRequest(tenant="ghost"), metadata=md, timeout=10),
            stub.ListKeys(apb.ListKeysRequest(tenant="ghost"), metadata=md, timeout=10),
            stub.RevokeKey(
                apb.RevokeKeyRequest(tenant="ghost", key_id="0011223344556677"),
                metadata=md,
                timeout=10,
            ),
        ):
            err = await _admin_error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert error_info(err)[:2] == ("TENANT_NOT_FOUND", {"tenant": "ghost"})
        await create_tenant(gw)
        for call in (
            stub.RevokeKey(
                apb.RevokeKeyRequest(tenant="acme", key_id="0011223344556677"),
                metadata=md,
                timeout=10,
            ),
            stub.RotateKey(
                apb.RotateKeyRequest(tenant="acme", key_id="0011223344556677"),
                metadata=md,
                timeout=10,
            ),
        ):
            err = await _admin_error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert error_info(err)[:2] == (
                "KEY_NOT_FOUND",
                {"tenant": "acme", "key_id": "0011223344556677"},
            )


async def test_a_key_of_another_tenant_is_not_found_under_this_one() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw, "acme")
        await create_tenant(gw, "globex")
        key = (await create_key(gw, "globex")).key
        err = await _admin_error(
            admin_stub(gw).RevokeKey(
                apb.RevokeKeyRequest(tenant="acme", key_id=key.id),
                metadata=as_admin(),
                timeout=10,
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        listed = await admin_stub(gw).ListKeys(
            apb.ListKeysRequest(tenant="globex"), metadata=as_admin(), timeout=10
        )
        assert not listed.keys[0].HasField("revoke_time")


async def test_an_update_replaces_only_the_fields_its_mask_names() -> None:
    async with admin_gateway() as gw:
        await create_tenant(
            gw,
            routes=["echo"],
            budgets=apb.Budgets(usd_per_day="10", usd_per_month="100"),
            rate_limits=apb.RateLimits(requests_per_minute=60, tokens_per_minute=1000),
        )
        stub = admin_stub(gw)

        async def update(tenant: apb.Tenant, *paths: str) -> apb.Tenant:
            reply = await stub.UpdateTenant(
                apb.UpdateTenantRequest(
                    tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
                ),
                metadata=as_admin(),
                timeout=10,
            )
            got = await stub.GetTenant(
                apb.GetTenantRequest(name="acme"), metadata=as_admin(), timeout=10
            )
            assert got.tenant == reply.tenant  # what it answered is what it stored
            return reply.tenant

        # One field of budgets: the other keeps its value, routes are untouched.
        t = await update(
            apb.Tenant(name="acme", routes=["other"], budgets=apb.Budgets(usd_per_day="5")),
            "budgets.usd_per_day",
        )
        assert (t.budgets.usd_per_day, t.budgets.usd_per_month) == ("5", "100")
        assert list(t.routes) == ["echo"]
        # A masked field left unset becomes unlimited.
        t = await update(apb.Tenant(name="acme"), "rate_limits.tokens_per_minute")
        assert not t.rate_limits.HasField("tokens_per_minute")
        assert t.rate_limits.requests_per_minute == 60
        # An empty mask replaces what the tenant message sets.
        t = await update(apb.Tenant(name="acme", routes=["echo", "other"]))
        assert list(t.routes) == ["echo", "other"]
        assert (t.budgets.usd_per_day, t.budgets.usd_per_month) == ("5", "100")
        # A whole message in the mask is replaced whole.
        t = await update(apb.Tenant(name="acme", budgets=apb.Budgets(tokens_per_day=7)), "budgets")
        assert not t.budgets.HasField("usd_per_day")
        assert not t.budgets.HasField("usd_per_month")
        assert t.budgets.tokens_per_day == 7


@pytest.mark.parametrize(
    ("tenant", "paths", "field"),
    [
        (apb.Tenant(name="acme", routes=["echo"]), ["name"], "update_mask"),
        (apb.Tenant(name="acme", routes=["echo"]), ["budgets.nope"], "update_mask"),
        (apb.Tenant(name="acme"), [], "update_mask"),  # nothing to update
        (apb.Tenant(name="acme"), ["routes"], "tenant.routes"),  # no route at all
        (apb.Tenant(name="acme", routes=["nope"]), ["routes"], "tenant.routes[0]"),
        (
            apb.Tenant(name="acme", budgets=apb.Budgets(usd_per_day="-3")),
            ["budgets.usd_per_day"],
            "tenant.budgets.usd_per_day",
        ),
    ],
)
async def test_an_invalid_update_is_refused_and_changes_nothing(
    tenant: apb.Tenant, paths: list[str], field: str
) -> None:
    async with admin_gateway() as gw:
        before = await create_tenant(gw, routes=["echo"], budgets=apb.Budgets(usd_per_day="10"))
        err = await _admin_error(
            admin_stub(gw).UpdateTenant(
                apb.UpdateTenantRequest(
                    tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=as_admin(),
                timeout=10,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in _violations(err)
        got = await admin_stub(gw).GetTenant(
            apb.GetTenantRequest(name="acme"), metadata=as_admin(), timeout=10
        )
        assert got.tenant == before


async def test_a_config_tenant_cannot_be_changed_or_given_keys() -> None:
    async with admin_gateway() as gw:
        stub = admin_stub(gw)
        for call in (
            stub.UpdateTenant(
                apb.UpdateTenantRequest(
                    tenant=apb.Tenant(name="team-config", routes=["other"]),
                    update_mask=field_mask_pb2.FieldMask(paths=["routes"]),
                ),
                metadata=as_admin(),
                timeout=10,
            ),
            stub.CreateKey(
                apb.CreateKeyRequest(tenant="team-config"), metadata=as_admin(), timeout=10
            ),
        ):
            err = await _admin_error(call)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(err)[:2] == ("TENANT_DEFINED_IN_CONFIG", {"tenant": "team-config"})
        # Still as the file says.
        err = await _refused(gw, TEAM_KEY, "other")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# -- keys ---------------------------------------------------------------------------------


async def test_a_new_key_works_at_once_as_its_tenant_within_its_routes() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw, routes=["echo"])
        created = await create_key(gw)
        assert created.api_key.startswith("lgw_")
        assert created.api_key.startswith(created.key.prefix)
        assert len(created.key.prefix) == 12

        reply = await complete(gw, created.api_key)
        record = await gw.ledger.wait_for(reply.completion.request_id)
        assert (record.tenant, record.key_prefix, record.key_id) == (
            "acme",
            created.key.prefix,
            created.key.id,
        )
        err = await _refused(gw, created.api_key, "other")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err)[0] == "MODEL_NOT_ALLOWED"
        models = await gw.stub.ListModels(
            pb.ListModelsRequest(), metadata=gw.metadata(created.api_key), timeout=10
        )
        assert [m.name for m in models.models] == ["echo"]


async def test_the_store_keeps_a_digest_and_a_prefix_never_the_key(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    async with admin_gateway(db) as gw:
        await create_tenant(gw)
        created = await create_key(gw, "acme")
        listed = await admin_stub(gw).ListKeys(
            apb.ListKeysRequest(tenant="acme"), metadata=as_admin(), timeout=10
        )
        assert list(listed.keys) == [created.key]
        secret = created.api_key.encode()
        digest = hashlib.sha256(secret).hexdigest().encode()
        files = await asyncio.to_thread(
            lambda: b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        )
        assert digest in files
        assert secret not in files
        assert secret[len(created.key.prefix) :] not in files


async def test_keys_are_listed_oldest_first_with_their_own_budgets() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        first = await create_key(gw)
        second = await admin_stub(gw).CreateKey(
            apb.CreateKeyRequest(tenant="acme", budgets=apb.Budgets(usd_per_month="0.25")),
            metadata=as_admin(),
            timeout=10,
        )
        listed = await admin_stub(gw).ListKeys(
            apb.ListKeysRequest(tenant="acme"), metadata=as_admin(), timeout=10
        )
        assert [k.id for k in listed.keys] == [first.key.id, second.key.id]
        assert listed.keys[1].budgets.usd_per_month == "0.25"
        assert not listed.keys[0].budgets.HasField("usd_per_month")
        assert first.api_key != second.api_key


async def test_a_key_budget_that_is_not_decimal_is_invalid_argument() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        err = await _admin_error(
            admin_stub(gw).CreateKey(
                apb.CreateKeyRequest(tenant="acme", budgets=apb.Budgets(usd_per_day="-2")),
                metadata=as_admin(),
                timeout=10,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(_violations(err)) == ["budgets.usd_per_day"]


async def test_a_revoked_key_is_refused_at_once_by_the_gateway_that_revoked_it() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        created = await create_key(gw)
        await complete(gw, created.api_key)  # now cached as valid
        revoked = await admin_stub(gw).RevokeKey(
            apb.RevokeKeyRequest(tenant="acme", key_id=created.key.id),
            metadata=as_admin(),
            timeout=10,
        )
        assert revoked.key.HasField("revoke_time")
        err = await _refused(gw, created.api_key)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(err)[0] == "API_KEY_INVALID"
        # Revoking again changes nothing.
        again = await admin_stub(gw).RevokeKey(
            apb.RevokeKeyRequest(tenant="acme", key_id=created.key.id),
            metadata=as_admin(),
            timeout=10,
        )
        assert again.key.revoke_time == revoked.key.revoke_time


async def test_a_revoked_key_is_refused_by_a_second_gateway_within_the_bound(
    tmp_path: Path,
) -> None:
    db = tmp_path / "shared.db"
    async with admin_gateway(db) as first, admin_gateway(db) as second:
        await create_tenant(first)
        created = await create_key(first)
        # The second gateway never heard of the key: it finds it in the shared store...
        await complete(second, created.api_key)
        # ... and caches it as valid. The first revokes it.
        await admin_stub(first).RevokeKey(
            apb.RevokeKeyRequest(tenant="acme", key_id=created.key.id),
            metadata=as_admin(),
            timeout=10,
        )
        revoked_at = time.monotonic()
        assert (await _refused(first, created.api_key)).code() == grpc.StatusCode.UNAUTHENTICATED
        refusal: grpc.aio.AioRpcError | None = None
        while refusal is None:
            try:
                await complete(second, created.api_key)
            except grpc.aio.AioRpcError as exc:
                refusal = exc
            assert time.monotonic() - revoked_at < REVOCATION_BOUND_S, "still accepted"
        assert refusal.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_rotated_key_is_replaced_by_a_new_one_with_its_budgets() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        old = await admin_stub(gw).CreateKey(
            apb.CreateKeyRequest(tenant="acme", budgets=apb.Budgets(tokens_per_day=500)),
            metadata=as_admin(),
            timeout=10,
        )
        await complete(gw, old.api_key)
        rotated = await admin_stub(gw).RotateKey(
            apb.RotateKeyRequest(tenant="acme", key_id=old.key.id),
            metadata=as_admin(),
            timeout=10,
        )
        assert rotated.revoked_key.id == old.key.id
        assert rotated.revoked_key.HasField("revoke_time")
        assert rotated.key.id != old.key.id
        assert rotated.api_key != old.api_key
        assert rotated.key.budgets.tokens_per_day == 500
        assert (await _refused(gw, old.api_key)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await complete(gw, rotated.api_key)).completion.content
        # A revoked key cannot be rotated again.
        err = await _admin_error(
            admin_stub(gw).RotateKey(
                apb.RotateKeyRequest(tenant="acme", key_id=old.key.id),
                metadata=as_admin(),
                timeout=10,
            )
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err)[0] == "KEY_REVOKED"
        listed = await admin_stub(gw).ListKeys(
            apb.ListKeysRequest(tenant="acme"), metadata=as_admin(), timeout=10
        )
        assert [k.id for k in listed.keys] == [old.key.id, rotated.key.id]


async def test_a_tenant_change_applies_to_its_keys_at_once() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw, routes=["echo"])
        key = (await create_key(gw)).api_key
        assert (await _refused(gw, key, "other")).code() == grpc.StatusCode.PERMISSION_DENIED
        await admin_stub(gw).UpdateTenant(
            apb.UpdateTenantRequest(
                tenant=apb.Tenant(name="acme", routes=["other"]),
                update_mask=field_mask_pb2.FieldMask(paths=["routes"]),
            ),
            metadata=as_admin(),
            timeout=10,
        )
        assert (await complete(gw, key, "other")).completion.content
        assert (await _refused(gw, key, "echo")).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_last_use_is_recorded_and_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    async with admin_gateway(db) as gw:
        await create_tenant(gw)
        created = await create_key(gw)
        assert not created.key.HasField("last_use_time")
        used_after = time.time()
        await complete(gw, created.api_key)
    async with admin_gateway(db) as gw:
        listed = await admin_stub(gw).ListKeys(
            apb.ListKeysRequest(tenant="acme"), metadata=as_admin(), timeout=10
        )
        (key,) = listed.keys
        last_use = key.last_use_time.seconds + key.last_use_time.nanos / 1e9
        assert used_after - 1 <= last_use <= time.time()
        # Keys made in the store keep working after the restart.
        assert (await complete(gw, created.api_key)).completion.content


# -- who may call -------------------------------------------------------------------------


async def test_admin_calls_need_an_admin_key() -> None:
    async with admin_gateway() as gw:
        await create_tenant(gw)
        store_key = (await create_key(gw)).api_key
        stub = admin_stub(gw)
        for key, code, reason in (
            (None, grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID"),
            ("not-a-key", grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID"),
            (TEAM_KEY, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_KEY_REQUIRED"),
            (store_key, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_KEY_REQUIRED"),
        ):
            err = await _admin_error(
                stub.ListTenants(apb.ListTenantsRequest(), metadata=gw.metadata(key), timeout=10)
            )
            assert (err.code(), error_info(err)[0]) == (code, reason)
        # Refused before the body is read: an undecodable body changes nothing.
        call = gw.channel.unary_unary("/llmgateway.v1.AdminService/CreateTenant")
        err = await _admin_error(call(b"\xff\xff", metadata=gw.metadata(TEAM_KEY), timeout=10))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_admin_key_makes_no_gateway_calls() -> None:
    async with admin_gateway() as gw:
        err = await _refused(gw, ADMIN_KEY)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err)[0] == "TENANT_KEY_REQUIRED"
        assert not gw.ledger.records
