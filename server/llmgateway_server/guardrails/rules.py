"""The config's guardrails, compiled once: per route, and per tenant where a tenant
replaces its routes' guardrails."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmgateway_server.config import DetectorConfig, GatewayConfig, GuardrailsConfig
from llmgateway_server.guardrails import detectors
from llmgateway_server.guardrails.classifier import Moderate, ModerationClassifier
from llmgateway_server.guardrails.detectors import Detector
from llmgateway_server.guardrails.output import ClassifierStage
from llmgateway_server.guardrails.scanner import Rule


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules applied to a call's prompt and to its output, and the classifier of
    each direction."""

    input: tuple[Rule, ...] = ()
    output: tuple[Rule, ...] = ()
    input_classifier: ClassifierStage | None = None
    output_classifier: ClassifierStage | None = None

    @property
    def checks_input(self) -> bool:
        """Whether the prompt is checked."""
        return bool(self.input) or self.input_classifier is not None

    @property
    def checks_output(self) -> bool:
        """Whether the output is checked."""
        return bool(self.output) or self.output_classifier is not None


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
    return dataclasses.replace(built, label=config.label)


def rule_set(config: GuardrailsConfig, moderate_of: Callable[[str], Moderate]) -> RuleSet:
    """The input and output rules of one guardrails block, in configured order."""
    stage: ClassifierStage | None = None
    direction = "none"
    if config.classifier is not None:
        c = config.classifier
        classifier = ModerationClassifier(
            moderate_of(c.provider), model=c.model, thresholds=c.categories, timeout_s=c.timeout_s
        )
        stage = ClassifierStage(classifier, c.release, c.on_error)
        direction = c.direction
    inputs: list[Rule] = []
    outputs: list[Rule] = []
    for entry in config.detectors:
        rule = Rule(detector_of(entry), entry.action)
        if entry.direction in ("input", "both"):
            inputs.append(rule)
        if entry.direction in ("output", "both"):
            outputs.append(rule)
    return RuleSet(
        tuple(inputs),
        tuple(outputs),
        input_classifier=stage if direction in ("input", "both") else None,
        output_classifier=stage if direction in ("output", "both") else None,
    )


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
        return any(s.checks_input or s.checks_output for s in sets)


def build_guardrails(config: GatewayConfig, moderate_of: Callable[[str], Moderate]) -> Guardrails:
    """Compile every route's and tenant's guardrails; ``moderate_of(provider)`` is the
    moderation call of a provider that a classifier names."""
    return Guardrails(
        by_route={
            name: rule_set(route.guardrails, moderate_of) for name, route in config.routes.items()
        },
        by_tenant={
            t.name: rule_set(t.guardrails, moderate_of)
            for t in config.auth.tenants
            if t.guardrails is not None
        },
    )
