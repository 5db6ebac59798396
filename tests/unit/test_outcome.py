"""How a call that ended early is recorded in the ledger."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import cast

from llmgateway_server import errors
from llmgateway_server.call import CallState
from llmgateway_server.errors import CostLimitExceeded, GatewayError, UpstreamUnavailable
from llmgateway_server.pipeline import classify_outcome
from llmgateway_server.pipeline.outcome import classify_error
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


def _leaf_classes(base: type[GatewayError]) -> list[type[GatewayError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, base)]


def test_whether_an_error_is_a_rejection_is_a_property_of_its_class() -> None:
    for cls in _leaf_classes(errors.Rejection):
        assert classify_error(cls.__new__(cls))[0] is CallOutcome.REJECTED, cls
    deadline = errors.DeadlineExceeded("late")
    assert classify_error(deadline) == (CallOutcome.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    assert classify_error(errors.UpstreamUnavailable("down"))[0] is CallOutcome.FAILED


def test_every_error_class_is_raised_somewhere() -> None:
    # An error class nothing raises promises callers a status they never get.
    package = Path(errors.__file__).parent
    sources = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "errors.py")
    for cls in _leaf_classes(GatewayError):
        if cls in (GatewayError, errors.Rejection):
            continue
        assert re.search(rf"\b{cls.__name__}\(", sources), f"{cls.__name__} is never raised"
