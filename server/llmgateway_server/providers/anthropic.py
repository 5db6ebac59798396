"""Anthropic Messages API: system prompt as a top-level field, SSE typed events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, NoReturn

import httpx
import orjson

from llmgateway_server.errors import ProviderError
from llmgateway_server.providers import anthropic_request
from llmgateway_server.providers.base import (
    JSON_HEADERS,
    classify_status,
    encode_json,
    error_token,
    failure_detail,
    is_json,
    malformed,
    post_json,
    raise_for_status,
    replay,
    transport_error,
)
from llmgateway_server.providers.http import UpstreamClient, body_stream, read_body
from llmgateway_server.providers.sse import SSEDecodeError, iter_sse
from llmgateway_server.providers.tool_calls import ToolCallAssembler, finished_call
from llmgateway_server.secrets import Secret
from llmgateway_server.types import (
    FailureClass,
    FinishReason,
    StreamItem,
    TextDelta,
    UpstreamCall,
    UpstreamResult,
    Usage,
)

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "refusal": FinishReason.REFUSAL,
    "tool_use": FinishReason.TOOL_CALLS,
    "pause_turn": FinishReason.OTHER,
}
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_INPUT_USAGE = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
)
_MALFORMED = (SSEDecodeError, UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError)


def _usage(raw: dict[str, Any], output_tokens: int | None = None) -> Usage:
    """Anthropic's usage in the gateway's terms: its ``input_tokens`` exclude cache reads
    and writes already, and ``cache_creation`` splits the writes by TTL."""
    written = int(raw.get("cache_creation_input_tokens") or 0)
    by_ttl = raw.get("cache_creation")
    written_1h = (
        int(by_ttl.get("ephemeral_1h_input_tokens") or 0) if isinstance(by_ttl, dict) else 0
    )
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0)
        if output_tokens is None
        else output_tokens,
        cached_input_tokens=int(raw.get("cache_read_input_tokens") or 0),
        cache_write_tokens=written,
        cache_write_1h_tokens=min(written, written_1h),
    )


def _result(data: Any, model: str) -> UpstreamResult:
    """A whole (non-streaming) message; KeyError/TypeError/... when malformed."""
    blocks = data["content"]
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    return UpstreamResult(
        content=text,
        finish_reason=_FINISH.get(data.get("stop_reason"), FinishReason.OTHER),
        usage=_usage(data.get("usage") or {}),
        upstream_model=str(data.get("model") or model),
        tool_calls=tuple(
            finished_call(str(block["name"]), orjson.dumps(block.get("input") or {}).decode())
            for block in blocks
            if block.get("type") == "tool_use"
        ),
    )


class AnthropicProvider:
    """Adapter for POST {base_url}/v1/messages, JSON and SSE."""

    def __init__(
        self,
        name: str,
        client: UpstreamClient,
        *,
        base_url: str,
        api_key: Secret,
        anthropic_version: str = "2023-06-01",
    ) -> None:
        self.name = name
        self._client = client
        self._url = httpx.URL(base_url.rstrip("/") + "/v1/messages")
        # Kept only to make sure an error type echoing it is never shown (base.error_token).
        self._api_key = api_key.reveal()
        self._headers = (
            *JSON_HEADERS,
            ("x-api-key", self._api_key),
            ("anthropic-version", anthropic_version),
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, url={self._url!r})"

    @staticmethod
    def _body(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        return anthropic_request.body(call, stream=stream)

    async def complete(self, call: UpstreamCall) -> UpstreamResult:
        """Non-streaming message."""
        data = await post_json(
            self._client,
            self._url,
            self._body(call, stream=False),
            headers=self._headers,
            timeout_s=call.timeout_s,
            provider=self.name,
            api_key=self._api_key,
        )
        try:
            return _result(data, call.upstream_model)
        except (*_MALFORMED, AttributeError) as exc:
            raise malformed(self.name, exc) from None

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[StreamItem, None]:
        """Streaming message; ends with one UpstreamResult.

        A server that ignores ``stream`` and answers one JSON message (LiteLLM's
        Anthropic-compatible endpoint does for mocked models) is relayed as one delta and
        the result.
        """
        parts: list[str] = []
        tools = ToolCallAssembler()
        start_usage: dict[str, Any] = {}
        output_tokens: int | None = None
        finish = FinishReason.OTHER
        model = call.upstream_model
        stopped = False
        whole: UpstreamResult | None = None
        try:
            async with (
                self._client.post(
                    self._url,
                    headers=self._headers,
                    body=encode_json(self._body(call, stream=True)),
                    timeout_s=call.timeout_s,
                ) as response,
                aclosing(iter_sse(body_stream(response))) as events,
            ):
                await raise_for_status(response, provider=self.name, api_key=self._api_key)
                if is_json(response):
                    whole = _result(orjson.loads(await read_body(response)), model)
                else:
                    async for event, data in events:
                        if event == "content_block_delta":
                            payload = orjson.loads(data)
                            delta = payload["delta"]
                            kind = delta.get("type")
                            if kind == "text_delta" and delta.get("text"):
                                parts.append(delta["text"])
                                yield TextDelta(delta["text"])
                            elif kind == "input_json_delta" and delta.get("partial_json"):
                                # The first fragment is "" (skipped): never an argument.
                                fragment = tools.feed(
                                    int(payload["index"]), None, None, delta["partial_json"]
                                )
                                if fragment is not None:
                                    yield fragment
                        elif event == "content_block_start":
                            payload = orjson.loads(data)
                            block = payload["content_block"]
                            if block.get("type") == "tool_use":
                                # Its "input": {} is a placeholder, never an argument.
                                fragment = tools.feed(
                                    int(payload["index"]), None, str(block["name"]), ""
                                )
                                if fragment is not None:
                                    yield fragment
                        elif event == "message_start":
                            message = orjson.loads(data)["message"]
                            start_usage = message.get("usage") or {}
                            model = message.get("model") or model
                        elif event == "message_delta":
                            payload = orjson.loads(data)
                            reason = (payload.get("delta") or {}).get("stop_reason")
                            if reason:
                                finish = _FINISH.get(reason, FinishReason.OTHER)
                            if payload.get("usage"):
                                late = payload["usage"]
                                output_tokens = int(late.get("output_tokens") or 0)
                                # Newer streams repeat (cumulative) input-side counts here.
                                for key in _INPUT_USAGE:
                                    if late.get(key) is not None:
                                        start_usage[key] = late[key]
                        elif event == "message_stop":
                            stopped = True
                            break
                        elif event == "error":
                            self._stream_error(orjson.loads(data).get("error"))
                        # ping, content_block_start/stop and unknown events carry nothing
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None
        except (*_MALFORMED, AttributeError) as exc:
            raise malformed(self.name, exc) from None
        if whole is not None:
            for item in replay(whole):
                yield item
            return
        if not stopped:
            raise ProviderError(FailureClass.TRANSIENT, f"{self.name}: stream ended early")
        for item in tools.close():
            yield item
        yield UpstreamResult(
            content="".join(parts),
            finish_reason=finish,
            usage=_usage(start_usage, output_tokens) if start_usage or output_tokens else None,
            upstream_model=model,
            tool_calls=tools.calls(),
        )

    def _stream_error(self, error: Any) -> NoReturn:
        """An ``error`` event inside the stream: classified by its type, which is the only
        part of it shown; its message never is."""
        kind = error.get("type") if isinstance(error, dict) else None
        token = error_token(kind, api_key=self._api_key)
        failure = classify_status(_ERROR_STATUS.get(token, 500), code=token)
        raise ProviderError(failure, failure_detail(self.name, failure, code=token))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
