"""An upstream stream the front doors cannot read, or whose generation failed, ends as an upstream failure.

A chunk whose choice is not an object, whose delta is text, or whose tool call's arguments are an object: the chat
door relayed it as it was (recorded a clean 200), and the Responses and Messages renderers failed on it, cutting the
client's connection with no terminal event and a ledger row blaming the client (499). A ``finish_reason`` of
``abort`` (vLLM, when its engine drops a request) or ``error`` (OpenAI-compatible routers) was taken for a finished
answer: a cut answer shown as ``completed`` / ``end_turn``, cached and served again. Each now fails as a stream cut
after its first byte does: chat's in-stream error, Responses' ``response.failed``, Messages' ``error`` event, a
row of 200 with ``UpstreamUnavailable``, nothing cached; a non-streamed answer so cut is a 502 (or the next
candidate's answer). Clients are the real ``openai`` and ``anthropic`` SDKs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from backends.sse import EventTooLarge, SSEDecoder
from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, serve_gateway
from tests.helpers.upstream import Seen, Upstream, sse_response


def _chunk(*choices: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u", "choices": list(choices)}


ROLE = _chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
HEL = _chunk({"index": 0, "delta": {"content": "Hel"}, "finish_reason": None})
USAGE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u", "choices": []}
USAGE["usage"] = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def _end(reason: str) -> dict[str, Any]:
    return _chunk({"index": 0, "delta": {"content": "lo"}, "finish_reason": reason})


MALFORMED: dict[str, dict[str, Any]] = {
    "a delta that is text": _chunk({"index": 0, "delta": "oops", "finish_reason": None}),
    "a choice that is null": _chunk(None),
    "tool arguments that are an object": _chunk(
        {
            "index": 0,
            "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"arguments": {}}}]},
            "finish_reason": None,
        }
    ),
}
FAILED = {"abort", "error"}


def _script(seen: Seen) -> web.StreamResponse:
    if seen.method != "POST":
        return web.Response(text="{}")
    body = seen.json()
    prompt = body["messages"][-1]["content"]
    kind, _, detail = prompt.partition(":")
    if kind == "cut" and not body.get("stream"):
        answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "u", "usage": USAGE["usage"]}
        answer["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "Hel"}, "finish_reason": detail}]
        return web.json_response(answer)
    if kind == "no usage":
        events = [ROLE, HEL, _end("stop")]
    elif kind == "malformed":
        events = [ROLE, HEL, MALFORMED[detail], _end("stop"), USAGE]
    else:
        events = [ROLE, HEL, _end(detail), USAGE]
    stream = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return sse_response(stream + b"data: [DONE]\n\n")


@dataclass(slots=True)
class Env:
    gw: RunningGateway
    upstream: Upstream
    ledger: LedgerFile

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gw.base_url + "/v1", api_key="x", max_retries=0, timeout=20)

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.gw.base_url, api_key="x", max_retries=0, timeout=20)

    def calls(self, prompt: str) -> int:
        return sum(1 for s in self.upstream.requests if s.method == "POST" and prompt in s.body.decode())


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ledger = LedgerFile(tmp_path / "ledger.db")
    async with Upstream(_script) as upstream:
        model = {"name": "m", "backend": "openai", "base_url": upstream.url + "/v1", "upstream_model": "u"}
        settings = settings_from_dict(
            {
                "models": [{**model, "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}],
                "retry": {"max_attempts": 1},
                "cache": {"enabled": True},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with master_key(None), serve_gateway(settings) as gw:
            yield Env(gw, upstream, ledger)


async def _fails_on_every_door(env: Env, prompt: str) -> list[str]:
    """Stream ``prompt`` through the three doors; each must end in its API's error form. The messages of the
    errors, and a check of each request's ledger row."""
    messages: list[str] = []
    rid = uuid.uuid4().hex[:12]
    headers = {"x-request-id": f"chat-{rid}"}
    async with env.openai() as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}], temperature=0, stream=True, extra_headers=headers
        )
        with pytest.raises(openai.APIError) as chat_err:
            async for _ in stream:
                pass
        messages.append(chat_err.value.message)
        headers = {"x-request-id": f"resp-{rid}"}
        events = await client.responses.create(
            model="m", input=prompt, temperature=0, stream=True, store=False, extra_headers=headers
        )
        kinds = [e.type async for e in events]
        assert kinds[-1] == "response.failed" and "response.completed" not in kinds, kinds
    async with env.anthropic() as claude:
        headers = {"x-request-id": f"msg-{rid}"}
        with pytest.raises(anthropic.APIError) as msg_err:
            async with claude.messages.stream(
                model="m", max_tokens=50, messages=[{"role": "user", "content": prompt}], extra_headers=headers
            ) as s:
                await s.get_final_message()
        messages.append(msg_err.value.message)
    for door in ("chat", "resp", "msg"):
        row = await env.ledger.one_row(f"{door}-{rid}")
        assert (row["status_code"], row["error_type"]) == (200, "UpstreamUnavailable"), (door, row)
    return messages


@pytest.mark.parametrize("detail", list(MALFORMED))
async def test_a_malformed_chunk_fails_the_stream_on_every_door(env: Env, detail: str) -> None:
    messages = await _fails_on_every_door(env, f"malformed:{detail}")
    assert all("malformed stream event" in m for m in messages), messages


@pytest.mark.parametrize("reason", sorted(FAILED))
async def test_a_failed_generation_is_not_a_finished_answer(env: Env, reason: str) -> None:
    prompt = f"cut:{reason}"
    messages = await _fails_on_every_door(env, prompt)
    assert all(f"finish_reason '{reason}'" in m for m in messages), messages
    async with env.openai() as client:
        for _ in range(2):  # not cached: both go upstream
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": prompt}], temperature=0
                )
            assert err.value.status_code == 502 and f"finish_reason '{reason}'" in err.value.message
            await env.gw.wait_writes()
    assert env.calls(prompt) == 3 + 2


async def test_without_the_upstream_s_usage_clients_are_told_what_is_charged(env: Env) -> None:
    """An upstream that reports no usage (a server without ``include_usage``): the ledger charges the prompt's
    estimate and the relayed text counted; the usage the SDKs report is the same (it was 0 on the Responses API, an
    output of 0 on the Messages API, and no usage chunk for a chat client that asked for one)."""
    prompt = "no usage"
    rid = uuid.uuid4().hex[:12]
    async with env.openai() as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": f"chat-{rid}"},
        )
        usages = [c.usage async for c in stream if c.usage is not None]
        quiet = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}], stream=True
        )
        assert [c async for c in quiet if c.usage is not None] == []  # not asked for: none
        async with client.responses.stream(
            model="m", input=prompt, store=False, extra_headers={"x-request-id": f"resp-{rid}"}
        ) as s:
            response = await s.get_final_response()
    async with env.anthropic() as claude:
        async with claude.messages.stream(
            model="m",
            max_tokens=50,
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"x-request-id": f"msg-{rid}"},
        ) as s:
            message = await s.get_final_message()
    rows = {door: await env.ledger.one_row(f"{door}-{rid}") for door in ("chat", "resp", "msg")}
    assert all(r["tokens_estimated"] and r["completion_tokens"] > 0 for r in rows.values()), rows
    assert len(usages) == 1
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (
        rows["chat"]["prompt_tokens"],
        rows["chat"]["completion_tokens"],
    )
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        rows["resp"]["prompt_tokens"],
        rows["resp"]["completion_tokens"],
    )
    assert message.usage.output_tokens == rows["msg"]["completion_tokens"]


def test_the_sse_decoder_bounds_an_event_and_reads_one_fed_in_pieces() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    stream = b'data: {"a": 1}\r\n\r\ndata: x\rdata: y\r\rdata: [DONE]\n\n'
    got = [data for i in range(len(stream)) for data in decoder.feed(stream[i : i + 1])]
    assert got == [b'{"a": 1}', b"x\ny", b"[DONE]"]
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            decoder.feed(b"data: " + b"z" * 100)
