"""Fixtures of the integration tests: real servers (tests/support/servers.py)."""

from __future__ import annotations

from tests.support.servers import postgres_server  # noqa: F401 - a fixture, found by name
