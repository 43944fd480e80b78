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
- **opposites**: one uses a word and the other its opposite (best/worst, ascending/descending, buy/sell, ...);
- **order**: the same words sit on opposite sides of an asymmetric connective (``to``, ``than``, ``from``,
  ``into``, ``over``, ``by``, ...): "100 dollars to euros" vs "100 euros to dollars", "7 bigger than 5" vs
  "5 bigger than 7"; "and", "or", "vs", "between" are symmetric and not checked;
- **instructions**: a short imperative sentence about the answer ("Answer rudely.", "Reply in French.",
  "Be brief.") in one question, whose words the other question lacks;
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
    ("ascending", "descending"), ("asc", "desc"), ("above", "below"), ("upper", "lower"),
    ("uppercase", "lowercase"), ("increasing", "decreasing"), ("increases", "decreases"),
    ("increased", "decreased"), ("increase", "reduce"), ("buying", "selling"), ("bought", "sold"),
    ("buyer", "seller"), ("buyers", "sellers"), ("imports", "exports"), ("importing", "exporting"),
    ("earlier", "later"), ("earliest", "latest"), ("input", "output"), ("inputs", "outputs"),
    ("encrypt", "decrypt"), ("encryption", "decryption"), ("encode", "decode"), ("encoding", "decoding"),
    ("compress", "decompress"), ("serialize", "deserialize"), ("lock", "unlock"), ("connect", "disconnect"),
    ("subscribe", "unsubscribe"), ("add", "remove"), ("add", "subtract"), ("multiply", "divide"),
    ("send", "receive"), ("sender", "receiver"), ("lend", "borrow"), ("lender", "borrower"),
    ("deposit", "withdraw"), ("profit", "loss"), ("gain", "loss"), ("gaining", "losing"),
    ("gained", "lost"), ("credit", "debit"), ("push", "pull"), ("maximize", "minimize"),
    ("maximise", "minimise"), ("include", "exclude"), ("accept", "reject"), ("agree", "disagree"),
    ("forward", "backward"), ("forwards", "backwards"), ("next", "previous"), ("rise", "fall"),
    ("appreciate", "depreciate"), ("overrated", "underrated"), ("overestimate", "underestimate"),
    ("inbound", "outbound"), ("incoming", "outgoing"), ("private", "public"), ("winner", "loser"),
    ("success", "failure"), ("strong", "weak"), ("stronger", "weaker"), ("strongest", "weakest"),
    ("early", "late"), ("younger", "older"), ("youngest", "oldest"), ("taller", "shorter"),
    ("heavier", "lighter"), ("hotter", "colder"), ("summer", "winter"), ("mother", "father"),
    ("son", "daughter"), ("brother", "sister"), ("internal", "external"), ("inner", "outer"),
    ("majority", "minority"), ("employer", "employee"), ("landlord", "tenant"), ("introvert", "extrovert"),
    ("introverts", "extroverts"), ("optimist", "pessimist"), ("optimistic", "pessimistic"),
    ("liberal", "conservative"), ("activate", "deactivate"), ("show", "hide"), ("visible", "invisible"),
    ("visible", "hidden"), ("frontend", "backend"), ("front-end", "back-end"), ("horizontal", "vertical"),
    ("synchronous", "asynchronous"), ("sync", "async"), ("upgrade", "downgrade"), ("upstream", "downstream"),
    ("northern", "southern"), ("eastern", "western"), ("happy", "sad"), ("happy", "unhappy"),
    ("alive", "dead"), ("uploaded", "downloaded"), ("uploading", "downloading"), ("save", "spend"),
    ("income", "expense"), ("income", "expenses"), ("support", "oppose"), ("open", "close"), ("open", "closed"),
)  # fmt: skip
_NONE: Final[frozenset[str]] = frozenset()
_OPPOSITE: Final = {
    w: frozenset(y for a, b in _OPPOSITES for x, y in ((a, b), (b, a)) if x == w) for pair in _OPPOSITES for w in pair
}

#: Words that start a sentence or are capitalised for grammar, not because they name something.
_COMMON_CAPS: Final = frozenset(
    {"i", "i'm", "i've", "i'd", "i'll", "is", "are", "what", "which", "who", "how", "why", "when", "where",
     "can", "do", "does", "did", "should", "would", "could", "will", "the", "a", "an", "in", "if", "my",
     "it", "this", "that", "there", "english", "god", "mr", "mrs", "dr", "ok", "okay", "hi", "hello"}
)  # fmt: skip

#: Words whose two sides play different roles ("100 dollars to euros", "7 bigger than 5", "Java over
#: Python"); "and", "or", "vs", "between", "with" are symmetric and absent.
_ASYMMETRIC: Final = frozenset({"to", "than", "from", "into", "onto", "over", "before", "after", "per", "by"})
#: Function words: they end the run of content words on either side of a connective.
_FUNCTION: Final = _ASYMMETRIC | frozenset(
    "a an the this that these those my your his her its our their me you him them it i we they he she "
    "i'm i've it's who whom whose what which when where why how is are was were be been being am do does did "
    "have has had can could should would will shall may might must not no and or but nor so if then vs versus "
    "between among with without in on at of for about as by under via like there here some any all each "
    "every much many more most less very too also just only please myself yourself himself herself itself "
    "ourselves themselves want wants need needs try trying going able way ways".split()
)
#: Verbs that start an instruction about the answer ("Answer rudely.", "Reply in French.", "Be brief.").
_INSTRUCTING: Final = frozenset(
    "answer reply respond write rewrite be keep make use format translate summarize summarise give list "
    "include avoid don't do never always only limit speak talk pretend act assume ignore output return "
    "start begin end mention cite provide focus stick stay".split()
)
_SENTENCES: Final = re.compile(r"(?<=[.!?])\s+|\n+")


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
    #: Per asymmetric connective: the content words right before and right after it (all its uses).
    sides: dict[str, tuple[frozenset[str], frozenset[str]]]
    #: Per instruction sentence (in a text of two sentences or more): its content words.
    instructions: tuple[tuple[str, frozenset[str]], ...]


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
    sides: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for i, w in enumerate(words):
        if w not in _ASYMMETRIC:
            continue
        left, right = _run(text, spans, words, i, -1), _run(text, spans, words, i, 1)
        if left and right:  # "how to convert": an infinitive, no order
            was = sides.get(w, (_NONE, _NONE))
            sides[w] = (was[0] | left, was[1] | right)
    return _Facts(words, numbers, kind, negated, frozenset(names), sides, _instructions(text))


def _run(text: str, spans: list[re.Match[str]], words: tuple[str, ...], i: int, step: int) -> frozenset[str]:
    """Up to 4 content words next to ``words[i]`` on one side (``step`` -1 or 1), up to a function word or
    punctuation; numbers by value (``five`` = ``5``), words by stem."""
    out: set[str] = set()
    j = i + step
    while 0 <= j < len(words) and len(out) < 4:
        w = words[j]
        k = j if step > 0 else j + 1  # the text between words k - 1 and k
        if w in _FUNCTION or not w[0].isalnum() or text[spans[k - 1].end() : spans[k].start()].strip():
            break
        n = _number(w)
        out.add(_stem(w) if n is None else f"{n:g}" if isinstance(n, float) else n)
        j += step
    return frozenset(out)


def _instructions(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """Short imperative sentences about the answer ("Answer rudely.", "Please reply in French.") in a text
    of two sentences or more, each with the content words it needs the other question to carry."""
    text = text.strip()
    if _SENTENCES.search(text) is None:
        return ()  # a single sentence is the request itself
    sentences = [t for t in _SENTENCES.split(text) if t.strip()]
    out = []
    for sentence in sentences:
        words = [w.lower().replace(_APOSTROPHE, "'") for w in _WORD.findall(sentence)]
        if words[:1] == ["please"]:
            words = words[1:]
        if sentence.endswith("?") or not 0 < len(words) <= 8 or words[0] not in _INSTRUCTING:
            continue  # a long imperative sentence is content ("Use X to ..."), not an instruction
        key = [_stem(w) for w in words[1:] if w not in _FUNCTION or _negation(w)] or [_stem(words[0])]
        out.append((" ".join(words), frozenset(key)))
    return tuple(out)


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
    clash = sorted((w, o) for w in wa - wb for o in _OPPOSITE.get(w, _NONE) & wb if o not in wa)
    if clash:
        return Verdict(False, "opposites ({} vs {})".format(*clash[0]))
    for c, (left, right) in a.sides.items():
        left2, right2 = b.sides.get(c, (_NONE, _NONE))
        x, y = (left & right2) - right - left2, (right & left2) - left - right2
        if x and y:  # something before the connective in one is after it in the other, and vice versa
            p, q = _word(a.words, min(x)), _word(a.words, min(y))
            return Verdict(False, f"order differs ({p} {c} {q} vs {q} {c} {p})")
    for side, mine, other in (("new", a, b), ("cached", b, a)):
        for sentence, key in mine.instructions:
            if not key <= {_stem(w) for w in other.words}:  # "Answer rudely." that the other does not say
                return Verdict(False, f"instruction differs ({side}: '{sentence}')")
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


def _word(words: tuple[str, ...], key: str) -> str:
    """The word of ``words`` that ``key`` (a stem or a number's value) stands for, as written."""
    return next((w for w in words if _stem(w) == key), key)


def _show(numbers: Counter[float | str]) -> str:
    values = sorted(n for n in numbers.elements() if isinstance(n, float))
    items = [f"{n:g}" for n in values] + sorted(n for n in numbers.elements() if isinstance(n, str))
    return "[" + ", ".join(items) + "]" if items else "none"
