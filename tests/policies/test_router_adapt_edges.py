"""Adapting on awkward labels: the weak model at least as good, few prompts of one outcome, mixed score scales."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt, format_held_out
from policies.router.curve import pgr_points
from policies.router.data import Record, load_prompts, load_records
from policies.router.loader import load_artifact
from policies.router.model import QualityRouter
from tests.policies.test_router_adapt import _TOPICS, fake_embed

_REPO = Path(__file__).resolve().parents[2]
_REL = Path("shared") / "data" / "routing" / "routellm_train.jsonl"
REAL_DATA = next((p for p in (_REPO / _REL, _REPO.parent / _REL) if p.exists()), _REPO / _REL)


@pytest.fixture(scope="module")
def prior() -> QualityRouter:
    return QualityRouter.load(None, encode=load_tiktoken().encode)


def _prompt(i: int) -> str:
    return f"Please write a {_TOPICS[i % len(_TOPICS)]} about item {i}"


def _ledger_like(wins: int, losses: int, ties: int) -> list[Record]:
    """Verdict labels as ``gateway quality labels`` writes them: win (1, 0), loss (0, 1), tie (1, 1)."""
    scores = [(1.0, 0.0)] * wins + [(0.0, 1.0)] * losses + [(1.0, 1.0)] * ties
    return [Record(_prompt(i), "deployment", str(i), w, s) for i, (w, s) in enumerate(scores)]


def _write(path: Path, rows: list[dict[str, Any]] | list[str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the weak model at least as good on average


def test_without_a_gap_every_target_is_met_without_the_strong_model() -> None:
    points = pgr_points([0.9, 0.5, 0.1, 0.3], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0])
    assert not points.has_gap
    for target in (0.01, 0.5, 0.95, 1.0):
        assert points.threshold_for_pgr(target) == math.inf
        assert points.share_for_pgr(target) == 0.0
    with_gap = pgr_points([0.9, 0.1], [0.0, 1.0], [1.0, 1.0])
    assert with_gap.has_gap and with_gap.threshold_for_pgr(0.5) == 0.9 and with_gap.share_for_pgr(0.5) == 0.5


def test_adapting_where_the_weak_model_wins_sends_nothing_to_the_strong_one(
    prior: QualityRouter, tmp_path: Path
) -> None:
    router = adapt(_ledger_like(30, 20, 10), prior, fake_embed)
    for target in (0.5, 0.8, 0.95, 1.0):
        assert router.threshold_for_quality_target(target) == math.inf
        assert router.strong_share_for_quality_target(target) == 0.0
    held = router.held_out
    text = json.dumps(held, allow_nan=False)  # no NaN: the artifact is valid JSON
    assert "weak model is at least as good" in held["note"]
    for name in ("adapted", "prior", "random"):
        assert held[name] == {"apgr": None, "cpt50": 0.0, "cpt80": 0.0, "saved_at_95": 1.0}, text
    table = format_held_out(held)
    assert "nan" not in table and "n/a" in table and "note: the weak model" in table
    assert 0.0 < router.threshold_for_strong_share(0.3) < 1.0  # a strong_share route still has its ranking
    loaded = load_artifact(router.save(tmp_path / "art"), encode=load_tiktoken().encode)
    assert isinstance(loaded, AdaptedRouter) and loaded.threshold_for_quality_target(0.8) == math.inf


# ------------------------------------------------------------------- cross-validation folds of one outcome


def test_a_single_prompt_of_one_outcome_is_refused(prior: QualityRouter) -> None:
    rows = [Record(_prompt(i), "d", str(i), 0.0 if i == 0 else 1.0, 1.0) for i in range(20)]
    with pytest.raises(ValueError, match="only 1 distinct prompt where the strong model is better"):
        adapt(rows, prior, fake_embed)
    flipped = [Record(_prompt(i), "d", str(i), 1.0 if i == 0 else 0.0, 1.0) for i in range(20)]
    with pytest.raises(ValueError, match="only 1 distinct prompt where the strong model is not better"):
        adapt(flipped, prior, fake_embed)


def test_no_row_keeps_a_placeholder_score(prior: QualityRouter) -> None:
    """Two strong-better prompts: a random split puts both in one fold for some seeds (that fold's training part
    then has one outcome); every row must still get a fitted out-of-fold score."""
    rows = [Record(_prompt(i), "d", str(i), 0.0 if i in (0, 7) else 1.0, 1.0) for i in range(20)]
    methods = []
    for seed in range(15):
        router = adapt(rows, prior, fake_embed, AdaptConfig(seed=seed))
        scores = router._calib[0]
        assert not np.any(scores == 0.5), (seed, scores)
        assert len(np.unique(scores)) == len(scores)
        methods.append(router.held_out["method"])
    assert any("stratified by outcome" in m for m in methods)  # the repaired split was exercised
    assert any("stratified" not in m for m in methods)  # and only when needed


def test_one_fold_is_refused(prior: QualityRouter) -> None:
    with pytest.raises(ValueError, match="at least 2 folds"):
        adapt(_ledger_like(10, 20, 10), prior, fake_embed, AdaptConfig(folds=1))


# --------------------------------------------------------------------------------------------- score scales


def test_a_judge_score_among_correctness_labels_is_refused(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": f"p{i}", "weak_score": 0 if i < 20 else 1, "strong_score": 1} for i in range(40)
    ]
    rows.append({"prompt": "x", "weak_score": 0, "strong_score": 2})
    with pytest.raises(ValueError, match=r"line 41: strong_score 2 is a 1-10 judge score, but line 1 .*'unknown'"):
        load_records(_write(tmp_path / "mixed.jsonl", rows))


def test_a_known_judge_benchmark_with_scores_below_one_is_refused(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "benchmark": "mt_bench", "weak_score": 0, "strong_score": 1}]
    with pytest.raises(ValueError, match=r"line 1: weak_score 0 is below 1, but benchmark 'mt_bench'"):
        load_records(_write(tmp_path / "judge.jsonl", rows))


def test_each_benchmark_keeps_its_own_scale(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "benchmark": "quiz", "weak_score": 0, "strong_score": 1},
        {"prompt": "b", "benchmark": "mt_bench", "weak_score": 1, "strong_score": 10},
        {"prompt": "c", "benchmark": "myjudge", "weak_score": 4, "strong_score": 7},
        {"prompt": "d", "benchmark": "quiz", "weak_score": 0.5, "strong_score": 1},
    ]
    recs = load_records(_write(tmp_path / "ok.jsonl", rows))
    assert [(r.weak, r.strong) for r in recs] == [(0.0, 1.0), (0.0, 1.0), (1 / 3, 2 / 3), (0.5, 1.0)]


@pytest.mark.parametrize(
    ("score", "message"), [(-0.5, "is not a score"), (11, "is not a score"), (True, "numbers"), ("1", "numbers")]
)
def test_a_score_outside_every_scale_is_refused(tmp_path: Path, score: object, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", ["", json.dumps({"prompt": "a", "weak_score": score, "strong_score": 1})])
    with pytest.raises(ValueError, match=f"line 2.*{message}"):
        load_records(path)
    nan = _write(tmp_path / "nan.jsonl", ['{"prompt": "a", "weak_score": NaN, "strong_score": 1}'])
    with pytest.raises(ValueError, match="line 1: weak_score nan is not a score"):
        load_records(nan)


def test_the_routellm_data_still_loads(tmp_path: Path) -> None:
    """RouteLLM's shared file (or, in a checkout without it, rows of its schema: MMLU's 0/1 beside MT-Bench's
    1-10 judge scores) loads with each benchmark on its own scale."""
    if REAL_DATA.exists():
        recs = load_records(REAL_DATA)
        assert len(recs) > 10_000
    else:
        rows = [{"prompt": f"q{i}", "benchmark": "mmlu", "weak_score": i % 2, "strong_score": 1} for i in range(20)]
        rows += [
            {"prompt": f"m{i}", "benchmark": "mt_bench", "weak_score": 1 + i % 9, "strong_score": 9} for i in range(20)
        ]
        recs = load_records(_write(tmp_path / "routellm.jsonl", [json.dumps(r) for r in rows]))
    assert all(0.0 <= r.weak <= 1.0 and 0.0 <= r.strong <= 1.0 for r in recs)
    judged = {r.weak for r in recs if r.benchmark == "mt_bench"}
    assert 8 / 9 in judged and 0.0 in judged  # 1-10 per benchmark: 9 -> 8/9, 1 -> 0
    assert {r.weak for r in recs if r.benchmark == "mmlu"} == {0.0, 1.0}


# ------------------------------------------------------------------------------------- line numbers in errors


def test_errors_name_the_file_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "a", "weak_score": 0, "strong_score": 1})
    path = _write(tmp_path / "x.jsonl", [good, "", "   ", '{"prompt": "b", "weak_score": 0, "strong_score": 1,}'])
    with pytest.raises(ValueError, match=r"line 4: invalid JSON \(.* at column 52\)"):
        load_records(path)
    with pytest.raises(ValueError, match="line 4: invalid JSON"):
        load_prompts(path)
    no_prompt = _write(tmp_path / "y.jsonl", [good, "", json.dumps({"text": "b"})])
    with pytest.raises(ValueError, match="line 3 has no string 'prompt' field"):
        load_prompts(no_prompt)
    with pytest.raises(ValueError, match="line 3 needs 'prompt'"):
        load_records(no_prompt)
    listed = _write(tmp_path / "z.jsonl", [good, "[1, 2]"])
    with pytest.raises(ValueError, match="line 2: each line must be a JSON object"):
        load_prompts(listed)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(good.encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match="line 2: not UTF-8 text"):
        load_prompts(latin)
    # valid JSON the CLI crashed on with a traceback: a lone surrogate (the tokenizer's TypeError) and an integer
    # score of 400 digits (float()'s OverflowError)
    surrogate = _write(tmp_path / "s.jsonl", [good, '{"prompt": "a\\ud800b", "weak_score": 0, "strong_score": 1}'])
    with pytest.raises(ValueError, match="line 2: 'prompt' holds a lone surrogate"):
        load_prompts(surrogate)
    with pytest.raises(ValueError, match="line 2: 'prompt' holds a lone surrogate"):
        load_records(surrogate)
    huge = _write(tmp_path / "h.jsonl", [good, '{"prompt": "b", "weak_score": 1' + "0" * 400 + ', "strong_score": 1}'])
    with pytest.raises(ValueError, match=r"line 2: weak_score 1000.* is not a score"):
        load_records(huge)
