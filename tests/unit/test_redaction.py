"""Every configured secret leaves a log line redacted, whatever its shape and wherever it
sits in the record; credentials recognisable by their context go too; lines stay JSON."""

from __future__ import annotations

import json
import logging
import sys
import urllib.parse
from typing import Any

import pytest
from llmgateway_server.observability import JsonFormatter, Redactor

# Shapes a pattern-based scrubber misses: short, punctuated, hex, UUID, quotes and
# backslashes (escaped differently by JSON and by repr), non-ASCII.
SECRETS = [
    "k3y!",
    "0123456789ab",
    "123e4567-e89b-12d3-a456-426614174000",
    "sk-ant-api03-Zx9_q-" + "A1b2C3d4" * 8,
    "tenant-K3y#1",
    'q"uo\\te',
    "it's-a-key",
    "clé-secrète-Ω",
]


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("test.logger", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def _forms(secret: str) -> list[str]:
    """How the secret could be read out of a line: as itself, inside a str repr, a bytes
    repr, a URL."""
    return [
        secret,
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        urllib.parse.quote(secret, safe=""),
    ]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _assert_clean(line: str, secret: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(line)  # still one valid JSON object
    texts = [line, *_strings(entry)]
    for form in _forms(secret):
        for text in texts:
            assert form not in text, f"{form!r} left in {text!r}"
    assert "[REDACTED]" in line
    return entry


def _placements(secret: str) -> dict[str, logging.LogRecord]:
    url = "https://up.test/v1?key=" + urllib.parse.quote(secret, safe="")
    return {
        "message argument": _record("key is %s", secret),
        "message text": _record(f"key is {secret}."),
        "extra field": _record("x", key_hint=secret),
        "nested extra": _record("x", headers={"list": ["a", secret], "n": {"k": secret}}),
        "headers tuple repr": _record("sent %s", (("x-api-key", secret), ("accept", "*/*"))),
        "grpc bytes repr": _record("Invalid encoding on %s", f"Bearer {secret}\xa0".encode()),
        "url": _record("calling %s", url),
    }


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    "placement",
    [
        "message argument",
        "message text",
        "extra field",
        "nested extra",
        "headers tuple repr",
        "grpc bytes repr",
        "url",
    ],
)
def test_configured_secret_is_redacted_wherever_it_sits(secret: str, placement: str) -> None:
    formatter = JsonFormatter(SECRETS)
    _assert_clean(formatter.format(_placements(secret)[placement]), secret)


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_in_an_exception_is_redacted(secret: str) -> None:
    try:
        raise ValueError(f"upstream refused key {secret}")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    entry = _assert_clean(JsonFormatter(SECRETS).format(record), secret)
    assert "Traceback" in entry["exc"]
    assert "ValueError: upstream refused key [REDACTED]" in entry["exc"]


def test_a_secret_containing_another_is_removed_whole() -> None:
    redact = Redactor(["abc123", "abc123def456"])
    assert redact("k=abc123def456 and abc123") == "k=[REDACTED] and [REDACTED]"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("Authorization: Bearer unknown.token-1", "unknown.token-1"),
        ("calling with bearer XyZunknown", "XyZunknown"),
        ("x-api-key: unknown-anthropic-key", "unknown-anthropic-key"),
        ("api_key=unknown-query-key", "unknown-query-key"),
        ("headers {'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ('sent (("x-api-key", "tuplekey"),)', "tuplekey"),
        ("Invalid encoding on b'Bearer grpcToken\\xa0'", "grpcToken"),
        ('proxy-authorization: Basic "quoted\\"tok"', "tok"),
    ],
)
def test_credentials_recognised_by_context_are_redacted(text: str, token: str) -> None:
    line = JsonFormatter().format(_record("%s", text))
    entry = json.loads(line)
    assert token not in line
    assert token not in entry["msg"]
    assert "[REDACTED]" in entry["msg"]


def test_context_redaction_keeps_the_line_valid_json() -> None:
    record = _record("auth", authorization='Bearer a"b\\c', other="kept")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["authorization"].startswith("Bearer [REDACTED]")
    assert entry["other"] == "kept"


def test_a_line_without_secrets_is_unchanged() -> None:
    record = _record(
        "rpc finished %s in %.1f ms", "OK", 12.25, tenant="team-a", tags={"feature": "x"}
    )
    plain = JsonFormatter().format(record)
    assert JsonFormatter(SECRETS).format(record) == plain
    entry = json.loads(plain)
    assert entry["msg"] == "rpc finished OK in 12.2 ms"
    assert (entry["tenant"], entry["tags"]) == ("team-a", {"feature": "x"})
    assert (entry["level"], entry["logger"]) == ("info", "test.logger")


def test_empty_secrets_are_ignored() -> None:
    assert Redactor(["", "k3y!"])("a k3y! b") == "a [REDACTED] b"
