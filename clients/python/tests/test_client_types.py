"""The protobuf-free domain types and the public surface of the package."""

from __future__ import annotations

import dataclasses
import decimal
import json

import llmgateway_client
import pytest
from llmgateway_client import Cost, Message
from llmgateway_client._config import channel_options, service_config


def test_cost_usd_is_an_exact_decimal() -> None:
    assert Cost(total_nano_usd=42).usd == decimal.Decimal("0.000000042")
    assert Cost(total_nano_usd=1_500_000_000).usd == decimal.Decimal("1.5")
    assert f"{Cost(total_nano_usd=42).usd:.9f}" == "0.000000042"


def test_message_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role"):
        Message("tool", "hi")  # type: ignore[arg-type]


def test_message_shortcuts_set_the_role() -> None:
    assert Message.system("a") == Message("system", "a")
    assert Message.user("b", name="ann") == Message("user", "b", "ann")
    assert Message.assistant("c").role == "assistant"


def test_domain_types_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Message.user("hi").content = "changed"  # type: ignore[misc]


async def test_messages_must_be_message_instances(client: llmgateway_client.AsyncClient) -> None:
    with pytest.raises(TypeError, match="Message"):
        await client.complete("default", [{"role": "user", "content": "hi"}])  # type: ignore[list-item]


def test_service_config_retries_unavailable_only_when_enabled() -> None:
    (method,) = json.loads(service_config(retry_unavailable=True))["methodConfig"]
    assert method["name"] == [{"service": "llmgateway.v1.GatewayService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.2s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    (method,) = json.loads(service_config(retry_unavailable=False))["methodConfig"]
    assert "retryPolicy" not in method
    assert (
        dict(channel_options(retry_unavailable=False, max_message_bytes=1))["grpc.enable_retries"]
        == 0
    )


def test_public_names_are_exported_and_sorted() -> None:
    assert llmgateway_client.__all__ == sorted(llmgateway_client.__all__)
    for name in llmgateway_client.__all__:
        assert hasattr(llmgateway_client, name)
