"""The request pipeline end to end in-process: pass-through, routing, fallbacks, errors, streaming."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import Settings, settings_from_dict
from gateway.metrics import FastHistogram
from tests.helpers.upstream import Seen, sse_response

from .conftest import THREE_MODELS, chat_reply, gateway_client, make_settings, sse

USER = [{"role": "user", "content": "Say hello."}]


async def test_passthrough_rewrites_only_model(settings: Settings) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.Response(text="")
        seen.append(request.json())
        return web.json_response(chat_reply("gpt-4"))

    body = {
        "model": "big",
        "messages": USER,
        "temperature": 0.3,
        "top_p": 0.9,
        "n": 1,
        "seed": 42,
        "stop": ["\n"],
        "logprobs": True,
        "top_logprobs": 2,
        "max_completion_tokens": 20,
        "user": "u1",
        "response_format": {"type": "json_object"},
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "vendor_extension": {"keep": [1, 2]},
    }
    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert seen == [{**body, "model": "gpt-4"}]
    assert r.json()["model"] == "big"
    assert r.headers["x-gateway-model"] == "big"
    assert r.headers["x-gateway-policy"] == "explicit"
    assert r.headers["x-request-id"].startswith("req-")
    assert r.headers["x-gateway-cost-usd"] == "0.000600000000"  # 10 x 3e-5 + 5 x 6e-5 from litellm's map


async def test_auto_routes_and_explains(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(settings, handler) as client:
        cheap = await client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": USER}, headers={"x-gateway-policy": "cost"}
        )
        best = await client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": USER}, headers={"x-gateway-policy": "quality"}
        )
        fast_body = {"model": "auto", "messages": USER, "gateway": {"policy": "latency"}}
        fast = await client.post("/v1/chat/completions", json=fast_body)
    assert cheap.headers["x-gateway-model"] == "small" and "cheapest" in cheap.headers["x-gateway-reason"]
    assert best.headers["x-gateway-model"] == "big" and best.headers["x-gateway-policy"] == "quality"
    assert fast.headers["x-gateway-policy"] == "latency"
    assert cheap.json()["model"] == "small"


async def test_falls_back_on_5xx_and_opens_breaker() -> None:
    settings = make_settings(
        {
            "breaker": {"failure_threshold": 2, "reset_seconds": 60},
            "routes": {"pair": {"models": ["small", "big"], "policy": "cost"}},
        }
    )
    calls: list[str] = []

    def handler(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.Response(text="")
        calls.append(request.backend)
        if request.backend == "small":
            return web.json_response(status=500, data={"error": {"message": "engine dead"}})
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(settings, handler) as client:
        for _ in range(4):
            r = await client.post("/v1/chat/completions", json={"model": "pair", "messages": USER})
            assert r.status_code == 200
            assert r.headers["x-gateway-model"] == "big"
        metrics = (await client.get("/metrics")).text
    # two failures open the breaker; later requests skip the dead backend entirely
    assert calls.count("small") == 2
    assert 'gateway_backend_breaker_open{model="small"} 1.0' in metrics
    # every decision is timed (the decide stage's cost in production, per worker)
    assert "gateway_routing_decision_seconds_count 4.0" in metrics
    assert 'gateway_routing_decision_seconds_bucket{le="+Inf"} 4.0' in metrics


def test_fast_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = FastHistogram("t_seconds", "test", (1e-5, 2e-5))
    for value in (5e-6, 1e-5, 1.5e-5, 3e-5):
        histogram.observe(value)
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    assert 't_seconds_bucket{le="1e-05"} 2.0' in text  # 1e-5 itself counts as <= 1e-5
    assert 't_seconds_bucket{le="2e-05"} 3.0' in text
    assert 't_seconds_bucket{le="+Inf"} 4.0' in text and "t_seconds_count 4.0" in text
    assert abs(float(text.split("t_seconds_sum ")[1].split()[0]) - 6e-5) < 1e-12


async def test_client_errors_are_not_retried_elsewhere(settings: Settings) -> None:
    calls: list[str] = []

    def handler(request: Seen) -> web.Response:
        if request.method == "POST":  # not the vLLM backends' background /metrics scrapes
            calls.append(request.backend)
        return web.json_response(
            {
                "error": {
                    "message": "max_tokens is too large",
                    "type": "BadRequestError",
                    "param": "max_tokens",
                    "code": 400,
                }
            },
            status=400,
        )

    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": USER})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "max_tokens is too large"
    assert r.json()["error"]["param"] == "max_tokens"
    assert len(calls) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_provider_refusing_the_gateway_is_the_gateway_s_failure(settings: Settings, status: int) -> None:
    """A provider refusing the gateway's key (401, 403), or not serving the configured model (404), is no fault of
    the client's: the next candidate answers and the backend's breaker counts it; with no other candidate the client
    gets a 502 in the gateway's words, not the provider's 401 read as its own key refused."""
    calls: list[str] = []

    def handler(request: Seen) -> web.Response:
        calls.append(request.backend)
        if request.backend == "small":
            err = {"message": "Incorrect API key provided: sk-prov****", "type": "invalid_request_error"}
            return web.json_response({"error": {**err, "code": "invalid_api_key"}}, status=status)
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": USER}, headers={"x-gateway-policy": "cost"}
        )
        assert r.status_code == 200 and r.headers["x-gateway-model"] != "small"
        assert calls[0] == "small"
        alone = await client.post("/v1/chat/completions", json={"model": "small", "messages": USER})
        small = client.gateway.pipeline.backends["small"]  # type: ignore[attr-defined]
    assert f"HTTP {status}" in small.stats.last_error  # counted against it (its breaker too)
    assert alone.status_code == 502
    err = alone.json()["error"]
    assert err["code"] == f"upstream_http_{status}" and err["type"] != "invalid_request_error"
    assert f"HTTP {status}" in err["message"]


async def test_unreachable_is_502() -> None:
    async with gateway_client(make_settings(), lambda r: web.json_response({}), refused={"big"}) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER})
    assert r.status_code == 502
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "big" in err["message"]


async def test_silent_upstream_is_504() -> None:
    models = [{**m, "timeouts": {"first_byte": 0.2}} for m in THREE_MODELS["models"]]

    async def silent(request: Seen) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async with gateway_client(make_settings({"models": models}), silent) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER})
    assert r.status_code == 504
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "big" in err["message"]


async def test_tools_never_go_to_models_without_tool_support(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply(request.backend))

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER, "tools": tools},
            headers={"x-gateway-policy": "cost"},
        )
    assert r.headers["x-gateway-model"] == "big"


async def test_long_prompts_go_where_they_fit_or_fail_clearly(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply(request.backend))

    long = [{"role": "user", "content": "word " * 5000}]
    huge = [{"role": "user", "content": "word " * 9000}]
    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": long}, headers={"x-gateway-policy": "cost"}
        )
        assert r.headers["x-gateway-model"] == "big"
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": huge})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "8192" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"x-gateway-max-cost-usd": "0.0000000001"}, "x-gateway-max-cost-usd"),
        ({"x-gateway-max-latency-ms": "1"}, "x-gateway-max-latency-ms"),
        ({"x-gateway-min-quality": "9.9"}, "x-gateway-min-quality"),
        ({"x-gateway-max-cost-usd": "lots"}, "x-gateway-max-cost-usd"),
        ({"x-gateway-policy": "magic"}, "x-gateway-policy"),
    ],
)
async def test_unsatisfiable_constraints_name_the_constraint(
    settings: Settings, headers: dict[str, str], param: str
) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply("x"))

    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": USER}, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_constraints_filter_candidates(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply(request.backend))

    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER},
            headers={"x-gateway-policy": "quality", "x-gateway-max-cost-usd": "0.0001"},
        )
    assert r.headers["x-gateway-model"] in ("small", "medium")


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"model": "big"}', 400, "messages"),
        (b'{"model": "big", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "max_tokens"),
        (b'{"model": "big", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
        (b'{"model": "big", "messages": "hi"}', 400, "messages"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "does not exist"),
    ],
)
async def test_bad_input_gets_openai_errors(settings: Settings, raw: bytes, status: int, fragment: str) -> None:
    async with gateway_client(settings, lambda r: web.json_response(chat_reply("x"))) as client:
        r = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment in err["message"]


async def test_body_too_large_is_413() -> None:
    settings = make_settings({"server": {"max_body_bytes": 1000, "metrics_scrape_seconds": 3600}})
    async with gateway_client(settings, lambda r: web.json_response(chat_reply("x"))) as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": "x" * 2000}]}
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


async def test_models_endpoints(settings: Settings) -> None:
    async with gateway_client(settings, lambda r: web.json_response({})) as client:
        listing = (await client.get("/v1/models")).json()
        one = await client.get("/v1/models/auto")
        missing = await client.get("/v1/models/nope")
        unknown_path = await client.get("/v2/whatever")
    assert [m["id"] for m in listing["data"]] == ["small", "medium", "big", "auto"]
    assert one.json()["x_gateway"]["kind"] == "route"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert unknown_path.status_code == 404 and "error" in unknown_path.json()


def stream_chunks(model: str, with_usage: bool) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model}
    chunks: list[dict[str, Any] | str] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if with_usage:
        chunks.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
        )
    chunks.append("[DONE]")
    return sse(*chunks)


def parse_sse(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_streaming_relays_and_handles_usage(settings: Settings, client_wants_usage: bool) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.Response(text="")
        sent.append(request.json())
        return sse_response(stream_chunks("gpt-4", True))

    body: dict[str, Any] = {"model": "big", "messages": USER, "stream": True}
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}
    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert sent[0]["stream_options"] == {"include_usage": True}
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    assert all(e["model"] == "big" for e in events[:-1])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]) == "Hello"
    usage_events = [e for e in events[:-1] if not e["choices"]]
    assert bool(usage_events) is client_wants_usage


async def test_stream_cut_midway_ends_with_error_event(settings: Settings) -> None:
    full = stream_chunks("gpt-4", False)
    cut = full[: full.index(b'"lo"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]

    def handler(request: Seen) -> web.Response:
        return sse_response(cut)

    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER, "stream": True})
    events = parse_sse(r.text)
    assert "error" in events[-1]
    assert "without [DONE]" in events[-1]["error"]["message"]


async def test_stream_falls_back_before_first_byte(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return sse_response(stream_chunks("meta/medium", False))

    async with gateway_client(settings, handler, refused={"small"}) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER, "stream": True},
            headers={"x-gateway-policy": "cost"},
        )
    assert r.status_code == 200
    assert r.headers["x-gateway-model"] == "medium"
    assert parse_sse(r.text)[-1] == "[DONE]"


async def test_an_empty_data_line_is_not_an_event(settings: Settings) -> None:
    """A keep-alive ``data:`` line with nothing after it dispatches no event (the SSE spec): a stream that starts
    with one is the backend's answer, not an invalid first event that hands the request to the next model."""

    def handler(request: Seen) -> web.Response:
        return sse_response(b"data:\n\n" + stream_chunks("meta/small", False).replace(b"\n\n", b"\n\ndata:\n\n", 1))

    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER, "stream": True},
            headers={"x-gateway-policy": "cost"},
        )
    assert r.status_code == 200
    assert r.headers["x-gateway-model"] == "small"
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    assert all(isinstance(e, dict) and "error" not in e for e in events[:-1])


VLLM_ERROR = b'data: {"error": {"object": "error", "message": "EngineDeadError at /srv/vllm/engine.py", "type": "InternalServerError", "param": null, "code": 500}}\n\ndata: [DONE]\n\n'


async def test_an_error_event_first_in_a_stream_falls_back(settings: Settings) -> None:
    """vLLM reports a failure as an error event, then [DONE], over a 200: before the first byte goes to the
    client that is the backend failing, and the next candidate answers."""

    def handler(request: Seen) -> web.Response:
        if request.backend == "small":
            return sse_response(VLLM_ERROR)
        return sse_response(stream_chunks("meta/medium", False))

    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER, "stream": True},
            headers={"x-gateway-policy": "cost"},
        )
        small = client.gateway.pipeline.backends["small"]  # type: ignore[attr-defined]
    assert r.status_code == 200
    assert r.headers["x-gateway-model"] == "medium"
    assert parse_sse(r.text)[-1] == "[DONE]"
    assert "failed mid-stream" in small.stats.last_error  # counted against it (its breaker too)


async def test_an_error_after_an_opening_chunk_that_says_nothing_falls_back(settings: Settings) -> None:
    """OpenAI and vLLM open a stream with a chunk holding only the assistant role and empty text: it is held back
    until a chunk says something, so an upstream that fails right after it (vLLM's engine dying, an abort) fails
    before the client got a byte, and the next candidate answers instead of the client getting an error."""
    full = stream_chunks("meta/small", False)
    opening = full[: full.index(b"\n\n") + 2]

    def handler(request: Seen) -> web.Response:
        if request.backend == "small":
            return sse_response(opening + VLLM_ERROR)
        return sse_response(stream_chunks("meta/medium", False))

    async with gateway_client(settings, handler) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER, "stream": True},
            headers={"x-gateway-policy": "cost"},
        )
    assert r.status_code == 200
    assert r.headers["x-gateway-model"] == "medium"
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]) == "Hello"
    assert [e["choices"][0]["delta"].get("role") for e in events[:-1]].count("assistant") == 1


async def test_an_error_event_mid_stream_is_a_failed_stream(settings: Settings) -> None:
    full = stream_chunks("gpt-4", False)
    head = full[: full.index(b'"lo"')]
    head = head[: head.rindex(b"\n\n") + 2]

    def handler(request: Seen) -> web.Response:
        return sse_response(head + VLLM_ERROR)

    async with gateway_client(settings, handler) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER, "stream": True})
        big = client.gateway.pipeline.backends["big"]  # type: ignore[attr-defined]
    events = parse_sse(r.text)
    error = events[-1]["error"]
    assert "failed mid-stream" in error["message"] and "EngineDeadError" in error["message"]
    assert "/srv/vllm" not in error["message"]  # scrubbed, like an HTTP error's message
    assert "[DONE]" not in events
    assert "failed mid-stream" in big.stats.last_error


async def test_explain_endpoint_calls_no_backend(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "explain-master")  # admin endpoints need it
    async with gateway_client(settings, lambda r: web.Response(text="")) as client:
        r = await client.post(
            "/admin/route/explain",
            json={"model": "auto", "messages": USER},
            headers={"x-gateway-policy": "cost", "authorization": "Bearer explain-master"},
        )
        upstream_calls = [(req.method, req.path) for req in client.upstream.requests]  # type: ignore[attr-defined]
    assert all(method == "GET" for method, _ in upstream_calls), upstream_calls  # metrics scrapes only
    out = r.json()
    assert out["winner"] == "small"
    assert [c["model"] for c in out["ranking"]][0] == "small"
    assert {"predicted_cost_usd", "predicted_latency_ms", "predicted_quality"} <= set(out["ranking"][0])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_counts_once_in_flight_while_it_runs(settings: Settings, stream: bool) -> None:
    """The backend layer alone counts requests in flight (what routing and the metrics read)."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.Response(text="")
        arrived.set()
        await release.wait()
        return sse_response(stream_chunks("gpt-4", True)) if stream else web.json_response(chat_reply("gpt-4"))

    async with gateway_client(settings, held) as client:
        backend = client.gateway.backends["big"]  # type: ignore[attr-defined]
        body = {"model": "big", "messages": USER, "stream": stream}
        task = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await asyncio.wait_for(arrived.wait(), 5)
        assert backend.stats.in_flight == 1
        assert 'gateway_backend_in_flight{model="big"} 1.0' in (await client.get("/metrics")).text
        release.set()
        assert (await task).status_code == 200
        for _ in range(100):  # a stream is closed (and released) in the background once its last byte went out
            if backend.stats.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert backend.stats.in_flight == 0
        assert 'gateway_backend_in_flight{model="big"} 0.0' in (await client.get("/metrics")).text


@pytest.mark.parametrize(
    ("headers", "route_limit", "never"),
    [
        ({"x-gateway-policy": "quality", "x-gateway-max-cost-usd": "100"}, {"max_cost_usd": "0.0005"}, "big"),
        ({"x-gateway-min-quality": "0"}, {"min_quality": 8.5, "policy": "cost"}, "small"),
    ],
)
async def test_a_client_tightens_a_route_s_limits_but_never_loosens_them(
    headers: dict[str, str], route_limit: dict[str, Any], never: str
) -> None:
    """The route's operator capped its cost (or set a quality floor): a client's own limit replaced it, so a
    virtual key sending max cost 100 (or min quality 0) got the dear (or the weak) model. The tighter one holds."""

    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply(request.backend))

    data = copy.deepcopy(THREE_MODELS)
    data["routes"] = {"capped": {"models": ["small", "medium", "big"], "policy": "quality", **route_limit}}
    async with gateway_client(settings_from_dict(data), handler) as client:
        body = {"model": "capped", "messages": USER}
        alone = await client.post("/v1/chat/completions", json=body)
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert alone.status_code == r.status_code == 200, r.text
    assert r.headers["x-gateway-model"] == alone.headers["x-gateway-model"] != never


async def test_a_streamed_fallback_s_cost_header_is_the_answering_model_s_prediction() -> None:
    """The stream's cost header is a prediction; after the first choice failed it was still that model's (gpt-4's,
    ~117 times the local model's that answered)."""

    def handler(request: Seen) -> web.Response:
        if request.backend == "big":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        return sse_response(
            sse(
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                "[DONE]",
            )
        )

    data = copy.deepcopy(THREE_MODELS)
    data["routes"] = {"best": {"models": ["small", "big"], "policy": "quality"}}
    data["breaker"] = {"failure_threshold": 100}
    async with gateway_client(settings_from_dict(data), handler) as client:
        body = {"model": "best", "messages": USER, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            await r.aread()
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "small"
    assert float(r.headers["x-gateway-cost-usd"]) < 0.001  # big's prediction is ~0.016


async def test_a_client_that_leaves_during_a_replay_is_recorded_gone(settings: Settings) -> None:
    """A cache hit or a cascade's answer replayed as a stream: a client that left half-way was recorded 200."""

    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply("x"))

    async def frames() -> Any:
        for frame in (b"data: 1\n\n", b"data: 2\n\n"):
            yield frame

    async with gateway_client(settings, handler) as client:
        pipeline = client.gateway.pipeline  # type: ignore[attr-defined]
        ctx = pipeline.new_context("chat", {})
        replay = pipeline._finish_after(ctx, frames())
        assert await anext(replay) == b"data: 1\n\n"
        await replay.aclose()  # the client went away: the server closes the generator
    assert (ctx.status_code, ctx.error_type) == (499, "ClientDisconnected") and ctx.total_s is not None


async def test_an_unknown_policy_name_is_not_echoed_whole(settings: Settings) -> None:
    def handler(request: Seen) -> web.Response:
        return web.json_response(chat_reply("x"))

    async with gateway_client(settings, handler) as client:
        body = {"model": "auto", "messages": USER, "gateway": {"policy": "x" * 100_000}}
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and len(r.content) < 1_000


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_s_absurd_usage_is_counted_within_bounds(settings: Settings, stream: bool) -> None:
    """An upstream reporting ``prompt_tokens: 2**64`` broke the request's log line (orjson's 64-bit limit), its span's
    export, and its ledger row (a cost past the money column's range): the row was dropped. A usage figure now
    counts as at most ``MAX_USAGE_TOKENS`` (the ledger's token column), and a log line survives any integer."""
    from gateway.context import MAX_USAGE_TOKENS
    from gateway.logs import JSONFormatter

    absurd = {"prompt_tokens": 2**64, "completion_tokens": 10**12, "total_tokens": 2**64 + 10**12}

    def handler(request: Seen) -> web.Response:
        if stream:
            chunks = stream_chunks("meta/big", True).replace(
                b'"prompt_tokens": 9', b'"prompt_tokens": ' + str(2**64).encode()
            )
            return sse_response(
                chunks.replace(b'"completion_tokens": 2', b'"completion_tokens": ' + str(10**12).encode())
            )
        return web.json_response({**chat_reply("x"), "usage": absurd})

    recorded: list[Any] = []
    async with gateway_client(settings, handler) as client:
        recorder = client.gateway.recorder  # type: ignore[attr-defined]
        real = recorder.record
        recorder.record = lambda ctx: (recorded.append(ctx), real(ctx))[1]
        body = {"model": "big", "messages": USER, "stream": stream, "stream_options": {"include_usage": True}}
        r = await client.post("/v1/chat/completions", json=body if stream else {**body, "stream_options": None})
    assert r.status_code == 200
    (ctx,) = recorded
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (MAX_USAGE_TOKENS, MAX_USAGE_TOKENS)
    line = JSONFormatter().format(logging.makeLogRecord({"msg": "request", "gateway": {"n": 2**64}}))
    assert json.loads(line)["n"] == 2**64
