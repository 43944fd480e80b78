"""Smoke tests of the real vLLM server itself (no gateway): the wire facts the gateway relies on."""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from tests.integration.vllm_server import VLLMServer

MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def _gauge(metrics_text: str, name: str, model: str) -> float:
    """The value of vLLM metric ``name`` (labels engine, model_name) for ``model`` in /metrics text."""
    pattern = re.compile(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", re.MULTILINE)
    for labels, value in pattern.findall(metrics_text):
        if f'model_name="{model}"' in labels.split(","):
            return float(value)
    raise AssertionError(f"{name} for model {model!r} not in /metrics")


def test_models_lists_served_name(vllm_server: VLLMServer) -> None:
    response = httpx.get(f"{vllm_server.base_url}/models", timeout=30)
    assert response.status_code == 200
    ids = [model["id"] for model in response.json()["data"]]
    assert ids == [vllm_server.served_model_name]


def test_chat_completion_usage(vllm_server: VLLMServer) -> None:
    response = httpx.post(
        f"{vllm_server.base_url}/chat/completions",
        json={
            "model": vllm_server.served_model_name,
            "messages": MESSAGES,
            "max_tokens": 8,
            "ignore_eos": True,
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == vllm_server.served_model_name
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


def test_streaming_chat_ends_with_usage_then_done(vllm_server: VLLMServer) -> None:
    payload = {
        "model": vllm_server.served_model_name,
        "messages": MESSAGES,
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{vllm_server.base_url}/chat/completions", json=payload, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")]

    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # The last chunk carries only usage (empty choices); the one before it carries finish_reason.
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    # Content chunks may be fewer than tokens (bytes held back until valid UTF-8): usage is the truth.
    assert 1 <= len([c for c in chunks if c["choices"]]) <= 9
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks[:-1])


def test_error_shapes(vllm_server: VLLMServer) -> None:
    unknown = httpx.post(
        f"{vllm_server.base_url}/chat/completions",
        json={"model": "no-such-model", "messages": MESSAGES, "max_tokens": 4},
        timeout=30,
    )
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["type"] == "NotFoundError"
    assert error["code"] == 404
    assert "no-such-model" in error["message"]

    too_long = httpx.post(
        f"{vllm_server.base_url}/chat/completions",
        json={"model": vllm_server.served_model_name, "messages": MESSAGES, "max_tokens": 100_000},
        timeout=30,
    )
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400
    assert error["param"] == "max_tokens"


def test_metrics_gauges(vllm_server: VLLMServer) -> None:
    response = httpx.get(f"{vllm_server.root_url}/metrics", timeout=30)
    assert response.status_code == 200
    text = response.text
    for name in GAUGES:
        value = _gauge(text, name, vllm_server.served_model_name)
        assert value >= 0.0
    assert f'vllm:generation_tokens_total{{engine="0",model_name="{vllm_server.served_model_name}"}}' in text


async def test_queued_server_reports_waiting_requests(vllm_server_queued: VLLMServer) -> None:
    """With --max-num-seqs 2, extra concurrent requests wait: /metrics shows them (queue-aware routing)."""
    server = vllm_server_queued
    payload = {"model": server.served_model_name, "messages": MESSAGES, "max_tokens": 600, "ignore_eos": True}
    max_running = max_waiting = 0.0
    batches = 0
    async with httpx.AsyncClient(timeout=120) as client, asyncio.timeout(300):
        # On a loaded 2-core machine vLLM's API server can stall for seconds, and /metrics answers only after
        # the stall, sometimes after a whole batch finished: send batches until a poll lands inside one.
        while not (max_running == 2 and max_waiting >= 1):
            batches += 1
            requests = [
                asyncio.create_task(client.post(f"{server.base_url}/chat/completions", json=payload)) for _ in range(6)
            ]
            while not all(task.done() for task in requests):
                text = (await client.get(f"{server.root_url}/metrics")).text
                max_running = max(max_running, _gauge(text, "vllm:num_requests_running", server.served_model_name))
                max_waiting = max(max_waiting, _gauge(text, "vllm:num_requests_waiting", server.served_model_name))
                await asyncio.sleep(0.02)
            responses = await asyncio.gather(*requests)
            assert all(r.status_code == 200 for r in responses)
            assert all(r.json()["usage"]["completion_tokens"] == 600 for r in responses)
    assert max_running == 2, batches  # never more than --max-num-seqs
    assert max_waiting >= 1, batches
