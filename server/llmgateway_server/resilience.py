"""Retries, fallback and circuit breakers: the only place that decides what happens after
an upstream attempt fails.

``decide`` answers, for every failed attempt, one of: retry the same target after a delay,
move to the next target (or only to targets with a larger context window), or end the
call (the stream already reached the caller; the provider refused the content).
``wait_for_reopening`` answers whether a call that found every target benched should wait
for the first to reopen. ``CircuitBreaker.allow`` answers whether a target may be tried now.
The router carries these decisions out and decides nothing itself.

Decisions read the FailureClass an adapter assigned, never HTTP status codes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from llmgateway_server.clock import Clock
from llmgateway_server.config import CircuitBreakerConfig, RetryConfig
from llmgateway_server.types import FailureClass

log = logging.getLogger("llmgateway.resilience")

RETRYABLE = frozenset({FailureClass.RATE_LIMITED, FailureClass.TRANSIENT, FailureClass.TIMEOUT})
"""Failures worth another attempt on the same target."""

# Failures that say the target is unhealthy (not that this request is bad, nor that the
# gateway's own connection pool was full).
_BREAKER_FAILURES = RETRYABLE | {FailureClass.CREDENTIAL}

# Fixed time buckets in a breaker's failure-ratio window.
_WINDOW_BUCKETS = 10


def backoff_delay(attempt: int, retry: RetryConfig, clock: Clock) -> float:
    """Exponential backoff with full jitter before retry number ``attempt`` (1-based)."""
    ceiling = min(retry.max_delay_s, retry.base_delay_s * 2.0 ** (attempt - 1))
    return clock.random() * ceiling


def retry_delay(
    attempt: int,
    failure: FailureClass,
    retry_after_s: float | None,
    retry: RetryConfig,
    clock: Clock,
    remaining_s: float,
) -> float | None:
    """Seconds to wait before retrying the same target, or None to move on at once.

    None when the class is not retryable, attempts are used up, or the wait (the
    upstream's Retry-After, else jittered backoff) would pass the cap or the deadline.
    """
    if failure not in RETRYABLE or attempt >= retry.max_attempts:
        return None
    delay = retry_after_s if retry_after_s is not None else backoff_delay(attempt, retry, clock)
    if delay > retry.max_delay_s or delay >= remaining_s:
        return None
    return delay


class Step(enum.Enum):
    """What the router does after a failed attempt."""

    RETRY = "retry"
    """The same target again, after ``Decision.delay_s`` (if its breaker still allows)."""
    NEXT_TARGET = "next_target"
    """The next target of the chain."""
    LARGER_WINDOW = "larger_window"
    """The next target whose context window is larger than this one's; smaller ones are
    skipped (the prompt did not fit this one)."""
    FAIL_STREAM_STARTED = "fail_stream_started"
    """End the call: text already reached the caller, so another target cannot take over."""
    FAIL_CONTENT_BLOCKED = "fail_content_blocked"
    """End the call: the provider refused the content and the route does not fall back."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A step, and for RETRY how long to wait first."""

    step: Step
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt, as ``decide`` needs to see it."""

    failure_class: FailureClass
    attempt: int
    """1-based number of this attempt on this target."""
    retry_after_s: float | None = None
    first_token_timeout: bool = False
    """The stream sent nothing within the route's first-token limit."""
    stream_started: bool = False
    """A delta of this call already reached the caller."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry and fallback settings."""

    retry: RetryConfig
    fallback_on_content_policy: bool = False


_NEXT = Decision(Step.NEXT_TARGET)


def decide(failure: Failure, policy: RetryPolicy, clock: Clock, remaining_s: float) -> Decision:
    """What to do after ``failure``, with ``remaining_s`` of the caller's deadline left for
    useful work."""
    if failure.stream_started:
        return Decision(Step.FAIL_STREAM_STARTED)
    kind = failure.failure_class
    if kind is FailureClass.CONTEXT_TOO_LONG:
        return Decision(Step.LARGER_WINDOW)
    if kind is FailureClass.CONTENT_POLICY:
        return _NEXT if policy.fallback_on_content_policy else Decision(Step.FAIL_CONTENT_BLOCKED)
    if failure.first_token_timeout or kind is FailureClass.LOCAL_SATURATION:
        # A slow first token: another target is likelier to be quick than this one again.
        # A full local pool: this target's pool stays full for a while; another's may not.
        return _NEXT
    delay = retry_delay(
        failure.attempt, kind, failure.retry_after_s, policy.retry, clock, remaining_s
    )
    return _NEXT if delay is None else Decision(Step.RETRY, delay)


def wait_for_reopening(
    attempted: bool, reopen_in_s: Iterable[float], remaining_s: float
) -> float | None:
    """Seconds to wait before walking the chain again, or None to fail now.

    A call that found every target skipped without sending a single attempt waits for
    the first target benched by a Retry-After to reopen, when that is within its deadline:
    the upstream said when it will take calls again, and failing at once would only make
    the caller retry blind. (An open breaker is not waited for: its one trial call goes to
    whoever comes first, so waiters would mostly fail later instead of now.)
    """
    if attempted:
        return None
    earliest = min(reopen_in_s, default=None)
    if earliest is None or earliest >= remaining_s:
        return None
    return earliest


class BreakerState(enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _OutcomeWindow:
    """Successes and failures of the last ``window_s`` seconds, in fixed time buckets.

    Bucket ``i`` holds the verdicts of ``[i * width, (i + 1) * width)`` with ``width =
    window_s / _WINDOW_BUCKETS``, in a ring of ``_WINDOW_BUCKETS`` slots. A bucket leaves
    whole once its start is ``window_s`` old, so a verdict is forgotten between 9/10 of
    ``window_s`` and ``window_s`` after it. Memory is fixed and each call is O(1):
    running totals, and at most ``_WINDOW_BUCKETS`` slots to expire however long the gap.
    """

    __slots__ = ("_failed", "_head", "_succeeded", "_width", "failures", "successes")

    def __init__(self, window_s: float) -> None:
        self._width = window_s / _WINDOW_BUCKETS
        self._head = 0  # index of the newest bucket; slots older than the window are zero
        self._succeeded = [0] * _WINDOW_BUCKETS
        self._failed = [0] * _WINDOW_BUCKETS
        self.successes = 0
        self.failures = 0

    def add(self, now: float, *, failed: bool) -> None:
        """Count one verdict at time ``now``."""
        index = int(now // self._width)
        if index > self._head:
            if index - self._head >= _WINDOW_BUCKETS:
                self.clear()
            else:
                for expired in range(self._head + 1, index + 1):
                    slot = expired % _WINDOW_BUCKETS
                    self.successes -= self._succeeded[slot]
                    self.failures -= self._failed[slot]
                    self._succeeded[slot] = 0
                    self._failed[slot] = 0
            self._head = index
        # A clock that went backwards counts in the newest bucket.
        slot = self._head % _WINDOW_BUCKETS
        if failed:
            self._failed[slot] += 1
            self.failures += 1
        else:
            self._succeeded[slot] += 1
            self.successes += 1

    def clear(self) -> None:
        """Forget every verdict."""
        for slot in range(_WINDOW_BUCKETS):
            self._succeeded[slot] = 0
            self._failed[slot] = 0
        self.successes = 0
        self.failures = 0


@dataclass(slots=True)
class CircuitBreaker:
    """One target's breaker.

    Opens by either of two rules: ``failure_threshold`` consecutive failures, or (when
    ``failure_ratio`` is set) a failure ratio over a sliding window: over the last
    ``window_s`` seconds (in ten fixed buckets) at least ``min_calls`` calls reached a
    verdict and at least ``failure_ratio`` of them failed; the ratio is checked on every
    verdict, a success included. Only failures that say the target is unhealthy count
    toward either rule; a request at fault and a cancelled call count neither way.
    While open the target is skipped; after ``cooldown_s`` one trial call goes through
    (half-open): success closes the breaker and clears the window, failure opens it
    again. A 429 with Retry-After benches the target for that long for every caller.
    """

    config: CircuitBreakerConfig
    clock: Clock
    name: str = ""
    failures: int = 0
    open_until: float = 0.0
    benched_until: float = 0.0
    trial_in_flight: bool = False
    opened: bool = False
    # The failure-ratio window; None when the rule is off.
    _window: _OutcomeWindow | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.config.failure_ratio is not None:
            self._window = _OutcomeWindow(self.config.window_s)

    @property
    def state(self) -> BreakerState:
        """The current state."""
        if not self.opened:
            return BreakerState.CLOSED
        if self.clock.now() < self.open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a call may go to this target now; claims the half-open trial."""
        now = self.clock.now()
        if now < self.benched_until:
            return False
        if not self.opened:
            return True
        if now < self.open_until or self.trial_in_flight:
            return False
        self.trial_in_flight = True
        return True

    def retry_after(self) -> float | None:
        """Seconds until this target may be tried again, if it is skipped now."""
        now = self.clock.now()
        until = max(self.benched_until, self.open_until if self.opened else 0.0)
        return until - now if until > now else None

    def benched_for(self) -> float | None:
        """Seconds until a Retry-After bench ends, when that (and not an open breaker) is
        what keeps this target from being tried."""
        now = self.clock.now()
        if now >= self.benched_until or (self.opened and now < self.open_until):
            return None
        return self.benched_until - now

    def record_success(self) -> None:
        """A call succeeded: close (and clear the ratio window if it was open)."""
        if self.opened:
            log.info("circuit closed", extra={"target": self.name})
            if self._window is not None:
                self._window.clear()
        self.failures = 0
        self.opened = False
        self.trial_in_flight = False
        if self._window is not None:
            self._window.add(self.clock.now(), failed=False)
            self._check_ratio(self._window)

    def record_failure(self, failure: FailureClass, retry_after_s: float | None = None) -> None:
        """A call failed; count it when the failure says the target is unhealthy."""
        if failure is FailureClass.RATE_LIMITED and retry_after_s:
            self.benched_until = max(self.benched_until, self.clock.now() + retry_after_s)
            log.info("target benched", extra={"target": self.name, "seconds": retry_after_s})
        if failure not in _BREAKER_FAILURES:
            # The request was at fault, not the target; a half-open trial is over.
            self.trial_in_flight = False
            return
        self.failures += 1
        window = self._window
        if window is not None:
            window.add(self.clock.now(), failed=True)
        if self.trial_in_flight:
            self._open("half_open_trial")
        elif self.failures >= self.config.failure_threshold:
            self._open("consecutive_failures")
        elif window is not None:
            self._check_ratio(window)
        self.trial_in_flight = False

    def _check_ratio(self, window: _OutcomeWindow) -> None:
        """Open when the window holds ``min_calls`` verdicts and enough of them failed."""
        calls = window.successes + window.failures
        ratio = self.config.failure_ratio
        if ratio is None or calls < self.config.min_calls:
            return
        observed = window.failures / calls
        if observed >= ratio:
            self._open(
                "failure_ratio",
                failure_ratio=round(observed, 4),
                calls=calls,
                window_s=self.config.window_s,
            )

    def _open(self, rule: str, **fields: float) -> None:
        """Open for ``cooldown_s``; the log line says which rule opened it."""
        self.opened = True
        self.open_until = self.clock.now() + self.config.cooldown_s
        log.warning(
            "circuit opened",
            extra={
                "target": self.name,
                "rule": rule,
                "consecutive_failures": self.failures,
                "cooldown_s": self.config.cooldown_s,
                **fields,
            },
        )

    def release(self) -> None:
        """The call ended without a verdict (cancelled): give the trial back."""
        self.trial_in_flight = False
