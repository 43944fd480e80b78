"""The front doors' errors and limits in each API's terms, with the real SDKs over sockets:

* a budget cut mid-stream on ``/v1/messages`` is Anthropic's ``billing_error`` (its 402 when not streaming);
* an overloaded upstream (503, 529) is Anthropic's 529 ``overloaded_error``, which the SDK retries;
* ``temperature``/``top_p`` are JSON numbers on both doors (a numeric string or a bool is a 400 naming the field);
* ``/v1/messages/count_tokens`` counts against the key's requests per minute (429, ``retry-after``);
* a Responses function tool without ``strict`` is strict, as in OpenAI's Responses API (not chat's non-strict).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.frontdoors.scripted_upstream import Scripted, scripted_gateway


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("errors-limits")) as env:
        yield env


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


# -- budget cut -----------------------------------------------------------------------------------------------


async def test_messages_budget_cut_mid_stream_is_a_billing_error(up: Scripted) -> None:
    key = up.key(budget_usd="1.00")
    # the chat door's reference: the stream ends with an error event coded budget_exceeded_mid_stream
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0) as chat:
        stream = await chat.chat.completions.create(model="m", max_tokens=10, messages=_user("greedy"), stream=True)
        with pytest.raises(openai.APIError) as cut:
            async for _ in stream:
                pass
    assert isinstance(cut.value.body, dict) and cut.value.body["code"] == "budget_exceeded_mid_stream"
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as claude:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with claude.messages.stream(model="m", max_tokens=10, messages=_user("greedy")) as events:
                async for _ in events:
                    pass
        body: Any = info.value.body
        assert body["type"] == "error" and body["error"]["type"] == "billing_error", body
        assert "stopped" in body["error"]["message"]
        # the same cap on a whole answer is a 402, the same type
        with pytest.raises(anthropic.APIStatusError) as whole:
            await claude.messages.create(model="m", max_tokens=10, messages=_user("greedy"))
    assert whole.value.status_code == 402
    body = whole.value.body
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"


# -- overload -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "chat_status"), [("overloaded 503", 503), ("overloaded 529", 502)])
async def test_messages_overloaded_upstream_is_anthropic_529(up: Scripted, prompt: str, chat_status: int) -> None:
    key = up.key()
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0) as chat:
        with pytest.raises(openai.APIStatusError) as reference:
            await chat.chat.completions.create(model="o", messages=_user(prompt))
    assert reference.value.status_code == chat_status  # what the chat door answers
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as claude:
        with pytest.raises(anthropic.OverloadedError) as info:
            await claude.messages.create(model="o", max_tokens=10, messages=_user(prompt))
        assert info.value.status_code == 529
        body: Any = info.value.body
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error", body
        assert info.value.request_id == body["request_id"]
        with pytest.raises(anthropic.OverloadedError):  # a stream that fails before its first byte: the same
            async with claude.messages.stream(model="o", max_tokens=10, messages=_user(prompt)) as stream:
                async for _ in stream:
                    pass
    row = await up.ledger.one_row(info.value.response.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["error_type"] == "AllCandidatesFailed"
    before = len(up.bodies_for(prompt))
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=1) as retrying:
        with pytest.raises(anthropic.OverloadedError):
            await retrying.messages.create(model="o", max_tokens=10, messages=_user(prompt))
    assert len(up.bodies_for(prompt)) - before == 2  # the SDK retried the 529, as against Anthropic


async def test_rate_limits_stay_429(up: Scripted) -> None:
    key = up.key(rpm=1)
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as claude:
        await claude.messages.create(model="m", max_tokens=10, messages=_user("hi"))
        with pytest.raises(anthropic.RateLimitError) as info:
            await claude.messages.create(model="m", max_tokens=10, messages=_user("hi"))
    body: Any = info.value.body
    assert body["error"]["type"] == "rate_limit_error" and int(info.value.response.headers["retry-after"]) >= 1


# -- numeric parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "0.5"),
        ("temperature", True),
        ("top_p", "0.5"),
        ("top_p", False),
        ("top_k", "5"),
        ("top_k", 5.5),
        ("max_tokens", "5"),
        ("max_tokens", True),
    ],
)
async def test_messages_numbers_are_json_numbers(up: Scripted, field: str, value: Any) -> None:
    prompt = f"messages numbers {field} {value!r}"
    args: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": _user(prompt)}
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=up.key(), max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError) as info:
            await claude.messages.create(**args, extra_body={field: value})
        with pytest.raises(anthropic.BadRequestError) as counted:
            await claude.messages.count_tokens(model="m", messages=_user(prompt), extra_body={field: value})
    for err in (info.value, counted.value):
        body: Any = err.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert f"'{field}'" in body["error"]["message"], body
    assert up.bodies_for(prompt) == []  # nothing went upstream


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "0.5"),
        ("top_p", "0.5"),
        ("top_p", True),
        ("max_output_tokens", "16"),
        ("max_output_tokens", False),
    ],
)
async def test_responses_numbers_are_json_numbers(up: Scripted, field: str, value: Any) -> None:
    prompt = f"responses numbers {field} {value!r}"
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="m", input=prompt, store=False, extra_body={field: value})
    body: Any = info.value.body
    assert info.value.param == field and body["type"] == "invalid_request_error", body
    assert up.bodies_for(prompt) == []


async def test_numbers_as_numbers_still_pass(up: Scripted) -> None:
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=up.key(), max_retries=0) as claude:
        await claude.messages.create(
            model="m", max_tokens=10, messages=_user("numbers ok"), extra_body={"temperature": 1, "top_p": 0.5}
        )
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        await client.responses.create(model="m", input="numbers ok", temperature=0, top_p=1, store=False)
    sent = up.bodies_for("numbers ok")
    assert [(b["temperature"], b["top_p"]) for b in sent] == [(1.0, 0.5), (0, 1)]


# -- count_tokens' rate limit ---------------------------------------------------------------------------------


async def test_count_tokens_counts_against_the_keys_rpm(up: Scripted) -> None:
    key = up.key(rpm=2)
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as claude:
        for _ in range(2):
            assert (await claude.messages.count_tokens(model="m", messages=_user("count me"))).input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as info:
            await claude.messages.count_tokens(model="m", messages=_user("count me"))
        with pytest.raises(anthropic.RateLimitError):  # one budget of requests, inference and counts alike
            await claude.messages.create(model="m", max_tokens=5, messages=_user("count me"))
    assert info.value.status_code == 429 and int(info.value.response.headers["retry-after"]) >= 1
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == info.value.request_id
    # a spent budget does not stop counting (it costs nothing), and a key without limits is never refused
    poor = up.key(budget_usd="0.000000000001")
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=poor, max_retries=0) as claude:
        for _ in range(5):
            await claude.messages.count_tokens(model="m", messages=_user("count me"))


# -- strict function tools ------------------------------------------------------------------------------------

SCHEMA: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
    },
    "required": ["city"],
}
STRICT_SCHEMA: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}},
            "required": ["lat"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"k": {"type": "string"}},
                "required": ["k"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["city", "days", "where", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("strict", "sent_strict", "sent_schema"),
    [("omitted", True, STRICT_SCHEMA), (None, True, STRICT_SCHEMA), (False, False, SCHEMA), (True, True, SCHEMA)],
)
async def test_responses_function_tools_are_strict_by_default(
    up: Scripted, strict: Any, sent_strict: bool, sent_schema: Any
) -> None:
    prompt = f"strict {strict}"
    tool: Any = {"type": "function", "name": "forecast", "parameters": SCHEMA}
    if strict != "omitted":
        tool["strict"] = strict
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        response = await client.responses.create(model="m", input=prompt, tools=[tool], store=False)
    (sent,) = up.bodies_for(prompt)
    fn = sent["tools"][0]["function"]
    assert fn["strict"] is sent_strict and fn["parameters"] == sent_schema
    assert response.tools[0].type == "function" and response.tools[0].strict is sent_strict  # echoed as applied


async def test_responses_strict_must_be_a_bool(up: Scripted) -> None:
    tool: Any = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": "yes"}
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="m", input="strict yes", tools=[tool], store=False)
    assert info.value.param == "tools[0].strict"
    assert up.bodies_for("strict yes") == []
