"""The shared HTTP client of each provider: one keep-alive pool, limits set.

httpx is the API; the transport underneath is a measured choice (``server.http_transport``):
aiohttp's costs far less CPU per request than httpx's default (see bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

HttpTransportName = Literal["aiohttp", "httpx"]


def build_http_client(
    *,
    transport: HttpTransportName,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry_s: float,
    connect_timeout_s: float,
) -> httpx.AsyncClient:
    """An AsyncClient with a bounded pool; per-request timeouts come from the deadline."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry_s,
    )
    timeout = httpx.Timeout(60.0, connect=connect_timeout_s)
    if transport == "aiohttp":
        return httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )
    return httpx.AsyncClient(
        limits=limits, timeout=timeout, follow_redirects=False, trust_env=False
    )


def request_timeout(total_s: float, connect_s: float) -> httpx.Timeout:
    """Per-request timeout: nothing may outlast the attempt's share of the deadline."""
    return httpx.Timeout(total_s, connect=min(connect_s, total_s))


def is_timeout(exc: httpx.HTTPError) -> bool:
    """Whether a transport error really was a timeout.

    httpx-aiohttp maps every aiohttp connection error (a reset, a server that hung up)
    to ``httpx.ConnectTimeout``; the aiohttp cause says what actually happened.
    """
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return not isinstance(cause, aiohttp.ClientError) or isinstance(cause, TimeoutError)
