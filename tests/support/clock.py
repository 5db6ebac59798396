"""A fake clock for policies that take a Clock: time moves only when told."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic time that advances on ``advance`` or ``sleep``; fixed randomness."""

    def __init__(self, start: float = 1000.0, random_value: float = 0.5) -> None:
        self.t = start
        self.random_value = random_value
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Current fake time."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time instead of waiting."""
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)

    def random(self) -> float:
        """The configured random value."""
        return self.random_value
