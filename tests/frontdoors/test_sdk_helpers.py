"""SDK helpers against the gateway: what the real openai and anthropic SDKs send and expect (an audit's finds).

* ``messages.parse(output_format=Model)`` with an optional field, and a ``strict`` Anthropic tool with an optional
  parameter, went upstream as ``strict: true`` with a schema OpenAI's strict mode refuses (a 400 from a hosted
  model; fine on vLLM, so it depended on the model a route picked);
* ``responses.input_tokens.count`` without ``input`` (a stored conversation, or instructions alone) was a 400;
* the Anthropic SDK's ``models.list()``/``retrieve()`` got OpenAI's shape (no ``type``, ``display_name``,
  ``created_at``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from anthropic.lib._parse._transform import transform_schema
from pydantic import BaseModel

from gateway.frontdoors.strict import NO_ARGUMENTS
from tests.frontdoors.scripted_upstream import END_CALLS, ROLE, STREAMS, Scripted, call, calls, scripted_gateway


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("sdk-audit")) as env:
        yield env


class Person(BaseModel):
    name: str
    nickname: str | None = None  # optional: Anthropic's structured outputs take it as written
    tags: list[str] = []


def _objects(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        if isinstance(schema.get("properties"), dict):
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


def _strict_ok(schema: dict[str, Any]) -> bool:
    """What OpenAI's strict mode (chat ``response_format`` / ``tools[].function.strict``) takes: every object closed
    and all its properties required."""
    return all(
        o.get("additionalProperties") is False and set(o.get("required") or []) == set(o["properties"])
        for o in _objects(schema)
    )


async def test_messages_structured_output_with_optional_fields_is_strict_valid_upstream(up: Scripted) -> None:
    """``client.messages.parse(output_format=Model)`` sends ``output_config.format`` with the schema the SDK's
    ``transform_schema`` writes (optional fields left out of ``required``, as Anthropic takes them). The gateway
    forwards it as chat ``response_format`` with ``strict: true``, which OpenAI's chat API refuses (400: every
    property must be required); the schema must be made strict (as the Responses door does) or go non-strict."""
    prompt = "structured optional " + up.key()[-6:]
    async with up.claude_client() as claude:
        await claude.messages.create(
            model="m",
            max_tokens=50,
            messages=[{"role": "user", "content": prompt}],
            output_config={"format": {"type": "json_schema", "schema": transform_schema(Person)}},
        )
    (body,) = up.bodies_for(prompt)
    fmt = body["response_format"]["json_schema"]
    assert fmt.get("strict") is not True or _strict_ok(fmt["schema"]), fmt


async def test_messages_strict_tool_with_optional_parameter_is_strict_valid_upstream(up: Scripted) -> None:
    """An Anthropic tool with ``strict: true`` and an optional parameter (Anthropic's strict tool use takes it) goes
    upstream as a chat function with ``strict: true`` and a schema OpenAI's strict mode refuses."""
    prompt = "strict tool optional " + up.key()[-6:]
    tool: Any = {
        "name": "get_weather",
        "strict": True,
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "units": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    async with up.claude_client() as claude:
        await claude.messages.create(
            model="m", max_tokens=50, tools=[tool], messages=[{"role": "user", "content": prompt}]
        )
    (body,) = up.bodies_for(prompt)
    fn = body["tools"][0]["function"]
    assert fn.get("strict") is not True or _strict_ok(fn["parameters"]), fn


@pytest.mark.parametrize("extra", [{"previous_response_id": True}, {"instructions": "Be brief and kind."}])
async def test_responses_input_tokens_count_without_input(up: Scripted, extra: dict[str, Any]) -> None:
    """``client.responses.input_tokens.count`` takes ``input`` as optional (and nullable): counting a stored
    conversation (``previous_response_id``) or ``instructions`` alone is a 400 'Missing required parameter: input'."""
    async with up.openai_client() as client:
        kwargs: dict[str, Any] = dict(extra)
        if kwargs.get("previous_response_id") is True:
            first = await client.responses.create(model="m", input="hello there, how are you today?")
            kwargs["previous_response_id"] = first.id
        counted = await client.responses.input_tokens.count(model="m", **kwargs)
    assert counted.input_tokens > 0


async def test_anthropic_models_list_in_anthropics_shape(up: Scripted) -> None:
    """The Anthropic SDK's ``client.models.list()`` / ``retrieve()`` (``GET /v1/models`` with ``anthropic-version``)
    get OpenAI's model objects: ``type``, ``display_name`` and ``created_at`` (required in the SDK's ``ModelInfo``)
    are missing, so they read as None."""
    async with up.claude_client() as claude:
        models = [m async for m in claude.models.list()]
        one = await claude.models.retrieve("m")
    assert {m.id for m in models} >= {"m"}
    for m in [*models, one]:
        assert m.type == "model", m
        assert isinstance(m.display_name, str), m
        assert m.created_at is not None, m


async def test_anthropic_sdk_gets_its_not_found_error_for_an_unknown_model(up: Scripted) -> None:
    import anthropic

    async with up.claude_client() as claude:
        with pytest.raises(anthropic.NotFoundError) as info:
            await claude.models.retrieve("no-such-model")
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_a_call_without_arguments_reaches_the_responses_helpers_as_an_empty_object(up: Scripted) -> None:
    """Some OpenAI-compatible servers send a call without arguments as ``""``: ``responses.stream`` with a strict tool
    raised JSONDecodeError parsing it (the Messages door already made it ``{}``)."""
    from gateway.frontdoors.responses import whole_arguments

    assert whole_arguments("") == whole_arguments(" ") == "{}"  # what a non-streamed answer's call gets too
    name = "call without arguments"
    STREAMS[name] = [ROLE, calls(call(0, "", "call_0", "get_time")), *END_CALLS]
    try:
        tool: Any = {"type": "function", "name": "get_time", "parameters": NO_ARGUMENTS, "strict": True}
        async with up.openai_client() as client:
            async with client.responses.stream(model="m", input=name, tools=[tool]) as stream:
                events = [e async for e in stream]
                final = await stream.get_final_response()
    finally:
        STREAMS.pop(name, None)
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.arguments for e in done] == ["{}"]
    (item,) = [o for o in final.output if o.type == "function_call"]
    assert item.arguments == "{}" and item.parsed_arguments == {}  # type: ignore[union-attr]
