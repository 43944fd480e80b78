"""What Anthropic-protocol agents send, with the real Anthropic SDK over sockets (an audit's finds): the SDK's tool
runner, which asks for a message thread first, falls back to sending the whole history; a turn of thinking alone
goes back as an empty assistant turn; a replayed tool call's non-ASCII arguments stay as written; images count in
``count_tokens``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anthropic import beta_async_tool

from tests.frontdoors.scripted_upstream import SILENT, Scripted, scripted_gateway

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("agents")) as env:
        yield env


@beta_async_tool
async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def test_the_sdk_tool_runner_sends_the_whole_history(up: Scripted) -> None:
    """The runner asks for a message thread; the gateway keeps none and says so the way the SDK reads (a 400 with
    ``error.details.error_code`` ``thread_unsupported_request``), and the runner goes on without one: each turn
    carries the whole conversation and the tools (before, the thread was ignored and later turns reached the model
    as bare tool results, without the question, the calls or the tools)."""
    async with up.claude_client() as client:
        runner = client.beta.messages.tool_runner(
            model="m",
            max_tokens=1000,
            messages=[{"role": "user", "content": "sequential"}],
            tools=[get_weather],
            stream=True,
        )
        final = await runner.until_done()
    assert [b.text for b in final.content if b.type == "text"] == ["Hello"]
    last = up.bodies[-1]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [t["function"]["name"] for t in last["tools"]] == ["get_weather"]
    assert [m["content"] for m in last["messages"][2:]] == ["sunny in Paris", "sunny in Rome"]


async def test_a_thread_is_refused_in_anthropic_s_terms(up: Scripted) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{up.url}/v1/messages",
            json={
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "thread": {"type": "create"},
            },
            headers={"x-api-key": up.key()},
        )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "thread" in error["message"]
    assert error["details"] == {"error_code": "thread_unsupported_request", "unsupported": ["thread"]}


async def test_a_turn_of_thinking_alone_goes_back_as_an_empty_assistant_turn(up: Scripted) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with up.claude_client() as client:
        first = await client.messages.create(
            model="m", max_tokens=2048, thinking=thinking, messages=[{"role": "user", "content": SILENT}]
        )
        assert [b.type for b in first.content] == ["thinking"]
        history: Any = [
            {"role": "user", "content": SILENT},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "go on"},
        ]
        await client.messages.create(model="m", max_tokens=2048, thinking=thinking, messages=history)
    [sent] = up.bodies_for("go on")
    assert sent["messages"][1] == {"role": "assistant", "content": ""}


async def test_a_replayed_tool_call_keeps_its_non_ascii_arguments(up: Scripted) -> None:
    text = "你好世界" * 50
    history: Any = [
        {"role": "user", "content": "write it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "write", "input": {"text": text}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
        {"role": "user", "content": "thanks, all written?"},
    ]
    async with up.claude_client() as client:
        await client.messages.create(model="m", max_tokens=10, messages=history)
        counted = await client.messages.count_tokens(model="m", messages=history)
    [sent] = up.bodies_for("thanks, all written?")
    arguments = sent["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert arguments == json.dumps({"text": text}, ensure_ascii=False, separators=(",", ":"))
    assert counted.input_tokens < 500  # escaped, the 200 characters alone came to ~1,200 tokens


async def test_images_count_in_count_tokens(up: Scripted) -> None:
    image: Any = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    text: Any = {"type": "text", "text": "What is this?"}
    async with up.claude_client() as client:
        alone = await client.messages.count_tokens(model="m", messages=[{"role": "user", "content": [text]}])
        both = await client.messages.count_tokens(model="m", messages=[{"role": "user", "content": [image, text]}])
    assert both.input_tokens - alone.input_tokens == 765  # OpenAI's count of a 1024x1024 image at high detail
