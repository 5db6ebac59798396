"""Per-call mutable state that the policies and the router share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmgateway_server.routes import Route, Target
from llmgateway_server.tokens import count_prompt
from llmgateway_server.types import (
    Attempt,
    CallOutcome,
    ChatMessage,
    Completion,
    CompletionRequest,
)

if TYPE_CHECKING:
    from llmgateway_server.pipeline.usage import Metered


@dataclass(slots=True)
class Prompt:
    """The messages to send to one target, after context-window management."""

    messages: tuple[ChatMessage, ...]
    input_tokens: int
    trimmed: int = 0


@dataclass(slots=True)
class CallState:
    """Everything known about one call while it runs.

    Policies read and write it in ``before`` and ``after``; the router records attempts
    and output progress here so that a cancelled or failed call can still be billed.
    """

    request: CompletionRequest
    tenant: str
    route: Route
    streaming: bool
    started_at: float
    deadline: float
    max_tokens: int
    # Prompt per target id. Once the context-window policy has planned (``planned``),
    # a target absent here does not fit and is skipped.
    prompts: dict[str, Prompt] = field(default_factory=dict)
    planned: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    first_token_at: float | None = None
    # The target of the attempt in progress (or the last one), and what it was sent.
    current_target: Target | None = None
    current_prompt: Prompt | None = None
    served_by: Target | None = None
    output_parts: list[str] = field(default_factory=list)
    completion: Completion | None = None
    outcome: CallOutcome | None = None
    error_reason: str = ""
    # Usage and cost once known (set with the completion, or by the ledger at the end).
    metered: Metered | None = None

    @property
    def request_id(self) -> str:
        """The ledger key."""
        return self.request.request_id

    def prompt_for(self, target: Target) -> Prompt | None:
        """The prompt to send to ``target``; counted on demand when no policy trimmed."""
        prompt = self.prompts.get(target.id)
        if prompt is None and not self.planned:
            messages = self.request.messages
            prompt = Prompt(messages, count_prompt(target.counter, messages))
            self.prompts[target.id] = prompt
        return prompt
