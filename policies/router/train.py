"""Train the quality router: features, logistic model, grouped cross-validation, calibration.

Recipe (see :class:`TrainConfig`): a vocabulary of tiktoken ids + length and multiple-choice cues
(:mod:`policies.router.features`) and an L2 logistic regression on "the strong answer is better than the
weak one" (optionally mixed with "the weak answer fails"). Grouped CV on routellm_train.jsonl chose natural
per-prompt weights: re-weighting benchmarks towards equal shares overfits the 120 MT-Bench rows and lowers APGR.
Out-of-fold scores from grouped k-fold CV give the honest metrics and the calibration table
(score distribution + PGR curve) stored in the artifact. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from policies.router import features, metrics
from policies.router.anchors import ANCHOR_BENCHMARK, anchor_records
from policies.router.data import Record, file_sha256, group_ids, grouped_folds, load_records
from policies.router.linear import Design, LinearFit, fit_logistic
from policies.router.store import write_atomically

if TYPE_CHECKING:
    from tiktoken import Encoding

FloatArray = NDArray[np.float64]

__all__ = [
    "ARTIFACT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "benchmark_report",
    "cross_val_scores",
    "sample_weights",
    "targets",
    "train_router",
]

#: Bumped whenever the artifact layout or the featurisation changes incompatibly
#: (2: distinct cl100k_base token ids and three cues, read from the ids the gateway counts with).
ARTIFACT_FORMAT = 2
#: The tiktoken encoding whose ids the router reads (the gateway's token counter uses the same).
ENCODING = "cl100k_base"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the training recipe (stored in the artifact's metadata)."""

    seed: int = 0
    folds: int = 5
    min_df: int = 3
    max_features: int = 30_000
    l2_sparse: float = 1e-4
    l2_dense: float = 1e-3
    #: weight of the "weak answer fails" label in the soft target (rest: "strong is better").
    weak_fail_mix: float = 0.0
    #: normalised quality gap above which the strong answer counts as better (judge: 0.5/9).
    better_margin: float = 0.05
    #: normalised weak quality below which the weak answer counts as failed (judge: < 8/10).
    weak_fail_below: float = 0.75
    #: training: per-benchmark total weight is proportional to ``count ** benchmark_power``.
    benchmark_power: float = 1.0
    #: calibration table: the same, for the score distribution / PGR curve (0 = benchmarks equal,
    #: 1 = per prompt); 0.5 keeps MMLU from dominating without resting a third on 120 MT-Bench rows.
    calibration_power: float = 0.5
    max_iter: int = 300
    #: add the anchor rows of :mod:`policies.router.anchors` (easy arithmetic, proofs) to the training data.
    anchors: bool = True
    #: weight of each anchor row relative to a benchmark prompt's.
    anchor_weight: float = 4.0


@dataclass(frozen=True)
class TrainResult:
    """Where the artifact went and the cross-validated metrics stored with it."""

    out_dir: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Featurised:
    grams: list[list[int]]
    cues: FloatArray


@dataclass(frozen=True)
class _Fitted:
    vocab: list[int]
    cue_mean: FloatArray
    cue_std: FloatArray
    fit: LinearFit


def targets(records: Sequence[Record], config: TrainConfig) -> FloatArray:
    """Soft training target in [0, 1]: higher = the strong model is more needed."""
    weak = np.array([r.weak for r in records])
    strong = np.array([r.strong for r in records])
    better = (strong - weak > config.better_margin).astype(np.float64)
    fails = (weak < config.weak_fail_below).astype(np.float64)
    return np.asarray((1.0 - config.weak_fail_mix) * better + config.weak_fail_mix * fails)


def sample_weights(records: Sequence[Record], power: float) -> FloatArray:
    """Weights (mean 1) giving each benchmark total weight proportional to ``count ** power``."""
    counts = Counter(r.benchmark for r in records)
    w = np.array([counts[r.benchmark] ** power / counts[r.benchmark] for r in records])
    return np.asarray(w / w.mean())


def _weights(records: Sequence[Record], config: TrainConfig) -> FloatArray:
    """Training weights: :func:`sample_weights`, the anchor rows times ``config.anchor_weight`` (mean 1)."""
    w = sample_weights(records, config.benchmark_power)
    w = np.where([r.benchmark == ANCHOR_BENCHMARK for r in records], w * config.anchor_weight, w)
    return np.asarray(w / w.mean())


def load_encoding(name: str = ENCODING) -> Encoding:
    """The tiktoken encoding ``name``. Offline only where ``TIKTOKEN_CACHE_DIR`` points at a copy of it
    (``gateway.tokens.load_counter`` points it at litellm's bundled one)."""
    import tiktoken

    return tiktoken.get_encoding(name)


def _featurise(records: Sequence[Record], encoding: Encoding) -> _Featurised:
    grams: list[list[int]] = []
    cues = np.empty((len(records), len(features.CUE_NAMES)))
    for i, rec in enumerate(records):
        g, c = features.analyze(rec.prompt, encoding.encode_ordinary(rec.prompt))
        grams.append(g)
        cues[i] = c
    return _Featurised(grams=grams, cues=cues)


def _design(feats: _Featurised, rows: NDArray[np.int64], vocab: list[int], mean: FloatArray, std: FloatArray) -> Design:
    index = {g: j for j, g in enumerate(vocab)}
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for i in rows:
        ids = sorted(index[g] for g in feats.grams[i] if g in index)
        indices.extend(ids)
        if ids:  # a prompt with no in-vocabulary token ("Hi") has only its cues
            values.extend([features.token_value(len(ids))] * len(ids))
        indptr.append(len(indices))
    return Design(
        indptr=np.array(indptr, dtype=np.int64),
        indices=np.array(indices, dtype=np.int64),
        values=np.array(values, dtype=np.float64),
        n_sparse=len(vocab),
        dense=(feats.cues[rows] - mean) / std,
    )


def _fit(feats: _Featurised, rows: NDArray[np.int64], y: FloatArray, w: FloatArray, config: TrainConfig) -> _Fitted:
    vocab = features.build_vocabulary((feats.grams[i] for i in rows), config.min_df, config.max_features)
    mean = feats.cues[rows].mean(axis=0)
    std = feats.cues[rows].std(axis=0) + 1e-6
    design = _design(feats, rows, vocab, mean, std)
    fit = fit_logistic(design, y[rows], w[rows], config.l2_sparse, config.l2_dense, max_iter=config.max_iter)
    return _Fitted(vocab=vocab, cue_mean=mean, cue_std=std, fit=fit)


def _predict(model: _Fitted, feats: _Featurised, rows: NDArray[np.int64]) -> FloatArray:
    z = model.fit.decision(_design(feats, rows, model.vocab, model.cue_mean, model.cue_std))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def cross_val_scores(
    records: Sequence[Record],
    config: TrainConfig,
    feats: _Featurised | None = None,
    encoding: Encoding | None = None,
) -> FloatArray:
    """Out-of-fold scores from grouped k-fold CV (groups: item turns and duplicate prompts)."""
    if feats is None:
        encoding = encoding if encoding is not None else load_encoding()
        feats = _featurise(records, encoding)
    folds = grouped_folds(group_ids(records), config.folds, config.seed)
    y = targets(records, config)
    w = _weights(records, config)
    oof = np.zeros(len(records))
    for k in range(config.folds):
        train_rows = np.nonzero(folds != k)[0]
        test_rows = np.nonzero(folds == k)[0]
        if test_rows.size == 0 or train_rows.size == 0:
            continue
        oof[test_rows] = _predict(_fit(feats, train_rows, y, w, config), feats, test_rows)
    return oof


def _metrics_dict(m: metrics.RouterMetrics) -> dict[str, float]:
    return {"apgr": round(m.apgr, 4), "cpt50": round(m.cpt50, 4), "cpt80": round(m.cpt80, 4)}


def benchmark_report(records: Sequence[Record], scores: FloatArray) -> dict[str, dict[str, Any]]:
    """Router, random and perfect-router metrics per benchmark and ``overall`` (all prompts pooled)."""
    benches = sorted({r.benchmark for r in records})
    weak = np.array([r.weak for r in records])
    strong = np.array([r.strong for r in records])
    names = np.array([r.benchmark for r in records])
    report: dict[str, dict[str, Any]] = {}
    for name in [*benches, "overall"]:
        m = np.ones(len(records), dtype=bool) if name == "overall" else names == name
        wq, sq = weak[m], strong[m]
        report[name] = {
            "n": int(m.sum()),
            "weak_quality": round(float(wq.mean()), 4),
            "strong_quality": round(float(sq.mean()), 4),
            "router": _metrics_dict(metrics.summarize(metrics.pgr_curve(scores[m], wq, sq), wq, sq)),
            "random": _metrics_dict(metrics.summarize(metrics.random_curve(wq, sq), wq, sq)),
            "perfect": _metrics_dict(metrics.summarize(metrics.perfect_curve(wq, sq), wq, sq)),
        }
    return report


def train_router(
    data: Path,
    out_dir: Path,
    config: TrainConfig | None = None,
    version: str = "2",
    encoding: Encoding | None = None,
) -> TrainResult:
    """Train on ``data`` (JSONL outcome records) and write ``router.npz`` + ``router.json`` to ``out_dir``.

    Runs grouped k-fold CV first (out-of-fold scores: metrics + calibration table), then fits the
    final model on all rows. ``encoding``: the tiktoken ``cl100k_base`` encoding (loaded when omitted).
    """
    config = config or TrainConfig()
    records = load_records(data)
    if config.anchors:
        records = records + anchor_records()
    if len(records) < 2 * config.folds:
        raise ValueError(f"need at least {2 * config.folds} records, got {len(records)}")
    encoding = encoding if encoding is not None else load_encoding()
    if encoding.name != ENCODING:
        raise ValueError(f"the router reads {ENCODING} ids, not {encoding.name}")
    feats = _featurise(records, encoding)
    oof = cross_val_scores(records, config, feats)
    # The figures and the calibration table are the benchmarks' (the anchors only teach).
    real = np.array([r.benchmark != ANCHOR_BENCHMARK for r in records])
    bench_records = [r for r in records if r.benchmark != ANCHOR_BENCHMARK]
    report = benchmark_report(bench_records, oof[real])

    all_rows = np.arange(len(records), dtype=np.int64)
    y = targets(records, config)
    w = _weights(records, config)
    final = _fit(feats, all_rows, y, w, config)
    # Fold the cue standardisation into the weights and bias: z = cues @ w_c + bias.
    w_cue = final.fit.w_dense / final.cue_std
    bias = final.fit.bias - float(np.dot(final.cue_mean, w_cue))

    arrays = dict(
        vocab=np.array(final.vocab, dtype=np.int64),
        w_ngram=final.fit.w_sparse.astype(np.float32),
        w_cue=w_cue,
        bias=np.array([bias]),
        calib_scores=oof[real].astype(np.float32),
        calib_weights=sample_weights(bench_records, config.calibration_power).astype(np.float32),
        calib_weak=np.array([r.weak for r in bench_records], dtype=np.float32),
        calib_strong=np.array([r.strong for r in bench_records], dtype=np.float32),
    )
    metadata: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "version": version,
        "model": "logistic(distinct token ids + cues)",
        "training_data": {
            "file": data.name,
            "sha256": file_sha256(data),
            "rows": len(bench_records),
            "anchor_rows": len(records) - len(bench_records),
            "benchmarks": dict(sorted(Counter(r.benchmark for r in bench_records).items())),
        },
        "config": asdict(config),
        "features": {
            "encoding": ENCODING,
            "n_vocab": encoding.n_vocab,
            "cue_names": list(features.CUE_NAMES),
            "max_tokens": features.MAX_TOKENS,
            "vocab_size": len(final.vocab),
        },
        "fit": {"iterations": final.fit.iterations, "loss": round(final.fit.loss, 6)},
        "calibration": "out-of-fold scores of the training prompts, weights per calibration_power",
        "cv_metrics": report,
    }

    def write(tmp: Path) -> None:
        np.savez_compressed(tmp / "router.npz", **arrays)
        (tmp / "router.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    # Both files into place together (router.json, read first, last): a reader never sees one without the other.
    write_atomically(out_dir, ("router.npz", "router.json"), write)
    return TrainResult(out_dir=out_dir, metadata=metadata)
