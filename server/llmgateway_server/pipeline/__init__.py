"""The policy pipeline: pre-work in order, post-work in reverse, always.

Each policy's ``before`` runs in order before the router; each policy that started
gets its ``after`` once the call has ended, however it ended (in ``finally``), so a
failed or cancelled call still settles its budget and writes its usage record. The
``after``s run concurrently (none depends on another's; a group-committing store then
takes them in one transaction), and all of them before the caller sees the final result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Protocol

from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.metering import total
from llmgateway_server.pipeline.outcome import classify_outcome
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
        self._settling: set[asyncio.Future[None]] = set()

    async def run(self, state: CallState) -> AsyncGenerator[TextDelta | Completion, None]:
        """Yield text deltas (streaming calls) and then exactly one Completion.

        Every started policy's ``after`` has run before the Completion is yielded: the
        usage record is durable, and the budget settled, before the caller can see the
        final result. A call that fails or is cancelled gets its ``after``s in
        ``finally``, before the error reaches the caller.
        """
        started: list[Policy] = []
        finished = False
        try:
            for policy in self._policies:
                started.append(policy)
                await policy.before(state)
            async with aclosing(self._router.run(state)) as items:
                async for item in items:
                    if isinstance(item, UpstreamResult):
                        completion = self._complete(state, item)
                        state.completion = completion
                        state.outcome = CallOutcome.SUCCESS
                        finished = True
                        await self._after(started, state)
                        yield completion
                    else:
                        if state.first_token_at is None:
                            state.first_token_at = self._clock.now()
                        state.output_parts.append(item.text)
                        yield item
        except BaseException as exc:  # recorded for the ledger, then re-raised unchanged
            if not finished:
                state.outcome, state.error_reason = classify_outcome(state, exc, self._clock.now())
            raise
        finally:
            if not finished:
                await self._after(started, state)

    async def _after(self, started: list[Policy], state: CallState) -> None:
        """Every started policy's ``after``, in reverse, shielded: a caller that goes
        away (or a deadline) while they run cancels the wait, not the work, so the
        budget is settled and the usage record written all the same."""
        task = asyncio.ensure_future(self._afters(started, state))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    @staticmethod
    async def _afters(started: list[Policy], state: CallState) -> None:
        # Concurrently: each reads the finished call's state and none depends on another's
        # (the budget settles the figures the ledger records), and a store with group
        # commit (SQLite's writer) then takes the settle and the usage record in one
        # transaction instead of one after the other. The first failure is raised once all
        # have run.
        if len(started) == 1:
            await started[0].after(state)
            return
        results = await asyncio.gather(
            *(policy.after(state) for policy in reversed(started)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def drain(self) -> None:
        """Until every call's ``after`` work has finished (at shutdown, before the stores
        close)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    def _complete(self, state: CallState, result: UpstreamResult) -> Completion:
        target = state.served_by
        assert target is not None, "the router names the target that served a result"
        metered = total(state.attempts)
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
