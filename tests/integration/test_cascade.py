"""A ``cascade`` route over real sockets: the local simulator answers first, the answer check accepts it or escalates
to the hosted one; streamed and not; headers, logprobs asked for and stripped, one ledger row costing every attempt."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.accounting.cascade_report import cascade_by_route
from gateway.config import BreakerSettings, settings_from_dict
from gateway.simulator import create_simulator_app
from tests.helpers.ports import free_port
from tests.helpers.servers import run_asgi_server, serve_gateway

RULES = [
    {"match": "refuseme", "behaviour": "refuse"},
    {"match": "unsure", "behaviour": "low_confidence"},
    {"match": "cutme", "behaviour": "truncate"},
]
#: A prompt whose simulated answer (200 tokens, seed 1) the check accepts at quality_target 0.5.
GOOD = "Write a short poem about the sea."
LOCAL_GPU_HOUR = 1.0
PICO = Decimal("1e-12")  # SQLite stores money as integer picodollars


def _money(value: Any) -> Decimal:
    return (Decimal(int(value)) * PICO).normalize()


@dataclass
class Env:
    url: str
    db: Path
    local_sim: str
    strong_sim: str


def _settings(
    local: str,
    strong: str,
    tmp: Path,
    extra_models: list[dict[str, Any]] | None = None,
    *,
    cache: bool = False,
    **route: Any,
) -> Any:
    return settings_from_dict(
        {
            "models": [
                {
                    "name": "llama-2-7b",
                    "backend": "vllm",
                    "base_url": local + "/v1",
                    "upstream_model": "meta-llama/Llama-2-7b-chat-hf",
                    "gpu_hour_usd": LOCAL_GPU_HOUR,
                    "tokens_per_second": 1500,
                },
                {"name": "gpt-4", "backend": "openai", "base_url": strong + "/v1", "upstream_model": "gpt-4"},
                *(extra_models or []),
            ],
            "routes": {
                "cascade": {"models": ["llama-2-7b", "gpt-4"], "policy": "cascade", "quality_target": 0.5, **route}
            },
            "retry": {"max_attempts": 2, "backoff_base_ms": 0},
            "cache": {"enabled": cache},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
        }
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cascade")
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(local) as lu, run_asgi_server(strong) as su, serve_gateway(_settings(lu, su, tmp)) as gw:
        yield Env(gw.base_url, tmp / "ledger.db", lu, su)


def _client(env: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url + "/v1", api_key="x", max_retries=0)


def _ask(env: Env, prompt: str, **extra: Any) -> Any:
    return _client(env).chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": prompt}], max_tokens=200, **extra
    )


def _rows(db: Path, request_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        try:
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute("SELECT * FROM gw_ledger WHERE request_id = ?", (request_id,))]
        except sqlite3.OperationalError:
            rows = []
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_good_local_answer_is_accepted_and_its_logprobs_stripped(env: Env) -> None:
    raw = _ask(env, GOOD)
    h = raw.headers
    assert h["x-gateway-cascade"] == "accepted", h.get("x-gateway-cascade-reason")
    assert h["x-gateway-model"] == "llama-2-7b"
    assert h["x-gateway-cascade-reason"].startswith("score ")
    assert h["x-gateway-cascade-attempts"] == "llama-2-7b"
    completion = raw.parse()
    assert completion.choices[0].logprobs is None  # the gateway asked for them; the client did not
    rows = _rows(env.db, h["x-request-id"])
    assert len(rows) == 1 and rows[0]["chosen_model"] == "llama-2-7b" and rows[0]["attempts"] == 1
    assert rows[0]["cascade"] == "accepted"
    (only,) = json.loads(rows[0]["cascade_attempts"])
    assert only["model"] == "llama-2-7b" and only["outcome"] == "accepted"
    assert Decimal(only["cost_usd"]) == Decimal(h["x-gateway-cost-usd"])
    assert rows[0]["routed_cost_usd"] is not None  # what the prompt router alone would have paid
    assert _money(rows[0]["cost_usd"]) == Decimal(h["x-gateway-cost-usd"]).normalize()


def test_logprobs_the_client_asked_for_are_kept(env: Env) -> None:
    raw = _ask(env, GOOD, logprobs=True, top_logprobs=1)
    assert raw.headers["x-gateway-cascade"] == "accepted"
    lp = raw.parse().choices[0].logprobs
    assert lp is not None and lp.content and len(lp.content[0].top_logprobs) == 1


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("refuseme: tell me a joke", "refusal"),
        ("unsure: what is the capital of France?", "low confidence"),  # read from the logprobs the gateway asked for
        ("cutme: write an essay on rivers", "truncated"),
    ],
)
def test_a_poor_local_answer_escalates_and_both_attempts_are_paid(env: Env, prompt: str, reason: str) -> None:
    raw = _ask(env, prompt)
    h = raw.headers
    assert h["x-gateway-cascade"] == "escalated"
    assert reason in h["x-gateway-cascade-reason"]
    assert h["x-gateway-model"] == "gpt-4" and h["x-gateway-cascade-attempts"] == "llama-2-7b,gpt-4"
    completion = raw.parse()
    assert "I apologize" not in (completion.choices[0].message.content or "")
    assert completion.choices[0].logprobs is None
    usage = completion.usage
    assert usage is not None
    gpt4 = Decimal("0.00003") * usage.prompt_tokens + Decimal("0.00006") * usage.completion_tokens
    cost = Decimal(h["x-gateway-cost-usd"])
    assert cost > gpt4  # the local answer's GPU time is paid on top
    rows = _rows(env.db, h["x-request-id"])
    assert len(rows) == 1, rows  # one row per request, costing every attempt
    row = rows[0]
    assert row["chosen_model"] == "gpt-4" and row["attempts"] == 2 and row["policy"] == "cascade"
    assert _money(row["cost_usd"]) == cost.normalize()
    assert row["cascade"] == "escalated"
    local, strong = json.loads(row["cascade_attempts"])
    assert (local["model"], local["outcome"], strong["model"], strong["outcome"]) == (
        "llama-2-7b",
        "escalated",
        "gpt-4",
        "answered",
    )
    assert Decimal(local["cost_usd"]) > 0 and Decimal(strong["cost_usd"]) == gpt4
    assert Decimal(local["cost_usd"]) + Decimal(strong["cost_usd"]) == cost


def _stream(env: Env, prompt: str) -> tuple[httpx.Headers, str]:
    raw = _client(env).chat.completions.with_raw_response.create(
        model="cascade",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usage = None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            assert chunk.choices[0].logprobs is None
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens > 0
    return raw.headers, "".join(text)


def test_streaming_accepted_relays_the_held_local_answer(env: Env) -> None:
    headers, text = _stream(env, GOOD)
    assert headers["x-gateway-cascade"] == "accepted" and headers["x-gateway-model"] == "llama-2-7b"
    whole = _ask(env, GOOD).parse().choices[0].message.content
    assert text == whole  # the same (seeded) answer, held then replayed as chunks
    rows = _rows(env.db, headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["stream"] and rows[0]["ttft_ms"] > 0


def test_streaming_escalated_never_shows_the_local_answer(env: Env) -> None:
    headers, text = _stream(env, "refuseme: a haiku please")
    assert headers["x-gateway-cascade"] == "escalated" and headers["x-gateway-model"] == "gpt-4"
    assert "I apologize" not in text and text
    rows = _rows(env.db, headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["attempts"] == 2 and rows[0]["chosen_model"] == "gpt-4"


def test_a_failing_strong_model_leaves_the_held_answer_and_a_dead_local_one_falls_through(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    failing = create_simulator_app("gpt-4", time_scale=0.0, faults={"mode": "error_500"})
    with (
        run_asgi_server(local) as lu,
        run_asgi_server(failing) as fu,
        serve_gateway(_settings(lu, fu, tmp_path, cache=True)) as gw,
    ):
        env = Env(gw.base_url, tmp_path / "ledger.db", lu, fu)
        raw = _ask(env, "refuseme: tell me a joke", temperature=0)
        assert raw.headers["x-gateway-cascade"] == "accepted"
        assert raw.headers["x-gateway-cascade-reason"].startswith("escalation failed")
        assert raw.headers["x-gateway-model"] == "llama-2-7b"
        rows = _rows(tmp_path / "ledger.db", raw.headers["x-request-id"])
        assert len(rows) == 1 and rows[0]["attempts"] == 2  # local, then gpt-4 (failed)
        # the answer the check rejected is served, not cached: it would outlive gpt-4's outage
        assert _ask(env, "refuseme: tell me a joke", temperature=0).headers["x-gateway-cache"] == "miss"
    with run_asgi_server(local) as lu, serve_gateway(_settings(lu, dead, tmp_path, cache=True)) as gw:
        env = Env(gw.base_url, tmp_path / "ledger.db", lu, dead)
        raw = _ask(env, "refuseme: tell me a joke", temperature=0)
        assert raw.headers["x-gateway-cascade"] == "accepted"  # gpt-4 is known down: nothing to escalate to
        assert raw.headers["x-gateway-cascade-reason"].startswith("nothing to escalate to")
        assert _ask(env, "refuseme: tell me a joke", temperature=0).headers["x-gateway-cache"] == "miss"
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(strong) as su, serve_gateway(_settings(dead, su, tmp_path)) as gw:
        r = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "cascade", "messages": [{"role": "user", "content": GOOD}], "max_tokens": 20},
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["x-gateway-model"] == "gpt-4"


def test_the_dashboard_reports_escalation_rate_and_cost_against_routing_alone(env: Env) -> None:
    before = _cascade_report(env)
    for prompt in (GOOD, "refuseme: a limerick", "refuseme: a sonnet"):
        raw = _ask(env, prompt)
        assert _rows(env.db, raw.headers["x-request-id"])
    after = _cascade_report(env)
    metrics = httpx.get(env.url + "/metrics", timeout=30).text
    assert 'gateway_cascade_total{outcome="escalated",route="cascade"}' in metrics
    assert after["requests"] - before.get("requests", 0) == 3
    assert after["escalated"] - before.get("escalated", 0) == 2
    assert 0 < after["escalation_rate"] < 1
    assert Decimal(after["cost_usd"]) > 0 and after["routed_cost_usd"] is not None
    assert Decimal(after["saved_vs_routing_usd"]) == Decimal(after["routed_cost_usd"]) - Decimal(after["cost_usd"])


def _cascade_report(env: Env) -> dict[str, Any]:
    """The dashboard's cascade entry for the route (the query the dashboard runs; its browser test is in e2e)."""

    async def read() -> list[dict[str, Any]]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{env.db}")
        try:
            return await cascade_by_route(engine, start_ms=None, end_ms=None)
        finally:
            await engine.dispose()

    found = [c for c in asyncio.run(read()) if c["route"] == "cascade"]
    return found[0] if found else {}


def _judge_app(reply: str) -> Any:
    """An OpenAI-compatible judge that always answers ``reply`` (and counts its calls)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls: list[dict[str, Any]] = []

    async def chat(request: Request) -> JSONResponse:
        calls.append(await request.json())
        return JSONResponse(
            {
                "id": "judge",
                "object": "chat.completion",
                "created": 0,
                "model": "judge",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 300, "completion_tokens": 6, "total_tokens": 306},
            }
        )

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.calls = calls
    return app


@pytest.mark.parametrize(("reply", "outcome"), [("Rating: [[9]]", "accepted"), ("no idea", "escalated")])
def test_the_verifier_decides_when_the_check_is_unsure_and_is_paid_for(
    tmp_path: Path, reply: str, outcome: str
) -> None:
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    judge = _judge_app(reply)
    with run_asgi_server(local) as lu, run_asgi_server(strong) as su, run_asgi_server(judge) as ju:
        judge_model = {
            "name": "judge",
            "backend": "openai",
            "base_url": ju + "/v1",
            "input_cost_per_token": "0.0000001",
            "output_cost_per_token": "0.0000002",
        }
        verifier = {"model": "judge", "band": 1.0, "min_escalation_cost_usd": 0}
        with serve_gateway(_settings(lu, su, tmp_path, [judge_model], verifier=verifier)) as gw:
            raw = _ask(Env(gw.base_url, tmp_path / "ledger.db", lu, su), "refuseme: tell me a joke")
            h = raw.headers
            assert h["x-gateway-cascade"] == outcome
            assert len(judge.state.calls) == 1
            assert "tell me a joke" in judge.state.calls[0]["messages"][1]["content"]
            if outcome == "accepted":  # the judge overrules the check
                assert "verifier rated 9/10" in h["x-gateway-cascade-reason"]
                assert h["x-gateway-model"] == "llama-2-7b"
            row = _rows(tmp_path / "ledger.db", h["x-request-id"])[0]
            paid = json.loads(row["cascade_attempts"])
            verifier = [a for a in paid if a["outcome"] == "verifier"]
            assert len(verifier) == 1 and verifier[0]["model"] == "judge"
            assert Decimal(verifier[0]["cost_usd"]) == Decimal("0.0000001") * 300 + Decimal("0.0000002") * 6
            assert sum(Decimal(a["cost_usd"]) for a in paid) == Decimal(h["x-gateway-cost-usd"])


def test_a_dead_verifier_is_skipped_once_its_breaker_opens(tmp_path: Path) -> None:
    """A judge failing every call (here 500s; a hung one would cost its timeout each time) is asked until its
    breaker opens, then no longer: the check decides alone. Before, every request near the threshold called it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls: list[int] = []

    async def broken(request: Request) -> JSONResponse:
        calls.append(1)
        return JSONResponse({"error": {"message": "judge down"}}, status_code=500)

    judge = Starlette(routes=[Route("/v1/chat/completions", broken, methods=["POST"])])
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(local) as lu, run_asgi_server(strong) as su, run_asgi_server(judge) as ju:
        judge_model = {"name": "judge", "backend": "openai", "base_url": ju + "/v1"}
        verifier = {"model": "judge", "band": 1.0, "min_escalation_cost_usd": 0}
        settings = _settings(lu, su, tmp_path, [judge_model], verifier=verifier)
        settings = settings.model_copy(update={"breaker": BreakerSettings(failure_threshold=2, reset_seconds=60)})
        with serve_gateway(settings) as gw:
            env = Env(gw.base_url, tmp_path / "ledger.db", lu, su)
            outcomes = [_ask(env, "refuseme: tell me a joke").headers["x-gateway-cascade"] for _ in range(4)]
    assert len(calls) == 2  # two failures opened its breaker
    assert outcomes == ["escalated"] * 4  # the check alone decides, as it does when the judge gives no verdict


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
def test_a_well_formed_local_tool_call_is_accepted(env: Env, tool_choice: Any) -> None:
    """A tool call has no text for the check to read (it saw an empty answer and escalated every one, paying
    twice): a call naming an offered function with a JSON object of its required arguments is accepted."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    raw = _ask(env, "What's the weather in Paris?", tools=tools, tool_choice=tool_choice)
    h = raw.headers
    assert h["x-gateway-cascade"] == "accepted", h["x-gateway-cascade-reason"]
    assert h["x-gateway-model"] == "llama-2-7b"
    assert "well-formed tool call (get_weather)" in h["x-gateway-cascade-reason"]
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "get_weather"


def test_a_streaming_client_that_leaves_pays_the_whole_answer_its_checked_rung_writes(tmp_path: Path) -> None:
    """A cascade asks its checked rung for a complete answer even when its client streams: a hosted API writes,
    and bills, that answer whoever still listens. A streaming client that hung up was charged its prompt only."""
    slow = create_simulator_app("llama-2-7b", time_scale=50.0, seed=1)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(slow) as lu, run_asgi_server(strong) as su, serve_gateway(_settings(lu, su, tmp_path)) as gw:
        body = {"model": "cascade", "messages": [{"role": "user", "content": GOOD}], "max_tokens": 120, "stream": True}
        with pytest.raises(httpx.TimeoutException):
            with httpx.stream(
                "POST", gw.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": "left"}, timeout=0.5
            ) as r:
                r.read()
        rows = _rows(tmp_path / "ledger.db", "left")
    assert len(rows) == 1 and rows[0]["status_code"] == 499
    assert rows[0]["chosen_model"] == "llama-2-7b" and rows[0]["completion_tokens"] == 120  # the answer asked for


def test_a_streamed_accepted_answer_is_cached(tmp_path: Path) -> None:
    """A cascade checks a whole answer, then replays it to a streaming client: that answer was never cached, so
    every streamed request paid the local rung (and its check) again."""
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with (
        run_asgi_server(local) as lu,
        run_asgi_server(strong) as su,
        serve_gateway(_settings(lu, su, tmp_path, cache=True)) as gw,
    ):
        body = {"model": "cascade", "messages": [{"role": "user", "content": GOOD}], "max_tokens": 200, "stream": True}
        seen = []
        for _ in range(2):
            with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json={**body, "temperature": 0}) as r:
                text = r.read().decode()
                seen.append((r.headers["x-gateway-cache"], r.headers.get("x-gateway-cascade")))
            asyncio.run(gw.wait_writes())
    assert seen[0] == ("miss", "accepted") and seen[1][0] == "hit", seen
    assert "data: [DONE]" in text


def test_a_request_only_one_rung_can_take_is_cached(tmp_path: Path) -> None:
    """A request the local rung cannot take (here a quality floor only gpt-4 meets; a prompt past its context, or
    tools it does not support, alike) was marked degraded ("nothing to escalate to") although nothing was down, so
    its answer was never cached: every repeat paid gpt-4 again."""
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with (
        run_asgi_server(local) as lu,
        run_asgi_server(strong) as su,
        serve_gateway(_settings(lu, su, tmp_path, cache=True)) as gw,
    ):
        env = Env(gw.base_url, tmp_path / "ledger.db", lu, su)
        first = _ask(env, GOOD, temperature=0, extra_headers={"x-gateway-min-quality": "8"})
        asyncio.run(gw.wait_writes())
        second = _ask(env, GOOD, temperature=0, extra_headers={"x-gateway-min-quality": "8"})
    assert first.headers["x-gateway-model"] == "gpt-4"
    assert first.headers["x-gateway-cascade-reason"].endswith("the only candidate for this request")
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")


def test_an_answer_cut_at_the_client_s_own_max_tokens_is_not_escalated(env: Env) -> None:
    """``finish_reason: length`` at the client's ``max_tokens`` escalated every time, and gpt-4 was cut at the same
    place (six such requests cost ~124x the same six with room to finish)."""
    raw = _client(env).chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": GOOD}], max_tokens=150
    )
    assert raw.parse().choices[0].finish_reason == "length"
    assert raw.headers["x-gateway-cascade"] == "accepted", raw.headers["x-gateway-cascade-reason"]
    assert "truncated" not in raw.headers["x-gateway-cascade-reason"]


def test_a_cost_limit_holds_for_the_whole_cascade(env: Env) -> None:
    """``x-gateway-max-cost-usd`` was checked rung by rung: gpt-4's prediction fit, the local answer fit, and an
    escalation paid both (8% over the client's limit). At gpt-4's own prediction the escalation would pass it: the
    local answer is served instead."""
    direct = _client(env).chat.completions.with_raw_response.create(
        model="gpt-4", messages=[{"role": "user", "content": "refuseme: tell me a joke"}], max_tokens=200, stream=True
    )
    predicted = Decimal(direct.headers["x-gateway-cost-usd"])  # a stream's header: the routing prediction
    for _ in direct.parse():
        pass
    raw = _ask(env, "refuseme: tell me a joke", extra_headers={"x-gateway-max-cost-usd": str(predicted)})
    h = raw.headers
    assert h["x-gateway-cascade"] == "accepted" and h["x-gateway-model"] == "llama-2-7b", h
    assert "cost limit" in h["x-gateway-cascade-reason"]
    assert Decimal(h["x-gateway-cost-usd"]) <= predicted


def test_a_local_rung_that_fails_is_still_a_cascade_and_a_replayed_stream_costs_its_answer(tmp_path: Path) -> None:
    """A local rung that failed (a 500) left the request with no cascade headers and no ``cascade`` column: the
    dashboard's escalation rate and cost left it out. And a held answer replayed to a streaming client after gpt-4
    failed said gpt-4's predicted cost in its header."""
    failing_local = create_simulator_app("llama-2-7b", time_scale=0.0, faults={"mode": "error_500"})
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with (
        run_asgi_server(failing_local) as lu,
        run_asgi_server(strong) as su,
        serve_gateway(_settings(lu, su, tmp_path, fallbacks=True)) as gw,
    ):
        raw = _ask(Env(gw.base_url, tmp_path / "ledger.db", lu, su), GOOD)
        rows = _rows(tmp_path / "ledger.db", raw.headers["x-request-id"])
    assert raw.headers["x-gateway-model"] == "gpt-4"
    assert raw.headers["x-gateway-cascade"] == "escalated"
    assert raw.headers["x-gateway-cascade-reason"].startswith("llama-2-7b failed")
    assert rows[0]["cascade"] == "escalated"
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    failing = create_simulator_app("gpt-4", time_scale=0.0, faults={"mode": "error_500"})
    with run_asgi_server(local) as lu, run_asgi_server(failing) as fu, serve_gateway(_settings(lu, fu, tmp_path)) as gw:
        headers, _ = _stream(Env(gw.base_url, tmp_path / "ledger.db", lu, fu), "refuseme: a haiku")
        rows = _rows(tmp_path / "ledger.db", headers["x-request-id"])
    assert headers["x-gateway-model"] == "llama-2-7b"
    # the local answer's cost (priced by GPU time: the ledger's figure uses the time it took), not gpt-4's ~$0.0126
    assert Decimal(headers["x-gateway-cost-usd"]) < Decimal("0.0001") and rows[0]["chosen_model"] == "llama-2-7b"


def test_a_client_that_leaves_while_the_judge_reads_pays_the_answer_and_the_judge(tmp_path: Path) -> None:
    """The client left while the judge read the local answer: the row named the judge as the answering model,
    priced at the client's prompt and max_tokens, and the local answer (generated all the same) was lost."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def slow_judge(request: Request) -> JSONResponse:
        await asyncio.sleep(30)
        return JSONResponse({})

    judge = Starlette(routes=[Route("/v1/chat/completions", slow_judge, methods=["POST"])])
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=RULES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(local) as lu, run_asgi_server(strong) as su, run_asgi_server(judge) as ju:
        judge_model = {"name": "judge", "backend": "openai", "base_url": ju + "/v1", **_JUDGE_PRICE}
        verifier = {"model": "judge", "band": 1.0, "min_escalation_cost_usd": 0, "max_tokens": 12}
        with serve_gateway(_settings(lu, su, tmp_path, [judge_model], verifier=verifier)) as gw:
            body = {
                "model": "cascade",
                "messages": [{"role": "user", "content": "refuseme: a joke"}],
                "max_tokens": 200,
            }
            with pytest.raises(httpx.TimeoutException):
                httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": "gone"}, timeout=1)
            rows = _rows(tmp_path / "ledger.db", "gone")
    assert len(rows) == 1 and rows[0]["status_code"] == 499
    assert rows[0]["chosen_model"] == "llama-2-7b" and rows[0]["completion_tokens"] > 0, rows[0]
    (judged,) = [a for a in json.loads(rows[0]["cascade_attempts"]) if a["outcome"] == "verifier"]
    assert judged["model"] == "judge" and judged["completion_tokens"] == 12  # the judge's own max_tokens


_JUDGE_PRICE = {"input_cost_per_token": "0.0000001", "output_cost_per_token": "0.0000002"}
