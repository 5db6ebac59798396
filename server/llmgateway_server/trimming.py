"""Context-window trimming: drop the oldest turns of a conversation until it fits.

Pure functions over messages and their token counts; counting lives in
:mod:`llmgateway_server.tokens`, the policy that decides whether to trim or reject lives in
the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmgateway_server.types import ChatMessage, Role


@dataclass(frozen=True, slots=True)
class TrimResult:
    """The messages that fit, in their original order.

    ``dropped`` is how many messages were removed; ``tokens`` is the sum of the kept
    messages' counts (reply priming not included).
    """

    messages: tuple[ChatMessage, ...]
    dropped: int
    tokens: int


def trim_to_fit(
    messages: Sequence[ChatMessage], message_tokens: Sequence[int], budget: int
) -> TrimResult | None:
    """Keep the newest conversation that fits ``budget`` tokens, dropping whole old turns.

    ``message_tokens[i]`` is the count of ``messages[i]``; ``budget`` is what the messages
    may use (the caller has already subtracted ``max_tokens`` and the reply priming).

    Always kept: every SYSTEM message, wherever it is, and the latest USER message with
    everything after it (an assistant prefill, say); without any USER message, the last
    message. The rest is divided into turns: a USER message with the ASSISTANT replies
    that follow it up to the next USER message (SYSTEM messages in between belong to no
    turn), and each ASSISTANT message before the first USER message alone. Turns are
    dropped whole, oldest first, until the rest fits. TOOL results belong to the turn of
    the assistant call they answer, so a tool call is never kept without its result or
    the other way round. Returns None when the messages that
    are always kept do not fit on their own, and everything (``dropped == 0``) when all
    of it fits.

    Linear time. Counts are read from the newest turn backwards and reading stops at the
    first turn that does not fit, so a lazy sequence (``tokens.MessageTokens``) never
    counts the turns that are dropped.
    """
    n = len(messages)
    if len(message_tokens) != n:
        raise ValueError(f"{n} messages but {len(message_tokens)} token counts")

    # Roles once, as a list of plain enum members: the loops below are the hot path.
    system, user, tool = Role.SYSTEM, Role.USER, Role.TOOL
    roles = [m.role for m in messages]

    # The kept tail starts at the latest USER message.
    tail = n - 1 if n else 0
    for i in range(n - 1, -1, -1):
        if roles[i] is user:
            tail = i
            break

    # One forward pass over the part before the tail: where each turn starts, and what the
    # SYSTEM messages there cost (they are kept, so they count against the budget first).
    turn_starts: list[int] = []
    mandatory = 0
    seen_user = False
    for i in range(tail):
        role = roles[i]
        if role is system:
            mandatory += message_tokens[i]
        elif role is user:
            turn_starts.append(i)
            seen_user = True
        elif not seen_user and role is not tool:
            # A leading ASSISTANT message is a turn of its own (with the TOOL results
            # that answer its calls: a call and its result go together).
            turn_starts.append(i)
    for i in range(tail, n):
        mandatory += message_tokens[i]
    if mandatory > budget:
        return None

    # Keeping the newest turns that fit is dropping the oldest until the rest fits: walk
    # the turns newest first, and cut before the first one that does not fit.
    remaining = budget - mandatory
    cut = tail
    for start in reversed(turn_starts):
        turn = 0
        for i in range(start, cut):
            if roles[i] is not system:
                turn += message_tokens[i]
        if turn > remaining:
            break
        remaining -= turn
        cut = start
    tokens = budget - remaining

    if not turn_starts or cut == turn_starts[0]:
        return TrimResult(messages=tuple(messages), dropped=0, tokens=tokens)
    kept = [messages[i] for i in range(cut) if roles[i] is system]
    dropped = cut - len(kept)
    kept.extend(messages[i] for i in range(cut, n))
    return TrimResult(messages=tuple(kept), dropped=dropped, tokens=tokens)
