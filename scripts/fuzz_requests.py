"""A larger fuzz campaign than the test's: malformed request bodies (tests/support/fuzz.py)
sent to every GatewayService method of an in-process gateway (mock route ``echo``,
anonymous callers), several seeded runs; prints the status codes per family and every
answer that is not a documented one, and counts ERROR log records and tracebacks.

    .venv/bin/python scripts/fuzz_requests.py [--runs 4] [--per-family 28] [--seed 1]

Exits 1 when any call got UNKNOWN or INTERNAL, an undecodable body got anything but
INVALID_ARGUMENT, or an ERROR record or traceback was logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from grpc import aio

from tests.support.fuzz import MOCK_CONFIG, Payload, corpus, decodes
from tests.support.gateway import running_gateway

DECODED_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}


class _Problems(logging.Handler):
    """Counts ERROR records and records with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors = 0
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.errors += record.levelno >= logging.ERROR
        self.tracebacks += record.exc_info is not None


async def _send(channel: aio.Channel, payload: Payload) -> tuple[str, str]:
    # No serializers: the body goes out as the bytes it is (the stubs type that as Never).
    stream: Any = channel.unary_stream(payload.path)
    unary: Any = channel.unary_unary(payload.path)
    try:
        if payload.method == "StreamComplete":
            async for _ in stream(payload.body, timeout=10):
                pass
        else:
            await unary(payload.body, timeout=10)
    except aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return grpc.StatusCode.OK.name, ""


async def _run(seed: int, per_family: int, problems: _Problems) -> int:
    payloads = list(corpus(seed, per_family))
    gate = asyncio.Semaphore(32)
    by_family: dict[str, Counter[str]] = {}
    bad: list[str] = []

    async def one(channel: aio.Channel, payload: Payload) -> None:
        async with gate:
            code, message = await _send(channel, payload)
        decoded = decodes(payload)
        by_family.setdefault(payload.family, Counter())[code] += 1
        if (decoded and code not in DECODED_CODES) or (not decoded and code != "INVALID_ARGUMENT"):
            bad.append(f"  {payload.family} {payload.method} decodes={decoded}: {code} {message!r}")

    errors, tracebacks = problems.errors, problems.tracebacks
    async with running_gateway(MOCK_CONFIG) as gw:
        await asyncio.gather(*(one(gw.channel, p) for p in payloads))
    total: Counter[str] = sum(by_family.values(), Counter())
    print(f"run seed={seed}: {len(payloads)} calls, codes {dict(total.most_common())}")
    for family, codes in by_family.items():
        print(f"  {family:16s} {dict(codes.most_common())}")
    new_errors, new_tracebacks = problems.errors - errors, problems.tracebacks - tracebacks
    print(f"  ERROR records {new_errors}, records with a traceback {new_tracebacks}")
    for line in bad[:20]:
        print(line)
    return len(bad) + new_errors + new_tracebacks


def main() -> None:
    """Run the campaign and exit 1 on any undocumented answer or ERROR log record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--per-family", type=int, default=28, help="per family and method")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    problems = _Problems()
    logging.getLogger().addHandler(problems)
    logging.getLogger().setLevel(logging.INFO)
    failures = sum(
        asyncio.run(_run(args.seed + n, args.per_family, problems)) for n in range(args.runs)
    )
    print("FAIL" if failures else "OK", f"({failures} problems)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
