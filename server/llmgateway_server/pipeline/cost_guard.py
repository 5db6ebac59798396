"""Per-request cost guard: refuse before any upstream call when the worst case is too dear.

The worst case is every prompt token uncached plus ``max_tokens`` of output, at the
most expensive target the chain may try (targets the prompt cannot fit are excluded).
"""

from __future__ import annotations

import logging

from llmgateway_server.errors import CostLimitExceeded, QuotaViolation
from llmgateway_server.pipeline.state import CallState
from llmgateway_server.pricing import worst_case_nano

log = logging.getLogger("llmgateway.cost_guard")


def _usd(nano: int) -> str:
    return f"${nano / 1e9:.9f}".rstrip("0").rstrip(".")


class CostGuardPolicy:
    """Checks the worst-case cost against the route's (or the server's) limit."""

    async def before(self, state: CallState) -> None:
        """Raise CostLimitExceeded when the worst case is over the limit."""
        worst = 0
        for target in state.route.targets:
            prompt = state.prompt_for(target)
            if prompt is not None:
                cost = worst_case_nano(prompt.input_tokens, state.max_tokens, target.price)
                worst = max(worst, cost)
        limit = state.route.max_cost_nano_usd
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

    async def after(self, state: CallState) -> None:
        """Nothing to undo."""
