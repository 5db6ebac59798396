"""Shared fixtures: a fake upstream on 127.0.0.1 and the gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.upstream import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI + Anthropic server on 127.0.0.1."""
    async with FakeUpstream() as up:
        yield up
