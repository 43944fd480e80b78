"""The shipped prior's calls on prompts whose answer is obvious (the anchor rows of policies/router/anchors.py).

At the default operating point (``DEFAULT_QUALITY_TARGET``), trivial arithmetic and greetings go to the cheap
model and requests for proofs to the strong one; phrasings not in the anchors are checked too.
"""

from __future__ import annotations

import pytest

from gateway.routing import DEFAULT_QUALITY_TARGET
from gateway.tokens import load_tiktoken
from policies.router.model import QualityRouter

EASY = ("What is 2+2?", "what is 2 + 2", "What is 13*7?", "Hi", "What is the capital of Italy?")
HARD = (
    "Prove that there are infinitely many primes",
    "Prove that there are infinitely many primes.",
    "Prove that the sum of two even numbers is even.",
    "Show that there is no largest prime number.",
)


@pytest.fixture(scope="module")
def prior() -> QualityRouter:
    return QualityRouter.load(None, encode=load_tiktoken().encode)


@pytest.mark.parametrize("prompt", EASY)
def test_trivial_prompts_go_to_the_cheap_model(prior: QualityRouter, prompt: str) -> None:
    assert prior.score(prompt) < prior.threshold_for_quality_target(DEFAULT_QUALITY_TARGET)


@pytest.mark.parametrize("prompt", HARD)
def test_proofs_go_to_the_strong_model(prior: QualityRouter, prompt: str) -> None:
    assert prior.score(prompt) >= prior.threshold_for_quality_target(DEFAULT_QUALITY_TARGET)
