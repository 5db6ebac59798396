"""The default PII detectors on a stream of ordinary prose, one word per chunk: what they
add to the time to first text and to the gaps between chunks.

A 200-word answer with no entities (``--words``), one word per SSE event ``--chunk-ms``
apart (the first right after the headers), from the fake upstream through the real
gateway (in-process, uvloop) on a route without guardrails and on one with the default PII
detectors (e-mail, phone, IBAN redacted; cards and secrets blocked). Runs alternate
between the two routes; medians of the per-stream figures over ``--runs`` streams each.

A chunk that ends inside a word is held until the next chunk: until then the word could
still become an e-mail address ("Paris" -> "Paris@example.com"), and the stream must equal
the unary answer however it was cut. So with one word per chunk, text reaches the caller
one chunk later, and the gaps between chunks stay the same.

    .venv/bin/python bench/bench_guardrails_stream.py [--words 200] [--chunk-ms 5] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.upstream import FakeUpstream, Respond

PROSE = (
    "the gateway relays model output to internal services that may show it to people "
    "or store it so every answer passes through the same checks before anyone reads it "
)

ROUTES = """
  plain:
    targets: [gpt]
  guarded:
    targets: [gpt]
    guardrails:
      detectors:
        - {kind: email, action: redact}
        - {kind: phone, action: redact, region: US}
        - {kind: card, action: block}
        - {kind: iban, action: redact}
        - {kind: secret, action: block}
"""


async def _one(gw: object, route: str) -> tuple[float, list[float]]:
    """(time to first text, gaps between deltas), in ms."""
    stub = gw.stub  # type: ignore[attr-defined]
    start = time.perf_counter()
    arrivals: list[float] = []
    request = pb.StreamCompleteRequest(model=route, messages=[user("Explain.")], max_tokens=4000)
    async for event in stub.StreamComplete(request, timeout=60):
        if event.WhichOneof("event") == "delta":
            arrivals.append((time.perf_counter() - start) * 1000)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return arrivals[0], gaps


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    words = (PROSE * (args.words // len(PROSE.split()) + 1)).split()[: args.words]
    text = " ".join(words) + "."
    async with FakeUpstream(chunk_delay_s=args.chunk_ms / 1000) as upstream:
        config = providers_config(upstream.base_url, routes=ROUTES)
        async with running_gateway(config, env=ENV) as gw:
            results: dict[str, tuple[list[float], list[float]]] = {
                "plain": ([], []),
                "guarded": ([], []),
            }
            for _ in range(args.runs):
                for route in ("plain", "guarded"):
                    upstream.script("gpt-4o-mini", Respond(text=text, chunks=len(words)))
                    first, gaps = await _one(gw, route)
                    results[route][0].append(first)
                    results[route][1].append(_p99(gaps))
    print(
        f"{len(words)} words, one per chunk, {args.chunk_ms:g} ms apart; medians over "
        f"{args.runs} streams per route\n"
    )
    print("| route | time to first text ms | inter-chunk p99 ms |")
    print("|---|---:|---:|")
    for route, (firsts, p99s) in results.items():
        label = "no guardrails" if route == "plain" else "default PII detectors"
        print(f"| {label} | {statistics.median(firsts):.2f} | {statistics.median(p99s):.2f} |")


def run() -> None:
    """Parse the arguments and measure."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--chunk-ms", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=10)
    uvloop.run(main(parser.parse_args()))


if __name__ == "__main__":
    run()
