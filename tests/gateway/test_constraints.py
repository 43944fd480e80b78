"""Per-request constraints: headers and the body's ``gateway`` object go through one parser."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gateway.constraints import HEADERS, ConstraintFields, Constraints
from gateway.errors import InvalidRequest
from gateway.protocol import ChatCompletionRequest, validate

USER = [{"role": "user", "content": "hi"}]


def from_body(gateway: dict[str, Any], headers: dict[str, str] | None = None) -> Constraints:
    """The constraints of a chat body, validated as the pipeline validates it."""
    request = validate(ChatCompletionRequest, {"model": "auto", "messages": USER, "gateway": gateway})
    return Constraints.parse(headers or {}, request.gateway)


def test_headers_and_body_give_the_same_constraints() -> None:
    headers = {
        "x-gateway-policy": "cost",
        "x-gateway-max-cost-usd": "0.0025",
        "x-gateway-max-latency-ms": "800",
        "x-gateway-min-quality": "7.5",
    }
    body = {"policy": "cost", "max_cost_usd": 0.0025, "max_latency_ms": 800, "min_quality": 7.5}
    expected = Constraints("cost", Decimal("0.0025"), 800.0, 7.5)
    assert Constraints.parse(headers) == expected
    assert from_body(body) == expected
    assert Constraints.parse({}) == Constraints() == from_body({})
    assert set(HEADERS) == set(ConstraintFields.model_fields)  # every field has its header


def test_a_header_wins_over_the_body_and_a_blank_one_counts_as_absent() -> None:
    body = {"policy": "latency", "max_cost_usd": 1, "min_quality": 6}
    got = from_body(body, {"x-gateway-policy": "quality", "x-gateway-max-cost-usd": " ", "x-gateway-min-quality": "8"})
    assert got == Constraints("quality", Decimal(1), None, 8.0)
    assert from_body({"policy": ""}) == Constraints()  # empty: the route's own policy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_cost_usd", "-1"),
        ("max_cost_usd", "nan"),
        ("max_cost_usd", "lots"),
        ("max_cost_usd", "1e400"),
        ("max_latency_ms", "0"),
        ("max_latency_ms", "-5"),
        ("max_latency_ms", "fast"),
        ("min_quality", "11"),
        ("min_quality", "nan"),
    ],
)
def test_a_bad_value_is_refused_alike_from_a_header_and_from_the_body(field: str, value: str) -> None:
    header = HEADERS[field]
    with pytest.raises(InvalidRequest) as from_header:
        Constraints.parse({header: value})
    assert from_header.value.param == header and header in from_header.value.message
    body_value: Any = value
    try:
        body_value = float(value)  # a JSON number where it is one
    except ValueError:
        pass
    if body_value != body_value or body_value in (float("inf"), float("-inf")):
        body_value = value  # JSON has no NaN or infinity: sent as the string
    with pytest.raises(InvalidRequest) as from_json:
        from_body({field: body_value})
    assert from_json.value.param == f"gateway.{field}"


def test_unknown_fields_and_a_non_object_are_refused() -> None:
    with pytest.raises(InvalidRequest) as unknown:
        from_body({"colour": "red"})
    assert unknown.value.param == "gateway.colour"
    with pytest.raises(InvalidRequest) as not_object:
        validate(ChatCompletionRequest, {"model": "auto", "messages": USER, "gateway": 5})
    assert not_object.value.param == "gateway"
