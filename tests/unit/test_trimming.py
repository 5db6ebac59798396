"""Context trimming keeps system messages and the latest turn, and drops whole old turns first."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import pytest
from llmgateway_server.tokens import EstimatingCounter, MessageTokens
from llmgateway_server.trimming import TrimResult, trim_to_fit
from llmgateway_server.types import ChatMessage, Role

S, U, A = Role.SYSTEM, Role.USER, Role.ASSISTANT


def chat(*roles: Role) -> list[ChatMessage]:
    """Messages whose content names their position: "0", "1", ..."""
    return [ChatMessage(role, str(i)) for i, role in enumerate(roles)]


def positions(result: TrimResult | None) -> list[int]:
    assert result is not None
    return [int(m.content) for m in result.messages]


def test_everything_fits_returns_all_messages_and_drops_none() -> None:
    messages = chat(S, U, A, U, A, U)
    result = trim_to_fit(messages, [10] * 6, budget=60)
    assert result == TrimResult(messages=tuple(messages), dropped=0, tokens=60)


def test_oldest_turns_are_dropped_first_as_whole_pairs() -> None:
    messages = chat(S, U, A, U, A, U, A, U)
    # 8 x 10 tokens; 60 leaves room for system, two newest pairs and the last user.
    result = trim_to_fit(messages, [10] * 8, budget=60)
    assert positions(result) == [0, 3, 4, 5, 6, 7]
    assert result is not None
    assert result.dropped == 2
    assert result.tokens == 60


def test_a_pair_is_never_split_even_when_its_reply_alone_would_fit() -> None:
    messages = chat(U, A, A, U)  # a user message answered twice
    result = trim_to_fit(messages, [10, 10, 10, 10], budget=30)
    assert positions(result) == [3]
    assert result is not None
    assert result.dropped == 3


def test_trimming_stops_at_first_turn_that_does_not_fit() -> None:
    # The oldest turn is small enough to fit the leftover, but it is older than a turn
    # that was dropped: keeping it would leave a hole in the conversation.
    messages = chat(U, A, U, A, U)
    result = trim_to_fit(messages, [1, 1, 50, 50, 10], budget=20)
    assert positions(result) == [4]


def test_system_messages_are_kept_wherever_they_are() -> None:
    messages = chat(S, U, A, S, A, U, A, S, U)
    counts = [5, 10, 10, 5, 10, 10, 10, 5, 10]
    result = trim_to_fit(messages, counts, budget=45)
    assert positions(result) == [0, 3, 5, 6, 7, 8]
    assert result is not None
    assert result.dropped == 3
    assert result.tokens == 45
    # With less room the middle system message stays while both turns around it go.
    assert positions(trim_to_fit(messages, counts, budget=44)) == [0, 3, 7, 8]


def test_system_message_inside_a_turn_does_not_split_it() -> None:
    # The replies on both sides of the system message answer user message 0.
    messages = chat(U, A, S, A, U)
    result = trim_to_fit(messages, [10, 10, 1, 10, 10], budget=25)
    assert positions(result) == [2, 4]


def test_latest_user_message_and_what_follows_it_are_always_kept() -> None:
    messages = chat(U, A, U, A)  # the trailing assistant message is a prefill
    result = trim_to_fit(messages, [10, 10, 10, 10], budget=20)
    assert positions(result) == [2, 3]


def test_none_when_mandatory_messages_alone_exceed_budget() -> None:
    messages = chat(S, U, A, U)
    assert trim_to_fit(messages, [10, 1, 1, 11], budget=20) is None
    assert trim_to_fit(messages, [10, 1, 1, 10], budget=20) is not None


def test_leading_assistant_messages_are_turns_of_their_own() -> None:
    messages = chat(A, A, U, A, U)
    result = trim_to_fit(messages, [10, 10, 10, 10, 10], budget=50)
    assert positions(result) == [0, 1, 2, 3, 4]
    result = trim_to_fit(messages, [10, 10, 10, 10, 10], budget=40)
    assert positions(result) == [1, 2, 3, 4]
    result = trim_to_fit(messages, [10, 10, 10, 10, 10], budget=39)
    assert positions(result) == [2, 3, 4]


def test_without_any_user_message_the_last_message_is_kept() -> None:
    messages = chat(S, A, A, A)
    result = trim_to_fit(messages, [10, 10, 10, 10], budget=30)
    assert positions(result) == [0, 2, 3]


def test_empty_conversation_fits_any_non_negative_budget() -> None:
    assert trim_to_fit([], [], budget=0) == TrimResult(messages=(), dropped=0, tokens=0)


def test_counts_must_match_messages() -> None:
    with pytest.raises(ValueError, match="2 messages but 1 token counts"):
        trim_to_fit(chat(U, A), [1], budget=10)


def test_dropped_turns_are_never_counted_with_lazy_counts() -> None:
    counted: list[int] = []

    class Spy(EstimatingCounter):
        def count_message(self, message: ChatMessage) -> int:
            counted.append(int(message.content))
            return 10

    messages = chat(S, *[U, A] * 50, U)
    result = trim_to_fit(messages, MessageTokens(Spy(), messages), budget=50)
    assert positions(result) == [0, 99, 100, 101]
    # System, last user, the kept pair, and the one pair that did not fit: 6 of 102.
    assert sorted(counted) == [0, 97, 98, 99, 100, 101]


def reference_trim(
    messages: Sequence[ChatMessage], counts: Sequence[int], budget: int
) -> list[int] | None:
    """The rules spelled out naively: drop the oldest whole turn until the rest fits."""
    n = len(messages)
    users = [i for i, m in enumerate(messages) if m.role is U]
    tail = users[-1] if users else n - 1
    turns: list[list[int]] = []
    for i in range(tail):
        role = messages[i].role
        if role is U or (role is A and not any(messages[j].role is U for j in range(i))):
            turns.append([i])
        elif role is A:
            turns[-1].append(i)
    kept = set(range(n))
    while sum(counts[i] for i in kept) > budget:
        if not turns:
            return None
        kept -= set(turns.pop(0))
    return sorted(kept)


def test_matches_naive_reference_on_random_conversations() -> None:
    rng = random.Random(20240501)
    for _ in range(2000):
        n = rng.randint(0, 12)
        roles = [rng.choice([S, U, U, A, A]) for _ in range(n)]
        messages = chat(*roles)
        counts = [rng.randint(0, 20) for _ in range(n)]
        budget = rng.randint(0, 150)
        result = trim_to_fit(messages, counts, budget)
        expected = reference_trim(messages, counts, budget)
        if expected is None:
            assert result is None, (roles, counts, budget)
            continue
        assert positions(result) == expected, (roles, counts, budget)
        assert result is not None
        assert result.dropped == n - len(expected)
        assert result.tokens == sum(counts[i] for i in expected)


def test_trims_a_10000_message_conversation_well_under_a_second() -> None:
    messages = chat(S, *[U, A] * 4999, U)
    assert len(messages) == 10_000
    counts = [20] * len(messages)
    started = time.perf_counter()
    result = trim_to_fit(messages, counts, budget=100_000)
    elapsed = time.perf_counter() - started
    assert result is not None
    assert result.dropped == 5000  # 2,500 pairs; 2,499 pairs + system + last user fit
    assert elapsed < 1.0  # a generous bound; bench/bench_context.py measures properly


T = Role.TOOL


def test_a_tool_call_and_its_results_are_dropped_together() -> None:
    # user, assistant calling two tools, both results, assistant answer, user (kept tail).
    messages = chat(U, A, T, T, A, U, A, T, U)
    counts = [10] * 9
    # Everything but the newest user: the first turn is 0-4, the second 5-7.
    result = trim_to_fit(messages, counts, budget=40)
    assert positions(result) == [5, 6, 7, 8]
    result = trim_to_fit(messages, counts, budget=39)
    assert positions(result) == [8]
    # Never a result without its call, nor a call without its results.
    for budget in range(100):
        kept = positions(trim_to_fit(messages, counts, budget)) if budget >= 10 else []
        for i in kept:
            if messages[i].role is T:
                assert i - 1 in kept, (budget, kept)


def test_tool_results_after_a_leading_assistant_belong_to_its_turn() -> None:
    messages = chat(A, T, U)
    assert positions(trim_to_fit(messages, [10, 10, 10], budget=30)) == [0, 1, 2]
    # Not enough for the call with its result: both go, never the call alone.
    assert positions(trim_to_fit(messages, [10, 10, 10], budget=25)) == [2]
