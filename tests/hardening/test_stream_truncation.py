"""A stream that ends (``[DONE]``) before its answer finished is a failed stream, not a success.

An upstream that dies mid-generation behind a proxy, or a buggy server, may close its stream cleanly with
``data: [DONE]`` although no choice ever carried a ``finish_reason``: the answer is truncated. The gateway ends
such a stream as it ends any stream cut after its first byte (an SSE error event, which the OpenAI SDK raises;
no ``[DONE]``), records the row with the cut streams' ``error_type``, charges what was delivered, keeps the
answer out of the response cache and counts the failure against the backend (its breaker and health).
Streams whose ``finish_reason`` comes on the last content chunk, or before a usage chunk, still succeed; with
``n`` > 1 every choice must finish.

A small upstream on loopback sends the scripted streams; the client is the real ``openai`` SDK.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from backends import BreakerState
from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile, assert_openai_error, sse_events
from tests.helpers.servers import RunningGateway, serve_gateway
from tests.helpers.upstream import Seen, Upstream, sse_response

IN_PRICE = Decimal("0.000001")
OUT_PRICE = Decimal("0.000002")
USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def _chat(*choices: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u"}
    chunk["choices"] = list(choices)
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _delta(index: int = 0, finish: str | None = None, **delta: str) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _text(text: str, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    chunk = {"id": "t1", "object": "text_completion", "created": 1, "model": "u"}
    return {**chunk, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


ROLE = _chat(_delta(role="assistant", content=""))
HELLO = [ROLE, _chat(_delta(content="Hel")), _chat(_delta(content="lo"))]

#: prompt -> the upstream's stream (each ends with ``[DONE]``, closed cleanly)
TRUNCATED: dict[str, list[dict[str, Any]]] = {
    "no finish_reason": HELLO,
    "no finish_reason, usage reported": [*HELLO, _chat(usage=USAGE)],
    "n=2, one choice unfinished": [
        _chat(_delta(0, role="assistant", content=""), _delta(1, role="assistant", content="")),
        _chat(_delta(0, content="Hel"), _delta(1, content="Hel")),
        _chat(_delta(0, "stop", content="lo")),
        _chat(_delta(1, content="lo")),
    ],
}
COMPLETE: dict[str, list[dict[str, Any]]] = {
    "finish_reason on the last content chunk": [
        ROLE,
        _chat(_delta(content="Hel")),
        _chat(_delta(0, "stop", content="lo")),
    ],
    "usage after finish_reason": [*HELLO, _chat(_delta(0, "stop")), _chat(usage=USAGE)],
    "n=2, both finish": [
        _chat(_delta(0, role="assistant", content=""), _delta(1, role="assistant", content="")),
        _chat(_delta(0, content="Hello")),
        _chat(_delta(1, "length", content="Hel")),
        _chat(_delta(0, "stop")),
    ],
}
COMPLETIONS: dict[str, list[dict[str, Any]]] = {
    "text, no finish_reason": [_text("Hel"), _text("lo")],
    "text, finished": [_text("Hel"), _text("lo", finish="stop")],
}


def _stream(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _script(seen: Seen) -> web.StreamResponse:
    if seen.method != "POST":  # health probes
        return web.Response(text="{}")
    body = seen.json()
    if "prompt" in body:
        return sse_response(_stream(COMPLETIONS[body["prompt"]]))
    prompt = body["messages"][-1]["content"]
    return sse_response(_stream({**TRUNCATED, **COMPLETE}[prompt]))


@dataclass(slots=True)
class Env:
    gw: RunningGateway
    upstream: Upstream
    ledger: LedgerFile

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=20)

    def calls(self, prompt: str) -> int:
        """Requests the upstream got for ``prompt``."""
        return sum(1 for s in self.upstream.requests if s.method == "POST" and prompt in s.body.decode())


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ledger = LedgerFile(tmp_path / "ledger.db")
    async with Upstream(_script) as upstream:
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "m",
                        "backend": "openai",
                        "base_url": upstream.url + "/v1",
                        "upstream_model": "u",
                        "input_cost_per_token": str(IN_PRICE),
                        "output_cost_per_token": str(OUT_PRICE),
                    }
                ],
                "retry": {"max_attempts": 1},
                "breaker": {"failure_threshold": 1},  # one failed stream opens it
                "cache": {"enabled": True},  # in process
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with master_key(None), serve_gateway(settings) as gw:
            yield Env(gw, upstream, ledger)


async def _chat_stream(env: Env, prompt: str, rid: str) -> tuple[str, openai.APIError | None]:
    """The text the SDK received, and the error it raised (None when the stream completed)."""
    received: list[str] = []
    async with env.client() as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            stream=True,
            extra_headers={"x-request-id": rid},
        )
        try:
            async for chunk in stream:
                received += [c.delta.content or "" for c in chunk.choices if c.index == 0]
        except openai.APIError as err:
            return "".join(received), err
    return "".join(received), None


def _cost(row: dict[str, Any]) -> Decimal:
    return Decimal(row["cost_usd"]).scaleb(-12)  # SQLite keeps 1e-12 USD units


@pytest.mark.parametrize("prompt", list(TRUNCATED))
async def test_a_stream_done_before_its_answer_finished_is_a_cut_stream(env: Env, prompt: str) -> None:
    rid = f"trunc-{uuid.uuid4().hex[:12]}"
    text, err = await _chat_stream(env, prompt, rid)
    assert text == "Hello"  # what the upstream sent was relayed
    assert err is not None, "a truncated answer must not end like a complete one"
    assert "finish_reason" in err.message
    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 200 and row["error_type"] == "UpstreamUnavailable"  # as any stream cut midway
    # charged what was delivered: the reported usage, else the relayed text counted
    if "usage reported" in prompt:
        assert (row["completion_tokens"], row["tokens_estimated"]) == (USAGE["completion_tokens"], 0)
    else:
        assert row["tokens_estimated"] and 1 <= row["completion_tokens"] <= (4 if "n=2" in prompt else 2)
    assert _cost(row) == IN_PRICE * row["prompt_tokens"] + OUT_PRICE * row["completion_tokens"]
    # counted against the backend: its health's last error and its breaker (threshold 1)
    gateway = env.gw.gateway
    assert "finish_reason" in (gateway.backends["m"].stats.last_error or "")
    assert gateway.breakers["m"].state is BreakerState.OPEN
    # and not cached: the same request goes upstream again (and fails the same way)
    await env.gw.wait_writes()
    _, err = await _chat_stream(env, prompt, rid + "-again")
    assert err is not None and env.calls(prompt) == 2


@pytest.mark.parametrize("prompt", list(COMPLETE))
async def test_a_finished_stream_is_a_success(env: Env, prompt: str) -> None:
    rid = f"done-{uuid.uuid4().hex[:12]}"
    text, err = await _chat_stream(env, prompt, rid)
    assert err is None and text == "Hello"
    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 200 and row["error_type"] is None
    assert env.gw.gateway.breakers["m"].state is BreakerState.CLOSED
    await env.gw.wait_writes()
    text, err = await _chat_stream(env, prompt, rid + "-again")  # served from the cache
    assert err is None and text == "Hello" and env.calls(prompt) == 1


async def test_the_client_gets_the_cut_stream_error_event(env: Env) -> None:
    """The same end as a stream cut midway: an OpenAI error event last, no ``[DONE]``."""
    body = {"model": "m", "messages": [{"role": "user", "content": "no finish_reason"}], "stream": True}
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(env.gw.base_url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    err = assert_openai_error(events[-1])
    assert err["code"] == "upstream_unavailable" and err["type"] == "upstream_error", err
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["", "Hel", "lo"]


@pytest.mark.parametrize(("prompt", "complete"), [("text, no finish_reason", False), ("text, finished", True)])
async def test_completions_streams_too(env: Env, prompt: str, complete: bool) -> None:
    received: list[str] = []
    async with env.client() as client:
        stream = await client.completions.create(model="m", prompt=prompt, stream=True)
        if complete:
            received = [c.choices[0].text async for c in stream]
        else:
            with pytest.raises(openai.APIError, match="finish_reason"):
                async for chunk in stream:
                    received.append(chunk.choices[0].text)
    assert "".join(received) == "Hello"
