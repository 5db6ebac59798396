"""Each error status of the contract decodes to its typed exception, with its fields."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import llmgateway_client
import pytest
from google.rpc import error_details_pb2
from llmgateway_client import AsyncClient
from scripted_gateway import (
    ScriptedGateway,
    aborting,
    bad_request,
    hang_forever,
    quota_failure,
    retry_info,
    rich_status,
)

C = grpc.StatusCode

# reason, code, ErrorInfo metadata, other details, class, expected attributes
CASES: list[tuple[str, grpc.StatusCode, dict[str, str], list[Any], type, dict[str, Any]]] = [
    ("API_KEY_INVALID", C.UNAUTHENTICATED, {}, [], llmgateway_client.AuthenticationError, {}),
    (
        "MODEL_NOT_ALLOWED",
        C.PERMISSION_DENIED,
        {"model": "gpt-4o", "tenant": "acme"},
        [],
        llmgateway_client.PermissionDenied,
        {"model": "gpt-4o", "tenant": "acme"},
    ),
    (
        "MODEL_NOT_FOUND",
        C.NOT_FOUND,
        {"model": "nope"},
        [],
        llmgateway_client.ModelNotFound,
        {"model": "nope"},
    ),
    (
        "INVALID_REQUEST",
        C.INVALID_ARGUMENT,
        {},
        [bad_request(("temperature", "must be in [0, 2]"), ("messages", "required"))],
        llmgateway_client.InvalidRequest,
        {
            "field_violations": [
                ("temperature", "must be in [0, 2]"),
                ("messages", "required"),
            ]
        },
    ),
    (
        "CONTEXT_WINDOW_EXCEEDED",
        C.INVALID_ARGUMENT,
        {"input_token_count": "9000", "max_tokens": "1024", "context_window_token_count": "8192"},
        [],
        llmgateway_client.ContextWindowExceeded,
        {"input_token_count": 9000, "max_tokens": 1024, "context_window_token_count": 8192},
    ),
    (
        "CONTENT_BLOCKED",
        C.INVALID_ARGUMENT,
        {"category": "violence"},
        [],
        llmgateway_client.ContentBlocked,
        {"category": "violence"},
    ),
    (
        "COST_LIMIT_EXCEEDED",
        C.RESOURCE_EXHAUSTED,
        {"limit_nano_usd": "1000000", "estimated_nano_usd": "2500000"},
        [quota_failure(("tenant:acme", "per-request cost limit"))],
        llmgateway_client.CostLimitExceeded,
        {
            "limit_nano_usd": 1_000_000,
            "estimated_nano_usd": 2_500_000,
            "quota_violations": [("tenant:acme", "per-request cost limit")],
            "retry_after": None,
        },
    ),
    (
        "BUDGET_EXCEEDED",
        C.RESOURCE_EXHAUSTED,
        {},
        [quota_failure(("tenant:acme", "monthly budget")), retry_info(3600)],
        llmgateway_client.BudgetExceeded,
        {"retry_after": 3600.0, "quota_violations": [("tenant:acme", "monthly budget")]},
    ),
    (
        "RATE_LIMITED",
        C.RESOURCE_EXHAUSTED,
        {},
        [quota_failure(("tenant:acme", "requests per minute")), retry_info(1.5)],
        llmgateway_client.RateLimited,
        {"retry_after": 1.5},
    ),
    ("REQUEST_TOO_LARGE", C.RESOURCE_EXHAUSTED, {}, [], llmgateway_client.RequestTooLarge, {}),
    (
        "UPSTREAM_UNAVAILABLE",
        C.UNAVAILABLE,
        {
            "attempt_count": "2",
            "attempt_2": "anthropic/claude-3-haiku:TIMEOUT",
            "attempt_1": "openai/gpt-4o-mini:TRANSIENT",
        },
        [retry_info(0.25)],
        llmgateway_client.Unavailable,
        {
            "retry_after": 0.25,
            "attempts": ["openai/gpt-4o-mini:TRANSIENT", "anthropic/claude-3-haiku:TIMEOUT"],
        },
    ),
    (
        "SHUTTING_DOWN",
        C.UNAVAILABLE,
        {},
        [retry_info(2)],
        llmgateway_client.Unavailable,
        {"retry_after": 2.0, "attempts": []},
    ),
    ("DEADLINE_EXCEEDED", C.DEADLINE_EXCEEDED, {}, [], llmgateway_client.DeadlineExceeded, {}),
    ("INTERNAL", C.INTERNAL, {}, [], llmgateway_client.InternalError, {}),
]


@pytest.mark.parametrize(
    ("reason", "code", "metadata", "details", "error_type", "expected"),
    CASES,
    ids=[case[0] for case in CASES],
)
async def test_error_reason_decodes_to_its_typed_exception(
    gateway: ScriptedGateway,
    client: AsyncClient,
    reason: str,
    code: grpc.StatusCode,
    metadata: dict[str, str],
    details: list[Any],
    error_type: type,
    expected: dict[str, Any],
) -> None:
    gateway.servicer.complete = aborting(
        rich_status(code, f"{reason.lower()} happened", reason, metadata, details)
    )

    with pytest.raises(llmgateway_client.GatewayError) as caught:
        await client.complete("default", "Hello")

    error = caught.value
    assert type(error) is error_type
    assert error.code is code
    assert error.reason == reason
    assert error.domain == "llmgateway"
    assert error.message == f"{reason.lower()} happened"
    assert error.metadata == metadata
    assert str(error) == f"{reason}: {reason.lower()} happened"
    for attribute, value in expected.items():
        assert getattr(error, attribute) == value, attribute


async def test_cancelled_status_without_reason_decodes_to_cancelled(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.complete = aborting(rich_status(C.CANCELLED, "caller went away"))

    with pytest.raises(llmgateway_client.Cancelled) as caught:
        await client.complete("default", "Hello")

    assert caught.value.code is C.CANCELLED
    assert caught.value.reason is None


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (C.RESOURCE_EXHAUSTED, llmgateway_client.ResourceExhausted),
        (C.INVALID_ARGUMENT, llmgateway_client.InvalidRequest),
        (C.UNAVAILABLE, llmgateway_client.Unavailable),
        (C.UNKNOWN, llmgateway_client.InternalError),
        (C.FAILED_PRECONDITION, llmgateway_client.GatewayError),
    ],
)
async def test_unknown_reason_falls_back_to_the_class_for_the_status_code(
    gateway: ScriptedGateway,
    client: AsyncClient,
    code: grpc.StatusCode,
    error_type: type,
) -> None:
    gateway.servicer.complete = aborting(
        rich_status(code, "something new", "A_REASON_FROM_THE_FUTURE", {"k": "v"})
    )

    with pytest.raises(llmgateway_client.GatewayError) as caught:
        await client.complete("default", "Hello")

    assert type(caught.value) is error_type
    assert caught.value.reason == "A_REASON_FROM_THE_FUTURE"
    assert caught.value.metadata == {"k": "v"}


async def test_reason_of_another_domain_does_not_pick_the_class(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    info = error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="example.com")
    gateway.servicer.complete = aborting(rich_status(C.INVALID_ARGUMENT, "no", details=[info]))

    with pytest.raises(llmgateway_client.GatewayError) as caught:
        await client.complete("default", "Hello")

    assert type(caught.value) is llmgateway_client.InvalidRequest
    assert caught.value.domain == "example.com"


async def test_status_without_details_decodes_by_code_with_no_reason(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    async def plain_abort(request: Any, context: Any) -> Any:
        await context.abort(C.PERMISSION_DENIED, "plain")

    gateway.servicer.complete = plain_abort

    with pytest.raises(llmgateway_client.PermissionDenied) as caught:
        await client.complete("default", "Hello")

    assert caught.value.reason is None
    assert caught.value.details == ()
    assert str(caught.value) == "PERMISSION_DENIED: plain"


async def test_grpc_message_size_limit_raises_request_too_large(
    gateway: ScriptedGateway,
) -> None:
    async with AsyncClient(gateway.target, max_message_bytes=1024) as small:
        with pytest.raises(llmgateway_client.RequestTooLarge) as caught:
            await small.complete("default", "x" * 4096)

    assert caught.value.code is C.RESOURCE_EXHAUSTED
    assert caught.value.reason is None


async def test_client_deadline_raises_deadline_exceeded(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    async def slow(request: Any, context: Any) -> Any:
        await hang_forever()

    gateway.servicer.complete = slow

    with pytest.raises(llmgateway_client.DeadlineExceeded) as caught:
        await client.complete("default", "Hello", timeout=0.05)

    assert caught.value.reason is None


async def test_no_gateway_listening_raises_unavailable(unused_target: str) -> None:
    async with AsyncClient(unused_target, retry_unavailable=False, timeout=5) as client:
        with pytest.raises(llmgateway_client.Unavailable) as caught:
            await client.count_tokens("default", "Hello")

    assert caught.value.reason is None
    assert caught.value.attempts == []


async def test_errors_keep_the_grpc_error_as_their_cause(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.list_models = aborting(rich_status(C.INTERNAL, "boom", "INTERNAL"))

    with pytest.raises(llmgateway_client.InternalError) as caught:
        await client.list_models()

    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_error_built_by_hand_takes_its_class_code() -> None:
    error = llmgateway_client.RateLimited("slow down")

    assert error.code is C.RESOURCE_EXHAUSTED
    assert error.reason is None
    assert error.retry_after is None
    assert str(error) == "RESOURCE_EXHAUSTED: slow down"


def test_exception_hierarchy_groups_errors_by_status_code() -> None:
    assert issubclass(llmgateway_client.ContextWindowExceeded, llmgateway_client.InvalidRequest)
    assert issubclass(llmgateway_client.ContentBlocked, llmgateway_client.InvalidRequest)
    for error_type in (
        llmgateway_client.CostLimitExceeded,
        llmgateway_client.BudgetExceeded,
        llmgateway_client.RateLimited,
        llmgateway_client.RequestTooLarge,
    ):
        assert issubclass(error_type, llmgateway_client.ResourceExhausted)
    for name in llmgateway_client.__all__:
        obj = getattr(llmgateway_client, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, llmgateway_client.GatewayError)


async def test_stream_error_decodes_like_unary_errors(
    gateway: ScriptedGateway, client: AsyncClient
) -> None:
    gateway.servicer.stream = _aborting_stream(
        rich_status(C.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED", details=[retry_info(2)])
    )

    with pytest.raises(llmgateway_client.RateLimited) as caught:
        async for _ in client.stream("default", "Hello"):
            pass

    assert caught.value.retry_after == 2.0


def _aborting_stream(status: grpc.Status) -> Any:
    async def handler(request: Any, context: Any) -> Any:
        await asyncio.sleep(0)
        await context.abort_with_status(status)
        yield  # pragma: no cover  (makes this an async generator)

    return handler
