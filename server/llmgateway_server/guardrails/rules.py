"""The config's guardrails, compiled once: per route, and per tenant where a tenant
replaces its routes' guardrails."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmgateway_server.config import DetectorConfig, GatewayConfig, GuardrailsConfig
from llmgateway_server.guardrails import detectors
from llmgateway_server.guardrails.detectors import Detector
from llmgateway_server.guardrails.scanner import Rule


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules applied to a call's prompt and to its output."""

    input: tuple[Rule, ...] = ()
    output: tuple[Rule, ...] = ()


NONE = RuleSet()


def detector_of(config: DetectorConfig) -> Detector:
    """The detector a config entry describes (its label as configured)."""
    match config.kind:
        case "email":
            built = detectors.email()
        case "phone":
            built = detectors.phone(config.region)
        case "card":
            built = detectors.card()
        case "iban":
            built = detectors.iban()
        case "secret":
            built = detectors.secret()
        case "regex":
            assert config.label
            assert config.pattern
            assert config.max_length
            return detectors.custom_regex(config.label, config.pattern, config.max_length)
        case "keywords":
            assert config.label
            assert config.words
            return detectors.keywords(config.label, config.words)
    if config.label is None:
        return built
    return Detector(config.label, built.pattern, built.max_length, built.lookahead, built.validate)


def rule_set(config: GuardrailsConfig) -> RuleSet:
    """The input and output rules of one guardrails block, in configured order."""
    inputs: list[Rule] = []
    outputs: list[Rule] = []
    for entry in config.detectors:
        rule = Rule(detector_of(entry), entry.action)
        if entry.direction in ("input", "both"):
            inputs.append(rule)
        if entry.direction in ("output", "both"):
            outputs.append(rule)
    return RuleSet(tuple(inputs), tuple(outputs))


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Every rule set of a config, looked up per call."""

    by_route: Mapping[str, RuleSet]
    by_tenant: Mapping[str, RuleSet]

    def for_call(self, route: str, tenant: str) -> RuleSet:
        """The tenant's rules if it has its own, else the route's."""
        own = self.by_tenant.get(tenant)
        if own is not None:
            return own
        return self.by_route.get(route, NONE)

    @property
    def any(self) -> bool:
        """Whether any route or tenant has a rule."""
        sets = (*self.by_route.values(), *self.by_tenant.values())
        return any(s.input or s.output for s in sets)


def build_guardrails(config: GatewayConfig) -> Guardrails:
    """Compile every route's and tenant's guardrails."""
    return Guardrails(
        by_route={name: rule_set(route.guardrails) for name, route in config.routes.items()},
        by_tenant={
            t.name: rule_set(t.guardrails) for t in config.auth.tenants if t.guardrails is not None
        },
    )
