"""Exact percentiles and summaries of latency samples (no histograms, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples: the smallest sample that at
    least ``pct`` percent of all samples are less than or equal to."""
    if not sorted_samples:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """``count``, ``mean``, ``max`` and the PERCENTILES of samples in seconds, as ms."""
    ordered = sorted(samples_s)
    out: dict[str, float] = {"count": float(len(ordered))}
    if not ordered:
        return out
    out["mean"] = sum(ordered) / len(ordered) * 1000
    out["max"] = ordered[-1] * 1000
    for pct in PERCENTILES:
        out[f"p{pct}"] = percentile(ordered, pct) * 1000
    return out
