"""The OpenAI-compatible backend against a loopback upstream: pass-through, errors, streaming, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backends.openai import OpenAICompatBackend
from backends.sse import SSEDecoder
from backends.vllm import VLLMBackend, metrics_url, parse_vllm_metrics
from gateway.config import ModelSpec
from gateway.errors import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable, is_retryable
from tests.helpers.upstream import Seen, Upstream, refused_url, sse_response, start_sse


def spec(base_url: str, **kw: object) -> ModelSpec:
    base = {"name": "m", "backend": "openai", "base_url": base_url + "/v1", "upstream_model": "up-model"}
    return ModelSpec.model_validate({**base, **kw})


async def test_complete_sends_body_unchanged_with_key(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UP_KEY", "sk-test")
    body = {"model": "up-model", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "vendor_x": {"a": 1}}
    async with Upstream(lambda r: web.json_response({"id": "x", "choices": [], "usage": {}})) as up:
        backend = OpenAICompatBackend(spec(up.url, api_key_env="UP_KEY", extra_headers={"x-org": "o1"}), session)
        response = await backend.complete("/chat/completions", body)
    [seen] = up.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["Authorization"] == "Bearer sk-test"
    assert seen.headers["X-Org"] == "o1" and seen.headers["Content-Type"] == "application/json"
    assert "Cookie" not in seen.headers
    assert seen.json() == body
    assert response.body["id"] == "x" and response.replica == up.url + "/v1"


async def test_cookies_from_an_upstream_are_not_sent_back(session: aiohttp.ClientSession) -> None:
    """One caller's upstream cookie must not travel with the next caller's request."""

    def handler(request: Seen) -> web.Response:
        response = web.json_response({"choices": []})
        response.set_cookie("session", "caller-1")
        return response

    async with Upstream(handler) as up:
        backend = OpenAICompatBackend(spec(up.url), session)
        await backend.complete("/chat/completions", {})
        await backend.complete("/chat/completions", {})
    assert all("Cookie" not in r.headers for r in up.requests)


@pytest.mark.parametrize(
    ("status", "payload", "retryable"),
    [
        (
            400,
            {"error": {"message": "bad max_tokens", "type": "BadRequestError", "param": "max_tokens", "code": 400}},
            False,
        ),
        (422, {"error": {"message": "bad messages", "type": "BadRequestError"}}, False),
        (429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, True),
        (503, {"detail": "overloaded"}, True),
    ],
)
async def test_upstream_http_errors_pass_through(
    session: aiohttp.ClientSession, status: int, payload: dict[str, Any], retryable: bool
) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(
            payload, status=status, headers={"Retry-After": "3", "Retry-After-Ms": "2500", "X-Should-Retry": "false"}
        )

    async with Upstream(handler) as up:
        backend = OpenAICompatBackend(spec(up.url), session)
        with pytest.raises(UpstreamRejected) as info:
            await backend.complete("/chat/completions", {"model": "x"})
    err = info.value
    assert err.status == status
    assert is_retryable(err) is retryable
    # the SDKs' retry advice goes on to the client with the error
    assert err.headers == {"retry-after": "3", "retry-after-ms": "2500", "x-should-retry": "false"}
    if "error" in payload:
        assert err.message == payload["error"]["message"]


async def test_the_key_is_cut_out_of_an_echoed_error(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UP_KEY", "sk-secret-123")

    def handler(request: Seen) -> web.Response:
        return web.json_response({"error": {"message": "Incorrect API key provided: sk-secret-123"}}, status=401)

    async with Upstream(handler) as up:
        with pytest.raises(UpstreamRejected) as info:
            await OpenAICompatBackend(spec(up.url, api_key_env="UP_KEY"), session).complete("/chat/completions", {})
    assert "sk-secret-123" not in info.value.message and "[redacted]" in info.value.message


async def test_refused_connection_is_unavailable(session: aiohttp.ClientSession) -> None:
    backend = OpenAICompatBackend(spec(refused_url()), session)
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await backend.complete("/chat/completions", {})
    with pytest.raises(UpstreamUnavailable):
        await backend.open_stream("/chat/completions", {})
    assert backend.stats.in_flight == 0


@pytest.mark.parametrize("body", [b"<html>oops", b"[1, 2]"])
async def test_invalid_json_bodies_are_unavailable(session: aiohttp.ClientSession, body: bytes) -> None:
    async with Upstream(lambda r: web.Response(body=body)) as up:
        with pytest.raises(UpstreamUnavailable, match="JSON"):
            await OpenAICompatBackend(spec(up.url), session).complete("/chat/completions", {})


@pytest.mark.parametrize("stream", [False, True])
async def test_a_silent_upstream_is_a_timeout_after_first_byte(session: aiohttp.ClientSession, stream: bool) -> None:
    async def silent(request: Seen) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async with Upstream(silent) as up:
        backend = OpenAICompatBackend(spec(up.url, timeouts={"first_byte": 0.2}), session)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            if stream:
                await backend.open_stream("/chat/completions", {"stream": True})
            else:
                await backend.complete("/chat/completions", {})
        assert asyncio.get_running_loop().time() - t0 < 2
    assert backend.stats.in_flight == 0


async def test_the_total_timeout_bounds_a_slow_but_steady_stream(session: aiohttp.ClientSession) -> None:
    async def steady(request: Seen) -> web.StreamResponse:
        response = await start_sse(request)
        for _ in range(100):
            await response.write(b'data: {"a": 1}\n\n')
            await asyncio.sleep(0.05)  # never silent for long: only the total timeout ends it
        return response

    async with Upstream(steady) as up:
        backend = OpenAICompatBackend(spec(up.url, timeouts={"total": 0.5, "between_chunks": 1}), session)
        stream = await backend.open_stream("/chat/completions", {"stream": True})
        events: list[bytes] = []
        with pytest.raises(UpstreamTimeout, match="total"):
            async for event in stream.events():
                events.append(event)
        await stream.aclose()
    assert 3 < len(events) < 20
    assert backend.stats.in_flight == 0


async def test_stream_yields_event_payloads(session: aiohttp.ClientSession) -> None:
    sse = b'data: {"a":1}\n\ndata: {"a":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    async with Upstream(lambda r: sse_response(sse)) as up:
        stream = await OpenAICompatBackend(spec(up.url), session).open_stream("/chat/completions", {"stream": True})
        events = [e async for e in stream.events()]
        await stream.aclose()
    assert events == [b'{"a":1}', b'{"a":2}', b"[DONE]"]


async def test_a_stalled_stream_times_out_between_chunks(session: aiohttp.ClientSession) -> None:
    async def stall(request: Seen) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(b'data: {"a": 1}\n\n')
        await asyncio.sleep(30)
        return response

    async with Upstream(stall) as up:
        backend = OpenAICompatBackend(spec(up.url, timeouts={"between_chunks": 0.3}), session)
        stream = await backend.open_stream("/chat/completions", {"stream": True})
        events = stream.events()
        assert await anext(events) == b'{"a": 1}'
        with pytest.raises(UpstreamTimeout, match="stalled"):
            await anext(events)
        await stream.aclose()
    assert backend.stats.in_flight == 0


async def test_stream_refused_raises_before_returning(session: aiohttp.ClientSession) -> None:
    async with Upstream(lambda r: web.json_response({"error": {"message": "boom"}}, status=500)) as up:
        with pytest.raises(UpstreamRejected, match="boom"):
            await OpenAICompatBackend(spec(up.url), session).open_stream("/chat/completions", {})


def test_sse_decoder_handles_split_chunks_and_multiline_data() -> None:
    d = SSEDecoder()
    assert d.feed(b'data: {"x"') == []
    assert d.feed(b":1}\n") == []
    assert d.feed(b"\nevent: e\ndata: a\ndata: b\n\n") == [b'{"x":1}', b"a\nb"]
    assert d.feed(b"data:\n\ndata: \n\n: comment\n\n") == []  # empty data dispatches no event
    assert d.feed(b"data: tail") == []
    assert d.flush() == [b"tail"]


def test_sse_decoder_takes_every_line_ending_the_spec_allows() -> None:
    """LF, CRLF and CR alone end a line, fed whole or a byte at a time (a CR at the end of a read may be the
    first half of a CRLF)."""
    for raw in (
        b'data: {"a":1}\n\ndata: b\n\n',
        b'data: {"a":1}\r\n\r\ndata: b\r\n\r\n',
        b'data: {"a":1}\r\rdata: b\r\r',
    ):
        whole = SSEDecoder()
        assert whole.feed(raw) + whole.flush() == [b'{"a":1}', b"b"], raw
        bytewise = SSEDecoder()
        events = [e for i in range(len(raw)) for e in bytewise.feed(raw[i : i + 1])]
        assert events + bytewise.flush() == [b'{"a":1}', b"b"], raw


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


async def test_vllm_scrape_updates_queue_state_and_health(session: aiohttp.ClientSession) -> None:
    async with Upstream(lambda r: web.Response(text=VLLM_METRICS)) as up:
        backend = VLLMBackend(spec(up.url, backend="vllm", upstream_model="tiny"), session)
        await backend.scrape_once()
        assert [(r.method, r.path) for r in up.requests] == [("GET", "/metrics")]
        assert backend.stats.queue.running == 2 and backend.stats.queue.waiting == 5
        assert backend.stats.healthy
    await backend.scrape_once()  # the server is gone
    assert not backend.stats.healthy
    assert backend.stats.last_error


async def test_health_probe_reads_models_and_marks_replicas(session: aiohttp.ClientSession) -> None:
    async with Upstream(lambda r: web.json_response({"data": []})) as up:
        backend = OpenAICompatBackend(spec(up.url, replicas=[refused_url() + "/v1"]), session)
        assert await backend.check_health()
        assert [r.path for r in up.requests] == ["/v1/models"]
    assert [r.stats.healthy for r in backend.replicas] == [True, False]


@pytest.mark.parametrize(("status", "healthy"), [(401, False), (403, False), (404, True), (200, True)])
async def test_a_refused_key_is_unhealthy(session: aiohttp.ClientSession, status: int, healthy: bool) -> None:
    """A provider refusing the gateway's key fails every request: not ready. A server without ``/models`` (404)
    may still serve completions."""
    async with Upstream(lambda r: web.json_response({"data": []}, status=status)) as up:
        assert await OpenAICompatBackend(spec(up.url), session).check_health() is healthy
