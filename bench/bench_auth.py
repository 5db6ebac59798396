"""What authenticating one call costs: a config key, a cached store key, an uncached store
key (a SQLite lookup), and an unknown key cached as unknown.

The interceptor awaits ``Authenticator.authenticate`` once per call; config keys are a
dict lookup after the SHA-256, store keys the same plus the cache's dict lookup, until
their entry expires (every 2 s) and one call pays a store read.

    .venv/bin/python bench/bench_auth.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from llmgateway_server.admin import Admin, TenantSpec
from llmgateway_server.auth import Authenticator
from llmgateway_server.errors import AuthenticationFailed
from llmgateway_server.key_cache import StoreKeyCache
from llmgateway_server.storage.sqlite import SqliteDatabase, SqliteTenantStore

CONFIG_KEY = "gw-config-key-0123456789abcdef"


async def _per_call_us(call: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6


async def _unknown(auth: Authenticator) -> None:
    with contextlib.suppress(AuthenticationFailed):
        await auth.authenticate("Bearer not-a-key-at-all")


async def main(calls: int) -> None:
    """Measure and print each case."""
    with tempfile.TemporaryDirectory() as scratch:
        db = await SqliteDatabase.open(Path(scratch) / "bench.db")
        store = SqliteTenantStore(db)
        cache = StoreKeyCache(store)
        auth = Authenticator(
            {hashlib.sha256(CONFIG_KEY.encode()).hexdigest(): "team"},
            {"team": ["*"]},
            None,
            store_keys=cache,
        )
        admin = Admin(store, config_tenants={}, route_names=(), key_cache=cache)
        await admin.create_tenant(TenantSpec("acme"))
        store_key = (await admin.create_key("acme")).api_key
        config_bearer, store_bearer = f"Bearer {CONFIG_KEY}", f"Bearer {store_key}"

        async def uncached() -> None:
            cache.forget_key(hashlib.sha256(store_key.encode()).hexdigest())
            await auth.authenticate(store_bearer)

        cases: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
            ("config key", lambda: auth.authenticate(config_bearer), calls),
            ("store key, cached", lambda: auth.authenticate(store_bearer), calls),
            ("unknown key, cached as unknown", lambda: _unknown(auth), calls),
            ("store key, not cached (SQLite read)", uncached, max(1, calls // 100)),
        ]
        rounds: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(7):  # interleaved, so drift hits every case alike; the median
            for name, call, n in cases:
                rounds[name].append(await _per_call_us(call, n))
        for name, figures in rounds.items():
            print(f"{name:40s} {statistics.median(figures):8.2f} us per call")
        await cache.aclose()
        await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    uvloop.run(main(args.calls))
