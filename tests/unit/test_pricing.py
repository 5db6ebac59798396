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


# Anthropic Sonnet-class prices: $3 in, $15 out, reads $0.30, 5-minute writes $3.75,
# 1-hour writes $6, per million tokens.
SONNET = Price(
    input_nano_per_million=3_000_000_000,
    output_nano_per_million=15_000_000_000,
    cached_input_nano_per_million=300_000_000,
    version="sonnet",
    cache_write_5m_nano_per_million=3_750_000_000,
    cache_write_1h_nano_per_million=6_000_000_000,
)


def test_cache_reads_and_both_write_ttls_each_have_their_line() -> None:
    usage = Usage(
        input_tokens=21,
        output_tokens=120,
        cached_input_tokens=1800,
        cache_write_tokens=2500,
        cache_write_1h_tokens=1000,
    )
    cost = cost_of(usage, SONNET)
    # By hand: 21 x 3 = 63,000 nano; 1,800 x 0.30 = 540,000; 1,500 x 3.75 = 5,625,000;
    # 1,000 x 6 = 6,000,000; 120 x 15 = 1,800,000.
    assert cost.cache_read_nano_usd == 540_000
    assert cost.cache_write_5m_nano_usd == 5_625_000
    assert cost.cache_write_1h_nano_usd == 6_000_000
    assert cost.input_nano_usd == 63_000 + 540_000 + 5_625_000 + 6_000_000
    assert cost.output_nano_usd == 1_800_000
    assert cost.total_nano_usd == 14_028_000
    assert cost.reasoning_nano_usd == 0


def test_reasoning_is_part_of_output_never_added_twice() -> None:
    o3 = Price(1_100_000_000, 4_400_000_000, 275_000_000, "o3")
    usage = Usage(
        input_tokens=86, cached_input_tokens=1920, output_tokens=300, reasoning_tokens=192
    )
    cost = cost_of(usage, o3)
    # 86 x 1.10 = 94,600; 1,920 x 0.275 = 528,000; 108 x 4.40 = 475,200 and the 192
    # reasoning tokens x 4.40 = 844,800 (at the output price: the table gives none).
    assert cost.input_nano_usd == 94_600 + 528_000
    assert cost.reasoning_nano_usd == 844_800
    assert cost.output_nano_usd == 475_200 + 844_800
    assert cost.total_nano_usd == 1_942_600
    # Priced separately when the table says so.
    dear = Price(
        1_100_000_000, 4_400_000_000, 275_000_000, "o3", reasoning_nano_per_million=8_000_000_000
    )
    assert cost_of(usage, dear).reasoning_nano_usd == 1_536_000


def test_every_line_rounds_up_on_its_own() -> None:
    odd = Price(123_456_700, 1, 1, "odd", image_input_nano_per_million=1)
    # 3 tokens at 123.4567 nano each = 370.3701 -> 371; 2 image tokens at 1e-6 nano -> 1.
    cost = cost_of(Usage(input_tokens=5, image_input_tokens=2), odd)
    assert cost.image_input_nano_usd == 1
    assert cost.input_nano_usd == 371 + 1


def test_all_four_kinds_in_one_call() -> None:
    price = Price(
        3_000_000_000,
        15_000_000_000,
        300_000_000,
        "all",
        cache_write_5m_nano_per_million=3_750_000_000,
        cache_write_1h_nano_per_million=6_000_000_000,
        reasoning_nano_per_million=15_000_000_000,
    )
    usage = Usage(
        input_tokens=100,
        output_tokens=50,
        cached_input_tokens=1000,
        cache_write_tokens=400,
        cache_write_1h_tokens=100,
        reasoning_tokens=20,
    )
    cost = cost_of(usage, price)
    # 100 x 3 = 300,000; 1,000 x 0.3 = 300,000; 300 x 3.75 = 1,125,000; 100 x 6 = 600,000;
    # 30 x 15 = 450,000; 20 x 15 = 300,000.
    assert cost.total_nano_usd == 300_000 + 300_000 + 1_125_000 + 600_000 + 450_000 + 300_000


def test_worst_case_counts_cache_writes_only_when_the_prompt_has_breakpoints() -> None:
    assert worst_case_nano(1000, 0, SONNET) == 3_000_000
    assert worst_case_nano(1000, 0, SONNET, cache_writes=True) == 6_000_000
