"""Prices: money stays exact and bounded whatever token counts a request claims, and routing predicts with
the price the ledger charges."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from gateway.config import ModelSpec, settings_from_dict
from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.pricing import (
    DEFAULT_LOCAL_TPS,
    MAX_TOKENS,
    ModelPrice,
    Price,
    _price_map_items,
    litellm_price_map_path,
    load_price_entries,
    local_price,
    price_map_entry,
    static_price,
)
from gateway.runtime import build_gateway, close_gateway
from tests.gateway.conftest import make_settings


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


def test_the_price_map_read_entry_by_entry_is_the_whole_map() -> None:
    path = litellm_price_map_path()
    assert path is not None
    text = path.read_text("utf-8")
    assert dict(_price_map_items(text)) == json.loads(text)
    assert list(_price_map_items(' {"a" :{"x": [1, {"y": "}"}]} ,\n"b":null }')) == [
        ("a", {"x": [1, {"y": "}"}]}),
        ("b", None),
    ]


@pytest.mark.parametrize("text", ["[]", '{"a": 1 "b": 2}', '{"a" 1}', '{"a": 1,', '{"a": {'])
def test_a_damaged_price_map_is_an_error_not_a_partial_table(text: str) -> None:
    with pytest.raises(ValueError):
        list(_price_map_items(text))


def gpu_model(**extra: object) -> ModelSpec:
    data: dict[str, object] = {
        "models": [{"name": "local", "backend": "vllm", "base_url": "http://l/v1", "gpu_hour_usd": "3.6", **extra}]
    }
    spec = settings_from_dict(data).model("local")
    assert spec is not None
    return spec


def test_a_gpu_priced_model_costs_its_gpu_time_at_the_throughput_it_reaches_when_busy() -> None:
    price = ModelPrice(gpu_model(tokens_per_second=1000))
    assert price.gpu_priced
    at_1000 = local_price(Decimal("3.6"), 1000)
    assert price.at(None) == at_1000  # nothing measured: the configured throughput
    assert price.at(250.0) == at_1000  # an idle GPU measures low: never below the configured throughput
    assert price.at(2000.0) == local_price(Decimal("3.6"), 2000) and price.at(2000.0).output_per_token < (
        at_1000.output_per_token
    )
    assert at_1000.output_per_token == Decimal("0.000001")  # 3.6 USD/h = 0.001 USD/s, at 1000 tokens/s
    assert ModelPrice(gpu_model()).at(None) == local_price(Decimal("3.6"), DEFAULT_LOCAL_TPS)
    assert ModelPrice(gpu_model()).at(50.0) == local_price(Decimal("3.6"), 50.0)  # no floor configured
    static = ModelPrice(gpu_model(input_cost_per_token="0.000001", output_cost_per_token="0.000002"))
    assert not static.gpu_priced and static.at(5.0) is static.static and static.now() is static.static


async def test_routing_predicts_and_the_ledger_charges_with_one_price() -> None:
    # Once the router predicted at its throughput floor while the ledger charged at the measured throughput.
    settings = make_settings()
    gw = await build_gateway(settings)
    try:
        small = gw.backends["small"].stats
        for _ in range(5):
            small.tokens_per_second.update(100.0)  # far below the configured 1500 tokens/s
        feats = extract_features(
            "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}, gw.pipeline.counter
        )
        plan = gw.router.plan("small", feats, Constraints())
        predicted = plan.decision.winner
        charged = gw.pipeline.charges.price("small")
        assert charged == gw.router.models["small"].price.now()
        assert predicted.cost_usd == charged.cost(feats.prompt_tokens, 40)
        for _ in range(30):
            small.tokens_per_second.update(10_000.0)  # busier: cheaper per token, for both at once
        assert gw.pipeline.charges.price("small").output_per_token < charged.output_per_token
        assert gw.router.plan("small", feats, Constraints()).decision.winner.cost_usd < predicted.cost_usd
    finally:
        await close_gateway(gw)


def test_overriding_one_price_keeps_the_maps_other_price() -> None:
    base = {"name": "big", "backend": "openai", "base_url": "http://b/v1", "upstream_model": "gpt-4"}
    only_in = settings_from_dict({"models": [{**base, "input_cost_per_token": "0.00001"}]}).model("big")
    only_out = settings_from_dict({"models": [{**base, "output_cost_per_token": "0.00005"}]}).model("big")
    assert only_in is not None and only_out is not None
    # gpt-4 in the map: $30 / $60 per million; an override of one price used to make the other $0
    assert static_price(only_in).cost(10, 5) == Decimal("0.0001") + 5 * Decimal("0.00006")
    assert static_price(only_out).input_per_token == Decimal("0.00003")
    unmapped = settings_from_dict(
        {"models": [{**base, "upstream_model": "no-such-model", "input_cost_per_token": "1"}]}
    )
    spec = unmapped.model("big")
    assert spec is not None and static_price(spec).output_per_token == 0  # nothing to keep
