"""OpenAI Chat Completions, and any server that speaks it (vLLM, Ollama, LM Studio)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, NoReturn

import httpx
import orjson

from llmgateway_server.errors import ProviderError
from llmgateway_server.providers.base import (
    JSON_HEADERS,
    encode_json,
    error_token,
    failure_detail,
    is_json,
    malformed,
    post_json,
    raise_for_status,
    transport_error,
)
from llmgateway_server.providers.http import UpstreamClient, body_stream, read_body
from llmgateway_server.providers.sse import SSEDecodeError, iter_sse
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
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.OTHER,
    "function_call": FinishReason.OTHER,
}
_MALFORMED = (SSEDecodeError, UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    details = raw.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=cached,
    )


def _finish(value: Any) -> FinishReason:
    return _FINISH.get(value, FinishReason.OTHER) if value else FinishReason.STOP


def _result(data: Any, model: str) -> UpstreamResult:
    """A whole (non-streaming) chat completion; KeyError/TypeError/... when malformed."""
    choice = data["choices"][0]
    return UpstreamResult(
        content=choice["message"].get("content") or "",
        finish_reason=_finish(choice.get("finish_reason")),
        usage=_usage(data.get("usage")),
        upstream_model=str(data.get("model") or model),
    )


class OpenAIProvider:
    """Adapter for POST {base_url}/chat/completions, JSON and SSE."""

    def __init__(
        self,
        name: str,
        client: UpstreamClient,
        *,
        base_url: str,
        api_key: Secret | None,
        stream_usage: bool = True,
    ) -> None:
        self.name = name
        self._client = client
        self._url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self._moderations_url = httpx.URL(base_url.rstrip("/") + "/moderations")
        headers = [*JSON_HEADERS]
        # Kept only to make sure an error code echoing it is never shown (base.error_token).
        self._api_key = api_key.reveal() if api_key is not None else None
        if self._api_key is not None:
            headers.append(("authorization", f"Bearer {self._api_key}"))
        self._headers = tuple(headers)
        self._stream_usage = stream_usage

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, url={self._url!r})"

    def _body(self, call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": call.upstream_model,
            "messages": [
                {"role": m.role.value, "content": m.content, **({"name": m.name} if m.name else {})}
                for m in call.messages
            ],
            "max_tokens": call.max_tokens,
        }
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.top_p is not None:
            body["top_p"] = call.top_p
        if call.stop:
            body["stop"] = list(call.stop)
        if stream:
            body["stream"] = True
            if self._stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, call: UpstreamCall) -> UpstreamResult:
        """Non-streaming chat completion."""
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
        except (*_MALFORMED, IndexError, AttributeError) as exc:
            raise malformed(self.name, exc) from None

    async def moderate(
        self, model: str, text: str, *, timeout_s: float
    ) -> tuple[bool, dict[str, float]]:
        """POST {base_url}/moderations: whether the upstream flags ``text``, and its score
        per category. ProviderError when it fails or answers something else."""
        data = await post_json(
            self._client,
            self._moderations_url,
            {"model": model, "input": text},
            headers=self._headers,
            timeout_s=timeout_s,
            provider=self.name,
            api_key=self._api_key,
        )
        try:
            result = data["results"][0]
            scores = {
                str(category): float(score)
                for category, score in (result.get("category_scores") or {}).items()
            }
            return bool(result.get("flagged")), scores
        except (*_MALFORMED, IndexError, AttributeError, ValueError) as exc:
            raise malformed(self.name, exc) from None

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[StreamItem, None]:
        """Streaming chat completion; ends with one UpstreamResult.

        A server that ignores ``stream`` and answers one JSON completion (some proxies do)
        is relayed as one delta and the result.
        """
        parts: list[str] = []
        finish: FinishReason | None = None
        usage: Usage | None = None
        model = call.upstream_model
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
                    async for _event, data in events:
                        if data == "[DONE]":
                            break
                        chunk = orjson.loads(data)
                        if chunk.get("error"):
                            self._stream_error(chunk["error"])
                        model = chunk.get("model") or model
                        if chunk.get("usage"):
                            usage = _usage(chunk["usage"])
                        for choice in chunk.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                parts.append(text)
                                yield TextDelta(text)
                            if choice.get("finish_reason"):
                                finish = _finish(choice["finish_reason"])
                    else:
                        # The body ended without [DONE]: the stream was cut off.
                        if finish is None:
                            raise ProviderError(
                                FailureClass.TRANSIENT, f"{self.name}: stream ended early"
                            )
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None
        except (*_MALFORMED, IndexError, AttributeError) as exc:
            raise malformed(self.name, exc) from None
        if whole is not None:
            if whole.content:
                yield TextDelta(whole.content)
            yield whole
            return
        yield UpstreamResult(
            content="".join(parts),
            finish_reason=finish or FinishReason.STOP,
            usage=usage,
            upstream_model=model,
        )

    def _stream_error(self, error: Any) -> NoReturn:
        """An error event inside the stream: classified, its message never shown."""
        code = error.get("code") or error.get("type") if isinstance(error, dict) else None
        token = error_token(code, api_key=self._api_key)
        raise ProviderError(
            FailureClass.TRANSIENT, failure_detail(self.name, FailureClass.TRANSIENT, code=token)
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
