"""The cascade's answer check: signals, confidence, the shipped artifact, calibration, fitting, rows, verifier."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from policies.answer_check import AnswerCheck
from policies.answer_check import model as model_mod
from policies.answer_check.batch import CheckRow, RowError, read_rows, score_row
from policies.answer_check.confidence import LOW_LOGPROB, confidence, token_logprobs
from policies.answer_check.features import FEATURE_NAMES, Priors, feature_vector, router_logit
from policies.answer_check.fit import FitConfig, LabelledAnswer, fit_artifact, load_labelled, threshold_table
from policies.answer_check.signals import text_signals
from policies.answer_check.verifier import (
    JudgeVerdict,
    VerifierConfig,
    decide,
    parse_verdict,
    should_verify,
    verifier_request,
)
from policies.router.curve import pgr_points

CHECK = AnswerCheck.load()
PROMPT = "Give me three tips for a good night's sleep."
GOOD = (
    "1. Keep a regular schedule: go to bed and wake up at the same time every day, weekends included.\n"
    "2. Make the bedroom dark, quiet and cool, around 18 degrees.\n"
    "3. Avoid caffeine after noon and screens in the hour before bed."
)
REFUSAL = (
    "I apologize, but I cannot provide advice on sleep. I'm just an AI, it's not within my programming or ethical "
    "guidelines to give medical recommendations. It is not appropriate for me to answer this."
)
MORALISING = (
    "Thank you for your question! However, I must point out that the question contains harmful language, as "
    "sleep is a sensitive topic. As a responsible AI, I would like to clarify that it's important to approach "
    "this with respect and sensitivity."
)


# ---------------------------------------------------------------------------- signals
def test_signals_of_a_good_answer_are_quiet() -> None:
    s = text_signals(PROMPT, GOOD)
    assert (s.refusal, s.moralising, s.disclaimer, s.hedge) == (0, 0, 0, 0)
    assert not s.empty and not s.objects_early and not s.unfinished and not s.code_missing
    assert s.repetition < 0.1 and s.answer_words > 30


def test_signals_find_refusal_disclaimer_and_moralising() -> None:
    r = text_signals(PROMPT, REFUSAL)
    assert r.refusal >= 3 and r.disclaimer >= 1 and r.objects_early
    m = text_signals(PROMPT, MORALISING)
    assert m.moralising >= 3 and m.refusal == 0 and m.objects_early


def test_curly_apostrophes_match_like_straight_ones() -> None:
    assert text_signals("q", "I\u2019m sorry, but I can\u2019t help with that.").refusal == 2


def test_hedges_and_requests_for_clarification() -> None:
    s = text_signals("What is the capital?", "I'm not sure. Could you please clarify which country you mean?")
    assert s.hedge >= 2


def test_degenerate_empty_unfinished_and_missing_code() -> None:
    loop = text_signals("Tell me a story.", "the cat sat on the mat " * 40)
    assert loop.repetition > 0.9 and loop.compressibility > 0.8
    assert text_signals("hi", "  \n").empty
    assert text_signals("hi", "The answer is that we").unfinished
    assert not text_signals("hi", "It costs 42").unfinished and not text_signals("hi", "Done.").unfinished
    code = text_signals("Write a Python function that reverses a list.", "Sure, you can reverse it with slicing.")
    assert code.code_missing
    assert not text_signals("Write a Python function.", "```python\ndef f(x):\n    return x[::-1]\n```").code_missing


def test_what_the_prompt_asks_for() -> None:
    assert text_signals("Summarize this in one sentence: ...", "x").asks_brief
    assert text_signals("Write an essay about rivers.", "x").asks_long
    assert not text_signals("What is 2+2?", "4").asks_long


def test_feature_vector_order_and_missing_router() -> None:
    x = feature_vector(text_signals(PROMPT, GOOD), None)
    assert len(x) == len(FEATURE_NAMES) and math.isnan(x[FEATURE_NAMES.index("router_logit")])
    assert feature_vector(text_signals(PROMPT, GOOD), 0.5)[-1] == 0.0
    assert math.isfinite(router_logit(0.0)) and math.isfinite(router_logit(1.0))


# ------------------------------------------------------------------------- confidence
def test_confidence_summary() -> None:
    c = confidence([-0.1, -0.2, -3.0, -0.7])
    assert c is not None and c.n == 4 and math.isclose(c.mean, -1.0) and c.min == -3.0
    assert c.low_share == 0.25 and LOW_LOGPROB < -2.3
    assert confidence([]) is None and confidence([float("nan")]) is None and confidence([0.5]) is None
    floored = confidence([-9999.0, 0.0])  # vLLM's underflow marker is floored, not averaged in raw
    assert floored is not None and floored.mean == -10.0


def test_token_logprobs_read_a_response_and_stream_chunks() -> None:
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    assert token_logprobs([{"content": [entry, {**entry, "logprob": -1.0}]}]) == [-0.5, -1.0]
    assert token_logprobs([None, {"content": [entry]}, None, {"content": [entry]}]) == [-0.5, -0.5]
    assert token_logprobs([None, None]) is None and token_logprobs([{"content": None}]) is None
    assert token_logprobs([{"content": []}]) == []
    assert token_logprobs([{"content": [{"token": "x", "logprob": True}, "junk"]}]) == []


# ---------------------------------------------------------------- the shipped artifact
def test_shipped_artifact_loads_with_provenance() -> None:
    meta = CHECK.metadata
    assert meta["format"] == model_mod.ARTIFACT_FORMAT
    data = meta["training_data"]
    assert data["rows"] > 100 and data["sha256"] and "alpaca_eval" in data["source"] and data["licence"]
    for head in meta["heads"].values():
        assert head["cv_apgr"] > 0.6  # cross-validated on the training split when it was fitted
    assert "AnswerCheck(" in repr(CHECK)


def test_every_feature_has_a_reason_text() -> None:
    assert set(model_mod._REASONS) == set(FEATURE_NAMES)


def test_refusals_and_moralising_score_above_a_good_answer() -> None:
    good = CHECK.check(PROMPT, GOOD)
    refusal = CHECK.check(PROMPT, REFUSAL)
    moral = CHECK.check(PROMPT, MORALISING)
    assert refusal.score > good.score + 0.2 and moral.score > good.score + 0.2
    assert "refusal" in refusal.reasons and "moralising / objecting to the request" in moral.reasons
    t = CHECK.threshold_for_quality_target(0.5, with_router=False)
    assert refusal.escalate(t) and moral.escalate(t) and not good.escalate(t)
    assert 0.0 <= good.score <= 1.0 and good.confidence is None


def test_priors_truncation_empty_repetition_and_logprobs() -> None:
    base = CHECK.check(PROMPT, GOOD).score
    assert CHECK.check(PROMPT, GOOD, finish_reason="length").score > base
    assert CHECK.check(PROMPT, GOOD, finish_reason="stop").score == base
    empty = CHECK.check(PROMPT, "")
    assert empty.score > 0.99 and empty.reasons[0] == "empty answer"
    loop = CHECK.check(PROMPT, "sleep well sleep well " * 50)
    assert loop.score > 0.9 and any(r.startswith("repetitive") for r in loop.reasons)
    sure = [-0.05] * 40
    assert CHECK.check(PROMPT, GOOD, logprobs=sure).score == base
    unsure = CHECK.check(PROMPT, GOOD, logprobs=[-3.0] * 40)
    assert unsure.score > base and unsure.confidence is not None and unsure.confidence.low_share == 1.0
    assert any(r.startswith("unsure tokens") for r in unsure.reasons)


def test_router_score_moves_the_with_router_head() -> None:
    easy = CHECK.check(PROMPT, GOOD, router_score=0.05).score
    hard = CHECK.check(PROMPT, GOOD, router_score=0.95).score
    weights = dict(
        zip(
            CHECK.metadata["heads"]["with_router"]["features"],
            CHECK.metadata["heads"]["with_router"]["weights"],
            strict=True,
        )
    )
    assert (hard > easy) == (weights["router_logit"] > 0)


def test_thresholds_follow_the_quality_target() -> None:
    assert CHECK.threshold_for_quality_target(0.0) == math.inf
    assert CHECK.escalation_share_for_quality_target(0.0) == 0.0
    ts = [CHECK.threshold_for_quality_target(t / 10) for t in range(1, 11)]
    assert all(a >= b for a, b in itertools.pairwise(ts))  # a higher target escalates more
    shares = [CHECK.escalation_share_for_quality_target(t / 10) for t in range(1, 11)]
    assert all(a <= b for a, b in itertools.pairwise(shares))
    assert CHECK.threshold_for_quality_target(2.0) == CHECK.threshold_for_quality_target(1.0)
    with pytest.raises(ValueError):
        CHECK.threshold_for_quality_target(float("nan"))


def _artifact() -> dict[str, Any]:
    return json.loads((model_mod.ARTIFACT_DIR / model_mod.ARTIFACT_NAME).read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: a.update(format=99), "format 99"),
        (lambda a: a["heads"]["answer_only"]["weights"].pop(), "differ in length"),
        (lambda a: a["heads"]["answer_only"]["features"].__setitem__(0, "vibes"), "unknown features"),
        (lambda a: a["heads"]["answer_only"]["scale"].__setitem__(0, 0.0), "non-positive scale"),
        (lambda a: a["heads"]["with_router"]["calibration"]["thresholds"].pop(), "wrong length"),
    ],
)
def test_corrupt_artifacts_are_refused(tmp_path: Path, damage: Any, message: str) -> None:
    art = copy.deepcopy(_artifact())
    damage(art)
    (tmp_path / model_mod.ARTIFACT_NAME).write_text(json.dumps(art))
    with pytest.raises(ValueError, match=message):
        AnswerCheck.load(tmp_path)


def test_artifact_priors_are_read_from_the_file(tmp_path: Path) -> None:
    art = _artifact()
    art["priors"]["truncated"] = 0.0
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(art))
    check = AnswerCheck.load(path)
    assert check.priors == Priors(**{**art["priors"]})
    assert check.check(PROMPT, GOOD, finish_reason="length").score == check.check(PROMPT, GOOD).score


# ------------------------------------------------------------------------ calibration
def test_threshold_table_reaches_each_target_on_its_data() -> None:
    rng = random.Random(3)
    weak = [float(rng.random() < 0.6) for _ in range(300)]
    strong = [float(rng.random() < 0.9) for _ in range(300)]
    scores = [(s - w) + rng.gauss(0, 0.7) for w, s in zip(weak, strong, strict=True)]
    table = threshold_table(scores, weak, strong)
    points = pgr_points(scores, weak, strong)
    for k in (20, 50, 80):
        t = table["thresholds"][k]
        assert t is not None
        escalated = [s >= t for s in scores]
        q = sum(st if e else w for e, w, st in zip(escalated, weak, strong, strict=True))
        gap = sum(strong) - sum(weak)
        assert (q - sum(weak)) / gap >= k / 100 - 1e-9
        assert table["escalation_share"][k] == pytest.approx(sum(escalated) / len(scores))
    assert table["thresholds"][0] is None and max(points.pgr) > 0.8


# ---------------------------------------------------------------------------- fitting
def _synthetic(n: int, seed: int) -> list[LabelledAnswer]:
    """Refusals lose to the strong model, full answers mostly tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Question {i}: explain topic {rng.randint(0, 10**6)} in a few paragraphs."
        if rng.random() < 0.3:
            rows.append(LabelledAnswer(prompt, REFUSAL, weak=0.0, strong=1.0))
        else:
            ok = rng.random() < 0.85
            rows.append(LabelledAnswer(prompt, GOOD, weak=1.0 if ok else 0.0, strong=1.0))
    return rows


def test_fit_learns_that_refusals_lose_and_writes_a_loadable_artifact(tmp_path: Path) -> None:
    rows = _synthetic(200, 1)
    art = fit_artifact(rows, [0.5] * len(rows), FitConfig(folds=4), {"file": "synthetic", "source": "test"})
    head = art["heads"]["answer_only"]
    weights = dict(zip(head["features"], head["weights"], strict=True))
    # Refusals are 30 % of rows and 74 % of the gap; the other losses cannot be told apart (random: 0.5).
    assert weights["refusal"] > 0 and head["cv_apgr"] > 0.65
    assert art["training_data"]["rows"] == 200 and art["training_data"]["source"] == "test"
    (tmp_path / model_mod.ARTIFACT_NAME).write_text(json.dumps(art))
    check = AnswerCheck.load(tmp_path)
    assert check.check("q", REFUSAL).score > check.check("q", GOOD).score


def test_load_labelled_maps_judge_scores_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"prompt": "p", "answer": "a", "weak_score": 4, "strong_score": 10}) + "\n\n")
    (row,) = load_labelled(good)
    assert (row.weak, row.strong) == (pytest.approx(1 / 3), 1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_labelled(bad)


# ------------------------------------------------------------------------------- rows
def test_read_rows_parses_optional_fields(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text(
        json.dumps({"prompt": "p", "answer": "a"})
        + "\n\n"
        + json.dumps(
            {"prompt": "p", "answer": "a", "logprobs": [-0.5, 0], "finish_reason": "length", "router_score": 0.2}
        )
        + "\n"
    )
    rows = list(read_rows(f))
    assert rows == [CheckRow("p", "a"), CheckRow("p", "a", [-0.5, 0.0], "length", 0.2)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "p"}', "'prompt' and 'answer'"),
        ('{"prompt": "p", "answer": 3}', "'prompt' and 'answer'"),
        ('{"prompt": "p", "answer": "a", "logprobs": [0.5]}', "'logprobs'"),
        ('{"prompt": "p", "answer": "a", "logprobs": "x"}', "'logprobs'"),
        ('{"prompt": "p", "answer": "a", "logprobs": [true]}', "'logprobs'"),
        ('{"prompt": "p", "answer": "a", "finish_reason": 1}', "'finish_reason'"),
        ('{"prompt": "p", "answer": "a", "router_score": 2}', "'router_score'"),
    ],
)
def test_read_rows_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n" + line + "\n")
    with pytest.raises(RowError, match=f"rows.jsonl:2: .*{message}"):
        list(read_rows(f))


def test_score_row_prefers_the_rows_router_score() -> None:
    calls: list[str] = []

    def router(prompt: str) -> float:
        calls.append(prompt)
        return 0.9

    own = score_row(CHECK, CheckRow(PROMPT, GOOD, router_score=0.1), router)
    assert calls == [] and own.score == CHECK.check(PROMPT, GOOD, router_score=0.1).score
    assert score_row(CHECK, CheckRow(PROMPT, GOOD), router).score == CHECK.check(PROMPT, GOOD, router_score=0.9).score
    assert score_row(CHECK, CheckRow(PROMPT, GOOD), None).score == CHECK.check(PROMPT, GOOD).score


# ---------------------------------------------------------------------------- verifier
def test_verifier_request_is_a_short_greedy_chat_body() -> None:
    cfg = VerifierConfig(model="gpt-4")
    body = verifier_request(PROMPT, "x" * 10_000, cfg)
    assert body["model"] == "gpt-4" and body["temperature"] == 0 and body["max_tokens"] == cfg.max_tokens
    system, user = body["messages"]
    assert system["role"] == "system" and "Rating: [[N]]" in system["content"]
    assert PROMPT in user["content"] and len(user["content"]) < 6200


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: [[8]]", 8),
        ("rating: 3", 3),
        ("[[ 10 ]]", 10),
        ("[[7.5]]", 7),
        ("Rating: [[0]]", None),
        ("I think it is fine", None),
        ("Rating: [[11]]", None),
    ],
)
def test_parse_verdict(reply: str, rating: int | None) -> None:
    assert parse_verdict(reply).rating == rating


def test_should_verify_only_when_unsure_and_worth_it() -> None:
    cfg = VerifierConfig(model="judge", band=0.1, min_escalation_cost_usd=0.01)
    assert should_verify(0.45, 0.5, escalation_cost_usd=0.05, verifier_cost_usd=0.001, config=cfg)
    assert not should_verify(0.2, 0.5, 0.05, 0.001, cfg)  # the check is sure
    assert not should_verify(0.45, 0.5, 0.005, 0.001, cfg)  # escalating is cheap
    assert not should_verify(0.45, 0.5, 0.05, 0.06, cfg)  # asking costs more than escalating


def test_decide_uses_the_verdict_else_the_threshold() -> None:
    cfg = VerifierConfig(model="judge", min_rating=7)
    assert decide(0.9, 0.5, JudgeVerdict(8, ""), cfg) == (False, "verifier rated 8/10")
    assert decide(0.1, 0.5, JudgeVerdict(4, ""), cfg) == (True, "verifier rated 4/10")
    assert decide(0.9, 0.5, JudgeVerdict(None, "?"), cfg) == (True, "check")
    assert decide(0.1, 0.5, None, cfg) == (False, "check")


@pytest.mark.parametrize(
    "kw", [{"model": ""}, {"band": 2.0}, {"min_escalation_cost_usd": -1.0}, {"min_rating": 0}, {"max_tokens": 0}]
)
def test_verifier_config_validates(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VerifierConfig(**{"model": "judge", **kw})


# --------------------------------------------------------------------------------- CLI
def test_gateway_router_verify_is_the_gateways_check(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli_router import _tokenizer, router_app
    from policies.router.model import QualityRouter

    rows = [
        {"prompt": PROMPT, "answer": GOOD},
        {"prompt": PROMPT, "answer": REFUSAL},
        {"prompt": PROMPT, "answer": GOOD, "logprobs": [-3.0] * 20, "finish_reason": "length"},
        {"prompt": PROMPT, "answer": GOOD, "router_score": 0.99},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    res = runner.invoke(router_app, ["verify", "--data", str(data)])
    assert res.exit_code == 0, res.output
    scores = [json.loads(line)["score"] for line in res.output.splitlines()]
    router = QualityRouter.load(None, encode=_tokenizer().encode)
    expected = [score_row(CHECK, r, router.score).score for r in read_rows(data)]
    assert scores == expected  # the same code path, to the bit
    assert scores[1] > scores[0] and scores[2] > scores[0]

    out = tmp_path / "scores.jsonl"
    res = runner.invoke(router_app, ["verify", "--data", str(data), "--no-router", "--explain", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["score"] == CHECK.check(PROMPT, GOOD).score and "refusal" in lines[1]["reasons"]

    data.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    res = runner.invoke(router_app, ["verify", "--data", str(data)])
    assert res.exit_code == 2 and "rows.jsonl:1" in res.output


def test_a_tool_call_is_checked_by_its_form() -> None:
    from policies.answer_check.tool_calls import check_tool_calls

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]}

    def answer(name: str, arguments: str) -> dict[str, object]:
        call = {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
        return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}

    assert check_tool_calls({"choices": [{"message": {"content": "hi"}}]}, request) is None  # text: the text check
    assert check_tool_calls(answer("get_weather", '{"city": "Paris"}'), request) == (
        True,
        "well-formed tool call (get_weather)",
    )
    for bad, why in (
        (answer("get_wether", '{"city": "Paris"}'), "did not offer ('get_wether')"),
        (answer("get_weather", '{"city": "Par'), "not JSON"),
        (answer("get_weather", '["Paris"]'), "not a JSON object"),
        (answer("get_weather", "{}"), "without city"),
    ):
        verdict = check_tool_calls(bad, request)
        assert verdict is not None and not verdict[0] and why in verdict[1], verdict
    legacy = {"choices": [{"message": {"function_call": {"name": "f", "arguments": "{}"}}}]}
    assert check_tool_calls(legacy, {"functions": [{"name": "f", "parameters": {}}]}) == (
        True,
        "well-formed tool call (f)",
    )
