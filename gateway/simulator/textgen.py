"""Deterministic text, logprob, tool-argument and embedding generation for the simulator.

Nothing here is a language model: text is assembled from a fixed vocabulary, driven by a
hash of the prompt and the seed, so the same request always yields the same answer.
Each generated "token" is one word-piece (a word with its leading space, or a
punctuation mark), which is what the simulator counts as a completion token.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "GeneratedText",
    "TokenLogprob",
    "apply_stop",
    "build_tool_arguments",
    "count_chat_prompt_tokens",
    "count_text_tokens",
    "embed_text",
    "generate_text",
    "message_text",
    "split_fragments",
    "stable_hash",
]

_VOCAB: tuple[str, ...] = tuple(
    """
    the a model system request answer token server gateway latency cost quality route
    local hosted cluster queue stream response prompt context window cache budget user
    question result value signal metric policy backend engine batch memory speed time
    simple careful useful clear small large fast steady reliable open shared final first
    next good better best short long quick direct useful natural typical careful robust
    is are was can will should may often usually quickly always never also then again
    uses returns sends keeps makes takes gives finds routes serves checks measures picks
    of to in for with on at by from into over under about between through after before
    and or but so because while when where which that this these those it they we you
    """.split()
)
_PUNCT_FINAL = (".", ".", ".", "!", "?")
_WORD_RE = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of one generated token and its top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class GeneratedText:
    """One generated choice: its tokens (word-pieces) and why generation ended."""

    tokens: tuple[str, ...]
    finish_reason: str
    stop_reason: str | None = None

    @property
    def text(self) -> str:
        """The concatenated completion text."""
        return "".join(self.tokens)


def stable_hash(*parts: object) -> int:
    """A process-independent 64-bit hash of ``parts`` (unlike ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def count_text_tokens(text: str) -> int:
    """Approximate token count of ``text``: one token per ~4 characters."""
    return (len(text) + 3) // 4


def message_text(content: Any) -> str:
    """Extract the text of a chat message ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif isinstance(part, str):
                pieces.append(part)
        return " ".join(pieces)
    return str(content)


def count_chat_prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """Approximate prompt tokens of a chat request: ~len/4 per message plus 4 per message.

    Tool definitions and assistant tool calls are counted by the length of their JSON.
    """
    total = 3  # the assistant reply priming, as chat templates add
    for message in messages:
        total += 4 + count_text_tokens(message_text(message.get("content")))
        if message.get("tool_calls"):
            total += count_text_tokens(orjson.dumps(message["tool_calls"]).decode())
    if tools:
        total += count_text_tokens(orjson.dumps(tools).decode())
    return total


def generate_text(
    key: int,
    *,
    max_tokens: int,
    natural_tokens: int,
    ignore_eos: bool = False,
    stop: Sequence[str] = (),
) -> GeneratedText:
    """Generate a deterministic completion for the request identified by ``key``.

    The natural (end-of-sequence) length varies deterministically between 75 % and 125 %
    of ``natural_tokens``; the result has ``min(natural, max_tokens)`` tokens, or exactly
    ``max_tokens`` when ``ignore_eos`` is set.  ``stop`` strings truncate the text (the stop
    string itself is not included) and give ``finish_reason="stop"``.
    """
    rng = random.Random(key)
    natural = max(1, round(natural_tokens * (0.75 + 0.5 * rng.random())))
    length = max_tokens if ignore_eos else min(natural, max_tokens)
    tokens = _sentence_tokens(rng, length)
    finish = "length" if length == max_tokens and (ignore_eos or natural > max_tokens) else "stop"
    if stop:
        truncated, matched = apply_stop(tokens, stop)
        if matched is not None:
            return GeneratedText(tuple(truncated), "stop", matched)
    return GeneratedText(tuple(tokens), finish)


def _sentence_tokens(rng: random.Random, count: int) -> list[str]:
    tokens: list[str] = []
    sentence_left = 0
    while len(tokens) < count:
        if sentence_left == 0:
            sentence_left = rng.randint(6, 14)
            word = rng.choice(_VOCAB).capitalize()
            tokens.append(word if not tokens else " " + word)
        elif sentence_left == 1:
            tokens.append(rng.choice(_PUNCT_FINAL))
        elif sentence_left > 3 and tokens[-1][-1].isalpha() and rng.random() < 0.08:
            tokens.append(",")
        else:
            tokens.append(" " + rng.choice(_VOCAB))
        sentence_left -= 1
    return tokens


def apply_stop(tokens: Sequence[str], stop: Iterable[str]) -> tuple[list[str], str | None]:
    """Truncate ``tokens`` before the first occurrence of any stop string.

    Returns the kept tokens (the token in which the stop string starts is kept, cut short,
    so it still counts as generated) and the matched stop string, or ``None``.
    """
    text = "".join(tokens)
    best: tuple[int, str] | None = None
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    if best is None:
        return list(tokens), None
    cut, matched = best
    kept: list[str] = []
    offset = 0
    for tok in tokens:
        if offset + len(tok) > cut:
            kept.append(tok[: cut - offset])
            break
        kept.append(tok)
        offset += len(tok)
    return kept, matched


def token_logprobs(key: int, tokens: Sequence[str], top_k: int, *, unsure: bool = False) -> list[TokenLogprob]:
    """Deterministic log-probabilities for ``tokens`` with ``top_k`` alternatives each.

    The sampled token is always the most likely one, so it heads its ``top`` list. A confident answer's
    tokens get log-probabilities in [-1.5, 0); an ``unsure`` one's in [-4.5, -0.5] (a model guessing).
    """
    rng = random.Random(key ^ 0x5EED)
    low, high = (0.5, 4.5) if unsure else (0.001, 1.5)
    out: list[TokenLogprob] = []
    for tok in tokens:
        lp = -round(rng.uniform(low, high), 4)
        top: list[tuple[str, float]] = [(tok, lp)] if top_k > 0 else []
        prev = lp
        while len(top) < top_k:
            alt = (" " if tok.startswith(" ") else "") + rng.choice(_VOCAB)
            if any(alt == t for t, _ in top):
                continue
            prev = round(prev - rng.uniform(0.2, 2.0), 4)
            top.append((alt, prev))
        out.append(TokenLogprob(tok, lp, tuple(top)))
    return out


def build_tool_arguments(schema: Any, key: int, hint: str = "") -> dict[str, Any]:
    """Deterministic arguments that satisfy (the simple parts of) a JSON-schema object.

    Every declared property gets a value of its declared type (``enum`` values and
    ``default`` values are honoured).  String properties reuse words from ``hint``
    (usually the last user message) when there are any.
    """
    rng = random.Random(key)
    hint_words = [w for w in _WORD_RE.findall(hint.lower()) if len(w) > 2]
    value = _schema_value(schema if isinstance(schema, Mapping) else {}, rng, hint_words, "value", 0)
    return value if isinstance(value, dict) else {"value": value}


def _schema_value(schema: Mapping[str, Any], rng: random.Random, hint: list[str], name: str, depth: int) -> Any:
    if "default" in schema:
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    props = schema.get("properties")
    if kind == "object" or (kind is None and isinstance(props, Mapping)):
        result: dict[str, Any] = {}
        if isinstance(props, Mapping) and depth < 4:
            for prop_name, prop_schema in props.items():
                sub = prop_schema if isinstance(prop_schema, Mapping) else {}
                result[str(prop_name)] = _schema_value(sub, rng, hint, str(prop_name), depth + 1)
        return result
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return True
    if kind == "array":
        items = schema.get("items")
        sub = items if isinstance(items, Mapping) else {"type": "string"}
        return [_schema_value(sub, rng, hint, name, depth + 1)] if depth < 4 else []
    if kind == "null":
        return None
    words = hint if hint else list(_VOCAB)
    return " ".join(rng.choice(words) for _ in range(2))


def split_fragments(text: str, size: int = 4) -> list[str]:
    """Split ``text`` into fragments of ``size`` characters (streamed tool-call arguments)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def embed_text(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (feature hashing of words and trigrams).

    Texts sharing words get similar vectors, so cosine similarity is meaningful enough
    for semantic-cache tests; identical texts always get identical vectors.
    """
    vec = [0.0] * dim
    words = _WORD_RE.findall(text.lower())
    for word in words:
        _add_feature(vec, "w:" + word, 1.0)
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            _add_feature(vec, "t:" + padded[i : i + 3], 0.25)
    if not words:
        _add_feature(vec, "raw:" + text, 1.0)
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec]


def _add_feature(vec: list[float], feature: str, weight: float) -> None:
    h = stable_hash(feature)
    vec[h % len(vec)] += weight if (h >> 32) & 1 else -weight
