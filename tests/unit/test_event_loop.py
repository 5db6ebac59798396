"""The suite runs on the event loop the gateway ships with."""

from __future__ import annotations

import asyncio

import uvloop
from llmgateway_server.config import ServerConfig


async def test_async_tests_run_on_uvloop_like_the_server() -> None:
    assert ServerConfig().event_loop == "uvloop"
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
