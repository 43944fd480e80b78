"""``thinking`` on ``/v1/messages`` with the real Anthropic SDK over sockets (Claude Code sends it for "ultrathink" and
by default for some models): checked as Anthropic checks it, not forwarded (chat APIs have no thinking budget), and
the upstream's reasoning (vLLM's ``reasoning_content``) comes back as a ``thinking`` block, streamed or not, unless
thinking is off or its display omitted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import TextBlock, ThinkingBlock

from tests.frontdoors.event_order import assert_blocks_in_order
from tests.frontdoors.scripted_upstream import REASONING, Scripted, scripted_gateway

ON = {"type": "enabled", "budget_tokens": 2048}
TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("thinking")) as env:
        yield env


def _ask(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": "think"}], **extra}


@pytest.mark.parametrize("thinking", [ON, {"type": "adaptive"}, {"type": "enabled", "budget_tokens": 1024}])
async def test_the_upstream_s_reasoning_is_a_thinking_block(up: Scripted, thinking: dict[str, Any]) -> None:
    async with up.claude_client() as client:
        message = await client.messages.create(**_ask(thinking=thinking))
        async with client.messages.stream(**_ask(thinking=thinking)) as stream:
            events = [e async for e in stream if e.type.startswith("content_block_")]
            streamed = await stream.get_final_message()
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert_blocks_in_order(events, 2)
    for answer in (message, streamed):
        first, second = answer.content
        assert isinstance(first, ThinkingBlock) and first.thinking == REASONING and first.signature == ""
        assert isinstance(second, TextBlock) and second.text == "Hello"
    assert kinds == ["thinking_delta", "thinking_delta", "text_delta", "text_delta"]
    sent = up.bodies_for("think")[-2:]
    assert all("thinking" not in b and "reasoning_effort" not in b for b in sent)  # chat has no thinking budget


@pytest.mark.parametrize(
    "extra", [{}, {"thinking": {"type": "disabled"}}, {"thinking": {**ON, "display": "omitted"}}], ids=str
)
async def test_no_thinking_block_unless_asked(up: Scripted, extra: dict[str, Any]) -> None:
    async with up.claude_client() as client:
        message = await client.messages.create(**_ask(**extra))
        async with client.messages.stream(**_ask(**extra)) as stream:
            streamed = await stream.get_final_message()
    assert [b.type for b in message.content] == [b.type for b in streamed.content] == ["text"]


async def test_a_thinking_block_sent_back_is_dropped(up: Scripted) -> None:
    async with up.claude_client() as client:
        first = await client.messages.create(**_ask(thinking=ON))
        history: Any = [
            {"role": "user", "content": "think"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "and then?"},
        ]
        await client.messages.create(model="m", max_tokens=4096, thinking=ON, messages=history)
    [sent] = up.bodies_for("and then?")
    assert sent["messages"][1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "budget_tokens"),
        ({"thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "max_tokens"),  # max_tokens > budget_tokens
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"thinking": {"type": "adaptive", "display": "full"}}, "thinking.display"),
        ({"thinking": {"type": "disabled", "display": "omitted"}}, "thinking.display"),  # only its own fields
        ({"thinking": {"type": "between_tools", "budget_tokens": 2048}}, "thinking.budget_tokens"),
        # thinking on: sampling left to the model, and no forced tool
        # (the SDK's create() no longer takes the sampling parameters: sent as extra_body, as older SDKs sent them)
        ({"thinking": ON, "extra_body": {"temperature": 0.2}}, "temperature"),
        ({"thinking": {"type": "adaptive"}, "extra_body": {"top_k": 5}}, "top_k"),
        ({"thinking": ON, "extra_body": {"top_p": 0.5}}, "top_p"),
        ({"thinking": ON, "tool_choice": {"type": "any"}, "tools": [TOOL]}, "tool_choice"),
    ],
)
async def test_thinking_is_checked_as_anthropic_checks_it(up: Scripted, extra: dict[str, Any], param: str) -> None:
    async with up.claude_client() as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(**_ask(**extra))
    body: Any = info.value.body
    assert body["error"]["type"] == "invalid_request_error" and param in body["error"]["message"]


async def test_what_anthropic_allows_with_thinking_on_goes_through(up: Scripted) -> None:
    allowed = {"extra_body": {"temperature": 1, "top_p": 0.97}, "tool_choice": {"type": "auto"}, "tools": [TOOL]}
    async with up.claude_client() as client:
        message = await client.messages.create(**_ask(thinking=ON, **allowed))
    assert [b.type for b in message.content] == ["thinking", "text"]


async def test_thinking_that_arrives_inside_a_tool_call_waits_for_it(up: Scripted) -> None:
    """Reasoning streamed while a call's arguments are incomplete is held, as text is: a block then would cut them."""
    body = {**_ask(thinking=ON), "messages": [{"role": "user", "content": "think in a call"}]}
    async with up.claude_client() as client, client.messages.stream(**body) as stream:
        events = [e async for e in stream if e.type.startswith("content_block_")]
        message = await stream.get_final_message()
    assert_blocks_in_order(events, 2)
    call, thought = message.content
    assert call.type == "tool_use" and call.input == {"city": "Paris"}
    assert isinstance(thought, ThinkingBlock) and thought.thinking == "hmm"
