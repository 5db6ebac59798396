"""The one place a call's cost is computed: integer nano-USD, never floats."""

from __future__ import annotations

from dataclasses import dataclass

from llmgateway_server.types import Cost, Usage

_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """A price table entry in integer nano-USD per million tokens."""

    input_nano_per_million: int
    output_nano_per_million: int
    cached_input_nano_per_million: int
    version: str


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_of(usage: Usage, price: Price) -> Cost:
    """Exact cost of ``usage``; each part rounds up to the next whole nano-USD."""
    input_scaled = (
        usage.input_tokens * price.input_nano_per_million
        + usage.cached_input_tokens * price.cached_input_nano_per_million
    )
    return Cost(
        input_nano_usd=_ceil_div(input_scaled, _PER_MILLION),
        output_nano_usd=_ceil_div(
            usage.output_tokens * price.output_nano_per_million, _PER_MILLION
        ),
        price_version=price.version,
    )


def worst_case_nano(input_tokens: int, max_tokens: int, price: Price) -> int:
    """The most a call can cost: every input token uncached, every output token used."""
    return cost_of(Usage(input_tokens=input_tokens, output_tokens=max_tokens), price).total_nano_usd


def affordable_output_tokens(remaining_nano: int, input_tokens: int, price: Price) -> int | None:
    """The most output tokens ``remaining_nano`` pays for after ``input_tokens`` of
    uncached input (negative when even the input does not fit); None when output is free
    (any number fits)."""
    input_nano = cost_of(Usage(input_tokens=input_tokens), price).total_nano_usd
    left = remaining_nano - input_nano
    if price.output_nano_per_million == 0:
        return None if left >= 0 else -1
    if left < 0:
        return -1
    # ceil(m * p / 1e6) <= left  <=>  m * p <= left * 1e6
    return left * _PER_MILLION // price.output_nano_per_million
