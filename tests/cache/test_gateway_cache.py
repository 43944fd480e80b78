"""The cache inside the running gateway, over real sockets, read by the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from sqlalchemy import select

from gateway.accounting import open_database
from gateway.accounting.schema import ledger
from tests.cache.conftest import gateway_settings, running_gateway
from tests.cache.fake_upstream import UpstreamState
from tests.helpers.redis import RedisProcess
from tests.helpers.servers import RunningGateway

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def sdk(gw: RunningGateway) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key="sk-none", max_retries=0, timeout=20)


def ask(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": [{"role": "user", "content": question}], "temperature": 0, **extra}


async def streamed(client: AsyncOpenAI, **kwargs: Any) -> tuple[dict[str, str], list[Any]]:
    raw = await client.chat.completions.with_raw_response.create(stream=True, **kwargs)
    chunks = [c async for c in raw.parse()]
    return dict(raw.headers), chunks


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def stream_tool_calls(chunks: list[Any]) -> list[dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for choice in c.choices:
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]


async def test_exact_hit_is_free_and_labelled(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
            first = await http.post("/v1/chat/completions", json=ask("Hi?"))
            await gw.wait_writes()
            second = await http.post("/v1/chat/completions", json=ask("Hi?", stream=False, user="someone"))
            hot = await http.post("/v1/chat/completions", json=ask("Hi?", temperature=0.9))
    assert first.status_code == second.status_code == hot.status_code == 200
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["id"] != first.json()["id"]  # each answer has an id of its own, served from cache or not
    assert second.headers["x-gateway-cost-usd"] == "0" and first.headers["x-gateway-cost-usd"] != "0"
    assert second.headers["x-gateway-model"] == "m1"
    assert hot.headers["x-gateway-cache"] == "bypass"
    assert state.calls == 2  # the hit never reached the upstream


async def test_non_streamed_answer_replays_as_a_stream(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        plain = await client.chat.completions.create(**ask("Tell me a fact."))
        await gw.wait_writes()
        headers, chunks = await streamed(client, **ask("Tell me a fact."), stream_options={"include_usage": True})
        await client.close()
    assert headers["x-gateway-cache"] == "hit"
    assert stream_text(chunks) == plain.choices[0].message.content
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != plain.id
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert state.calls == 1


async def test_streamed_answer_serves_a_later_plain_request(
    upstream: tuple[str, UpstreamState], tmp_path: Path
) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        headers, chunks = await streamed(client, **ask("Count to three."))
        await gw.wait_writes()
        raw = await client.chat.completions.with_raw_response.create(**ask("Count to three."))
        await client.close()
    assert headers["x-gateway-cache"] == "miss"
    assert raw.headers["x-gateway-cache"] == "hit"
    plain = raw.parse()
    assert plain.choices[0].message.content == stream_text(chunks) == "answer #1 to: Count to three."
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.total_tokens == 18
    assert state.calls == 1


async def test_tool_calls_survive_both_ways(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        # plain first, then replayed as a stream
        plain = await client.chat.completions.create(**ask("Weather?", tools=TOOLS))
        await gw.wait_writes()
        headers, chunks = await streamed(client, **ask("Weather?", tools=TOOLS))
        # streamed first, then served to a plain request
        h2, chunks2 = await streamed(client, **ask("Weather again?", tools=TOOLS))
        await gw.wait_writes()
        raw = await client.chat.completions.with_raw_response.create(**ask("Weather again?", tools=TOOLS))
        await client.close()
    assert plain.choices[0].message.tool_calls
    call = plain.choices[0].message.tool_calls[0]
    assert plain.choices[0].finish_reason == "tool_calls"
    assert headers["x-gateway-cache"] == "hit"
    assert stream_tool_calls(chunks) == [{"id": call.id, "name": "get_weather", "arguments": call.function.arguments}]
    assert finish_reasons(chunks) == ["tool_calls"]

    assert h2["x-gateway-cache"] == "miss" and raw.headers["x-gateway-cache"] == "hit"
    again = raw.parse()
    assert again.choices[0].finish_reason == "tool_calls"
    calls = again.choices[0].message.tool_calls or []
    streamed_calls = stream_tool_calls(chunks2)
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (s["id"], s["name"], s["arguments"]) for s in streamed_calls
    ]
    assert '"city": "Paris"' in streamed_calls[0]["arguments"]
    assert state.calls == 2


async def test_truncated_streams_are_never_stored(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        state.cut_streams = True
        with pytest.raises(openai.APIError):
            await streamed(client, **ask("A long story, please."))
        await gw.wait_writes()
        state.cut_streams = False
        raw = await client.chat.completions.with_raw_response.create(**ask("A long story, please."))
        await client.close()
    assert raw.headers["x-gateway-cache"] == "miss"
    assert state.calls == 2


async def test_text_completions_round_trip(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        chunks = [
            c async for c in await client.completions.create(model="m1", prompt="Once", temperature=0, stream=True)
        ]
        await gw.wait_writes()
        raw = await client.completions.with_raw_response.create(model="m1", prompt="Once", temperature=0)
        await client.close()
    assert raw.headers["x-gateway-cache"] == "hit"
    done = raw.parse()
    assert done.choices[0].text == "".join(c.choices[0].text for c in chunks if c.choices)
    assert done.choices[0].finish_reason == "length"
    assert state.calls == 1


async def test_embeddings_are_cached_exactly(upstream: tuple[str, UpstreamState], tmp_path: Path) -> None:
    """A RAG pipeline embedding the same chunks again pays once; another input, another encoding or
    ``no-cache`` goes upstream."""
    url, state = upstream
    with running_gateway(gateway_settings(url, tmp_path)) as gw:
        client = sdk(gw)
        chunks = ["first chunk", "second chunk"]
        first = await client.embeddings.with_raw_response.create(model="emb", input=chunks)  # the SDK sends base64
        await gw.wait_writes()
        again = await client.embeddings.with_raw_response.create(model="emb", input=chunks)
        floats = await client.embeddings.with_raw_response.create(model="emb", input=chunks, encoding_format="float")
        other = await client.embeddings.with_raw_response.create(model="emb", input=["first chunk"])
        fresh = await client.embeddings.with_raw_response.create(
            model="emb", input=chunks, extra_headers={"cache-control": "no-cache"}
        )
        await client.close()
    status = [r.headers["x-gateway-cache"] for r in (first, again, floats, other, fresh)]
    assert status == ["miss", "hit", "miss", "miss", "bypass"]  # no-cache: not looked up, stored again
    vectors = [[list(d.embedding) for d in r.parse().data] for r in (first, again, floats)]
    assert vectors[0] == vectors[1] == [[1.0, 0.0, 0.5], [1.0, 1.0, 0.5]]  # call 1's, decoded by the SDK
    assert vectors[2] == [[2.0, 0.0, 0.5], [2.0, 1.0, 0.5]]
    assert again.parse().usage.prompt_tokens == 4
    assert again.headers["x-gateway-cost-usd"] == "0" and first.headers["x-gateway-cost-usd"] != "0"
    assert state.calls == 4  # the hit never reached the upstream
    # The ledger (flushed at shutdown): an embedding's baseline is its own model (GPT-4 serves no embeddings),
    # so only the cache saves anything.
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path}/ledger.db", require=True)
    async with db.engine.connect() as conn:
        query = select(ledger.c.cache_status, ledger.c.cost_usd, ledger.c.baseline_cost_usd, ledger.c.saved_usd)
        rows = (await conn.execute(query.order_by(ledger.c.id))).all()
    await db.aclose()
    assert [r.cache_status for r in rows] == status
    paid = rows[0].cost_usd
    assert paid > 0 and all(r.baseline_cost_usd == paid for r in rows[:3])
    assert [r.saved_usd for r in rows[:3]] == [0, paid, 0] and rows[1].cost_usd == 0


async def test_another_model_behind_the_same_name_starts_a_new_embeddings_cache(
    upstream: tuple[str, UpstreamState], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Vectors of two models must never mix in one index: after the operator points ``emb`` at another
    upstream model, the shared cache does not serve the old model's vectors."""
    url, state = upstream
    cache = {"redis_url": redis_url, "key_prefix": redis_prefix}
    body = {"model": "emb", "input": "a chunk", "encoding_format": "float"}
    seen = []
    for upstream_model in ("embed-v1", "embed-v1", "embed-v2"):
        with running_gateway(gateway_settings(url, tmp_path, cache, {"emb": upstream_model})) as gw:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
                seen.append((await http.post("/v1/embeddings", json=body)).headers["x-gateway-cache"])
                await gw.wait_writes()
    assert seen == ["miss", "hit", "miss"]  # a restart with the same model hits; another model does not
    assert state.calls == 2


async def test_another_model_behind_the_same_name_starts_a_new_chat_cache(
    upstream: tuple[str, UpstreamState], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """An operator who points ``m1`` at another upstream model (a new version, another server) gets that
    model's answers, not the old model's from the shared cache; a route's answers keep their cache."""
    url, state = upstream
    cache = {"redis_url": redis_url, "key_prefix": redis_prefix}
    explicit = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    routed = {**explicit, "model": "faq"}
    seen = []
    for upstream_model in ("chat-v1", "chat-v1", "chat-v2"):
        with running_gateway(gateway_settings(url, tmp_path, cache, {"m1": upstream_model})) as gw:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
                for body in (explicit, routed):
                    seen.append((await http.post("/v1/chat/completions", json=body)).headers["x-gateway-cache"])
                await gw.wait_writes()
    assert seen == ["miss", "miss", "hit", "hit", "miss", "hit"]
    assert state.calls == 3


async def test_an_answer_over_max_entry_bytes_is_not_stored(
    upstream: tuple[str, UpstreamState], tmp_path: Path
) -> None:
    url, state = upstream
    body = {"model": "emb", "input": [f"chunk {i}" for i in range(100)], "encoding_format": "float"}
    with running_gateway(gateway_settings(url, tmp_path, {"max_entry_bytes": 2048})) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
            big = [await http.post("/v1/embeddings", json=body) for _ in range(2)]
            # 400 vectors of 3 floats: too large before they are serialised (at least 2 bytes a float)
            bigger = {**body, "input": [f"chunk {i}" for i in range(400)]}
            big += [await http.post("/v1/embeddings", json=bigger) for _ in range(2)]
            await gw.wait_writes()
            small = [await http.post("/v1/embeddings", json={**body, "input": ["one"]}) for _ in range(2)]
            await gw.wait_writes()
            metrics = (await http.get("/metrics")).text
    assert [r.headers["x-gateway-cache"] for r in big + small] == ["miss"] * 5 + ["hit"]
    assert 'gateway_cache_errors_total{op="too_large"} 4.0' in metrics
    assert state.calls == 5


async def test_semantic_hit_through_the_gateway(
    upstream: tuple[str, UpstreamState], tmp_path: Path, embedder: object
) -> None:
    url, state = upstream
    cfg = {"semantic_threshold": 0.8}
    system = {"role": "system", "content": "You answer questions about our shop."}

    def faq(question: str, sys: dict[str, str] = system) -> dict[str, Any]:
        return {"model": "faq", "messages": [sys, {"role": "user", "content": question}], "temperature": 0}

    with running_gateway(gateway_settings(url, tmp_path, cfg)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
            first = await http.post("/v1/chat/completions", json=faq("What are your opening hours?"))
            await gw.wait_writes()
            para = await http.post("/v1/chat/completions", json=faq("What are your opening times?"))
            other_sys = {"role": "system", "content": "You are a pirate."}
            diff = await http.post("/v1/chat/completions", json=faq("What are your opening times?", other_sys))
    assert first.headers["x-gateway-cache"] == "miss"
    assert para.headers["x-gateway-cache"] == "semantic-hit"
    assert 0.8 <= float(para.headers["x-gateway-cache-score"]) < 1.0
    assert para.json()["choices"] == first.json()["choices"]
    assert diff.headers["x-gateway-cache"] == "miss"
    assert state.calls == 2


async def test_redis_outage_fails_no_request(
    upstream: tuple[str, UpstreamState], tmp_path: Path, own_redis: RedisProcess
) -> None:
    url, state = upstream
    cfg = {"redis_url": own_redis.url, "retry_after_seconds": 0.2, "timeout_ms": 200}
    statuses: list[tuple[int, str]] = []
    with running_gateway(gateway_settings(url, tmp_path, cfg)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:

            async def call(q: str) -> str:
                r = await http.post("/v1/chat/completions", json=ask(q))
                statuses.append((r.status_code, r.headers["x-gateway-cache"]))
                return r.headers["x-gateway-cache"]

            await call("before")
            await gw.wait_writes()
            assert await call("before") == "hit"
            own_redis.stop()
            for i in range(6):
                assert await call("during") == "miss"
                assert await call(f"new {i}") == "miss"
            await gw.wait_writes()
            own_redis.start()  # same port, empty (no persistence)
            await asyncio.sleep(0.3)  # past retry_after_seconds
            await call("after")
            await gw.wait_writes()
            assert await call("after") == "hit"
            metrics = (await http.get("/metrics")).text
    assert all(code == 200 for code, _ in statuses)
    assert 'gateway_cache_errors_total{op="get"}' in metrics
    assert state.calls == 1 + 12 + 1


async def test_a_hung_redis_costs_a_few_timeouts_then_nothing(
    upstream: tuple[str, UpstreamState], tmp_path: Path, own_redis: RedisProcess
) -> None:
    url, state = upstream
    cfg = {"redis_url": own_redis.url, "retry_after_seconds": 30, "timeout_ms": 300, "write_timeout_ms": 300}
    with running_gateway(gateway_settings(url, tmp_path, cfg)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
            warm = await http.post("/v1/chat/completions", json=ask("warm"))
            await gw.wait_writes()
            own_redis.pause()
            try:
                times = []
                for i in range(6):
                    t0 = time.perf_counter()
                    r = await http.post("/v1/chat/completions", json=ask("warm" if i % 2 else f"other {i}"))
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200 and r.headers["x-gateway-cache"] == "miss"
            finally:
                own_redis.resume()
    assert warm.status_code == 200
    assert times[0] >= 0.3  # the first lookups wait out their timeout (3 failures in a row, writes included) ...
    assert max(times[3:]) < 0.25  # ... then the store is left alone for retry_after_seconds
    assert state.calls == 7
