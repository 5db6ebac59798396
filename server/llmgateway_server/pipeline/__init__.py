"""The policy pipeline: pre-work in order, post-work in reverse, always.

Each policy's ``before`` runs in order before the router; each policy that started
gets its ``after`` in reverse order in ``finally``, so a failed or cancelled call still
settles its budget and writes its usage record (Starlette-middleware semantics with
bifrost-style hooks).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.pipeline.outcome import classify_outcome
from llmgateway_server.pipeline.usage import meter
from llmgateway_server.routing import Router
from llmgateway_server.types import CallOutcome, Completion, TextDelta, UpstreamResult

__all__ = ["CallState", "Pipeline", "Policy", "classify_outcome"]


class Policy(Protocol):
    """A request-body policy (ledger, budget, cost guard, context window, moderation)."""

    async def before(self, state: CallState) -> None:
        """Pre-work; raise a GatewayError to refuse the call."""
        ...

    async def after(self, state: CallState) -> None:
        """Post-work; runs even when the call failed or was cancelled."""
        ...


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
