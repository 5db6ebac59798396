"""The built-in offline provider: deterministic text and usage, no network.

`make run` routes `default` here, so the whole gateway works on a laptop with no keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from llmgateway_server.tokens import EstimatingCounter, count_prompt
from llmgateway_server.types import (
    FinishReason,
    Role,
    StreamItem,
    TextDelta,
    UpstreamCall,
    UpstreamResult,
    Usage,
)

_COUNTER = EstimatingCounter()


class MockProvider:
    """Answers with a fixed reply or an echo of the last user message.

    Output "tokens" are whitespace-separated words, so ``max_tokens`` truncation and
    usage are easy to predict in tests.
    """

    def __init__(
        self,
        name: str,
        *,
        first_token_latency_s: float = 0.0,
        chunk_latency_s: float = 0.0,
        words_per_chunk: int = 1,
        reply: str | None = None,
    ) -> None:
        self.name = name
        self._first_token_latency_s = first_token_latency_s
        self._chunk_latency_s = chunk_latency_s
        self._words_per_chunk = words_per_chunk
        self._reply = reply

    def __repr__(self) -> str:
        return f"MockProvider(name={self.name!r})"

    def _answer(self, call: UpstreamCall) -> tuple[list[str], FinishReason]:
        if self._reply is not None:
            text = self._reply
        else:
            last_user = next((m.text for m in reversed(call.messages) if m.role is Role.USER), "")
            text = f"This is the llmgateway mock provider. You said: {last_user}"
        words = text.split()
        if len(words) > call.max_tokens:
            return words[: call.max_tokens], FinishReason.LENGTH
        return words, FinishReason.STOP

    def _usage(self, call: UpstreamCall, output_words: int) -> Usage:
        return Usage(
            input_tokens=count_prompt(_COUNTER, call.messages, call.tools),
            output_tokens=output_words,
        )

    async def complete(self, call: UpstreamCall) -> UpstreamResult:
        """The whole answer after the configured latencies."""
        words, finish = self._answer(call)
        chunks = -(-len(words) // self._words_per_chunk)
        delay = self._first_token_latency_s + self._chunk_latency_s * max(0, chunks - 1)
        if delay:
            await asyncio.sleep(delay)
        return UpstreamResult(
            content=" ".join(words),
            finish_reason=finish,
            usage=self._usage(call, len(words)),
            upstream_model=call.upstream_model,
        )

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[StreamItem, None]:
        """The answer in chunks of ``words_per_chunk`` words."""
        words, finish = self._answer(call)
        if self._first_token_latency_s:
            await asyncio.sleep(self._first_token_latency_s)
        step = self._words_per_chunk
        for i in range(0, len(words), step):
            if i and self._chunk_latency_s:
                await asyncio.sleep(self._chunk_latency_s)
            piece = " ".join(words[i : i + step])
            yield TextDelta(piece if i == 0 else " " + piece)
        yield UpstreamResult(
            content=" ".join(words),
            finish_reason=finish,
            usage=self._usage(call, len(words)),
            upstream_model=call.upstream_model,
        )

    async def aclose(self) -> None:
        """Nothing to close."""
