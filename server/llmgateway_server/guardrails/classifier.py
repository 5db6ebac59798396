"""The classifier stage: semantic moderation by a model that needs the whole text.

``Classifier`` is the interface; ``ModerationClassifier`` asks an OpenAI-compatible
``/v1/moderations`` endpoint (a configured provider of type ``openai`` or
``openai_compatible``, so the same HTTP client, pool, proxy, CA and key) and flags a text
when a configured category's score reaches its threshold (or, with no categories
configured, when the endpoint says ``flagged``). A classifier that fails or does not
answer within its timeout raises ``ClassifierFailed``; the route's ``on_error`` decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from llmgateway_server.errors import ProviderError

Moderate = Callable[[str, str], Awaitable[tuple[bool, Mapping[str, float]]]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a text is flagged, and by which categories."""

    flagged: bool
    categories: tuple[str, ...] = ()


class ClassifierFailed(Exception):
    """The classifier could not give a verdict (an error, or no answer in time)."""


class Classifier(Protocol):
    """Semantic moderation of one text."""

    async def classify(self, text: str) -> Verdict:
        """The verdict on ``text``; ClassifierFailed when there is none."""
        ...


class ModerationClassifier:
    """A ``/v1/moderations`` endpoint with per-category thresholds."""

    def __init__(
        self,
        moderate: Moderate,
        *,
        model: str,
        thresholds: Mapping[str, float],
        timeout_s: float,
    ) -> None:
        self._moderate = moderate
        self._model = model
        self._thresholds = dict(thresholds)
        self._timeout_s = timeout_s

    async def classify(self, text: str) -> Verdict:
        """Ask the endpoint; flag by the thresholds (or by its own verdict)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                flagged, scores = await self._moderate(self._model, text)
        except TimeoutError:
            raise ClassifierFailed("the moderation endpoint did not answer in time") from None
        except ProviderError as exc:
            raise ClassifierFailed(f"the moderation endpoint failed: {exc.message}") from None
        if not self._thresholds:
            return Verdict(flagged, ("flagged",) if flagged else ())
        over = tuple(c for c, t in self._thresholds.items() if scores.get(c, 0.0) >= t)
        return Verdict(bool(over), over)
