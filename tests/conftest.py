"""Shared fixtures: a fake upstream on 127.0.0.1 and the gateway in front of it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.support.upstream import FakeUpstream

# CI sets this so that a test which would skip for a missing server binary fails instead.
REQUIRE_ALL = os.environ.get("LLMGATEWAY_REQUIRE_ALL_TESTS") == "1"


def require_binary(name: str) -> str:
    """The path of ``name``; skip (or, in CI, fail) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        if REQUIRE_ALL:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI + Anthropic server on 127.0.0.1."""
    async with FakeUpstream() as up:
        yield up
