"""Gaps an audit with real agent frameworks found between the front doors and what chat completions and the SDKs
take, against the scripted upstream (which records the chat bodies it gets) and the real SDKs over sockets:

1. ``/v1/messages`` sends ``max_completion_tokens`` (reasoning models refuse ``max_tokens``, and
   ``output_config.effort`` makes a request a reasoning model's); budgets and counts still read the limit;
2. images a Responses tool returned (``function_call_output`` with ``input_image`` parts) reach the upstream, in a
   user message after the tool messages; an ``input_file`` there is a 400;
3. the Responses settings chat completions take: ``text.verbosity``, ``prompt_cache_key``, ``safety_identifier``,
   ``service_tier``, ``top_logprobs`` with ``include: ["message.output_text.logprobs"]`` (the answer's log
   probabilities in the Responses format);
4. ``usage.input_tokens_details.cache_write_tokens``, which openai-python's ``ResponseUsage`` requires;
5. the Responses sub-endpoints: ``{id}/cancel`` (400, or 404), ``input_tokens``
   (counted as ``/v1/messages/count_tokens`` counts);
6. Messages: ``tool_choice`` without tools checked and dropped, the legacy ``output_format`` mapped as
   ``output_config.format``, more than 4 ``stop_sequences`` a 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseOutputText, ResponseStreamEvent, ResponseUsage
from pydantic import TypeAdapter

from gateway.errors import InvalidRequest
from gateway.frontdoors import messages as ms
from gateway.frontdoors import responses as rs
from tests.frontdoors.scripted_upstream import Scripted, scripted_gateway

SHOT = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
#: as a strict upstream takes it (every object closed: OpenAI's strict mode refuses an open one)
STRICT_SCHEMA = {**SCHEMA, "additionalProperties": False}
LOGPROBS = ["message.output_text.logprobs"]
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("framework-gaps")) as env:
        yield env


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def chat_of_messages(body: dict[str, Any]) -> dict[str, Any]:
    return ms.to_chat(ms.parse_request({"model": "m", "max_tokens": 10, **body}))


def chat_of_responses(body: dict[str, Any]) -> dict[str, Any]:
    return rs.to_chat(rs.parse_request({"model": "m", **body}), [])


def _sent(up: Scripted, first: str) -> list[dict[str, Any]]:
    """The chat bodies the upstream got whose first message's content was ``first``."""
    return [b for b in up.bodies if b["messages"][0].get("content") == first]


async def _events(up: Scripted, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed ``/v1/responses`` answer's events, each validated against openai-python's types."""
    events = []
    async with httpx.AsyncClient(timeout=30) as http:
        headers = {"authorization": f"Bearer {key}"}
        async with http.stream("POST", up.url + "/v1/responses", json={**body, "stream": True}, headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    for event in events:
        EVENTS.validate_python(event)
    return events


# -- 1. max_completion_tokens on /v1/messages -----------------------------------------------------------------


def test_messages_limit_goes_upstream_as_max_completion_tokens() -> None:
    chat = chat_of_messages({"messages": _user("x"), "output_config": {"effort": "low"}})
    assert chat["max_completion_tokens"] == 10 and "max_tokens" not in chat  # gpt-5 and o-series refuse it
    assert chat["reasoning_effort"] == "low"
    assert "max_tokens" not in ms.to_chat(ms.parse_request({"model": "m", "messages": _user("x")}, count_only=True))


async def test_messages_effort_request_carries_no_max_tokens(up: Scripted) -> None:
    prompt = "an effort and a limit"
    async with up.claude_client() as claude:
        await claude.messages.create(model="m", max_tokens=10, messages=_user(prompt), output_config={"effort": "low"})
        async with claude.messages.stream(model="m", max_tokens=12, messages=_user(prompt)) as stream:
            await stream.get_final_message()
    sent = up.bodies_for(prompt)
    assert [(b.get("max_completion_tokens"), "max_tokens" in b) for b in sent] == [(10, False), (12, False)]
    assert sent[0]["reasoning_effort"] == "low"


async def test_messages_limit_still_bounds_the_budget_reservation(up: Scripted) -> None:
    """The reservation reads the limit as ``max_completion_tokens`` (without a limit it reserves ``m``'s 4096-token
    window at $0.00003 a token: $0.12, past this key's budget)."""
    async with up.claude_client(up.key(budget_usd="0.05")) as claude:
        await claude.messages.create(model="m", max_tokens=10, messages=_user("a small reservation"))
        with pytest.raises(anthropic.APIStatusError) as info:
            await claude.messages.create(model="m", max_tokens=3000, messages=_user("a large reservation"))
    assert info.value.status_code == 402
    assert len(up.bodies_for("a small reservation")) == 1 and up.bodies_for("a large reservation") == []


# -- 2. images a Responses tool returned ----------------------------------------------------------------------


def _tool_turns(output: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "look at both"},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "read", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": output},
        {"type": "function_call_output", "call_id": "c2", "output": "the file"},
        {"role": "user", "content": "so?"},
    ]


def test_responses_tool_output_images_follow_the_tool_messages() -> None:
    output = [
        {"type": "input_text", "text": "the screen"},
        {"type": "input_image", "image_url": SHOT, "detail": "low"},
    ]
    m = chat_of_responses({"input": _tool_turns(output)})["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "tool", "user", "user"]
    assert m[2] == {"role": "tool", "tool_call_id": "c1", "content": "the screen"}
    assert m[3] == {"role": "tool", "tool_call_id": "c2", "content": "the file"}  # tool messages stay together
    assert m[4] == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHOT, "detail": "low"}}]}
    # the last item: the images close the input
    m = chat_of_responses({"input": _tool_turns(output)[:4]})["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "user"]


def test_responses_tool_output_file_is_a_400() -> None:
    output = [{"type": "input_file", "file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}]
    with pytest.raises(InvalidRequest) as info:
        chat_of_responses({"input": _tool_turns(output)})
    assert info.value.param == "input[3].output[0].type" and "input_file" in info.value.message


async def test_responses_tool_output_images_reach_the_upstream(up: Scripted) -> None:
    first = "an agent's screenshot"
    turns: Any = _tool_turns([{"type": "input_text", "text": "the screen"}, {"type": "input_image", "image_url": SHOT}])
    turns[0]["content"] = first
    async with up.openai_client() as client:
        created = await client.responses.create(model="m", input=turns[:5])
        await client.responses.create(model="m", input="and now?", previous_response_id=created.id, store=False)
    now, later = _sent(up, first)
    image = {"type": "image_url", "image_url": {"url": SHOT}}
    assert [x["role"] for x in now["messages"]] == ["user", "assistant", "tool", "tool", "user"]
    assert now["messages"][-1] == {"role": "user", "content": [image]}
    assert later["messages"][4] == {"role": "user", "content": [image]}  # kept in the stored conversation


# -- 3. the Responses settings chat completions take ----------------------------------------------------------


def test_responses_settings_go_upstream() -> None:
    chat = chat_of_responses(
        {
            "input": "x",
            "text": {"verbosity": "low"},
            "prompt_cache_key": "pk",
            "safety_identifier": "sid",
            "service_tier": "flex",
            "top_logprobs": 3,
            "include": LOGPROBS,
        }
    )
    assert (chat["verbosity"], chat["prompt_cache_key"], chat["safety_identifier"]) == ("low", "pk", "sid")
    assert (chat["service_tier"], chat["logprobs"], chat["top_logprobs"]) == ("flex", True, 3)
    assert "logprobs" not in chat_of_responses({"input": "x", "top_logprobs": 3})  # not asked for in `include`
    chat = chat_of_responses({"input": "x", "include": [*LOGPROBS, "reasoning.encrypted_content"]})
    assert chat["logprobs"] is True and "top_logprobs" not in chat


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("text", {"verbosity": 1}, "text.verbosity"),
        ("text", {"verbosity": "loud"}, "text.verbosity"),
        ("prompt_cache_key", 5, "prompt_cache_key"),
        ("safety_identifier", True, "safety_identifier"),
        ("service_tier", 3, "service_tier"),
        ("top_logprobs", "2", "top_logprobs"),
        ("top_logprobs", True, "top_logprobs"),
        ("top_logprobs", 21, "top_logprobs"),
        ("include", "message.output_text.logprobs", "include"),
        ("include", [1], "include[0]"),
    ],
)
async def test_responses_settings_are_typed(up: Scripted, field: str, value: Any, param: str) -> None:
    prompt = f"typed {field} {value!r}"
    with pytest.raises(InvalidRequest) as info:
        chat_of_responses({"input": prompt, field: value})
    assert info.value.param == param
    async with up.openai_client() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="m", input=prompt, store=False, extra_body={field: value})
    assert refused.value.param == param
    assert up.bodies_for(prompt) == []


async def test_responses_logprobs_service_tier_and_verbosity(up: Scripted) -> None:
    prompt = "logprobs, whole"
    key = up.key()
    async with up.openai_client(key) as client:
        raw = await client.responses.with_raw_response.create(
            model="m",
            input=prompt,
            top_logprobs=2,
            include=["message.output_text.logprobs"],
            service_tier="auto",
            text={"verbosity": "low"},
            prompt_cache_key="pk",
            safety_identifier="sid",
        )
    data = json.loads(raw.text)
    Response.model_validate(data)
    part = data["output"][0]["content"][0]
    ResponseOutputText.model_validate(part)
    assert part["logprobs"] == [
        {
            "token": t,
            "bytes": list(t.encode()),
            "logprob": -0.25,
            "top_logprobs": [
                {"token": t, "bytes": list(t.encode()), "logprob": -0.25},
                {"token": "x", "bytes": [120], "logprob": -2.5},
            ],
        }
        for t in ("Hel", "lo")
    ]
    assert data["service_tier"] == "default"  # as the upstream reports it (``auto`` was served by ``default``)
    assert data["text"]["verbosity"] == "low" and data["top_logprobs"] == 2
    assert (data["prompt_cache_key"], data["safety_identifier"]) == ("pk", "sid")
    (sent,) = up.bodies_for(prompt)
    assert {k: sent[k] for k in ("verbosity", "prompt_cache_key", "safety_identifier", "service_tier")} == {
        "verbosity": "low",
        "prompt_cache_key": "pk",
        "safety_identifier": "sid",
        "service_tier": "auto",
    }
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    streamed = {"model": "m", "input": "logprobs, streamed", "top_logprobs": 1, "include": LOGPROBS}
    events = await _events(up, key, {**streamed, "service_tier": "priority"})
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [[(lp["token"], [t["token"] for t in lp["top_logprobs"]]) for lp in d["logprobs"]] for d in deltas] == [
        [("Hel", ["Hel"])],
        [("lo", ["lo"])],
    ]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert [lp["token"] for lp in done["logprobs"]] == ["Hel", "lo"]
    final = events[-1]["response"]
    assert final["service_tier"] == "priority"
    assert [lp["bytes"] for lp in final["output"][0]["content"][0]["logprobs"]] == [list(b"Hel"), list(b"lo")]
    async with httpx.AsyncClient() as http:  # stored as answered
        for answer in (data, final):
            stored = await http.get(f"{up.url}/v1/responses/{answer['id']}", headers={"authorization": f"Bearer {key}"})
            assert stored.json()["output"] == answer["output"]
            assert stored.json()["service_tier"] == answer["service_tier"]


async def test_responses_without_logprobs_asked_get_none(up: Scripted) -> None:
    async with up.openai_client() as client:
        response = await client.responses.create(model="m", input="no logprobs", top_logprobs=2, store=False)
    part: Any = response.output[0].content[0]  # type: ignore[union-attr, index]
    assert part.logprobs == []
    (sent,) = up.bodies_for("no logprobs")
    assert "logprobs" not in sent and "top_logprobs" not in sent and "service_tier" not in sent


# -- 4. usage.input_tokens_details.cache_write_tokens ---------------------------------------------------------


async def test_responses_usage_validates_strictly(up: Scripted) -> None:
    key = up.key()
    async with up.openai_client(key) as client:
        written = json.loads((await client.responses.with_raw_response.create(model="m", input="cache write")).text)
        plain = json.loads((await client.responses.with_raw_response.create(model="m", input="no writes")).text)
    usage = ResponseUsage.model_validate(written["usage"])  # cache_write_tokens is required
    assert (usage.input_tokens_details.cache_write_tokens, usage.input_tokens_details.cached_tokens) == (7, 3)
    assert ResponseUsage.model_validate(plain["usage"]).input_tokens_details.cache_write_tokens == 0
    events = await _events(up, key, {"model": "m", "input": "cache write"})
    streamed = ResponseUsage.model_validate(events[-1]["response"]["usage"])
    assert streamed.input_tokens_details.cache_write_tokens == 7
    async with httpx.AsyncClient() as http:
        for rid in (written["id"], events[-1]["response"]["id"]):
            stored = await http.get(f"{up.url}/v1/responses/{rid}", headers={"authorization": f"Bearer {key}"})
            assert ResponseUsage.model_validate(stored.json()["usage"]).input_tokens_details.cache_write_tokens == 7


def test_stored_responses_from_before_get_cache_write_tokens() -> None:
    """A response stored before the field existed is read back with it (0)."""
    old = {
        "usage": {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 1},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 7,
        }
    }
    usage = ResponseUsage.model_validate(rs.as_stored(old)["usage"])
    assert (usage.input_tokens_details.cache_write_tokens, usage.input_tokens_details.cached_tokens) == (0, 1)
    assert rs.as_stored({"usage": None}) == {"usage": None}


# -- 5. the Responses sub-endpoints ---------------------------------------------------------------------------


async def test_responses_cancel(up: Scripted) -> None:
    async with up.openai_client() as client:
        created = await client.responses.create(model="m", input="nothing to cancel")
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.cancel(created.id)
        assert "background" in info.value.message
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel("resp_unknown")
    async with up.openai_client() as other:  # another key's response is not found, as for GET
        with pytest.raises(openai.NotFoundError):
            await other.responses.cancel(created.id)


async def test_responses_input_tokens_are_counted(up: Scripted) -> None:
    key = up.key()
    async with up.openai_client(key) as client, up.claude_client(key) as claude:
        counted = await client.responses.input_tokens.count(
            model="m", input="count these tokens please", instructions="Be brief."
        )
        reference = await claude.messages.count_tokens(
            model="m", system="Be brief.", messages=_user("count these tokens please")
        )
        assert counted.object == "response.input_tokens"
        assert counted.input_tokens == reference.input_tokens > 0  # the same chat body, the same count
        assert (await client.responses.input_tokens.count(input="count these tokens please")).input_tokens > 0
        created = await client.responses.create(model="m", input="a first turn")
        alone = await client.responses.input_tokens.count(model="m", input="more")
        continued = await client.responses.input_tokens.count(model="m", input="more", previous_response_id=created.id)
        assert continued.input_tokens > alone.input_tokens
        with pytest.raises(openai.NotFoundError):
            await client.responses.input_tokens.count(model="nope", input="x")
        with pytest.raises(openai.NotFoundError):
            await client.responses.input_tokens.count(model="m", input="x", previous_response_id="resp_unknown")
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.input_tokens.count(model="m", input="x", extra_body={"top_logprobs": "2"})
        assert info.value.param == "top_logprobs"
    assert up.bodies_for("count these tokens please") == [] and up.bodies_for("more") == []


# -- 6. Messages: tool_choice without tools, output_format, stop_sequences ------------------------------------


def test_messages_tool_choice_without_tools_is_dropped() -> None:
    chat = chat_of_messages({"messages": _user("x"), "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat
    tool = {"name": "f", "input_schema": {"type": "object"}}
    assert (
        chat_of_messages({"messages": _user("x"), "tools": [tool], "tool_choice": {"type": "any"}})["tool_choice"]
        == "required"
    )
    with pytest.raises(InvalidRequest) as info:  # still checked
        chat_of_messages({"messages": _user("x"), "tool_choice": {"type": "sometimes"}})
    assert info.value.param == "tool_choice.type"


def test_messages_legacy_output_format() -> None:
    """The structured-outputs beta's top-level ``output_format`` (which Anthropic still takes during its transition
    to ``output_config.format``) is mapped the same way; both at once is a 400."""
    fmt = {"type": "json_schema", "schema": SCHEMA}
    chat = chat_of_messages({"messages": _user("x"), "output_format": fmt, "output_config": {"effort": "low"}})
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": STRICT_SCHEMA, "strict": True},
    }
    assert chat["reasoning_effort"] == "low"
    for body in ({"output_format": {"type": "xml"}}, {"output_format": fmt, "output_config": {"format": fmt}}):
        with pytest.raises(InvalidRequest) as info:
            chat_of_messages({"messages": _user("x"), **body})
        assert info.value.param == "output_format"


def test_messages_at_most_four_stop_sequences() -> None:
    assert chat_of_messages({"messages": _user("x"), "stop_sequences": list("abcd")})["stop"] == list("abcd")
    with pytest.raises(InvalidRequest) as info:
        chat_of_messages({"messages": _user("x"), "stop_sequences": list("abcde")})
    assert info.value.param == "stop_sequences" and "4" in info.value.message


async def test_messages_fixes_over_the_wire(up: Scripted) -> None:
    async with up.claude_client() as claude:
        await claude.messages.create(
            model="m", max_tokens=10, messages=_user("choice without tools"), tool_choice={"type": "auto"}
        )
        with pytest.raises(anthropic.BadRequestError) as info:
            await claude.messages.create(
                model="m", max_tokens=10, messages=_user("five stops"), stop_sequences=list("abcde")
            )
        await claude.messages.create(
            model="m",
            max_tokens=10,
            messages=_user("legacy format"),
            extra_body={"output_format": {"type": "json_schema", "schema": SCHEMA}},
        )
    body: Any = info.value.body
    assert body["error"]["type"] == "invalid_request_error" and "stop_sequences" in body["error"]["message"]
    assert "tool_choice" not in up.bodies_for("choice without tools")[0]
    assert up.bodies_for("five stops") == []
    assert up.bodies_for("legacy format")[0]["response_format"]["json_schema"]["schema"] == STRICT_SCHEMA
