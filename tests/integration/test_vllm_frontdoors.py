"""The Responses and Anthropic Messages front doors in front of a REAL vLLM server (CPU, tiny random Llama),
with the real openai and anthropic SDKs: what the client gets is what vLLM produced, and the ledger agrees."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from gateway.config import settings_from_dict
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, serve_gateway
from tests.integration.vllm_server import VLLMServer

PROMPT = "Tell me about the sea."
TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def gw(
    vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    tmp: Path = tmp_path_factory.mktemp("vllm-frontdoors")
    ledger = LedgerFile(tmp / "ledger.db")
    settings = settings_from_dict(
        {
            "models": [vllm_server.model_spec()],
            "routes": {"auto": {"models": ["tiny"], "policy": "cost"}},
            "cache": {"enabled": False},
            "server": {"metrics_scrape_seconds": 3600},
            "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
        }
    )
    with serve_gateway(settings) as running:
        yield running, ledger


@pytest.fixture
async def oai(gw: tuple[RunningGateway, LedgerFile]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gw[0].base_url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
async def claude(gw: tuple[RunningGateway, LedgerFile]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=gw[0].base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


async def direct_chat(vllm: VLLMServer, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """What vLLM itself answers (greedy, so the gateway's answer must be the same text)."""
    body = {"model": vllm.served_model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(vllm.base_url + "/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_responses_create_is_what_vllm_produced(
    gw: tuple[RunningGateway, LedgerFile], oai: openai.AsyncOpenAI, vllm_server: VLLMServer
) -> None:
    direct = await direct_chat(
        vllm_server, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}], 8
    )
    raw = await oai.responses.with_raw_response.create(
        model="auto", instructions="Be brief.", input=PROMPT, max_output_tokens=8, temperature=0
    )
    response = raw.parse()
    assert response.output_text == direct["choices"][0]["message"]["content"]
    assert response.status == "incomplete"  # a random model runs to max_output_tokens
    assert response.usage is not None and response.usage.output_tokens == 8
    assert response.usage.input_tokens == direct["usage"]["prompt_tokens"]
    assert raw.headers["x-gateway-model"] == "tiny" and raw.headers["x-gateway-route"] == "auto"
    row = await gw[1].one_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["chosen_model"] == "tiny" and row["completion_tokens"] == 8
    # Continued from the stored response: the first turn travels upstream again.
    follow = await oai.responses.create(
        model="tiny", input="And the sky?", previous_response_id=response.id, max_output_tokens=4, temperature=0
    )
    assert follow.usage is not None and follow.usage.input_tokens > response.usage.input_tokens


async def test_responses_stream_events(gw: tuple[RunningGateway, LedgerFile], oai: openai.AsyncOpenAI) -> None:
    events: list[Any] = []
    async with oai.responses.stream(model="tiny", input=PROMPT, max_output_tokens=8, temperature=0) as stream:
        async for event in stream:
            events.append(event)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in types and types[-1] == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1].response
    assert last.output_text == text and last.usage.output_tokens == 8


async def test_responses_function_call_round_trip(oai: openai.AsyncOpenAI) -> None:
    """The call comes from the client's history: the session's vLLM runs without a tool-call parser, so it
    cannot make calls itself (named tool choice needs ``--tool-call-parser`` in vLLM 0.32); what is proven is
    that a call and its output reach vLLM as chat tool messages that its template renders."""
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": TOOL_SCHEMA}]
    items: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
    ]
    plain = await oai.responses.create(model="tiny", input="Weather in Paris?", max_output_tokens=4, store=False)
    answer = await oai.responses.create(
        model="tiny", input=items, tools=tools, tool_choice="none", max_output_tokens=4, temperature=0, store=False
    )
    assert answer.output_text and answer.usage is not None and plain.usage is not None
    assert answer.usage.input_tokens > plain.usage.input_tokens  # the call and its output went upstream


async def test_messages_create_and_stream(
    gw: tuple[RunningGateway, LedgerFile], claude: anthropic.AsyncAnthropic, vllm_server: VLLMServer
) -> None:
    direct = await direct_chat(vllm_server, [{"role": "user", "content": PROMPT}], 8)
    raw = await claude.messages.with_raw_response.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": PROMPT}], extra_body={"temperature": 0}
    )
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == direct["choices"][0]["message"]["content"]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 8
    assert message.usage.input_tokens == direct["usage"]["prompt_tokens"]
    row = await gw[1].one_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["completion_tokens"] == 8
    async with claude.messages.stream(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": PROMPT}], extra_body={"temperature": 0}
    ) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == message.content[0].text
    assert final.usage.output_tokens == 8 and final.usage.input_tokens == message.usage.input_tokens
    counted = await claude.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": PROMPT}])
    assert counted.input_tokens > 0


async def test_messages_tool_use_round_trip(claude: anthropic.AsyncAnthropic) -> None:
    """As above: the tool_use comes from the client's history (no tool-call parser in the session's vLLM)."""
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": TOOL_SCHEMA}]
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    turns: Any = [
        *question,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": json.dumps("21 C")}]},
    ]
    plain = await claude.messages.create(model="tiny", max_tokens=4, messages=question)
    answer = await claude.messages.create(
        model="tiny", max_tokens=4, tools=tools, tool_choice={"type": "none"}, messages=turns
    )
    assert answer.content[0].type == "text" and answer.stop_reason == "max_tokens"
    assert answer.usage.input_tokens > plain.usage.input_tokens


class Verdict(BaseModel):
    answer: Literal["yes", "no"]


async def test_responses_parse_json_schema(oai: openai.AsyncOpenAI) -> None:
    """``text.format`` (a JSON schema, as the SDK's ``responses.parse`` sends it) becomes vLLM's structured
    output: even a random model's answer parses."""
    parsed = await oai.responses.parse(
        model="tiny", input="Is the sea blue?", text_format=Verdict, max_output_tokens=100, store=False
    )
    assert parsed.status == "completed", parsed.output_text
    assert isinstance(parsed.output_parsed, Verdict)


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # openai-python dumping a compaction's user messages
async def test_compaction_round_trip(gw: tuple[RunningGateway, LedgerFile], oai: openai.AsyncOpenAI) -> None:
    """``responses.compact`` against the real vLLM (its chat template takes the summarising request), and the
    compacted window continues the conversation there."""
    turns: Any = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "The sea is large and salty."},
        {"role": "user", "content": "And rivers?"},
    ]
    raw = await oai.responses.with_raw_response.compact(model="tiny", input=turns)
    compacted = raw.parse()
    assert [o.type for o in compacted.output] == ["message", "message", "compaction"]
    assert compacted.usage.output_tokens > 0
    row = await gw[1].one_row(raw.headers["x-request-id"])
    assert (row["endpoint"], row["chosen_model"], row["completion_tokens"]) == (
        "compact",
        "tiny",
        compacted.usage.output_tokens,
    )
    window = [o.model_dump(mode="json", exclude_none=True) for o in compacted.output]
    answer = await oai.responses.create(
        model="tiny", input=[*window, {"role": "user", "content": "Thanks"}], max_output_tokens=4, store=False
    )
    assert answer.usage is not None and answer.usage.input_tokens > compacted.usage.output_tokens  # the summary went
