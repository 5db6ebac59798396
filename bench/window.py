"""One measurement window of a closed loop, and windows pooled into one figure.

``closed_loop`` keeps ``concurrency`` calls in flight against one caller: ``warmup_s``
unrecorded, then ``duration_s`` recorded. Throughput counts calls that completed inside
the window; latencies are every call that started and ended inside it. The CPU time of
each pid (and of this process) and the machine's busy time are read from /proc at the
window's edges.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import procs
from callers import CALL_ERRORS, Caller, Sample
from stats import summarize_ms

_ERROR_PAUSE_S = 0.01


def error_name(exc: BaseException) -> str:
    """A gRPC status code name, or the exception's type."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


@dataclass
class Window:
    """What one measured window saw."""

    samples: list[Sample] = field(default_factory=list)
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    box_s: dict[str, float] = field(default_factory=dict)

    def other_cores(self) -> float:
        """Cores kept busy by processes other than the measured ones (and this one)."""
        if not self.seconds:
            return 0.0
        return max(0.0, (self.box_s["busy"] - sum(self.cpu_s.values())) / self.seconds)

    def brief(self) -> dict[str, Any]:
        """Rate, median latency, CPU per call and machine load of this window alone."""
        ttfts = [s.ttft_s for s in self.samples if s.ttft_s is not None]
        return {
            "rate_per_s": self.completed / self.seconds if self.seconds else 0.0,
            "latency_ms": {"p50": summarize_ms([s.latency_s for s in self.samples]).get("p50")},
            "ttft_ms": {"p50": summarize_ms(ttfts).get("p50")} if ttfts else None,
            "cpu_ms_per_call": _per_call(self.cpu_s, self.completed),
            "other_cores": self.other_cores(),
            "steal_cores": self.box_s["steal"] / self.seconds if self.seconds else 0.0,
            "errors": dict(self.errors),
        }


def _per_call(cpu_s: dict[str, float], completed: int) -> dict[str, float | None]:
    return {k: (v * 1000 / completed if completed else None) for k, v in cpu_s.items()}


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    out["loadgen"] = procs.cpu_seconds(os.getpid())
    return out


async def closed_loop(
    caller: Caller,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    pids: dict[str, int],
    max_calls: int = 1_000_000,
) -> Window:
    """Run the closed loop; the measured window's figures."""
    begin = time.perf_counter() + warmup_s
    end = begin + duration_s
    window = Window()
    issued = 0
    edges: dict[str, tuple[float, dict[str, float], dict[str, float]]] = {}

    async def worker(index: int) -> None:
        nonlocal issued
        while issued < max_calls:
            started = time.perf_counter()
            if started >= end:
                return
            issued += 1
            try:
                sample = await caller(index)
            except CALL_ERRORS as exc:
                window.errors[error_name(exc)] += 1
                await asyncio.sleep(_ERROR_PAUSE_S)
                continue
            finished = time.perf_counter()
            if begin <= finished <= end:
                window.completed += 1
                if started >= begin:
                    window.samples.append(sample)

    async def read_edges() -> None:
        for name, at in (("begin", begin), ("end", end)):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            edges[name] = (time.perf_counter(), _cpu(pids), procs.box_seconds())

    await asyncio.gather(read_edges(), *(worker(i) for i in range(concurrency)))
    (t0, cpu0, box0), (t1, cpu1, box1) = edges["begin"], edges["end"]
    window.seconds = t1 - t0
    window.cpu_s = {name: cpu1[name] - cpu0[name] for name in cpu0}
    window.box_s = {name: box1[name] - box0[name] for name in box0}
    return window


def pooled(windows: list[Window], concurrency: int) -> dict[str, Any]:
    """Windows of the same system as one figure: totals over total time, latencies
    over every sample of every window (exact percentiles)."""
    seconds = sum(w.seconds for w in windows)
    completed = sum(w.completed for w in windows)
    samples = [s for w in windows for s in w.samples]
    errors: Counter[str] = Counter()
    cpu_s: Counter[str] = Counter()
    busy = 0.0
    for w in windows:
        errors.update(w.errors)
        cpu_s.update(w.cpu_s)
        busy += w.box_s["busy"]
    ttfts = [s.ttft_s for s in samples if s.ttft_s is not None]
    chunks = [s.chunks for s in samples]
    return {
        "concurrency": concurrency,
        "window_s": seconds,
        "windows": len(windows),
        "completed": completed,
        "errors": dict(errors),
        "rate_per_s": completed / seconds if seconds else 0.0,
        "latency_ms": summarize_ms([s.latency_s for s in samples]),
        "ttft_ms": summarize_ms(ttfts) if ttfts else None,
        "chunks_per_call": sum(chunks) / len(chunks) if chunks else 0.0,
        "cpu_s": dict(cpu_s),
        "cpu_ms_per_call": _per_call(dict(cpu_s), completed),
        "cpu_util": {name: v / seconds for name, v in cpu_s.items()} if seconds else {},
        "box": {
            "busy_cores": busy / seconds if seconds else 0.0,
            "other_cores": max(w.other_cores() for w in windows) if windows else 0.0,
        },
    }
