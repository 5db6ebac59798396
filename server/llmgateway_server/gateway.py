"""The gateway core: opens calls, runs them through the pipeline, answers queries.

Protobuf-free: the transport converts to and from these types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from llmgateway_server.auth import Authenticator, Caller
from llmgateway_server.call import CallState
from llmgateway_server.clock import Clock
from llmgateway_server.errors import (
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    invalid_request,
)
from llmgateway_server.pipeline import Pipeline
from llmgateway_server.pipeline.ledger import LedgerPolicy
from llmgateway_server.routes import Route
from llmgateway_server.tokens import count_prompt
from llmgateway_server.types import (
    ChatMessage,
    Completion,
    CompletionRequest,
    OutputDelta,
    Tool,
)


@dataclass(frozen=True, slots=True)
class TokenCount:
    """Answer of CountTokens."""

    input_tokens: int
    context_window: int
    exact: bool


class Gateway:
    """What the servicer calls. One instance per server, built by ``app``."""

    def __init__(
        self,
        *,
        routes: Mapping[str, Route],
        pipeline: Pipeline,
        authenticator: Authenticator,
        ledger: LedgerPolicy,
        clock: Clock,
        default_deadline_s: float,
    ) -> None:
        self._routes = dict(routes)
        self._pipeline = pipeline
        self.authenticator = authenticator
        self._ledger = ledger
        self._clock = clock
        self._default_deadline_s = default_deadline_s

    def route(self, name: str, tenant: str) -> Route:
        """The route called ``name``, if it exists and the tenant may use it."""
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(f"unknown model {name!r}", metadata={"model": name})
        self.authenticator.check_route(tenant, name)
        return route

    async def open_call(
        self,
        request: CompletionRequest,
        *,
        violations: Sequence[FieldViolation] = (),
        tenant: str,
        time_remaining_s: float | None,
        streaming: bool,
        caller: Caller | None = None,
    ) -> CallState:
        """Resolve the route and limits of a request, or refuse it.

        ``request`` holds the validated fields of what the caller sent and
        ``violations`` what was wrong with the rest; ``caller`` (who authenticated) gives
        the key and the budgets and rate limits the call counts against. A refusal is
        written to the usage ledger (through its policy) before it is raised.
        """
        try:
            state = self._open(request, violations, tenant, time_remaining_s, streaming)
        except GatewayError as exc:
            await self._ledger.refused(request, tenant=tenant, streaming=streaming, error=exc)
            raise
        if caller is not None:
            state.key_id = caller.key_id
            state.key_prefix = caller.key_prefix
            state.budget_scopes = caller.budget_scopes
            state.rate_limits = caller.rate_limits
        return state

    def _open(
        self,
        request: CompletionRequest,
        violations: Sequence[FieldViolation],
        tenant: str,
        time_remaining_s: float | None,
        streaming: bool,
    ) -> CallState:
        if violations:
            raise invalid_request(violations)
        now = self._clock.now()
        route = self.route(request.route, tenant)
        max_tokens = request.max_tokens or route.default_max_tokens
        if max_tokens > route.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens {max_tokens} is over the limit of model {route.name!r}",
                field_violations=[
                    FieldViolation("max_tokens", f"must be at most {route.max_tokens_limit}")
                ],
            )
        budget = self._default_deadline_s if time_remaining_s is None else time_remaining_s
        return CallState(
            request=request,
            tenant=tenant,
            route=route,
            streaming=streaming,
            started_at=now,
            deadline=now + budget,
            max_tokens=max_tokens,
        )

    async def drive(
        self, state: CallState, emit: Callable[[OutputDelta | Completion], Awaitable[None]]
    ) -> None:
        """Run an opened call, handing each delta (when streaming) and then the one
        Completion to ``emit``, all within the call's deadline."""
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout_at(loop.time() + (state.deadline - self._clock.now()))
        try:
            async with deadline, aclosing(self._pipeline.run(state)) as events:
                async for item in events:
                    await emit(item)
        except TimeoutError:
            if deadline.expired():
                raise DeadlineExceeded("the deadline passed") from None
            raise

    async def drain(self) -> None:
        """Until every finished call's budget settlement and usage record are written."""
        await self._pipeline.drain()

    def count_tokens(
        self,
        name: str,
        messages: Sequence[ChatMessage],
        tenant: str,
        tools: Sequence[Tool] = (),
    ) -> TokenCount:
        """Input tokens of ``messages`` (and ``tools``) on the route's first target, and
        its window."""
        route = self.route(name, tenant)
        target = route.targets[0]
        return TokenCount(
            input_tokens=count_prompt(target.counter, messages, tools),
            context_window=target.context_window,
            exact=target.counter.exact,
        )

    def list_models(self, tenant: str) -> list[Route]:
        """Routes the tenant may use, by name."""
        return [
            route
            for name, route in sorted(self._routes.items())
            if self.authenticator.may_use(tenant, name)
        ]
