"""The litellm backend kind against a loopback upstream (litellm's ``openai/`` provider speaks to it over real
HTTP): provider errors scrubbed as the HTTP backend's are, one POST per call, ``Retry-After`` relayed, and the
model's timeouts bounding the call, streams included."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from backends.litellm import LiteLLMBackend
from gateway.config import ModelSpec
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from tests.helpers.upstream import Seen, Upstream, refused_url, start_sse

KEY = "sk-live-SECRET-abcdef0123456789"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def backend(
    base_url: str, monkeypatch: pytest.MonkeyPatch, upstream: str = "openai/up-model", **timeouts: float
) -> LiteLLMBackend:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("UP_KEY", KEY)
    spec = {
        "name": "m",
        "backend": "litellm",
        "upstream_model": upstream,
        "base_url": base_url + "/v1",
        "api_key_env": "UP_KEY",
        "timeouts": timeouts,
    }
    return LiteLLMBackend(ModelSpec.model_validate(spec))


async def call(b: LiteLLMBackend, stream: bool) -> None:
    """One complete call, or one stream opened and read to its end."""
    if not stream:
        await b.complete("/chat/completions", BODY)
        return
    s = await b.open_stream("/chat/completions", BODY)
    try:
        async for _ in s.events():
            pass
    finally:
        await s.aclose()


def chunk(text: str, finish: str = "null") -> bytes:
    return (
        b'data: {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model", '
        b'"choices": [{"index": 0, "delta": {"content": "%s"}, "finish_reason": %s}]}\n\n'
        % (text.encode(), finish.encode())
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, f"Invalid key Bearer {KEY} for https://internal-llm.corp.example:8443/v1"),
        (500, "http://10.1.2.3:9000/v1 see /srv/app/engine.py"),
        (400, f"bad max_tokens at internal-llm.corp.example:8443 with {KEY}"),
    ],
)
async def test_provider_errors_are_scrubbed_and_the_key_cut_out(
    monkeypatch: pytest.MonkeyPatch, stream: bool, status: int, message: str
) -> None:
    async with Upstream(lambda r: web.json_response({"error": {"message": message}}, status=status)) as up:
        with pytest.raises(UpstreamRejected) as info:
            await call(backend(up.url, monkeypatch), stream)
    err = info.value
    assert err.upstream_status == status
    shown = str(err.to_body())
    for leak in (KEY, "internal-llm", "8443", "10.1.2.3", "/srv/app", "litellm"):
        assert leak not in shown, (leak, shown)
    assert "[redacted]" in shown
    assert message.replace(KEY, "[redacted]") in err.detail  # the raw text is for the log, less the key


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_one_call_sends_one_post(monkeypatch: pytest.MonkeyPatch, stream: bool, status: int) -> None:
    """Neither litellm nor the SDK under it sends a POST again: the gateway's attempt loop decides."""
    payload = {"error": {"message": "no"}}
    async with Upstream(lambda r: web.json_response(payload, status=status, headers={"Retry-After": "0"})) as up:
        with pytest.raises(UpstreamRejected):
            await call(backend(up.url, monkeypatch), stream)
    assert [(r.method, r.path) for r in up.requests] == [("POST", "/v1/chat/completions")]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_429_relays_retry_after(monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    def handler(request: Seen) -> web.Response:
        body = {"error": {"message": "slow down", "type": "rate_limit_error"}}
        return web.json_response(body, status=429, headers={"Retry-After": "1"})

    async with Upstream(handler) as up:
        with pytest.raises(UpstreamRejected) as info:
            await call(backend(up.url, monkeypatch), stream)
    err = info.value
    assert err.status == 429 and err.is_retryable
    assert err.headers == {"retry-after": "1"}
    assert err.message == "slow down"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_total_timeout_bounds_a_slow_upstream(monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    async def slow(request: Seen) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({})

    async with Upstream(slow) as up:
        b = backend(up.url, monkeypatch, total=0.5)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await call(b, stream)
        assert asyncio.get_running_loop().time() - t0 < 1.0
    assert len(up.requests) == 1
    assert b.stats.in_flight == 0


async def test_the_total_timeout_bounds_a_slow_but_steady_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    async def steady(request: Seen) -> web.StreamResponse:
        response = await start_sse(request)
        for _ in range(60):
            await response.write(chunk("a"))
            await asyncio.sleep(0.05)  # never silent for long: only the total timeout ends it
        await response.write(chunk("b", finish='"stop"'))
        await response.write(b"data: [DONE]\n\n")
        return response

    async with Upstream(steady) as up:
        b = backend(up.url, monkeypatch, total=0.6, between_chunks=1)
        stream = await b.open_stream("/chat/completions", BODY)
        events: list[bytes] = []
        with pytest.raises(UpstreamTimeout, match="total"):
            async for event in stream.events():
                events.append(event)
        await stream.aclose()
    assert 2 < len(events) < 15
    assert b.stats.in_flight == 0


async def test_a_stalled_stream_times_out_between_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    async def stall(request: Seen) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(chunk("a"))
        await asyncio.sleep(5)
        return response

    async with Upstream(stall) as up:
        b = backend(up.url, monkeypatch, between_chunks=0.3)
        stream = await b.open_stream("/chat/completions", BODY)
        events = stream.events()
        assert b'"a"' in await anext(events)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout, match="stalled"):
            await anext(events)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        await stream.aclose()
    assert b.stats.in_flight == 0


async def test_a_stream_is_relayed_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ok(request: Seen) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(chunk("a"))
        await response.write(chunk("b", finish='"stop"'))
        await response.write(b"data: [DONE]\n\n")
        return response

    async with Upstream(ok) as up:
        b = backend(up.url, monkeypatch)
        stream = await b.open_stream("/chat/completions", BODY)
        events = [e async for e in stream.events()]
        await stream.aclose()
    assert events[-1] == b"[DONE]"
    assert b"".join(events).count(b'"content"') >= 2
    assert up.requests[0].json()["stream"] is True
    assert up.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_a_refused_connection_never_reached_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(refused_url(), monkeypatch)
    for stream in (False, True):
        with pytest.raises(UpstreamUnavailable) as info:
            await call(b, stream)
        err: UpstreamError = info.value
        assert err.reached is False and "127.0.0.1" not in err.message
    assert b.stats.in_flight == 0


def reply(request: Seen) -> web.Response:
    return web.json_response(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "up-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "real"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


async def test_a_client_s_body_cannot_steer_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm reads its destination, credentials and behaviour from the keyword arguments a chat body would fill:
    a client's ``base_url`` sent the provider's key to the client's host; ``mock_response`` skipped the provider."""
    async with Upstream(reply) as up, Upstream(reply) as evil:
        steering = {
            "base_url": evil.url + "/v1",
            "api_base": evil.url + "/v1",
            "extra_headers": {"x-injected": "1"},
            "mock_response": "pwned",
            "temperature": 0.5,
        }
        result = await backend(up.url, monkeypatch).complete("/chat/completions", {**BODY, **steering})
    assert evil.requests == []
    (sent,) = up.requests
    assert "x-injected" not in sent.headers
    assert sent.json()["temperature"] == 0.5  # the chat parameters still go
    assert result.body["choices"][0]["message"]["content"] == "real"


async def test_openai_s_newer_chat_parameters_reach_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Responses door forwards from the Agents SDK and other clients (``text.verbosity``,
    ``prompt_cache_key``, ``safety_identifier``, ``service_tier``) reaches an OpenAI model through litellm too."""
    newer = {"verbosity": "low", "prompt_cache_key": "k1", "safety_identifier": "u-9", "service_tier": "flex"}
    async with Upstream(reply) as up:
        await backend(up.url, monkeypatch, upstream="openai/gpt-5").complete("/chat/completions", {**BODY, **newer})
    (sent,) = up.requests
    assert {k: sent.json().get(k) for k in newer} == newer


@pytest.mark.parametrize(
    ("upstream", "kept"),
    [
        ("openai/gpt-4o", {"prompt_cache_key", "safety_identifier", "service_tier"}),  # no verbosity before gpt-5
        ("anthropic/claude-3-5-sonnet-20241022", {"service_tier"}),
        ("gemini/gemini-1.5-pro", {"service_tier"}),
    ],
)
def test_newer_parameters_a_provider_does_not_take_are_dropped(
    monkeypatch: pytest.MonkeyPatch, upstream: str, kept: set[str]
) -> None:
    """litellm refuses a request that carries a parameter the provider does not take (a 400 before any call), and
    clients send these by default for any model: only those litellm lists for the model go."""
    newer = {"verbosity": "low", "prompt_cache_key": "k1", "safety_identifier": "u-9", "service_tier": "auto"}
    kwargs = backend("http://127.0.0.1:9", monkeypatch, upstream=upstream)._kwargs({**BODY, **newer}, stream=False)
    assert set(newer) & set(kwargs) == kept
