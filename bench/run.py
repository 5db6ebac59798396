"""``make bench``: the gateway's overhead against direct calls and a bare relay, in one run.

Starts two fake upstreams (0 ms and 50 ms), the bare relay (bench/bare_relay.py) and one
gateway process per variant (HTTP transport x event loop, and the default with logging
on), all at once. For each measurement point one load-generator process
(bench/load.py alternate) drives direct, the relay and the gateways in turn, in short
slices, cycle after cycle, so that every system sees the same seconds of this shared
machine. Then 1,000 open streams against fresh processes (resident memory),
bench/bench_context.py (counting and trimming 10,000 messages), the upstream HTTP
clients, and the state stores' own benchmarks (budgets and rate limits on SQLite and
Redis, the usage ledger on SQLite and PostgreSQL). Writes bench/RESULTS.md, and
bench/out/results.json (raw), bench/out/logs/ and bench/out/configs/.

    .venv/bin/python bench/run.py [--cycles 8] [--slice 0.8] [--streams 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import http_client_cpu
import machine
import report
import workload
from gateway_config import Variant
from servers import (
    BENCH,
    OUT,
    PY,
    REPO,
    Children,
    start_gateway,
    start_relay,
    start_upstream,
)

DEFAULT = Variant()
VARIANTS = (
    DEFAULT,
    Variant(loop="asyncio"),
    Variant(log_level="info", access_log=True),
    Variant(guardrails=True),  # the default PII detectors on every route
)
# Memory only: prompts estimated, so tiktoken's cl100k_base tables are never loaded.
ESTIMATOR = Variant(tokenizer="estimate")
STREAM_CHUNK_DELAY_MS = 1
UNARY_SLOW_LATENCY_MS = 50
HOLD_CHUNK_DELAY_MS = 120_000
HOLD_CHUNKS = 3


@dataclass(frozen=True)
class Settings:
    """How long and how often each point is measured."""

    cycles: int = 8
    slice_s: float = 0.8
    warmup_s: float = 0.3
    first_warmup_s: float = 1.0
    max_extra_cycles: int = 6
    # Extra cycles (replacing loaded slices) may stretch a point to this many times its
    # planned length, which bounds the whole run.
    max_stretch: float = 1.3
    other_limit: float = 0.25  # cores busy with other work that void a cycle
    streams: int = 1000


@dataclass(frozen=True)
class Point:
    """One measurement: a mode, an upstream (route), a number of calls in flight."""

    mode: str
    route: str
    concurrency: int
    systems: tuple[str, ...]  # "direct", "relay" and variant names


def plan(variants: tuple[Variant, ...]) -> list[Point]:
    """The targets' points for every variant; the rest of the default's figures."""
    every = ("direct", "relay", *(v.name for v in variants))
    default = ("direct", "relay", DEFAULT.name)
    return [
        Point("unary", "u0", 1, every),
        Point("unary", "u0", 16, default),
        Point("unary", "u0", 64, default),
        Point("unary", "u50", 64, every),
        Point("stream", "u0", 1, every),
        Point("stream", "u0", 64, every),
    ]


def load(children: Children, *args: str, timeout_s: float = 600) -> dict[str, Any]:
    """Run bench/load.py once; its JSON result."""
    done = subprocess.run(
        [PY, str(BENCH / "load.py"), *args],
        cwd=REPO,
        env=children.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {args}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(
    children: Children, settings: Settings, point: Point, targets: dict[str, tuple[str, Any]]
) -> list[dict[str, Any]]:
    """One point: every system of it, alternating; one row per system."""
    per_slice = settings.warmup_s + settings.slice_s + 0.15
    planned = len(point.systems) * (settings.first_warmup_s + 0.2 + settings.cycles * per_slice)
    spec = {
        "deadline_unix": time.time() + planned * settings.max_stretch,
        "mode": point.mode,
        "route": point.route,
        "concurrency": point.concurrency,
        "channels": 1 if point.concurrency == 1 else 4,
        "first_warmup_s": settings.first_warmup_s,
        "warmup_s": settings.warmup_s,
        "slice_s": settings.slice_s,
        "cycles": settings.cycles,
        "max_extra_cycles": settings.max_extra_cycles,
        "other_limit": settings.other_limit,
        "systems": [
            {"name": name, "target": targets[name][0], "pids": targets[name][1]}
            for name in point.systems
        ],
    }
    result = load(children, "alternate", "--spec", json.dumps(spec))
    rows = []
    for name, row in result["systems"].items():
        row.update(system=name, mode=point.mode, route=point.route)
        row.update(cycles_run=result["cycles_run"])
        rows.append(row)
        p50 = row["latency_ms"].get("p50", float("nan"))
        print(
            f"  {point.mode:6} {point.route:4} c={point.concurrency:<3} {name:32} "
            f"{row['rate_per_s']:8.1f}/s  p50 {p50:7.2f} ms  "
            f"server CPU {row['cpu_ms_per_call'].get('server') or 0:6.3f} ms/call  "
            f"errors {row['errors'] or 0}",
            flush=True,
        )
    kept = [sum(s["kept"] for s in row["slices"]) for row in rows]
    print(f"  ({result['cycles_run']} cycles; clean slices per system {kept})", flush=True)
    return rows


def throughput_phase(
    children: Children, settings: Settings, variants: tuple[Variant, ...]
) -> list[dict[str, Any]]:
    """Upstreams, relay and gateways up together; every point measured."""
    up0 = start_upstream(
        children,
        "upstream-0ms",
        *("--chunks", str(workload.STREAM_CHUNKS), "--chunk-delay-ms", str(STREAM_CHUNK_DELAY_MS)),
    )
    up50 = start_upstream(children, "upstream-50ms", "--latency-ms", str(UNARY_SLOW_LATENCY_MS))
    upstreams = {"u0": up0, "u50": up50}
    addresses = {route: up.address for route, up in upstreams.items()}
    servers = {"relay": start_relay(children, "relay", addresses)}
    for variant in variants:
        servers[variant.name] = start_gateway(children, variant.name, variant, addresses)
    rows: list[dict[str, Any]] = []
    for point in plan(variants):
        upstream = upstreams[point.route]
        targets: dict[str, tuple[str, Any]] = {
            "direct": (f"http:{upstream.address}/v1", {"upstream": upstream.pid})
        }
        for name, child in servers.items():
            targets[name] = (
                f"grpc:{child.address}",
                {"server": child.pid, "upstream": upstream.pid},
            )
        rows += measure(children, settings, point, targets)
    for child in servers.values():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during the run; see {child.log_path}")
    return rows


def memory_phase(children: Children, streams: int) -> dict[str, Any]:
    """``streams`` open streams against a fresh relay, then fresh gateways."""
    hold = start_upstream(
        children,
        "upstream-hold",
        *("--chunks", str(HOLD_CHUNKS), "--chunk-delay-ms", str(HOLD_CHUNK_DELAY_MS)),
    )
    upstreams = {"hold": hold.address}
    out: dict[str, Any] = {"max_connections": streams + 100}
    for name in ("relay", DEFAULT.name, ESTIMATOR.name):
        if name == "relay":
            child = start_relay(children, "relay-memory", upstreams)
        else:
            variant = DEFAULT if name == DEFAULT.name else ESTIMATOR
            child = start_gateway(
                children, f"{name}-memory", variant, upstreams, max_connections=streams + 100
            )
        target = ("--target", f"grpc:{child.address}", "--route", "hold")
        # Warm the unary and the streaming path (20 streams opened, then cancelled)
        # before the idle baseline is read.
        load(children, "closed", *target, "--concurrency", "4", "--warmup", "0", "--duration", "1")
        load(children, "hold", *target, "--streams", "20", "--settle", "0.2")
        result = load(
            children,
            "hold",
            *target,
            *("--streams", str(streams), "--channels", "10", "--pid", f"server={child.pid}"),
        )
        out[name] = result
        during = result["during"]["server"]
        print(
            f"  memory {name:36} {result['opened']}/{streams} open, "
            f"RSS {during['VmRSS'] / 1024:.1f} MiB, fds {during['fds']}",
            flush=True,
        )
        children.stop(child)
    children.stop(hold)
    return out


def context_phase(children: Children) -> dict[str, Any]:
    """bench/bench_context.py (10,000 messages), parsed."""
    done = subprocess.run(
        [PY, str(BENCH / "bench_context.py")],
        cwd=REPO,
        env=children.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    counters: dict[str, dict[str, float]] = {}
    current: dict[str, float] = {}
    for line in done.stdout.splitlines():
        head = re.match(r"^(\S+): prompt", line)
        if head:
            current = counters.setdefault(head.group(1), {})
        row = re.match(r"^\s+(.+?)\s+([\d.]+) ms$", line)
        if row:
            current[row.group(1)] = float(row.group(2))
    return {"output": done.stdout, "counters": counters}


# The state stores' benchmarks (each prints a Markdown table), and their arguments in a
# full run and in --quick; the whole phase stays under ~90 s (~40 s here).
STATE_STORES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "bench_sqlite_budgets.py",
        ("--calls", "2000", "--concurrency", "1", "64"),
        ("--calls", "500", "--concurrency", "1", "64"),
    ),
    (
        "bench_redis_budgets.py",
        ("--calls", "2000", "--concurrency", "1", "64", "--take"),
        ("--calls", "300", "--concurrency", "1", "64", "--take"),
    ),
    (
        "bench_ledger.py",
        (
            *("--seconds", "2", "--writers", "1", "64", "--processes", "1", "4"),
            *("--synchronous", "NORMAL", "FULL"),
        ),
        (
            *("--seconds", "0.5", "--writers", "1", "64", "--processes", "1"),
            *("--synchronous", "NORMAL", "FULL"),
        ),
    ),
    ("bench_postgres_ledger.py", ("--seconds", "2"), ("--seconds", "0.5")),
)
STATE_STORE_TIMEOUT_S = 180


def state_stores_phase(children: Children, *, quick: bool) -> tuple[dict[str, str], list[str]]:
    """Each state store's benchmark: script name -> its output, or ``not run: <why>``
    when it failed (redis-server, or PostgreSQL's initdb/pg_ctl, missing); and the
    command lines run."""
    outputs: dict[str, str] = {}
    commands: list[str] = []
    for script, full, short in STATE_STORES:
        args = short if quick else full
        commands.append(" ".join(["bench/" + script, *args]))
        started = time.monotonic()
        try:
            done = subprocess.run(
                [PY, str(BENCH / script), *args],
                cwd=REPO,
                env=children.env,
                capture_output=True,
                text=True,
                timeout=STATE_STORE_TIMEOUT_S,
                check=True,
            )
            outputs[script] = done.stdout
        except subprocess.CalledProcessError as exc:
            lines = [line for line in (exc.stderr or "").splitlines() if line.strip()]
            outputs[script] = "not run: " + (lines[-1] if lines else f"exit {exc.returncode}")
        except subprocess.TimeoutExpired:
            outputs[script] = f"not run: timed out after {STATE_STORE_TIMEOUT_S} s"
        failed = outputs[script] if outputs[script].startswith("not run:") else "done"
        print(f"  {commands[-1]}: {failed} in {time.monotonic() - started:.1f} s", flush=True)
    return outputs, commands


def merge_context(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of bench_context.py, spread over the benchmark: the best of each row
    (the code's cost when the host gave it a full-speed core), and every run."""
    best: dict[str, dict[str, float]] = {}
    for run in runs:
        for counter, rows in run["counters"].items():
            for row, ms in rows.items():
                slot = best.setdefault(counter, {})
                slot[row] = min(ms, slot.get(row, ms))
    return {"counters": best, "runs": runs}


def main() -> None:
    """Run everything and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=Settings.cycles, help="cycles per point")
    parser.add_argument("--slice", type=float, default=Settings.slice_s, help="seconds per slice")
    parser.add_argument("--streams", type=int, default=Settings.streams, help="for memory")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short cycles")
    parser.add_argument("--no-matrix", action="store_true", help="only the default gateway")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the default gateway of git revision REV (an A/B in the same run)",
    )
    args = parser.parse_args()
    settings = Settings(cycles=args.cycles, slice_s=args.slice, streams=args.streams)
    if args.quick:
        settings = Settings(cycles=2, slice_s=0.5, max_extra_cycles=0, streams=100)
    variants = (DEFAULT,) if args.no_matrix else VARIANTS
    if args.baseline:
        variants = (*variants, Variant(baseline=args.baseline))
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine.describe(REPO),
        "settings": {
            **asdict(settings),
            "stream_chunks": workload.STREAM_CHUNKS,
            "stream_text_chars": len(workload.ANSWER_TEXT),
            "stream_chunk_delay_ms": STREAM_CHUNK_DELAY_MS,
            "slow_upstream_ms": UNARY_SLOW_LATENCY_MS,
            "command": "make bench  (" + " ".join(["bench/run.py", *sys.argv[1:]]) + ")",
        },
    }
    children = Children()
    try:
        print("machine speed drift: a fixed pure-Python task, 20 times", flush=True)
        results["calibration"] = machine.calibrate()
        print("context window: bench/bench_context.py (1 of 3)", flush=True)
        contexts = [context_phase(children)]
        print("throughput and latency", flush=True)
        results["points"] = throughput_phase(children, settings, variants)
        children.stop_all()
        print("context window: bench/bench_context.py (2 of 3)", flush=True)
        contexts.append(context_phase(children))
        print(f"memory: {settings.streams} open streams", flush=True)
        results["memory"] = memory_phase(children, settings.streams)
        print("context window: bench/bench_context.py (3 of 3)", flush=True)
        contexts.append(context_phase(children))
        print("upstream HTTP clients: bench/http_client_cpu.py", flush=True)
        results["http_clients"] = http_client_cpu.compare(
            children, requests=1000 if args.quick else 5000, rounds=1 if args.quick else 5
        )
        print("state stores: budgets, rate limits and the usage ledger", flush=True)
        results["state_stores"], results["state_store_commands"] = state_stores_phase(
            children, quick=args.quick
        )
        results["context"] = merge_context(contexts)
        results["calibration_after"] = machine.calibrate()
    finally:
        children.stop_all()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    markdown = report.render(results)
    (BENCH / "RESULTS.md").write_text(markdown)
    print(markdown)
    print(f"wrote bench/RESULTS.md and bench/out/results.json in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
