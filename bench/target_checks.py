"""The issue's targets: each measured value from this run, its limit, PASS or FAIL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import workload
from aggregate import Points, Row, cpu, kept_slices, latency, minus, rate, rate_ratio
from gateway_config import DEFAULT_DETECTORS, Variant
from md import CONTEXT_COUNTER, DEFAULT, MB, fmt

GUARDED = Variant(guardrails=True).name  # the default gateway with the default PII detectors


@dataclass(frozen=True)
class Target:
    """One target of the issue: the measured value, the limit, and how it compares."""

    name: str
    measured: float | None
    limit: float
    at_least: bool
    unit: str
    detail: str

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a when not measured."""
        if self.measured is None:
            return "n/a"
        ok = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "**PASS**" if ok else "**FAIL**"

    def row(self) -> list[str]:
        """The target as a table row."""
        sign = "≥" if self.at_least else "≤"
        return [
            self.name,
            f"{fmt(self.measured)}{self.unit}",
            f"{sign} {fmt(self.limit, 1)}{self.unit}",
            self.verdict,
            self.detail,
        ]


def errors_cell(row: Row | None) -> str:
    if row is None or not row["errors"]:
        return "0"
    return ", ".join(f"{k}: {v}" for k, v in row["errors"].items())


def _cycles(values: list[float], digits: int = 2) -> str:
    """``; per cycle a, b, c`` when there was more than one cycle."""
    if len(values) < 2:
        return ""
    return "; per cycle " + ", ".join(fmt(v, digits) for v in values)


def rate_cell(row: Row | None) -> str:
    """The pooled rate, and the range of the kept cycles' rates."""
    if row is None:
        return "n/a"
    rates = [float(s["rate_per_s"]) for s in kept_slices(row)]
    if len(rates) > 1:
        return f"{fmt(row['rate_per_s'], 0)} ({fmt(min(rates), 0)}–{fmt(max(rates), 0)})"
    return fmt(row["rate_per_s"], 0)


def added(field: str, pct: str) -> Callable[[Row, Row], float | None]:
    def compare(a: Row, b: Row) -> float | None:
        return minus(latency(a, field, pct), latency(b, field, pct))

    return compare


def pooled_added(
    points: Points, system: str, point: tuple[str, str, int], field: str, pct: str
) -> float | None:
    """``system``'s pooled percentile minus direct's, at the same point."""
    return added(field, pct)(points.get(system, *point) or {}, points.get("direct", *point) or {})


def _ratio_target(
    points: Points, name: str, point: tuple[str, str, int], unit_label: str
) -> Target:
    gw, relay = points.get(DEFAULT, *point), points.get("relay", *point)
    per_cycle = points.paired(DEFAULT, "relay", point, rate_ratio)
    return Target(
        name,
        rate_ratio(gw, relay),
        0.8,
        True,
        "×",
        f"{fmt(rate(gw), 0)} vs {fmt(rate(relay), 0)} {unit_label}; server CPU "
        f"{fmt(cpu(gw), 3)} vs {fmt(cpu(relay), 3)} ms per call{_cycles(per_cycle)}",
    )


def _added_target(
    points: Points, name: str, point: tuple[str, str, int], field: str, pct: str, limit: float
) -> Target:
    per_cycle = points.paired(DEFAULT, "direct", point, added(field, pct)) if pct == "p50" else []
    floor = pooled_added(points, "relay", point, field, pct)
    return Target(
        name,
        pooled_added(points, DEFAULT, point, field, pct),
        limit,
        False,
        " ms",
        f"the bare relay alone adds {fmt(floor, 3)} ms{_cycles(per_cycle, 3)}",
    )


def guardrails_targets(points: Points, settings: dict[str, Any]) -> list[Target]:
    """What the default PII detectors cost, against the default gateway in the same run."""
    first, unary = ("stream", "u0", 1), ("unary", "u50", 64)
    if points.get(GUARDED, *first) is None and points.get(GUARDED, *unary) is None:
        return []
    kinds = ", ".join(f"{d['kind']} ({d['action']})" for d in DEFAULT_DETECTORS)
    ttft = [latency(points.get(s, *first), "ttft_ms", "p50") for s in (GUARDED, DEFAULT)]
    stream_cpu = [cpu(points.get(s, *first)) for s in (GUARDED, DEFAULT)]
    chars = settings.get("stream_text_chars", len(workload.ANSWER_TEXT))
    per_ttft = points.paired(GUARDED, DEFAULT, first, added("ttft_ms", "p50"))
    g, d = points.get(GUARDED, *unary), points.get(DEFAULT, *unary)
    per_rate = points.paired(GUARDED, DEFAULT, unary, rate_ratio)
    return [
        Target(
            "added time to first token p50 with the default PII detectors, 1 in flight "
            "(guardrails − without)",
            minus(*ttft),
            0.3,
            False,
            " ms",
            f"TTFT p50 {fmt(ttft[0], 3)} vs {fmt(ttft[1], 3)} ms; server CPU "
            f"{fmt(stream_cpu[0], 2)} vs {fmt(stream_cpu[1], 2)} ms per stream; detectors "
            f"{kinds} on prompt and answer; measured on the stream workload: "
            f"{settings.get('stream_chunks', 'n/a')} chunks, {chars} characters of text "
            f"({len(workload.ANSWER_TEXT.split())} words), "
            f"{settings.get('stream_chunk_delay_ms', 'n/a')} ms apart{_cycles(per_ttft, 3)}",
        ),
        Target(
            "unary, 64 in flight, 50 ms upstream: with guardrails / without",
            rate_ratio(g, d),
            0.9,
            True,
            "×",
            f"{fmt(rate(g), 0)} vs {fmt(rate(d), 0)} req/s; server CPU {fmt(cpu(g), 3)} vs "
            f"{fmt(cpu(d), 3)} ms per call (prompt and the {chars}-character answer "
            f"scanned){_cycles(per_rate)}",
        ),
    ]


def targets(points: Points, results: dict[str, Any]) -> list[Target]:
    """The issue's targets, from this run."""
    out = [
        _ratio_target(
            points,
            "unary, 64 in flight, 50 ms upstream: gateway / bare relay requests/s",
            ("unary", "u50", 64),
            "req/s",
        ),
        _added_target(
            points,
            "added latency p50, 1 in flight, 0 ms upstream (gateway − direct)",
            ("unary", "u0", 1),
            "latency_ms",
            "p50",
            1.5,
        ),
        _added_target(
            points,
            "added latency p99, 1 in flight, 0 ms upstream (gateway − direct)",
            ("unary", "u0", 1),
            "latency_ms",
            "p99",
            5.0,
        ),
        _ratio_target(
            points,
            "streaming, 64 in flight: gateway / bare relay streams/s",
            ("stream", "u0", 64),
            "streams/s",
        ),
        _added_target(
            points,
            "added time to first token p50, 1 in flight (gateway − direct)",
            ("stream", "u0", 1),
            "ttft_ms",
            "p50",
            1.5,
        ),
    ]
    out += guardrails_targets(points, results.get("settings", {}))
    memory = results.get("memory", {}).get(DEFAULT)
    if memory:
        rss = memory["during"]["server"]["VmRSS"] * 1024 / MB
        out.append(
            Target(
                f"resident memory with {memory['streams']:,} concurrent open streams",
                rss,
                150.0,
                False,
                " MB",
                f"{memory['open_at_measurement']:,} open when read; "
                f"{fmt(memory['before']['server']['VmRSS'] * 1024 / MB, 1)} MB idle before",
            )
        )
    context = results.get("context", {})
    ctx = context.get("counters", {}).get(CONTEXT_COUNTER, {})
    if ctx:
        runs = [
            run["counters"].get(CONTEXT_COUNTER, {}).get("lazy count + trim")
            for run in context.get("runs", [])
        ]
        spread = ", ".join(fmt(v) for v in runs if v is not None)
        out.append(
            Target(
                "count + trim a 10,000-message conversation (the gateway's lazy path, "
                f"{CONTEXT_COUNTER})",
                ctx.get("lazy count + trim"),
                50.0,
                False,
                " ms",
                f"counting every message first: {fmt(ctx.get('count all + trim'))} ms"
                + (f"; each run: {spread} ms" if len(runs) > 1 else ""),
            )
        )
    return out
