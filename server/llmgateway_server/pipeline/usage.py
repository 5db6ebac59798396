"""The one place that decides a call's usage and cost.

The provider's reported usage wins. When there is none (the caller cancelled, the
stream broke, or an OpenAI-compatible server does not report usage) the gateway counts
what was sent and produced with the target's tokenizer, so nothing delivered goes
unbilled.
"""

from __future__ import annotations

from llmgateway_server.call import CallState
from llmgateway_server.pricing import cost_of
from llmgateway_server.types import Cost, Metered, UpstreamResult, Usage

NOTHING = Metered(Usage(), Cost(), estimated=False)


def meter(state: CallState, result: UpstreamResult | None = None) -> Metered:
    """Usage and cost of the call so far (``result`` is the upstream's final report)."""
    target = state.served_by or state.current_target
    if target is None:
        return NOTHING
    if result is not None and result.usage is not None:
        return Metered(result.usage, cost_of(result.usage, target.price), estimated=False)
    prompt = state.current_prompt
    produced = result.content if result is not None else "".join(state.output_parts)
    if prompt is None or (result is None and state.first_token_at is None):
        # No attempt reached the point of producing output: nothing to bill.
        return NOTHING
    usage = Usage(
        input_tokens=prompt.input_tokens,
        output_tokens=target.counter.count_text(produced) if produced else 0,
    )
    return Metered(usage, cost_of(usage, target.price), estimated=True)
