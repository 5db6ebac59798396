"""Context-window policy: count the prompt per target, trim old turns to fit, or refuse.

For each target of the route the prompt is counted with that target's tokenizer. If it
fits with ``max_tokens`` reserved for the answer, it goes as is; otherwise, under TRIM,
the oldest user/assistant turns are dropped (``trimming.trim_to_fit``). A target that
cannot take the prompt even after trimming is skipped, so the call moves on to a target
with a larger window; when none can, the call is refused with CONTEXT_WINDOW_EXCEEDED.
"""

from __future__ import annotations

from llmgateway_server.errors import ContextWindowExceeded
from llmgateway_server.pipeline.state import CallState, Prompt
from llmgateway_server.tokens import REPLY_PRIMING_TOKENS, TokenCounter
from llmgateway_server.trimming import trim_to_fit
from llmgateway_server.types import ContextPolicy


class ContextWindowPolicy:
    """Plans the prompt each target of the route will receive."""

    async def before(self, state: CallState) -> None:
        """Fill ``state.prompts``; raise ContextWindowExceeded when no target fits."""
        messages = state.request.messages
        policy = state.request.context_policy or state.route.context_policy
        counts_by_counter: dict[int, list[int]] = {}
        first_total = 0
        for target in state.route.targets:
            counter: TokenCounter = target.counter
            counts = counts_by_counter.get(id(counter))
            if counts is None:
                counts = [counter.count_message(m) for m in messages]
                counts_by_counter[id(counter)] = counts
            total = REPLY_PRIMING_TOKENS + sum(counts)
            if not first_total:
                first_total = total
            budget = target.context_window - state.max_tokens - REPLY_PRIMING_TOKENS
            if total - REPLY_PRIMING_TOKENS <= budget:
                state.prompts[target.id] = Prompt(messages, total)
            elif policy is ContextPolicy.TRIM:
                trimmed = trim_to_fit(messages, counts, budget)
                if trimmed is not None:
                    state.prompts[target.id] = Prompt(
                        trimmed.messages, trimmed.tokens + REPLY_PRIMING_TOKENS, trimmed.dropped
                    )
        state.planned = True
        if not state.prompts:
            raise ContextWindowExceeded(
                input_tokens=first_total,
                max_tokens=state.max_tokens,
                context_window=max(t.context_window for t in state.route.targets),
            )

    async def after(self, state: CallState) -> None:
        """Nothing to undo."""
