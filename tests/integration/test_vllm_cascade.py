"""A ``cascade`` route whose local rung is the REAL vLLM server (CPU, tiny random Llama): the gateway asks it for
token log-probabilities, the answer check reads them (the random model guesses every token), and they are
stripped from the response unless the client asked; a simulated GPT-4 is the rung above."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.helpers.servers import run_asgi_server, serve_gateway
from tests.integration.vllm_server import VLLMServer

MESSAGES = [{"role": "user", "content": "Name three rivers in Europe."}]


@pytest.fixture(scope="module")
def gateway(vllm_server: VLLMServer) -> Iterator[str]:
    ladder = ["tiny", "gpt-4"]
    with run_asgi_server(create_simulator_app("gpt-4", time_scale=0.0, seed=3)) as strong:
        settings = settings_from_dict(
            {
                "models": [
                    vllm_server.model_spec(),
                    {"name": "gpt-4", "backend": "openai", "base_url": strong + "/v1", "upstream_model": "gpt-4"},
                ],
                "routes": {
                    "cascade": {"models": ladder, "policy": "cascade", "quality_target": 0.8},
                    # quality_target 0: never escalate, so the local answer (and what was stripped) comes back
                    "cascade-keep": {"models": ladder, "policy": "cascade", "quality_target": 0.0},
                },
                "cache": {"enabled": False},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw.base_url


def _create(url: str, route: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=route, messages=MESSAGES, max_tokens=16, temperature=0, **extra
    )


def test_the_check_reads_vllms_logprobs_and_the_client_never_sees_them(gateway: str) -> None:
    raw = _create(gateway, "cascade-keep")
    h = raw.headers
    assert h["x-gateway-cascade"] == "accepted" and h["x-gateway-model"] == "tiny"
    assert "low confidence" in h["x-gateway-cascade-reason"]  # read from the logprobs the gateway asked for
    choice = raw.parse().choices[0]
    assert choice.logprobs is None and choice.message.content


def test_logprobs_the_client_asked_for_come_back(gateway: str) -> None:
    raw = _create(gateway, "cascade-keep", logprobs=True, top_logprobs=2)
    lp = raw.parse().choices[0].logprobs
    assert lp is not None and lp.content and len(lp.content[0].top_logprobs) == 2


def test_an_unsure_real_answer_escalates_streamed_and_not(gateway: str) -> None:
    raw = _create(gateway, "cascade")
    assert raw.headers["x-gateway-cascade"] == "escalated"
    assert "low confidence" in raw.headers["x-gateway-cascade-reason"]
    assert raw.headers["x-gateway-model"] == "gpt-4" and raw.headers["x-gateway-cascade-attempts"] == "tiny,gpt-4"
    body = {"model": "cascade", "messages": MESSAGES, "max_tokens": 16, "stream": True}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        text = r.read().decode()
        assert r.headers["x-gateway-cascade"] == "escalated" and r.headers["x-gateway-model"] == "gpt-4"
    assert text.endswith("data: [DONE]\n\n") and '"logprobs":{' not in text.replace(" ", "")


def test_an_accepted_real_answer_streams(gateway: str) -> None:
    body = {"model": "cascade-keep", "messages": MESSAGES, "max_tokens": 16, "stream": True}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=60) as r:
        text = r.read().decode()
        assert r.headers["x-gateway-cascade"] == "accepted" and r.headers["x-gateway-model"] == "tiny"
    assert '"content":' in text and text.endswith("data: [DONE]\n\n")
    assert '"logprobs":{' not in text.replace(" ", "")
