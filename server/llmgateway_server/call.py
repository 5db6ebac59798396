"""Per-call mutable state that the policies and the router share.

It lives below both (``pipeline`` imports ``routing``, and both import this module), so
neither depends on the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmgateway_server.routes import Route, Target
from llmgateway_server.storage.base import RateLimits, Reservation, Scope
from llmgateway_server.tokens import (
    REPLY_PRIMING_TOKENS,
    MessageTokens,
    token_upper_bound,
    tools_upper_bound,
)

if TYPE_CHECKING:
    from llmgateway_server.guardrails.output import OutputGuard
from llmgateway_server.types import (
    Attempt,
    CallOutcome,
    ChatMessage,
    Completion,
    CompletionRequest,
    Metered,
    UpstreamCall,
)


class Prompt:
    """The messages to send to one target, after context-window management.

    ``token_bound`` is never below the exact count and costs nothing; the exact count
    (``input_tokens``) is taken the first time something needs it: the cost guard when
    the bound does not settle the question, the bill of a call whose upstream reported
    no usage, an error that names the count. A call that fits and is priced by its
    bound is never tokenized.
    """

    __slots__ = ("_counts", "_input_tokens", "messages", "token_bound", "trimmed")

    def __init__(
        self,
        messages: tuple[ChatMessage, ...],
        *,
        input_tokens: int | None = None,
        counts: MessageTokens | None = None,
        token_bound: int | None = None,
        trimmed: int = 0,
    ) -> None:
        """Either the exact ``input_tokens``, or the per-message ``counts`` to take them
        from when asked and a ``token_bound`` not below them (reply priming included)."""
        if input_tokens is not None:
            self.token_bound = input_tokens
        elif counts is not None and token_bound is not None:
            self.token_bound = token_bound
        else:
            raise ValueError("a Prompt needs its token count, or the counts and a bound")
        self.messages = messages
        self.trimmed = trimmed
        self._input_tokens = input_tokens
        self._counts = counts

    @property
    def input_tokens(self) -> int:
        """The exact count, reply priming included."""
        if self._input_tokens is None:
            assert self._counts is not None
            self._input_tokens = self._counts.prompt_total()
        return self._input_tokens


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
    current_call: UpstreamCall | None = None
    served_by: Target | None = None
    output_parts: list[str] = field(default_factory=list)
    completion: Completion | None = None
    outcome: CallOutcome | None = None
    error_reason: str = ""
    # The store key the caller authenticated with ("" for config keys and anonymous).
    key_id: str = ""
    key_prefix: str = ""
    # What the caller's calls count against, and the reservation this one holds.
    budget_scopes: tuple[Scope, ...] = ()
    rate_limits: RateLimits = field(default_factory=RateLimits)
    reservation: Reservation | None = None
    # Usage and cost once known (set with the completion, or by the ledger at the end).
    metered: Metered | None = None
    # The guardrails: the scanner the output goes through (None: no output rule), and
    # every finding as (detector label, action, direction), for the usage record.
    output_guard: OutputGuard | None = None
    guardrail_findings: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        """The ledger key."""
        return self.request.request_id

    def prompt_for(self, target: Target) -> Prompt | None:
        """The prompt to send to ``target``; counted on demand when no policy trimmed."""
        prompt = self.prompts.get(target.id)
        if prompt is None and not self.planned:
            request = self.request
            messages, tools = request.messages, request.tools
            bound = token_upper_bound(messages) + REPLY_PRIMING_TOKENS
            prompt = Prompt(
                messages,
                counts=MessageTokens(target.counter, messages, tools),
                token_bound=bound + tools_upper_bound(tools) if tools else bound,
            )
            self.prompts[target.id] = prompt
        return prompt
