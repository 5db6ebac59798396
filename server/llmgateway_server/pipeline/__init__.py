"""The policy pipeline: pre-work in order, post-work in reverse, always.

Each policy's ``before`` runs in order before the router; each policy that started
gets its ``after`` in reverse order in ``finally``, so a failed or cancelled call still
settles its budget and writes its usage record (Starlette-middleware semantics with
bifrost-style hooks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from llmgateway_server.clock import Clock
from llmgateway_server.errors import GatewayError
from llmgateway_server.pipeline.state import CallState
from llmgateway_server.pipeline.usage import meter
from llmgateway_server.routing import Router
from llmgateway_server.types import CallOutcome, Completion, TextDelta, UpstreamResult

__all__ = ["CallState", "Pipeline", "Policy"]

_REJECTIONS = frozenset(
    {
        "INVALID_REQUEST",
        "CONTEXT_WINDOW_EXCEEDED",
        "CONTENT_BLOCKED",
        "COST_LIMIT_EXCEEDED",
        "BUDGET_EXCEEDED",
        "RATE_LIMITED",
        "MODEL_NOT_FOUND",
        "MODEL_NOT_ALLOWED",
        "API_KEY_INVALID",
    }
)

# gRPC's deadline timer runs on its own clock and can cancel a call a little before the
# deadline by ours (up to 0.1 ms seen on uvloop); a cancellation this close to the
# deadline is the deadline.
_DEADLINE_SLACK_S = 0.005


class Policy(Protocol):
    """A request-body policy (ledger, budget, cost guard, context window, moderation)."""

    async def before(self, state: CallState) -> None:
        """Pre-work; raise a GatewayError to refuse the call."""
        ...

    async def after(self, state: CallState) -> None:
        """Post-work; runs even when the call failed or was cancelled."""
        ...


def classify_outcome(state: CallState, exc: BaseException, now: float) -> tuple[CallOutcome, str]:
    """The ledger outcome and reason for a call that ended with ``exc``."""
    if isinstance(exc, GatewayError):
        if exc.reason in _REJECTIONS:
            return CallOutcome.REJECTED, exc.reason
        if exc.reason == "DEADLINE_EXCEEDED":
            return CallOutcome.DEADLINE_EXCEEDED, exc.reason
        return CallOutcome.FAILED, exc.reason
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        if now >= state.deadline - _DEADLINE_SLACK_S:
            return CallOutcome.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
        return CallOutcome.CANCELLED, "CANCELLED"
    return CallOutcome.FAILED, "INTERNAL"


class Pipeline:
    """Runs the policies around the router for one call."""

    def __init__(self, policies: Sequence[Policy], router: Router, clock: Clock) -> None:
        self._policies = tuple(policies)
        self._router = router
        self._clock = clock

    async def run(self, state: CallState) -> AsyncGenerator[TextDelta | Completion, None]:
        """Yield text deltas (streaming calls) and then exactly one Completion."""
        started: list[Policy] = []
        try:
            for policy in self._policies:
                started.append(policy)
                await policy.before(state)
            async for item in self._router.run(state):
                if isinstance(item, UpstreamResult):
                    completion = self._complete(state, item)
                    state.completion = completion
                    state.outcome = CallOutcome.SUCCESS
                    yield completion
                else:
                    if state.first_token_at is None:
                        state.first_token_at = self._clock.now()
                    state.output_parts.append(item.text)
                    yield item
        except BaseException as exc:  # recorded for the ledger, then re-raised unchanged
            state.outcome, state.error_reason = classify_outcome(state, exc, self._clock.now())
            raise
        finally:
            for policy in reversed(started):
                await policy.after(state)

    def _complete(self, state: CallState, result: UpstreamResult) -> Completion:
        target = state.served_by
        assert target is not None, "the router names the target that served a result"
        metered = meter(state, result)
        state.metered = metered
        prompt = state.current_prompt
        return Completion(
            content=result.content,
            finish_reason=result.finish_reason,
            usage=metered.usage,
            cost=metered.cost,
            provider=target.provider_name,
            upstream_model=result.upstream_model,
            attempts=tuple(state.attempts),
            request_id=state.request_id,
            trimmed_message_count=prompt.trimmed if prompt else 0,
        )
