"""How a call ended, for its usage record: success, rejected, failed, cancelled, deadline."""

from __future__ import annotations

import asyncio

from llmgateway_server.call import CallState
from llmgateway_server.errors import DeadlineExceeded, GatewayError, Rejection
from llmgateway_server.types import CallOutcome

# gRPC's deadline timer runs on its own clock and can cancel a call a little before the
# deadline by ours (up to 0.1 ms seen on uvloop); a cancellation this close to the
# deadline is the deadline.
_DEADLINE_SLACK_S = 0.005


def classify_outcome(state: CallState, exc: BaseException, now: float) -> tuple[CallOutcome, str]:
    """The ledger outcome and reason for a call that ended with ``exc``."""
    if isinstance(exc, GatewayError):
        return classify_error(exc)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        if now >= state.deadline - _DEADLINE_SLACK_S:
            return CallOutcome.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
        return CallOutcome.CANCELLED, "CANCELLED"
    return CallOutcome.FAILED, "INTERNAL"


def classify_error(error: GatewayError) -> tuple[CallOutcome, str]:
    """A gateway error's outcome: the error's class says whether it is a rejection."""
    if isinstance(error, Rejection):
        return CallOutcome.REJECTED, error.reason
    if isinstance(error, DeadlineExceeded):
        return CallOutcome.DEADLINE_EXCEEDED, error.reason
    return CallOutcome.FAILED, error.reason
