"""OpenAI Chat Completions, and any server that speaks it (vLLM, Ollama, LM Studio)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, NoReturn

import httpx
import orjson

from llmgateway_server.errors import ProviderError
from llmgateway_server.providers import openai_request
from llmgateway_server.providers.base import (
    JSON_HEADERS,
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
    RefusalDelta,
    StreamItem,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UpstreamResult,
    Usage,
)

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}
_MALFORMED = (SSEDecodeError, UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError)


def _count(details: Any, name: str) -> int:
    return int(details.get(name) or 0) if isinstance(details, dict) else 0


def _usage(raw: Any) -> Usage | None:
    """OpenAI's usage in the gateway's terms: its ``prompt_tokens`` include the cached
    (read) ones and any written to the cache; ``completion_tokens`` include reasoning."""
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    details = raw.get("prompt_tokens_details")
    cached = _count(details, "cached_tokens")
    written = _count(details, "cache_write_tokens")
    output = int(raw.get("completion_tokens") or 0)
    return Usage(
        input_tokens=max(0, prompt - cached - written),
        output_tokens=output,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=min(
            output, _count(raw.get("completion_tokens_details"), "reasoning_tokens")
        ),
        image_input_tokens=_count(details, "image_tokens"),
    )


def _finish(value: Any) -> FinishReason:
    return _FINISH.get(value, FinishReason.OTHER) if value else FinishReason.STOP


def _result(data: Any, model: str) -> UpstreamResult:
    """A whole (non-streaming) chat completion; KeyError/TypeError/... when malformed."""
    choice = data["choices"][0]
    message = choice["message"]
    refusal = message.get("refusal") or ""
    finish = _finish(choice.get("finish_reason"))
    return UpstreamResult(
        content=message.get("content") or "",
        finish_reason=FinishReason.REFUSAL if refusal and finish is FinishReason.STOP else finish,
        usage=_usage(data.get("usage")),
        upstream_model=str(data.get("model") or model),
        tool_calls=tuple(
            finished_call(str(c["function"]["name"]), c["function"].get("arguments") or "")
            for c in message.get("tool_calls") or ()
        ),
        refusal=refusal,
    )


def _tool_deltas(tools: ToolCallAssembler, fragments: Any) -> list[ToolCallDelta]:
    """The deltas of one chunk's ``tool_calls`` fragments."""
    out: list[ToolCallDelta] = []
    for fragment in fragments:
        function = fragment.get("function") or {}
        delta = tools.feed(
            int(fragment.get("index") or 0),
            fragment.get("id") or None,
            function.get("name"),
            function.get("arguments") or "",
        )
        if delta is not None:
            out.append(delta)
    return out


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
        return openai_request.body(call, stream=stream, stream_usage=self._stream_usage)

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
        refusal: list[str] = []
        tools = ToolCallAssembler()
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
                            delta = choice.get("delta") or {}
                            text = delta.get("content")
                            if text:
                                parts.append(text)
                                yield TextDelta(text)
                            if delta.get("tool_calls"):
                                for fragment in _tool_deltas(tools, delta["tool_calls"]):
                                    yield fragment
                            if delta.get("refusal"):
                                refusal.append(delta["refusal"])
                                yield RefusalDelta(delta["refusal"])
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
            for item in replay(whole):
                yield item
            return
        for closing in tools.close():
            yield closing
        said_no = "".join(refusal)
        finish = finish or FinishReason.STOP
        yield UpstreamResult(
            content="".join(parts),
            finish_reason=FinishReason.REFUSAL
            if said_no and finish is FinishReason.STOP
            else finish,
            usage=usage,
            upstream_model=model,
            tool_calls=tools.calls(),
            refusal=said_no,
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
