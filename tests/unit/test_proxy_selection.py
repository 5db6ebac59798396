"""Which proxy a provider uses: the ``proxy``/``trust_env`` settings, the environment's
variables and NO_PROXY's rules (providers/proxy.py, config.resolve_proxies)."""

from __future__ import annotations

import pytest
from llmgateway_server.config import parse_config, resolve_proxies
from llmgateway_server.errors import ConfigError
from llmgateway_server.providers.proxy import bypasses_proxy, environment_proxy


def config_text(base_url: str, extra: str) -> str:
    return f"""
providers:
  up:
    type: openai_compatible
    base_url: {base_url}
{extra}
targets:
  t: {{provider: up, model: m, context_window: 1000}}
routes:
  r: {{targets: [t]}}
auth: {{anonymous_tenant: local}}
"""


@pytest.mark.parametrize(
    ("host", "port", "no_proxy"),
    [
        ("api.example.com", 443, "*"),
        ("example.com", 443, "example.com"),
        ("api.example.com", 443, "example.com"),
        ("api.example.com", 443, ".example.com"),
        ("API.Example.COM", 443, "other.org, EXAMPLE.com"),
        ("api.example.com", 443, "other.org example.com"),
        ("api.example.com", 8443, "api.example.com:8443"),
        ("10.1.2.3", 443, "10.1.2.3"),
        ("10.1.2.3", 443, "10.0.0.0/8"),
        ("::1", 443, "::1"),
        ("::1", 443, "[::1]"),
        ("::1", 8443, "[::1]:8443"),
        ("fd00::5", 443, "fd00::/8"),
        ("vllm.internal.", 443, "internal"),
    ],
)
def test_no_proxy_entries_that_exempt_a_host(host: str, port: int, no_proxy: str) -> None:
    assert bypasses_proxy(host, port, no_proxy)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy"),
    [
        ("api.example.com", 443, ""),
        ("notexample.com", 443, "example.com"),
        ("example.com.evil.org", 443, "example.com"),
        ("api.example.com", 443, "api.example.com:8443"),
        ("11.1.2.3", 443, "10.0.0.0/8"),
        ("10.1.2.3", 443, "10.1.2.4"),
        ("api.example.com", 443, "10.0.0.0/8"),  # names are not resolved for IP entries
        ("::2", 443, "::1"),
        ("api.example.com", 443, "*.example.com.invalid"),
    ],
)
def test_no_proxy_entries_that_do_not_exempt_a_host(host: str, port: int, no_proxy: str) -> None:
    assert not bypasses_proxy(host, port, no_proxy)


def test_the_variable_for_the_scheme_wins_over_all_proxy_and_lower_case_over_upper() -> None:
    environ = {
        "HTTPS_PROXY": "http://upper:1",
        "https_proxy": "http://lower:2",
        "ALL_PROXY": "http://all:3",
        "http_proxy": "http://plain:4",
    }
    chosen = environment_proxy("https://api.openai.com/v1", environ)
    assert chosen is not None
    assert (chosen.host, chosen.port) == ("lower", 2)
    plain = environment_proxy("http://vllm:8000/v1", environ)
    assert plain is not None
    assert plain.host == "plain"
    only_all = environment_proxy("https://api.openai.com/v1", {"ALL_PROXY": "all:3128"})
    assert only_all is not None
    assert (only_all.host, only_all.port) == ("all", 3128)
    assert environment_proxy("https://api.openai.com/v1", {"http_proxy": "http://p:1"}) is None


def test_trust_env_reads_the_environment_only_for_providers_that_set_it() -> None:
    environ = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "vllm.internal"}
    trusting = parse_config(config_text("https://api.openai.com/v1", "    trust_env: true"))
    assert str(resolve_proxies(trusting, environ)["up"]) == (
        "ProxyRoute(url='http://proxy.corp:3128')"
    )
    not_trusting = parse_config(config_text("https://api.openai.com/v1", ""))
    assert resolve_proxies(not_trusting, environ) == {"up": None}
    exempt = parse_config(config_text("https://vllm.internal/v1", "    trust_env: true"))
    assert resolve_proxies(exempt, environ) == {"up": None}


def test_proxy_credentials_are_a_secret_kept_out_of_reprs() -> None:
    config = parse_config(config_text("https://api.openai.com/v1", "    trust_env: true"))
    route = resolve_proxies(config, {"https_proxy": "http://me:hunter2@proxy:3128"})["up"]
    assert route is not None
    assert route.authorization is not None
    assert route.authorization.reveal() == "Basic bWU6aHVudGVyMg=="
    assert "hunter2" not in repr(route)
    assert "bWU6aHVudGVyMg" not in repr(route)
    assert "hunter2" not in repr(route.authorization)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    proxy: http://me:hunter2@proxy:3128", "credentials in a proxy URL"),
        ("    proxy: socks5://proxy:1080", "only http:// proxies"),
        ("    proxy: https://proxy:3128", "only http:// proxies"),
        ("    proxy: http://proxy:3128/path", "scheme, host and port only"),
        ("    proxy: http://proxy:3128\n    trust_env: true", "proxy or trust_env"),
        ("    client_key: /etc/key.pem", "client_key needs client_cert"),
    ],
)
def test_invalid_upstream_http_settings_are_refused_naming_the_provider(
    extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(config_text("https://api.openai.com/v1", extra))
    assert "providers.up" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_an_unusable_proxy_variable_stops_start_up_without_echoing_it() -> None:
    config = parse_config(config_text("https://api.openai.com/v1", "    trust_env: true"))
    with pytest.raises(ConfigError, match="HTTPS_PROXY: only http://") as info:
        resolve_proxies(config, {"HTTPS_PROXY": "socks5://me:hunter2@proxy:1080"})
    assert "hunter2" not in str(info.value)
    assert "providers.up.trust_env" in str(info.value)
