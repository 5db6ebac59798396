"""Shared fixtures: a fake upstream on 127.0.0.1 and the gateway in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop

from tests.support.servers import (  # noqa: F401 - fixtures, found by name
    postgres_server,
    redis_server,
)
from tests.support.upstream import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI + Anthropic server on 127.0.0.1."""
    async with FakeUpstream() as up:
        yield up


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on both loops the gateway runs on: asyncio, and uvloop, its
    default (a transport written against one must work on the other)."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
