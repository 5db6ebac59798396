"""The output guard of one call: the detectors' scanner, then the classifier stage.

Without a classifier, text goes out as the scanner releases it. With one, what the
scanner released is held until the classifier has seen it:

- ``buffer``: the whole output, once the upstream has finished (one verdict on the
  whole text, the most context; the caller gets nothing until then: time to first
  token becomes the whole generation plus one classification);
- ``sentence``: each sentence as soon as it is complete (a verdict per sentence, less
  context per verdict, one classification per sentence; the first sentence arrives one
  sentence plus one classification after the first token).

A flagged text blocks (nothing of it is released, and nothing after it); a classifier
that fails or times out follows ``on_error`` (``block``, or ``allow`` with a warning).
Unary calls go through the same steps, so they get the same verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import regex

from llmgateway_server.guardrails.classifier import Classifier, ClassifierFailed
from llmgateway_server.guardrails.scanner import Released, Rule, Scanner

log = logging.getLogger("llmgateway.guardrails")

Release = Literal["buffer", "sentence"]
OnError = Literal["block", "allow"]

# The end of a sentence: terminal punctuation followed by whitespace, or a line break.
_SENTENCE_END = regex.compile(r"[.!?。！？](?=\s)|\n")


@dataclass(frozen=True, slots=True)
class ClassifierStage:
    """A classifier and how a route uses it."""

    classifier: Classifier
    release: Release
    on_error: OnError


class OutputGuard:
    """Filters one call's output (``feed`` each piece, then ``finish``)."""

    def __init__(self, rules: Sequence[Rule], stage: ClassifierStage | None = None) -> None:
        self._scanner = Scanner(rules)
        self._stage = stage
        self._pending = ""  # released by the scanner, not yet by the classifier
        self._blocked = False

    @property
    def blocked(self) -> bool:
        """Whether a detector or the classifier blocked (nothing more is released)."""
        return self._blocked

    async def feed(self, piece: str) -> Released:
        """Add ``piece``; what may be released now."""
        if self._blocked:
            return Released()
        return await self._pass(self._scanner.feed(piece), last=False)

    async def complete(self, text: str) -> Released:
        """The whole output at once (a unary answer): the same verdicts as feeding it
        and finishing, in one pass of the detectors."""
        if self._blocked:
            return Released()
        return await self._pass(self._scanner.complete(text), last=True)

    async def finish(self) -> Released:
        """The upstream has finished: decide and release the rest."""
        if self._blocked:
            return Released()
        return await self._pass(self._scanner.finish(), last=True)

    async def _pass(self, out: Released, *, last: bool) -> Released:
        """What the classifier stage lets through of what the detectors released
        (``last``: the output is complete, nothing more will come)."""
        self._blocked = self._scanner.blocked
        if self._stage is None:
            return out
        self._pending += out.text
        out.text = ""
        if self._blocked:
            # What came before the blocked entity is checked like the rest.
            return await self._classify_pending(out)
        if self._stage.release == "sentence":
            out = await self._release_sentences(out)
            if self.blocked:  # a flagged sentence
                return out
        if not last:
            return out
        released, out.text = out.text, ""
        out = await self._classify_pending(out)
        out.text = released + out.text
        return out

    async def _release_sentences(self, out: Released) -> Released:
        while not self._blocked:
            end = _SENTENCE_END.search(self._pending, concurrent=False)  # keep the GIL
            if end is None:
                break
            sentence, self._pending = self._pending[: end.end()], self._pending[end.end() :]
            if not await self._allowed(sentence, out):
                self._blocked = True
                out.blocked_by = out.blocked_by or "CLASSIFIER"
                self._pending = ""
                break
            out.text += sentence
        return out

    async def _classify_pending(self, out: Released) -> Released:
        text, self._pending = self._pending, ""
        if text and not await self._allowed(text, out):
            self._blocked = True
            out.blocked_by = out.blocked_by or "CLASSIFIER"
            return out
        out.text += text
        return out

    async def _allowed(self, text: str, out: Released) -> bool:
        """Whether the classifier lets ``text`` through (its findings added to ``out``)."""
        stage = self._stage
        assert stage is not None
        if not text.strip():
            return True
        try:
            verdict = await stage.classifier.classify(text)
        except ClassifierFailed as exc:
            out.findings.append(("CLASSIFIER_ERROR", stage.on_error))
            if stage.on_error == "allow":
                log.warning("classifier failed; output allowed (on_error: allow): %s", exc)
                return True
            log.warning("classifier failed; output blocked (on_error: block): %s", exc)
            return False
        if verdict.flagged:
            out.findings.extend((f"CLASSIFIER:{c}", "block") for c in verdict.categories)
            return False
        return True
