"""The load generator: a separate process that drives servers and prints one JSON object.

alternate: the systems of one measurement point (direct, the bare relay, gateways) in
turn, in short slices (``slice_s`` measured after ``warmup_s``), cycle after cycle, each
cycle starting with the next system. The machine's speed drifts by tens of percent over
seconds (a shared host), so systems compared side by side must share the same seconds: a
cycle takes a few seconds. A slice during which other processes kept more than
``other_limit`` cores busy is set aside, and cycles go on until every system has
``cycles`` clean slices, or ``cycles + max_extra_cycles`` cycles have run, or the clock
passes ``deadline_unix``. The spec is JSON: ``{"mode", "route", "concurrency",
"channels", "first_warmup_s", "warmup_s", "slice_s", "cycles", "max_extra_cycles",
"other_limit", "deadline_unix", "systems": [{"name", "target", "pids": {...}}]}``.

closed: one target, one window (``--warmup`` then ``--duration`` seconds).

hold: open ``--streams`` StreamComplete calls at once against an upstream that keeps
them open, wait until every one has received its first text, read the servers' resident
memory, then cancel them all.

Targets are ``grpc:HOST:PORT`` (relay or gateway) or ``http:BASE_URL`` (direct).

    python bench/load.py closed --target grpc:127.0.0.1:5000 --route u0 --mode unary \\
        --concurrency 64 --warmup 1 --duration 5 --pid server=1234
    python bench/load.py hold --target grpc:127.0.0.1:5000 --route hold --streams 1000 \\
        --pid server=1234
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from typing import Any

import procs
from callers import Caller, GrpcCaller, HttpCaller, Mode
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from window import Window, closed_loop, error_name, pooled


def make_caller(target: str, route: str, mode: Mode, concurrency: int, channels: int) -> Caller:
    """The caller for ``grpc:HOST:PORT`` or ``http:BASE_URL``."""
    kind, _, address = target.partition(":")
    if kind == "grpc":
        return GrpcCaller(address, route, mode, channels)
    if kind == "http":
        return HttpCaller(address, mode, concurrency)
    raise SystemExit(f"a target is grpc:HOST:PORT or http:URL, got {target!r}")


async def alternate(spec: dict[str, Any]) -> dict[str, Any]:
    """Every system of the spec, slice by slice, cycle by cycle."""
    mode, concurrency = spec["mode"], int(spec["concurrency"])
    systems = spec["systems"]
    names = [s["name"] for s in systems]
    pids = {s["name"]: s["pids"] for s in systems}
    callers = {
        s["name"]: make_caller(s["target"], spec["route"], mode, concurrency, spec["channels"])
        for s in systems
    }
    slices: dict[str, list[tuple[int, bool, Window]]] = {name: [] for name in names}

    cycles, most = int(spec["cycles"]), int(spec["cycles"]) + int(spec["max_extra_cycles"])
    deadline = float(spec["deadline_unix"])

    def done(cycle: int) -> bool:
        clean = min(sum(ok for _, ok, _ in slices[name]) for name in names)
        return clean >= cycles or cycle >= most or (cycle >= cycles and time.time() > deadline)

    cycle = 0
    try:
        for name in names:  # connections up, caches warm
            await closed_loop(
                callers[name],
                concurrency=concurrency,
                warmup_s=spec["first_warmup_s"],
                duration_s=0.1,
                pids={},
            )
        while not done(cycle):
            shift = cycle % len(names)
            for name in names[shift:] + names[:shift]:
                window = await closed_loop(
                    callers[name],
                    concurrency=concurrency,
                    warmup_s=spec["warmup_s"],
                    duration_s=spec["slice_s"],
                    pids=pids[name],
                )
                slices[name].append((cycle, window.other_cores() <= spec["other_limit"], window))
            cycle += 1
    finally:
        for caller in callers.values():
            await caller.aclose()
    out: dict[str, Any] = {"cycles_run": cycle, "systems": {}}
    for name in names:
        # A system without a single clean slice keeps them all (and says so).
        clean = any(ok for _, ok, _ in slices[name])
        kept = [(c, ok or not clean, w) for c, ok, w in slices[name]]
        out["systems"][name] = {
            **pooled([w for _, ok, w in kept if ok], concurrency),
            "all_slices_loaded": not clean,
            "slices": [{"cycle": c, "kept": ok, **w.brief()} for c, ok, w in kept],
        }
    return out


def _memory(pids: dict[str, int]) -> dict[str, dict[str, int]]:
    return {
        name: {**procs.memory_kib(pid), "fds": procs.open_fds(pid)} for name, pid in pids.items()
    }


async def hold(
    caller: GrpcCaller,
    *,
    streams: int,
    open_timeout_s: float,
    settle_s: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Open ``streams`` streams, measure memory while all are open, cancel them."""
    before = _memory(pids)
    opened = 0
    all_open = asyncio.Event()
    calls: list[aio.UnaryStreamCall[Any, Any]] = []

    async def one(index: int) -> None:
        nonlocal opened
        call = caller.open_stream(index, timeout_s=open_timeout_s + 4 * settle_s + 30)
        calls.append(call)
        first = await call.read()
        if not isinstance(first, pb.StreamCompleteResponse) or not first.HasField("delta"):
            raise RuntimeError("the stream did not start with text")
        opened += 1
        if opened == streams:
            all_open.set()
        await call.read()  # the next chunk comes long after we have cancelled

    started = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    with contextlib.suppress(TimeoutError):  # reported: opened < streams
        await asyncio.wait_for(all_open.wait(), open_timeout_s)
    open_s = time.perf_counter() - started
    await asyncio.sleep(settle_s)
    during = _memory(pids)
    still_open = sum(not t.done() for t in tasks)
    failed = Counter(
        error_name(exc)
        for t in tasks
        if t.done() and not t.cancelled() and (exc := t.exception()) is not None
    )
    for call in calls:
        call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(settle_s)
    after = _memory(pids)
    return {
        "streams": streams,
        "opened": opened,
        "open_at_measurement": still_open,
        "seconds_to_open_all": open_s,
        "errors": dict(failed),
        "before": before,
        "during": during,
        "after_cancel": after,
    }


def _pids(values: list[str]) -> dict[str, int]:
    return {name: int(pid) for name, pid in (v.split("=", 1) for v in values)}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "alternate":
        return await alternate(json.loads(args.spec))
    pids = _pids(args.pid)
    if args.command == "hold":
        grpc_caller = GrpcCaller(args.target.partition(":")[2], args.route, "stream", args.channels)
        try:
            return await hold(
                grpc_caller,
                streams=args.streams,
                open_timeout_s=args.open_timeout,
                settle_s=args.settle,
                pids=pids,
            )
        finally:
            await grpc_caller.aclose()
    caller = make_caller(args.target, args.route, args.mode, args.concurrency, args.channels)
    try:
        window = await closed_loop(
            caller,
            concurrency=args.concurrency,
            warmup_s=args.warmup,
            duration_s=args.duration,
            pids=pids,
        )
    finally:
        await caller.aclose()
    return pooled([window], args.concurrency)


def main() -> None:
    """Parse arguments, run, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    closed = sub.add_parser("closed", help="fixed calls in flight for a fixed time")
    closed.add_argument("--mode", choices=["unary", "stream"], default="unary")
    closed.add_argument("--concurrency", type=int, default=1)
    closed.add_argument("--warmup", type=float, default=1.0)
    closed.add_argument("--duration", type=float, default=5.0)
    held = sub.add_parser("hold", help="many concurrent open streams; resident memory")
    held.add_argument("--streams", type=int, default=1000)
    held.add_argument("--open-timeout", type=float, default=60.0)
    held.add_argument("--settle", type=float, default=1.0)
    for p in (closed, held):
        p.add_argument("--target", required=True, help="grpc:HOST:PORT or http:BASE_URL")
        p.add_argument("--route", default="u0", help="route (model) name for gRPC targets")
        p.add_argument("--channels", type=int, default=4, help="gRPC connections")
        p.add_argument("--pid", action="append", default=[], help="NAME=PID to measure")
    alternating = sub.add_parser("alternate", help="several systems, slice by slice")
    alternating.add_argument("--spec", required=True, help="JSON (see the module docstring)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args))), flush=True)


if __name__ == "__main__":
    main()
