"""Token counting: the real tokenizer where one exists, otherwise an estimate that errs high."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from llmgateway_server.types import ChatMessage

# Chat formats wrap every message in a few tokens of framing; the reply is primed too.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3


class TokenCounter(Protocol):
    """Counts the tokens of text and of a chat prompt for one model family."""

    @property
    def exact(self) -> bool:
        """True when this is the model's real tokenizer."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens in ``text``."""
        ...

    def count_message(self, message: ChatMessage) -> int:
        """Tokens one message adds to a prompt, framing included."""
        ...


class EstimatingCounter:
    """For models without a local tokenizer: one token per 3 UTF-8 bytes, rounded up.

    Real tokenizers average about 4 bytes of English per token, so this over-counts
    on purpose: a context-window check that errs high never sends a prompt that
    will not fit.
    """

    exact = False

    def count_text(self, text: str) -> int:
        """Estimated tokens in ``text``."""
        return -(-len(text.encode("utf-8")) // 3)

    def count_message(self, message: ChatMessage) -> int:
        """Estimated tokens for one message including its framing."""
        tokens = MESSAGE_OVERHEAD_TOKENS + self.count_text(message.content)
        if message.name:
            tokens += 1 + self.count_text(message.name)
        return tokens


def count_prompt(counter: TokenCounter, messages: Sequence[ChatMessage]) -> int:
    """Tokens of a whole chat prompt: every message plus the reply priming."""
    return REPLY_PRIMING_TOKENS + sum(counter.count_message(m) for m in messages)
