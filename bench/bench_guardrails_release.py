"""The classifier stage's release modes: what the caller waits for, buffer against sentence.

A stream of ``--sentences`` sentences (``--chunk-ms`` between chunks, one word per chunk)
from the fake upstream, through the real gateway (in-process) on a route with the email
detector alone, with a classifier in ``buffer`` mode, and in ``sentence`` mode; the
moderation endpoint answers after ``--moderation-ms``. Reported per mode: time to the
first text the caller gets, time to the end of the stream, and the number of
classifications (medians over ``--runs``).

    .venv/bin/python bench/bench_guardrails_release.py [--sentences 10] [--moderation-ms 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmgateway.v1 import gateway_pb2 as pb

from tests.support.configs import ENV, providers_config
from tests.support.gateway import running_gateway, user
from tests.support.upstream import FakeUpstream, Respond

SENTENCE = "The quarterly numbers look steady and the team is on track."


def _routes() -> str:
    email = "{kind: email, action: redact}"
    classifier = "{provider: openai, categories: {violence: 0.5}, release: %s, timeout_s: 5}"
    return f"""
  detectors-only:
    targets: [gpt]
    guardrails: {{detectors: [{email}]}}
  buffer:
    targets: [gpt]
    guardrails: {{detectors: [{email}], classifier: {classifier % "buffer"}}}
  sentence:
    targets: [gpt]
    guardrails: {{detectors: [{email}], classifier: {classifier % "sentence"}}}
"""


async def _one(gw: object, route: str) -> tuple[float, float]:
    stub = gw.stub  # type: ignore[attr-defined]
    start = time.perf_counter()
    first: float | None = None
    request = pb.StreamCompleteRequest(model=route, messages=[user("Status?")], max_tokens=2000)
    async for event in stub.StreamComplete(request, timeout=60):
        if first is None and event.WhichOneof("event") == "delta":
            first = time.perf_counter() - start
    return (first if first is not None else float("nan")), time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    text = " ".join([SENTENCE] * args.sentences)
    words = len(text.split())
    async with FakeUpstream(chunk_delay_s=args.chunk_ms / 1000) as upstream:
        upstream.moderation_delay_s = args.moderation_ms / 1000
        config = providers_config(upstream.base_url, routes=_routes())
        async with running_gateway(config, env=ENV) as gw:
            print(f"{args.sentences} sentences, {words} chunks {args.chunk_ms} ms apart; ", end="")
            print(f"moderation answers in {args.moderation_ms} ms; median of {args.runs} runs\n")
            print("| mode | first text ms | end of stream ms | classifications per stream |")
            print("|---|---:|---:|---:|")
            for route in ("detectors-only", "buffer", "sentence"):
                firsts, ends = [], []
                before = len(upstream.requests)
                for _ in range(args.runs):
                    upstream.script("gpt-4o-mini", Respond(text=text, chunks=words))
                    first, end = await _one(gw, route)
                    firsts.append(first * 1000)
                    ends.append(end * 1000)
                calls = sum(1 for r in upstream.requests[before:] if r.path == "/v1/moderations")
                print(
                    f"| {route} | {statistics.median(firsts):.1f} | "
                    f"{statistics.median(ends):.1f} | {calls / args.runs:.0f} |"
                )


def run() -> None:
    """Parse the arguments and measure."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--chunk-ms", type=float, default=5.0)
    parser.add_argument("--moderation-ms", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=5)
    uvloop.run(main(parser.parse_args()))


if __name__ == "__main__":
    run()
