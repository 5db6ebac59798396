"""Backoff, Retry-After and circuit breakers, on a fake clock (no sleeping)."""

from __future__ import annotations

import logging

import pytest
from llmgateway_server.config import CircuitBreakerConfig, RetryConfig
from llmgateway_server.resilience import (
    BreakerState,
    CircuitBreaker,
    Decision,
    Failure,
    RetryPolicy,
    Step,
    backoff_delay,
    decide,
    retry_delay,
    wait_for_reopening,
)
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


def _ratio_breaker(
    clock: FakeClock, *, window_s: float = 30.0, min_calls: int = 10, cooldown_s: float = 10.0
) -> CircuitBreaker:
    """A breaker that opens at a 50% failure ratio; consecutive failures never open it."""
    config = CircuitBreakerConfig(
        failure_threshold=1000,
        cooldown_s=cooldown_s,
        failure_ratio=0.5,
        window_s=window_s,
        min_calls=min_calls,
    )
    return CircuitBreaker(config, clock, "t1")


def _opened_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "circuit opened"]


def test_failure_ratio_opens_the_breaker_at_min_calls(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock)
    with caplog.at_level(logging.WARNING, logger="llmgateway.resilience"):
        # F S F S ... never two failures in a row; after 9 calls 5/9 failed, under min_calls.
        for call in range(9):
            assert breaker.allow()
            if call % 2 == 0:
                breaker.record_failure(FailureClass.TRANSIENT)
            else:
                breaker.record_success()
        assert breaker.allow()
        assert breaker.state is BreakerState.CLOSED
        breaker.record_success()  # the 10th verdict: 5/10 failed
    assert not breaker.allow()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10
    [record] = _opened_logs(caplog)
    assert record.levelno == logging.WARNING
    assert record.__dict__["rule"] == "failure_ratio"
    assert record.__dict__["failure_ratio"] == 0.5
    assert record.__dict__["calls"] == 10


def test_failure_ratio_under_the_threshold_stays_closed() -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock)
    for call in range(100):  # one failure in three: 33% < 50%
        if call % 3 == 0:
            breaker.record_failure(FailureClass.TIMEOUT)
        else:
            breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_failure_ratio_needs_min_calls_even_at_100_percent() -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock)
    for _ in range(9):
        breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.allow()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(FailureClass.TRANSIENT)
    assert not breaker.allow()


def test_failures_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock(start=1000.0)
    breaker = _ratio_breaker(clock, window_s=10)  # ten buckets of 1 s
    for _ in range(5):
        breaker.record_failure(FailureClass.TRANSIENT)
    clock.advance(5)
    for _ in range(4):
        breaker.record_failure(FailureClass.TRANSIENT)
    clock.advance(5)  # the first five are 10 s old now and leave; the four are 5 s old
    breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.allow()  # 5 calls in the window
    for _ in range(4):
        breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.allow()  # 9 calls
    breaker.record_failure(FailureClass.TRANSIENT)  # the four from 5 s ago still count
    assert not breaker.allow()

    # A failure 9 s old is still in the window; after a long quiet gap none are.
    recent = _ratio_breaker(clock, window_s=10)
    for _ in range(9):
        recent.record_failure(FailureClass.TRANSIENT)
    clock.advance(9)
    recent.record_failure(FailureClass.TRANSIENT)
    assert not recent.allow()
    quiet = _ratio_breaker(clock, window_s=10)
    for _ in range(9):
        quiet.record_failure(FailureClass.TRANSIENT)
    clock.advance(1000)
    quiet.record_failure(FailureClass.TRANSIENT)
    assert quiet.allow()


def test_request_faults_and_cancellations_do_not_count_toward_the_ratio() -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock)
    for _ in range(5):
        breaker.record_success()
    for _ in range(10):
        breaker.record_failure(FailureClass.BAD_REQUEST)
        breaker.record_failure(FailureClass.CONTEXT_TOO_LONG)
        breaker.record_failure(FailureClass.CONTENT_POLICY)
        assert breaker.allow()
        breaker.release()
    assert breaker.state is BreakerState.CLOSED
    for _ in range(4):
        breaker.record_failure(FailureClass.CREDENTIAL)
        breaker.record_failure(FailureClass.BAD_REQUEST)  # resets nothing, counts nothing
    assert breaker.allow()  # 9 calls counted: 5 successes, 4 target failures
    breaker.record_failure(FailureClass.RATE_LIMITED)  # 10 calls, 5 failed
    assert not breaker.allow()


def test_closing_after_a_ratio_open_clears_the_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock, window_s=30, cooldown_s=10)
    for _ in range(5):
        breaker.record_failure(FailureClass.TRANSIENT)
        breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)  # cooldown over, the old verdicts are still inside the 30 s window
    assert breaker.allow()  # the half-open trial
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmgateway.resilience"):
        breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.allow()
    assert breaker.state is BreakerState.CLOSED
    assert not _opened_logs(caplog)


def test_failed_trial_after_a_ratio_open_reopens(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = _ratio_breaker(clock, cooldown_s=10)
    for _ in range(10):
        breaker.record_failure(FailureClass.TIMEOUT)
    clock.advance(10)
    assert breaker.allow()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmgateway.resilience"):
        breaker.record_failure(FailureClass.TIMEOUT)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10
    [record] = _opened_logs(caplog)
    assert record.__dict__["rule"] == "half_open_trial"


def test_consecutive_rule_is_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2), FakeClock(), "t1")
    with caplog.at_level(logging.WARNING, logger="llmgateway.resilience"):
        breaker.record_failure(FailureClass.TRANSIENT)
        breaker.record_failure(FailureClass.TRANSIENT)
    [record] = _opened_logs(caplog)
    assert record.__dict__["rule"] == "consecutive_failures"
    assert record.__dict__["consecutive_failures"] == 2
    assert "failure_ratio" not in record.__dict__


def test_without_failure_ratio_only_consecutive_failures_open() -> None:
    config = CircuitBreakerConfig(failure_threshold=2, cooldown_s=10)
    assert config.failure_ratio is None
    breaker = CircuitBreaker(config, FakeClock())
    for _ in range(100):  # 50% failures, never two in a row
        breaker.record_failure(FailureClass.TRANSIENT)
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(FailureClass.TRANSIENT)
    breaker.record_failure(FailureClass.TRANSIENT)
    assert breaker.state is BreakerState.OPEN


# -- decide: what happens after a failed attempt, for every case the router meets ----------

_POLICY = RetryPolicy(RetryConfig(max_attempts=3, base_delay_s=0.1, max_delay_s=2.0))
_LENIENT = RetryPolicy(_POLICY.retry, fallback_on_content_policy=True)
F = FailureClass


@pytest.mark.parametrize(
    ("failure", "policy", "remaining_s", "expected"),
    [
        # Retryable classes retry the same target (full jitter: 0.5 x ceiling here)...
        (Failure(F.TRANSIENT, 1), _POLICY, 60, Decision(Step.RETRY, 0.05)),
        (Failure(F.TIMEOUT, 2), _POLICY, 60, Decision(Step.RETRY, 0.1)),
        (Failure(F.RATE_LIMITED, 1), _POLICY, 60, Decision(Step.RETRY, 0.05)),
        # ...honouring Retry-After...
        (Failure(F.RATE_LIMITED, 1, retry_after_s=1.5), _POLICY, 60, Decision(Step.RETRY, 1.5)),
        # ...but not past the route's cap, the deadline, or the attempts allowed.
        (Failure(F.RATE_LIMITED, 1, retry_after_s=3.0), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        (Failure(F.RATE_LIMITED, 1, retry_after_s=1.0), _POLICY, 0.5, Decision(Step.NEXT_TARGET)),
        (Failure(F.TRANSIENT, 3), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        # Failures a retry cannot fix move on at once.
        (Failure(F.CREDENTIAL, 1), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        (Failure(F.BAD_REQUEST, 1), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        # A slow first token: another target, not the same one again.
        (Failure(F.TIMEOUT, 1, first_token_timeout=True), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        # The gateway's own pool was full: another target's pool, no retry here.
        (Failure(F.LOCAL_SATURATION, 1), _POLICY, 60, Decision(Step.NEXT_TARGET)),
        # Too long for this window: only larger windows are worth trying.
        (Failure(F.CONTEXT_TOO_LONG, 1), _POLICY, 60, Decision(Step.LARGER_WINDOW)),
        # The provider refused the content: the call ends, unless the route falls back.
        (Failure(F.CONTENT_POLICY, 1), _POLICY, 60, Decision(Step.FAIL_CONTENT_BLOCKED)),
        (Failure(F.CONTENT_POLICY, 1), _LENIENT, 60, Decision(Step.NEXT_TARGET)),
        # Text already reached the caller: nothing can take over, whatever the class.
        (
            Failure(F.TRANSIENT, 1, stream_started=True),
            _POLICY,
            60,
            Decision(Step.FAIL_STREAM_STARTED),
        ),
        (
            Failure(F.TIMEOUT, 1, stream_started=True),
            _POLICY,
            60,
            Decision(Step.FAIL_STREAM_STARTED),
        ),
        (
            Failure(F.CONTENT_POLICY, 1, stream_started=True),
            _LENIENT,
            60,
            Decision(Step.FAIL_STREAM_STARTED),
        ),
    ],
)
def test_decide_after_a_failed_attempt(
    failure: Failure, policy: RetryPolicy, remaining_s: float, expected: Decision
) -> None:
    assert decide(failure, policy, FakeClock(random_value=0.5), remaining_s) == expected


@pytest.mark.parametrize(
    ("attempted", "reopen_in_s", "remaining_s", "expected"),
    [
        (False, [2.0, 0.5], 10.0, 0.5),  # every target benched: wait for the first
        (False, [12.0], 10.0, None),  # not within the deadline: fail now, with RetryInfo
        (False, [], 10.0, None),  # skipped for other reasons (open breaker): fail now
        (True, [0.5], 10.0, None),  # an attempt was made this pass: its failure stands
    ],
)
def test_wait_for_a_benched_chain_only_within_the_deadline(
    attempted: bool, reopen_in_s: list[float], remaining_s: float, expected: float | None
) -> None:
    assert wait_for_reopening(attempted, reopen_in_s, remaining_s) == expected


def test_bench_is_what_keeps_a_target_out_only_while_its_breaker_is_not_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, cooldown_s=30), clock)
    breaker.record_failure(FailureClass.RATE_LIMITED, retry_after_s=5.0)
    assert breaker.benched_for() == 5.0
    breaker.record_failure(FailureClass.RATE_LIMITED, retry_after_s=5.0)  # now open, 30 s
    assert breaker.benched_for() is None
    clock.advance(31)
    assert breaker.benched_for() is None  # the bench is over too


def test_local_saturation_never_counts_against_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        CircuitBreakerConfig(failure_threshold=1, failure_ratio=0.1, min_calls=1), clock
    )
    for _ in range(5):
        assert breaker.allow()
        breaker.record_failure(FailureClass.LOCAL_SATURATION)
    assert breaker.state is BreakerState.CLOSED
