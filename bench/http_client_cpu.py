"""CPU per upstream request of each HTTP client, on uvloop, against the fake upstream.

The gateway's own client (``h1``, through ``build_upstream_client`` as the providers
use it) beside the libraries it was compared with, each used directly and as lean as it
goes (no compression, keep-alive, one session): aiohttp, httpx's default transport
(httpcore), and pyreqwest (Rust: reqwest + hyper) when installed. A library here is a
candidate measured, not a selectable transport: tests/integration/test_hostile_upstream.py
decides what is selectable.

Each client runs in a child process of its own (so the CPU counted, all threads
included, is the client's alone): a warm-up, then sequential keep-alive POSTs, JSON
answers read whole and 20-chunk SSE answers read as a stream. Rounds alternate the
clients; the table gives each one's median over the rounds.

    .venv/bin/python bench/http_client_cpu.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
import workload
from servers import PY, Children, start_upstream

CLIENTS = ("h1", "aiohttp", "httpx", "pyreqwest")
WARMUP = 200
SSE_REQUESTS_SHARE = 4  # one SSE request for every four JSON ones
# A client as the child uses it: send one body and read the answer (its length), close.
Client = tuple[Callable[[bytes], Awaitable[int]], Callable[[], Awaitable[None]]]


def _headers() -> list[tuple[str, str]]:
    return [(k, v) for k, v in workload.upstream_headers().items()]


async def _h1(url: str) -> Client:
    import httpx
    from llmgateway_server.providers.http import body_stream, build_upstream_client, read_body

    client = build_upstream_client(
        transport="h1",
        max_connections=16,
        max_keepalive_connections=16,
        keepalive_expiry_s=30,
        connect_timeout_s=5,
    )
    target = httpx.URL(url)
    headers = tuple(_headers())

    async def call(body: bytes) -> int:
        async with client.post(target, headers=headers, body=body, timeout_s=30) as response:
            if b'"stream":true' in body:
                return sum([len(chunk) async for chunk in body_stream(response)])
            return len(await read_body(response))

    return call, client.aclose


async def _aiohttp(url: str) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent")
    )
    headers = workload.upstream_headers()

    async def call(body: bytes) -> int:
        async with session.post(url, data=body, headers=headers) as response:
            if b'"stream":true' in body:
                return sum([len(chunk) async for chunk in response.content.iter_any()])
            return len(await response.read())

    return call, session.close


async def _httpx(url: str) -> Client:
    import httpx

    client = httpx.AsyncClient(trust_env=False, timeout=30)
    headers = workload.upstream_headers()

    async def call(body: bytes) -> int:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            return sum([len(chunk) async for chunk in response.aiter_raw()])

    return call, client.aclose


async def _pyreqwest(url: str) -> Client:
    # Imported by name: pyreqwest is a candidate, not a dependency (mypy need not see it).
    builder: Any = importlib.import_module("pyreqwest.client").ClientBuilder
    client = (
        builder()
        .no_proxy()
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .http1_only()
        .build()
    )
    headers = _headers()

    async def call(body: bytes) -> int:
        if b'"stream":true' in body:
            request = (
                client.post(url)
                .headers(headers)
                .body_bytes(body)
                .streamed_read_buffer_limit(0)  # else the head waits for 64 KiB of body
                .build_streamed()
            )
            total = 0
            async with request as response:
                while (chunk := await response.body_reader.read_chunk()) is not None:
                    total += len(chunk)
            return total
        response = await client.post(url).headers(headers).body_bytes(body).build().send()
        return len(await response.bytes())

    return call, client.close


FACTORIES: dict[str, Any] = {
    "h1": _h1,
    "aiohttp": _aiohttp,
    "httpx": _httpx,
    "pyreqwest": _pyreqwest,
}


async def _child(name: str, url: str, requests: int) -> dict[str, float]:
    call, close = await FACTORIES[name](url)
    unary = workload.openai_body_bytes(stream=False)
    stream = workload.openai_body_bytes(stream=True)
    try:
        for i in range(WARMUP):
            await call(stream if i % SSE_REQUESTS_SHARE == 0 else unary)
        measured: dict[str, float] = {}
        for label, body, count in (
            ("json", unary, requests),
            ("sse", stream, requests // SSE_REQUESTS_SHARE),
        ):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                assert await call(body) > 0
            measured[f"{label}_cpu_us"] = (time.process_time() - cpu) / count * 1e6
            measured[f"{label}_wall_us"] = (time.perf_counter() - wall) / count * 1e6
        return measured
    finally:
        await close()


def _run_child(name: str, url: str, requests: int, env: dict[str, str]) -> dict[str, float] | None:
    done = subprocess.run(
        [PY, __file__, "--child", name, "--url", url, "--requests", str(requests)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(children: Children, *, requests: int, rounds: int) -> dict[str, dict[str, float]]:
    """Every client, ``rounds`` times in turn against one fake upstream: the median of
    each figure per client (a client that is not installed or failed has none)."""
    upstream = start_upstream(children, "upstream-http-clients", "--uvloop", "--chunks", "20")
    url = f"{upstream.address}/v1/chat/completions"
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for _ in range(rounds):
        for name in CLIENTS:
            result = _run_child(name, url, requests, children.env)
            if result is not None:
                runs[name].append(result)
    medians: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        if results:
            medians[name] = {key: statistics.median(r[key] for r in results) for key in KEYS}
            medians[name]["rounds"] = len(results)
    return medians


KEYS = ("json_cpu_us", "json_wall_us", "sse_cpu_us", "sse_wall_us")


def table(medians: dict[str, dict[str, float]]) -> list[str]:
    """The comparison as markdown rows (header included)."""
    lines = [
        "| client | JSON CPU µs | JSON wall µs | SSE (20 chunks) CPU µs | SSE wall µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in CLIENTS:
        figures = medians.get(name)
        if figures is None:
            lines.append(f"| {name} | not installed or failed | | | |")
            continue
        lines.append(f"| {name} | " + " | ".join(f"{figures[k]:.0f}" for k in KEYS) + " |")
    return lines


def main() -> None:
    """Parse the arguments; run one child, or the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=CLIENTS)
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(uvloop.run(_child(args.child, args.url, args.requests))))
        return
    children = Children()
    try:
        medians = compare(children, requests=args.requests, rounds=args.rounds)
    finally:
        children.stop_all()
    print(f"CPU (and wall) per request, median of {args.rounds} rounds, uvloop:")
    print("\n".join(table(medians)))


if __name__ == "__main__":
    main()
