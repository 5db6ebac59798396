"""Which guardrails a call gets: its route's, or its tenant's when the tenant has its own
(replacing the route's for every route it calls); a route without any gets none."""

from __future__ import annotations

from collections.abc import Mapping

from llmgateway_server.config import DetectorConfig, parse_config
from llmgateway_server.guardrails import detectors
from llmgateway_server.guardrails.classifier import Moderate
from llmgateway_server.guardrails.rules import build_guardrails, detector_of

CONFIG = """
auth:
  tenants:
    - {name: plain, api_key_sha256: [KEY_A]}
    - name: strict
      api_key_sha256: [KEY_B]
      guardrails: {detectors: [{kind: card, action: block, direction: output}]}
providers:
  oa: {type: openai, api_key_env: TEST_OPENAI_KEY}
targets:
  mini:
    provider: oa
    model: gpt-4o-mini
    context_window: 128000
    price: {input_per_million_usd: "0.15", output_per_million_usd: "0.60", version: v1}
routes:
  open: {targets: [mini]}
  guarded:
    targets: [mini]
    guardrails:
      detectors: [{kind: email, action: redact, direction: input}]
      classifier: {provider: oa, direction: output}
""".replace("KEY_A", "a" * 64).replace("KEY_B", "b" * 64)


def _never(name: str) -> Moderate:
    async def moderate(model: str, text: str) -> tuple[bool, Mapping[str, float]]:
        raise AssertionError("building the rules calls no classifier")

    assert name == "oa"
    return moderate


def test_a_tenants_own_guardrails_replace_the_routes() -> None:
    rails = build_guardrails(parse_config(CONFIG), _never)
    assert rails.any
    route = rails.for_call("guarded", "plain")
    assert [r.detector.label for r in route.input] == ["EMAIL"]
    assert route.output == ()
    assert route.input_classifier is None
    assert route.output_classifier is not None
    assert route.output_classifier.release == "buffer"
    for name in ("guarded", "open"):
        own = rails.for_call(name, "strict")
        assert [(r.detector.label, r.action) for r in own.output] == [("CARD", "block")]
        assert own.input == ()
        assert own.output_classifier is None
    assert not rails.for_call("open", "plain").checks_input
    assert not rails.for_call("open", "plain").checks_output


def test_a_relabelled_built_in_detector_keeps_everything_but_its_label() -> None:
    relabelled = detector_of(DetectorConfig(kind="phone", label="TEL", region="GB"))
    built = detectors.phone("GB")
    assert relabelled.label == "TEL"
    assert (relabelled.shrink, relabelled.hint, relabelled.max_length) == (
        built.shrink,
        built.hint,
        built.max_length,
    )
