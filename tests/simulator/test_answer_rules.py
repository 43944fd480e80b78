"""The simulator's per-prompt answer rules (refuse, truncate, low confidence) and its chat log-probabilities,
over sockets with the real ``openai`` SDK, read back by the cascade's answer check."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.simulator import create_simulator_app
from gateway.simulator.answers import REFUSAL_TEXT, AnswerRule, AnswerRules, parse_answer_rules, split_words
from policies.answer_check import AnswerCheck
from policies.answer_check.confidence import confidence, token_logprobs
from tests.helpers.servers import run_asgi_server, start_simulator_process

CHECK = AnswerCheck.load()


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with run_asgi_server(create_simulator_app("fast", time_scale=0.0)) as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[str]:
    yield sim_url
    httpx.delete(f"{sim_url}/_sim/answers")


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


# ------------------------------------------------------------------ rule parsing
def test_parse_accepts_one_rule_a_list_and_a_rule_set() -> None:
    one = parse_answer_rules({"match": "poem", "behaviour": "refuse"})
    assert one == [AnswerRule("poem", "refuse")]
    many = parse_answer_rules([{"behaviour": "truncate", "tokens": 3}, {"match": "x", "behaviour": "low_confidence"}])
    assert [r.behaviour for r in many] == ["truncate", "low_confidence"] and many[0].match == ""
    assert parse_answer_rules({"rules": [{"match": "a", "behaviour": "refuse", "count": 2}]})[0].count == 2


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"behaviour": "sing"}, "unknown behaviour"),
        ({"match": 3, "behaviour": "refuse"}, "'match' must be a string"),
        ({"behaviour": "refuse", "count": -1}, "'count'"),
        ({"behaviour": "truncate", "tokens": 0}, "'tokens' must be >= 1"),
        ({"behaviour": "refuse", "colour": "red"}, "unknown answer-rule fields: colour"),
        ({"rules": [], "extra": 1}, "nothing else"),
        ("refuse", "must be a JSON object"),
    ],
)
def test_parse_rejects_bad_rules(payload: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_answer_rules(payload)


def test_rules_match_case_insensitively_first_wins_and_count_down() -> None:
    rules = AnswerRules([AnswerRule("Poem", "refuse", count=1), AnswerRule("", "low_confidence")])
    assert rules.take("write a POEM please") == AnswerRule("Poem", "refuse", count=1)
    assert rules.take("write a poem please") == AnswerRule("", "low_confidence")  # the counted rule is spent
    assert [r.behaviour for r in rules.rules] == ["low_confidence"] and rules.applied == 2
    rules.clear()
    assert rules.take("anything") is None


def test_split_words_keeps_the_text() -> None:
    assert "".join(split_words(REFUSAL_TEXT)) == REFUSAL_TEXT


# ---------------------------------------------------------------- over sockets
def test_control_api_sets_reads_and_clears_rules(sim: str) -> None:
    r = httpx.post(f"{sim}/_sim/answers", json={"rules": [{"match": "ode", "behaviour": "refuse", "count": 1}]})
    assert r.status_code == 200
    assert r.json() == {"rules": [{"match": "ode", "behaviour": "refuse", "count": 1, "tokens": 8}]}
    assert httpx.get(f"{sim}/_sim/answers").json()["rules"][0]["match"] == "ode"
    bad = httpx.post(f"{sim}/_sim/answers", json={"behaviour": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadRequestError"
    assert httpx.get(f"{sim}/_sim/answers").json()["rules"][0]["match"] == "ode"  # a bad body changes nothing
    assert httpx.delete(f"{sim}/_sim/answers").json() == {"rules": []}


def test_refusal_is_a_llama_style_refusal_and_the_check_escalates_it(sim: str) -> None:
    httpx.post(f"{sim}/_sim/answers", json={"match": "limerick", "behaviour": "refuse"})
    c = client(sim)
    refused = c.chat.completions.create(model="fast", messages=ask("Write a limerick about cats"), max_tokens=200)
    normal = c.chat.completions.create(model="fast", messages=ask("Write a story about cats"), max_tokens=200)
    assert refused.choices[0].message.content == REFUSAL_TEXT
    assert refused.choices[0].finish_reason == "stop"
    assert refused.usage is not None and refused.usage.completion_tokens == len(split_words(REFUSAL_TEXT))
    assert normal.choices[0].message.content != REFUSAL_TEXT
    v = CHECK.check("Write a limerick about cats", REFUSAL_TEXT)
    assert v.score > CHECK.threshold_for_quality_target(0.5, with_router=False)
    assert "refusal" in v.reasons
    assert httpx.get(f"{sim}/_sim/stats").json()["answer_rules_applied"] == 1


def test_truncation_stops_with_finish_reason_length_streamed_and_not(sim: str) -> None:
    httpx.post(f"{sim}/_sim/answers", json={"match": "essay", "behaviour": "truncate", "tokens": 5})
    c = client(sim)
    whole = c.chat.completions.create(model="fast", messages=ask("An essay on rivers"), max_tokens=100)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    stream = c.chat.completions.create(
        model="fast",
        messages=ask("An essay on rivers"),
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert finish == ["length"] and text == whole.choices[0].message.content
    base = CHECK.check("An essay on rivers", text, finish_reason="stop").score
    cut = CHECK.check("An essay on rivers", text, finish_reason="length")
    assert cut.score > base and cut.reasons[0] == "truncated (finish_reason: length)"


def test_the_requests_max_tokens_caps_a_truncation_rule(sim: str) -> None:
    httpx.post(f"{sim}/_sim/answers", json={"behaviour": "truncate", "tokens": 50})
    r = client(sim).chat.completions.create(model="fast", messages=ask("hi"), max_tokens=3)
    assert r.usage is not None and r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_low_confidence_answers_carry_low_logprobs_and_the_check_reads_them(sim: str) -> None:
    httpx.post(f"{sim}/_sim/answers", json={"match": "guess", "behaviour": "low_confidence"})
    c = client(sim)
    unsure = c.chat.completions.create(
        model="fast", messages=ask("Take a guess: who wins?"), max_tokens=40, logprobs=True, top_logprobs=2
    )
    sure = c.chat.completions.create(
        model="fast", messages=ask("Who wins?"), max_tokens=40, logprobs=True, top_logprobs=2
    )
    lp_unsure = token_logprobs([unsure.choices[0].logprobs.model_dump()])  # type: ignore[union-attr]
    lp_sure = token_logprobs([sure.choices[0].logprobs.model_dump()])  # type: ignore[union-attr]
    assert lp_unsure is not None and lp_sure is not None
    assert len(lp_unsure) == unsure.usage.completion_tokens  # type: ignore[union-attr]
    cu, cs = confidence(lp_unsure), confidence(lp_sure)
    assert cu is not None and cs is not None
    floor = CHECK.priors.mean_floor  # the check reacts below it; a confident answer stays above
    assert cu.mean < -1.5 and cu.low_share > 0.4 and cs.mean > floor and cs.low_share == 0.0
    text = unsure.choices[0].message.content or ""
    plain = CHECK.check("Take a guess: who wins?", text).score
    assert CHECK.check("Take a guess: who wins?", text, logprobs=lp_sure).score == plain  # confident: no change
    low = CHECK.check("Take a guess: who wins?", text, logprobs=lp_unsure)
    assert low.score > plain and any(r.startswith("low confidence") for r in low.reasons)
    # Without logprobs requested, the same rule leaves none in the response.
    bare = c.chat.completions.create(model="fast", messages=ask("Take a guess: who wins?"), max_tokens=5)
    assert bare.choices[0].logprobs is None


def test_streamed_logprobs_arrive_per_chunk_in_the_chat_shape(sim: str) -> None:
    httpx.post(f"{sim}/_sim/answers", json={"behaviour": "low_confidence"})
    body = {
        "model": "fast",
        "messages": ask("stream it"),
        "max_tokens": 6,
        "logprobs": True,
        "top_logprobs": 1,
        "stream": True,
    }
    with httpx.stream("POST", f"{sim}/v1/chat/completions", json=body) as r:
        events = [e[6:] for e in r.read().decode().split("\n\n") if e.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    blocks = [ch["choices"][0].get("logprobs") for ch in chunks if ch["choices"]]
    lps = token_logprobs(blocks)
    assert lps is not None and len(lps) == 6 and all(-4.5 <= v <= -0.5 for v in lps)
    entry = next(b for b in blocks if b)["content"][0]
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
    assert entry["top_logprobs"][0]["token"] == entry["token"] and math.isclose(
        entry["top_logprobs"][0]["logprob"], entry["logprob"]
    )


def test_simulator_process_reads_answer_rules_from_a_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"match": "sonnet", "behaviour": "refuse"}]))
    with start_simulator_process("fast", time_scale=0.0, extra_args=["--answer-rules", str(rules)]) as proc:
        r = client(proc.base_url).chat.completions.create(
            model="fast", messages=ask("A sonnet, please"), max_tokens=100
        )
        assert r.choices[0].message.content == REFUSAL_TEXT


def _shape(value: Any) -> Any:
    """The JSON structure of ``value``: keys and value types, lists by their first item."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def test_chat_logprobs_have_the_shape_vllm_returns(sim: str) -> None:
    recorded = json.loads((Path(__file__).parent / "data" / "vllm_chat_logprobs.json").read_text())
    body = {"model": "fast", "messages": ask("Say hi"), "max_tokens": 5, "logprobs": True, "top_logprobs": 2}
    got = httpx.post(f"{sim}/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]
    assert _shape(got) == _shape(recorded["choices"][0]["logprobs"])
    assert len(got["content"][0]["top_logprobs"]) == 2
    with httpx.stream("POST", f"{sim}/v1/chat/completions", json={**body, "stream": True}) as r:
        chunks = [json.loads(e[6:]) for e in r.read().decode().split("\n\n") if e.startswith("data: {")]
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk, as vLLM sends it
    assert recorded["stream_role_chunk"]["choices"][0]["logprobs"] is None
    assert _shape(chunks[1]["choices"][0]["logprobs"]) == _shape(recorded["stream_chunk"]["choices"][0]["logprobs"])
    zero = httpx.post(f"{sim}/v1/chat/completions", json={**body, "top_logprobs": 0}).json()
    assert zero["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []  # vLLM: [] for top_logprobs 0


def test_gateway_simulate_refuses_a_bad_rules_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"behaviour": "sing"}))
    res = CliRunner().invoke(app, ["simulate", "--answer-rules", str(bad)])
    assert res.exit_code == 2 and "unknown behaviour" in _words(res.output)
    bad.write_text("{not json")
    res = CliRunner().invoke(app, ["simulate", "--answer-rules", str(bad)])
    assert res.exit_code == 2 and "not JSON" in _words(res.output)


def _words(output: str) -> str:
    """Rich's error panel as plain words: it wraps the message where the terminal's width (and the length of the
    temporary path in it) falls, which once split "not JSON" over two lines of the box."""
    return " ".join(output.replace("\u2502", " ").split())
