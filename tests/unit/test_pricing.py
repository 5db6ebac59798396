"""Cost is exact integer nano-USD, rounded up once per part."""

from __future__ import annotations

from llmgateway_server.pricing import Price, cost_of, worst_case_nano
from llmgateway_server.types import Usage

MINI = Price(
    input_nano_per_million=150_000_000,
    output_nano_per_million=600_000_000,
    cached_input_nano_per_million=75_000_000,
    version="v1",
)


def test_cost_is_exact_for_round_numbers() -> None:
    cost = cost_of(Usage(input_tokens=1_000_000, output_tokens=1_000_000), MINI)
    assert cost.input_nano_usd == 150_000_000
    assert cost.output_nano_usd == 600_000_000
    assert cost.total_nano_usd == 750_000_000
    assert cost.price_version == "v1"


def test_cached_input_is_billed_at_the_cached_price() -> None:
    cost = cost_of(Usage(input_tokens=0, output_tokens=0, cached_input_tokens=1_000_000), MINI)
    assert cost.input_nano_usd == 75_000_000


def test_fractional_nano_rounds_up_not_to_zero() -> None:
    # 1 token at $0.075/M is 75 nano-USD; 1 token at $0.0375/M would be 37.5 -> 38.
    half = Price(37_500_000, 0, 37_500_000, "v")
    assert cost_of(Usage(input_tokens=1), half).input_nano_usd == 38


def test_summing_many_calls_never_drifts() -> None:
    total = sum(
        cost_of(Usage(input_tokens=7, output_tokens=3), MINI).total_nano_usd for _ in range(10_000)
    )
    single = cost_of(Usage(input_tokens=7, output_tokens=3), MINI).total_nano_usd
    assert total == single * 10_000


def test_worst_case_assumes_every_output_token_used() -> None:
    assert worst_case_nano(1000, 500, MINI) == cost_of(Usage(1000, 500), MINI).total_nano_usd
