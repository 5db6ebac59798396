"""Time, injectable: policies that depend on the clock take a Clock so tests need not sleep."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time, sleeping and randomness (for jitter)."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep (cancellable)."""
        ...

    def random(self) -> float:
        """A uniform float in [0, 1)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep()."""
        await asyncio.sleep(seconds)

    def random(self) -> float:
        """random.random()."""
        return random.random()
