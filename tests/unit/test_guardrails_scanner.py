"""The guardrails scanner: a stream's output equals the unary output, however the text is
cut (every single cut and pair of cuts of short texts, random multi-cuts and one
character at a time of long ones), with generated valid entities in random prose; a
blocked text delivers a prefix that ends before the first entity. A per-chunk checker in
the same harness fails it (the harness sees split entities)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmgateway_server.guardrails import detectors
from llmgateway_server.guardrails.scanner import Action, Rule, Scanner, scan_all

Stream = Callable[[Sequence[Rule], Sequence[str]], str]

# -- generated entities ---------------------------------------------------------------------


def _luhn_digit(body: str) -> str:
    for check in "0123456789":
        if detectors.luhn_valid(body + check):
            return check
    raise AssertionError("some check digit is valid")


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = "4" + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=14, max_size=14)))
    number = body + _luhn_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    bban = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=18, max_size=18)))
    for check in range(100):
        candidate = f"DE{check:02d}{bban}"
        if detectors.iban_valid(candidate):
            break
    spaced = draw(st.booleans())
    return " ".join(candidate[i : i + 4] for i in range(0, 22, 4)) if spaced else candidate


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text("abcxyz019._-", min_size=1, max_size=12))
    domain = draw(st.text("abcdefgh", min_size=1, max_size=10))
    tld = draw(st.sampled_from(["com", "io", "co.uk", "example"]))
    return f"{local}@{domain}.{tld}"


@st.composite
def keys(draw: st.DrawFn) -> str:
    alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    kind = draw(st.sampled_from(["sk", "akia", "ghp", "pem"]))
    if kind == "sk":
        return "sk-proj-" + "".join(
            draw(st.lists(st.sampled_from(alnum), min_size=24, max_size=40))
        )
    if kind == "akia":
        return "AKIA" + "".join(
            draw(st.lists(st.sampled_from("ABCDEFXYZ234567"), min_size=16, max_size=16))
        )
    if kind == "ghp":
        return "ghp_" + "".join(draw(st.lists(st.sampled_from(alnum), min_size=36, max_size=36)))
    return "-----BEGIN RSA PRIVATE KEY-----"


PHONES = ("+44 20 7946 0958", "+1 650-253-0000", "(650) 253-0000", "+49 30 901820")

# Prose: letters, Unicode, zero-width and other punctuation; no digits, '@', '+' or '-',
# so that prose next to an entity (after a space) never changes it.
PROSE = st.text("abcdefghij klmnop QRST éü中文\u200b\u200d,.!?;:\n'\"()", min_size=0, max_size=12)
ENTITY = st.one_of(cards(), ibans(), emails(), keys(), st.sampled_from(PHONES))


@st.composite
def texts(draw: st.DrawFn, max_parts: int = 6) -> tuple[str, list[str]]:
    """Prose with entities, each entity separated from its neighbours by a space."""
    parts: list[str] = []
    entities: list[str] = []
    for _ in range(draw(st.integers(1, max_parts))):
        if draw(st.booleans()):
            entity = draw(ENTITY)
            entities.append(entity)
            parts.append(f" {entity} ")
        else:
            parts.append(draw(PROSE))
    return "".join(parts), entities


def rules(action: Action) -> list[Rule]:
    return [
        Rule(d, action)
        for d in (
            detectors.email(),
            detectors.phone("US"),
            detectors.card(),
            detectors.iban(),
            detectors.secret(),
            detectors.keywords("WORD", ["forbidden", "classified"]),
        )
    ]


REDACT = rules("redact")
BLOCK = rules("block")

# -- the streams under test ---------------------------------------------------------------


def streamed(rule_set: Sequence[Rule], pieces: Sequence[str]) -> str:
    scanner = Scanner(rule_set)
    out = [scanner.feed(p).text for p in pieces]
    out.append(scanner.finish().text)
    return "".join(out)


def per_chunk(rule_set: Sequence[Rule], pieces: Sequence[str]) -> str:
    """The naive design: each chunk checked on its own."""
    return "".join(scan_all(rule_set, p).text for p in pieces)


def cut(text: str, at: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(at), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def check_every_cut(stream: Stream, rule_set: Sequence[Rule], text: str) -> None:
    """Every single cut and every pair of cuts gives the unary output."""
    expected = scan_all(rule_set, text).text
    n = len(text)
    for i in range(n + 1):
        assert stream(rule_set, cut(text, [i])) == expected, (text, i)
        for j in range(i, n + 1):
            assert stream(rule_set, cut(text, [i, j])) == expected, (text, i, j)


def check_random_cuts(stream: Stream, rule_set: Sequence[Rule], text: str, seed: int) -> None:
    expected = scan_all(rule_set, text).text
    rng = random.Random(seed)
    for _ in range(5):
        at = [rng.randrange(len(text) + 1) for _ in range(rng.randrange(1, 12))]
        assert stream(rule_set, cut(text, at)) == expected, (text, at)
    assert stream(rule_set, list(text)) == expected, text


_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the oracle -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts(max_parts=3))
def test_every_cut_and_pair_of_cuts_of_a_short_text_streams_as_unary(
    sample: tuple[str, list[str]],
) -> None:
    text, _ = sample
    check_every_cut(streamed, REDACT, text[:48])


@_FAST
@given(texts(max_parts=10), st.integers(0, 2**32))
def test_random_cuts_and_single_characters_of_a_long_text_stream_as_unary(
    sample: tuple[str, list[str]], seed: int
) -> None:
    text, _ = sample
    check_random_cuts(streamed, REDACT, text, seed)
    check_random_cuts(streamed, BLOCK, text, seed)


@_FAST
@given(texts(max_parts=8))
def test_every_generated_entity_is_redacted(sample: tuple[str, list[str]]) -> None:
    text, entities = sample
    out = scan_all(REDACT, text).text
    for entity in entities:
        assert entity not in out


@_FAST
@given(texts(max_parts=8), st.integers(0, 2**32))
def test_a_blocked_stream_delivers_a_prefix_that_ends_before_the_first_entity(
    sample: tuple[str, list[str]], seed: int
) -> None:
    text, entities = sample
    rng = random.Random(seed)
    pieces = cut(text, [rng.randrange(len(text) + 1) for _ in range(6)])
    out = streamed(BLOCK, pieces)
    assert text.startswith(out)
    if entities:
        first = text.index(f" {entities[0]} ") + 1
        assert len(out) <= first  # not one character of it was sent


def test_held_back_text_is_bounded_by_the_longest_pattern() -> None:
    scanner = Scanner(REDACT)
    longest = max(r.detector.max_length + r.detector.lookahead for r in REDACT)
    released = 0
    for fed, ch in enumerate("write to someone" + "a" * 5000 + " soon", start=1):
        released += len(scanner.feed(ch).text)
        assert fed - released <= longest


def test_the_kinds_found_are_reported_and_the_text_replaced() -> None:
    out = scan_all(
        REDACT,
        "mail jo@example.com, card 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00, "
        "key sk-proj-abcdefghijklmnopqrstuvwxyz, call +44 20 7946 0958; forbidden.",
    )
    assert out.text == (
        "mail [EMAIL], card [CARD], iban [IBAN], key [SECRET], call [PHONE]; [WORD]."
    )
    assert [label for label, _ in out.findings] == [
        "EMAIL",
        "CARD",
        "IBAN",
        "SECRET",
        "PHONE",
        "WORD",
    ]


def test_candidates_that_fail_validation_are_left_alone() -> None:
    text = "order 4111 1111 1111 1112 and DE00 3704 0044 0532 0130 00, code 123-45"
    assert scan_all(REDACT, text).text == text


# -- negative control -----------------------------------------------------------------------


def test_a_per_chunk_checker_fails_the_same_harness() -> None:
    @settings(max_examples=300, deadline=None, database=None)
    @given(texts(max_parts=10), st.integers(0, 2**32))
    def harness(sample: tuple[str, list[str]], seed: int) -> None:
        check_random_cuts(per_chunk, REDACT, sample[0], seed)

    with pytest.raises(AssertionError):
        harness()


@_FAST
@given(texts(max_parts=8), st.integers(0, 2**32))
def test_the_detectors_hints_change_no_result(sample: tuple[str, list[str]], seed: int) -> None:
    """A hint only skips patterns that cannot match: without the hints, the same output."""
    unhinted = [Rule(dataclasses.replace(r.detector, hint=None), r.action) for r in REDACT]
    text, _ = sample
    rng = random.Random(seed)
    pieces = cut(text, [rng.randrange(len(text) + 1) for _ in range(4)])
    assert scan_all(unhinted, text).text == scan_all(REDACT, text).text
    assert streamed(unhinted, pieces) == streamed(REDACT, pieces)
