"""The authenticator: exact keys, a strict ``Bearer <key>`` form, messages that never echo
the value sent, and route permissions."""

from __future__ import annotations

import hashlib

import pytest
from llmgateway_server.auth import MALFORMED, MISSING, UNKNOWN, Authenticator
from llmgateway_server.errors import AuthenticationFailed, ModelNotAllowed

KEY = "gw-team-a-Secret_key.0123~+/="
OTHER_KEY = "gw-team-b-secret-key"


def _authenticator(anonymous: str | None = None) -> Authenticator:
    return Authenticator(
        {
            hashlib.sha256(KEY.encode()).hexdigest(): "team-a",
            hashlib.sha256(OTHER_KEY.encode()).hexdigest(): "team-b",
        },
        {"team-a": ["*"], "team-b": ["echo"]},
        anonymous,
    )


async def _refusal(value: str | None, anonymous: str | None = None) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        await _authenticator(anonymous).authenticate(value)
    return info.value


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_exact_key_authenticates_with_the_scheme_in_any_case(scheme: str) -> None:
    assert (await _authenticator().authenticate(f"{scheme} {KEY}")).tenant == "team-a"
    assert (await _authenticator().authenticate(f"{scheme} {OTHER_KEY}")).tenant == "team-b"


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {KEY}\xa0",  # NBSP: str.strip() removed it, so this used to be team-a
        f"Bearer {KEY}\u2009",  # thin space
        f"Bearer {KEY}\u200b",  # zero-width space: not whitespace, not ASCII either
        f"Bearer {KEY}\xc2\xa0",  # the NBSP's UTF-8 bytes, as delivered when not UTF-8
        f"Bearer {KEY} ",
        f"Bearer {KEY}\t",
        f"Bearer {KEY}\n",
        f"Bearer {KEY}\x01",
        f"Bearer {KEY}\x7f",
        f"Bearer  {KEY}",  # two spaces
        f"Bearer\t{KEY}",
        f"Bearer\xa0{KEY}",
        f" Bearer {KEY}",
        f"Bearer {KEY[:5]} {KEY[5:]}",
        f"Bearer {KEY[:5]}\x00{KEY[5:]}",
        "Bearer ",
        "Bearer",
        KEY,
        f"Basic {KEY}",
        f"Bearer{KEY}",
        f"Bearer: {KEY}",
        f"Ｂearer {KEY}",  # a fullwidth B
        f"Bearer {KEY.replace('a', 'а')}",  # a Cyrillic а in the key
    ],
)
async def test_any_other_spelling_of_a_key_is_refused_without_echoing_it(value: str) -> None:
    failure = await _refusal(value)
    assert failure.message == MALFORMED
    assert failure.reason == "API_KEY_INVALID"
    assert KEY not in str(failure)
    assert KEY[:8] not in failure.message
    assert not failure.metadata


async def test_a_malformed_value_is_refused_even_when_anonymous_callers_are_admitted() -> None:
    assert (await _refusal(f"Bearer {KEY} ", anonymous="local")).message == MALFORMED


@pytest.mark.parametrize("value", [f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Bearer {KEY.upper()}"])
async def test_a_near_miss_is_an_unknown_key(value: str) -> None:
    failure = await _refusal(value)
    assert failure.message == UNKNOWN
    assert value.split(" ", 1)[1] not in str(failure)


@pytest.mark.parametrize("value", [None, ""])
async def test_no_value_is_the_anonymous_tenant_or_missing(value: str | None) -> None:
    assert (await _authenticator("local").authenticate(value)).tenant == "local"
    assert (await _refusal(value)).message == MISSING


def test_route_permissions_follow_the_tenant() -> None:
    auth = _authenticator("local")
    assert auth.may_use("team-a", "anything")
    assert auth.may_use("local", "anything")
    assert auth.may_use("team-b", "echo")
    assert not auth.may_use("team-b", "gpt")
    assert not auth.may_use("nobody", "echo")
    with pytest.raises(ModelNotAllowed) as info:
        auth.check_route("team-b", "gpt")
    assert info.value.metadata == {"model": "gpt", "tenant": "team-b"}
