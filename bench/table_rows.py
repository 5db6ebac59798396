"""The rows of the result tables (unary, streaming, transport x loop, logging, memory)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from aggregate import Points, cpu, kept_slices, latency, minus, rate, rate_ratio
from md import DEFAULT, LOGGED, MB, fmt
from target_checks import added as added_by
from target_checks import errors_cell, pooled_added, rate_cell


def unary_rows(points: Points) -> list[list[str]]:
    rows = []
    for route, concurrency in (("u0", 1), ("u0", 16), ("u0", 64), ("u50", 64)):
        point = ("unary", route, concurrency)
        for system in ("direct", "relay", DEFAULT):
            r = points.get(system, *point)
            if r is None:
                continue
            added = [pooled_added(points, system, point, "latency_ms", p) for p in ("p50", "p99")]
            rows.append(
                [
                    f"{route[1:]} ms",
                    str(concurrency),
                    system,
                    rate_cell(r),
                    fmt(latency(r, "latency_ms", "p50"), 3),
                    fmt(latency(r, "latency_ms", "p99"), 3),
                    "" if system == "direct" else f"{fmt(added[0], 3)} / {fmt(added[1], 3)}",
                    "" if system == "direct" else fmt(cpu(r), 3),
                    fmt(cpu(r, "upstream"), 3),
                    fmt(cpu(r, "loadgen"), 3),
                    fmt(r["box"]["other_cores"]),
                    errors_cell(r),
                ]
            )
    return rows


def stream_rows(points: Points, systems: Sequence[str]) -> list[list[str]]:
    rows = []
    for concurrency in (1, 64):
        point = ("stream", "u0", concurrency)
        relay = points.get("relay", *point)
        for system in systems:
            r = points.get(system, *point)
            if r is None:
                continue
            chunks = r["chunks_per_call"] or math.nan
            server = cpu(r) if system != "direct" else None
            own = minus(server, cpu(relay)) if system.startswith("gateway-") else None
            added = pooled_added(points, system, point, "ttft_ms", "p50")
            rows.append(
                [
                    str(concurrency),
                    system,
                    rate_cell(r),
                    fmt(latency(r, "ttft_ms", "p50"), 3),
                    fmt(latency(r, "ttft_ms", "p99"), 3),
                    "" if system == "direct" else fmt(added, 3),
                    fmt(latency(r, "latency_ms", "p50"), 2),
                    "" if server is None else fmt(server, 2),
                    "" if server is None else fmt(server * 1000 / chunks, 0),
                    "" if own is None else fmt(own * 1000 / chunks, 0),
                    fmt(r["box"]["other_cores"]),
                    errors_cell(r),
                ]
            )
    return rows


def matrix_rows(points: Points) -> list[list[str]]:
    rows = []
    unary, one = ("unary", "u50", 64), ("unary", "u0", 1)
    stream, first = ("stream", "u0", 64), ("stream", "u0", 1)
    for system in points.systems:
        if not system.startswith("gateway-"):
            continue
        u, s = points.get(system, *unary), points.get(system, *stream)
        unary_x = rate_ratio(u, points.get("relay", *unary))
        stream_x = rate_ratio(s, points.get("relay", *stream))
        added = [pooled_added(points, system, one, "latency_ms", p) for p in ("p50", "p99")]
        ttft = pooled_added(points, system, first, "ttft_ms", "p50")
        rows.append(
            [
                system.removeprefix("gateway-"),
                f"{fmt(rate(u), 0)} ({fmt(unary_x)}×)",
                fmt(cpu(u), 3),
                fmt(added[0], 3),
                fmt(added[1], 3),
                f"{fmt(rate(s), 0)} ({fmt(stream_x)}×)",
                fmt(cpu(s), 2),
                fmt(cpu(points.get(system, *first)), 2),
                fmt(ttft, 3),
            ]
        )
    return rows


def fastest(points: Points) -> str:
    """The transport/loop pair with the least server CPU per call, unary and streaming."""
    lines = []
    for label, mode, route in (("unary", "unary", "u50"), ("streaming", "stream", "u0")):
        ranked = sorted(
            (ms, system)
            for system in points.systems
            if system.startswith("gateway-")
            and not system.endswith(("+logs", "+guardrails"))
            and (ms := cpu(points.get(system, mode, route, 64))) is not None
        )
        if ranked:
            ms, best = ranked[0]
            others = ", ".join(f"{s.removeprefix('gateway-')} {c:.3f}" for c, s in ranked[1:])
            lines.append(
                f"- Least server CPU per {label} call at 64 in flight: "
                f"**{best.removeprefix('gateway-')}** ({ms:.3f} ms; {others})."
            )
    return "\n".join(lines)


def ab(points: Points) -> str:
    """The default gateway against each baseline revision (``...@rev``) of the same run."""
    one, unary = ("unary", "u0", 1), ("unary", "u50", 64)
    parts = []
    for base in points.systems:
        if "@" not in base:
            continue
        rev = base.partition("@")[2]
        mine, theirs = (pooled_added(points, s, one, "latency_ms", "p50") for s in (DEFAULT, base))
        per_cycle = points.paired(DEFAULT, base, one, added_by("latency_ms", "p50"))
        cpus = [cpu(points.get(s, *unary)) for s in (DEFAULT, base)]
        ratio = None if cpus[0] is None or not cpus[1] else cpus[0] / cpus[1]
        spread = (
            "; per cycle " + ", ".join(fmt(v, 3) for v in per_cycle) if len(per_cycle) > 1 else ""
        )
        parts.append(
            f"A/B against {rev} (its default gateway, `{base}`, in this same run): added "
            f"latency p50, 1 in flight, 0 ms upstream, this tree − {rev}: "
            f"{fmt(minus(mine, theirs), 3)} ms ({fmt(mine, 3)} vs {fmt(theirs, 3)} ms over "
            f"direct{spread}). Unary server CPU at 64 in flight, 50 ms upstream: "
            f"{fmt(cpus[0], 3)} ms per call here, {fmt(cpus[1], 3)} ms for {rev} "
            f"({fmt(ratio)}×)."
        )
    return "\n\n".join(parts)


def noise(results: dict[str, Any]) -> str:
    """How much the shared machine's speed drifted, and how busy it was with other work."""
    rows = results.get("points", [])
    if not rows:
        return ""
    settings = results["settings"]
    run = sum(len(r["slices"]) for r in rows)
    kept = sum(len(kept_slices(r)) for r in rows)
    loaded = [
        f"{r['system']} {r['mode']} {r['concurrency']}" for r in rows if r["all_slices_loaded"]
    ]
    other = max(float(r["box"]["other_cores"]) for r in rows)
    drift = "; ".join(
        f"a fixed pure-Python task took {fmt(cal['min_ms'], 0)}–{fmt(cal['max_ms'], 0)} ms "
        f"(median {fmt(cal['median_ms'], 0)}) over 20 tries {when} the run"
        for key, when in (("calibration", "before"), ("calibration_after", "after"))
        if (cal := results.get(key))
    )
    return (
        f"- Shared machine: {drift}; the CPU's speed drifts over seconds, so systems are "
        f"compared slice by slice ({settings['slice_s']} s slices after "
        f"{settings['warmup_s']} s warm-up, all systems of a point in turn, "
        f"{settings['cycles']} cycles). Slices in which other processes kept more than "
        f"{settings['other_limit']} cores busy were set aside and more cycles run (bounded): "
        f"{kept} of {run} slices kept; at most {other:.2f} cores of other load in a kept "
        "slice."
        + (
            f" No clean slice at all (all kept, figures suspect): {', '.join(loaded)}."
            if loaded
            else ""
        )
    )


def contention(points: Points) -> str:
    """Who used the 2 cores at the unary throughput target's point."""
    parts = []
    for system in ("relay", DEFAULT):
        r = points.get(system, "unary", "u50", 64)
        if r is None:
            continue
        util = r["cpu_util"]
        parts.append(
            f"{system}: server {fmt(util.get('server'))}, upstream {fmt(util.get('upstream'))}, "
            f"load generator {fmt(util.get('loadgen'))}"
        )
    if not parts:
        return ""
    return (
        "CPU contention at 64 in flight, 50 ms upstream (cores busy, of 2): "
        + "; ".join(parts)
        + ". A server near 1.0 is saturating its one event-loop thread: its requests/s is "
        "then about 1 / its CPU per call, and the ratio to the relay follows their CPU per call."
    )


def headroom(points: Points) -> str:
    """What the unary throughput target asks of the gateway's CPU per call, here."""
    relay = points.get("relay", "unary", "u50", 64)
    gateway = points.get(DEFAULT, "unary", "u50", 64)
    relay_rate, gateway_cpu = rate(relay), cpu(gateway)
    if not relay_rate or gateway_cpu is None or relay is None or gateway is None:
        return ""
    needed = 1000 / (0.8 * relay_rate)
    relay_busy = float(relay["cpu_util"].get("server") or 0.0)
    gateway_busy = float(gateway["cpu_util"].get("server") or 0.0)

    def bound(busy: float) -> str:
        if busy < 0.9:
            return "is bounded by the upstream's latency (64 calls / ~55 ms)"
        return "is close to saturating its event-loop thread"

    return (
        f"Unary throughput target: with a 50 ms upstream the bare relay {bound(relay_busy)} "
        f"({fmt(relay_busy)} cores busy), and the gateway {bound(gateway_busy)} "
        f"({fmt(gateway_busy)} cores). 0.8× the relay's "
        f"{fmt(relay_rate, 0)} req/s needs the gateway at or under {fmt(needed, 3)} ms of CPU "
        f"per call; it used {fmt(gateway_cpu, 3)} ms. "
        "CPU time per call itself grows when the host runs slower (the calibration lines "
        "above), so this verdict moves with the host's speed during the run."
    )


def memory_rows(memory: dict[str, Any]) -> list[list[str]]:
    rows = []
    for system, m in memory.items():
        if not isinstance(m, dict):
            continue
        before = m["before"]["server"]["VmRSS"]
        during = m["during"]["server"]["VmRSS"]
        rows.append(
            [
                system,
                f"{m['opened']:,} / {m['streams']:,}",
                fmt(m["seconds_to_open_all"], 1),
                fmt(before * 1024 / MB, 1),
                fmt(during * 1024 / MB, 1),
                fmt((during - before) * 1024 / m["streams"] / 1000, 1),
                str(m["during"]["server"]["fds"]),
                fmt(m["after_cancel"]["server"]["VmRSS"] * 1024 / MB, 1),
                ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "0",
            ]
        )
    return rows


def logging_rows(points: Points) -> list[list[str]]:
    rows = []
    for system, label in (
        (DEFAULT, "warning, no access log (no line per call)"),
        (LOGGED, "info + access log (one access line per call written)"),
    ):
        u = points.get(system, "unary", "u50", 64)
        if u is None:
            continue
        rows.append(
            [
                label,
                rate_cell(u),
                fmt(cpu(u), 3),
                fmt(latency(points.get(system, "unary", "u0", 1), "latency_ms", "p50"), 3),
                rate_cell(points.get(system, "stream", "u0", 64)),
                fmt(cpu(points.get(system, "stream", "u0", 64)), 2),
            ]
        )
    return rows
