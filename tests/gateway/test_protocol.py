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
