"""What an answer's text says about its adequacy: refusals, moralising, disclaimers, hedges, degenerate output.

Each signal is a number computed from the prompt and the answer alone (stdlib only, no tokenizer). The phrase
lists were written from the ways Llama-2-chat declines, moralises and hedges (its safety tuning makes it refuse
harmless requests, lecture about respect, and claim to be "just an AI"), and checked against the training half
of the AlpacaEval data (``bench/cascade_eval.py --signals`` prints each signal's firing rate and loss rate on
the split it is given). Counts are of distinct phrases, so a long lecture and a short one weigh alike.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["TextSignals", "text_signals"]

# Phrases are matched case-insensitively with word boundaries; curly apostrophes are normalised first.
_REFUSAL: Final = (
    r"i (?:cannot|can not|can't|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:fulfill|comply|provide|assist|help|create|write|generate|answer|give|offer|support|recommend|"
    r"share|engage|participate|do that|complete|perform|continue|make|produce|endorse|promote|suggest|tell)",
    r"i (?:must|have to) (?:decline|refuse|respectfully decline)",
    r"i apologi[sz]e,? but",
    r"i'm sorry,? but",
    r"(?:is|are|would be) not (?:appropriate|possible|ethical|acceptable|respectful)",
    r"(?:it's|it is) not (?:appropriate|possible|ethical|acceptable|respectful)",
    r"not within my (?:programming|ethical guidelines|capabilities)",
    r"against my (?:programming|ethical|guidelines)",
    r"i cannot (?:and will not|in good conscience)",
)
_MORALISING: Final = (
    r"i must (?:politely |respectfully )?(?:point out|inform you|clarify|remind you|emphasize|note)",
    r"i would like to (?:point out|clarify|remind you)",
    r"i want to (?:point out|clarify|remind you|make sure)",
    r"(?:harmful|offensive|discriminatory|derogatory|inappropriate|hurtful|dangerous) (?:language|content|"
    r"stereotypes|and|or|behavior|behaviour|activities)",
    r"(?:socially unbiased|positive in nature|respectful and (?:inclusive|safe|helpful)|safe and respectful)",
    r"(?:ethical|moral) (?:standards|guidelines|principles|considerations)",
    r"(?:doesn't|does not|may not) make (?:much )?sense",
    r"(?:is|are) not (?:factually )?coherent",
    r"(?:question|request|statement|prompt) (?:contains|is based on|may be|is) (?:harmful|a false|not|"
    r"problematic|based on)",
    r"prioriti[sz]e (?:safety|your safety|ethical|respect)",
)
#: Softer caveats: common in good answers too, so a separate, weaker signal.
_CAVEAT: Final = (
    r"it(?:'s| is) important to (?:note|remember|recognize|respect|approach|prioritize|be)",
    r"with respect and (?:sensitivity|dignity|kindness)",
    r"consult (?:a|with a) (?:professional|qualified|licensed|medical|doctor)",
    r"as a (?:responsible|helpful|respectful|honest)(?: and (?:respectful|honest|ethical|responsible))? "
    r"(?:ai|assistant)",
)
_DISCLAIMER: Final = (
    r"as an ai",
    r"i'm just an ai",
    r"i am just an ai",
    r"(?:an|as a) (?:ai|artificial intelligence) (?:language )?model",
    r"i don't have (?:personal|the ability|access to real-time|real-time|feelings|opinions|emotions)",
    r"i do not have (?:personal|the ability|access to real-time|real-time|feelings|opinions|emotions)",
    r"(?:language model|ai),? i (?:don't|do not|cannot|can't)",
)
_HEDGE: Final = (
    r"i'm not (?:sure|certain|aware)",
    r"i am not (?:sure|certain|aware)",
    r"i don't know",
    r"i do not know",
    r"(?:cannot|can't|unable to) (?:verify|guarantee|confirm|determine|predict|be certain)",
    r"(?:may|might) not be (?:accurate|correct|up-to-date|up to date|reliable|complete)",
    r"(?:it's|it is) (?:difficult|hard|impossible|not possible) to (?:say|determine|predict|know|provide)",
    r"(?:there is|there's) no (?:definitive|single|one-size-fits-all|clear) (?:answer|way)",
    r"without more (?:context|information)",
    r"(?:could|can) you (?:please )?(?:provide|clarify|give|specify|tell me)",
    r"(?:please|kindly) (?:provide|clarify|specify)",
    r"i'm not able to (?:browse|access)",
    r"my (?:knowledge|training data) (?:cutoff|is limited|only goes)",
)

_FLAGS: Final = re.IGNORECASE


@dataclass(frozen=True, slots=True)
class _Group:
    """One signal's phrases: ``any`` finds whether one matches in a single pass (most answers have none), and only
    then ``each`` counts which (one pass per phrase, so overlapping phrases all count)."""

    any: re.Pattern[str]
    each: tuple[re.Pattern[str], ...]

    def __iter__(self) -> Iterator[re.Pattern[str]]:
        return iter(self.each)


def _compile(patterns: tuple[str, ...]) -> _Group:
    joined = "|".join(f"(?:{p})" for p in patterns)
    return _Group(
        re.compile(r"\b(?:" + joined + r")\b", _FLAGS), tuple(re.compile(r"\b" + p + r"\b", _FLAGS) for p in patterns)
    )


_REFUSAL_RE: Final = _compile(_REFUSAL)
_MORALISING_RE: Final = _compile(_MORALISING)
_DISCLAIMER_RE: Final = _compile(_DISCLAIMER)
_HEDGE_RE: Final = _compile(_HEDGE)
_CAVEAT_RE: Final = _compile(_CAVEAT)
_WORD_RE: Final = re.compile(r"\w+")
_CODE_PROMPT_RE: Final = re.compile(
    r"\b(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|sql|bash|regex|html|css|function|script|code|"
    r"program|implement|algorithm)\b",
    _FLAGS,
)
_CODE_ANSWER_RE: Final = re.compile(r"```|^(?: {4}|\t)\S|\b(?:def|return|function|class|SELECT|#include)\b", re.M)
_BRIEF_RE: Final = re.compile(
    r"\b(?:one|single|1|two|three) (?:word|sentence|line|phrase)s?\b|\bbrief(?:ly)?\b|\bshort\b|\bconcise(?:ly)?\b|"
    r"\byes or no\b|\btitle\b|\bheadline\b|\btweet\b|\bslogan\b|\bin a few words\b|\bsummari[sz]e\b|\bname\b",
    _FLAGS,
)
_LONG_RE: Final = re.compile(
    r"\b(?:essay|story|article|blog post|report|detailed|in detail|step[- ]by[- ]step|explain|guide|plan|"
    r"poem|script|letter|speech|outline|itinerary|list of \d+|\d+ (?:ideas|examples|tips|ways|reasons))\b",
    _FLAGS,
)
_APOSTROPHES: Final = str.maketrans({"\u2019": "'", "\u2018": "'"})
#: Only the first this many characters are searched for phrases (they open the answer; bounds the cost).
_SCAN_CHARS: Final = 4000
#: The opening of an answer, where Llama-2-chat puts the objections that replace an answer.
OPENING_CHARS: Final = 400


@dataclass(frozen=True, slots=True)
class TextSignals:
    """The text signals of one answer (counts are of distinct phrase patterns that matched)."""

    refusal: int
    moralising: int
    disclaimer: int
    hedge: int
    caveat: int
    #: A refusal or moralising phrase within the answer's first :data:`OPENING_CHARS` characters.
    objects_early: bool
    empty: bool
    #: Share of repeated word 4-grams (0 = none repeated; a loop that repeats itself tends to 1).
    repetition: float
    #: 1 - zlib compression ratio of the text (degenerate text compresses far better than prose).
    compressibility: float
    answer_words: int
    prompt_words: int
    #: The prompt asks for something short (one sentence, a title, yes or no...).
    asks_brief: bool
    #: The prompt asks for something long (an essay, a story, a detailed explanation, a list of N...).
    asks_long: bool
    #: The prompt asks for code and the answer shows none.
    code_missing: bool
    #: The answer ends mid-sentence (no closing punctuation, bracket, quote or code fence).
    unfinished: bool


def _count(group: _Group, text: str) -> int:
    if group.any.search(text) is None:
        return 0
    return sum(1 for p in group.each if p.search(text))


def _repetition(words: list[str]) -> float:
    n = len(words) - 3
    if n <= 1:
        return 0.0
    grams = {(words[i], words[i + 1], words[i + 2], words[i + 3]) for i in range(n)}
    return 1.0 - len(grams) / n


def _compressibility(text: str) -> float:
    raw = text.encode("utf-8")
    if len(raw) < 64:
        return 0.0
    return max(0.0, 1.0 - len(zlib.compress(raw, 6)) / len(raw))


def _unfinished(text: str) -> bool:
    tail = text.rstrip()
    if not tail:
        return False
    return tail[-1] not in ".!?)]}\"'`*:;>|" and not tail.endswith(("```", "\u201d")) and not tail[-1].isdigit()


def text_signals(prompt: str, answer: str) -> TextSignals:
    """The text signals of ``answer`` given the ``prompt`` it answers."""
    head = answer[:_SCAN_CHARS].translate(_APOSTROPHES)
    opening = head[:OPENING_CHARS]
    words = _WORD_RE.findall(answer.lower())
    prompt_words = len(_WORD_RE.findall(prompt))
    is_code = bool(_CODE_PROMPT_RE.search(prompt))
    return TextSignals(
        refusal=_count(_REFUSAL_RE, head),
        moralising=_count(_MORALISING_RE, head),
        disclaimer=_count(_DISCLAIMER_RE, head),
        hedge=_count(_HEDGE_RE, head),
        caveat=_count(_CAVEAT_RE, head),
        objects_early=_count(_REFUSAL_RE, opening) + _count(_MORALISING_RE, opening) > 0,
        empty=not answer.strip(),
        repetition=_repetition(words),
        compressibility=_compressibility(answer),
        answer_words=len(words),
        prompt_words=prompt_words,
        asks_brief=bool(_BRIEF_RE.search(prompt)),
        asks_long=bool(_LONG_RE.search(prompt)),
        code_missing=is_code and not _CODE_ANSWER_RE.search(answer),
        unfinished=_unfinished(answer),
    )


def log_words(n: int) -> float:
    """``ln(1 + n)``: the scale of the length features."""
    return math.log1p(n)
