"""Guardrails policy: the prompt is checked before anything else prices or sends it; the
output is checked by a scanner the pipeline runs over the upstream's text.

Input: each message is scanned whole; a blocking detector refuses the call
(INVALID_ARGUMENT / CONTENT_BLOCKED, the detector's label in the ErrorInfo metadata, never
the matched text) before any upstream is called; redacting detectors change what the
upstream is sent, so the token count, the cost guard and the budget follow the redacted
prompt. Output: ``state.output_guard`` is the scanner the pipeline feeds the upstream's
text through (pipeline/__init__.py): a stream's text is released as soon as no detector
can still match it, and a block ends the call with finish reason CONTENT_FILTER.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import ClassVar

from llmgateway_server.call import CallState
from llmgateway_server.errors import ContentBlocked
from llmgateway_server.guardrails.classifier import ClassifierFailed
from llmgateway_server.guardrails.output import ClassifierStage, OutputGuard
from llmgateway_server.guardrails.rules import Guardrails
from llmgateway_server.guardrails.scanner import Rule, scan_all
from llmgateway_server.types import ChatMessage

log = logging.getLogger("llmgateway.guardrails")


class GuardrailsPolicy:
    """Applies the route's (or the tenant's) detectors to the prompt and the output."""

    def __init__(self, guardrails: Guardrails) -> None:
        self._guardrails = guardrails

    async def before(self, state: CallState) -> None:
        """Check (and redact) the prompt; arm the output guard."""
        rules = self._guardrails.for_call(state.route.name, state.tenant)
        if rules.input:
            request = state.request
            messages = []
            changed = False
            for message in request.messages:
                scanned = self._scan_message(state, rules.input, message)
                changed = changed or scanned is not message
                messages.append(scanned)
            if changed:
                state.request = dataclasses.replace(request, messages=tuple(messages))
        if rules.input_classifier is not None:
            await self._classify_prompt(state, rules.input_classifier)
        if rules.checks_output:
            state.output_guard = OutputGuard(rules.output, rules.output_classifier)

    @staticmethod
    def _scan_message(state: CallState, rules: Sequence[Rule], message: ChatMessage) -> ChatMessage:
        """The message with its text (content, or each text part) redacted; raises
        ContentBlocked when a blocking detector matches."""
        texts = [message.content] if not message.parts else [p.text for p in message.parts]
        out: list[str | None] = []
        for text in texts:
            if not text:
                out.append(text)
                continue
            scanned = scan_all(rules, text)
            state.guardrail_findings.extend(
                (label, action, "input") for label, action in scanned.findings
            )
            if scanned.blocked_by is not None:
                raise ContentBlocked(
                    f"the prompt was blocked by the {scanned.blocked_by} guardrail",
                    metadata={"category": scanned.blocked_by, "direction": "input"},
                )
            out.append(scanned.text)
        if out == texts:
            return message
        if not message.parts:
            return dataclasses.replace(message, content=out[0] or "")
        parts = tuple(
            dataclasses.replace(p, text=t) if p.text is not None else p
            for p, t in zip(message.parts, out, strict=True)
        )
        return dataclasses.replace(message, parts=parts)

    @staticmethod
    async def _classify_prompt(state: CallState, stage: ClassifierStage) -> None:
        """The classifier's verdict on the (redacted) prompt, all messages together."""
        text = "\n".join(m.text for m in state.request.messages)
        try:
            verdict = await stage.classifier.classify(text)
        except ClassifierFailed as exc:
            state.guardrail_findings.append(("CLASSIFIER_ERROR", stage.on_error, "input"))
            if stage.on_error == "allow":
                log.warning("classifier failed; prompt allowed (on_error: allow): %s", exc)
                return
            raise ContentBlocked(
                "the prompt could not be checked by the classifier (on_error: block)",
                metadata={"category": "CLASSIFIER_ERROR", "direction": "input"},
            ) from None
        if verdict.flagged:
            state.guardrail_findings.extend(
                (f"CLASSIFIER:{c}", "block", "input") for c in verdict.categories
            )
            raise ContentBlocked(
                "the prompt was blocked by the classifier",
                metadata={"category": ",".join(verdict.categories), "direction": "input"},
            )

    # The pipeline skips an ``after`` that does nothing (no task per call for it).
    has_after: ClassVar[bool] = False

    async def after(self, state: CallState) -> None:
        """Nothing to undo."""
