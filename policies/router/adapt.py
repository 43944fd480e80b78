"""Adapt the quality router to a deployment: a small model on top of the shipped prior, fitted on its labels.

A deployment's labels are rows ``{"prompt", "weak_score", "strong_score"}`` (the RouteLLM data's fields;
judge verdicts, feedback or benchmark outcomes; scores 0/1 or in [0, 1]). The adapted router is a logistic
regression on two feature blocks:

* the prior's logit (:meth:`QualityRouter.logit`), which carries what the benchmark data taught it;
* a prompt vector (384 dimensions, unit length), recorded in the artifact as ``embedding.vector``:
  ``minilm``, the all-MiniLM-L6-v2 sentence embedding the semantic cache computes for the same text (a request
  is embedded once for both), or ``minilm-static``, the mean of MiniLM's embedding-layer rows for the prompt's
  word pieces (:mod:`cache.minilm_static`: no transformer, ~0.1 ms; as good for routing within noise on
  AlpacaEval labels, ``bench/RESULTS.md``), for routes that do not share the cache's vector.

The target is "the strong answer is better than the weak one" (``strong - weak > margin``; the gap itself as
a sample weight, so near-ties weigh little). Out-of-fold scores of k-fold cross-validation on the labels give
the held-out figures (APGR, CPT, cost saved at 95% of the strong model's quality) and the calibration table
from which a route's ``quality_target`` becomes a threshold, on the deployment's own traffic.

API: :func:`adapt` (rows + prior + embedder -> :class:`AdaptedRouter`), :meth:`AdaptedRouter.save`,
:func:`load_artifact` (either kind of artifact directory). Serving reads only numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.router import metrics
from policies.router.adapted_checks import (
    ADAPTED_FORMAT,
    ARTIFACT_FILES,
    NPZ,
    PRIOR,
    VECTOR_DIMS,
    VECTORS,
    check_meta,
    read_weights,
)
from policies.router.curve import CurvePoints, pgr_points
from policies.router.data import Record
from policies.router.linear import Design, fit_logistic
from policies.router.loader import ADAPTED_JSON
from policies.router.model import ARTIFACT_DIR, QualityRouter
from policies.router.store import write_atomically

__all__ = [
    "ADAPTED_FORMAT",
    "ARTIFACT_FILES",
    "VECTORS",
    "AdaptConfig",
    "AdaptedRouter",
    "Embed",
    "adapt",
    "load_adapted",
    "prompt_embed",
    "recorded_vector",
    "saved_at_quality",
]

FloatArray = NDArray[np.float64]
#: Texts -> unit vectors (rows of a float32 matrix), e.g. ``cache.minilm.MiniLMEmbedder.embed``.
Embed = Callable[[list[str]], NDArray[np.float32]]

#: The embedding the adapted router reads (the semantic cache's model).
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters of adaptation (stored in the artifact)."""

    folds: int = 5
    seed: int = 0
    #: L2 penalty on the scaled features (mean log-loss scale; chosen on AlpacaEval labels, 10 random splits).
    l2: float = 3.0
    #: the prior's logit is scaled by this before the fit (a larger scale = a weaker penalty on it).
    prior_scale: float = 3.0
    #: normalised quality gap above which the strong answer counts as better.
    better_margin: float = 0.0
    #: the embedding reads at most this many word pieces of the prompt (long prompts are truncated).
    embed_max_tokens: int = 128
    #: which prompt vector the router reads (one of :data:`VECTORS`).
    vector: str = "minilm"
    #: the operating point whose cost saving the held-out figures report (share of the strong quality).
    report_quality: float = 0.95
    max_iter: int = 400


@dataclass(frozen=True)
class _Linear:
    w_prior: float
    w_embed: NDArray[np.float32]
    bias: float
    #: the embedding term at the training prompts' mean vector: stands in when a request has no vector.
    embed_mean: float = 0.0


def saved_at_quality(scores: Sequence[float] | FloatArray, weak: FloatArray, strong: FloatArray, share: float) -> float:
    """Share of the all-strong cost saved (1 - strong-call share) at the fewest strong calls whose mean served
    quality reaches ``share`` of the strong model's mean quality (weak calls counted free); 0 when never."""
    goal = share * float(strong.mean())
    points = pgr_points(list(map(float, scores)), weak.tolist(), strong.tolist())
    base = float(weak.mean())
    gap = float(strong.mean()) - base
    for x, pgr in zip(points.shares, points.pgr, strict=True):
        quality = base if gap <= 0 or math.isnan(pgr) else base + pgr * gap
        if quality >= goal - 1e-12:
            return 1.0 - x
    return 0.0


def _held_out(scores: FloatArray, weak: FloatArray, strong: FloatArray, quality: float) -> dict[str, float | None]:
    curve = metrics.pgr_curve(scores, weak, strong)
    saved = round(saved_at_quality(scores, weak, strong, quality), 4)
    if np.isnan(curve.pgr[0]):
        # No gap: the weak model alone serves weak + p * (strong - weak), so every CPT is 0; APGR, an area of
        # ratios to a gap that does not exist, has no value (None, not NaN: the artifact stays valid JSON).
        return {"apgr": None, "cpt50": 0.0, "cpt80": 0.0, f"saved_at_{round(100 * quality)}": saved}
    m = metrics.summarize(curve, weak, strong)
    return {
        "apgr": round(m.apgr, 4),
        "cpt50": round(m.cpt50, 4),
        "cpt80": round(m.cpt80, 4),
        f"saved_at_{round(100 * quality)}": saved,
    }


def _no_gap_note(weak: FloatArray, strong: FloatArray) -> str | None:
    """What the figures mean when the strong model is not better on average (None when it is)."""
    if math.fsum(strong - weak) > 0:
        return None
    return (
        f"the weak model is at least as good as the strong one on these labels (mean quality {weak.mean():.3f} vs "
        f"{strong.mean():.3f}): every quality_target is met without the strong model, so such routes send it "
        "nothing (a strong_share route still sends its share, highest scores first); APGR is undefined"
    )


def _features(prior_logits: FloatArray, vectors: NDArray[np.float32]) -> FloatArray:
    return np.column_stack((prior_logits, vectors.astype(np.float64)))


def _fit(x: FloatArray, y: FloatArray, w: FloatArray, config: AdaptConfig) -> _Linear:
    # Centred; the prior's logit is scaled to unit variance times ``prior_scale`` (a weaker penalty on it), the
    # embedding block as a whole to unit mean variance (its dimensions keep their relative scales).
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-9
    scale = np.full(x.shape[1], 1.0 / float(np.sqrt(np.mean(std[1:] ** 2))))
    scale[0] = config.prior_scale / std[0]
    n = x.shape[0]
    design = Design(
        indptr=np.zeros(n + 1, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int64),
        values=np.zeros(0),
        n_sparse=0,
        dense=(x - mean) * scale,
    )
    fit = fit_logistic(design, y, w, 0.0, config.l2, max_iter=config.max_iter)
    coef = fit.w_dense * scale  # folded back to raw features: z = x @ coef + bias
    bias = fit.bias - float(np.dot(mean, coef))
    w_embed = coef[1:].astype(np.float32)
    return _Linear(float(coef[0]), w_embed, float(bias), float(np.dot(mean[1:], coef[1:])))


def _targets(weak: FloatArray, strong: FloatArray, margin: float) -> tuple[FloatArray, FloatArray]:
    gap = strong - weak
    y = (gap > margin).astype(np.float64)
    w = np.abs(gap) + 0.1  # near-ties say little about which prompts need the strong model
    return y, w / w.mean()


def _prompt_groups(prompts: Sequence[str]) -> NDArray[np.int64]:
    """Group per row: identical prompts (after whitespace/case folding) share one."""
    keys: dict[str, int] = {}
    return np.array([keys.setdefault(" ".join(p.lower().split()), len(keys)) for p in prompts], dtype=np.int64)


def _folds(groups: NDArray[np.int64], y: FloatArray, k: int, seed: int) -> tuple[NDArray[np.int64], bool]:
    """Fold per row (a group's rows share a fold) and whether the folds had to be stratified by outcome.

    Groups are dealt to folds in a random order. When that leaves a training part with one outcome only (the
    rarer outcome's prompts all fell in one fold: that fold would get no scores), the groups holding the rarer
    outcome are dealt first, in the same order, so that they spread over as many folds as they can."""
    n_groups = int(groups.max()) + 1
    order = np.random.default_rng(seed).permutation(n_groups)
    folds = _deal(order, groups, k)
    if _trainable(folds, y, k):
        return folds, False
    rare = 0.0 if y.mean() > 0.5 else 1.0
    has_rare = np.zeros(n_groups, dtype=bool)
    has_rare[groups[y == rare]] = True
    return _deal(order[np.argsort(~has_rare[order], kind="stable")], groups, k), True


def _deal(order: NDArray[np.int64], groups: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """Fold per row when the groups, taken in ``order``, go to folds 0, 1, ..., k - 1, 0, 1, ..."""
    fold_of_group = np.empty(order.size, dtype=np.int64)
    fold_of_group[order] = np.arange(order.size) % k
    return fold_of_group[groups]


def _both_outcomes(y: FloatArray) -> bool:
    return bool(y.size) and float(y.min()) != float(y.max())


def _trainable(folds: NDArray[np.int64], y: FloatArray, k: int) -> bool:
    """Whether every fold's training part (the other folds' rows) holds both outcomes."""
    return all(_both_outcomes(y[folds != fold]) for fold in range(k))


def _check_outcomes(groups: NDArray[np.int64], y: FloatArray, folds: NDArray[np.int64], k: int) -> None:
    """Refuse labels whose cross-validation would fit a fold on one outcome only (its rows would get no score)."""
    for outcome, what in ((1.0, "better"), (0.0, "not better")):
        distinct = np.unique(groups[y == outcome]).size
        if distinct < 2:
            raise ValueError(
                f"the labels have only {distinct} distinct prompt where the strong model is {what} than the weak "
                "one: cross-validation needs at least 2 of each (label more prompts)"
            )
    if not _trainable(folds, y, k):
        raise ValueError(
            f"the labels' prompts cannot be split into {k} folds whose training parts all hold both outcomes "
            "(label more prompts, or pass fewer folds)"
        )


class AdaptedRouter:
    """The prior plus a deployment-fitted layer: prompt (+ its embedding) -> score in [0, 1].

    Same calibration interface as :class:`QualityRouter` (``threshold_for_quality_target`` ...), calibrated on
    the deployment's labels. :meth:`score` embeds the prompt itself when no vector is given; the gateway
    passes the vector it computed once for the request (:attr:`needs_embedding`).
    """

    needs_embedding = True

    def __init__(
        self,
        prior: QualityRouter,
        linear: _Linear,
        calibration: tuple[FloatArray, FloatArray, FloatArray],
        metadata: dict[str, Any],
        embed: Embed | None = None,
    ) -> None:
        """Build from parts; :func:`adapt` fits one and :func:`load_artifact` reads one."""
        self.prior = prior
        self._linear = linear
        self._w_embed64 = linear.w_embed.astype(np.float64)
        self._calib = calibration
        self._points: CurvePoints | None = None
        self.embed = embed
        self.metadata: dict[str, Any] = metadata

    # ------------------------------------------------------------------ metadata
    @property
    def version(self) -> str:
        """Artifact version: ``adapted-`` and the first 12 hex digits of the training labels' hash."""
        return str(self.metadata.get("version", "adapted"))

    @property
    def vector(self) -> str:
        """The prompt vector the router reads (one of :data:`VECTORS`; ``minilm`` for artifacts that predate it)."""
        return str(self.metadata.get("embedding", {}).get("vector", "minilm"))

    @property
    def embed_max_tokens(self) -> int:
        """The word pieces of the prompt its vector was computed from in training (the gateway must read as many)."""
        return int(self.metadata.get("embedding", {}).get("max_tokens", AdaptConfig.embed_max_tokens))

    @property
    def held_out(self) -> dict[str, Any]:
        """Cross-validated figures on the deployment's labels (adapted, frozen prior, random)."""
        result: dict[str, Any] = self.metadata.get("held_out", {})
        return result

    # ------------------------------------------------------------------- scoring
    def logit(self, prompt: str, ids: Sequence[int] | None = None, vector: NDArray[np.float32] | None = None) -> float:
        """Linear score (monotone in :meth:`score`); ``vector``: the prompt's unit embedding, when known.

        Without a vector the attached embedder computes one; without an embedder (the gateway never attaches
        one: embedding happens off the event loop) the training prompts' mean embedding stands in."""
        lin = self._linear
        if vector is None and self.embed is not None:
            vector = self.embed([prompt])[0]
        if vector is not None and np.shape(vector) != self._w_embed64.shape:
            vector = None  # another embedding model's vector: the stand-in rather than a wrong score
        term = lin.embed_mean if vector is None else float(np.dot(self._w_embed64, vector))
        return lin.bias + lin.w_prior * self.prior.logit(prompt, ids) + term

    def score(self, prompt: str, ids: Sequence[int] | None = None, vector: NDArray[np.float32] | None = None) -> float:
        """Probability-like score in [0, 1] that ``prompt`` needs the strong model."""
        z = self.logit(prompt, ids, vector)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def score_batch(self, prompts: Sequence[str], vectors: NDArray[np.float32]) -> FloatArray:
        """Scores of many prompts given their embeddings (rows of ``vectors``)."""
        lin = self._linear
        prior = np.array([self.prior.logit(p) for p in prompts])
        z = lin.bias + lin.w_prior * prior + vectors.astype(np.float64) @ self._w_embed64
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    # --------------------------------------------------------------- calibration
    def _calibration_points(self) -> CurvePoints:
        if self._points is None:
            scores, weak, strong = self._calib
            self._points = pgr_points(scores.tolist(), weak.tolist(), strong.tolist())
        return self._points

    def threshold_for_quality_target(self, target_pgr: float) -> float:
        """Threshold whose held-out PGR on the deployment's labels reaches ``target_pgr`` with the fewest strong
        calls (``<= 0``: ``inf``, never strong; unreachable: 0, always strong)."""
        return self._calibration_points().threshold_for_pgr(target_pgr)

    def threshold_for_strong_share(self, share: float) -> float:
        """Threshold sending about ``share`` of the deployment's labelled prompts to the strong model."""
        if math.isnan(share):
            raise ValueError("share must be a number in [0, 1]")
        if share <= 0.0:
            return math.inf
        if share >= 1.0:
            return 0.0
        ordered = np.sort(self._calib[0])[::-1]
        k = min(max(math.ceil(share * ordered.size) - 1, 0), ordered.size - 1)
        return float(ordered[k])

    def strong_share_for_quality_target(self, target_pgr: float) -> float:
        """Smallest share of strong calls whose held-out PGR reaches ``target_pgr``."""
        return self._calibration_points().share_for_pgr(target_pgr)

    # -------------------------------------------------------------------- saving
    def save(self, out_dir: Path) -> Path:
        """Write ``adapted.json``, ``adapted.npz`` and a copy of the prior (``prior/``) to ``out_dir`` (created if
        needed; its other files are left alone). Returns ``out_dir``.

        All files are written into a temporary directory first and moved into place together under the
        directory's lock (:func:`policies.router.store.write_atomically`): a reload never reads a half-written
        artifact, and two saves into one directory leave one whole artifact, the later one. The JSON and the
        weights carry the same fresh ``artifact_id``, which the loader checks.

        Raises:
            OSError: ``out_dir`` cannot be written.
        """
        source = Path(self.metadata["prior"]["dir"])
        artifact_id = uuid.uuid4().hex
        scores, weak, strong = self._calib
        meta = {**self.metadata, "artifact_id": artifact_id, "prior": {**self.metadata["prior"], "dir": PRIOR}}

        def write(tmp: Path) -> None:
            (tmp / PRIOR).mkdir()
            for name in ("router.json", "router.npz"):
                shutil.copyfile(source / name, tmp / PRIOR / name)
            np.savez_compressed(
                tmp / NPZ,
                w_embed=self._linear.w_embed,
                w_prior=np.array([self._linear.w_prior]),
                bias=np.array([self._linear.bias]),
                embed_mean=np.array([self._linear.embed_mean]),
                calib_scores=scores.astype(np.float32),
                calib_weak=weak.astype(np.float32),
                calib_strong=strong.astype(np.float32),
                artifact_id=np.array(artifact_id),
            )
            (tmp / ADAPTED_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        return write_atomically(out_dir, ARTIFACT_FILES, write)

    def __repr__(self) -> str:
        return f"AdaptedRouter(version={self.version!r}, prior={self.prior.version!r})"


def _rows_sha256(records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt, r.weak, r.strong]).encode("utf-8") + b"\n")
    return h.hexdigest()


def adapt(
    records: Sequence[Record],
    prior: QualityRouter,
    embed: Embed,
    config: AdaptConfig | None = None,
    *,
    source: dict[str, Any] | None = None,
    prior_dir: Path | None = None,
) -> AdaptedRouter:
    """Fit an adapted router on a deployment's labelled ``records`` on top of ``prior``.

    ``embed`` turns prompts into unit vectors, the ones ``config.vector`` names (:func:`prompt_embed`).
    ``source`` is recorded as the training data's description (e.g. the file, its hash); ``prior_dir``: the
    prior's artifact directory (default: the shipped one), copied on save.
    Runs k-fold CV first (held-out figures and the calibration table), then fits on all rows.

    Raises:
        ValueError: too few rows, labels where the strong model is never (or always) better, or better (or not)
        on fewer than 2 distinct prompts (a cross-validation fold would learn one outcome only); an ``embed``
        whose vectors are not finite or not of the vector's dimension (:data:`VECTOR_DIMS`).
    """
    config = config or AdaptConfig()
    if config.vector not in VECTORS:
        raise ValueError(f"unknown prompt vector {config.vector!r} (one of {', '.join(VECTORS)})")
    if config.folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {config.folds}")
    n = len(records)
    if n < 4 * config.folds:
        raise ValueError(f"adaptation needs at least {4 * config.folds} labelled prompts, got {n}")
    weak = np.array([r.weak for r in records])
    strong = np.array([r.strong for r in records])
    y, w = _targets(weak, strong, config.better_margin)
    if y.min() == y.max():
        raise ValueError("the labels never (or always) prefer the strong model: nothing to learn")
    started = time.perf_counter()
    prompts = [r.prompt for r in records]
    groups = _prompt_groups(prompts)
    folds, stratified = _folds(groups, y, config.folds, config.seed)
    _check_outcomes(groups, y, folds, config.folds)  # before the prior and the embedding read every prompt
    prior_logits = np.array([prior.logit(p) for p in prompts])
    vectors = np.asarray(embed(prompts), dtype=np.float32)
    dim = VECTOR_DIMS[config.vector]
    if vectors.shape != (n, dim) or not np.isfinite(vectors).all():
        raise ValueError(f"the {config.vector} embedder gave {vectors.shape} vectors, not {n} finite ones of {dim}")
    x = _features(prior_logits, vectors)
    method = f"{config.folds}-fold cross-validation on the labels (seed {config.seed})"
    if stratified:
        method += ", stratified by outcome: a random split left a fold's training part with one outcome"
    oof = np.zeros(n)
    for k in range(config.folds):
        train, test = folds != k, folds == k
        if test.any():
            lin = _fit(x[train], y[train], w[train], config)
            oof[test] = lin.bias + lin.w_prior * prior_logits[test] + vectors[test].astype(np.float64) @ lin.w_embed
    oof = 1.0 / (1.0 + np.exp(-oof))
    final = _fit(x, y, w, config)
    q = config.report_quality
    prior_path = prior_dir if prior_dir is not None else ARTIFACT_DIR
    digest = _rows_sha256(records)
    metadata: dict[str, Any] = {
        "format": 1 if config.vector == "minilm" else ADAPTED_FORMAT,
        "kind": "adapted",
        "version": f"adapted-{digest[:12]}",
        "model": f"logistic(prior logit + {config.vector} vector)",
        "created_unix": int(time.time()),
        "training_data": {
            **(source or {}),
            "rows_sha256": digest,
            "rows": n,
            "strong_better": int(y.sum()),
            "weak_quality": round(float(weak.mean()), 4),
            "strong_quality": round(float(strong.mean()), 4),
        },
        "config": asdict(config),
        "embedding": {
            "model": EMBEDDING_MODEL,
            "dim": int(vectors.shape[1]),
            "max_tokens": config.embed_max_tokens,
            "vector": config.vector,
        },
        "prior": {"version": prior.version, "training_data_sha256": prior.training_data_sha256, "dir": str(prior_path)},
        "held_out": {
            "method": method,
            "adapted": _held_out(oof, weak, strong, q),
            "prior": _held_out(1.0 / (1.0 + np.exp(-prior_logits)), weak, strong, q),
            "random": _held_out(np.zeros(n), weak, strong, q),
        },
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    note = _no_gap_note(weak, strong)
    if note is not None:
        metadata["held_out"]["note"] = note
    return AdaptedRouter(prior, final, (oof, weak, strong), metadata, embed)


def recorded_vector(directory: Path) -> str:
    """The prompt vector the adapted artifact in ``directory`` reads; ``minilm`` when there is none (or it does not
    say, or does not parse)."""
    try:
        meta = json.loads((Path(directory) / ADAPTED_JSON).read_text(encoding="utf-8"))
        vector = str(meta.get("embedding", {}).get("vector", "minilm"))
    except (OSError, ValueError, AttributeError):
        return "minilm"
    return vector if vector in VECTORS else "minilm"


def load_adapted(directory: Path, *, encode: Callable[[str], list[int]], embed: Embed | None = None) -> AdaptedRouter:
    """Load the adapted artifact in ``directory`` (:func:`policies.router.loader.load_artifact` loads either kind).
    ``encode``: text -> ``cl100k_base`` ids (its prior's features); ``embed``: attached for calls that bring no
    vector.

    Every weight and calibration value must be finite, the arrays of the lengths ``adapted.json`` records (the
    vector's dimension: 384), the JSON and the weights from one save (``artifact_id``; artifacts written before
    it had none), the prior copy the one the JSON names, and the calibration table must give thresholds.

    Raises:
        OSError: missing files. ValueError: an unreadable, incompatible or corrupt artifact (what is wrong).
    """
    meta = check_meta(json.loads((directory / ADAPTED_JSON).read_text(encoding="utf-8")))
    dim = int(meta["embedding"]["dim"])
    prior = QualityRouter.load(directory / PRIOR, encode=encode)
    fitted_on = str(meta["prior"].get("version", prior.version))
    if prior.version != fitted_on:
        raise ValueError(f"corrupt adapted artifact: fitted on prior {fitted_on!r}, but prior/ holds {prior.version!r}")
    arrays, artifact_id = read_weights(directory / NPZ)
    if artifact_id != meta.get("artifact_id"):
        raise ValueError(
            f"corrupt adapted artifact: {ADAPTED_JSON} and {NPZ} come from different saves "
            f"(artifact_id {meta.get('artifact_id')!r} vs {artifact_id!r})"
        )
    scalars = [arrays[name] for name in ("w_prior", "bias", "embed_mean")]
    calib = (arrays["calib_scores"], arrays["calib_weak"], arrays["calib_strong"])
    if arrays["w_embed"].shape != (dim,) or any(a.shape != (1,) for a in scalars):
        raise ValueError(f"corrupt adapted artifact: expected {dim} embedding weights, one w_prior, bias, embed_mean")
    training = meta.get("training_data")
    rows = training.get("rows", calib[0].size) if isinstance(training, dict) else calib[0].size
    if calib[0].size == 0 or any(a.shape != calib[0].shape for a in calib) or rows != calib[0].size:
        raise ValueError(
            f"corrupt adapted artifact: the calibration arrays hold {[a.size for a in calib]} rows, "
            f"{ADAPTED_JSON} records {rows!r}"
        )
    if not ((calib[0] >= 0.0) & (calib[0] <= 1.0)).all():
        raise ValueError("corrupt adapted artifact: calibration scores outside [0, 1]")
    if not (np.abs(arrays["w_embed"]) <= np.finfo(np.float32).max).all():
        raise ValueError("corrupt adapted artifact: w_embed overflows float32")
    w_prior, bias, embed_mean = (float(a[0]) for a in scalars)
    linear = _Linear(w_prior, arrays["w_embed"].astype(np.float32), bias, embed_mean)
    meta["prior"]["dir"] = str(directory / PRIOR)
    router = AdaptedRouter(prior, linear, calib, meta, embed)
    router._calibration_points()  # the table is checked (and cached) here, where a bad one is refused
    return router


def minilm_embed(max_tokens: int = AdaptConfig.embed_max_tokens, runtime: str = "auto", batch: int = 32) -> Embed:
    """The semantic cache's MiniLM as an :data:`Embed` (int8 ONNX when the ``semantic`` extra is installed),
    truncating prompts to ``max_tokens`` word pieces and batching prompts of similar length (fp32 only: int8
    quantises a batch's activations together, so a prompt embedded among others got another vector than the
    one the gateway computes for it alone, up to 0.009 of score apart).

    Raises:
        cache.minilm.ModelUnavailable: the packaged model or its runtime is not installed.
    """
    from cache.minilm import MiniLMEmbedder
    from cache.semantic import default_runtime

    model = MiniLMEmbedder(max_tokens=max_tokens, runtime=default_runtime() if runtime == "auto" else runtime)
    if model.runtime == "onnx-int8":
        batch = 1

    def embed(texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), model.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out[rows] = model.embed([texts[i] for i in rows])
        return out

    return embed


def prompt_embed(vector: str = "minilm", max_tokens: int = AdaptConfig.embed_max_tokens) -> Embed:
    """The :data:`Embed` of a prompt vector kind (:data:`VECTORS`), reading at most ``max_tokens`` word pieces.

    Raises:
        ValueError: an unknown kind. cache.minilm.ModelUnavailable: the packaged model is not installed.
    """
    if vector == "minilm":
        return minilm_embed(max_tokens)
    if vector == "minilm-static":
        from cache.minilm_static import StaticMiniLM

        return StaticMiniLM(max_tokens=max_tokens).embed
    raise ValueError(f"unknown prompt vector {vector!r} (one of {', '.join(VECTORS)})")


def format_held_out(held_out: dict[str, Any]) -> str:
    """The held-out figures as a small table (adapted vs frozen prior vs random)."""
    lines = [f"held-out figures ({held_out.get('method', 'cross-validation')}):"]
    rows = [(name, held_out[name]) for name in ("adapted", "prior", "random") if name in held_out]
    if rows:
        keys = list(rows[0][1])
        lines.append(f"{'router':<10}" + "".join(f"{k:>13}" for k in keys))
        for name, figures in rows:
            lines.append(f"{name:<10}" + "".join(_figure(figures[k]) for k in keys))
    if "note" in held_out:
        lines.append(f"note: {held_out['note']}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return f"{'n/a':>13}" if value is None else f"{value:>13.3f}"
