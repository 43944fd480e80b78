"""A chat upstream that answers by script (the last user message names the script), and a gateway with virtual keys
in front of it: for the front doors' tests of what a simulator cannot send (parallel tool-call deltas interleaved,
an upstream's 503 or 529, a stream that ignores ``max_tokens``, the prompt tokens it wrote to its cache, a reasoning
model's ``reasoning_content``); like OpenAI it reports log probabilities and its service tier when asked. The upstream
records every chat body it got."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.frontdoors.conftest import MASTER
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chat completion chunk of choice 0 (``delta`` None: a chunk without choices, e.g. usage)."""
    out: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u", **extra}
    out["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return out


def call(index: int, arguments: str = "", call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A tool-call delta: ``call_id`` and ``name`` on its first piece, then ``arguments`` fragments."""
    out: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        out["id"], out["type"] = call_id, "function"
        out["function"]["name"] = name
    return out


def calls(*pieces: dict[str, Any]) -> dict[str, Any]:
    """A chunk carrying tool-call deltas."""
    return chunk({"tool_calls": list(pieces)})


ROLE = chunk({"role": "assistant", "content": None})
END_CALLS = [chunk({}, "tool_calls"), chunk(usage=USAGE)]

#: The interleaving the chat streaming format allows: both calls' ids and names, then their arguments by turns.
INTERLEAVED = [
    ROLE,
    calls(call(0, "", "call_paris", "get_weather")),
    calls(call(1, "", "call_rome", "get_time")),
    calls(call(0, '{"city":')),
    calls(call(1, '{"zone": "Europe/')),
    calls(call(0, ' "Paris"}')),
    calls(call(1, 'Rome"}')),
    *END_CALLS,
]
#: Interleaved within one chunk too, with a third call whose arguments arrive whole, and text before the calls.
INTERLEAVED_IN_CHUNKS = [
    ROLE,
    chunk({"content": "Checking."}),
    calls(call(0, '{"city": "Pa', "call_a", "get_weather"), call(1, "", "call_b", "get_time")),
    calls(call(1, '{"zone": "UTC"'), call(0, 'ris"}')),
    calls(call(2, '{"city": "Oslo"}', "call_c", "get_weather")),
    calls(call(1, "}")),
    *END_CALLS,
]
#: What most upstreams send: one call after the other, each in fragments.
SEQUENTIAL = [
    ROLE,
    calls(call(0, "", "call_1", "get_weather")),
    calls(call(0, '{"city":')),
    calls(call(0, ' "Paris"}')),
    calls(call(1, "", "call_2", "get_weather")),
    calls(call(1, '{"city":')),
    calls(call(1, ' "Rome"}')),
    *END_CALLS,
]
HELLO = [ROLE, chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE)]
#: A reasoning model behind vLLM's reasoning parser: its reasoning (``reasoning_content``), then its answer.
REASONING = "Let me see."
#: A prompt holding it gets reasoning and no answer (``content`` null).
SILENT = "say nothing"
THINK = [ROLE, chunk({"reasoning_content": "Let me "}), chunk({"reasoning_content": "see."}), *HELLO[1:]]
#: Reasoning that arrives while a tool call's arguments are incomplete.
THINK_IN_CALL = [
    ROLE,
    calls(call(0, '{"city": ', "call_1", "get_weather")),
    chunk({"reasoning_content": "hmm"}),
    calls(call(0, '"Paris"}')),
    *END_CALLS,
]
STREAMS: dict[str, list[dict[str, Any]]] = {
    "think": THINK,
    "think in a call": THINK_IN_CALL,
    "interleaved": INTERLEAVED,
    "interleaved in chunks": INTERLEAVED_IN_CHUNKS,
    "sequential": SEQUENTIAL,
}
#: prompt -> the HTTP status the upstream answers with (its capacity: overloaded)
STATUSES = {"overloaded 503": 503, "overloaded 529": 529}
GREEDY_CHUNKS = 400  # the "greedy" script ignores max_tokens


@dataclass(slots=True)
class Scripted:
    """The gateway, its ledger, and the chat bodies the upstream received."""

    gw: RunningGateway
    ledger: LedgerFile
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gw.base_url

    def key(self, **limits: Any) -> str:
        """A new virtual key with ``limits`` (``budget_usd``, ``rpm``, ...)."""
        r = httpx.post(
            f"{self.url}/admin/keys",
            json={"name": "k-" + uuid.uuid4().hex[:6], **limits},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        assert r.status_code == 201, r.text
        key: str = r.json()["key"]
        return key

    def openai_client(self, key: str | None = None) -> openai.AsyncOpenAI:
        """The openai SDK's client for the gateway, with ``key`` (a new virtual key when None), no retries."""
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key or self.key(), max_retries=0)

    def claude_client(self, key: str | None = None) -> anthropic.AsyncAnthropic:
        """The Anthropic SDK's client for the gateway, with ``key`` (a new virtual key when None), no retries."""
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key or self.key(), max_retries=0)

    def bodies_for(self, prompt: str) -> list[dict[str, Any]]:
        """The chat bodies the upstream got whose last message was ``prompt``."""
        return [b for b in self.bodies if b["messages"][-1].get("content") == prompt]


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _app(bodies: list[dict[str, Any]]) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        bodies.append(body)
        content = body["messages"][-1].get("content")
        prompt = content if isinstance(content, str) else None  # a list of parts (images) is no script
        if prompt in STATUSES:
            error = {"error": {"message": "Overloaded", "type": "overloaded_error", "code": None}}
            return JSONResponse(error, status_code=STATUSES[prompt])
        if prompt == "greedy" and body.get("stream"):
            return StreamingResponse(_greedy(), media_type="text/event-stream")
        usage: dict[str, Any] = USAGE
        if prompt == "greedy":  # an answer far longer than max_tokens
            usage = {"prompt_tokens": 12, "completion_tokens": GREEDY_CHUNKS, "total_tokens": 12 + GREEDY_CHUNKS}
        elif prompt == "cache write":  # an upstream that reports the prompt tokens it wrote to its cache
            usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 7}}
        if body.get("stream"):
            events = [
                _as_asked(body, {**e, "usage": usage} if "usage" in e else e) for e in STREAMS.get(prompt or "", HELLO)
            ]
            return Response(_sse(events), media_type="text/event-stream")
        message = {"role": "assistant", "content": "Hello"}
        if prompt == "think":
            message["reasoning_content"] = REASONING
        elif prompt is not None and SILENT in prompt:  # reasoning, and no answer
            message = {"role": "assistant", "content": None, "reasoning_content": REASONING}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [logprob(t, body.get("top_logprobs")) for t in ("Hel", "lo")]}
        completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "u", "choices": [choice]}
        return JSONResponse(_as_asked(body, {**completion, "usage": usage}))

    async def other(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/{path:path}", other, methods=["GET"])]
    )


def logprob(token: str, top: int | None) -> dict[str, Any]:
    """Chat's log probability of ``token`` (as OpenAI sends it), with ``top`` alternatives (the token first)."""
    alternatives = [(token, -0.25), ("x", -2.5), ("y", -3.5)][: top or 0]
    return {
        "token": token,
        "logprob": -0.25,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives],
    }


def _as_asked(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` (a completion or a chunk) with what OpenAI adds when asked: the ``service_tier`` that served it
    (``auto`` is served by ``default``), each text delta's ``logprobs``."""
    out = dict(answer)
    tier = body.get("service_tier")
    if tier is not None:
        out["service_tier"] = "default" if tier == "auto" else tier
    if body.get("logprobs") and out.get("object") == "chat.completion.chunk":
        choices = []
        for choice in out.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                choice = {**choice, "logprobs": {"content": [logprob(text, body.get("top_logprobs"))]}}
            choices.append(choice)
        out["choices"] = choices
    return out


async def _greedy() -> AsyncIterator[bytes]:
    for _ in range(GREEDY_CHUNKS):
        yield b"data: " + orjson.dumps(chunk({"content": "word "})) + b"\n\n"
    yield b"data: " + orjson.dumps(chunk({}, "stop")) + b"\n\ndata: [DONE]\n\n"


@contextmanager
def scripted_gateway(tmp: Path, also: tuple[str, ...] = ()) -> Iterator[Scripted]:
    """The scripted upstream as model ``m`` (priced, so budgets bite) and as ``o`` (for the overload scripts, so
    their failures open no breaker of ``m``), and as each model named in ``also``, behind a gateway with virtual keys
    (the master key :data:`MASTER`)."""
    bodies: list[dict[str, Any]] = []
    ledger = LedgerFile(tmp / "ledger.db")
    with master_key(MASTER), run_asgi_server(_app(bodies)) as up:
        model = {
            "backend": "openai",
            "base_url": up + "/v1",
            "upstream_model": "u",
            "input_cost_per_token": "0.00001",
            "output_cost_per_token": "0.00003",
            "supports_vision": True,  # images (a tool's included) go upstream as sent
        }
        settings = settings_from_dict(
            {
                "models": [{"name": name, **model} for name in ("m", "o", *also)],
                "retry": {"max_attempts": 1},
                "cache": {"enabled": False},
                "auth": {"enabled": True},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield Scripted(gw, ledger, bodies)
