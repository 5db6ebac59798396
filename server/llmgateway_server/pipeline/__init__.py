"""The policy pipeline: pre-work in order, post-work in reverse, always.

Each policy's ``before`` runs in order before the router; each policy that started
gets its ``after`` once the call has ended, however it ended (in ``finally``), so a
failed or cancelled call still settles its budget and writes its usage record. The
``after``s run concurrently (none depends on another's; a group-committing store then
takes them in one transaction), and all of them before the caller sees the final result.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Protocol

from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.guardrails.output import OutputGuard
from llmgateway_server.metering import total
from llmgateway_server.pipeline.outcome import classify_outcome
from llmgateway_server.routing import Router
from llmgateway_server.types import (
    CallOutcome,
    Completion,
    FinishReason,
    OutputDelta,
    RefusalDelta,
    TextDelta,
    UpstreamResult,
)

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

    async def run(self, state: CallState) -> AsyncGenerator[OutputDelta | Completion, None]:
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
            guard = state.output_guard
            released: list[str] = []  # what the guard let through, when there is one
            async with aclosing(self._router.run(state)) as items:
                async for item in items:
                    if isinstance(item, UpstreamResult):
                        if guard is not None:
                            item, tail = await self._guard_result(state, guard, item, released)
                            if tail:
                                yield self._delta(state, tail)
                        completion = self._complete(state, item)
                        state.completion = completion
                        state.outcome = CallOutcome.SUCCESS
                        finished = True
                        await self._after(started, state)
                        yield completion
                        continue
                    if type(item) is not TextDelta:
                        # Tool-call and refusal fragments are relayed as they come (the
                        # guardrails read text); the bill of a cut stream counts them.
                        state.output_parts.append(_produced(item))
                        yield self._delta(state, "", item)
                        continue
                    state.output_parts.append(item.text)
                    if guard is None:
                        yield self._delta(state, item.text, item)
                        continue
                    out = await guard.feed(item.text)
                    state.guardrail_findings.extend(
                        (label, action, "output") for label, action in out.findings
                    )
                    if out.text:
                        released.append(out.text)
                        yield self._delta(state, out.text)
                    if guard.blocked:
                        break  # closing the router's stream cancels the upstream request
            if guard is not None and guard.blocked and not finished:
                # Blocked mid-stream: the attempt was recorded as cut (billed for what the
                # upstream produced); the caller gets the text before the entity.
                completion = self._filtered(state, "".join(released))
                state.completion = completion
                state.outcome = CallOutcome.SUCCESS
                finished = True
                await self._after(started, state)
                yield completion
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
        # Policies whose after does nothing say so (``has_after = False``).
        started = [p for p in started if getattr(p, "has_after", True)]
        if not started:
            return
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

    def _delta(self, state: CallState, text: str, item: OutputDelta | None = None) -> OutputDelta:
        if state.first_token_at is None:
            state.first_token_at = self._clock.now()
        return item if item is not None else TextDelta(text)

    @staticmethod
    async def _guard_result(
        state: CallState, guard: OutputGuard, result: UpstreamResult, released: list[str]
    ) -> tuple[UpstreamResult, str]:
        """The result as the guard lets it through, and the stream's held-back tail
        (unary: the whole text goes through at once)."""
        if state.streaming:
            out = await guard.finish()
            content = "".join(released) + out.text
        else:
            out = await guard.complete(result.content)
            content = out.text
        state.guardrail_findings.extend((label, action, "output") for label, action in out.findings)
        finish = FinishReason.CONTENT_FILTER if guard.blocked else result.finish_reason
        filtered = dataclasses.replace(result, content=content, finish_reason=finish)
        return filtered, out.text if state.streaming else ""

    def _filtered(self, state: CallState, content: str) -> Completion:
        """The result of a stream a guardrail blocked before the upstream finished: the
        attempt in progress served it (billed as cut), up to the blocked entity."""
        target = state.current_target
        assert target is not None, "a stream that produced text had a target"
        state.served_by = target
        call = state.current_call
        model = call.upstream_model if call is not None else target.upstream_model
        return self._complete(
            state, UpstreamResult(content, FinishReason.CONTENT_FILTER, None, model)
        )

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
            tool_calls=result.tool_calls,
            refusal=result.refusal,
        )


def _produced(item: OutputDelta) -> str:
    """What a tool-call or refusal fragment adds to the output, for a cut stream's bill."""
    if isinstance(item, RefusalDelta):
        return item.text
    assert not isinstance(item, TextDelta)
    return item.name + item.arguments
