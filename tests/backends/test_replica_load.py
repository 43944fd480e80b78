"""Per-replica load accounting in the OpenAI-compatible backend: our in-flight count per replica goes up
when a request is sent and down when its response is read (streams: when the stream is closed), on every
path, errors included; ``pick_replica`` sends new work to the least-loaded replica."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from backends.openai import OpenAICompatBackend
from gateway.config import ModelSpec
from gateway.errors import UpstreamRejected, UpstreamUnavailable

URLS = ["http://a/v1", "http://b/v1"]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
REPLY = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def spec() -> ModelSpec:
    return ModelSpec(name="m", backend="openai", base_url=URLS[0], replicas=URLS[1:])


def loads(backend: OpenAICompatBackend) -> dict[str, int]:
    return {r.base_url: r.in_flight for r in backend.replicas}


class Gate:
    """A handler that holds every request until released, recording which replica got it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hosts: list[str] = []
        self.arrived = asyncio.Condition()

    async def wait_for(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.hosts) >= n)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        async with self.arrived:
            self.hosts.append(request.url.host)
            self.arrived.notify_all()
        await self.release.wait()
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=_sse(), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=REPLY)


async def _sse() -> AsyncIterator[bytes]:
    for i in range(3):
        yield f'data: {{"i": {i}}}\n\n'.encode()
    yield b"data: [DONE]\n\n"


async def test_concurrent_requests_spread_over_replicas_and_are_released() -> None:
    gate = Gate()
    async with httpx.AsyncClient(transport=httpx.MockTransport(gate.handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        tasks = [asyncio.create_task(backend.complete("/chat/completions", BODY)) for _ in range(6)]
        await asyncio.wait_for(gate.wait_for(6), 5)
        assert loads(backend) == {"http://a/v1": 3, "http://b/v1": 3}
        assert Counter(gate.hosts) == {"a": 3, "b": 3}
        gate.release.set()
        responses = await asyncio.gather(*tasks)
    assert {r.replica for r in responses} == set(URLS)
    assert loads(backend) == {"http://a/v1": 0, "http://b/v1": 0}


async def test_a_busy_replica_gets_no_new_work_until_it_finishes() -> None:
    gate = Gate()
    async with httpx.AsyncClient(transport=httpx.MockTransport(gate.handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        slow = asyncio.create_task(backend.complete("/chat/completions", BODY))
        await asyncio.wait_for(gate.wait_for(1), 5)
        busy = backend.replicas[0] if gate.hosts[0] == "a" else backend.replicas[1]
        idle = backend.replicas[1] if busy is backend.replicas[0] else backend.replicas[0]
        assert (busy.in_flight, idle.in_flight) == (1, 0)
        assert backend.pick_replica() is idle
        gate.release.set()
        await slow
    assert busy.in_flight == 0
    # with equal load, the replica that was sent fewer requests goes next: idle ones take turns
    assert backend.pick_replica() is idle


async def test_streams_hold_their_replica_until_closed() -> None:
    gate = Gate()
    gate.release.set()
    async with httpx.AsyncClient(transport=httpx.MockTransport(gate.handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        first = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
        second = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
        assert {first.replica, second.replica} == set(URLS)
        assert loads(backend) == {"http://a/v1": 1, "http://b/v1": 1}
        events = [e async for e in first.events()]
        assert events[-1] == b"[DONE]"
        assert loads(backend)[first.replica] == 1  # read to the end but not yet closed
        await first.aclose()
        await first.aclose()  # idempotent: released once
        assert loads(backend) == {first.replica: 0, second.replica: 1}
        third = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
        assert third.replica == first.replica
        await second.aclose()
        await third.aclose()
    assert loads(backend) == {"http://a/v1": 0, "http://b/v1": 0}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("failure", ["http-503", "http-400", "connect"])
async def test_failed_requests_release_their_replica(stream: bool, failure: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "connect":
            raise httpx.ConnectError("refused", request=request)
        status = int(failure.split("-")[1])
        return httpx.Response(status, json={"error": {"message": "no", "type": "x"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        for _ in range(3):
            with pytest.raises((UpstreamRejected, UpstreamUnavailable)):
                if stream:
                    await backend.open_stream("/chat/completions", {**BODY, "stream": True})
                else:
                    await backend.complete("/chat/completions", BODY)
    assert loads(backend) == {"http://a/v1": 0, "http://b/v1": 0}
    assert sum(r.started for r in backend.replicas) == 3


async def test_cancelled_request_releases_its_replica() -> None:
    gate = Gate()
    async with httpx.AsyncClient(transport=httpx.MockTransport(gate.handler)) as client:
        backend = OpenAICompatBackend(spec(), client)
        tasks = [
            asyncio.create_task(backend.complete("/chat/completions", BODY)),
            asyncio.create_task(backend.open_stream("/chat/completions", {**BODY, "stream": True})),
        ]
        await asyncio.wait_for(gate.wait_for(2), 5)
        assert sum(loads(backend).values()) == 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert loads(backend) == {"http://a/v1": 0, "http://b/v1": 0}


async def test_scraped_queue_depth_and_health_steer_the_choice() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=REPLY))) as client:
        backend = OpenAICompatBackend(spec(), client)
        a, b = backend.replicas
        a.stats.queue.waiting = 4  # vLLM says replica a has a queue: our own count (0) is not the whole story
        assert [backend.pick_replica() for _ in range(2)] == [b, b]
        b.in_flight = 5  # ours on b now exceed a's queue
        assert backend.pick_replica() is a
        b.in_flight = 0
        b.stats.healthy = False
        assert backend.pick_replica() is a
        response = await backend.complete("/chat/completions", BODY)
    assert response.replica == "http://a/v1"
    assert a.started == 1 and b.started == 0
