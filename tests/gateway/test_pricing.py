"""Prices: money stays exact and bounded whatever token counts a request claims."""

from __future__ import annotations

from decimal import Decimal

from gateway.pricing import MAX_TOKENS, Price, load_price_entries, price_map_entry


def test_cost_is_exact_to_a_picodollar() -> None:
    price = Price(Decimal("0.00003"), Decimal("0.00006"), "litellm")
    assert price.cost(1000, 500) == Decimal("0.060000000000")


def test_absurd_token_counts_do_not_overflow_decimal() -> None:
    # max_tokens=10**30 times n=128 once reached quantize() and raised InvalidOperation (a 500)
    price = Price(Decimal("0.00003"), Decimal("0.00006"), "litellm")
    assert price.cost(10**30, 128 * 10**30) == price.cost(MAX_TOKENS, MAX_TOKENS)


def test_price_map_entries_are_kept_only_for_the_names_asked_for() -> None:
    load_price_entries(["gpt-4", "openai/gpt-4o"])
    gpt4 = price_map_entry("gpt-4")
    assert gpt4 is not None and gpt4["input_cost_per_token"] == 3e-05
    assert price_map_entry("openai/gpt-4o") is not None  # provider prefix stripped
    assert price_map_entry("no-such-model-anywhere") is None
