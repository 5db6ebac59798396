"""Runtime routes: a logical model name mapped to an ordered chain of target tiers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmgateway_server.config import CircuitBreakerConfig, GatewayConfig, usd_to_nano
from llmgateway_server.pricing import Price
from llmgateway_server.providers.base import Provider
from llmgateway_server.resilience import RetryPolicy
from llmgateway_server.tokens import TokenCounter, Tokenizers
from llmgateway_server.types import ContextPolicy


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """One upstream model on one provider: where an attempt goes."""

    id: str
    provider: Provider
    upstream_model: str
    context_window: int
    price: Price
    counter: TokenCounter
    circuit_breaker: CircuitBreakerConfig

    @property
    def provider_name(self) -> str:
        """The configured provider name."""
        return self.provider.name

    @property
    def label(self) -> str:
        """``provider/model``, as attempts and metrics show it."""
        return f"{self.provider.name}/{self.upstream_model}"


@dataclass(frozen=True, slots=True)
class Tier:
    """Targets tried at the same fallback level, with their balancing weights."""

    targets: tuple[Target, ...]
    weights: tuple[int, ...]
    balance: str = "weighted"


@dataclass(frozen=True, slots=True)
class Route:
    """A logical model and its policies, resolved from the config."""

    name: str
    tiers: tuple[Tier, ...]
    default_max_tokens: int
    max_tokens_limit: int
    timeout_s: float
    first_token_timeout_s: float | None
    context_policy: ContextPolicy
    max_cost_nano_usd: int
    retry_policy: RetryPolicy
    min_max_tokens: int = 16
    targets: tuple[Target, ...] = field(init=False)

    def __post_init__(self) -> None:
        seen: dict[str, Target] = {}
        for tier in self.tiers:
            for target in tier.targets:
                seen.setdefault(target.id, target)
        object.__setattr__(self, "targets", tuple(seen.values()))

    @property
    def context_window(self) -> int:
        """The smallest window among the targets (what every target can take)."""
        return min(t.context_window for t in self.targets)


def build_routes(
    config: GatewayConfig, providers: Mapping[str, Provider], tokenizers: Tokenizers
) -> dict[str, Route]:
    """Resolve every route of the config against the built providers."""
    targets: dict[str, Target] = {}
    for tid, tc in config.targets.items():
        targets[tid] = Target(
            id=tid,
            provider=providers[tc.provider],
            upstream_model=tc.model,
            context_window=tc.context_window,
            price=Price(
                input_nano_per_million=tc.price.input_nano_per_million,
                output_nano_per_million=tc.price.output_nano_per_million,
                cached_input_nano_per_million=tc.price.cached_input_nano_per_million,
                version=tc.price.version,
                cache_write_5m_nano_per_million=tc.price.cache_write_5m_nano_per_million,
                cache_write_1h_nano_per_million=tc.price.cache_write_1h_nano_per_million,
                reasoning_nano_per_million=tc.price.reasoning_nano_per_million,
                image_input_nano_per_million=tc.price.image_input_nano_per_million,
            ),
            counter=tokenizers.counter_for(tc.model, tc.tokenizer),
            circuit_breaker=tc.circuit_breaker or config.defaults.circuit_breaker,
        )
    defaults = config.defaults
    routes: dict[str, Route] = {}
    for name, rc in config.routes.items():
        tiers = tuple(
            Tier(
                targets=tuple(targets[ref.target] for ref in tier.refs()),
                weights=tuple(ref.weight for ref in tier.refs()),
                balance=tier.balance,
            )
            for tier in rc.chain()
        )
        routes[name] = Route(
            name=name,
            tiers=tiers,
            default_max_tokens=rc.default_max_tokens,
            max_tokens_limit=rc.max_tokens_limit,
            timeout_s=rc.timeout_s or config.server.default_timeout_s,
            first_token_timeout_s=rc.first_token_timeout_s,
            context_policy=ContextPolicy(rc.context_policy),
            max_cost_nano_usd=usd_to_nano(
                rc.max_cost_usd or defaults.max_cost_usd, what="max_cost_usd"
            ),
            retry_policy=RetryPolicy(
                retry=rc.retry or defaults.retry,
                fallback_on_content_policy=rc.fallback_on_content_policy,
            ),
            min_max_tokens=rc.min_max_tokens,
        )
    return routes
