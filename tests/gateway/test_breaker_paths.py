"""The circuit breaker on the request path: its half-open probe is never lost, and a model named explicitly whose
breaker is open does not hold its requests up when a fallback is up."""

from __future__ import annotations

import asyncio
import copy

from aiohttp import web

from gateway.config import settings_from_dict
from tests.helpers.upstream import Seen

from .conftest import THREE_MODELS, chat_reply, gateway_client, make_settings, sse

USER = [{"role": "user", "content": "Say hello."}]
PAIR = {
    "breaker": {"failure_threshold": 2, "reset_seconds": 0.3},
    "routes": {"pair": {"models": ["small", "big"], "policy": "cost"}},
}
TOO_LONG = {"message": "This model's maximum context length is 4096 tokens", "code": "context_length_exceeded"}


async def _open_then_half_open(client: object, mode: dict[str, str]) -> None:
    mode["small"] = "500"
    for _ in range(2):
        await client.post("/v1/chat/completions", json={"model": "pair", "messages": USER})  # type: ignore[attr-defined]
    await asyncio.sleep(0.35)


async def test_a_probe_ending_without_a_verdict_frees_the_half_open_breaker() -> None:
    """The probe of a half-open breaker answered with the client's error (a 400), or abandoned by its client: the
    next request probes again. Before, the breaker stayed half-open with its probe taken, and the backend got no
    request until the process restarted."""
    mode = {"small": "ok"}
    calls: list[str] = []

    async def handler(request: Seen) -> web.Response:
        if request.method == "GET":  # the health probes
            return web.json_response({"data": []})
        calls.append(request.backend)
        if request.backend == "small" and mode["small"] == "500":
            return web.json_response({"error": {"message": "x"}}, status=500)
        if request.backend == "small" and mode["small"] == "400":
            return web.json_response({"error": {"type": "invalid_request_error", **TOO_LONG}}, status=400)
        if request.backend == "small" and mode["small"] == "slow":
            await asyncio.sleep(1.0)
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(make_settings(PAIR), handler) as client:
        breaker = client.gateway.pipeline.breakers["small"]  # type: ignore[attr-defined]
        post = client.post
        for ending in ("400", "slow"):
            await _open_then_half_open(client, mode)
            assert breaker.available()
            mode["small"] = ending
            probe = asyncio.ensure_future(post("/v1/chat/completions", json={"model": "pair", "messages": USER}))
            if ending == "slow":  # the probing client hangs up
                await asyncio.sleep(0.2)
                probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            mode["small"] = "ok"
            assert breaker.available(), ending
            calls.clear()
            r = await post("/v1/chat/completions", json={"model": "pair", "messages": USER})
            assert r.headers["x-gateway-model"] == "small" and calls == ["small"], ending
            assert breaker.state == "closed"


async def test_a_fallback_whose_breaker_opened_since_routing_is_not_called() -> None:
    """The route ranked ``big`` when its breaker was closed; by the time ``small`` failed, ``big``'s had opened (other
    requests failed there): the request does not call it anyway (nor take the probe another request holds)."""
    calls: list[str] = []
    gateway: list[object] = []

    async def handler(request: Seen) -> web.Response:
        if request.method == "GET":  # the health probes
            return web.json_response({"data": []})
        calls.append(request.backend)
        if request.backend == "small":
            big = gateway[0].pipeline.breakers["big"]  # type: ignore[attr-defined]
            big.record_failure()
            big.record_failure()  # the threshold: open
            return web.json_response({"error": {"message": "x"}}, status=500)
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(make_settings(PAIR), handler) as client:
        gateway.append(client.gateway)  # type: ignore[attr-defined]
        r = await client.post("/v1/chat/completions", json={"model": "pair", "messages": USER})
    assert r.status_code == 502 and calls == ["small"]


async def test_a_model_named_explicitly_waits_behind_its_fallbacks_while_down() -> None:
    """``model: big`` with ``fallbacks: [medium]``: once big's breaker opened, its requests go to medium first
    instead of waiting out big's first-byte timeout every time."""
    data = copy.deepcopy(THREE_MODELS)
    data["models"][2] |= {"fallbacks": ["medium"], "timeouts": {"first_byte": 0.3}}
    data["breaker"] = {"failure_threshold": 2, "reset_seconds": 60}
    calls: list[str] = []

    async def handler(request: Seen) -> web.Response:
        if request.method == "GET":  # the health probes
            return web.json_response({"data": []})
        calls.append(request.backend)
        if request.backend == "big":
            await asyncio.sleep(5)  # hung
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(settings_from_dict(data), handler) as client:
        for _ in range(5):
            r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER})
            assert r.status_code == 200 and r.headers["x-gateway-model"] == "medium"
        reason = r.headers["x-gateway-reason"]
    assert calls == ["big", "medium", "big", "medium", "medium", "medium", "medium"]
    assert "'big' is down" in reason


async def test_a_pool_full_of_the_gateway_s_own_requests_is_no_upstream_failure() -> None:
    """``server.upstream_max_connections`` connections busy with healthy streams: the health probe gives no verdict
    (it would only wait for a connection) and a further request waits for one, past the connect timeout, instead
    of failing as "timed out connecting" against the backend's breaker (and making /ready a 503)."""

    def chunk(text: str) -> dict[str, object]:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}

    async def handler(request: Seen) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"data": []})
        if not request.json().get("stream"):
            return web.json_response(chat_reply(request.backend))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request.request)
        for _ in range(8):
            await response.write(sse(chunk("x")))
            await asyncio.sleep(0.1)
        await response.write(b"data: [DONE]\n\n")
        return response

    data = copy.deepcopy(THREE_MODELS)
    data["models"][2]["timeouts"] = {"connect": 0.3}
    data["server"] = {"metrics_scrape_seconds": 3600, "upstream_max_connections": 2}
    data["breaker"] = {"failure_threshold": 2, "reset_seconds": 60}
    async with gateway_client(settings_from_dict(data), handler) as client:
        gw = client.gateway  # type: ignore[attr-defined]

        async def stream() -> None:
            body = {"model": "big", "messages": USER, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    pass

        streams = [asyncio.ensure_future(stream()) for _ in range(2)]
        await asyncio.sleep(0.3)
        await gw.readiness.check_once()
        assert gw.backends["big"].stats.healthy
        assert (await client.get("/ready")).status_code == 200
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER})
        assert r.status_code == 200, r.text
        await asyncio.gather(*streams)
    assert gw.breakers["big"].state == "closed"
