"""The cascade's answer check reads the real vLLM server's token log-probabilities (streamed and not), and the
simulator's chat logprobs have the same shape as vLLM's."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from gateway.simulator import create_simulator_app
from policies.answer_check import AnswerCheck
from policies.answer_check.confidence import confidence, token_logprobs
from tests.helpers.servers import run_asgi_server
from tests.integration.vllm_server import VLLMServer

PROMPT = "Name three rivers in Europe."


def _body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 12,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "temperature": 0,
        **extra,
    }


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def test_the_check_reads_vllm_logprobs_streamed_and_not(vllm_server: VLLMServer) -> None:
    client = openai.OpenAI(base_url=vllm_server.base_url, api_key="x", max_retries=0)
    model = vllm_server.served_model_name
    sdk_body = _body(model)
    extra = {"ignore_eos": sdk_body.pop("ignore_eos")}  # a vLLM extension: the SDK sends it as extra_body
    whole = client.chat.completions.create(**sdk_body, extra_body=extra)
    choice = whole.choices[0]
    assert choice.logprobs is not None and whole.usage is not None
    lps = token_logprobs([choice.logprobs.model_dump()])
    assert lps is not None and len(lps) == whole.usage.completion_tokens == 12

    stream = client.chat.completions.create(
        **sdk_body, stream=True, stream_options={"include_usage": True}, extra_body=extra
    )
    blocks = [ch.choices[0].logprobs.model_dump() if ch.choices and ch.choices[0].logprobs else None for ch in stream]
    streamed = token_logprobs(blocks)
    assert streamed is not None and len(streamed) == 12
    assert streamed == lps  # greedy and seeded: the same tokens either way

    # The random tiny model guesses every token: the check reads that and says so.
    conf = confidence(lps)
    assert conf is not None and conf.mean < -2.0
    check = AnswerCheck.load()
    text = choice.message.content or ""
    verdict = check.check(PROMPT, text, logprobs=lps, finish_reason=choice.finish_reason)
    assert verdict.score > check.check(PROMPT, text, finish_reason=choice.finish_reason).score
    assert any(r.startswith("low confidence") for r in verdict.reasons)
    assert "truncated (finish_reason: length)" in verdict.reasons


def test_simulator_logprobs_have_vllms_shape(vllm_server: VLLMServer) -> None:
    real = httpx.post(f"{vllm_server.base_url}/chat/completions", json=_body(vllm_server.served_model_name), timeout=60)
    with run_asgi_server(create_simulator_app("llama-2-7b", time_scale=0.0)) as sim:
        fake = httpx.post(f"{sim}/v1/chat/completions", json=_body("llama-2-7b"), timeout=30)
        with httpx.stream("POST", f"{sim}/v1/chat/completions", json=_body("llama-2-7b", stream=True)) as r:
            fake_chunks = [json.loads(e[6:]) for e in r.read().decode().split("\n\n") if e.startswith("data: {")]
    with httpx.stream(
        "POST", f"{vllm_server.base_url}/chat/completions", json=_body(vllm_server.served_model_name, stream=True)
    ) as r:
        real_chunks = [json.loads(e[6:]) for e in r.read().decode().split("\n\n") if e.startswith("data: {")]
    assert _shape(fake.json()["choices"][0]["logprobs"]) == _shape(real.json()["choices"][0]["logprobs"])
    assert _shape(fake_chunks[1]["choices"][0]["logprobs"]) == _shape(real_chunks[1]["choices"][0]["logprobs"])
    assert fake_chunks[0]["choices"][0]["logprobs"] is None and real_chunks[0]["choices"][0]["logprobs"] is None
