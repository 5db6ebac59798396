"""Where and with what a benchmark ran: CPUs, memory, kernel, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("grpcio", "protobuf", "aiohttp", "httptools", "httpx", "uvloop")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def describe(repo: Path) -> dict[str, Any]:
    """The machine, the versions and the commit (noting uncommitted server changes)."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    dirty = _git(repo, "status", "--porcelain", "--", "server")
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
        "commit": _git(repo, "rev-parse", "--short", "HEAD")
        + (" (server/ modified)" if dirty else ""),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def calibrate(rounds: int = 20, pause_s: float = 0.1) -> dict[str, float]:
    """How fast this machine runs a fixed piece of pure-Python work, ``rounds`` times:
    the spread says how much the host's speed drifts from one second to the next."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        table: dict[str, int] = {}
        total = 0
        for i in range(100_000):
            total += i * i % 7
            if i % 4 == 0:
                table[str(i)] = total
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(pause_s)
    ordered = sorted(times)
    return {"min_ms": ordered[0], "median_ms": ordered[len(ordered) // 2], "max_ms": ordered[-1]}
