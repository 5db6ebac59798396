"""The usage ledger's policy: the one writer of usage records.

First in, last out of the pipeline, so every call that opens writes exactly one record
however it ends; and ``refused`` writes the record of a call refused before it could open
(malformed, unknown or forbidden model, max_tokens over the route's limit). Records are
built from validated request fields only.
"""

from __future__ import annotations

import time

from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.errors import GatewayError
from llmgateway_server.metering import total
from llmgateway_server.pipeline.outcome import classify_error
from llmgateway_server.storage.base import AttemptRecord, UsageLedger, UsageRecord
from llmgateway_server.types import Attempt, CallOutcome, CompletionRequest


def build_record(state: CallState, now: float) -> UsageRecord:
    """The usage record of a finished call."""
    metered = state.metered if state.metered is not None else total(state.attempts)
    state.metered = metered
    target = state.served_by or state.current_target
    completion = state.completion
    prompt = state.current_prompt
    outcome = state.outcome or CallOutcome.FAILED
    return UsageRecord(
        request_id=state.request_id,
        tenant=state.tenant,
        route=state.route.name,
        provider=target.provider_name if target else "",
        upstream_model=(completion.upstream_model if completion else target.upstream_model)
        if target
        else "",
        tags=dict(state.request.tags),
        input_tokens=metered.usage.input_tokens,
        output_tokens=metered.usage.output_tokens,
        cached_input_tokens=metered.usage.cached_input_tokens,
        cache_write_tokens=metered.usage.cache_write_tokens,
        cache_write_1h_tokens=metered.usage.cache_write_1h_tokens,
        reasoning_tokens=metered.usage.reasoning_tokens,
        image_input_tokens=metered.usage.image_input_tokens,
        cost_nano_usd=metered.cost.total_nano_usd,
        price_version=metered.cost.price_version,
        usage_estimated=metered.estimated,
        streaming=state.streaming,
        outcome=outcome.value,
        error_reason=state.error_reason,
        finish_reason=completion.finish_reason.value if completion else "",
        attempt_count=len(state.attempts),
        trimmed_message_count=prompt.trimmed if prompt else 0,
        latency_s=round(now - state.started_at, 6),
        time_to_first_token_s=round(state.first_token_at - state.started_at, 6)
        if state.first_token_at is not None
        else None,
        finished_at_unix_s=time.time(),
        key_id=state.key_id,
        key_prefix=state.key_prefix,
        attempts=tuple(_attempt_record(a) for a in state.attempts),
        guardrails=_guardrail_counts(state.guardrail_findings),
    )


def _guardrail_counts(findings: list[tuple[str, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label, action, direction in findings:
        key = f"{label}:{action}:{direction}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _attempt_record(attempt: Attempt) -> AttemptRecord:
    metered = attempt.metered
    record = AttemptRecord(
        provider=attempt.provider,
        upstream_model=attempt.upstream_model,
        outcome=attempt.outcome.value,
        latency_s=round(attempt.latency_s, 6),
    )
    if metered is not None:
        usage = metered.usage
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.cached_input_tokens = usage.cached_input_tokens
        record.cache_write_tokens = usage.cache_write_tokens
        record.cache_write_1h_tokens = usage.cache_write_1h_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.image_input_tokens = usage.image_input_tokens
        record.cost_nano_usd = metered.cost.total_nano_usd
        record.usage_estimated = metered.estimated
    return record


class LedgerPolicy:
    """Writes the usage record in ``after``; does nothing before the call."""

    def __init__(self, ledger: UsageLedger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    async def before(self, state: CallState) -> None:
        """Nothing: the record is written once the call has ended."""

    async def after(self, state: CallState) -> None:
        """Write the call's one usage record."""
        await self._ledger.write(build_record(state, self._clock.now()))

    async def refused(
        self, request: CompletionRequest, *, tenant: str, streaming: bool, error: GatewayError
    ) -> None:
        """Write the record of a call refused before it opened (``request`` holds the
        validated fields of what the caller sent)."""
        outcome, reason = classify_error(error)
        await self._ledger.write(
            UsageRecord(
                request_id=request.request_id,
                tenant=tenant,
                route=request.route,
                outcome=outcome.value,
                finished_at_unix_s=time.time(),
                tags=dict(request.tags),
                streaming=streaming,
                error_reason=reason,
            )
        )
