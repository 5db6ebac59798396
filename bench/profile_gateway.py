"""Where the gateway's CPU goes: the default gateway under cProfile, driven by bench/load.py.

Not part of ``make bench`` (the profiler roughly doubles the CPU per call, so its
figures are shares, not timings). For each mode, a fresh fake upstream and a fresh
gateway under ``python -m cProfile``, a closed-loop load, then SIGTERM (the gateway shuts
down cleanly, so cProfile writes its file); writes bench/out/profile-<mode>.prof and a
text summary (top functions by own time, and the gateway's and HTTP stack's functions by
cumulative time) to bench/out/profile-<mode>.txt.

    .venv/bin/python bench/profile_gateway.py [--modes unary stream] [--duration 8]
"""

from __future__ import annotations

import argparse
import io
import pstats
from pathlib import Path

import workload
from gateway_config import Variant
from run import STREAM_CHUNK_DELAY_MS, load
from servers import BENCH, LOGS, OUT, REPO, Children, start_gateway, start_upstream

TOP = 40
FOCUS = ("llmgateway_server", "httpx", "httptools", "aiohttp", "grpc", "json")


def summary(prof: Path, calls: int) -> str:
    """Top functions by own time, then the focus packages by cumulative time."""
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    text.write(f"{calls} calls completed in the measured window (the profile also covers\n")
    text.write("start-up, warm-up and shutdown). Divide a function's time by the calls.\n\n")
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumulative").print_stats("|".join(FOCUS), TOP)
    return text.getvalue()


def profile(children: Children, mode: str, concurrency: int, duration_s: float) -> Path:
    """One mode: upstream, gateway under cProfile, load, summary file."""
    upstream = start_upstream(
        children,
        f"profile-upstream-{mode}",
        *("--chunks", str(workload.STREAM_CHUNKS)),
        *("--chunk-delay-ms", str(STREAM_CHUNK_DELAY_MS)),
    )
    prof = OUT / f"profile-{mode}.prof"
    gateway = start_gateway(
        children, f"profile-gateway-{mode}", Variant(), {"u0": upstream.address}, profile_to=prof
    )
    result = load(
        children,
        *("closed", "--target", f"grpc:{gateway.address}", "--route", "u0", "--mode", mode),
        *("--concurrency", str(concurrency), "--warmup", "1", "--duration", str(duration_s)),
    )
    children.stop(gateway)
    children.stop(upstream)
    out = OUT / f"profile-{mode}.txt"
    out.write_text(summary(prof, int(result["completed"])))
    return out


def main() -> None:
    """Profile each mode and say where the summaries are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=["unary", "stream"], default=["unary"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    children = Children()
    try:
        for mode in args.modes:
            out = profile(children, mode, args.concurrency, args.duration)
            print(f"wrote {out.relative_to(REPO)}", flush=True)
    finally:
        children.stop_all()
    print(f"(summaries of cProfile runs; see {BENCH.relative_to(REPO)}/profile_gateway.py)")


if __name__ == "__main__":
    main()
