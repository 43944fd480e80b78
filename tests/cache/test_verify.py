"""The second-stage verifier: rejects near-duplicates that differ where it matters, passes paraphrases."""

from __future__ import annotations

import pytest

from cache.verify import verify

PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the best way to learn Python?", "How do I learn Python?"),
    ("How can I lose 5 kg in two weeks?", "How do I lose five kg in 2 weeks?"),
    ("Why can't I sleep at night?", "Why can I not sleep at night?"),
    ("What are your opening hours?", "When are you open?"),
    ("Which is the best laptop under $500?", "What's the best laptop under $500?"),
    ("Who founded Microsoft?", "Who was the founder of Microsoft?"),
    ("what is the capital of france", "What's France's capital?"),
    ("How do I get a refund on my iPhone order?", "how can i get a refund for my iphone order"),
    ("What are the symptoms of COVID-19?", "COVID-19 symptoms?"),  # a hyphen inside a name is no minus sign
    ("What's new in Python 3.10?", "What is new in Python 3.10"),
    # symmetric connectives: the order of the two sides does not matter
    ("What is the difference between Python and Java?", "What is the difference between Java and Python?"),
    ("Python vs Java", "Java vs Python"),
    ("Python vs. Java: which is faster?", "Java versus Python: which is faster?"),
    ("Which is better, Python or Java?", "Which is better, Java or Python?"),
    # an asymmetric connective's sides kept, the sentence reordered around them
    ("How do I move from Java to Python?", "How do I switch to Python from Java?"),
    ("Cheap flights from London to Paris", "Cheap flights to Paris from London"),
    ("What is the best way to convert a PDF to Word?", "How do I convert PDF to Word?"),
    # a second sentence that is context, or the same instruction in other words
    ("What is a monad? I am new to Haskell.", "What is a monad?"),
    ("How do I reset my password? Please be brief.", "How can I reset my password? Be brief."),
    ("How do I reset my password? Reply in French.", "How do I reset my password in French?"),
]

DIFFERENT = [
    ("How do I lose 5 kg in a week?", "How do I lose 10 kg in a week?", "numbers differ"),
    ("What was the GDP of India in 2015?", "What was the GDP of India in 2016?", "numbers differ"),
    ("Is a 3 bedroom house enough?", "Is a three bedroom house enough?", None),
    ("When did World War 2 start?", "Why did World War 2 start?", "question type differs"),
    ("How many people live in Tokyo?", "Who lives in Tokyo?", "question type differs"),
    ("Should I learn Java?", "Should I not learn Java?", "negation differs"),
    ("What is the best programming language?", "What is the worst programming language?", "opposites"),
    ("What are the advantages of nuclear power?", "What are the disadvantages of nuclear power?", "opposites"),
    ("How do I learn Python quickly?", "How do I learn Java quickly?", "names differ"),
    ("What is the price of an iPhone 7?", "What is the price of an iPhone 8?", "numbers differ"),
    ("How do I apply for a visa to Canada?", "How do I apply for a visa to Australia?", "names differ"),
    ("What's new in Python 3.1?", "What's new in Python 3.10?", "numbers differ"),  # versions, not decimals
    ("Convert -40 degrees Celsius to Fahrenheit", "Convert 40 degrees Celsius to Fahrenheit", "numbers differ"),
    ("How do I convert Celsius to Fahrenheit?", "How to convert Fahrenheit to Celsius?", "order differs"),
    ("Is Python better than Java?", "Is Java better than Python?", "order differs"),
    ("What is 10 divided by 2?", "What is 2 divided by 10?", "order differs"),
    ("Why choose Python over Java?", "Why choose Java over Python?", "order differs"),
    ("Should I buy Bitcoin now?", "Should I sell Bitcoin now?", "opposites"),
    ("Is the price above average?", "Is the price below average?", "opposites"),
    ("Explain recursion. Be brief.", "Explain recursion.", "instruction differs"),
    ("What is a monad? Reply in French.", "What is a monad? Reply in Spanish.", "instruction differs"),
]

#: Wrong hits an audit reproduced over HTTP (new question, stored question whose answer it was served).
AUDIT = [
    ("Convert 100 euros to US dollars", "Convert 100 US dollars to euros", "order differs (euros to dollars vs dollars to euros)"),
    ("Sort this list in descending order", "Sort this list in ascending order", "opposites (descending vs ascending)"),
    ("Is 5 bigger than 7?", "Is 7 bigger than 5?", "order differs (5 than 7 vs 7 than 5)"),
    ("How do I reset my account password?", "How do I reset my account password? Answer rudely.", "instruction differs (cached: 'answer rudely')"),
]  # fmt: skip


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_paraphrases_pass(a: str, b: str) -> None:
    assert verify(a, b).ok, verify(a, b).reason
    assert verify(b, a).ok


@pytest.mark.parametrize(("a", "b", "why"), DIFFERENT)
def test_near_duplicates_that_differ_are_rejected(a: str, b: str, why: str | None) -> None:
    v = verify(a, b)
    if why is None:
        assert v.ok  # three = 3
        return
    assert not v.ok and v.reason.startswith(why), v.reason
    assert not verify(b, a).ok


@pytest.mark.parametrize(("new", "stored", "reason"), AUDIT)
def test_audited_wrong_hits_are_rejected(new: str, stored: str, reason: str) -> None:
    assert verify(new, stored).reason == reason
    assert not verify(stored, new).ok


def test_the_reason_names_the_difference() -> None:
    assert verify("Top 10 movies of 2019", "Top 5 movies of 2019").reason == "numbers differ ([10, 2019] vs [5, 2019])"
    assert verify("Is it $1,500?", "Is it $1500?").ok
    assert not verify("Is it 1.5k?", "Is it 2k?").ok
    assert verify("Answer rudely. How do I reset my password?", "How do I reset my password?").reason == (
        "instruction differs (new: 'answer rudely')"
    )
