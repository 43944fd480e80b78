"""The gateway in front of a REAL vLLM server (CPU build, tiny random Llama): pass-through, streaming,
the /metrics scrape and queue-aware routing read real values."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from backends.h1 import H1Client
from backends.vllm import VLLMBackend
from gateway.app import create_app
from gateway.config import ModelSpec, settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.helpers.servers import run_asgi_server
from tests.integration.vllm_server import VLLMServer

PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def sim_13b() -> Iterator[str]:
    with run_asgi_server(create_simulator_app(get_profile("llama-2-13b"), time_scale=1.0)) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(vllm_server_queued: VLLMServer, sim_13b: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vllm-gw")
    settings = settings_from_dict(
        {
            "models": [
                {
                    "name": "tiny",
                    "backend": "vllm",
                    "base_url": vllm_server_queued.base_url,
                    "upstream_model": vllm_server_queued.served_model_name,
                    "context_window": 1024,
                    "gpu_hour_usd": 1.0,
                    "tokens_per_second": 500,
                },
                {
                    "name": "sim-13b",
                    "backend": "vllm",
                    "base_url": sim_13b + "/v1",
                    "upstream_model": "meta-llama/Llama-2-13b-chat-hf",
                    "gpu_hour_usd": 1.8,
                },
            ],
            "routes": {"fast": {"models": ["tiny", "sim-13b"], "policy": "latency"}},
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


def flood(http: httpx.AsyncClient, server: VLLMServer, clients: int = 8) -> list[asyncio.Task[None]]:
    """Clients sending long generations to vLLM DIRECTLY (not through the gateway), back to back until
    stopped: 8 of them against its 2 sequence slots keep ~6 requests waiting however fast it generates."""
    payload = {**body(model=server.served_model_name), "max_tokens": 600}

    async def client() -> None:
        while True:
            try:
                r = await http.post(server.base_url + "/chat/completions", json=payload)
            except httpx.TransportError:
                # vLLM's server may close a kept-alive connection as a request goes out (seen on a loaded
                # machine); the flood only has to keep vLLM busy, so send again on a new connection.
                continue
            assert r.status_code == 200, r.text

    return [asyncio.create_task(client()) for _ in range(clients)]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the flood (vLLM aborts requests whose client left) so the next test finds an idle server."""
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if not isinstance(r, asyncio.CancelledError)]
    assert not errors, errors


async def test_metrics_scrape_reads_real_queue(vllm_server_queued: VLLMServer) -> None:
    spec = ModelSpec(
        name="tiny",
        backend="vllm",
        base_url=vllm_server_queued.base_url,
        upstream_model=vllm_server_queued.served_model_name,
    )
    scraper = H1Client()  # the gateway's own upstream client, as in production
    async with httpx.AsyncClient(timeout=300) as http:
        backend = VLLMBackend(spec, scraper)
        await backend.scrape_once()
        assert backend.stats.healthy and backend.stats.queue.scraped_at > 0
        assert backend.stats.queue.running == 0 and backend.stats.queue.waiting == 0
        tasks = flood(http, vllm_server_queued)
        seen_waiting = seen_running = 0.0
        try:
            async with asyncio.timeout(120):  # a CPU-bound vLLM answers /metrics slowly: give it time
                while not (seen_waiting >= 1 and seen_running == 2):
                    await asyncio.sleep(0.1)
                    await backend.scrape_once()
                    seen_waiting = max(seen_waiting, backend.stats.queue.waiting)
                    seen_running = max(seen_running, backend.stats.queue.running)
        finally:
            await stop(tasks)
            await scraper.aclose()
    # real values from vLLM's /metrics: both of --max-num-seqs 2 slots busy and requests waiting behind them
    assert seen_running == 2 and seen_waiting >= 1, (seen_running, seen_waiting)
    assert backend.stats.healthy


async def test_queue_aware_routing_spills_on_the_scraped_queue_alone(
    gateway: str, vllm_server_queued: VLLMServer
) -> None:
    """The flood goes to vLLM directly, so the gateway's own in-flight count for it stays 0: only the
    /metrics scrape can tell it that vLLM is busy."""
    async with httpx.AsyncClient(timeout=300) as http:
        # warm up the latency estimates: the real vLLM (tiny model) is the faster backend when idle
        for _ in range(3):
            r = await http.post(gateway + "/v1/chat/completions", json=body(model="tiny"))
            assert r.status_code == 200
            r = await http.post(gateway + "/v1/chat/completions", json=body(model="sim-13b"))
            assert r.status_code == 200
        idle = await http.post(gateway + "/v1/chat/completions", json=body(model="fast"))
        assert idle.headers["x-gateway-model"] == "tiny"
        tasks = flood(http, vllm_server_queued)
        try:
            waiting = 0.0
            try:
                async with asyncio.timeout(120):
                    while waiting < 1:
                        await asyncio.sleep(0.05)
                        metrics = (await http.get(gateway + "/metrics")).text
                        waiting = _gauge(metrics, 'gateway_backend_queue_waiting{model="tiny"}')
            except TimeoutError:
                ready = (await http.get(gateway + "/ready")).text
                direct = (await http.get(vllm_server_queued.root_url + "/metrics")).text
                queue = [x for x in direct.splitlines() if x.startswith("vllm:num_requests_")]
                raise AssertionError(f"the gateway never saw vLLM's queue; /ready: {ready}; vLLM: {queue}") from None
            in_flight = _gauge(metrics, 'gateway_backend_in_flight{model="tiny"}')
            during = await asyncio.gather(
                *(http.post(gateway + "/v1/chat/completions", json=body(model="fast")) for _ in range(4))
            )
        finally:
            await stop(tasks)
    assert in_flight == 0  # the gateway itself sent vLLM nothing: the scrape alone saw the queue
    chosen = Counter(r.headers["x-gateway-model"] for r in during)
    assert chosen == {"sim-13b": 4}, chosen
    assert all(r.status_code == 200 for r in during)


def _gauge(metrics: str, prefix: str) -> float:
    return float(next(x for x in metrics.splitlines() if x.startswith(prefix)).split()[-1])
