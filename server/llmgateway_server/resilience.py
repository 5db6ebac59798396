"""Retries and circuit breakers: the only place that decides whether to try again.

Decisions read the FailureClass an adapter assigned, never HTTP status codes.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from llmgateway_server.clock import Clock
from llmgateway_server.config import CircuitBreakerConfig, RetryConfig
from llmgateway_server.types import FailureClass

log = logging.getLogger("llmgateway.resilience")

RETRYABLE = frozenset({FailureClass.RATE_LIMITED, FailureClass.TRANSIENT, FailureClass.TIMEOUT})
"""Failures worth another attempt on the same target."""

# Failures that say the target is unhealthy (not that this request is bad).
_BREAKER_FAILURES = RETRYABLE | {FailureClass.CREDENTIAL}


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


class BreakerState(enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """One target's breaker.

    Opens after ``failure_threshold`` consecutive failures; while open the target is
    skipped; after ``cooldown_s`` one trial call goes through (half-open): success
    closes the breaker, failure opens it again. A 429 with Retry-After benches the
    target for that long for every caller.
    """

    config: CircuitBreakerConfig
    clock: Clock
    name: str = ""
    failures: int = 0
    open_until: float = 0.0
    benched_until: float = 0.0
    trial_in_flight: bool = False
    opened: bool = False

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

    def record_success(self) -> None:
        """A call succeeded: close."""
        if self.opened:
            log.info("circuit closed", extra={"target": self.name})
        self.failures = 0
        self.opened = False
        self.trial_in_flight = False

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
        if self.trial_in_flight or self.failures >= self.config.failure_threshold:
            self.opened = True
            self.open_until = self.clock.now() + self.config.cooldown_s
            log.warning(
                "circuit opened",
                extra={
                    "target": self.name,
                    "consecutive_failures": self.failures,
                    "cooldown_s": self.config.cooldown_s,
                },
            )
        self.trial_in_flight = False

    def release(self) -> None:
        """The call ended without a verdict (cancelled): give the trial back."""
        self.trial_in_flight = False
