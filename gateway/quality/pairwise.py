"""Pairwise judging in MT-Bench's format: the judge's prompt, its verdict, and the two orders combined.

The prompt is MT-Bench's ``pair-v2`` (Zheng et al., 2023, "Judging LLM-as-a-Judge"): the judge sees the user's
question and two answers, explains, and ends with ``[[A]]`` (A is better), ``[[B]]`` or ``[[C]]`` (a tie).
Each sample is judged twice, with the answers in both positions; as in MT-Bench, the served answer wins only
when it wins in both orders, loses only when it loses in both, and anything else (a tie, or verdicts that
flip with the order: position bias) is a tie.
"""

from __future__ import annotations

import re
from typing import Literal

from cache.judge import untrusted

Messages = list[dict[str, str]]
Verdict = Literal["A", "B", "C"]
Outcome = Literal["win", "tie", "loss"]

PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's "
    "instructions and answers the user's question better. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your "
    "evaluation by comparing the two responses and provide a short explanation. Avoid any position biases and "
    "ensure that the order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Do not favor certain names of the assistants. "
    "Be as objective as possible. After providing your explanation, output your final verdict by strictly "
    'following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" '
    "for a tie."
)

_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def pair_messages(question: str, answer_a: str, answer_b: str) -> Messages:
    """The judge's prompt for one order (the question and answers defused: :func:`cache.judge.untrusted`)."""
    user = (
        f"[User Question]\n{untrusted(question)}\n\n"
        f"[The Start of Assistant A's Answer]\n{untrusted(answer_a)}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{untrusted(answer_b)}\n[The End of Assistant B's Answer]"
    )
    return [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": user}]


def parse_pair_verdict(reply: str) -> Verdict | None:
    """The ``[[A]]``/``[[B]]``/``[[C]]`` of the judge's reply; None when there is none, or when tags disagree
    (a judge led to repeat a tag the prompt smuggled in: no verdict rather than the smuggled one)."""
    found = set(_VERDICT.findall(reply))
    if len(found) != 1:
        return None
    (tag,) = found
    return "A" if tag == "A" else "B" if tag == "B" else "C"


def combine(served_first: Verdict, served_second: Verdict) -> Outcome:
    """The served answer's outcome from the two orders: ``served_first`` judged with it as A, ``served_second``
    with it as B."""
    if served_first == "A" and served_second == "B":
        return "win"
    if served_first == "B" and served_second == "A":
        return "loss"
    return "tie"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked), so one long answer cannot blow the judge's context."""
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"
