"""Context-window policy: count the prompt per target, trim old turns to fit, or refuse.

For each target of the route the prompt is counted with that target's tokenizer. If it
fits with ``max_tokens`` reserved for the answer, it goes as is; otherwise, under TRIM,
the oldest user/assistant turns are dropped (``trimming.trim_to_fit``). A target that
cannot take the prompt even after trimming is skipped, so the call moves on to a target
with a larger window; when none can, the call is refused with CONTEXT_WINDOW_EXCEEDED.

Messages are counted lazily and newest first: turns that trimming drops are never
tokenized, so a 10,000-message conversation costs about what fits in the window.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from llmgateway_server.call import CallState, Prompt
from llmgateway_server.errors import ContextWindowExceeded
from llmgateway_server.tokens import (
    REPLY_PRIMING_TOKENS,
    MessageTokens,
    token_upper_bound,
    tools_upper_bound,
)
from llmgateway_server.trimming import trim_to_fit
from llmgateway_server.types import ContextPolicy

log = logging.getLogger("llmgateway.context_window")


class ContextWindowPolicy:
    """Plans the prompt each target of the route will receive."""

    async def before(self, state: CallState) -> None:
        """Fill ``state.prompts``; raise ContextWindowExceeded when no target fits."""
        messages, tools = state.request.messages, state.request.tools
        policy = state.request.context_policy or state.route.context_policy
        # Priming and tool definitions: always sent, never trimmed.
        fixed_bound = REPLY_PRIMING_TOKENS + tools_upper_bound(tools)
        upper_bound = token_upper_bound(messages)
        # Targets that share a tokenizer share the counts.
        counts_by_counter: dict[int, MessageTokens] = {}
        for target in state.route.targets:
            counts = counts_by_counter.get(id(target.counter))
            if counts is None:
                counts = MessageTokens(target.counter, messages, tools)
                counts_by_counter[id(target.counter)] = counts
            room = target.context_window - state.max_tokens
            if upper_bound + fixed_bound <= room:
                # Fits for certain: no trimming, and no counting until something needs it.
                state.prompts[target.id] = Prompt(
                    messages, counts=counts, token_bound=upper_bound + fixed_bound
                )
            elif policy is ContextPolicy.TRIM:
                fixed = counts.fixed()
                trimmed = trim_to_fit(messages, counts, room - fixed)
                if trimmed is not None:
                    state.prompts[target.id] = Prompt(
                        trimmed.messages,
                        input_tokens=trimmed.tokens + fixed,
                        trimmed=trimmed.dropped,
                    )
            elif (total := counts.prompt_total()) + state.max_tokens <= target.context_window:
                state.prompts[target.id] = Prompt(messages, input_tokens=total)
        state.planned = True
        for target_id, prompt in state.prompts.items():
            if prompt.trimmed:
                log.info(
                    "prompt trimmed",
                    extra={
                        "request_id": state.request_id,
                        "target": target_id,
                        "dropped_messages": prompt.trimmed,
                        "input_tokens": prompt.input_tokens,
                    },
                )
        if not state.prompts:
            first = state.route.targets[0]
            raise ContextWindowExceeded(
                input_tokens=counts_by_counter[id(first.counter)].prompt_total(),
                max_tokens=state.max_tokens,
                context_window=max(t.context_window for t in state.route.targets),
            )

    # The pipeline skips an ``after`` that does nothing (no task per call for it).
    has_after: ClassVar[bool] = False

    async def after(self, state: CallState) -> None:
        """Nothing to undo."""
