"""Config files for tests: every provider pointed at one fake upstream."""

from __future__ import annotations

OPENAI_KEY = "sk-test-openai-0123456789abcdefXYZ"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdefXYZ"
ENV = {"TEST_OPENAI_KEY": OPENAI_KEY, "TEST_ANTHROPIC_KEY": ANTHROPIC_KEY}


def providers_config(base_url: str, *, routes: str = "", targets: str = "", extra: str = "") -> str:
    """Providers openai, anthropic, compat (OpenAI-compatible, keyless) and mock, one
    target and one route for each, plus any extra targets and routes."""
    return f"""
server:
  default_deadline_s: 30
auth:
  anonymous_tenant: local
providers:
  openai:
    type: openai
    base_url: {base_url}/v1
    api_key_env: TEST_OPENAI_KEY
  anthropic:
    type: anthropic
    base_url: {base_url}
    api_key_env: TEST_ANTHROPIC_KEY
  compat:
    type: openai_compatible
    base_url: {base_url}/v1
  mock:
    type: mock
targets:
  gpt:
    provider: openai
    model: gpt-4o-mini
    context_window: 128000
    price:
      input_per_million_usd: "0.15"
      output_per_million_usd: "0.60"
      cached_input_per_million_usd: "0.075"
      version: "openai-test"
  claude:
    provider: anthropic
    model: claude-haiku
    context_window: 200000
    price: {{input_per_million_usd: "1", output_per_million_usd: "5", version: "anthropic-test"}}
  llama:
    provider: compat
    model: llama-3
    context_window: 8192
  echo:
    provider: mock
    model: mock-echo
    context_window: 8192
{targets}
routes:
  gpt:
    targets: [gpt]
  claude:
    targets: [claude]
  llama:
    targets: [llama]
  echo:
    targets: [echo]
{routes}
{extra}
"""
