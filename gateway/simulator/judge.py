"""The simulator as a judge, from a ground truth the test controls.

Any simulator answers a judge's prompt as a judge would, instead of with filler text:

* **pairwise** (MT-Bench's format, :mod:`gateway.quality.pairwise`): a prompt with ``[User Question]`` and the
  two ``[The Start of Assistant A's Answer]`` blocks gets an explanation ending in ``[[A]]``, ``[[B]]`` or
  ``[[C]]``. Each answer scores the ``score`` of the first ``pairwise`` rule whose ``match`` it contains
  (case-insensitive), else ``default_score``; the higher score wins, equal scores tie. With
  ``position_bias: "A"`` (or ``"B"``) a tie is reported as that position instead: a judge with position
  bias, which judging both orders must cancel.
* **semantic hit checks** (:mod:`cache.judge`): a prompt with ``NEW question:`` and ``EARLIER question:`` gets
  ``VERDICT: YES`` unless the first ``hits`` rule whose ``match`` is in the NEW question says
  ``"serves": false`` (``hits_default`` otherwise).

Combined with answer rules (``/_sim/answers``: make one model refuse on some prompts), a test knows which
answer should win every comparison. Set with ``POST /_sim/judge`` (the whole set), read with ``GET``, reset
with ``DELETE``, or given up front to ``create_simulator_app(..., judge=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

_PAIR = re.compile(
    r"\[User Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant A's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(?P<b>.*?)\n"
    r"\[The End of Assistant B's Answer\]",
    re.S,
)
_HIT = re.compile(r"NEW question:\n(?P<new>.*?)\n\nEARLIER question:", re.S)
_FIELDS = {"pairwise", "default_score", "position_bias", "hits", "hits_default"}


@dataclass
class JudgeRules:
    """The judge's ground truth (see the module docstring) and how often it was asked."""

    pairwise: list[tuple[str, float]] = field(default_factory=list)
    default_score: float = 5.0
    position_bias: str | None = None
    hits: list[tuple[str, bool]] = field(default_factory=list)
    hits_default: bool = True
    pairs_judged: int = 0
    hits_judged: int = 0

    def to_json(self) -> dict[str, Any]:
        """The rules as ``GET /_sim/judge`` shows them."""
        return {
            "pairwise": [{"match": m, "score": s} for m, s in self.pairwise],
            "default_score": self.default_score,
            "position_bias": self.position_bias,
            "hits": [{"match": m, "serves": v} for m, v in self.hits],
            "hits_default": self.hits_default,
            "pairs_judged": self.pairs_judged,
            "hits_judged": self.hits_judged,
        }

    def _score(self, answer: str) -> float:
        low = answer.lower()
        return next((s for m, s in self.pairwise if m.lower() in low), self.default_score)

    def reply(self, prompt: str) -> str | None:
        """The judge's reply to ``prompt`` (the last user message), or None when it is no judge's prompt."""
        pair = _PAIR.search(prompt)
        if pair is not None:
            self.pairs_judged += 1
            a, b = self._score(pair.group("a")), self._score(pair.group("b"))
            verdict = "A" if a > b else "B" if b > a else (self.position_bias or "C")
            return f"Assistant A scores {a:g} and assistant B scores {b:g}.\n\n[[{verdict}]]"
        hit = _HIT.search(prompt)
        if hit is not None:
            self.hits_judged += 1
            new = hit.group("new").lower()
            serves = next((v for m, v in self.hits if m.lower() in new), self.hits_default)
            return f"The cached answer {'fits' if serves else 'does not fit'}.\nVERDICT: {'YES' if serves else 'NO'}"
        return None


def parse_judge(payload: Any) -> JudgeRules:
    """Validate a ``POST /_sim/judge`` body.

    Raises:
        ValueError: naming the first problem.
    """
    if not isinstance(payload, Mapping):
        raise ValueError("judge rules must be a JSON object")
    unknown = set(payload) - _FIELDS
    if unknown:
        raise ValueError(f"unknown judge fields: {', '.join(sorted(unknown))}")
    pairwise: list[tuple[str, float]] = []
    for rule in payload.get("pairwise") or []:
        score = rule.get("score") if isinstance(rule, Mapping) else None
        if not isinstance(rule, Mapping) or not isinstance(rule.get("match"), str) or not _number(score):
            raise ValueError('a pairwise rule is {"match": str, "score": number}')
        pairwise.append((rule["match"], float(score)))
    hits: list[tuple[str, bool]] = []
    for rule in payload.get("hits") or []:
        if (
            not isinstance(rule, Mapping)
            or not isinstance(rule.get("match"), str)
            or not isinstance(rule.get("serves"), bool)
        ):
            raise ValueError('a hits rule is {"match": str, "serves": bool}')
        hits.append((rule["match"], rule["serves"]))
    default = payload.get("default_score", 5.0)
    bias = payload.get("position_bias")
    hits_default = payload.get("hits_default", True)
    if not _number(default):
        raise ValueError("'default_score' must be a number")
    if bias not in (None, "A", "B"):
        raise ValueError("'position_bias' must be null, 'A' or 'B'")
    if not isinstance(hits_default, bool):
        raise ValueError("'hits_default' must be a boolean")
    return JudgeRules(pairwise, float(default), bias, hits, hits_default)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
