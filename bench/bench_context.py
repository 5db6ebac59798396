"""Counting and trimming a 10,000-message conversation: milliseconds, best of 5.

Target (the context-window issue): counting + trimming 10,000 messages in <= 50 ms.

    .venv/bin/python bench/bench_context.py [--messages 10000] [--words 12] [--window 128000]

The conversation is one system prompt and alternating user/assistant turns of random
English-like words with some numbers and punctuation (``--words`` is the mean words per
message). Rows:

- ``count all``: every message counted (what a REJECT policy, or an exact total, needs);
- ``trim``: ``trim_to_fit`` alone over precomputed counts;
- ``count all + trim``: the two together;
- ``lazy count + trim``: ``trim_to_fit`` over ``MessageTokens``, which counts only what
  trimming reads: the kept messages and the one turn that did not fit.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from llmgateway_server.tokens import (
    REPLY_PRIMING_TOKENS,
    MessageTokens,
    TokenCounter,
    Tokenizers,
)
from llmgateway_server.trimming import trim_to_fit
from llmgateway_server.types import ChatMessage, Role

# Short common words and some domain words: English-like text at ~4-5 bytes per token.
WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on",
    "be", "by", "this", "are", "or", "an", "from", "at", "which", "request", "server",
    "token", "model", "window", "context", "budget", "retry", "stream", "gateway",
    "latency", "cost", "provider", "fallback", "message", "user", "assistant", "system",
    "reply", "prompt", "trim", "count", "deadline", "tenant", "price", "cache", "error",
    "status", "timeout", "upstream", "config", "route", "target", "policy",
]  # fmt: skip


def conversation(n: int, mean_words: int, seed: int = 1) -> list[ChatMessage]:
    """A system prompt and ``n - 1`` alternating user/assistant messages."""
    rng = random.Random(seed)

    def text() -> str:
        words = []
        for _ in range(rng.randint(1, 2 * mean_words - 1)):
            roll = rng.random()
            if roll < 0.05:
                words.append(str(rng.randint(0, 99_999)))
            elif roll < 0.10:
                words.append(rng.choice(WORDS) + rng.choice(",.:;?!"))
            else:
                words.append(rng.choice(WORDS))
        return " ".join(words)

    messages = [ChatMessage(Role.SYSTEM, "You are a concise assistant. " + text())]
    for i in range(n - 1):
        messages.append(ChatMessage(Role.USER if i % 2 == 0 else Role.ASSISTANT, text()))
    if messages[-1].role is not Role.USER:
        messages[-1] = ChatMessage(Role.USER, messages[-1].content)
    return messages


def best_ms(fn: Callable[[], object], runs: int = 5) -> float:
    """The fastest of ``runs`` calls, in milliseconds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def bench(label: str, counter: TokenCounter, messages: list[ChatMessage], budget: int) -> None:
    """Print one counter's timings."""
    counts = [counter.count_message(m) for m in messages]
    result = trim_to_fit(messages, counts, budget)
    kept = len(result.messages) if result else 0
    print(f"{label}: prompt {sum(counts) + REPLY_PRIMING_TOKENS:,} tokens, keeps {kept:,} messages")
    count_ms = best_ms(lambda: [counter.count_message(m) for m in messages])
    trim_ms = best_ms(lambda: trim_to_fit(messages, counts, budget))
    both_ms = best_ms(
        lambda: trim_to_fit(messages, [counter.count_message(m) for m in messages], budget)
    )
    lazy_ms = best_ms(lambda: trim_to_fit(messages, MessageTokens(counter, messages), budget))
    for name, ms in [
        ("count all", count_ms),
        ("trim", trim_ms),
        ("count all + trim", both_ms),
        ("lazy count + trim", lazy_ms),
    ]:
        print(f"  {name:<18} {ms:8.2f} ms")


def main() -> None:
    """Parse arguments and run both counters."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--words", type=int, default=12, help="mean words per message")
    parser.add_argument("--window", type=int, default=128_000, help="context window")
    parser.add_argument("--max-tokens", type=int, default=4_096)
    args = parser.parse_args()

    messages = conversation(args.messages, args.words)
    size = sum(len(m.content.encode()) for m in messages)
    print(f"{len(messages):,} messages, {size / 1e6:.2f} MB of text, window {args.window:,}")
    budget = args.window - args.max_tokens - REPLY_PRIMING_TOKENS
    tokenizers = Tokenizers(None)
    bench("cl100k_base", tokenizers.counter_for("gpt-4"), messages, budget)
    bench("estimator", tokenizers.counter_for("claude-sonnet-4"), messages, budget)


if __name__ == "__main__":
    main()
