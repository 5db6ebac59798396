"""The configuration schema and the only place that reads files or the environment.

The schema is strict: an unknown or mistyped key is an error that names its path
(``routes.default.tiers.0.targets.0``). Provider keys are references (``api_key_env``,
``api_key_file``); a literal key anywhere in the file is rejected. ``load_config`` parses
and validates; ``resolve_secrets`` reads the referenced secrets once at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmgateway_server.errors import ConfigError
from llmgateway_server.providers.proxy import (
    PROXY_ENVIRONMENT,
    ProxyRoute,
    environment_proxy,
    parse_proxy_url,
)
from llmgateway_server.secrets import Secret
from llmgateway_server.storage.base import BudgetLimits, RateLimits

NANO_PER_USD = 1_000_000_000
DEFAULT_CONFIG_RESOURCE = "default.yaml"

# Shapes of real provider keys; a config value matching one is a leaked secret.
_LITERAL_KEY_PATTERNS = (
    re.compile(r"^sk-[A-Za-z0-9_\-]{16,}$"),
    re.compile(r"^sk-ant-[A-Za-z0-9_\-]{16,}$"),
    re.compile(r"^(AIza|gsk_|xai-)[A-Za-z0-9_\-]{16,}$"),
)
_FORBIDDEN_KEY_NAMES = {"api_key", "apikey", "key", "secret", "token", "password"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def usd_to_nano(value: str, *, what: str) -> int:
    """Parse a decimal USD string exactly into integer nano-USD."""
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"{what} must be a decimal number of USD, got {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite, non-negative amount, got {value!r}")
    nano = amount * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError(f"{what} has more precision than 1e-9 USD: {value!r}")
    return int(nano)


UsdAmount = Annotated[str, Field(pattern=r"^\d+(\.\d+)?$")]


class PriceConfig(_Strict):
    """Prices in USD per million tokens, as decimal strings (never floats).

    Only input and output are required. The others default to what the providers charge
    relative to them when a table gives nothing: cache reads and image tokens at the input
    price, reasoning at the output price, cache writes at the input price (Anthropic's
    real write prices are 1.25x input for 5 minutes and 2x for an hour: set them).
    """

    input_per_million_usd: UsdAmount
    output_per_million_usd: UsdAmount
    cached_input_per_million_usd: UsdAmount | None = None
    cache_write_5m_per_million_usd: UsdAmount | None = None
    cache_write_1h_per_million_usd: UsdAmount | None = None
    reasoning_per_million_usd: UsdAmount | None = None
    image_input_per_million_usd: UsdAmount | None = None
    version: str = Field(min_length=1)

    @model_validator(mode="after")
    def _exact(self) -> PriceConfig:
        for name in _PRICE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                usd_to_nano(value, what=name)
        return self

    def _nano(self, name: str, default: str) -> int:
        value = getattr(self, name)
        return usd_to_nano(getattr(self, default) if value is None else value, what=name)

    @property
    def input_nano_per_million(self) -> int:
        """Input price in nano-USD per million tokens."""
        return usd_to_nano(self.input_per_million_usd, what="input")

    @property
    def output_nano_per_million(self) -> int:
        """Output price in nano-USD per million tokens."""
        return usd_to_nano(self.output_per_million_usd, what="output")

    @property
    def cached_input_nano_per_million(self) -> int:
        """Cache-read price in nano-USD per million tokens (the input price if unset)."""
        return self._nano("cached_input_per_million_usd", "input_per_million_usd")

    @property
    def cache_write_5m_nano_per_million(self) -> int:
        """5-minute cache-write price (the input price if unset)."""
        return self._nano("cache_write_5m_per_million_usd", "input_per_million_usd")

    @property
    def cache_write_1h_nano_per_million(self) -> int:
        """1-hour cache-write price (the input price if unset)."""
        return self._nano("cache_write_1h_per_million_usd", "input_per_million_usd")

    @property
    def reasoning_nano_per_million(self) -> int:
        """Reasoning-token price (the output price if unset)."""
        return self._nano("reasoning_per_million_usd", "output_per_million_usd")

    @property
    def image_input_nano_per_million(self) -> int:
        """Image-input price (the input price if unset)."""
        return self._nano("image_input_per_million_usd", "input_per_million_usd")


_PRICE_FIELDS = (
    "input_per_million_usd",
    "output_per_million_usd",
    "cached_input_per_million_usd",
    "cache_write_5m_per_million_usd",
    "cache_write_1h_per_million_usd",
    "reasoning_per_million_usd",
    "image_input_per_million_usd",
)


FREE = PriceConfig(input_per_million_usd="0", output_per_million_usd="0", version="free")


class _ProviderBase(_Strict):
    max_connections: int = Field(default=256, ge=1, le=10_000)
    max_keepalive_connections: int = Field(default=128, ge=0, le=10_000)
    keepalive_expiry_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # How long a call may wait for a free connection of this provider's pool (at most
    # half its attempt's time) before it moves on to the next target as
    # LOCAL_SATURATION, which never counts against a breaker.
    pool_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Upstream HTTP (README, "Upstream HTTP: proxies, CAs, mTLS"). ``proxy``: an http://
    # proxy URL without credentials (a proxy password is a secret: it may come only from
    # the environment, with ``trust_env``). ``trust_env``: honour HTTPS_PROXY, HTTP_PROXY,
    # ALL_PROXY and NO_PROXY (either case). ``ca_bundle``: a PEM file of CAs trusted in
    # addition to the public ones. ``client_cert``/``client_key``: PEM files for mTLS (the
    # key may be in the certificate file).
    proxy: str | None = None
    trust_env: bool = False
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @model_validator(mode="after")
    def _upstream_http(self) -> _ProviderBase:
        if self.proxy is not None and self.trust_env:
            raise ValueError("set proxy or trust_env, not both")
        if self.proxy is not None:
            try:
                parse_proxy_url(self.proxy, what="proxy", credentials_allowed=False)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self


class _KeyedProvider(_ProviderBase):
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> _KeyedProvider:
        if self.api_key_env and self.api_key_file:
            raise ValueError("set only one of api_key_env and api_key_file")
        return self


class OpenAIProviderConfig(_KeyedProvider):
    """OpenAI Chat Completions (api.openai.com)."""

    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"

    @model_validator(mode="after")
    def _key_required(self) -> OpenAIProviderConfig:
        if not (self.api_key_env or self.api_key_file):
            raise ValueError("openai needs api_key_env or api_key_file")
        return self


class AnthropicProviderConfig(_KeyedProvider):
    """Anthropic Messages API."""

    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"

    @model_validator(mode="after")
    def _key_required(self) -> AnthropicProviderConfig:
        if not (self.api_key_env or self.api_key_file):
            raise ValueError("anthropic needs api_key_env or api_key_file")
        return self


class OpenAICompatibleProviderConfig(_KeyedProvider):
    """Any server speaking the OpenAI Chat Completions API (vLLM, Ollama, LM Studio)."""

    type: Literal["openai_compatible"]
    base_url: str
    # Older servers reject stream_options; turn it off for them.
    stream_usage: bool = True


class MockProviderConfig(_Strict):
    """The built-in offline provider: deterministic text and usage, no network."""

    type: Literal["mock"]
    first_token_latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    chunk_latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    words_per_chunk: int = Field(default=1, ge=1, le=10_000)
    reply: str | None = None


ProviderConfig = Annotated[
    OpenAIProviderConfig
    | AnthropicProviderConfig
    | OpenAICompatibleProviderConfig
    | MockProviderConfig,
    Field(discriminator="type"),
]


class CircuitBreakerConfig(_Strict):
    """Per-target breaker: opens by either rule below, then one trial after cooldown.

    - ``failure_threshold`` consecutive failures, or
    - when ``failure_ratio`` is set: over the last ``window_s`` seconds at least
      ``min_calls`` calls reached a verdict and at least that share of them failed.
      Off (None) by default; ``window_s`` and ``min_calls`` matter only when it is set.

    Only failures that say the target is unhealthy count (rate limits, transient
    errors, timeouts, credentials); a request at fault counts neither way.
    """

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    cooldown_s: float = Field(default=30.0, gt=0, le=3600)
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    window_s: float = Field(default=30.0, gt=0, le=3600)
    min_calls: int = Field(default=20, ge=1, le=100_000)


class TargetConfig(_Strict):
    """One upstream model behind a provider, with its context window and prices."""

    provider: str
    model: str = Field(min_length=1)
    context_window: int = Field(ge=1, le=100_000_000)
    # "auto" picks tiktoken for OpenAI-family models and the estimator otherwise.
    tokenizer: Literal["auto", "cl100k_base", "o200k_base", "estimate"] = "auto"
    price: PriceConfig = FREE
    # The target's own breaker (one per target, whichever routes use it); the server-wide
    # ``defaults.circuit_breaker`` when unset.
    circuit_breaker: CircuitBreakerConfig | None = None


class RetryConfig(_Strict):
    """Retries of one target: exponential backoff with full jitter."""

    max_attempts: int = Field(default=2, ge=1, le=10)
    base_delay_s: float = Field(default=0.2, ge=0, le=60)
    max_delay_s: float = Field(default=5.0, ge=0, le=300)


class TargetRef(_Strict):
    """A target in a tier, with its balancing weight."""

    target: str
    weight: int = Field(default=1, ge=1, le=1000)


class TierConfig(_Strict):
    """Targets tried at the same fallback level, balanced by weight or least in-flight."""

    targets: list[TargetRef | str] = Field(min_length=1)
    balance: Literal["weighted", "least_in_flight"] = "weighted"

    def refs(self) -> list[TargetRef]:
        """The tier's targets, with string shorthands expanded."""
        return [TargetRef(target=t) if isinstance(t, str) else t for t in self.targets]


class DetectorConfig(_Strict):
    """One guardrail: what to look for, what to do with it, and in which direction."""

    kind: Literal["email", "phone", "card", "iban", "secret", "regex", "keywords"]
    action: Literal["redact", "block"] = "redact"
    direction: Literal["input", "output", "both"] = "both"
    # The placeholder ("[LABEL]") and the kind reported: the kind in capitals by default;
    # required for regex and keywords.
    label: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]{0,31}$")
    region: str = Field(default="US", pattern=r"^[A-Z]{2}$")  # phone: national numbers
    pattern: str | None = Field(default=None, min_length=1, max_length=2000)  # regex
    max_length: int | None = Field(default=None, ge=1, le=1000)  # regex: longest match
    words: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = None

    @model_validator(mode="after")
    def _complete(self) -> DetectorConfig:
        custom = self.kind in ("regex", "keywords")
        if custom and self.label is None:
            raise ValueError(f"a {self.kind} detector needs a label (its placeholder)")
        if (self.kind == "regex") != (self.pattern is not None):
            raise ValueError("pattern is the setting of a regex detector (and it needs one)")
        if (self.kind == "regex") != (self.max_length is not None):
            raise ValueError(
                "max_length is required by a regex detector (and only by one): the "
                "streaming scan holds back at most that much text"
            )
        if (self.kind == "keywords") != bool(self.words):
            raise ValueError("words is the setting of a keywords detector (and it needs some)")
        if self.pattern is not None:
            import regex  # compiled here so that a bad pattern is a config error

            try:
                regex.compile(self.pattern)
            except regex.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return self


class ClassifierConfig(_Strict):
    """Semantic moderation by an OpenAI-compatible ``/v1/moderations`` endpoint."""

    # A provider of type openai or openai_compatible: its base_url, key, pool, proxy, CA.
    provider: str
    model: str = Field(default="omni-moderation-latest", min_length=1, max_length=200)
    # Category -> score threshold in [0, 1]; none: the endpoint's own "flagged".
    categories: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    direction: Literal["input", "output", "both"] = "output"
    # buffer: the whole output after one verdict; sentence: each sentence after its own.
    release: Literal["buffer", "sentence"] = "buffer"
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    on_error: Literal["block", "allow"] = "block"


class GuardrailsConfig(_Strict):
    """The detectors applied to a route's calls (or a tenant's, replacing the route's)."""

    detectors: list[DetectorConfig] = []
    classifier: ClassifierConfig | None = None


class RouteConfig(_Strict):
    """A logical model name: an ordered fallback chain of tiers and its policies."""

    targets: list[str] | None = None
    tiers: list[TierConfig] | None = None
    default_max_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    max_tokens_limit: int = Field(default=128_000, ge=1, le=1_000_000)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    first_token_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    context_policy: Literal["trim", "reject"] = "trim"
    max_cost_usd: UsdAmount | None = None
    retry: RetryConfig | None = None
    fallback_on_content_policy: bool = False
    # When a budget cannot cover max_tokens, the upstream is sent the max_tokens it can
    # afford; below this floor the call is refused (BUDGET_EXCEEDED).
    min_max_tokens: int = Field(default=16, ge=1, le=1_000_000)
    guardrails: GuardrailsConfig = GuardrailsConfig()

    @model_validator(mode="before")
    @classmethod
    def _breaker_is_a_target_setting(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "circuit_breaker" in data:
            raise ValueError(
                "circuit_breaker is a setting of each target (targets.<name>.circuit_breaker), "
                "not of a route: a target's health is the same whichever route calls it"
            )
        return data

    @model_validator(mode="after")
    def _one_chain(self) -> RouteConfig:
        if (self.targets is None) == (self.tiers is None):
            raise ValueError("set exactly one of targets (one tier each) and tiers")
        if self.targets is not None and not self.targets:
            raise ValueError("targets must not be empty")
        if self.max_cost_usd is not None:
            usd_to_nano(self.max_cost_usd, what="max_cost_usd")
        return self

    def chain(self) -> list[TierConfig]:
        """The fallback chain as tiers (the ``targets`` shorthand is one tier per target)."""
        if self.tiers is not None:
            return list(self.tiers)
        return [TierConfig(targets=[t]) for t in self.targets or []]


class BudgetConfig(_Strict):
    """Spend limits per UTC day and month: decimal USD strings and token counts."""

    usd_per_day: UsdAmount | None = None
    usd_per_month: UsdAmount | None = None
    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_month: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _exact(self) -> BudgetConfig:
        for name in ("usd_per_day", "usd_per_month"):
            value = getattr(self, name)
            if value is not None:
                usd_to_nano(value, what=name)
        return self

    def limits(self) -> BudgetLimits:
        """As the budget store counts them (nano-USD)."""
        return BudgetLimits(
            usd_per_day_nano=None
            if self.usd_per_day is None
            else usd_to_nano(self.usd_per_day, what="usd_per_day"),
            usd_per_month_nano=None
            if self.usd_per_month is None
            else usd_to_nano(self.usd_per_month, what="usd_per_month"),
            tokens_per_day=self.tokens_per_day,
            tokens_per_month=self.tokens_per_month,
        )


class RateLimitConfig(_Strict):
    """Token buckets per tenant: requests and tokens per minute."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)

    def limits(self) -> RateLimits:
        """As the budget store counts them."""
        return RateLimits(self.requests_per_minute, self.tokens_per_minute)


class TenantConfig(_Strict):
    """A caller. Its API keys are stored as SHA-256 hex digests or read from the env."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = []
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    routes: list[str] = ["*"]
    budgets: BudgetConfig = BudgetConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    # Replaces the guardrails of every route this tenant calls, when set.
    guardrails: GuardrailsConfig | None = None


class AdminConfig(_Strict):
    """Who may call AdminService (and see every tenant's usage): keys like a tenant's."""

    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = []
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class AuthConfig(_Strict):
    """Who may call. ``anonymous_tenant`` admits callers without a key (for local use)."""

    anonymous_tenant: str | None = None
    tenants: list[TenantConfig] = []
    admin: AdminConfig = AdminConfig()


# A URL given literally in the file may not carry a password (a secret); put such a URL
# in an environment variable and name it with the ``*_env`` setting instead.
_URL_ENV = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class StorageConfig(_Strict):
    """Where state lives.

    ``url`` is the local store, ``sqlite:///PATH`` (a relative PATH is relative to the
    working directory; its directory is created on first start): on one node it holds
    everything (tenants and keys, budgets and rate limits, the usage ledger); with the
    settings below it stays the ledger's outbox. ``ledger_url`` (``postgresql://...``)
    puts the ledger and the tenants in PostgreSQL, shared by replicas; ``budgets_url``
    (``redis://...``) the budget counters and rate limits in Redis.
    """

    url: str = Field(default="sqlite:///data/llmgateway.db", pattern=r"^sqlite:///.+")
    ledger_url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    ledger_url_env: str | None = _URL_ENV
    budgets_url: str | None = Field(default=None, pattern=r"^rediss?://")
    budgets_url_env: str | None = _URL_ENV
    # The budgets URL names one node of a Redis Cluster (the client finds the others).
    budgets_cluster: bool = False

    @model_validator(mode="after")
    def _one_source_each(self) -> StorageConfig:
        for name in ("ledger", "budgets"):
            url = getattr(self, f"{name}_url")
            if url is not None and getattr(self, f"{name}_url_env") is not None:
                raise ValueError(f"set {name}_url or {name}_url_env, not both")
            if url is not None and urlsplit(url).password:
                raise ValueError(
                    f"{name}_url: a password in the file is a literal secret; "
                    f"put the URL in an environment variable named by {name}_url_env"
                )
        return self

    @property
    def sqlite_path(self) -> Path:
        """The local database file."""
        return Path(self.url.removeprefix("sqlite:///"))


class BudgetsConfig(_Strict):
    """How budgets are enforced."""

    # When the budget store cannot answer: refuse calls (closed, the default) or admit
    # them without a reservation (open: an explicit, logged choice).
    on_store_error: Literal["closed", "open"] = "closed"
    # A reservation's lease is the call's deadline plus this; past it, a reservation whose
    # call never settled (the gateway died) is charged in full and recorded as abandoned.
    lease_grace_s: float = Field(default=60.0, gt=0, le=86_400)
    # How often each process looks for reservations whose lease passed (and once at
    # start-up): the most an abandoned call waits, past its lease, to be recorded.
    lease_sweep_s: float = Field(default=5.0, gt=0, le=3600)


class ServerConfig(_Strict):
    """Listening, limits and lifecycle."""

    listen: str = "127.0.0.1:50051"
    grace_period_s: float = Field(default=15.0, ge=0, le=3600)
    # After SIGTERM: report NOT_SERVING but keep accepting calls this long, so load
    # balancers and Kubernetes notice before the server stops taking new calls.
    drain_delay_s: float = Field(default=0.0, ge=0, le=600)
    default_deadline_s: float = Field(default=120.0, gt=0, le=86_400)
    default_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    # h1: the gateway's own HTTP/1.1 client, the only client measured that passes the
    # hostile-upstream suite (tests/integration/test_hostile_upstream.py); aiohttp, httpx's
    # default transport and pyreqwest failed cases of it (README, "Upstream HTTP").
    http_transport: Literal["h1"] = "h1"
    # uvloop: less CPU per unary call and per relayed stream, and lower added latency,
    # than the default asyncio loop in the same benchmark run (bench/RESULTS.md).
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class PolicyDefaults(_Strict):
    """Server-wide policy defaults that routes may override."""

    max_cost_usd: UsdAmount = "1.00"
    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


class TokenizerConfig(_Strict):
    """Where tiktoken encodings live (pre-seeded for offline use)."""

    encodings_dir: str | None = None


class GatewayConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    storage: StorageConfig = StorageConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    defaults: PolicyDefaults = PolicyDefaults()
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    targets: dict[str, TargetConfig] = Field(min_length=1)
    routes: dict[str, RouteConfig] = Field(min_length=1)

    @field_validator("providers", "targets", "routes")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,128}", name):
                raise ValueError(f"invalid name {name!r}: use letters, digits, _ . : -")
        return value

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, target in self.targets.items():
            if target.provider not in self.providers:
                raise ValueError(f"targets.{name}.provider: unknown provider {target.provider!r}")
        for name, route in self.routes.items():
            for t, tier in enumerate(route.chain()):
                for ref in tier.refs():
                    if ref.target not in self.targets:
                        raise ValueError(f"routes.{name}.tiers.{t}: unknown target {ref.target!r}")
        guarded: list[tuple[str, GuardrailsConfig | None]] = [
            (f"routes.{n}", r.guardrails) for n, r in self.routes.items()
        ]
        guarded += [(f"auth.tenants.{t.name}", t.guardrails) for t in self.auth.tenants]
        for where, rails in guarded:
            if rails is None or rails.classifier is None:
                continue
            provider = self.providers.get(rails.classifier.provider)
            if provider is None or provider.type not in ("openai", "openai_compatible"):
                raise ValueError(
                    f"{where}.guardrails.classifier.provider: {rails.classifier.provider!r} "
                    "is not a provider of type openai or openai_compatible"
                )
        tenants = [t.name for t in self.auth.tenants]
        if len(set(tenants)) != len(tenants):
            raise ValueError("auth.tenants: tenant names must be unique")
        for tenant in self.auth.tenants:
            for allowed in tenant.routes:
                if allowed != "*" and allowed not in self.routes:
                    raise ValueError(
                        f"auth.tenants.{tenant.name}.routes: unknown route {allowed!r}"
                    )
        if self.auth.anonymous_tenant is None and not self.auth.tenants:
            raise ValueError("auth: configure tenants, or anonymous_tenant for local use")
        return self


def _check_no_literal_keys(node: Any, path: str) -> None:
    """Reject literal secrets before schema validation, naming where they are."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if str(key).lower() in _FORBIDDEN_KEY_NAMES:
                raise ConfigError(
                    f"{sub}: literal secrets are not allowed in the config; "
                    "use api_key_env (an environment variable) or api_key_file"
                )
            _check_no_literal_keys(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_no_literal_keys(value, f"{path}.{i}")
    elif isinstance(node, str) and any(p.match(node) for p in _LITERAL_KEY_PATTERNS):
        raise ConfigError(
            f"{path}: looks like a literal API key; reference it with api_key_env or api_key_file"
        )


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts for tagged unions.
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        path = ".".join(loc) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in {
        "openai",
        "anthropic",
        "openai_compatible",
        "mock",
    }


def parse_config(text: str, *, source: str = "<config>") -> GatewayConfig:
    """Parse and validate YAML text into a GatewayConfig, or raise ConfigError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    _check_no_literal_keys(raw, "")
    try:
        return GatewayConfig.model_validate(raw, strict=False)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation_error(exc)}") from None


def load_config(path: str | Path | None) -> GatewayConfig:
    """Load the config file at ``path``, or the embedded offline default when None."""
    if path is None:
        text = resources.files("llmgateway_server").joinpath(DEFAULT_CONFIG_RESOURCE).read_text()
        return parse_config(text, source="embedded default")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    return parse_config(text, source=str(p))


def _read_secret(
    env: str | None, file: str | None, environ: Mapping[str, str], what: str
) -> Secret:
    if env is not None:
        value = environ.get(env, "")
        if not value:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return Secret(value.strip(), source=f"env:{env}")
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read api_key_file {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{what}: api_key_file {file} is empty")
        return Secret(value, source=f"file:{file}")
    raise ConfigError(f"{what}: no key reference")


def resolve_secrets(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Secret | None], dict[str, str]]:
    """Read every referenced secret once.

    Returns the provider keys by provider name (None for keyless providers) and the
    tenant of each API key's SHA-256 digest. A missing variable fails start-up with a
    message naming the variable, never a value.
    """
    env = os.environ if environ is None else environ
    provider_keys: dict[str, Secret | None] = {}
    for name, provider in config.providers.items():
        if isinstance(provider, MockProviderConfig) or not (
            provider.api_key_env or provider.api_key_file
        ):
            provider_keys[name] = None
        else:
            provider_keys[name] = _read_secret(
                provider.api_key_env, provider.api_key_file, env, f"providers.{name}"
            )
    tenant_keys: dict[str, str] = {}
    for tenant in config.auth.tenants:
        digests = list(tenant.api_key_sha256)
        if tenant.api_key_env is not None:
            key = _read_secret(tenant.api_key_env, None, env, f"auth.tenants.{tenant.name}")
            digests.append(hashlib.sha256(key.reveal().encode()).hexdigest())
        for digest in digests:
            if digest in tenant_keys:
                raise ConfigError(f"auth.tenants.{tenant.name}: an API key is shared by tenants")
            tenant_keys[digest] = tenant.name
    return provider_keys, tenant_keys


def resolve_admin_keys(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The SHA-256 digests of the admin keys (``auth.admin``), read like tenants' keys.
    An admin key may not also be a tenant's key."""
    env = os.environ if environ is None else environ
    admin = config.auth.admin
    digests = list(admin.api_key_sha256)
    if admin.api_key_env is not None:
        key = _read_secret(admin.api_key_env, None, env, "auth.admin")
        digests.append(hashlib.sha256(key.reveal().encode()).hexdigest())
    tenant_digests = {d for t in config.auth.tenants for d in t.api_key_sha256}
    if tenant_digests.intersection(digests):
        raise ConfigError("auth.admin: an admin key is also a tenant's key")
    return digests


def environment_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """One environment variable (None when unset or empty), for the command line's own
    settings such as ``LLMGATEWAY_ADMIN_KEY``: read here, as every setting is."""
    env = os.environ if environ is None else environ
    return env.get(name) or None


def resolve_storage_url(
    config: GatewayConfig,
    store: Literal["ledger", "budgets"],
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The PostgreSQL (``ledger``) or Redis (``budgets``) URL of ``storage:``: the
    ``<store>_url`` value, or the variable ``<store>_url_env`` names (unset: ConfigError
    naming it); None when not configured (the SQLite file of ``storage.url`` holds it)."""
    env = os.environ if environ is None else environ
    url: str | None = getattr(config.storage, f"{store}_url")
    name: str | None = getattr(config.storage, f"{store}_url_env")
    if url is None and name is not None:
        url = _read_secret(name, None, env, f"storage.{store}_url_env").reveal()
    return url


def resolve_proxies(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> dict[str, ProxyRoute | None]:
    """The HTTP proxy of each provider (None: direct), decided once at start-up.

    ``proxy`` when set; with ``trust_env``, what HTTPS_PROXY/HTTP_PROXY/ALL_PROXY name for
    the provider's ``base_url`` unless NO_PROXY exempts it (providers/proxy.py has the
    rules). Only those variables are read, and only for providers that set ``trust_env``.
    """
    env = os.environ if environ is None else environ
    routes: dict[str, ProxyRoute | None] = {}
    for name, provider in config.providers.items():
        if isinstance(provider, MockProviderConfig):
            continue
        if provider.proxy is not None:
            routes[name] = parse_proxy_url(
                provider.proxy, what=f"providers.{name}.proxy", credentials_allowed=False
            )
        elif provider.trust_env:
            proxy_env = {key: env[key] for key in PROXY_ENVIRONMENT if key in env}
            try:
                routes[name] = environment_proxy(provider.base_url, proxy_env)
            except ConfigError as exc:
                raise ConfigError(f"providers.{name}.trust_env: {exc}") from None
        else:
            routes[name] = None
    return routes


def secret_values(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the config references (provider keys, tenant keys read from
    the environment, proxy credentials from the environment), for the log redactor: none
    of them may appear in a log line."""
    env = os.environ if environ is None else environ
    provider_keys, _ = resolve_secrets(config, env)
    values = [key.reveal() for key in provider_keys.values() if key is not None]
    for tenant in config.auth.tenants:
        if tenant.api_key_env is not None:
            what = f"auth.tenants.{tenant.name}"
            values.append(_read_secret(tenant.api_key_env, None, env, what).reveal())
    if config.auth.admin.api_key_env is not None:
        values.append(_read_secret(config.auth.admin.api_key_env, None, env, "auth.admin").reveal())
    for store in ("ledger", "budgets"):
        url = resolve_storage_url(config, store, env)
        password = urlsplit(url).password if url else None
        if password:
            values.append(password)
    for route in resolve_proxies(config, env).values():
        if route is not None and route.authorization is not None:
            token = route.authorization.reveal().partition(" ")[2]  # "Basic <token>"
            values.append(token)
            password = base64.b64decode(token).decode("utf-8").partition(":")[2]
            if password:
                values.append(password)
    return values


NAIVE_BUDGETS_ENV = "LLMGATEWAY_TEST_NAIVE_BUDGETS"


def naive_budgets_for_tests(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the budget store runs its deliberately racy check-then-charge mode: a
    test-only switch (``LLMGATEWAY_TEST_NAIVE_BUDGETS=1``), so the concurrency tests can
    show that their harness sees the races the atomic mode prevents. Never set it in
    production: it overspends budgets."""
    env = os.environ if environ is None else environ
    return env.get(NAIVE_BUDGETS_ENV) == "1"
