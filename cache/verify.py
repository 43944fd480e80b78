"""The semantic cache's second stage: cheap checks on a candidate that sentence embeddings miss.

An embedding places "How do I lose 5 kg in a week?" next to "How do I lose 10 kg in a month?" (cosine
0.9+), yet the cached answer to one is wrong for the other. After the vector search finds a candidate,
:func:`verify` compares the new question with the cached one word by word and rejects the candidate when
the two differ in something that changes the answer:

- **numbers**: the multisets of numbers differ (digits and number words, ``two`` = ``2``; years, prices,
  versions and quantities alike; a sign counts, ``-40`` is not ``40``, and so do a decimal's trailing zeros,
  ``3.10`` is not ``3.1``, as in versions);
- **question type**: both ask a specific kind of question and the kinds differ (who / when / where / why /
  how many-or-much); a generic question ("what", "how", yes/no) matches any kind, because paraphrases swap
  them freely ("What is the best way to learn X?" = "How do I learn X?");
- **negation**: one question is negated and the other is not (``not``, ``n't``, ``never``, ``without``, ...);
- **opposites**: one uses a word and the other its opposite (best/worst, before/after, pros/cons, ...);
- **names**: a name-like token (capitalised inside the sentence, mixed case, or letters mixed with digits:
  ``iPhone``, ``Python3``, ``C++``) that the other question does not contain.

Pure functions over lower-cased word lists: tens of microseconds per pair. No data set was fitted: the
word lists are general English, written by hand (see ``docs/semantic-cache.md`` for how they were chosen
and what each check buys on the evaluation sets).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Final

_APOSTROPHE: Final = "\u2019"  # typographic apostrophe, read as '
#: Words, numbers (a minus sign counts unless a word or a number runs into it: ``COVID-19``, ``3-4``) and symbols.
_WORD = re.compile(
    r"[A-Za-z][A-Za-z0-9+#'\u2019.-]*[A-Za-z0-9+#]|[A-Za-z]|(?:(?<![\w.])-)?\d[\d,]*(?:\.\d+)?[a-zA-Z%]*|[$€£%]"
)

_NUMBER_WORDS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "first": 1, "second": 2,
    "third": 3, "fourth": 4, "fifth": 5, "half": 0.5, "dozen": 12, "twice": 2, "once": 1,
}  # fmt: skip
_NUMERIC: Final = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)([a-z%]*)")
_SCALE: Final = {"k": 1e3, "m": 1e6, "mn": 1e6, "b": 1e9, "bn": 1e9, "lakh": 1e5, "lakhs": 1e5, "crore": 1e7}

#: Specific question kinds (a generic question matches any of them).
_KINDS: Final = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where", "why": "why"}
_QUANTITY: Final = {"many", "much"}

#: "Or not", "if not", "not only": a negation word that does not negate the question.
_NOT_NEGATED: Final = re.compile(r"\bor (?:not|no)\b|\bif not\b|\bnot only\b|\bno matter\b|\bwhy not\b")
_NON_WORDS: Final = frozenset({"none", "nonetheless", "nonsense", "nonprofit", "nonstop", "noon", "nonce"})
_NEGATIONS: Final = frozenset(
    {
        "not",
        "no",
        "never",
        "without",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "cannot",
        "unable",
        "nowhere",
        "absence",
        "lack",
        "lacking",
    }
)

#: Pairs of words whose swap changes the question (both directions are checked).
_OPPOSITES: Final = (
    ("best", "worst"), ("better", "worse"), ("most", "least"), ("more", "less"), ("more", "fewer"),
    ("before", "after"), ("advantages", "disadvantages"), ("pros", "cons"), ("increase", "decrease"),
    ("buy", "sell"), ("cheapest", "expensive"), ("cheap", "expensive"), ("high", "low"),
    ("higher", "lower"), ("highest", "lowest"), ("gain", "lose"), ("win", "lose"), ("start", "stop"),
    ("male", "female"), ("men", "women"), ("man", "woman"), ("boy", "girl"), ("boys", "girls"),
    ("husband", "wife"), ("boyfriend", "girlfriend"), ("old", "new"), ("oldest", "newest"), ("good", "bad"),
    ("positive", "negative"), ("import", "export"), ("upload", "download"), ("enable", "disable"),
    ("install", "uninstall"), ("north", "south"), ("east", "west"), ("past", "future"), ("hot", "cold"),
    ("easy", "hard"), ("easiest", "hardest"), ("fast", "slow"), ("faster", "slower"), ("fastest", "slowest"),
    ("rich", "poor"), ("love", "hate"), ("like", "dislike"), ("true", "false"), ("legal", "illegal"),
    ("possible", "impossible"), ("inside", "outside"), ("minimum", "maximum"), ("min", "max"),
    ("beginner", "advanced"), ("beginners", "advanced"), ("online", "offline"), ("small", "large"),
    ("smallest", "largest"), ("big", "small"), ("biggest", "smallest"), ("long", "short"),
    ("longest", "shortest"), ("weight", "height"), ("first", "last"), ("top", "bottom"),
)  # fmt: skip
_OPPOSITE: Final = {a: b for a, b in _OPPOSITES} | {b: a for a, b in _OPPOSITES}

#: Words that start a sentence or are capitalised for grammar, not because they name something.
_COMMON_CAPS: Final = frozenset(
    {"i", "i'm", "i've", "i'd", "i'll", "is", "are", "what", "which", "who", "how", "why", "when", "where",
     "can", "do", "does", "did", "should", "would", "could", "will", "the", "a", "an", "in", "if", "my",
     "it", "this", "that", "there", "english", "god", "mr", "mrs", "dr", "ok", "okay", "hi", "hello"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cached question's answer may serve the new question, and if not, why."""

    ok: bool
    reason: str = "pass"

    def __str__(self) -> str:
        return self.reason


PASS: Final = Verdict(True)


@dataclass(frozen=True, slots=True)
class _Facts:
    words: tuple[str, ...]  # lower-cased
    numbers: Counter[float | str]
    kind: str | None
    negated: bool
    names: frozenset[str]


def _number(token: str) -> float | str | None:
    """The number ``token`` stands for: its value, or its digits as written when a decimal ends in zeros
    (``3.10``, a version, is not ``3.1``)."""
    low = token.lower()
    if low in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[low])
    m = _NUMERIC.fullmatch(low)
    if m is None:
        return None
    digits = m.group(1).replace(",", "")
    if "." in digits and digits.endswith("0"):
        return digits + m.group(2)
    try:
        value = float(digits)
    except ValueError:
        return None
    return value * _SCALE.get(m.group(2), 1.0)


def _stem(word: str) -> str:
    w = word.lower().replace(_APOSTROPHE, "'").strip(".'-").removesuffix("'s")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def _is_name(token: str, sentence_start: bool) -> bool:
    if token.lower() in _COMMON_CAPS or len(token) < 2:
        return False
    letters = [c for c in token if c.isalpha()]
    if not letters:
        return False
    has_digit = any(c.isdigit() for c in token)
    inner_caps = any(c.isupper() for c in token[1:])
    if has_digit or "+" in token or "#" in token:
        return True
    if inner_caps and not token.isupper():
        return True  # iPhone, McDonald, JavaScript
    if token.isupper() and len(letters) >= 2:
        return True  # USA, GST, IIT
    return token[0].isupper() and not sentence_start


@functools.lru_cache(maxsize=8192)  # the cached side of a pair comes back often
def _facts(text: str) -> _Facts:
    spans = list(_WORD.finditer(text))
    tokens = [m.group(0) for m in spans]
    words = tuple(t.lower().replace(_APOSTROPHE, "'") for t in tokens)
    numbers: Counter[float | str] = Counter()
    for i, t in enumerate(words):
        n = _number(t)
        if n is None:
            continue
        if t in ("one", "once", "second", "first") and not _numeric_context(words, i):
            continue  # "one of", "at once", "the first time": rarely a quantity that changes the answer
        numbers[n] += 1
    kind = None
    for i, w in enumerate(words):
        if w in _KINDS:
            kind = _KINDS[w]
            break
        if w == "how" and i + 1 < len(words) and words[i + 1] in _QUANTITY:
            kind = "quantity"
            break
    head = _first_sentence(text)  # what is asked; a question's second sentence is usually context
    head_words = [w.lower() for w in _WORD.findall(head)]
    negated = any(_negation(w) for w in head_words) and not _NOT_NEGATED.search(" ".join(head_words))
    names: set[str] = set()
    end = 0
    for i, m in enumerate(spans):
        if _is_name(tokens[i], i == 0 or _starts_sentence(text[end : m.start()])):
            names.add(_stem(tokens[i]))
        end = m.end()
    return _Facts(words, numbers, kind, negated, frozenset(names))


def _first_sentence(text: str) -> str:
    m = re.search(r"[?!]|\.(?:\s|$)|\n", text)
    return text if m is None else text[: m.end()]


def _starts_sentence(gap: str) -> bool:
    """Whether the text between two tokens ends a sentence (or a list item: "1.", a new line)."""
    return any(c in ".!?:;\n" for c in gap)


def _negation(word: str) -> bool:
    return (
        word in _NEGATIONS
        or word.endswith("n't")
        or (word.startswith(("no-", "non-", "non")) and word not in _NON_WORDS)
    )


def _numeric_context(words: tuple[str, ...], i: int) -> bool:
    nxt = words[i + 1] if i + 1 < len(words) else ""
    return nxt in ("day", "week", "month", "year", "hour", "minute", "time", "dollar", "rupee", "kg", "percent")


def verify(query: str, cached: str) -> Verdict:
    """Whether the answer cached for ``cached`` may serve ``query`` (see the module docstring)."""
    a, b = _facts(query), _facts(cached)
    if (a.numbers - b.numbers) and (b.numbers - a.numbers):  # a number replaced, not one merely added
        return Verdict(False, f"numbers differ ({_show(a.numbers)} vs {_show(b.numbers)})")
    if a.kind is not None and b.kind is not None and a.kind != b.kind:
        return Verdict(False, f"question type differs ({a.kind} vs {b.kind})")
    if a.negated != b.negated:
        return Verdict(False, "negation differs")
    wa, wb = set(a.words), set(b.words)
    for w in wa - wb:
        opp = _OPPOSITE.get(w)
        if opp is not None and opp in wb and opp not in wa:
            return Verdict(False, f"opposites ({w} vs {opp})")
    only_a, only_b = _unmatched(a.names, b.words), _unmatched(b.names, a.words)
    if only_a and only_b:  # a name replaced by another (one question merely naming more is a detail)
        return Verdict(False, f"names differ ({', '.join(sorted(only_a)[:2])} vs {', '.join(sorted(only_b)[:2])})")
    return PASS


def _unmatched(names: frozenset[str], words: tuple[str, ...]) -> set[str]:
    """Names with no counterpart among ``words``: same stem, a shared 5-letter prefix (typos, derived forms:
    "Pythonic"), or two adjacent words written together ("Hugging Face" = "Huggingface")."""
    if not names:
        return set()
    stems = {_stem(w) for w in words}
    stems |= {_stem(a + b) for a, b in itertools.pairwise(words)}
    prefixes = {w[:5] for w in stems if len(w) >= 5}
    return {n for n in names if n not in stems and not (len(n) >= 5 and n[:5] in prefixes)}


def _show(numbers: Counter[float | str]) -> str:
    values = sorted(n for n in numbers.elements() if isinstance(n, float))
    items = [f"{n:g}" for n in values] + sorted(n for n in numbers.elements() if isinstance(n, str))
    return "[" + ", ".join(items) + "]" if items else "none"
