"""Markdown helpers and the names the benchmark tables share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from gateway_config import Variant

DEFAULT = Variant().name  # the shipped defaults (server.http_transport, event_loop)
LOGGED = Variant(log_level="info", access_log=True).name
MB = 1_000_000
CONTEXT_COUNTER = "cl100k_base"  # the benchmark routes count with tiktoken (exact)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with thousands separators, or n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, and a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]
