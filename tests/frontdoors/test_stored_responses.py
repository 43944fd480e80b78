"""Stored responses: ``previous_response_id`` across calls, GET/DELETE, and one tenant per key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config import settings_from_dict
from gateway.frontdoors.sql_store import SqlResponseStore
from gateway.frontdoors.store import MemoryResponseStore, RedisResponseStore, StoreUnavailable
from tests.frontdoors.conftest import Env, _key
from tests.frontdoors.test_responses_sdk import ASK_WEATHER, TOOLS, client
from tests.helpers.redis import any_redis, delete_prefix
from tests.helpers.servers import serve_gateway


async def test_previous_response_id_continues_the_conversation(env: Env) -> None:
    c = client(env)
    first = await c.responses.create(model="small", input="My name is Ada.", instructions="Be kind.")
    assert first.to_dict()["store"] is True
    second = await c.responses.create(model="small", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text
    assert first.usage is not None and second.usage is not None
    # The second call carried the first turn (its input and its answer) upstream.
    alone = await c.responses.create(model="small", input="What is my name?", store=False)
    assert alone.usage is not None
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens
    # And a stream continues the same way.
    async with c.responses.stream(model="small", input="Again?", previous_response_id=second.id) as stream:
        final = await stream.get_final_response()
    assert final.usage is not None and final.usage.input_tokens > second.usage.input_tokens
    assert (await c.responses.retrieve(final.id)).output_text == final.output_text


async def _items(c: openai.AsyncOpenAI, response_id: str, **params: Any) -> list[dict[str, Any]]:
    return [item.to_dict() async for item in c.responses.input_items.list(response_id, **params)]


async def test_input_items_list_the_conversation_with_the_sdk(env: Env) -> None:
    """``client.responses.input_items.list``: a response's own input, after the earlier turns' inputs and
    outputs when it continued a conversation; newest first by default; OpenAI's cursor paging."""
    c = client(env)
    first = await c.responses.create(
        model="small",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}],
        instructions="Be kind.",
    )
    own = await _items(c, first.id)
    assert [(i["type"], i["role"], i["content"]) for i in own] == [
        ("message", "user", [{"type": "input_text", "text": "My name is Ada."}])
    ]
    assert own[0]["id"].startswith("msg_")
    async with c.responses.stream(model="small", input="What is my name?", previous_response_id=first.id) as s:
        second = await s.get_final_response()
    third = await c.responses.create(model="small", input="And now?", previous_response_id=second.id)

    items = await _items(c, third.id, order="asc")
    ids = [i["id"] for i in items]
    assert ids[:2] == [own[0]["id"], first.output[0].to_dict()["id"]]  # ids stay the same across turns
    assert ids[3] == second.output[0].to_dict()["id"]
    texts = [i["content"][0]["text"] for i in items]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?", second.output_text, "And now?"]
    assert [i["role"] for i in items] == ["user", "assistant", "user", "assistant", "user"]

    newest_first = await c.responses.input_items.list(third.id, limit=2)
    assert [i.to_dict()["id"] for i in newest_first.data] == [ids[4], ids[3]] and newest_first.has_more
    assert [i["id"] for i in await _items(c, third.id, limit=2)] == ids[::-1]  # the SDK follows the pages
    rest = await c.responses.input_items.list(third.id, limit=100, after=ids[3])
    assert [i.to_dict()["id"] for i in rest.data] == ids[2::-1] and not rest.has_more

    for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"after": "msg_unknown"}):
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.input_items.list(third.id, **bad)
        assert info.value.param == next(iter(bad))
    with pytest.raises(openai.NotFoundError):
        await client(env, env.key_b).responses.input_items.list(third.id)
    with pytest.raises(openai.NotFoundError):
        await c.responses.input_items.list("resp_unknown")


async def test_input_items_of_a_tool_loop(env: Env) -> None:
    c = client(env)
    first = await c.responses.create(model="big", input=ASK_WEATHER, tools=TOOLS)
    call = next(item.to_dict() for item in first.output if item.type == "function_call")
    output: Any = [{"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 21}'}]
    second = await c.responses.create(model="big", input=output, tools=TOOLS, previous_response_id=first.id)
    items = await _items(c, second.id, order="asc")
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1]["id"] == call["id"] and items[1]["call_id"] == call["call_id"]
    assert items[2]["call_id"] == call["call_id"] and items[2]["output"] == '{"temp_c": 21}'


async def test_retrieve_and_delete(env: Env) -> None:
    c = client(env)
    made = await c.responses.create(model="small", input="Hi")
    got = await c.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text and got.usage == made.usage
    await c.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await c.responses.delete(made.id)


async def test_store_false_keeps_nothing(env: Env) -> None:
    c = client(env)
    made = await c.responses.create(model="small", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(made.id)


async def test_another_key_cannot_read_or_continue(env: Env) -> None:
    mine = await client(env).responses.create(model="small", input="A secret")
    other = client(env, env.key_b)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as info:
        await other.responses.create(model="small", input="Tell me", previous_response_id=mine.id)
    assert info.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(mine.id)
    row = await env.ledger.one_row(info.value.response.headers["x-request-id"])
    assert row["status_code"] == 404 and row["endpoint"] == "responses"
    assert (await client(env).responses.retrieve(mine.id)).id == mine.id  # still there for its owner


async def test_redis_store_outage_names_no_address() -> None:
    """The 503 a client gets when the store's Redis is down says so without the server's internal address."""
    store = RedisResponseStore("redis://redis-sessions.invalid:6390/3", "t:", ttl_seconds=60)
    with pytest.raises(StoreUnavailable) as info:
        await store.get("key-a", "resp_1")
    assert info.value.status == 503 and "redis-sessions" not in info.value.message and "6390" not in info.value.message
    await store.aclose()


async def test_missing_response_code(env: Env) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(env).responses.retrieve("resp_missing")
    assert info.value.code == "response_not_found" and info.value.param == "response_id"


async def test_memory_store_expires_and_separates_tenants() -> None:
    store = MemoryResponseStore(ttl_seconds=1, max_entries=2)
    await store.put("a", "r1", {"response": {"id": "r1"}, "messages": []})
    assert await store.get("b", "r1") is None
    assert await store.get("a", "r1") == {"response": {"id": "r1"}, "messages": []}
    await store.put("a", "r2", {"n": 2})
    await store.put("a", "r3", {"n": 3})
    assert await store.get("a", "r1") is None  # bounded: the oldest went
    store.ttl = 0
    await store.put("a", "r4", {"n": 4})
    await asyncio.sleep(0.01)
    assert await store.get("a", "r4") is None


async def test_redis_store_ttl_and_tenants() -> None:
    with any_redis() as url:
        prefix = "gw:test-resp-unit:"
        store = RedisResponseStore(url, prefix, ttl_seconds=60)
        try:
            await store.put("a", "r1", {"x": 1})
            assert await store.get("a", "r1") == {"x": 1}
            assert await store.get("b", "r1") is None
            assert not await store.delete("b", "r1")
            ttl = await store._redis.ttl(f"{prefix}a:r1")
            assert 0 < ttl <= 60
            assert await store.delete("a", "r1")
            assert await store.get("a", "r1") is None
        finally:
            await store.aclose()
            delete_prefix(url, prefix)


def sql_store_settings(env: Env, tmp_path: Path, responses: dict[str, Any] | None = None) -> Any:
    """One model on the simulator, keys on, no Redis: stored responses in the ledger's database."""
    return settings_from_dict(
        {
            "models": [
                {"name": "small", "backend": "openai", "base_url": env.sim_url + "/v1", "upstream_model": "meta/small"}
            ],
            "cache": {"enabled": False},
            "auth": {"enabled": True},
            "server": {"metrics_scrape_seconds": 3600},
            "responses": responses or {},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", "flush_interval_seconds": 0.05},
        }
    )


async def test_database_store_end_to_end(env: Env, tmp_path: Path) -> None:
    """Without Redis the gateway keeps stored responses in its ledger database, tenants apart as well."""
    with serve_gateway(sql_store_settings(env, tmp_path)) as gw:
        assert isinstance(gw.gateway.responses, SqlResponseStore)
        keys = [_key(gw.base_url, name) for name in ("a", "b")]
        async with (
            openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=keys[0], max_retries=0) as mine,
            openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=keys[1], max_retries=0) as other,
        ):
            first = await mine.responses.create(model="small", input="Remember 7.")
            second = await mine.responses.create(model="small", input="Which number?", previous_response_id=first.id)
            assert second.usage is not None and first.usage is not None
            assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 1
            assert (await mine.responses.retrieve(second.id)).output_text == second.output_text
            with pytest.raises(openai.NotFoundError):
                await other.responses.retrieve(first.id)
            with pytest.raises(openai.NotFoundError):
                await other.responses.create(model="small", input="x", previous_response_id=first.id)


async def test_a_conversation_stops_growing_at_the_record_bound(env: Env, tmp_path: Path) -> None:
    """Each stored response holds its whole conversation: a chain of large turns grew every record (and the
    store's memory) without end. Past ``responses.max_record_bytes`` a turn that would be stored is a 400 before
    any model is called; ``store: false`` still continues the conversation."""
    settings = sql_store_settings(env, tmp_path, {"max_record_bytes": 65_536})
    page = "-" * 12_000  # 12 KB a turn (and few tokens: the simulator's context is 8,192)
    with serve_gateway(settings) as gw:
        key = _key(gw.base_url, "a")
        async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0) as c:
            first = await c.responses.create(model="small", input=page, max_output_tokens=5)
            second = await c.responses.create(model="small", input=page, previous_response_id=first.id)
            with pytest.raises(openai.BadRequestError) as info:
                await c.responses.create(model="small", input=page, previous_response_id=second.id)
            assert info.value.code == "conversation_too_large" and info.value.param == "previous_response_id"
            unstored = await c.responses.create(
                model="small", input="ok?", previous_response_id=second.id, store=False, max_output_tokens=5
            )
    assert unstored.status in ("completed", "incomplete") and unstored.output_text  # answered (5 tokens at most)


async def test_an_item_id_already_in_the_conversation_is_refused_as_openai_does(env: Env) -> None:
    """An agent SDK that sends an earlier turn's output back with ``previous_response_id`` (or a client reusing a
    message id): OpenAI answers 400 "Duplicate item found". Kept, the upstream got each call twice, and paging the
    input items with the SDK went back to the first copy of the id for ever."""
    c = client(env)
    mine: Any = [{"id": "msg_mine", "role": "user", "content": "Hi."}]  # an id the SDK's types do not offer
    first = await c.responses.create(model="small", input=mine)
    resent = [item.to_dict() for item in first.output]
    with pytest.raises(openai.BadRequestError, match="Duplicate item found with id"):
        again = {"role": "user", "content": "Again"}
        await c.responses.create(model="small", input=[*resent, again], previous_response_id=first.id)  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="Duplicate item found with id msg_mine"):
        await c.responses.create(
            model="small",
            input=[{**mine[0], "content": "b"}],  # type: ignore[list-item]
            previous_response_id=first.id,
        )
    with pytest.raises(openai.BadRequestError, match="Duplicate item found with id msg_x"):
        twice = {"id": "msg_x", "role": "user", "content": "a"}
        await c.responses.create(model="small", input=[twice, twice])  # type: ignore[list-item]
    assert first.to_dict()["completed_at"] is not None  # the SDK's Response.completed_at: set once completed


async def test_an_item_reference_to_an_earlier_answer_continues_the_conversation(env: Env) -> None:
    """The Vercel AI SDK (and Codex-style clients) send an earlier turn's answer back as ``{"type":
    "item_reference", "id": ...}`` while ``store`` is on: refused before (400 unsupported), every second turn of
    such a client failed. It resolves to the caller's own stored item; another key's, or one never stored, is a 404."""
    c = client(env)
    first = await c.responses.create(model="small", input="My name is Ada.")
    stream_first = None
    async with c.responses.stream(model="small", input="Hello there.") as s:
        stream_first = await s.get_final_response()
    refs: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"type": "item_reference", "id": first.output[0].id},
        {"role": "user", "content": "Hello there."},
        {"type": "item_reference", "id": stream_first.output[0].id},
        {"role": "user", "content": "What is my name?"},
    ]
    second = await c.responses.create(model="small", input=refs)
    alone = await c.responses.create(model="small", input="What is my name?", store=False)
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens + 10  # the referenced answers went upstream
    items = await _items(c, second.id, order="asc")
    assert [i["content"][0]["text"] for i in items][1] == first.output_text  # stored as the item it names
    with pytest.raises(openai.NotFoundError, match="not found"):
        await client(env, env.key_b).responses.create(model="small", input=refs)  # another tenant's items
    unstored = await c.responses.create(model="small", input="Hi.", store=False)
    with pytest.raises(openai.NotFoundError, match="not found"):
        await c.responses.create(model="small", input=[{"type": "item_reference", "id": unstored.output[0].id}])


async def test_an_item_reference_counts_and_compacts_as_it_answers(env: Env) -> None:
    """``/v1/responses`` took an item_reference that ``input_tokens`` and ``compact`` still refused (a 400)."""
    c = client(env)
    first = await c.responses.create(model="small", input="My name is Ada.")
    refs: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"type": "item_reference", "id": first.output[0].id},
        {"role": "user", "content": "What is my name?"},
    ]
    counted = await c.responses.input_tokens.count(model="small", input=refs)
    plain = await c.responses.input_tokens.count(model="small", input=refs[-1:])
    assert counted.input_tokens > plain.input_tokens
    compacted = await c.responses.compact(model="small", input=refs)
    assert compacted.output
