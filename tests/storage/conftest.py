"""Fixtures shared by the storage tests: real Redis and PostgreSQL servers, started per
test on free loopback ports (tests/support/servers.py documents their API)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import (  # noqa: F401 - fixtures, found by name
    PostgresServer,
    ServerMissing,
    postgres_server,
    redis_cluster_node,
    redis_factory,
    redis_server,
    skip_or_fail,
)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for a module's tests that never stop it (each takes a database of
    its own); a test that stops, kills or pauses PostgreSQL takes ``postgres_server``."""
    try:
        server = PostgresServer()
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    with server:
        yield server
