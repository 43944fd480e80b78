"""The upstream's reasoning (vLLM's ``reasoning_content``) on ``/v1/responses`` with the real openai SDK over sockets:
a ``reasoning`` item with a ``reasoning_text`` part before the message, streamed as ``response.reasoning_text.delta``
events the SDK parses; a later turn does not send it upstream again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import ResponseOutputMessage, ResponseReasoningItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.frontdoors.event_order import assert_items_in_order
from tests.frontdoors.scripted_upstream import REASONING, Scripted, scripted_gateway

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("reasoning")) as env:
        yield env


def _check(output: list[Any]) -> None:
    reasoning, message = output
    assert isinstance(reasoning, ResponseReasoningItem) and reasoning.summary == []
    assert reasoning.content is not None and [c.text for c in reasoning.content] == [REASONING]
    assert isinstance(message, ResponseOutputMessage) and message.content[0].text == "Hello"  # type: ignore[union-attr]


async def test_reasoning_is_an_item_before_the_answer(up: Scripted) -> None:
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        answer = await client.responses.create(model="m", input="think")
        _check(answer.output)
        assert answer.output_text == "Hello"
        stream = await client.responses.create(model="m", input="think", stream=True)
        events = [EVENTS.validate_python(e.model_dump()) async for e in stream]
        kinds = [e.type for e in events]
        assert kinds.count("response.reasoning_text.delta") == 2 and "response.reasoning_text.done" in kinds
        assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
        assert_items_in_order(events, 2)
        _check(events[-1].response.output)
        await client.responses.create(model="m", input="and then?", previous_response_id=answer.id)
    [later] = up.bodies_for("and then?")
    assert later["messages"][1] == {"role": "assistant", "content": "Hello"}  # the reasoning is not sent again


async def test_reasoning_that_arrives_inside_a_tool_call_waits_for_it(up: Scripted) -> None:
    """Reasoning streamed while a call's arguments are incomplete is held, as text is: an item then would cut them."""
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        stream = await client.responses.create(model="m", input="think in a call", stream=True)
        events = [e async for e in stream]
    assert_items_in_order(events, 2)
    call, reasoning = events[-1].response.output
    assert call.type == "function_call" and call.arguments == '{"city": "Paris"}'
    assert isinstance(reasoning, ResponseReasoningItem) and [c.text for c in reasoning.content or []] == ["hmm"]
