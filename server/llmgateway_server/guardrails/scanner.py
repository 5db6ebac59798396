"""The scanner: finds entities in text that arrives in pieces, and releases text as soon
as no detector can still match it, so that the output is the same however the text was cut.

``Scanner.feed(piece)`` returns what may be released now; ``Scanner.finish()`` the rest.
The unary path is ``feed(text)`` then ``finish()``; a stream feeds each delta. Both run
the same scan, left to right: from the current position, the earliest match of any
detector (the longest at the same start; the first configured at the same length) is
redacted (its placeholder released in its place) or blocks (nothing after the text before
it is ever released), and the scan goes on after it. While the text is incomplete, a
decision is taken only when more text cannot change it:

- a detector whose pattern could still match starting at position ``p`` (a partial match
  in the ``regex`` package's sense) holds everything from ``p`` back;
- a complete match starting at ``a`` is final only once the text reaches
  ``a + max_length + lookahead`` (before that, a longer match, or a lookahead failing,
  could still replace it), so it is held back until then.

So the text held back never exceeds the longest detector's ``max_length`` plus its
lookahead, and a character is released only when it is certain not to belong to an
entity. A few characters of released text are kept as context for lookbehinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmgateway_server.guardrails.detectors import Detector

Action = Literal["redact", "block"]

_CONTEXT = 16  # released characters kept for lookbehinds (each built-in looks back one)


@dataclass(frozen=True, slots=True)
class Rule:
    """A detector and what to do with its matches."""

    detector: Detector
    action: Action


@dataclass(slots=True)
class Released:
    """What a scan step lets through."""

    text: str = ""
    blocked_by: str | None = None  # the label of the detector that blocked, once
    findings: list[tuple[str, str]] = field(default_factory=list)  # (label, action)


@dataclass(frozen=True, slots=True)
class _Match:
    start: int
    end: int
    rule: Rule


class Scanner:
    """One text's scan (one direction of one call)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._text = ""  # context (already released) + held text
        self._pos = 0  # where the held text starts in ``_text``
        self._blocked: str | None = None

    @property
    def blocked(self) -> bool:
        """Whether a blocking detector matched (nothing more is released)."""
        return self._blocked is not None

    def feed(self, piece: str) -> Released:
        """Add ``piece``; return what can be released now."""
        if self._blocked is not None:
            return Released()
        self._text += piece
        return self._scan(final=False)

    def finish(self) -> Released:
        """The text is complete: decide everything still held back."""
        if self._blocked is not None:
            return Released()
        return self._scan(final=True)

    def complete(self, text: str) -> Released:
        """Add ``text`` as the rest of the text and decide everything at once: what
        ``feed(text)`` then ``finish()`` release, in one pass (the unary path)."""
        if self._blocked is not None:
            return Released()
        self._text += text
        return self._scan(final=True)

    def _scan(self, *, final: bool) -> Released:
        out = Released()
        parts: list[str] = []
        text, pos = self._text, self._pos
        while True:
            match, hold = self._next(text, pos, final)
            if match is None:
                stop = len(text) if hold is None else hold
                parts.append(text[pos:stop])
                pos = stop
                break
            parts.append(text[pos : match.start])
            label = match.rule.detector.label
            out.findings.append((label, match.rule.action))
            if match.rule.action == "block":
                self._blocked = out.blocked_by = label
                pos = len(text)
                break
            parts.append(match.rule.detector.placeholder)
            pos = match.end
        out.text = "".join(parts)
        # Keep the held text and a little released context for lookbehinds.
        keep_from = max(0, pos - _CONTEXT)
        self._text, self._pos = text[keep_from:], pos - keep_from
        return out

    def _next(self, text: str, pos: int, final: bool) -> tuple[_Match | None, int | None]:
        """The next match to act on from ``pos``, or (None, where to hold from) when the
        decision must wait for more text (None, None: nothing can match from ``pos``)."""
        best: _Match | None = None
        hold: int | None = None
        for rule in self._rules:
            found = self._first(rule, text, pos, final)
            if found is None:
                continue
            if isinstance(found, int):
                hold = found if hold is None else min(hold, found)
                continue
            if best is None or (found.start, -(found.end - found.start)) < (
                best.start,
                -(best.end - best.start),
            ):
                best = found
        if hold is not None and (best is None or hold <= best.start):
            return None, hold
        return best, None

    @staticmethod
    def _first(rule: Rule, text: str, pos: int, final: bool) -> _Match | int | None:
        """The rule's first valid, final match from ``pos``; or the position from which
        it could still match once more text comes (an int); or None."""
        detector = rule.detector
        start = pos
        hint = detector.hint
        if hint is not None and hint.search(text, pos) is None:
            # No match can be complete in this text. One may still be growing at its
            # end: it would start within the last max_length characters.
            if final:
                return None
            start = max(pos, len(text) - detector.max_length - detector.lookahead)
        while start <= len(text):
            # concurrent=False: keep the GIL. The regex module releases it around every
            # match on a str by default, and getting it back from another thread that
            # wants it (gRPC's poller, the store's threads) cost ~0.5 ms per search.
            m = detector.pattern.search(text, start, partial=not final, concurrent=False)
            if m is None:
                return None
            if m.partial:
                return m.start()
            a, b = m.start(), m.end()
            if not final and len(text) < a + detector.max_length + detector.lookahead:
                return a  # a longer match, or a failing lookahead, may still come
            end = _valid_end(detector, text, a, b)
            if end is not None:
                return _Match(a, end, rule)
            start = a + 1  # not an entity: look again from the next character
        return None


def _valid_end(detector: Detector, text: str, a: int, b: int) -> int | None:
    """Where the entity found at ``[a, b)`` ends (``b``, or earlier for a detector that
    shrinks a candidate its validator refuses), or None: not an entity."""
    if b <= a or b - a > detector.max_length:
        return None
    validate = detector.validate
    if validate is None or validate(text[a:b]):
        return b
    if not detector.shrink:
        return None
    for end in range(b - 1, a, -1):
        if (
            text[end - 1].isdigit()
            and not text[end].isalnum()
            and detector.pattern.fullmatch(text, a, end, concurrent=False) is not None
            and validate(text[a:end])
        ):
            return end
    return None


def scan_all(rules: Sequence[Rule], text: str) -> Released:
    """The whole of ``text`` at once (the unary path)."""
    return Scanner(rules).complete(text)
