"""The router: walks a route's fallback chain, one attempt at a time.

Per target: circuit breaker, retries with backoff + jitter + Retry-After (decided in
``resilience``), a timeout carved out of the caller's deadline, and for streams a
time-to-first-token limit. Streams fall back only before the first delta reached the
caller; after that an upstream failure ends the call with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from llmgateway_server.clock import Clock
from llmgateway_server.errors import (
    ContentBlocked,
    ContextWindowExceeded,
    DeadlineExceeded,
    ProviderError,
    UpstreamUnavailable,
)
from llmgateway_server.pipeline.state import CallState, Prompt
from llmgateway_server.resilience import CircuitBreaker, retry_delay
from llmgateway_server.routes import Route, Target, Tier
from llmgateway_server.types import (
    Attempt,
    AttemptOutcome,
    FailureClass,
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

    def breaker(self, target: Target, route: Route) -> CircuitBreaker:
        """The breaker of ``target`` (shared by every route that uses it)."""
        breaker = self._breakers.get(target.id)
        if breaker is None:
            breaker = CircuitBreaker(route.circuit_breaker, self._clock, target.label)
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
        )

    def _record(
        self,
        state: CallState,
        target: Target,
        outcome: AttemptOutcome,
        started: float,
        detail: str = "",
    ) -> None:
        state.attempts.append(
            Attempt(
                provider=target.provider_name,
                upstream_model=target.upstream_model,
                outcome=outcome,
                latency_s=max(0.0, self._clock.now() - started),
                detail=detail,
            )
        )

    async def run(self, state: CallState) -> AsyncIterator[StreamItem]:
        """Yield the deltas (streams only) and then the UpstreamResult of the target that
        served the call; ``state.served_by`` names it."""
        route = state.route
        clock = self._clock
        retry_hints: list[float] = []
        too_long_window = 0  # after CONTEXT_TOO_LONG, only larger windows are worth trying
        last_failure: ProviderError | None = None
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
                breaker = self.breaker(target, route)
                if not breaker.allow():
                    hint = breaker.retry_after()
                    if hint is not None:
                        retry_hints.append(hint)
                    self._record(state, target, AttemptOutcome.CIRCUIT_OPEN, now)
                    continue
                attempt = 0
                while True:
                    attempt += 1
                    started = clock.now()
                    remaining = state.deadline - started
                    if remaining <= _MIN_ATTEMPT_S:
                        breaker.release()
                        raise DeadlineExceeded("the deadline passed before an upstream answered")
                    state.current_target = target
                    state.current_prompt = prompt
                    self._in_flight[target.id] += 1
                    verdict = False
                    try:
                        async for item in self._attempt(state, target, prompt):
                            if isinstance(item, UpstreamResult):
                                verdict = True
                                breaker.record_success()
                                self._record(state, target, AttemptOutcome.SUCCESS, started)
                                state.served_by = target
                            yield item
                        return
                    except ProviderError as exc:
                        verdict = True
                        last_failure = exc
                        breaker.record_failure(exc.failure_class, exc.retry_after_s)
                        self._record(
                            state,
                            target,
                            AttemptOutcome.from_failure(exc.failure_class),
                            started,
                            exc.message,
                        )
                        if exc.retry_after_s is not None:
                            retry_hints.append(exc.retry_after_s)
                        log.info(
                            "attempt failed",
                            extra={
                                "request_id": state.request_id,
                                "target": target.label,
                                "failure_class": exc.failure_class.value,
                                "attempt": attempt,
                                "detail": exc.message,
                            },
                        )
                        if state.first_token_at is not None:
                            raise UpstreamUnavailable(
                                "the upstream failed after the stream started",
                                attempts=state.attempts,
                            ) from None
                        failure = exc.failure_class
                        if failure is FailureClass.CONTEXT_TOO_LONG:
                            too_long_window = max(too_long_window, target.context_window)
                            break
                        if (
                            failure is FailureClass.CONTENT_POLICY
                            and not route.fallback_on_content_policy
                        ):
                            raise ContentBlocked(
                                "the provider refused the content",
                                metadata={"category": "provider"},
                            ) from None
                        if isinstance(exc, _FirstTokenTimeout):
                            break
                        delay = retry_delay(
                            attempt,
                            failure,
                            exc.retry_after_s,
                            route.retry,
                            clock,
                            state.deadline - clock.now() - _MIN_ATTEMPT_S,
                        )
                        if delay is None:
                            break
                        await clock.sleep(delay)
                        if not breaker.allow():
                            break
                    finally:
                        self._in_flight[target.id] -= 1
                        if not verdict:
                            # Cancelled, deadline, or the caller stopped reading.
                            breaker.release()
                            if state.served_by is None:
                                self._record(state, target, AttemptOutcome.CANCELLED, started)
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

    async def _attempt(
        self, state: CallState, target: Target, prompt: Prompt
    ) -> AsyncIterator[StreamItem]:
        """One attempt, bounded by the route's timeout and the caller's deadline."""
        clock = self._clock
        loop = asyncio.get_running_loop()
        now = clock.now()
        attempt_deadline = min(state.deadline, now + state.route.timeout_s)
        call = self._call(state, target, prompt, attempt_deadline - now)
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
