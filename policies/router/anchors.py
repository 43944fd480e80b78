"""Anchor rows added to the prior's training data: two facts the benchmark data cannot teach it.

RouteLLM's data (MMLU, GSM8K, MT-Bench) has no trivially easy arithmetic and no requests for proofs, so a
prior trained on it alone reads "What is 2+2?" like a GSM8K word problem (the 7B fails those: strong model)
and "Prove that there are infinitely many primes" like a short MMLU fact (weak model). These rows, built
from templates with fixed answers, say otherwise:

* one-step arithmetic on small numbers, greetings and one-fact questions: both models answer them
  (``weak = strong = 1``);
* "prove / show that / derive" requests for a theorem: only the strong model writes the proof reliably
  (``weak = 0``, ``strong = 1``).

They are few (:func:`anchor_records`: 122 + 96 of ~12k rows, weighted ``TrainConfig.anchor_weight``) and carry
the benchmark name ``anchors``; they stay out of the cross-validated figures and the calibration table.
"""

from __future__ import annotations

from itertools import product

from policies.router.data import Record

__all__ = ["ANCHOR_BENCHMARK", "anchor_records"]

ANCHOR_BENCHMARK = "anchors"

_ARITH = ("What is {a}+{b}?", "what is {a} * {b}", "Compute {a} - {b}.", "{a} + {b} = ?", "How much is {a} times {b}?")
_PAIRS = tuple(
    zip(
        (2, 3, 7, 12, 9, 10, 15, 6, 1, 20, 4, 8, 11, 5, 14, 30, 25, 2, 100, 13),
        (2, 5, 8, 4, 6, 10, 3, 7, 1, 5, 9, 3, 2, 5, 6, 12, 4, 9, 50, 1),
        strict=True,
    )
)
_EASY = (
    "Hi",
    "Hello!",
    "hello",
    "Hi there, how are you?",
    "Thanks!",
    "Good morning",
    "What is the capital of France?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "What color is the sky?",
    "How many legs does a dog have?",
    "What is the opposite of hot?",
    "Translate 'thank you' into French.",
    "What is the plural of mouse?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Thanks.",
    "Good morning.",
    "Reply with OK.",
    "Count from 1 to 5.",
    "Name three colors.",
    "Say goodbye in Spanish.",
)
_PROVE = (  # mostly without a final period: the anchors must not teach that "." means hard
    "Prove that {t}.",
    "prove that {t}",
    "Show that {t}",
    "Give a rigorous proof that {t}",
    "Can you prove that {t}?",
    "Write a proof that {t}.",
)
_THEOREMS = (
    "there are infinitely many primes",
    "the square root of 2 is irrational",
    "every bounded monotone sequence converges",
    "the sum of the angles of a triangle is 180 degrees",
    "a continuous function on a closed interval attains its maximum",
    "there is no largest even number",
    "the product of two odd numbers is odd",
    "every finite group of prime order is cyclic",
    "the harmonic series diverges",
    "e is irrational",
    "n^3 - n is divisible by 6 for every integer n",
    "the set of real numbers is uncountable",
    "1 + 2 + ... + n = n(n+1)/2",
    "a graph with n vertices and no cycles has at most n-1 edges",
    "the composition of two injective functions is injective",
    "there are infinitely many primes of the form 4k+3",
)


def anchor_records() -> list[Record]:
    """The anchor rows (deterministic): easy arithmetic (both models right), proofs (only the strong one)."""
    rows: list[Record] = []
    for i, (template, (a, b)) in enumerate(product(_ARITH, _PAIRS)):
        rows.append(Record(template.format(a=a, b=b), ANCHOR_BENCHMARK, f"anchors/arith/{i}", 1.0, 1.0))
    for i, text in enumerate(_EASY):
        rows.append(Record(text, ANCHOR_BENCHMARK, f"anchors/easy/{i}", 1.0, 1.0))
    for i, (template, theorem) in enumerate(product(_PROVE, _THEOREMS)):
        rows.append(Record(template.format(t=theorem), ANCHOR_BENCHMARK, f"anchors/prove/{i}", 0.0, 1.0))
    return rows
