"""Backoff, Retry-After and circuit breakers, on a fake clock (no sleeping)."""

from __future__ import annotations

from llmgateway_server.config import CircuitBreakerConfig, RetryConfig
from llmgateway_server.resilience import BreakerState, CircuitBreaker, backoff_delay, retry_delay
from llmgateway_server.types import FailureClass

from tests.support.clock import FakeClock


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    retry = RetryConfig(max_attempts=5, base_delay_s=0.1, max_delay_s=1.0)
    clock = FakeClock(random_value=0.999)
    assert 0.099 < backoff_delay(1, retry, clock) < 0.1
    assert 0.39 < backoff_delay(3, retry, clock) < 0.4
    assert backoff_delay(10, retry, clock) < 1.0  # capped
    assert backoff_delay(3, retry, FakeClock(random_value=0.0)) == 0.0


def test_retry_after_is_honoured_over_backoff() -> None:
    retry = RetryConfig(max_attempts=3, base_delay_s=0.1, max_delay_s=5.0)
    delay = retry_delay(1, FailureClass.RATE_LIMITED, 2.0, retry, FakeClock(), remaining_s=10)
    assert delay == 2.0


def test_retry_after_past_the_deadline_moves_on_at_once() -> None:
    retry = RetryConfig(max_attempts=3, base_delay_s=0.1, max_delay_s=5.0)
    assert retry_delay(1, FailureClass.RATE_LIMITED, 3.0, retry, FakeClock(), remaining_s=2) is None


def test_retry_after_over_the_cap_moves_on_at_once() -> None:
    retry = RetryConfig(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0)
    assert (
        retry_delay(1, FailureClass.RATE_LIMITED, 2.0, retry, FakeClock(), remaining_s=60) is None
    )


def test_non_retryable_classes_are_never_retried() -> None:
    retry = RetryConfig(max_attempts=5)
    for failure in (
        FailureClass.CREDENTIAL,
        FailureClass.BAD_REQUEST,
        FailureClass.CONTEXT_TOO_LONG,
        FailureClass.CONTENT_POLICY,
    ):
        assert retry_delay(1, failure, None, retry, FakeClock(), remaining_s=60) is None


def test_attempts_are_bounded() -> None:
    retry = RetryConfig(max_attempts=2)
    clock = FakeClock()
    assert retry_delay(1, FailureClass.TRANSIENT, None, retry, clock, 60) is not None
    assert retry_delay(2, FailureClass.TRANSIENT, None, retry, clock, 60) is None


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3, cooldown_s=30), clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while the trial runs
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_trial_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, cooldown_s=10), clock)
    breaker.record_failure(FailureClass.TIMEOUT)
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure(FailureClass.TIMEOUT)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10


def test_request_faults_do_not_open_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, cooldown_s=10), clock)
    breaker.record_failure(FailureClass.BAD_REQUEST)
    breaker.record_failure(FailureClass.CONTEXT_TOO_LONG)
    assert breaker.state is BreakerState.CLOSED


def test_rate_limit_with_retry_after_benches_the_target_for_everyone() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=100, cooldown_s=10), clock)
    breaker.record_failure(FailureClass.RATE_LIMITED, retry_after_s=5)
    assert not breaker.allow()
    assert breaker.retry_after() == 5
    clock.advance(5)
    assert breaker.allow()


def test_cancelled_trial_is_given_back() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, cooldown_s=1), clock)
    breaker.record_failure(FailureClass.TRANSIENT)
    clock.advance(1)
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()
