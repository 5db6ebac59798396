"""The router: walks a route's fallback chain, one attempt at a time.

It carries out what ``resilience`` decides (retry after a delay, the next target, end the
call, wait for a benched chain) and decides none of it. Per attempt it sets a timeout
carved out of the caller's deadline and the route's cap and, for streams, the route's
time-to-first-token limit; it records every attempt and tells the target's breaker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing

from llmgateway_server.call import CallState, Prompt
from llmgateway_server.clock import Clock
from llmgateway_server.errors import (
    ContentBlocked,
    ContextWindowExceeded,
    DeadlineExceeded,
    ProviderError,
    UpstreamUnavailable,
)
from llmgateway_server.metering import meter_partial, meter_result
from llmgateway_server.resilience import (
    CircuitBreaker,
    Decision,
    Failure,
    Step,
    decide,
    wait_for_reopening,
)
from llmgateway_server.routes import Target, Tier
from llmgateway_server.types import (
    Attempt,
    AttemptOutcome,
    FailureClass,
    Metered,
    StreamItem,
    UpstreamCall,
    UpstreamResult,
)

log = logging.getLogger("llmgateway.routing")

# Below this much time left, another attempt cannot do useful work.
_MIN_ATTEMPT_S = 0.005


class _FirstTokenTimeout(ProviderError):
    """No first token within the target's time-to-first-token limit: move on."""

    def __init__(self, target: Target, limit_s: float) -> None:
        super().__init__(
            FailureClass.TIMEOUT, f"{target.label}: no first token within {limit_s:g}s"
        )


class Router:
    """Sends a call to the first target of its route that answers."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def breaker(self, target: Target) -> CircuitBreaker:
        """The breaker of ``target`` (shared by every route that uses it), with the
        target's own settings."""
        breaker = self._breakers.get(target.id)
        if breaker is None:
            breaker = CircuitBreaker(target.circuit_breaker, self._clock, target.label)
            self._breakers[target.id] = breaker
        return breaker

    def _order(self, tier: Tier) -> list[Target]:
        if len(tier.targets) == 1:
            return list(tier.targets)
        if tier.balance == "least_in_flight":
            return sorted(tier.targets, key=lambda t: self._in_flight[t.id])
        # Weighted random order without replacement (Efraimidis-Spirakis keys).
        keyed = [(self._clock.random() ** (1.0 / w), i) for i, w in enumerate(tier.weights)]
        return [tier.targets[i] for _, i in sorted(keyed, reverse=True)]

    def _call(
        self, state: CallState, target: Target, prompt: Prompt, timeout_s: float
    ) -> UpstreamCall:
        request = state.request
        return UpstreamCall(
            upstream_model=target.upstream_model,
            messages=prompt.messages,
            max_tokens=state.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            timeout_s=timeout_s,
            tools=request.tools,
            tool_choice=request.tool_choice,
            response_format=request.response_format,
        )

    def _record(
        self,
        state: CallState,
        target: Target,
        outcome: AttemptOutcome,
        started: float,
        detail: str = "",
        metered: Metered | None = None,
    ) -> None:
        state.attempts.append(
            Attempt(
                provider=target.provider_name,
                upstream_model=target.upstream_model,
                outcome=outcome,
                latency_s=max(0.0, self._clock.now() - started),
                detail=detail,
                metered=metered,
            )
        )

    async def run(self, state: CallState) -> AsyncGenerator[StreamItem, None]:
        """Yield the deltas (streams only) and then the UpstreamResult of the target that
        served the call; ``state.served_by`` names it.

        Every choice after a failure (retry, next target, end the call) and whether to
        wait for a benched chain is ``resilience``'s; this method carries them out.
        """
        route = state.route
        clock = self._clock
        retry_hints: list[float] = []
        too_long_window = 0  # after CONTEXT_TOO_LONG, only larger windows are worth trying
        last_failure: ProviderError | None = None
        while True:
            attempted = False
            benched: list[float] = []
            for tier in route.tiers:
                for target in self._order(tier):
                    now = clock.now()
                    if target.context_window <= too_long_window:
                        self._record(state, target, AttemptOutcome.SKIPPED_CONTEXT_WINDOW, now)
                        continue
                    prompt = state.prompt_for(target)
                    if prompt is None:
                        self._record(state, target, AttemptOutcome.SKIPPED_CONTEXT_WINDOW, now)
                        continue
                    breaker = self.breaker(target)
                    if not breaker.allow():
                        hint = breaker.retry_after()
                        if hint is not None:
                            retry_hints.append(hint)
                        bench = breaker.benched_for()
                        if bench is not None:
                            benched.append(bench)
                        self._record(state, target, AttemptOutcome.CIRCUIT_OPEN, now)
                        continue
                    attempted = True
                    attempt = 0
                    while True:
                        attempt += 1
                        failure = None
                        async with aclosing(self._try(state, target, prompt, breaker)) as items:
                            async for item in items:
                                if isinstance(item, ProviderError):
                                    failure = item
                                else:
                                    yield item
                        if failure is None:
                            return  # served
                        last_failure = failure
                        if failure.retry_after_s is not None:
                            retry_hints.append(failure.retry_after_s)
                        decision = decide(
                            Failure(
                                failure.failure_class,
                                attempt,
                                retry_after_s=failure.retry_after_s,
                                first_token_timeout=isinstance(failure, _FirstTokenTimeout),
                                stream_started=state.first_token_at is not None,
                            ),
                            route.retry_policy,
                            clock,
                            state.deadline - clock.now() - _MIN_ATTEMPT_S,
                        )
                        self._log_failure(state, target, failure, attempt, decision)
                        step = decision.step
                        if step is Step.FAIL_STREAM_STARTED:
                            raise UpstreamUnavailable(
                                "the upstream failed after the stream started",
                                attempts=state.attempts,
                            )
                        if step is Step.FAIL_CONTENT_BLOCKED:
                            raise ContentBlocked(
                                "the provider refused the content",
                                metadata={"category": "provider"},
                            )
                        if step is Step.LARGER_WINDOW:
                            too_long_window = max(too_long_window, target.context_window)
                        if step is not Step.RETRY:
                            break
                        await clock.sleep(decision.delay_s)
                        if not breaker.allow():
                            break  # opened (or benched) by other calls meanwhile
            wait = wait_for_reopening(
                attempted, benched, state.deadline - clock.now() - _MIN_ATTEMPT_S
            )
            if wait is None:
                break
            log.info(
                "every target benched; waiting for the first to reopen",
                extra={"request_id": state.request_id, "seconds": round(wait, 3)},
            )
            await clock.sleep(wait)
        if last_failure is not None and last_failure.failure_class is FailureClass.CONTEXT_TOO_LONG:
            last_prompt = state.current_prompt
            assert last_prompt is not None
            raise ContextWindowExceeded(
                input_tokens=last_prompt.input_tokens,
                max_tokens=state.max_tokens,
                context_window=max(t.context_window for t in route.targets),
            )
        raise UpstreamUnavailable(
            f"every target of route {route.name!r} failed",
            attempts=state.attempts,
            retry_after_s=min(retry_hints) if retry_hints else None,
        )

    async def _try(
        self, state: CallState, target: Target, prompt: Prompt, breaker: CircuitBreaker
    ) -> AsyncGenerator[StreamItem | ProviderError, None]:
        """One attempt: its items, or its failure as the last item (recorded in the
        attempts and told to the breaker). A call that ends without a verdict (cancelled,
        deadline, the caller stopped reading) gives the breaker's trial back."""
        clock = self._clock
        started = clock.now()
        if state.deadline - started <= _MIN_ATTEMPT_S:
            breaker.release()
            raise DeadlineExceeded("the deadline passed before an upstream answered")
        state.current_target = target
        state.current_prompt = prompt
        state.current_call = None
        produced_from = len(state.output_parts)  # deltas before this attempt are not its
        self._in_flight[target.id] += 1
        verdict = False
        try:
            async with aclosing(self._attempt(state, target, prompt)) as items:
                async for item in items:
                    if isinstance(item, UpstreamResult):
                        verdict = True
                        breaker.record_success()
                        self._record(
                            state,
                            target,
                            AttemptOutcome.SUCCESS,
                            started,
                            metered=meter_result(target, prompt, item),
                        )
                        state.served_by = target
                    yield item
        except ProviderError as exc:
            verdict = True
            breaker.record_failure(exc.failure_class, exc.retry_after_s)
            self._record(
                state,
                target,
                AttemptOutcome.from_failure(exc.failure_class),
                started,
                exc.message,
                self._partial(state, target, prompt, produced_from),
            )
            yield exc
        finally:
            self._in_flight[target.id] -= 1
            if not verdict:
                breaker.release()
                if state.served_by is None:
                    self._record(
                        state,
                        target,
                        AttemptOutcome.CANCELLED,
                        started,
                        metered=self._partial(state, target, prompt, produced_from),
                    )

    @staticmethod
    def _partial(state: CallState, target: Target, prompt: Prompt, produced_from: int) -> Metered:
        """What a failed or cancelled attempt may be billed (metering decides)."""
        call = state.current_call
        produced = "".join(state.output_parts[produced_from:])
        accepted = call is not None and call.accepted
        return meter_partial(target, prompt, produced, accepted=accepted)

    @staticmethod
    def _log_failure(
        state: CallState, target: Target, exc: ProviderError, attempt: int, decision: Decision
    ) -> None:
        log.info(
            "attempt failed",
            extra={
                "request_id": state.request_id,
                "target": target.label,
                "failure_class": exc.failure_class.value,
                "attempt": attempt,
                "detail": exc.message,
                "next": decision.step.value,
            },
        )

    async def _attempt(
        self, state: CallState, target: Target, prompt: Prompt
    ) -> AsyncGenerator[StreamItem, None]:
        """One attempt, bounded by the route's timeout and the caller's deadline."""
        clock = self._clock
        loop = asyncio.get_running_loop()
        now = clock.now()
        attempt_deadline = min(state.deadline, now + state.route.timeout_s)
        call = self._call(state, target, prompt, attempt_deadline - now)
        state.current_call = call
        offset = loop.time() - now  # converts our clock's deadlines to the loop's
        if not state.streaming:
            try:
                async with asyncio.timeout_at(attempt_deadline + offset):
                    result = await target.provider.complete(call)
            except TimeoutError:
                raise self._timeout(state, target, attempt_deadline) from None
            yield result
            return
        ttft = state.route.first_token_timeout_s
        first_deadline = min(attempt_deadline, now + ttft) if ttft else attempt_deadline
        stream = target.provider.stream(call)
        try:
            try:
                async with asyncio.timeout_at(first_deadline + offset):
                    item = await anext(stream)
            except StopAsyncIteration:
                raise self._ended(target) from None
            except TimeoutError:
                if ttft and first_deadline < attempt_deadline:
                    raise _FirstTokenTimeout(target, ttft) from None
                raise self._timeout(state, target, attempt_deadline) from None
            yield item
            if isinstance(item, UpstreamResult):
                return
            # A timer per chunk would cost more than relaying the chunk. The whole call
            # runs under the caller's deadline (Gateway.drive), the exchange's own timeout
            # (the attempt's budget) cuts a stalled upstream, and the route's cap is
            # checked per chunk.
            async for item in stream:
                if clock.now() > attempt_deadline:
                    raise self._timeout(state, target, attempt_deadline)
                yield item
                if isinstance(item, UpstreamResult):
                    return
            raise self._ended(target)
        finally:
            await stream.aclose()

    @staticmethod
    def _ended(target: Target) -> ProviderError:
        return ProviderError(
            FailureClass.TRANSIENT, f"{target.label}: stream ended without a result"
        )

    def _timeout(self, state: CallState, target: Target, attempt_deadline: float) -> Exception:
        if attempt_deadline >= state.deadline:
            return DeadlineExceeded("the deadline passed while waiting for the upstream")
        return ProviderError(FailureClass.TIMEOUT, f"{target.label}: attempt timed out")
