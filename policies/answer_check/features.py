"""The answer check's inputs as one feature vector, and the signals that stand apart from it.

Two kinds of signal:

* **Fitted** (:data:`FEATURE_NAMES`): text signals of :mod:`policies.answer_check.signals` and the prompt router's
  score. Their weights are fitted on labelled answers (:mod:`policies.answer_check.fit`).
* **Prior** (:class:`Priors`): truncation (``finish_reason: length``), an empty answer, and the token
  log-probabilities. The public data the weights are fitted on has no truncated or empty answers and no
  log-probabilities, so these add fixed, documented amounts to the logit instead (see :class:`Priors`); a
  refit on data that has them may replace them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from policies.answer_check.confidence import Confidence
from policies.answer_check.signals import TextSignals

__all__ = ["FEATURE_NAMES", "Priors", "feature_vector", "prior_logit", "router_logit"]

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "refusal",
    "moralising",
    "disclaimer",
    "hedge",
    "caveat",
    "objects_early",
    "repetition",
    "compressibility",
    "log_answer_words",
    "log_prompt_words",
    "asks_brief",
    "asks_long",
    "brief_x_log_answer_words",
    "long_x_log_answer_words",
    "code_missing",
    "unfinished",
    "router_logit",
)
#: Index of the prompt router's logit (replaced by its training mean when no router score is given).
ROUTER_INDEX: Final = FEATURE_NAMES.index("router_logit")
_EPS: Final = 1e-6


def router_logit(score: float) -> float:
    """The prompt router's score in [0, 1] as a logit (clipped so 0 and 1 stay finite)."""
    p = min(max(score, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def feature_vector(sig: TextSignals, router_score: float | None) -> list[float]:
    """The fitted features of one answer, in :data:`FEATURE_NAMES` order (``router_logit`` is NaN when absent)."""
    law = math.log1p(sig.answer_words)
    return [
        float(min(sig.refusal, 3)),
        float(min(sig.moralising, 4)),
        float(min(sig.disclaimer, 3)),
        float(min(sig.hedge, 3)),
        float(min(sig.caveat, 3)),
        1.0 if sig.objects_early else 0.0,
        sig.repetition,
        sig.compressibility,
        law,
        math.log1p(sig.prompt_words),
        1.0 if sig.asks_brief else 0.0,
        1.0 if sig.asks_long else 0.0,
        law if sig.asks_brief else 0.0,
        law if sig.asks_long else 0.0,
        1.0 if sig.code_missing else 0.0,
        1.0 if sig.unfinished else 0.0,
        math.nan if router_score is None else router_logit(router_score),
    ]


@dataclass(frozen=True, slots=True)
class Priors:
    """Logit added for the signals the fitting data cannot teach (stored in the artifact, so a deployment may
    change them; defaults below, with the reasoning for each).

    * ``truncated``: ``finish_reason: length`` means the answer stops where ``max_tokens`` cut it. An answer cut
      short of what was asked is incomplete by construction; +3 turns an average answer (logit ~ -1.1 on the
      fitting data) into a likely escalation (~0.87) while a clearly good one can still pass at a loose target.
    * ``empty``: no text at all (or only whitespace) is never adequate: +12 escalates it at any target.
    * ``repetition``: a share of repeated word 4-grams above ``repetition_floor`` is a decoding loop (in the
      fitting data's Llama-2 answers the 99th percentile is 0.30 and the maximum 0.53, a list of parallel
      questions); each unit above the floor adds ``repetition`` (a loop repeating 90 % of its 4-grams adds +6).
    * log-probabilities: only below the levels a chat model's greedy answer sits at. ``mean_logprob`` per unit
      the mean token log-probability falls below ``mean_floor`` (-1.0, i.e. a geometric-mean token probability
      under 0.37), and ``low_share`` per unit the share of tokens under p=0.1 exceeds ``low_share_floor`` (0.25).
      A confident answer adds nothing, so a deployment without log-probabilities is scored as before.
    """

    truncated: float = 3.0
    empty: float = 12.0
    repetition: float = 20.0
    repetition_floor: float = 0.6
    mean_logprob: float = 2.0
    mean_floor: float = -1.0
    low_share: float = 6.0
    low_share_floor: float = 0.25


def prior_logit(
    priors: Priors, sig: TextSignals, finish_reason: str | None, conf: Confidence | None
) -> tuple[float, list[str]]:
    """The priors' logit for one answer and a reason for each that fired."""
    z = 0.0
    reasons: list[str] = []
    if sig.empty:
        z += priors.empty
        reasons.append("empty answer")
    if finish_reason == "length":
        z += priors.truncated
        reasons.append("truncated (finish_reason: length)")
    if sig.repetition > priors.repetition_floor:
        z += priors.repetition * (sig.repetition - priors.repetition_floor)
        reasons.append(f"repetitive ({sig.repetition:.0%} of 4-grams repeated)")
    if conf is not None:
        if conf.mean < priors.mean_floor:
            z += priors.mean_logprob * (priors.mean_floor - conf.mean)
            reasons.append(f"low confidence (mean token logprob {conf.mean:.2f})")
        if conf.low_share > priors.low_share_floor:
            z += priors.low_share * (conf.low_share - priors.low_share_floor)
            reasons.append(f"unsure tokens ({conf.low_share:.0%} under p=0.1)")
    return z, reasons
