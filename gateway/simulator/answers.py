"""Per-prompt answer behaviours for the simulator: refuse, truncate, or answer with low confidence.

Where a fault (``/_sim/faults``) breaks the transport, an answer rule changes what a well-formed answer says,
so a cascade's answer check can be tested over sockets. Rules are set with ``POST /_sim/answers`` (a rule or
``{"rules": [...]}``, replacing the set), read with ``GET`` and cleared with ``DELETE``, or given up front to
``create_simulator_app(..., answer_rules=...)`` / ``gateway simulate --answer-rules FILE``.

A rule ``{"match": "...", "behaviour": "...", "count": N, "tokens": N}`` applies to chat and completion requests
whose last user message (or prompt) contains ``match`` (case-insensitive; ``""`` matches every prompt); the first
matching rule wins, and ``count`` (default: until cleared) limits how many requests it affects.

``refuse``          The answer is a Llama-2-chat style refusal ("I apologize, but I cannot fulfill your request.
                    I'm just an AI...") with ``finish_reason: stop`` (cut at ``max_tokens`` like any text).
``truncate``        The answer stops after ``tokens`` tokens (default 8, at most the request's ``max_tokens``)
                    mid-sentence, with ``finish_reason: length``.
``low_confidence``  The usual text, but every token's log-probability is drawn from [-4.5, -0.5] (mean -2.5,
                    about two thirds of tokens under p=0.1) instead of [-1.5, 0]: what a model guessing looks like.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

__all__ = [
    "ANSWER_BEHAVIOURS",
    "REFUSAL_TEXT",
    "AnswerBehaviour",
    "AnswerRule",
    "AnswerRules",
    "load_answer_rules",
    "parse_answer_rules",
    "split_words",
]

AnswerBehaviour = Literal["refuse", "truncate", "low_confidence"]
ANSWER_BEHAVIOURS: tuple[str, ...] = get_args(AnswerBehaviour)

#: What a refusing Llama-2-chat says (the shape of its real refusals on harmless requests).
REFUSAL_TEXT = (
    "I apologize, but I cannot fulfill your request. I'm just an AI, it's not within my programming or ethical "
    "guidelines to provide content that could be harmful or inappropriate. Is there anything else I can help you "
    "with?"
)
_PIECE_RE = re.compile(r" ?[\w']+| ?[^\w\s]|\s+")
_FIELDS = ("match", "behaviour", "count", "tokens")


def split_words(text: str) -> tuple[str, ...]:
    """``text`` as the simulator's tokens: words with their leading space, and punctuation marks."""
    return tuple(_PIECE_RE.findall(text))


@dataclass(frozen=True, slots=True)
class AnswerRule:
    """One rule (see the module docstring)."""

    match: str
    behaviour: AnswerBehaviour
    count: int | None = None
    tokens: int = 8

    def to_json(self) -> dict[str, Any]:
        """The rule as ``GET /_sim/answers`` shows it."""
        return {"match": self.match, "behaviour": self.behaviour, "count": self.count, "tokens": self.tokens}


def _parse_rule(raw: Any) -> AnswerRule:
    if not isinstance(raw, Mapping):
        raise ValueError("an answer rule must be a JSON object")
    unknown = set(raw) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown answer-rule fields: {', '.join(sorted(unknown))}")
    match, behaviour = raw.get("match", ""), raw.get("behaviour")
    if not isinstance(match, str):
        raise ValueError("'match' must be a string")
    if behaviour not in ANSWER_BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {', '.join(ANSWER_BEHAVIOURS)}")
    count, tokens = raw.get("count"), raw.get("tokens", 8)
    for name, value in (("count", count), ("tokens", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name!r} must be a non-negative integer")
    if tokens is None or tokens < 1:
        raise ValueError("'tokens' must be >= 1")
    return AnswerRule(match, cast(AnswerBehaviour, behaviour), count, tokens)


def parse_answer_rules(payload: Any) -> list[AnswerRule]:
    """Validate a ``POST /_sim/answers`` body: one rule, a list of rules, or ``{"rules": [...]}``.

    Raises:
        ValueError: naming the first problem.
    """
    if isinstance(payload, Mapping) and "rules" in payload:
        if set(payload) != {"rules"}:
            raise ValueError('a rule set is {"rules": [...]} and nothing else')
        payload = payload["rules"]
    items = payload if isinstance(payload, list) else [payload]
    return [_parse_rule(r) for r in items]


def load_answer_rules(path: Path) -> list[AnswerRule]:
    """Read rules from a JSON file (any form :func:`parse_answer_rules` accepts)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg})") from exc
    return parse_answer_rules(payload)


class AnswerRules:
    """The active rules; :meth:`take` finds (and counts down) the one for a prompt."""

    def __init__(self, rules: list[AnswerRule] | None = None) -> None:
        """Start with ``rules`` (or none)."""
        self._rules = [r for r in rules or [] if r.count != 0]
        self.applied = 0

    @property
    def rules(self) -> list[AnswerRule]:
        """The rules still active, in order."""
        return list(self._rules)

    def set(self, rules: list[AnswerRule]) -> None:
        """Replace the rules."""
        self._rules = [r for r in rules if r.count != 0]

    def clear(self) -> None:
        """Remove every rule."""
        self._rules = []

    def take(self, text: str) -> AnswerRule | None:
        """The first rule whose ``match`` is in ``text``, consuming one of its ``count``."""
        lowered = text.lower()
        for i, rule in enumerate(self._rules):
            if rule.match.lower() in lowered:
                if rule.count is not None:
                    if rule.count > 1:
                        self._rules[i] = replace(rule, count=rule.count - 1)
                    else:
                        del self._rules[i]
                self.applied += 1
                return rule
        return None
