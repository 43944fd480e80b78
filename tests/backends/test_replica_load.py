"""Per-replica load accounting in the OpenAI-compatible backend: our in-flight count per replica goes up
when a request is sent and down when its response is read (streams: when the stream is closed), on every
path, errors included; ``pick_replica`` sends new work to the least-loaded replica."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from backends.openai import OpenAICompatBackend
from gateway.config import ModelSpec
from gateway.errors import UpstreamRejected, UpstreamUnavailable
from tests.helpers.upstream import Seen, Upstream, refused_url, start_sse

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
REPLY = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def spec(urls: list[str]) -> ModelSpec:
    return ModelSpec(name="m", backend="openai", base_url=urls[0], replicas=urls[1:])


def replica_urls(up: Upstream) -> list[str]:
    """Replicas a and b, served by one upstream under two path prefixes."""
    return [f"{up.url}/a/v1", f"{up.url}/b/v1"]


def loads(backend: OpenAICompatBackend) -> dict[str, int]:
    return {r.base_url.split("/")[-2]: r.stats.in_flight for r in backend.replicas}


class Gate:
    """A handler that holds every request until released, recording which replica got it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hosts: list[str] = []
        self.arrived = asyncio.Condition()

    async def wait_for(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.hosts) >= n)

    async def handler(self, request: Seen) -> web.StreamResponse:
        async with self.arrived:
            self.hosts.append(request.backend)
            self.arrived.notify_all()
        await self.release.wait()
        if request.json().get("stream"):
            response = await start_sse(request)
            for i in range(3):
                await response.write(f'data: {{"i": {i}}}\n\n'.encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response(REPLY)


@pytest.fixture
async def gate() -> AsyncIterator[tuple[Gate, Upstream]]:
    g = Gate()
    async with Upstream(g.handler) as up:
        yield g, up


async def test_concurrent_requests_spread_over_replicas_and_are_released(
    session: aiohttp.ClientSession, gate: tuple[Gate, Upstream]
) -> None:
    g, up = gate
    backend = OpenAICompatBackend(spec(replica_urls(up)), session)
    tasks = [asyncio.create_task(backend.complete("/chat/completions", BODY)) for _ in range(6)]
    await asyncio.wait_for(g.wait_for(6), 5)
    assert loads(backend) == {"a": 3, "b": 3}
    assert backend.stats.in_flight == 6  # the backend's count is the sum over its replicas
    assert Counter(g.hosts) == {"a": 3, "b": 3}
    g.release.set()
    responses = await asyncio.gather(*tasks)
    assert {r.replica for r in responses} == set(replica_urls(up))
    assert loads(backend) == {"a": 0, "b": 0}
    assert backend.stats.in_flight == 0


async def test_a_busy_replica_gets_no_new_work_until_it_finishes(
    session: aiohttp.ClientSession, gate: tuple[Gate, Upstream]
) -> None:
    g, up = gate
    backend = OpenAICompatBackend(spec(replica_urls(up)), session)
    slow = asyncio.create_task(backend.complete("/chat/completions", BODY))
    await asyncio.wait_for(g.wait_for(1), 5)
    busy = backend.replicas[0] if g.hosts[0] == "a" else backend.replicas[1]
    idle = backend.replicas[1] if busy is backend.replicas[0] else backend.replicas[0]
    assert (busy.stats.in_flight, idle.stats.in_flight) == (1, 0)
    assert backend.pick_replica() is idle
    g.release.set()
    await slow
    assert busy.stats.in_flight == 0
    # with equal load, the replica that was sent fewer requests goes next: idle ones take turns
    assert backend.pick_replica() is idle


async def test_streams_hold_their_replica_until_closed(
    session: aiohttp.ClientSession, gate: tuple[Gate, Upstream]
) -> None:
    g, up = gate
    g.release.set()
    backend = OpenAICompatBackend(spec(replica_urls(up)), session)
    first = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
    second = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
    assert {first.replica, second.replica} == set(replica_urls(up))
    assert loads(backend) == {"a": 1, "b": 1}
    events = [e async for e in first.events()]
    assert events[-1] == b"[DONE]"
    name = first.replica.split("/")[-2]
    assert loads(backend)[name] == 1  # read to the end but not yet closed
    await first.aclose()
    await first.aclose()  # idempotent: released once
    assert loads(backend)[name] == 0 and backend.stats.in_flight == 1
    third = await backend.open_stream("/chat/completions", {**BODY, "stream": True})
    assert third.replica == first.replica
    await second.aclose()
    await third.aclose()
    assert loads(backend) == {"a": 0, "b": 0}
    assert backend.stats.in_flight == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("failure", ["http-503", "http-400", "connect"])
async def test_failed_requests_release_their_replica(
    session: aiohttp.ClientSession, stream: bool, failure: str
) -> None:
    def handler(request: Seen) -> web.Response:
        status = int(failure.split("-")[1])
        return web.json_response({"error": {"message": "no", "type": "x"}}, status=status)

    async with Upstream(handler) as up:
        urls = [refused_url() + "/a/v1", refused_url() + "/b/v1"] if failure == "connect" else replica_urls(up)
        backend = OpenAICompatBackend(spec(urls), session)
        for _ in range(3):
            with pytest.raises((UpstreamRejected, UpstreamUnavailable)):
                if stream:
                    await backend.open_stream("/chat/completions", {**BODY, "stream": True})
                else:
                    await backend.complete("/chat/completions", BODY)
    assert loads(backend) == {"a": 0, "b": 0}
    assert backend.stats.in_flight == 0
    assert sum(r.started for r in backend.replicas) == 3


async def test_cancelled_request_releases_its_replica(
    session: aiohttp.ClientSession, gate: tuple[Gate, Upstream]
) -> None:
    g, up = gate
    backend = OpenAICompatBackend(spec(replica_urls(up)), session)
    tasks = [
        asyncio.create_task(backend.complete("/chat/completions", BODY)),
        asyncio.create_task(backend.open_stream("/chat/completions", {**BODY, "stream": True})),
    ]
    await asyncio.wait_for(g.wait_for(2), 5)
    assert sum(loads(backend).values()) == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert loads(backend) == {"a": 0, "b": 0}
    assert backend.stats.in_flight == 0


async def test_scraped_queue_depth_and_health_steer_the_choice(session: aiohttp.ClientSession) -> None:
    async with Upstream(lambda r: web.json_response(REPLY)) as up:
        backend = OpenAICompatBackend(spec(replica_urls(up)), session)
        a, b = backend.replicas
        a.stats.queue.waiting = 4  # vLLM says replica a has a queue: our own count (0) is not the whole story
        assert [backend.pick_replica() for _ in range(2)] == [b, b]
        b.stats.in_flight = 5  # ours on b now exceed a's queue
        assert backend.pick_replica() is a
        b.stats.in_flight = 0
        b.stats.healthy = False
        assert backend.pick_replica() is a
        response = await backend.complete("/chat/completions", BODY)
    assert response.replica == replica_urls(up)[0]
    assert a.started == 1 and b.started == 0
