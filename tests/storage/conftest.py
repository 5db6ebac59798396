"""Fixtures shared by the storage tests: real Redis and PostgreSQL servers, started per
test on free loopback ports (tests/support/servers.py documents their API)."""

from __future__ import annotations

from tests.support.servers import (  # noqa: F401 - fixtures, found by name
    postgres_server,
    redis_cluster_node,
    redis_factory,
    redis_server,
)
