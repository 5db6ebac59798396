"""A failed attempt's detail carries the gateway's classification, never upstream text.

Each adapter is driven through httpx.MockTransport by an upstream whose error repeats the
request's headers, in its message and (a hostile one) in its error type/code, as an HTTP
error and as an error event inside a stream: the ProviderError that reaches the router
(and, from there, callers and logs) holds the status, the failure class and a safe error
token, and not one character of the key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from llmgateway_server.errors import ProviderError
from llmgateway_server.providers.anthropic import AnthropicProvider
from llmgateway_server.providers.base import error_token, http_error
from llmgateway_server.providers.http import UpstreamClient
from llmgateway_server.providers.openai import OpenAIProvider
from llmgateway_server.secrets import Secret
from llmgateway_server.types import ChatMessage, FailureClass, Role, UpstreamCall

# Keys of shapes a pattern-based scrubber would miss: short, punctuated, hex, UUID.
KEYS = ["k3y!", "0123456789ab", "123e4567-e89b-12d3-a456-426614174000", "sk-ant-api03-Zx9_q"]
CALL = UpstreamCall(
    upstream_model="m",
    messages=[ChatMessage(Role.USER, "hi")],
    max_tokens=5,
    temperature=None,
    top_p=None,
    stop=(),
    timeout_s=5.0,
)
Handler = Callable[[httpx.Request], httpx.Response]


def _key_sent(request: httpx.Request) -> str:
    return request.headers.get("x-api-key") or request.headers["authorization"][7:]


def _headers_text(request: httpx.Request) -> str:
    return "; ".join(f"{k}: {v}" for k, v in request.headers.items())


def _provider(kind: str, key: str, handler: Handler) -> OpenAIProvider | AnthropicProvider:
    client = UpstreamClient(httpx.MockTransport(handler), connect_timeout_s=5.0)
    secret = Secret(key, source="test")
    if kind == "openai":
        return OpenAIProvider("openai", client, base_url="http://up.test/v1", api_key=secret)
    return AnthropicProvider("anthropic", client, base_url="http://up.test", api_key=secret)


def _error_body(kind: str, message: str, code: str | None) -> dict[str, Any]:
    if kind == "openai":
        return {"error": {"message": message, "type": code, "param": None, "code": code}}
    return {"type": "error", "error": {"type": code, "message": message}}


async def _drain(provider: OpenAIProvider | AnthropicProvider, *, stream: bool) -> None:
    if stream:
        async for _ in provider.stream(CALL):
            pass
    else:
        await provider.complete(CALL)


async def _fail(provider: OpenAIProvider | AnthropicProvider, *, stream: bool) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await _drain(provider, stream=stream)
    return caught.value


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_http_error_echoing_headers_shows_only_the_classification(
    kind: str, key: str, stream: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = _error_body(kind, "Bad request. " + _headers_text(request), "invalid_request_error")
        return httpx.Response(400, json=body)

    error = await _fail(_provider(kind, key, handler), stream=stream)
    assert error.message == f"{kind}: HTTP 400 BAD_REQUEST invalid_request_error"
    assert error.failure_class is FailureClass.BAD_REQUEST
    assert key not in str(error)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("key", KEYS)
async def test_key_echoed_as_the_error_code_is_not_shown(kind: str, key: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=_error_body(kind, "no", _key_sent(request)))

    error = await _fail(_provider(kind, key, handler), stream=False)
    assert error.message == f"{kind}: HTTP 400 BAD_REQUEST"
    assert key not in error.message


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("into_code", [False, True], ids=["message", "code"])
async def test_stream_error_event_echoing_headers_shows_only_the_classification(
    kind: str, key: str, into_code: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        code = _key_sent(request) if into_code else "overloaded_error"
        error = json.dumps(_error_body(kind, "Overloaded. " + _headers_text(request), code))
        sse = f"event: error\ndata: {error}\n\n" if kind == "anthropic" else f"data: {error}\n\n"
        return httpx.Response(
            200, content=sse.encode(), headers={"content-type": "text/event-stream"}
        )

    error = await _fail(_provider(kind, key, handler), stream=True)
    shown = "" if into_code else " overloaded_error"
    assert error.message == f"{kind}: stream error TRANSIENT{shown}"
    assert key not in error.message


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_classification_still_reads_the_upstream_message(kind: str) -> None:
    # The message is not shown, but it still decides the class (context too long here).
    message = (
        "This model's maximum context length is 10 tokens."
        if kind == "openai"
        else "prompt is too long: 20 tokens > 10 maximum"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=_error_body(kind, message, "invalid_request_error"))

    error = await _fail(_provider(kind, "k3y!", handler), stream=False)
    assert error.failure_class is FailureClass.CONTEXT_TOO_LONG
    assert error.message == f"{kind}: HTTP 400 CONTEXT_TOO_LONG invalid_request_error"


async def test_plain_text_error_body_is_classified_and_not_shown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="upstream said: " + _headers_text(request))

    error = await _fail(_provider("openai", "k3y!", handler), stream=False)
    assert error.message == "openai: HTTP 503 TRANSIENT"
    assert error.failure_class is FailureClass.TRANSIENT


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("rate_limit_error", "rate_limit_error"),
        ("context_length_exceeded", "context_length_exceeded"),
        ("model.not-found_2", "model.not-found_2"),
        (429, "429"),
        ("has space", ""),
        ("quote'd", ""),
        ("x" * 65, ""),
        ("", ""),
        (None, ""),
        (True, ""),
        ({"nested": "dict"}, ""),
        ("naïve", ""),
    ],
)
def test_error_token_shows_short_tokens_only(code: object, shown: str) -> None:
    assert error_token(code) == shown


def test_error_token_never_shows_the_key_or_part_of_it() -> None:
    key = "0123456789ab"
    assert error_token(key, api_key=key) == ""
    assert error_token("0123", api_key=key) == ""  # a prefix of the key
    assert error_token(f"err_{key}", api_key=key) == ""  # the key inside the token
    assert error_token("rate_limit_error", api_key=key) == "rate_limit_error"


def test_credential_errors_are_classified_without_the_message() -> None:
    error = http_error(
        401, {}, provider="openai", code="invalid_api_key", message="Incorrect API key: k3y!"
    )
    assert error.failure_class is FailureClass.CREDENTIAL
    assert error.message == "openai: HTTP 401 CREDENTIAL invalid_api_key"
