"""The OpenAI-compatible backend over httpx.MockTransport: pass-through, errors, streaming, metrics."""

from __future__ import annotations

import json

import httpx
import pytest

from backends.openai import OpenAICompatBackend
from backends.sse import SSEDecoder
from backends.vllm import VLLMBackend, metrics_url, parse_vllm_metrics
from gateway.config import ModelSpec
from gateway.errors import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable, is_retryable


def spec(**kw: object) -> ModelSpec:
    base = {"name": "m", "backend": "openai", "base_url": "http://up/v1", "upstream_model": "up-model"}
    return ModelSpec.model_validate({**base, **kw})


async def test_complete_sends_body_unchanged_with_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = str(request.url)
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json={"id": "x", "choices": [], "usage": {"prompt_tokens": 1}})

    monkeypatch.setenv("UP_KEY", "sk-test")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAICompatBackend(spec(api_key_env="UP_KEY"), client)
        body = {"model": "up-model", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "vendor_x": {"a": 1}}
        response = await backend.complete("/chat/completions", body)
    assert seen["url"] == "http://up/v1/chat/completions"
    assert seen["auth"] == "Bearer sk-test"
    assert seen["body"] == body
    assert response.body["id"] == "x"


@pytest.mark.parametrize(
    ("status", "payload", "retryable"),
    [
        (
            400,
            {"error": {"message": "bad max_tokens", "type": "BadRequestError", "param": "max_tokens", "code": 400}},
            False,
        ),
        (404, {"error": {"message": "no such model", "type": "NotFoundError"}}, False),
        (429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, True),
        (503, {"detail": "overloaded"}, True),
    ],
)
async def test_upstream_http_errors_pass_through(status: int, payload: dict[str, object], retryable: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=payload, headers={"retry-after": "3"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        with pytest.raises(UpstreamRejected) as info:
            await backend.complete("/chat/completions", {"model": "x"})
    err = info.value
    assert err.status == status
    assert is_retryable(err) is retryable
    assert err.headers == {"retry-after": "3"}
    if "error" in payload:
        assert err.message == payload["error"]["message"]  # type: ignore[index]


async def test_connection_errors_and_timeouts_are_translated() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out")

    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>oops")

    for handler, exc in ((refuse, UpstreamUnavailable), (slow, UpstreamTimeout), (garbage, UpstreamUnavailable)):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(exc):
                await OpenAICompatBackend(spec(), client).complete("/chat/completions", {})


async def test_stream_yields_event_payloads() -> None:
    sse = b'data: {"a":1}\n\ndata: {"a":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        stream = await OpenAICompatBackend(spec(), client).open_stream("/chat/completions", {"stream": True})
        events = [e async for e in stream.events()]
        await stream.aclose()
    assert events == [b'{"a":1}', b'{"a":2}', b"[DONE]"]


async def test_stream_refused_raises_before_returning() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamRejected, match="boom"):
            await OpenAICompatBackend(spec(), client).open_stream("/chat/completions", {})


def test_sse_decoder_handles_split_chunks_and_multiline_data() -> None:
    d = SSEDecoder()
    assert d.feed(b'data: {"x"') == []
    assert d.feed(b":1}\n") == []
    assert d.feed(b"\nevent: e\ndata: a\ndata: b\n\n") == [b'{"x":1}', b"a\nb"]
    assert d.feed(b"data: tail") == []
    assert d.flush() == [b"tail"]


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="0",model_name="other"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
"""


def test_parse_vllm_metrics_filters_by_served_model() -> None:
    assert parse_vllm_metrics(VLLM_METRICS, "tiny") == {"running": 2.0, "waiting": 5.0, "kv_cache_usage": 0.25}
    assert metrics_url("http://h:8000/v1") == "http://h:8000/metrics"


async def test_vllm_scrape_updates_queue_state_and_health() -> None:
    up = {"ok": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            raise httpx.ConnectError("down")
        assert request.url.path == "/metrics"
        return httpx.Response(200, text=VLLM_METRICS)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = VLLMBackend(spec(backend="vllm", upstream_model="tiny"), client)
        await backend.scrape_once()
        assert backend.stats.queue.running == 2 and backend.stats.queue.waiting == 5
        assert backend.stats.healthy
        up["ok"] = False
        await backend.scrape_once()
        assert not backend.stats.healthy


async def test_replicas_pick_the_least_loaded() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={}))) as client:
        backend = OpenAICompatBackend(spec(replicas=["http://up2/v1"]), client)
        backend.replicas[0].stats.queue.waiting = 4
        assert backend.pick_replica().base_url == "http://up2/v1"
