"""How a call that ended early is recorded in the ledger."""

from __future__ import annotations

import asyncio
from typing import cast

from llmgateway_server.call import CallState
from llmgateway_server.errors import CostLimitExceeded, UpstreamUnavailable
from llmgateway_server.pipeline import classify_outcome
from llmgateway_server.routes import Route
from llmgateway_server.types import CallOutcome, ChatMessage, CompletionRequest, Role

DEADLINE = 100.0


def state() -> CallState:
    request = CompletionRequest(route="r", messages=(ChatMessage(Role.USER, "x"),))
    return CallState(
        request=request,
        tenant="t",
        route=cast(Route, None),  # classification reads only the deadline
        streaming=True,
        started_at=90.0,
        deadline=DEADLINE,
        max_tokens=10,
    )


def test_cancellation_at_or_just_before_the_deadline_is_the_deadline() -> None:
    # gRPC's own deadline timer may fire a fraction of a millisecond before ours.
    for now in (DEADLINE - 0.0001, DEADLINE, DEADLINE + 0.5):
        outcome, reason = classify_outcome(state(), asyncio.CancelledError(), now)
        assert (outcome, reason) == (CallOutcome.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")


def test_cancellation_well_before_the_deadline_is_the_caller_going_away() -> None:
    outcome, reason = classify_outcome(state(), asyncio.CancelledError(), DEADLINE - 0.1)
    assert (outcome, reason) == (CallOutcome.CANCELLED, "CANCELLED")


def test_gateway_errors_are_rejections_or_failures_by_reason() -> None:
    refused = CostLimitExceeded("too dear", metadata={}, quota_violations=[])
    assert classify_outcome(state(), refused, 95.0) == (
        CallOutcome.REJECTED,
        "COST_LIMIT_EXCEEDED",
    )
    down = UpstreamUnavailable("all down", attempts=[])
    assert classify_outcome(state(), down, 95.0) == (CallOutcome.FAILED, "UPSTREAM_UNAVAILABLE")
