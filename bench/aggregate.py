"""Measured points, and comparisons between systems cycle by cycle.

Each row is one system at one point (mode, route, calls in flight), pooled over the kept
cycles, with its per-cycle slices. A comparison of two systems (a ratio, a difference) is
also computed within each cycle, where both ran seconds apart, to show its spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
Key = tuple[str, str, str, int]


def latency(row: Row | None, field: str, pct: str) -> float | None:
    """A latency percentile (``latency_ms`` or ``ttft_ms``) of a row or slice, in ms."""
    if row is None or not row.get(field):
        return None
    value = row[field].get(pct)
    return None if value is None else float(value)


def cpu(row: Row | None, who: str = "server") -> float | None:
    """CPU ms per call of ``who`` (server, upstream, loadgen)."""
    if row is None:
        return None
    value = row["cpu_ms_per_call"].get(who)
    return None if value is None else float(value)


def rate(row: Row | None) -> float | None:
    """Completed calls per second."""
    return None if row is None else float(row["rate_per_s"])


def rate_ratio(a: Row | None, b: Row | None) -> float | None:
    """a's rate over b's."""
    ra, rb = rate(a), rate(b)
    return None if ra is None or not rb else ra / rb


def minus(a: float | None, b: float | None) -> float | None:
    """a − b, or None if either is missing."""
    return None if a is None or b is None else a - b


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def kept_slices(row: Row | None) -> list[Row]:
    """The slices of a row that count (cycles without too much other load)."""
    return [s for s in row["slices"] if s["kept"]] if row else []


class Points:
    """Measured points by (system, mode, route, concurrency)."""

    def __init__(self, rows: list[Row]) -> None:
        self._rows: dict[Key, Row] = {
            (r["system"], r["mode"], r["route"], r["concurrency"]): r for r in rows
        }
        self.systems = list(dict.fromkeys(r["system"] for r in rows))

    def get(self, system: str, mode: str, route: str, concurrency: int) -> Row | None:
        """The pooled row, if it was measured."""
        return self._rows.get((system, mode, route, concurrency))

    def paired(
        self,
        a: str,
        b: str,
        point: tuple[str, str, int],
        compare: Callable[[Row, Row], float | None],
    ) -> list[float]:
        """``compare(a_slice, b_slice)`` for every kept cycle."""
        sa = {s["cycle"]: s for s in kept_slices(self.get(a, *point))}
        sb = {s["cycle"]: s for s in kept_slices(self.get(b, *point))}
        values = [compare(sa[c], sb[c]) for c in sorted(sa.keys() & sb.keys())]
        return [v for v in values if v is not None]
