"""Request validation: each refusal names its field with the code the OpenAI API uses for it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, required_str, validate

USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        (ChatCompletionRequest, {"model": "m"}, "messages"),
        (CompletionRequest, {"model": "m"}, "prompt"),
        (EmbeddingRequest, {"model": "m"}, "input"),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_a_missing_field_is_missing_required_parameter(model: Any, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(model, body)
    assert (info.value.param, info.value.code) == (param, "missing_required_parameter")
    assert info.value.message.startswith(f"Missing required parameter: '{param}'")


def test_a_missing_item_field_of_another_api_is_the_same_error() -> None:
    with pytest.raises(InvalidRequest) as info:
        required_str({"type": "tool_use"}, "id", "messages[0].content[1]")
    assert (info.value.param, info.value.code) == ("messages[0].content[1].id", "missing_required_parameter")


def test_top_logprobs_needs_logprobs() -> None:
    for extra in ({}, {"logprobs": False}):
        with pytest.raises(InvalidRequest) as info:
            validate(ChatCompletionRequest, {"model": "m", "messages": USER, "top_logprobs": 2, **extra})
        assert (info.value.param, info.value.code) == ("top_logprobs", "invalid_value")
    ok = validate(ChatCompletionRequest, {"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 2})
    assert ok.top_logprobs == 2


def test_a_bad_value_is_invalid_value() -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(ChatCompletionRequest, {"model": "m", "messages": USER, "max_tokens": 0})
    assert (info.value.param, info.value.code) == ("max_tokens", "invalid_value")


def test_best_of_counts_as_generated_answers() -> None:
    """A completions upstream generates (and bills) ``best_of`` candidates to return the ``n`` best: budgets
    reserve for the larger of the two."""
    from gateway.protocol import generated_per_prompt

    assert generated_per_prompt({}) == 1
    assert generated_per_prompt({"n": 3}) == 3
    assert generated_per_prompt({"n": 2, "best_of": 5}) == 5
    assert generated_per_prompt({"n": True}) == 1
    with pytest.raises(InvalidRequest) as info:
        validate(CompletionRequest, {"model": "m", "prompt": "x", "best_of": 0})
    assert info.value.param == "best_of"


async def test_the_reserve_counts_best_of() -> None:
    from gateway.auth.admission import ReserveEstimator
    from gateway.config import settings_from_dict
    from gateway.context import RequestContext

    settings = settings_from_dict(
        {
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "base_url": "http://m/v1",
                    "input_cost_per_token": "0",
                    "output_cost_per_token": "0.001",
                }
            ]
        }
    )
    estimator = ReserveEstimator(settings)

    def reserve(**extra: object) -> object:
        body = {"model": "m", "prompt": "x", "max_tokens": 10, **extra}
        ctx = RequestContext(request_id="r", endpoint="completions", body=body, requested_model="m")
        return estimator.reserve(ctx)[0]

    assert reserve(best_of=4) == 4 * reserve() == reserve(n=4)


async def test_the_reserve_counts_tool_and_output_schemas() -> None:
    """Tool schemas (and a structured output's schema) are read and billed as prompt: a reserve that left them out
    let a key with a $0.01 budget spend $0.57 on requests of a short message and 22 KB of tools, each refused
    only after its prompt was paid for."""
    from decimal import Decimal

    from gateway.auth.admission import ReserveEstimator
    from gateway.config import settings_from_dict
    from gateway.context import RequestContext

    price = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0"}
    settings = settings_from_dict({"models": [{"name": "m", "backend": "openai", "base_url": "http://m/v1", **price}]})
    estimator = ReserveEstimator(settings)
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "x" * 200}} for i in range(100)]

    def reserve(**extra: object) -> Decimal:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **extra}
        return estimator.reserve(RequestContext(request_id="r", endpoint="chat", body=body, requested_model="m"))[0]

    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": "y" * 3000}}}
    assert reserve(tools=tools) > Decimal("0.06") > reserve()  # ~22 KB of tools: ~7,000 tokens at $0.00001
    assert reserve(functions=[t["function"] for t in tools]) > Decimal("0.06")
    assert reserve(response_format=schema) > reserve() + Decimal("0.009")
