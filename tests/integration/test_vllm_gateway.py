"""The gateway in front of a REAL vLLM server (CPU build, tiny random Llama): pass-through, streaming,
the /metrics scrape and queue-aware routing read real values."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from backends import CircuitBreaker, build_backend, build_session
from backends.vllm import VLLMBackend
from gateway.app import create_app
from gateway.config import ModelSpec, settings_from_dict
from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.routing import Router
from gateway.simulator import create_simulator_app, get_profile
from gateway.tokens import ApproxCounter
from tests.helpers.servers import run_asgi_server
from tests.integration.vllm_server import VLLMServer

PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def sim_13b() -> Iterator[str]:
    with run_asgi_server(create_simulator_app(get_profile("llama-2-13b"), time_scale=1.0)) as url:
        yield url


def two_backends(vllm: VLLMServer, sim_13b: str) -> dict[str, Any]:
    """The real vLLM ("tiny") and a simulated 13B, and the route "fast" between them by latency."""
    return {
        "models": [
            vllm.model_spec(),
            {
                "name": "sim-13b",
                "backend": "vllm",
                "base_url": sim_13b + "/v1",
                "upstream_model": "meta-llama/Llama-2-13b-chat-hf",
                "gpu_hour_usd": 1.8,
            },
        ],
        "routes": {"fast": {"models": ["tiny", "sim-13b"], "policy": "latency"}},
    }


@pytest.fixture(scope="module")
def gateway(vllm_server_queued: VLLMServer, sim_13b: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vllm-gw")
    settings = settings_from_dict(
        {
            **two_backends(vllm_server_queued, sim_13b),
            "cache": {"enabled": False},
            "server": {"metrics_scrape_seconds": 0.05},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
        }
    )
    with run_asgi_server(create_app(settings), startup_timeout=30) as url:
        yield url


def body(**extra: Any) -> dict[str, Any]:
    return {"messages": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **extra}


async def sse_events(response: httpx.Response) -> AsyncIterator[Any]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            yield payload if payload == "[DONE]" else json.loads(payload)


async def test_chat_returns_what_vllm_produced(gateway: str, vllm_server_queued: VLLMServer) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        direct = (
            await http.post(
                vllm_server_queued.base_url + "/chat/completions", json=body(model=vllm_server_queued.served_model_name)
            )
        ).json()
        via = await http.post(gateway + "/v1/chat/completions", json=body(model="tiny"))
    assert via.status_code == 200, via.text
    out = via.json()
    assert out["model"] == "tiny"
    assert out["usage"] == direct["usage"]
    assert out["usage"]["completion_tokens"] == 8  # ignore_eos (a vLLM extra) reached vLLM unchanged
    assert out["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]


async def test_streaming_returns_vllm_tokens_and_usage(gateway: str, vllm_server_queued: VLLMServer) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        direct = (
            await http.post(
                vllm_server_queued.base_url + "/chat/completions", json=body(model=vllm_server_queued.served_model_name)
            )
        ).json()
        async with http.stream(
            "POST",
            gateway + "/v1/chat/completions",
            json=body(model="tiny", stream=True, stream_options={"include_usage": True}),
        ) as r:
            events = [e async for e in sse_events(r)]
        async with http.stream("POST", gateway + "/v1/chat/completions", json=body(model="tiny", stream=True)) as r:
            no_usage = [e async for e in sse_events(r)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == direct["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["model"] == "tiny" for c in chunks)
    # the gateway asked vLLM for usage anyway, and dropped it for this client
    assert all("usage" not in c or c["usage"] is None for c in no_usage[:-1])
    assert all(c["choices"] for c in no_usage[:-1])


def flood(http: httpx.AsyncClient, server: VLLMServer, clients: int = 10) -> list[asyncio.Task[None]]:
    """Clients sending long generations to vLLM DIRECTLY (not through the gateway), back to back until
    stopped: 10 of them against its 2 sequence slots keep ~8 requests waiting however fast it generates.

    Long on purpose: on a loaded 2-core machine vLLM's API server stalls for seconds at a time (its /metrics
    then answers late) and admits nothing meanwhile, while the engine keeps finishing requests. Their lengths
    differ so that they do not finish in step."""

    async def client(max_tokens: int) -> None:
        payload = {**body(model=server.served_model_name), "max_tokens": max_tokens}
        while True:
            try:
                r = await http.post(server.base_url + "/chat/completions", json=payload)
            except httpx.TransportError:
                # vLLM's server may close a kept-alive connection as a request goes out (seen on a loaded
                # machine); the flood only has to keep vLLM busy, so send again on a new connection.
                continue
            assert r.status_code == 200, r.text

    return [asyncio.create_task(client(700 + 25 * i)) for i in range(clients)]  # prompt + 925 < max_model_len


async def stop(tasks: list[asyncio.Task[None]], server: VLLMServer) -> None:
    """Cancel the flood (vLLM aborts requests whose client left) and wait until vLLM is idle, so the next
    test finds an idle server."""
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if not isinstance(r, asyncio.CancelledError)]
    assert not errors, errors
    async with httpx.AsyncClient(timeout=60) as http, asyncio.timeout(120):
        while True:
            text = (await http.get(server.root_url + "/metrics")).text
            busy = [
                x
                for x in text.splitlines()
                if x.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting{"))
            ]
            if all(float(x.split()[-1]) == 0 for x in busy):
                return
            await asyncio.sleep(0.2)


async def test_metrics_scrape_reads_real_queue(vllm_server_queued: VLLMServer) -> None:
    spec = ModelSpec(
        name="tiny",
        backend="vllm",
        base_url=vllm_server_queued.base_url,
        upstream_model=vllm_server_queued.served_model_name,
    )
    scraper = build_session(max_connections=10, keepalive_seconds=30)  # the gateway's own, as in production
    async with httpx.AsyncClient(timeout=300) as http:
        backend = VLLMBackend(spec, scraper)
        await backend.scrape_once()
        assert backend.stats.healthy and backend.stats.queue.scraped_at > 0
        assert backend.stats.queue.running == 0 and backend.stats.queue.waiting == 0
        tasks = flood(http, vllm_server_queued)
        seen_waiting = seen_running = 0.0
        try:
            with contextlib.suppress(TimeoutError):  # the assertion below says what was seen
                async with asyncio.timeout(240):  # a CPU-bound vLLM answers /metrics slowly: give it time
                    while not (seen_waiting >= 1 and seen_running == 2):
                        await asyncio.sleep(0.1)
                        await backend.scrape_once()
                        seen_waiting = max(seen_waiting, backend.stats.queue.waiting)
                        seen_running = max(seen_running, backend.stats.queue.running)
        finally:
            await stop(tasks, vllm_server_queued)
            await scraper.close()
    # real values from vLLM's /metrics: both of --max-num-seqs 2 slots busy and requests waiting behind them
    assert seen_running == 2 and seen_waiting >= 1, (seen_running, seen_waiting, backend.stats.last_error)
    assert backend.stats.healthy


async def test_queue_aware_routing_spills_on_the_scraped_queue_alone(
    gateway: str, vllm_server_queued: VLLMServer, sim_13b: str
) -> None:
    """The gateway's router, over its vLLM backend and the same upstream HTTP session, reads the real queue
    from vLLM's /metrics and spills to the other backend while it is full.

    The flood goes to vLLM directly, so the gateway's own in-flight count for it stays 0: only the scrape can
    tell it that vLLM is busy. The test scrapes and then decides with nothing in between: on a loaded 2-core
    machine vLLM's queue comes and goes within a second (its API server stalls and admits the flood in
    bursts), and a decision must be judged against the scrape it read, not against a later one.
    """
    async with httpx.AsyncClient(timeout=300) as http:
        served = await http.get(gateway + "/metrics")  # the running gateway exports what it scraped
        assert 'gateway_backend_queue_waiting{model="tiny"}' in served.text
    settings = settings_from_dict(two_backends(vllm_server_queued, sim_13b))
    client = build_session(max_connections=10, keepalive_seconds=30)
    backends = {spec.name: build_backend(spec, client) for spec in settings.models}
    router = Router(settings, backends, {name: CircuitBreaker() for name in backends})
    feats = extract_features("chat", body(model="fast"), ApproxCounter())
    tiny, sim = backends["tiny"], backends["sim-13b"]
    assert isinstance(tiny, VLLMBackend) and isinstance(sim, VLLMBackend)
    try:
        await tiny.scrape_once()
        await sim.scrape_once()
        idle = router.plan("fast", feats, Constraints()).decision
        assert [c.name for c in idle.ranking] == ["tiny", "sim-13b"]  # equal estimates: the route's order
        async with httpx.AsyncClient(timeout=300) as http:
            tasks = flood(http, vllm_server_queued)
            try:
                async with asyncio.timeout(240):
                    while tiny.stats.queue.waiting < 1:
                        await asyncio.sleep(0.05)
                        await tiny.scrape_once()
                busy = router.plan("fast", feats, Constraints()).decision
            finally:
                await stop(tasks, vllm_server_queued)
    finally:
        await client.close()
    assert tiny.stats.in_flight == 0  # the gateway itself sent vLLM nothing: the scrape alone saw the queue
    assert [c.name for c in busy.ranking] == ["sim-13b", "tiny"], busy.reason
    queued = busy.ranking[1]
    assert queued.saturated and queued.load >= 1  # vLLM's waiting requests, as scraped
    assert queued.latency_s > idle.ranking[0].latency_s  # their wait is in tiny's predicted latency
