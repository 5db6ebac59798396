"""The config is strict, names the path of every problem, and never holds a literal key."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from llmgateway_server.config import (
    load_config,
    parse_config,
    resolve_secrets,
    secret_values,
    usd_to_nano,
)
from llmgateway_server.errors import ConfigError

BASE = """
auth:
  anonymous_tenant: local
providers:
  oa:
    type: openai
    api_key_env: TEST_OPENAI_KEY
targets:
  mini:
    provider: oa
    model: gpt-4o-mini
    context_window: 128000
    price: {input_per_million_usd: "0.15", output_per_million_usd: "0.60", version: v1}
routes:
  default:
    targets: [mini]
"""


def test_embedded_default_config_is_valid_and_offline() -> None:
    config = load_config(None)
    assert {p.type for p in config.providers.values()} == {"mock"}
    assert "default" in config.routes
    assert resolve_secrets(config, environ={}) == ({"mock": None}, {})


def test_unknown_key_is_rejected_with_its_path() -> None:
    text = BASE.replace(
        "    targets: [mini]", "    targets: [mini]\n    retires: {max_attempts: 2}"
    )
    with pytest.raises(ConfigError, match=r"routes\.default\.retires: unknown key"):
        parse_config(text)


def test_mistyped_value_is_rejected_with_its_path() -> None:
    text = BASE.replace("context_window: 128000", "context_window: lots")
    with pytest.raises(ConfigError, match=r"targets\.mini\.context_window"):
        parse_config(text)


def test_nested_unknown_key_in_provider_names_the_provider() -> None:
    text = BASE.replace(
        "api_key_env: TEST_OPENAI_KEY", "api_key_env: TEST_OPENAI_KEY\n    base_ulr: x"
    )
    with pytest.raises(ConfigError, match=r"providers\.oa\.base_ulr: unknown key"):
        parse_config(text)


def test_literal_api_key_field_is_rejected() -> None:
    text = BASE.replace("api_key_env: TEST_OPENAI_KEY", "api_key: abc")
    with pytest.raises(
        ConfigError, match=r"providers\.oa\.api_key: literal secrets are not allowed"
    ):
        parse_config(text)


def test_value_shaped_like_a_key_is_rejected_wherever_it_is() -> None:
    text = BASE.replace("model: gpt-4o-mini", "model: sk-proj-abcdefghijklmnopqrstuvwx")
    with pytest.raises(
        ConfigError, match=r"targets\.mini\.model: looks like a literal API key"
    ) as info:
        parse_config(text)
    assert "abcdefghijklmnop" not in str(info.value)


def test_missing_key_variable_fails_naming_the_variable_not_a_value() -> None:
    config = parse_config(BASE)
    with pytest.raises(ConfigError, match="environment variable TEST_OPENAI_KEY is not set"):
        resolve_secrets(config, environ={})


def test_key_from_env_is_resolved_and_hidden_in_repr() -> None:
    config = parse_config(BASE)
    keys, _ = resolve_secrets(config, environ={"TEST_OPENAI_KEY": "sk-live-value-123456"})
    secret = keys["oa"]
    assert secret is not None
    assert secret.reveal() == "sk-live-value-123456"
    assert "sk-live" not in repr(secret)
    assert "sk-live" not in str(keys)


def test_key_from_file_is_resolved(tmp_path: Path) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text("file-secret-value\n")
    config = parse_config(BASE.replace("api_key_env: TEST_OPENAI_KEY", f"api_key_file: {key_file}"))
    keys, _ = resolve_secrets(config, environ={})
    assert keys["oa"] is not None
    assert keys["oa"].reveal() == "file-secret-value"


def test_unknown_target_in_route_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown target 'maxi'"):
        parse_config(BASE.replace("targets: [mini]", "targets: [maxi]"))


def test_price_with_sub_nano_precision_is_rejected() -> None:
    with pytest.raises(ConfigError, match="more precision than 1e-9 USD"):
        parse_config(BASE.replace('"0.15"', '"0.0000000001"'))


def test_prices_parse_exactly_into_nano_usd() -> None:
    assert usd_to_nano("0.15", what="x") == 150_000_000
    assert usd_to_nano("2.5", what="x") == 2_500_000_000
    assert usd_to_nano("0.000000001", what="x") == 1


def test_tenant_keys_from_digests_and_env_map_to_tenants() -> None:
    digest = hashlib.sha256(b"team-a-key").hexdigest()
    text = BASE.replace(
        "  anonymous_tenant: local",
        f"  tenants:\n    - name: team-a\n      api_key_sha256: [{digest}]\n"
        "    - name: team-b\n      api_key_env: TEAM_B_KEY\n      routes: [default]",
    )
    config = parse_config(text)
    _, tenants = resolve_secrets(
        config, environ={"TEST_OPENAI_KEY": "k" * 20, "TEAM_B_KEY": "b-key"}
    )
    assert tenants[digest] == "team-a"
    assert tenants[hashlib.sha256(b"b-key").hexdigest()] == "team-b"


def test_config_without_any_way_in_is_rejected() -> None:
    with pytest.raises(ConfigError, match="configure tenants"):
        parse_config(BASE.replace("  anonymous_tenant: local", "  tenants: []"))


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("failure_ratio: 0", "failure_ratio"),
        ("failure_ratio: 1.5", "failure_ratio"),
        ("failure_ratio: 0.5, window_s: 0", "window_s"),
        ("failure_ratio: 0.5, min_calls: 0", "min_calls"),
    ],
)
def test_circuit_breaker_ratio_settings_out_of_range_name_their_path(
    setting: str, field: str
) -> None:
    text = BASE.replace(
        "    context_window: 128000",
        f"    context_window: 128000\n    circuit_breaker: {{{setting}}}",
    )
    with pytest.raises(ConfigError, match=rf"targets\.mini\.circuit_breaker\.{field}:"):
        parse_config(text)


def test_circuit_breaker_is_a_target_setting_and_a_route_one_says_where_it_goes() -> None:
    text = BASE.replace(
        "    targets: [mini]", "    targets: [mini]\n    circuit_breaker: {failure_threshold: 3}"
    )
    with pytest.raises(ConfigError, match=r"routes\.default: .*targets\.<name>\.circuit_breaker"):
        parse_config(text)


def test_circuit_breaker_ratio_settings_parse_and_default_off() -> None:
    text = BASE.replace(
        "    context_window: 128000",
        "    context_window: 128000\n"
        "    circuit_breaker: {failure_ratio: 0.5, window_s: 60, min_calls: 50}",
    )
    breaker = parse_config(text).targets["mini"].circuit_breaker
    assert breaker is not None
    assert (breaker.failure_ratio, breaker.window_s, breaker.min_calls) == (0.5, 60.0, 50)
    defaults = parse_config(BASE).defaults.circuit_breaker
    assert defaults.failure_ratio is None
    assert (defaults.failure_threshold, defaults.cooldown_s) == (5, 30.0)


def test_every_referenced_secret_value_is_handed_to_the_log_redactor() -> None:
    text = BASE.replace(
        "  anonymous_tenant: local",
        "  tenants:\n    - name: team\n      api_key_env: TEAM_KEY",
    )
    text = text.replace(
        "    api_key_env: TEST_OPENAI_KEY", "    api_key_env: TEST_OPENAI_KEY\n    trust_env: true"
    )
    environ = {
        "TEST_OPENAI_KEY": "k3y!",
        "TEAM_KEY": "tenant-key-1",
        "HTTPS_PROXY": "http://egress:pr0xy-pass@proxy.internal:3128",
    }
    values = secret_values(parse_config(text), environ=environ)
    basic = base64.b64encode(b"egress:pr0xy-pass").decode()
    assert sorted(values) == sorted(["k3y!", "tenant-key-1", basic, "pr0xy-pass"])


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        ("{kind: regex, label: T, pattern: 'TKT-[0-9', max_length: 9}", "pattern does not compile"),
        ("{kind: regex, label: TICKET, pattern: 'TKT-[0-9]+'}", "max_length is required"),
        ("{kind: regex, pattern: 'x', max_length: 1}", "needs a label"),
        ("{kind: keywords, label: WORDS}", "words is the setting of a keywords detector"),
        ("{kind: email, words: [a]}", "words is the setting of a keywords detector"),
        ("{kind: email, action: hide}", "action"),
        ("{kind: email, label: lower}", "label"),
    ],
)
def test_a_guardrail_that_cannot_work_is_a_config_error(detector: str, message: str) -> None:
    text = BASE.replace(
        "    targets: [mini]", f"    targets: [mini]\n    guardrails: {{detectors: [{detector}]}}"
    )
    with pytest.raises(ConfigError, match=rf"routes\.default\.guardrails\.detectors\.0.*{message}"):
        parse_config(text)
