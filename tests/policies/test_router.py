"""Tests for the learned quality router (metrics, training, artifact, calibration, CLI)."""

from __future__ import annotations

import json
import math
import re
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gateway.cli_router import router_app
from gateway.tokens import TiktokenCounter, load_tiktoken
from policies.router import features, metrics, plotting
from policies.router.data import load_records
from policies.router.model import QualityRouter
from policies.router.train import TrainConfig, train_router
from tests.helpers.tokens import cl100k_encode

_REPO = Path(__file__).resolve().parents[2]
_REL = Path("shared") / "data" / "routing" / "routellm_train.jsonl"
REAL_DATA = next((p for p in (_REPO / _REL, _REPO.parent / _REL) if p.exists()), _REPO / _REL)
_WORDS = "alpha beta gamma delta integral matrix poem story essay prove compute total".split()


def _synthetic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows in the training-file schema; 'hard' prompts are the ones the weak model fails."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        bench = ["mmlu", "gsm8k", "mt_bench"][i % 3]
        hard = bool(rng.random() < 0.4)
        words = " ".join(rng.choice(_WORDS, size=8).tolist())
        prompt = f"{'Prove that the integral of x^2 = 7 * 3' if hard else 'Write a short poem'} {words} {i}?"
        if bench == "mt_bench":
            weak, strong = (5.0, 9.0) if hard else (9.0, 9.0)
        else:
            weak, strong = (0.0, 1.0) if hard else (1.0, 1.0)
        item = f"mt_bench/{i // 2}/turn{i % 2 + 1}" if bench == "mt_bench" else f"{bench}/{i}"
        rows.append(
            {
                "benchmark": bench,
                "subset": "s",
                "item_id": item,
                "prompt": prompt,
                "weak_score": weak,
                "strong_score": strong,
            }
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows: a slice of the real training file when present, synthetic rows otherwise."""
    path = tmp_path_factory.mktemp("router") / "train.jsonl"
    if REAL_DATA.exists():
        with REAL_DATA.open(encoding="utf-8") as fh:
            lines = fh.readlines()
        picked = [lines[i] for i in np.random.default_rng(0).choice(len(lines), 300, replace=False)]
        path.write_text("".join(picked), encoding="utf-8")
        return path
    return _write_jsonl(path, _synthetic_rows(300))


@pytest.fixture(scope="module")
def trained(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    encoding = load_tiktoken().encoding
    train_router(small_data, out, TrainConfig(folds=3, min_df=2, max_iter=100), encoding=encoding)
    return out


# ---------------------------------------------------------------- metrics
def test_tiny_example_by_hand() -> None:
    # gains (strong - weak): +1, 0, +1, -1 -> total gap 1; order by score: p0, p2, p1, p3.
    weak, strong = [0, 1, 0, 1], [1, 1, 1, 0]
    curve = metrics.pgr_curve([0.9, 0.5, 0.8, 0.1], weak, strong)
    np.testing.assert_allclose(curve.shares, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.pgr, [0, 1, 2, 2, 1])
    # trapezoids: 0.25 * (0.5 + 1.5 + 2 + 1.5) = 1.375
    assert metrics.apgr(curve) == pytest.approx(1.375)
    assert metrics.cpt(curve, 0.5) == pytest.approx(0.125)
    assert metrics.cpt(curve, 0.8) == pytest.approx(0.2)
    # The perfect router orders by gain; here it is the same ordering.
    assert metrics.apgr(metrics.perfect_curve(weak, strong)) == pytest.approx(1.375)


def test_ties_are_random_in_expectation() -> None:
    rng = np.random.default_rng(1)
    weak = rng.integers(0, 2, 200).astype(float)
    strong = np.maximum(weak, rng.integers(0, 2, 200))
    curve = metrics.random_curve(weak, strong)
    np.testing.assert_allclose(curve.pgr, curve.shares, atol=1e-12)
    assert metrics.apgr(curve) == pytest.approx(0.5)
    assert metrics.cpt(curve, 0.5) == pytest.approx(0.5)


def test_random_orderings_average_half() -> None:
    rng = np.random.default_rng(2)
    weak = rng.integers(0, 2, 300).astype(float)
    strong = np.clip(weak + rng.integers(0, 2, 300), 0, 1)
    values = [metrics.apgr(metrics.pgr_curve(rng.random(300), weak, strong)) for _ in range(400)]
    assert np.mean(values) == pytest.approx(0.5, abs=0.01)


def test_perfect_router_is_the_bound() -> None:
    rng = np.random.default_rng(3)
    weak = (rng.random(500) < 0.4).astype(float)
    strong = (rng.random(500) < 0.7).astype(float)  # some prompts favour weak; the gap is positive
    best = metrics.apgr(metrics.perfect_curve(weak, strong))
    for _ in range(20):
        assert metrics.apgr(metrics.pgr_curve(rng.random(500), weak, strong)) <= best + 1e-12
    # With strong never worse, the oracle reaches PGR 1 at the share of prompts it helps on.
    strong = np.maximum(weak, strong)
    curve = metrics.perfect_curve(weak, strong)
    share = float(np.mean(strong > weak))
    assert metrics.cpt(curve, 1.0) == pytest.approx(share)
    assert metrics.apgr(curve) == pytest.approx(1 - share / 2)


# --------------------------------------------------------------- features
@pytest.fixture(scope="module")
def tokenizer() -> TiktokenCounter:
    return load_tiktoken()


def test_features_read_token_ids(tokenizer: TiktokenCounter) -> None:
    text = "Which is prime?\nA. 4\nB. 7\nC. 9"
    ids = tokenizer.encode(text)
    tokens, cues = features.analyze(text, ids)
    assert tokens == list(dict.fromkeys(ids))  # distinct, in the order they first occur
    assert features.token_value(4) == 0.5  # each of 4 in-vocabulary ids counts 1/sqrt(4)
    assert cues == pytest.approx([math.log1p(len(text)), math.log1p(len(ids)), 1.0], rel=1e-15)
    assert features.analyze("Name a prime. A. is fine", tokenizer.encode("Name a prime. A. is fine"))[1][2] == 0.0
    # Only the first MAX_TOKENS ids feed the token set; the length cues see the whole prompt.
    long_text = "word " * 5000 + "poem"
    long_ids = tokenizer.encode(long_text)
    long_tokens, long_cues = features.analyze(long_text, long_ids)
    assert long_tokens == list(dict.fromkeys(long_ids[: features.MAX_TOKENS]))
    assert long_cues[:2] == pytest.approx([math.log1p(len(long_text)), math.log1p(len(long_ids))], rel=1e-15)


def test_score_with_and_without_ids_agree(trained: Path, tokenizer: TiktokenCounter) -> None:
    router = QualityRouter.load(trained, encode=tokenizer.encode)
    for prompt in ("Say hi.", "Prove that sqrt(2) is irrational, step by step.", "", "日本語で答えて"):
        assert router.score(prompt) == router.score(prompt, tokenizer.encode(prompt))


def test_logit_is_the_linear_model_over_the_training_features(trained: Path, tokenizer: TiktokenCounter) -> None:
    # logit() reads the features training reads (analyze(), token_value()): the score is the linear model's.
    router = QualityRouter.load(trained, encode=tokenizer.encode)
    with np.load(trained / "router.npz") as npz:
        vocab = dict(zip(npz["vocab"].tolist(), npz["w_ngram"].tolist(), strict=True))
        w_cue, bias = npz["w_cue"].tolist(), float(npz["bias"][0])
    prompts = [
        "Say hi.",
        "Which is prime?\nA. 4\nB. 7\nC. 9\nD. 10",
        "Prove that sqrt(2) is irrational, step by step. " * 40,
        "the cat and the dog and the cat",  # repeated ids in a short prompt (found by scanning, not with a set)
        "no no no no " * 9,  # repeats on either side of the scan/set boundary
        "",
        "日本語で答えて",
    ]
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        tokens, cues = features.analyze(prompt, ids)
        weights = [vocab[t] for t in tokens if t in vocab]
        z = bias + (sum(weights) * features.token_value(len(weights)) if weights else 0.0)
        assert router.logit(prompt, ids) == z + sum(c * w for c, w in zip(cues, w_cue, strict=True)), prompt


# ---------------------------------------------------- training + artifact
def test_training_slice_produces_loadable_artifact(trained: Path, small_data: Path) -> None:
    router = QualityRouter.load(trained, encode=cl100k_encode)
    meta = router.metadata
    assert meta["training_data"]["rows"] == 300
    assert len(router.training_data_sha256) == 64
    assert "overall" in router.cv_metrics
    prompts = [r.prompt for r in load_records(small_data)[:50]]
    scores = router.score_many(prompts)
    assert scores.shape == (50,) and np.all((scores >= 0) & (scores <= 1))
    again = QualityRouter.load(trained, encode=cl100k_encode).score_many(prompts)
    np.testing.assert_array_equal(scores, again)


def test_training_is_deterministic(small_data: Path, trained: Path, tmp_path: Path) -> None:
    train_router(small_data, tmp_path, TrainConfig(folds=3, min_df=2, max_iter=100))
    a, b = np.load(trained / "router.npz"), np.load(tmp_path / "router.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_threshold_calibration(trained: Path) -> None:
    router = QualityRouter.load(trained, encode=cl100k_encode)
    with np.load(trained / "router.npz") as npz:
        scores, weights = npz["calib_scores"].astype(float), npz["calib_weights"].astype(float)
    for share in (0.1, 0.3, 0.5, 0.8):
        t = router.threshold_for_strong_share(share)
        # The smallest threshold-set reaching the share: >= t reaches it, > t does not.
        assert weights[scores >= t].sum() / weights.sum() >= share - 1e-6
        assert weights[scores > t].sum() / weights.sum() < share
    assert router.threshold_for_strong_share(0.0) == math.inf
    assert router.threshold_for_strong_share(1.0) == 0.0
    t80 = router.threshold_for_quality_target(0.8)
    curve = router.calibration_curve()
    reached = curve.pgr[curve.thresholds <= t80]
    assert reached.size and reached.max() >= 0.8 - 1e-9
    assert router.threshold_for_quality_target(0.5) >= t80


# ------------------------------------------------------- shipped artifact
def test_shipped_artifact_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    router = QualityRouter.load(encode=cl100k_encode)
    s = router.score("Solve for x: 3x^2 - 12 = 0. Show each step.")
    assert 0.0 <= s <= 1.0
    assert s == router.score("Solve for x: 3x^2 - 12 = 0. Show each step.")
    assert router.version and router.cv_metrics["overall"]["router"]["apgr"] > 0.5
    assert 0.0 <= router.score("") <= 1.0
    # Many calibration rows: the requested share is hit closely on the calibration data.
    calib = router.calibration_curve()
    for share in (0.2, 0.5):
        t = router.threshold_for_strong_share(share)
        assert float(calib.shares[calib.thresholds >= t].max()) == pytest.approx(share, abs=0.005)


# -------------------------------------------------------------------- CLI
def test_cli_commands(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    rows = _synthetic_rows(30, seed=5)
    data = _write_jsonl(tmp_path / "tiny.jsonl", rows)

    res = runner.invoke(router_app, ["score", "--data", str(data), "--artifact", str(trained)])
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in res.output.splitlines()]
    assert len(out) == 30 and all(0.0 <= o["score"] <= 1.0 for o in out)

    png = tmp_path / "pgr.png"
    res = runner.invoke(router_app, ["eval", "--data", str(data), "--artifact", str(trained), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "APGR" in res.output and "overall" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    art = tmp_path / "art"
    res = runner.invoke(router_app, ["train", "--data", str(data), "--out", str(art), "--folds", "2"])
    assert res.exit_code == 0, res.output
    assert QualityRouter.load(art, encode=cl100k_encode).metadata["training_data"]["rows"] == 30


def test_plots_are_an_optional_extra(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_jsonl(tmp_path / "tiny.jsonl", _synthetic_rows(30, seed=5))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    runner = CliRunner()
    png = tmp_path / "pgr.png"
    res = runner.invoke(router_app, ["eval", "--data", str(data), "--artifact", str(trained), "--plot", str(png)])
    assert res.exit_code == 2
    assert "pip install 'llm-hybrid-gateway[plot]'" in res.output and "--no-plot" in res.output
    assert "APGR" not in res.output and not png.exists()  # refused before the evaluation ran
    res = runner.invoke(router_app, ["eval", "--data", str(data), "--artifact", str(trained), "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "APGR" in res.output and not png.exists()
    with pytest.raises(plotting.PlottingUnavailable, match=re.escape(plotting.INSTALL)):
        plotting.pyplot()
