"""Every row of the error table this gateway produces: status code, ErrorInfo reason,
the details a client needs, and the server still serving afterwards."""

from __future__ import annotations

import hashlib
import math
import re

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import RunningGateway, error_info, running_gateway, system, user
from tests.support.upstream import Error, FakeUpstream

TEAM_A_KEY = "gw-team-a-secret-key"
TEAM_B_KEY = "gw-team-b-secret-key"


def _auth_config(base_url: str) -> str:
    text = providers_config(base_url)
    a = hashlib.sha256(TEAM_A_KEY.encode()).hexdigest()
    b = hashlib.sha256(TEAM_B_KEY.encode()).hexdigest()
    return text.replace(
        "  anonymous_tenant: local",
        f"  tenants:\n    - name: team-a\n      api_key_sha256: [{a}]\n"
        f"    - name: team-b\n      api_key_sha256: [{b}]\n      routes: [echo]",
    )


async def _fails(
    gw: RunningGateway, request: pb.CompleteRequest, key: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gw.stub.Complete(request, metadata=gw.metadata(key), timeout=10)
    return info.value


async def _still_serves(gw: RunningGateway, key: str | None = None) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model="echo", messages=[user("still there?")]),
        metadata=gw.metadata(key),
        timeout=10,
    )
    assert reply.completion.content


async def test_missing_api_key_is_unauthenticated(upstream: FakeUpstream) -> None:
    async with running_gateway(_auth_config(upstream.base_url), env=ENV) as gw:
        err = await _fails(gw, pb.CompleteRequest(model="echo", messages=[user("x")]))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(err)[0] == "API_KEY_INVALID"
        await _still_serves(gw, TEAM_A_KEY)


async def test_unknown_api_key_is_unauthenticated_on_streams_too(upstream: FakeUpstream) -> None:
    async with running_gateway(_auth_config(upstream.base_url), env=ENV) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(model="echo", messages=[user("x")]),
            metadata=gw.metadata("not-a-key"),
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(info.value)[0] == "API_KEY_INVALID"


async def test_route_not_allowed_for_tenant_is_permission_denied(upstream: FakeUpstream) -> None:
    async with running_gateway(_auth_config(upstream.base_url), env=ENV) as gw:
        err = await _fails(gw, pb.CompleteRequest(model="gpt", messages=[user("x")]), TEAM_B_KEY)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        reason, metadata, _ = error_info(err)
        assert reason == "MODEL_NOT_ALLOWED"
        assert metadata == {"model": "gpt", "tenant": "team-b"}
        assert upstream.request_count() == 0
        await _still_serves(gw, TEAM_B_KEY)
        models = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=gw.metadata(TEAM_B_KEY))
        assert [m.name for m in models.models] == ["echo"]


async def test_tenant_from_key_is_written_to_the_usage_record(upstream: FakeUpstream) -> None:
    async with running_gateway(_auth_config(upstream.base_url), env=ENV) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(model="echo", messages=[user("x")], tags={"team": "search"}),
            metadata=gw.metadata(TEAM_A_KEY),
            timeout=10,
        )
        (record,) = gw.ledger.by_request(reply.completion.request_id)
        assert record.tenant == "team-a"
        assert record.tags == {"team": "search"}
        assert record.outcome == "success"


async def test_unknown_route_is_not_found(upstream: FakeUpstream) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        err = await _fails(
            gw, pb.CompleteRequest(model="gpt-9", messages=[user("x")], request_id="r-404")
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        reason, metadata, _ = error_info(err)
        assert (reason, metadata) == ("MODEL_NOT_FOUND", {"model": "gpt-9"})
        (record,) = gw.ledger.by_request("r-404")
        assert (record.outcome, record.error_reason) == ("rejected", "MODEL_NOT_FOUND")
        await _still_serves(gw)


def _violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    _, _, details = error_info(err)
    (bad,) = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad.field_violations}


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [pb.Message(role=pb.ROLE_UNSPECIFIED, content="x")]}, "messages[0].role"),
        ({"messages": [pb.Message(role=7, content="x")]}, "messages[0].role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000_000}, "max_tokens"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tags": {"bad key!": "v"}}, "tags[bad key!]"),
        ({"request_id": "has space"}, "request_id"),
        ({"model": ""}, "model"),
        ({"messages": [system("only a system prompt")]}, "messages"),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violations(
    upstream: FakeUpstream, request_kwargs: dict[str, object], field: str
) -> None:
    kwargs: dict[str, object] = {"model": "gpt", "messages": [user("hi")], **request_kwargs}
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        err = await _fails(gw, pb.CompleteRequest(**kwargs))  # type: ignore[arg-type]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err)[0] == "INVALID_REQUEST"
        assert field in _violations(err)
        assert upstream.request_count() == 0
        await _still_serves(gw)


async def test_a_refused_request_is_recorded_with_validated_fields_only(
    upstream: FakeUpstream,
) -> None:
    # What the caller sent unchecked (a 100 KB model name, 100 tags of 10 KB, a request id
    # with a newline) never reaches the usage record: it keeps what validated.
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        request = pb.CompleteRequest(
            model="m" * 100_000,
            messages=[user("x")],
            tags={f"k{i}": "v" * 10_000 for i in range(100)},
            request_id="r-1\nforged log line",
        )
        err = await _fails(gw, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert {"model", "tags", "request_id"} <= set(_violations(err))
        (record,) = gw.ledger.records
        assert (record.outcome, record.error_reason) == ("rejected", "INVALID_REQUEST")
        assert record.route == ""
        assert record.tags == {}
        assert re.fullmatch(r"[0-9a-f]{32}", record.request_id)  # a fresh id stands in
        assert len(repr(record)) < 2_000
        # Valid fields of an otherwise invalid request are kept.
        err = await _fails(
            gw,
            pb.CompleteRequest(
                model="echo",
                messages=[user("x")],
                max_tokens=0,
                tags={"team": "search", "bad key!": "x"},
                request_id="r-kept",
            ),
        )
        (record,) = gw.ledger.by_request("r-kept")
        assert (record.route, record.tags) == ("echo", {"team": "search"})


async def test_max_tokens_over_the_route_limit_is_invalid_argument(upstream: FakeUpstream) -> None:
    text = providers_config(upstream.base_url).replace(
        "  echo:\n    targets: [echo]", "  echo:\n    targets: [echo]\n    max_tokens_limit: 100"
    )
    async with running_gateway(text, env=ENV) as gw:
        err = await _fails(
            gw, pb.CompleteRequest(model="echo", messages=[user("x")], max_tokens=101)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens" in _violations(err)


async def test_twenty_megabyte_request_is_resource_exhausted_and_server_survives(
    upstream: FakeUpstream,
) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        huge = "x" * (20 * 1024 * 1024)
        err = await _fails(gw, pb.CompleteRequest(model="gpt", messages=[user(huge)]))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert upstream.request_count() == 0
        await _still_serves(gw)


async def test_every_target_failing_is_unavailable_with_retry_info_and_attempts(
    upstream: FakeUpstream,
) -> None:
    upstream.set_default("gpt-4o-mini", Error(503, retry_after="7"))
    text = providers_config(upstream.base_url) + "defaults:\n  retry: {max_attempts: 1}\n"
    async with running_gateway(text, env=ENV) as gw:
        err = await _fails(
            gw, pb.CompleteRequest(model="gpt", messages=[user("x")], request_id="r-down")
        )
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        reason, metadata, details = error_info(err)
        assert reason == "UPSTREAM_UNAVAILABLE"
        assert metadata["attempt_count"] == "1"
        assert metadata["attempt_1"] == "openai/gpt-4o-mini:TRANSIENT"
        (retry,) = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.seconds == 7
        (record,) = gw.ledger.by_request("r-down")
        assert (record.outcome, record.error_reason) == ("failed", "UPSTREAM_UNAVAILABLE")
        await _still_serves(gw)


async def test_upstream_credential_failure_never_leaks_the_key(upstream: FakeUpstream) -> None:
    upstream.set_default(
        "gpt-4o-mini", Error(401, message=f"Incorrect API key provided: {ENV['TEST_OPENAI_KEY']}")
    )
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        err = await _fails(gw, pb.CompleteRequest(model="gpt", messages=[user("x")]))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err)[1]["attempt_1"] == "openai/gpt-4o-mini:CREDENTIAL"
        assert ENV["TEST_OPENAI_KEY"] not in str(err)
        assert upstream.request_count("gpt-4o-mini") == 1  # a credential failure is not retried


async def test_count_tokens_and_list_models_describe_routes(upstream: FakeUpstream) -> None:
    async with running_gateway(providers_config(upstream.base_url), env=ENV) as gw:
        count = await gw.stub.CountTokens(
            pb.CountTokensRequest(model="claude", messages=[user("hello world")]), timeout=5
        )
        assert count.input_token_count > 0
        assert count.context_window_token_count == 200000
        models = await gw.stub.ListModels(pb.ListModelsRequest(), timeout=5)
        by_name = {m.name: m for m in models.models}
        assert sorted(by_name) == ["claude", "echo", "gpt", "llama"]
        gpt = by_name["gpt"].targets[0]
        assert gpt.price.input_nano_usd_per_million_tokens == 150_000_000
        assert gpt.price.version == "openai-test"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.CountTokens(
                pb.CountTokensRequest(model="nope", messages=[user("x")]), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
