"""An optional verifier call: ask a judge model whether the local answer is adequate (built here, made by the
pipeline).

The answer check is free; a judge call is not. It pays when the check is unsure (its score near the threshold)
and escalating would cost more than asking: :func:`should_verify` says when, :func:`verifier_request` builds the
judge's chat request (an OpenAI body, sent to any configured model), :func:`parse_verdict` reads its reply and
:func:`decide` turns score and verdict into the cascade's decision. A reply that cannot be read leaves the
check's own decision standing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["JudgeVerdict", "VerifierConfig", "decide", "parse_verdict", "should_verify", "verifier_request"]

#: Characters of the prompt and of the answer sent to the judge (bounds its cost; the head decides most cases).
MAX_CHARS: Final = 6000

_SYSTEM: Final = (
    "You are a strict, impartial judge of an AI assistant's answer. Decide whether the answer fully and "
    "correctly does what the user asked. Refusing a harmless request, lecturing instead of answering, "
    "answering a different question, factual or logical errors, and stopping before the task is done all "
    "make an answer inadequate. Length and politeness do not matter. Reply with one line: "
    '"Rating: [[N]]" where N is 1 (useless) to 10 (as good as the best possible answer).'
)
_TEMPLATE: Final = "[User's request]\n{prompt}\n\n[Assistant's answer]\n{answer}\n\n[End of answer]"
_RATING_RE: Final = re.compile(r"\[\[\s*(\d{1,2})(?:\.\d+)?\s*\]\]|\brating\s*[:=]\s*(\d{1,2})\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """When and how to ask the judge.

    ``model``: the configured model that judges. ``band``: verify only when the check's score lies within this
    distance of the threshold. ``min_escalation_cost_usd``: verify only when escalating would cost at least this
    (below it, escalating is cheaper than deliberating). ``min_rating``: the judge's rating (1-10) from which an
    answer counts as adequate. ``max_tokens``: the judge's reply budget.
    """

    model: str
    band: float = 0.15
    min_escalation_cost_usd: float = 0.002
    min_rating: int = 7
    max_tokens: int = 12

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the verifier needs a model")
        if not 0.0 <= self.band <= 1.0:
            raise ValueError("band must be in [0, 1]")
        if self.min_escalation_cost_usd < 0:
            raise ValueError("min_escalation_cost_usd must be >= 0")
        if not 1 <= self.min_rating <= 10:
            raise ValueError("min_rating must be in 1..10")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")


@dataclass(frozen=True, slots=True)
class JudgeVerdict:
    """What the judge said: its rating (1-10), or ``None`` when the reply held none."""

    rating: int | None
    raw: str

    def adequate(self, min_rating: int) -> bool | None:
        """Whether the answer passes at ``min_rating`` (``None``: no verdict)."""
        return None if self.rating is None else self.rating >= min_rating


def should_verify(
    score: float, threshold: float, escalation_cost_usd: float, verifier_cost_usd: float, config: VerifierConfig
) -> bool:
    """Whether a judge call is worth it: the check is unsure, escalating is expensive enough, and asking costs
    less than escalating."""
    if escalation_cost_usd < config.min_escalation_cost_usd or verifier_cost_usd >= escalation_cost_usd:
        return False
    return abs(score - threshold) <= config.band


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "\n[...]"


def verifier_request(prompt: str, answer: str, config: VerifierConfig) -> dict[str, Any]:
    """The judge's chat completion request body (OpenAI format; greedy, short)."""
    return {
        "model": config.model,
        "messages": [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _TEMPLATE.format(prompt=_clip(prompt), answer=_clip(answer))},
        ],
        "temperature": 0,
        "max_tokens": config.max_tokens,
    }


def parse_verdict(reply: str) -> JudgeVerdict:
    """Read ``Rating: [[N]]`` (or ``Rating: N``) from the judge's reply; a rating outside 1-10 is no verdict."""
    m = _RATING_RE.search(reply)
    if m is None:
        return JudgeVerdict(None, reply)
    rating = int(m.group(1) or m.group(2))
    return JudgeVerdict(rating if 1 <= rating <= 10 else None, reply)


def decide(score: float, threshold: float, verdict: JudgeVerdict | None, config: VerifierConfig) -> tuple[bool, str]:
    """``(escalate, reason)``: the judge's verdict when it gave one, else the check's own threshold."""
    adequate = verdict.adequate(config.min_rating) if verdict is not None else None
    if adequate is None:
        return score >= threshold, "check"
    rating = verdict.rating if verdict is not None else None
    return (not adequate), f"verifier rated {rating}/10"
