"""Per-request cost guard: refuse before any upstream call when the worst case is too dear.

The worst case is every prompt token uncached plus ``max_tokens`` of output, at the
most expensive target the chain may try (targets the prompt cannot fit are excluded).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from llmgateway_server.call import CallState
from llmgateway_server.errors import CostLimitExceeded, QuotaViolation
from llmgateway_server.pricing import worst_case_nano

log = logging.getLogger("llmgateway.cost_guard")


def _usd(nano: int) -> str:
    return f"${nano / 1e9:.9f}".rstrip("0").rstrip(".")


class CostGuardPolicy:
    """Checks the worst-case cost against the route's (or the server's) limit."""

    async def before(self, state: CallState) -> None:
        """Raise CostLimitExceeded when the worst case is over the limit."""
        limit = state.route.max_cost_nano_usd
        # Priced on each prompt's token bound first: when even that is within the limit,
        # the exact count cannot be over it, and the prompt need not be tokenized.
        if self._worst_case(state, exact=False) <= limit:
            return
        worst = self._worst_case(state, exact=True)
        if worst > limit:
            log.info(
                "cost limit exceeded",
                extra={
                    "request_id": state.request_id,
                    "route": state.route.name,
                    "estimated_nano_usd": worst,
                    "limit_nano_usd": limit,
                },
            )
            raise CostLimitExceeded(
                f"the worst-case cost {_usd(worst)} of this request is over the per-request "
                f"limit {_usd(limit)} of model {state.route.name!r}; lower max_tokens or "
                "shorten the prompt",
                metadata={"limit_nano_usd": str(limit), "estimated_nano_usd": str(worst)},
                quota_violations=[
                    QuotaViolation(
                        subject=f"model:{state.route.name}",
                        description=f"per-request cost limit {_usd(limit)}",
                    )
                ],
            )

    @staticmethod
    def _worst_case(state: CallState, *, exact: bool) -> int:
        worst = 0
        for target in state.route.targets:
            prompt = state.prompt_for(target)
            if prompt is not None:
                tokens = prompt.input_tokens if exact else prompt.token_bound
                worst = max(
                    worst,
                    worst_case_nano(
                        tokens,
                        state.max_tokens,
                        target.price,
                        cache_writes=state.request.cache_breakpoints,
                    ),
                )
        return worst

    # The pipeline skips an ``after`` that does nothing (no task per call for it).
    has_after: ClassVar[bool] = False

    async def after(self, state: CallState) -> None:
        """Nothing to undo."""
