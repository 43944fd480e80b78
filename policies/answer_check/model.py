"""The answer check at serving time: artifact in, ``score`` and reasons out (stdlib only).

``AnswerCheck.check(prompt, answer, ...)`` returns a :class:`Verdict` whose ``score`` in [0, 1] is the estimated
probability that the strong model would have answered better (higher = more in need of escalation), with the
reasons that pushed it up. A cascade escalates when ``score >= threshold_for_quality_target(target)``: the
threshold whose recovered share of the weak-strong quality gap reached ``target`` on the artifact's
calibration data, the same meaning ``quality_target`` has for the prompt router.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from policies.answer_check.confidence import Confidence, confidence
from policies.answer_check.features import FEATURE_NAMES, Priors, feature_vector, prior_logit
from policies.answer_check.signals import TextSignals, text_signals

__all__ = ["ARTIFACT_DIR", "ARTIFACT_FORMAT", "ARTIFACT_NAME", "TARGET_STEPS", "AnswerCheck", "Verdict"]

ARTIFACT_DIR: Final = Path(__file__).resolve().parent / "artifacts"
ARTIFACT_NAME: Final = "answer_check.json"
ARTIFACT_FORMAT: Final = 1
#: The calibration table holds quality targets 0, 1/TARGET_STEPS, ..., 1.
TARGET_STEPS: Final = 100

#: What a fitted feature means when it pushes the score up (its weight's sign decides which side that is).
_REASONS: Final = {
    "refusal": "refusal",
    "moralising": "moralising / objecting to the request",
    "disclaimer": '"as an AI" disclaimer',
    "hedge": "hedging / asks for clarification",
    "caveat": "caveats",
    "objects_early": "objects before answering",
    "repetition": "repetitive",
    "compressibility": "repetitive",
    "log_answer_words": "short answer",
    "log_prompt_words": "prompt length",
    "asks_brief": "brief answer requested",
    "asks_long": "long answer requested",
    "brief_x_log_answer_words": "long answer to a brief request",
    "long_x_log_answer_words": "short answer to a request for a long one",
    "code_missing": "code asked, none given",
    "unfinished": "ends mid-sentence",
    "router_logit": "hard prompt (prompt router)",
}
#: A fitted feature is reported as a reason when it adds at least this much to the logit.
_REASON_MIN: Final = 0.5


@dataclass(frozen=True, slots=True)
class Verdict:
    """The check's result for one answer."""

    #: Estimated probability that the strong model would do better (higher = escalate).
    score: float
    #: What pushed the score up, strongest first (empty when nothing stood out).
    reasons: tuple[str, ...]
    #: The raw signals, for logs and ``gateway router verify --explain``.
    signals: TextSignals
    confidence: Confidence | None

    def escalate(self, threshold: float) -> bool:
        """Whether this answer falls short at ``threshold``."""
        return self.score >= threshold


@dataclass(frozen=True)
class _Head:
    columns: tuple[int, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    thresholds: tuple[float, ...]
    shares: tuple[float, ...]


def _head(raw: dict[str, Any]) -> _Head:
    names = list(raw["features"])
    unknown = set(names) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"answer-check artifact names unknown features: {sorted(unknown)}")
    columns = tuple(FEATURE_NAMES.index(n) for n in names)
    n = len(columns)
    mean, scale, weights = (tuple(float(v) for v in raw[k]) for k in ("mean", "scale", "weights"))
    if not len(mean) == len(scale) == len(weights) == n:
        raise ValueError("corrupt answer-check artifact: feature arrays differ in length")
    if any(s <= 0 for s in scale):
        raise ValueError("corrupt answer-check artifact: non-positive scale")
    cal = raw["calibration"]
    thresholds = tuple(math.inf if t is None else float(t) for t in cal["thresholds"])
    shares = tuple(float(s) for s in cal["escalation_share"])
    if len(thresholds) != TARGET_STEPS + 1 or len(shares) != TARGET_STEPS + 1:
        raise ValueError("corrupt answer-check artifact: calibration table has the wrong length")
    return _Head(columns, mean, scale, weights, float(raw["bias"]), thresholds, shares)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class AnswerCheck:
    """A fitted answer check (see the module docstring); build with :meth:`load`."""

    def __init__(self, with_router: _Head, answer_only: _Head, priors: Priors, metadata: dict[str, Any]) -> None:
        self._with_router = with_router
        self._answer_only = answer_only
        self.priors = priors
        self.metadata = metadata

    @classmethod
    def load(cls, path: Path | None = None) -> AnswerCheck:
        """Read an artifact (a directory holding ``answer_check.json``, or the file); ``None`` = the shipped one."""
        p = ARTIFACT_DIR if path is None else Path(path)
        if p.is_dir():
            p = p / ARTIFACT_NAME
        meta: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ValueError(
                f"answer-check artifact format {meta.get('format')!r}; this version reads {ARTIFACT_FORMAT}"
            )
        known = {f.name for f in fields(Priors)}
        priors = Priors(**{k: float(v) for k, v in meta.get("priors", {}).items() if k in known})
        heads = meta["heads"]
        return cls(_head(heads["with_router"]), _head(heads["answer_only"]), priors, meta)

    def check(
        self,
        prompt: str,
        answer: str,
        *,
        logprobs: Sequence[float] | None = None,
        finish_reason: str | None = None,
        router_score: float | None = None,
    ) -> Verdict:
        """Score ``answer`` to ``prompt``: ``logprobs`` are its tokens' log-probabilities (if the backend returned
        them), ``finish_reason`` the backend's, ``router_score`` the prompt router's score in [0, 1] (if any)."""
        sig = text_signals(prompt, answer)
        conf = confidence(logprobs) if logprobs is not None else None
        head = self._answer_only if router_score is None else self._with_router
        x = feature_vector(sig, router_score)
        z = head.bias
        contributions: list[tuple[float, str]] = []
        for col, mu, sd, w in zip(head.columns, head.mean, head.scale, head.weights, strict=True):
            c = w * (x[col] - mu) / sd
            z += c
            if c >= _REASON_MIN:
                contributions.append((c, _REASONS[FEATURE_NAMES[col]]))
        prior_z, prior_reasons = prior_logit(self.priors, sig, finish_reason, conf)
        contributions.sort(reverse=True)
        reasons = tuple(dict.fromkeys([*prior_reasons, *(r for _, r in contributions)]))
        return Verdict(score=_sigmoid(z + prior_z), reasons=reasons, signals=sig, confidence=conf)

    def threshold_for_quality_target(self, target: float, *, with_router: bool = True) -> float:
        """The score threshold whose calibrated PGR reaches ``target`` (0..1) with the fewest escalations;
        ``<= 0`` gives ``inf`` (never escalate), an unreachable target gives 0 (always escalate)."""
        if math.isnan(target):
            raise ValueError("target must be a number")
        if target <= 0.0:
            return math.inf
        head = self._with_router if with_router else self._answer_only
        k = min(TARGET_STEPS, math.ceil(target * TARGET_STEPS - 1e-9))
        return head.thresholds[k]

    def escalation_share_for_quality_target(self, target: float, *, with_router: bool = True) -> float:
        """The share of answers escalated at that threshold on the calibration data."""
        if target <= 0.0:
            return 0.0
        head = self._with_router if with_router else self._answer_only
        return head.shares[min(TARGET_STEPS, math.ceil(target * TARGET_STEPS - 1e-9))]

    def __repr__(self) -> str:
        rows = self.metadata.get("training_data", {}).get("rows")
        return f"AnswerCheck(format={self.metadata.get('format')}, rows={rows})"
