"""Prompt featurisation for the quality router (stdlib; numpy only for training matrices).

Two kinds of features:

* **n-grams**: lower-cased word unigrams and bigrams (numbers collapsed to their digit shape),
  looked up in a vocabulary chosen at training time; unseen n-grams are ignored.
* **cues**: a short dense vector of handcrafted difficulty cues (length, digits, maths symbols,
  code, multiple-choice options, multi-step wording, conversation follow-ups, ...).

Everything is deterministic and process-independent (no reliance on ``hash()``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "CUE_NAMES",
    "MAX_CHARS",
    "MAX_TOKENS",
    "analyze",
    "build_vocabulary",
    "cue_features",
    "cue_matrix",
    "ngrams",
    "tokenize",
]

#: Only the first ``MAX_TOKENS`` tokens feed the n-grams (bounds worst-case latency).
MAX_TOKENS = 192
#: Cues and tokens are computed on the first ``MAX_CHARS`` characters (the length cue excepted).
MAX_CHARS = 1200

_TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|0+(?:[.,]0+)*|[^\sa-z0]")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_NONZERO_DIGIT_RE = re.compile(r"[1-9]")
_UPPER_RE = re.compile(r"[A-Z]")
_NONASCII_RE = re.compile(r"[^\x00-\x7f]")
_CHOICE_RE = re.compile(r"(?m)^\s*\(?[A-D][.)]\s")

_MATH_MARKS: tuple[str, ...] = (*"=+*/^<>±\u00d7÷√∑∫≤≥≠≈∞π", "\\frac", "sqrt")
_CODE_MARKS: tuple[str, ...] = ("```", "def ", "class ", "return", "import ", "{", "}", ";", "()", "==", "!=")
# One regex pass counts the single-character marks (distinct characters, so the same total as summing
# str.count over each); the longer marks are counted one by one.
_MATH_CHARS_RE = re.compile("[" + re.escape("".join(m for m in _MATH_MARKS if len(m) == 1)) + "]")
_MATH_WORDS = tuple(m for m in _MATH_MARKS if len(m) > 1)
_CODE_CHARS_RE = re.compile("[" + re.escape("".join(m for m in _CODE_MARKS if len(m) == 1)) + "]")
_CODE_WORDS = tuple(m for m in _CODE_MARKS if len(m) > 1)

# Cue word lists are matched against the prompt's unigram+bigram set (distinct matches).
_STEP_WORDS = frozenset(
    [
        *"prove derive calculate compute solve total each per remaining percent twice half".split(),
        *"times average probability".split(),
        "how many",
        "how much",
        "step by",
    ]
)
_CREATIVE_WORDS = frozenset(
    "write compose draft story poem essay blog email imagine pretend describe rewrite rephrase "
    "summarize summarise brainstorm ideas persuasive outline tone role character".split()
)
_FOLLOWUP_WORDS = frozenset(
    ["previous", "above", "now", "instead", "again", "same", "it", "that", "your previous", "your last"]
)
_CONSTRAINT_WORDS = frozenset(
    "exactly least most fewer must only format json table list words sentences bullet".split()
)
_LOGIC_WORDS = frozenset(
    [
        *"if then therefore implies true false valid statement argument not except".split(),
        "which of",
        "all of",
        "none of",
    ]
)

#: Names of the dense cue features, in vector order.
CUE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_tokens",
    "log_lines",
    "digit_frac",
    "log_numbers",
    "max_number_len",
    "log_math_marks",
    "log_code_marks",
    "has_choices",
    "log_questions",
    "upper_frac",
    "nonascii_frac",
    "mean_word_len",
    "log_step_words",
    "log_creative_words",
    "followup_short",
    "log_constraint_words",
    "log_logic_words",
)


def _prefix(text: str) -> str:
    return text[:MAX_CHARS] if len(text) > MAX_CHARS else text


def _raw_tokens(prefix: str) -> list[str]:
    # Digits become "0": numbers collapse to their shape ("00", "0.00"), with no per-token code.
    # re.sub, not str.translate: translate takes a slow per-character path on any non-ASCII text (10x).
    return _TOKEN_RE.findall(_NONZERO_DIGIT_RE.sub("0", prefix.lower()))


def _grams(raw: list[str]) -> set[str]:
    toks = raw[:MAX_TOKENS] if len(raw) > MAX_TOKENS else raw
    grams = set(toks)
    grams.update(map(" ".join, pairwise(toks)))
    return grams


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens (words, number shapes such as ``00``, single symbols), at most ``MAX_TOKENS``."""
    return _raw_tokens(_prefix(text))[:MAX_TOKENS]


def ngrams(text: str) -> set[str]:
    """The set of word unigrams and bigrams (space-joined) of ``text``."""
    return _grams(_raw_tokens(_prefix(text)))


def analyze(text: str) -> tuple[set[str], list[float]]:
    """Return ``(ngrams(text), cue_features(text))`` sharing one tokenisation (the fast path)."""
    prefix = _prefix(text)
    raw = _raw_tokens(prefix)
    grams = _grams(raw)
    return grams, _cues(len(text), prefix, raw, grams)


def cue_features(text: str) -> list[float]:
    """Raw (unstandardised) handcrafted difficulty cues, in ``CUE_NAMES`` order."""
    return analyze(text)[1]


def _cues(n_chars: int, text: str, raw: list[str], grams: set[str]) -> list[float]:
    log1 = math.log1p
    inv = 1.0 / max(len(text), 1)
    numbers = _NUMBER_RE.findall(text)
    max_num = max(map(len, numbers), default=0)
    words = text.split()
    mean_wlen = sum(map(len, words)) / len(words) if words else 0.0
    math_marks = len(_MATH_CHARS_RE.findall(text)) + sum(map(text.count, _MATH_WORDS))
    code_marks = len(_CODE_CHARS_RE.findall(text)) + sum(map(text.count, _CODE_WORDS))
    followups = len(grams & _FOLLOWUP_WORDS) if n_chars < 400 else 0
    return [
        log1(n_chars),
        log1(len(raw)),
        log1(text.count("\n")),
        sum(map(text.count, "0123456789")) * inv,
        log1(len(numbers)),
        min(max_num, 12) / 12.0,
        log1(math_marks),
        log1(code_marks),
        1.0 if len(_CHOICE_RE.findall(text)) >= 2 else 0.0,
        log1(text.count("?")),
        len(_UPPER_RE.findall(text)) * inv,
        0.0 if text.isascii() else len(_NONASCII_RE.findall(text)) * inv,
        min(mean_wlen, 20.0) / 20.0,
        log1(len(grams & _STEP_WORDS)),
        log1(len(grams & _CREATIVE_WORDS)),
        log1(followups),
        log1(len(grams & _CONSTRAINT_WORDS)),
        log1(len(grams & _LOGIC_WORDS)),
    ]


def cue_matrix(prompts: Sequence[str]) -> NDArray[np.float64]:
    """Stack ``cue_features`` of many prompts into an ``(n, len(CUE_NAMES))`` array (training; numpy)."""
    import numpy as np

    out = np.empty((len(prompts), len(CUE_NAMES)), dtype=np.float64)
    for i, p in enumerate(prompts):
        out[i] = cue_features(p)
    return out


def build_vocabulary(gram_sets: Iterable[set[str]], min_df: int, max_features: int) -> list[str]:
    """Most document-frequent n-grams (``df >= min_df``), ties broken alphabetically."""
    df: dict[str, int] = {}
    for grams in gram_sets:
        for g in grams:
            df[g] = df.get(g, 0) + 1
    kept = [(c, g) for g, c in df.items() if c >= min_df]
    kept.sort(key=lambda cg: (-cg[0], cg[1]))
    return [g for _, g in kept[:max_features]]
