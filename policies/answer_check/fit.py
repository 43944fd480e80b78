"""Fit the answer check's weights and calibrate its thresholds on labelled answers (numpy; offline only).

Input: JSONL rows ``{"prompt", "answer", "weak_score", "strong_score"}`` (optionally ``"logprobs"`` and
``"finish_reason"``; ``bench/cascade_data.py`` builds such a file from AlpacaEval's published results), where
``answer`` is the local (weak) model's answer and the scores are both models' quality on the prompt. The label
is whether the strong model did better (``strong_score > weak_score``): the escalations that pay.

Two logistic heads are fitted, with and without the prompt router's score (the gateway passes it when it has
one). Calibration follows the prompt router's recipe: grouped k-fold out-of-fold scores of the training rows
give the PGR curve of escalating by the score, and each quality target (share of the weak-strong gap
recovered) maps to the threshold that first reaches it. Only the weights, the normalisation and the
threshold table are stored: no row of the data.

    python -m policies.answer_check.fit --data train.jsonl --out policies/answer_check/artifacts
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.answer_check.features import FEATURE_NAMES, ROUTER_INDEX, Priors, feature_vector, prior_logit
from policies.answer_check.model import ARTIFACT_FORMAT, ARTIFACT_NAME, TARGET_STEPS
from policies.answer_check.signals import text_signals
from policies.router.curve import first_reaching, pgr_points
from policies.router.data import file_sha256

__all__ = ["FitConfig", "LabelledAnswer", "fit_artifact", "load_labelled", "out_of_fold_logits"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class LabelledAnswer:
    """One prompt, the local model's answer, and both models' quality on it."""

    prompt: str
    answer: str
    weak: float
    strong: float
    router_score: float | None = None


@dataclass(frozen=True)
class FitConfig:
    """The recipe (stored in the artifact)."""

    l2: float = 1.0
    folds: int = 5
    seed: int = 0
    max_iter: int = 100


def load_labelled(path: Path) -> list[LabelledAnswer]:
    """Read labelled answers (scores above 1 are judge scores on 1-10 and are mapped to [0, 1])."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                ws, ss = float(row["weak_score"]), float(row["strong_score"])
                prompt, answer = str(row["prompt"]), str(row["answer"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{i + 1}: needs prompt, answer, weak_score, strong_score") from exc
            if max(ws, ss) > 1.0:
                ws, ss = (ws - 1.0) / 9.0, (ss - 1.0) / 9.0
            out.append(LabelledAnswer(prompt, answer, ws, ss))
    return out


def design_matrix(rows: Sequence[LabelledAnswer], router_scores: Sequence[float] | None) -> FloatArray:
    """One row of :data:`FEATURE_NAMES` per answer."""
    return np.array(
        [
            feature_vector(text_signals(r.prompt, r.answer), None if router_scores is None else router_scores[i])
            for i, r in enumerate(rows)
        ],
        dtype=np.float64,
    )


def _fit_logistic(x: FloatArray, y: FloatArray, l2: float, max_iter: int) -> tuple[FloatArray, float]:
    """L2-regularised logistic regression by Newton's method (x already standardised; bias not penalised)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w[:-1], float(w[-1])


@dataclass(frozen=True)
class Head:
    """Standardisation and weights of one logistic head over the columns it uses."""

    columns: list[int]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def logits(self, x: FloatArray) -> FloatArray:
        cols = x[:, self.columns]
        z = (cols - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(z @ np.asarray(self.weights) + self.bias, dtype=np.float64)


def fit_head(x: FloatArray, y: FloatArray, columns: list[int], config: FitConfig) -> Head:
    """Fit one head on the given feature columns."""
    cols = x[:, columns]
    mean = cols.mean(axis=0)
    scale = cols.std(axis=0)
    scale[scale < 1e-9] = 1.0
    w, b = _fit_logistic((cols - mean) / scale, y, config.l2, config.max_iter)
    return Head(columns, mean.tolist(), scale.tolist(), w.tolist(), b)


def _folds(rows: Sequence[LabelledAnswer], k: int, seed: int) -> NDArray[np.int64]:
    """Fold per row, identical prompts kept together."""
    keys: dict[str, int] = {}
    groups = np.array([keys.setdefault(" ".join(r.prompt.lower().split()), len(keys)) for r in rows])
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(keys), dtype=np.int64)
    fold_of_group[rng.permutation(len(keys))] = np.arange(len(keys)) % k
    return np.asarray(fold_of_group[groups], dtype=np.int64)


def labels(rows: Sequence[LabelledAnswer]) -> FloatArray:
    """1 where the strong model's answer was better."""
    return np.array([1.0 if r.strong > r.weak else 0.0 for r in rows])


def out_of_fold_logits(
    x: FloatArray, y: FloatArray, columns: list[int], folds: NDArray[np.int64], config: FitConfig
) -> FloatArray:
    """Each row's logit from the head fitted on the other folds."""
    out = np.empty(len(y))
    for f in np.unique(folds):
        test = folds == f
        head = fit_head(x[~test], y[~test], columns, config)
        out[test] = head.logits(x[test])
    return out


def threshold_table(
    scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]
) -> dict[str, list[float | None]]:
    """For each quality target in 0, 1/TARGET_STEPS, ..., 1: the threshold whose PGR first reaches it and the
    share of answers escalated there (the prompt router's calibration, with fixed targets)."""
    points = pgr_points(scores, weak, strong)
    thresholds: list[float | None] = []  # None: infinity (never escalate), which JSON cannot hold
    shares: list[float | None] = []
    for k in range(TARGET_STEPS + 1):
        target = k / TARGET_STEPS
        hit = first_reaching(points.pgr, target) if target > 0 else 0
        if hit is None:
            thresholds.append(0.0)
            shares.append(1.0)
        elif hit == 0:
            thresholds.append(None)
            shares.append(0.0)
        else:
            t = points.thresholds[hit]
            thresholds.append(None if math.isinf(t) else t)
            shares.append(points.shares[hit])
    return {"thresholds": thresholds, "escalation_share": shares}


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _apgr(scores: FloatArray, weak: FloatArray, strong: FloatArray) -> float:
    from policies.router import metrics

    return metrics.apgr(metrics.pgr_curve(scores, weak, strong))


def fit_artifact(
    rows: Sequence[LabelledAnswer],
    router_scores: Sequence[float],
    config: FitConfig,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Fit both heads, calibrate them on out-of-fold scores, and return the artifact as a JSON-able dict."""
    y = labels(rows)
    weak = np.array([r.weak for r in rows])
    strong = np.array([r.strong for r in rows])
    x = design_matrix(rows, router_scores)
    priors = Priors()
    prior_z = np.array([prior_logit(priors, text_signals(r.prompt, r.answer), None, None)[0] for r in rows])
    folds = _folds(rows, config.folds, config.seed)
    text_cols = [i for i in range(len(FEATURE_NAMES)) if i != ROUTER_INDEX]
    heads: dict[str, Any] = {}
    for name, cols in (("with_router", list(range(len(FEATURE_NAMES)))), ("answer_only", text_cols)):
        oof = _sigmoid(out_of_fold_logits(x, y, cols, folds, config) + prior_z)
        head = fit_head(x, y, cols, config)
        heads[name] = {
            "features": [FEATURE_NAMES[c] for c in cols],
            "mean": head.mean,
            "scale": head.scale,
            "weights": head.weights,
            "bias": head.bias,
            "calibration": threshold_table(oof.tolist(), weak.tolist(), strong.tolist()),
            "cv_apgr": round(_apgr(oof, weak, strong), 4),
        }
    return {
        "format": ARTIFACT_FORMAT,
        "model": "logistic(text signals [+ prompt router logit]) + priors",
        "label": "strong_score > weak_score",
        "config": asdict(config),
        "priors": asdict(priors),
        "heads": heads,
        "training_data": {
            **provenance,
            "rows": len(rows),
            "weak_quality": round(float(weak.mean()), 4),
            "strong_quality": round(float(strong.mean()), 4),
            "escalations_that_pay": round(float(y.mean()), 4),
        },
        "router_apgr": round(_apgr(np.asarray(router_scores, dtype=np.float64), weak, strong), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: fit on ``--data`` and write ``answer_check.json`` into ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="artifact directory")
    ap.add_argument("--source", default="", help="where the data came from (stored as provenance)")
    ap.add_argument("--licence", default="", help="the data's licence (stored as provenance)")
    ap.add_argument("--l2", type=float, default=FitConfig.l2)
    ap.add_argument("--folds", type=int, default=FitConfig.folds)
    ap.add_argument("--seed", type=int, default=FitConfig.seed)
    args = ap.parse_args(argv)

    from gateway.tokens import load_tiktoken
    from policies.router.model import QualityRouter

    rows = load_labelled(args.data)
    router = QualityRouter.load(None, encode=load_tiktoken("cl100k_base").encode)
    router_scores = [router.score(r.prompt) for r in rows]
    provenance = {
        "file": args.data.name,
        "sha256": file_sha256(args.data),
        "source": args.source,
        "licence": args.licence,
        "router_artifact_version": router.version,
    }
    artifact = fit_artifact(rows, router_scores, FitConfig(args.l2, args.folds, args.seed), provenance)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ARTIFACT_NAME
    path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for name, head in artifact["heads"].items():
        print(f"{name}: cross-validated APGR {head['cv_apgr']:.3f}")
    print(f"prompt router alone: APGR {artifact['router_apgr']:.3f}; artifact written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
