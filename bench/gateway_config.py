"""The gateway's benchmark configuration: every policy on, one route per fake upstream.

Auth (a tenant keyed by an environment variable), the usage ledger, budget reservations
and rate-limit buckets in a SQLite file (``storage.url``; the tenant's budget and rate
limits are on and never reached), context-window counting (tiktoken cl100k_base, exact;
the estimator in one memory row) and trimming, the cost guard (``max_cost_usd``) and the
router with its retries and circuit breaker all run on every call; only the knobs under
test change (HTTP transport, event loop, log level, and the default PII detectors as
guardrails on every route).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import workload
import yaml

# The selectable transports (server.http_transport); the libraries measured beside h1 are
# in bench/http_client_cpu.py, as candidates.
Transport = Literal["h1"]
Loop = Literal["asyncio", "uvloop"]


@dataclass(frozen=True, slots=True)
class Variant:
    """One gateway build under test."""

    transport: Transport = "h1"  # the shipped default (server.http_transport)
    loop: Loop = "uvloop"  # the shipped default (server.event_loop)
    log_level: Literal["info", "warning"] = "warning"
    access_log: bool = False
    tokenizer: Literal["cl100k_base", "estimate"] = "cl100k_base"
    # A git revision whose server code runs instead of the working tree's (an A/B of two
    # versions in the same run, when the host's speed makes runs on different days
    # incomparable); "" for the working tree.
    baseline: str = ""
    # The default PII detectors (DEFAULT_DETECTORS) as the guardrails of every route.
    guardrails: bool = False

    @property
    def name(self) -> str:
        """Short name, e.g. ``gateway-h1-asyncio`` (``+logs`` when logging,
        ``+estimator`` when prompts are estimated instead of tokenized, ``+guardrails``
        with the default PII detectors, ``@rev`` for a baseline revision)."""
        logs = "+logs" if self.log_level == "info" or self.access_log else ""
        estimator = "+estimator" if self.tokenizer == "estimate" else ""
        guardrails = "+guardrails" if self.guardrails else ""
        at = f"@{self.baseline}" if self.baseline else ""
        return f"gateway-{self.transport}-{self.loop}{logs}{estimator}{guardrails}{at}"


# The default PII detectors: redact e-mail addresses, US phone numbers and IBANs, block
# payment card numbers and secrets (API-key shapes), in the prompt and in the answer.
DEFAULT_DETECTORS: tuple[dict[str, str], ...] = (
    {"kind": "email", "action": "redact"},
    {"kind": "phone", "action": "redact", "region": "US"},
    {"kind": "card", "action": "block"},
    {"kind": "iban", "action": "redact"},
    {"kind": "secret", "action": "block"},
)


# On, so every call takes the rate limits and reserves against the budgets; far above
# what the benchmark spends.
_LIMITS: dict[str, Any] = {
    "budgets": {"usd_per_day": "1000000", "tokens_per_day": 10**12},
    "rate_limits": {"requests_per_minute": 10**7, "tokens_per_minute": 10**12},
}


def gateway_config(
    variant: Variant,
    upstreams: dict[str, str],
    *,
    max_connections: int = 256,
    database: str = "",
) -> dict[str, Any]:
    """The config for ``variant`` with one provider, target and route per upstream
    (route name -> upstream base URL without ``/v1``); its state in the SQLite file
    ``database`` (budgets and rate limits on, never reached)."""
    providers: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    routes: dict[str, Any] = {}
    for route, base_url in upstreams.items():
        providers[f"p-{route}"] = {
            "type": "openai",
            "base_url": f"{base_url}/v1",
            "api_key_env": workload.UPSTREAM_KEY_ENV,
            "max_connections": max_connections,
            "max_keepalive_connections": max_connections,
        }
        targets[f"t-{route}"] = {
            "provider": f"p-{route}",
            "model": workload.UPSTREAM_MODEL,
            "context_window": 128_000,
            "tokenizer": variant.tokenizer,
            "price": {
                "input_per_million_usd": "2.50",
                "output_per_million_usd": "10.00",
                "cached_input_per_million_usd": "1.25",
                "version": "bench-1",
            },
        }
        routes[route] = {"targets": [f"t-{route}"]}
        if variant.guardrails:
            routes[route]["guardrails"] = {"detectors": [dict(d) for d in DEFAULT_DETECTORS]}
    return {
        "server": {
            "http_transport": variant.transport,
            "event_loop": variant.loop,
            "log_level": variant.log_level,
            "access_log": variant.access_log,
            "default_deadline_s": 60,
        },
        "auth": {
            "tenants": [
                {
                    "name": "bench",
                    "api_key_env": workload.TENANT_KEY_ENV,
                    "routes": ["*"],
                    # A baseline revision may predate budgets and state: its schema would
                    # refuse the keys.
                    **({} if variant.baseline else _LIMITS),
                }
            ]
        },
        **(
            {"storage": {"url": f"sqlite:///{database}"}}
            if database and not variant.baseline
            else {}
        ),
        "defaults": {"max_cost_usd": "1.00"},
        "providers": providers,
        "targets": targets,
        "routes": routes,
    }


def gateway_yaml(
    variant: Variant, upstreams: dict[str, str], *, max_connections: int = 256, database: str = ""
) -> str:
    """``gateway_config`` as YAML text."""
    config = gateway_config(variant, upstreams, max_connections=max_connections, database=database)
    return yaml.safe_dump(config, sort_keys=False)
