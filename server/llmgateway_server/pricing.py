"""The one place a call's cost is computed: integer nano-USD, never floats.

A cost is a set of lines, each its tokens times its price per million, rounded up to the
next whole nano-USD: uncached input (text), image input, cache reads, 5-minute and 1-hour
cache writes on the input side; output (not reasoning) and reasoning on the output side.
``input_nano_usd`` and ``output_nano_usd`` are the sums of their lines.
"""

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
    # Defaults for tables that do not price them: what input and output cost (the
    # config fills them the same way, config.PriceConfig).
    cache_write_5m_nano_per_million: int | None = None
    cache_write_1h_nano_per_million: int | None = None
    reasoning_nano_per_million: int | None = None
    image_input_nano_per_million: int | None = None


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _line(tokens: int, price_per_million: int) -> int:
    return _ceil_div(tokens * price_per_million, _PER_MILLION) if tokens else 0


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def cost_of(usage: Usage, price: Price) -> Cost:
    """Exact cost of ``usage``, line by line (the module docstring)."""
    input_price = price.input_nano_per_million
    output_price = price.output_nano_per_million
    images = min(usage.image_input_tokens, usage.input_tokens)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    written_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    image_nano = _line(images, _or(price.image_input_nano_per_million, input_price))
    read_nano = _line(usage.cached_input_tokens, price.cached_input_nano_per_million)
    write_5m_nano = _line(
        usage.cache_write_tokens - written_1h,
        _or(price.cache_write_5m_nano_per_million, input_price),
    )
    write_1h_nano = _line(written_1h, _or(price.cache_write_1h_nano_per_million, input_price))
    reasoning_nano = _line(reasoning, _or(price.reasoning_nano_per_million, output_price))
    return Cost(
        input_nano_usd=_line(usage.input_tokens - images, input_price)
        + image_nano
        + read_nano
        + write_5m_nano
        + write_1h_nano,
        output_nano_usd=_line(usage.output_tokens - reasoning, output_price) + reasoning_nano,
        price_version=price.version,
        cache_read_nano_usd=read_nano,
        cache_write_5m_nano_usd=write_5m_nano,
        cache_write_1h_nano_usd=write_1h_nano,
        image_input_nano_usd=image_nano,
        reasoning_nano_usd=reasoning_nano,
    )


def _dearest_input(price: Price, cache_writes: bool) -> int:
    """The most one input token can cost: uncached, an image, or written to the cache
    (only a prompt with cache breakpoints has its tokens written)."""
    input_price = price.input_nano_per_million
    dearest = max(input_price, _or(price.image_input_nano_per_million, input_price))
    if cache_writes:
        dearest = max(
            dearest,
            _or(price.cache_write_5m_nano_per_million, input_price),
            _or(price.cache_write_1h_nano_per_million, input_price),
        )
    return dearest


def _dearest_output(price: Price) -> int:
    output_price = price.output_nano_per_million
    return max(output_price, _or(price.reasoning_nano_per_million, output_price))


def worst_case_nano(
    input_tokens: int, max_tokens: int, price: Price, *, cache_writes: bool = False
) -> int:
    """The most a call can cost: every input token at its dearest (uncached, or written
    to the cache when the prompt has breakpoints and writes cost more), every output token
    used at its dearest."""
    return _line(input_tokens, _dearest_input(price, cache_writes)) + _line(
        max_tokens, _dearest_output(price)
    )


def affordable_output_tokens(
    remaining_nano: int, input_tokens: int, price: Price, *, cache_writes: bool = False
) -> int | None:
    """The most output tokens ``remaining_nano`` pays for after ``input_tokens`` of input
    at its dearest (negative when even the input does not fit); None when output is free
    (any number fits)."""
    left = remaining_nano - _line(input_tokens, _dearest_input(price, cache_writes))
    output_price = _dearest_output(price)
    if output_price == 0:
        return None if left >= 0 else -1
    if left < 0:
        return -1
    # ceil(m * p / 1e6) <= left  <=>  m * p <= left * 1e6
    return left * _PER_MILLION // output_price
