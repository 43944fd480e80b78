"""Routing data: loading JSONL outcome records, quality normalisation, grouping and folds.

A record holds a prompt and the quality of a weak and a strong model's answer to it. Qualities
are normalised to [0, 1]: correctness stays as is, 1-10 judge scores (MT-Bench) map through
``(score - 1) / 9``. Affine maps leave each benchmark's PGR unchanged; they only put benchmarks
on one scale when pooled.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Record",
    "file_sha256",
    "group_ids",
    "grouped_folds",
    "load_prompts",
    "load_records",
    "normalize_quality",
]

_TURN_RE = re.compile(r"/turn\d+$")
_JUDGE_BENCHMARKS = frozenset({"mt_bench", "mt-bench", "mtbench", "arena", "chatbot_arena"})


@dataclass(frozen=True)
class Record:
    """One prompt with both models' normalised answer quality (``weak``/``strong`` in [0, 1])."""

    prompt: str
    benchmark: str
    item_id: str
    weak: float
    strong: float


def normalize_quality(benchmark: str, score: float, judge_scale: bool) -> float:
    """Map a raw score to [0, 1]: judge scores (1-10) via ``(s - 1) / 9``, correctness unchanged."""
    if judge_scale:
        return min(max((score - 1.0) / 9.0, 0.0), 1.0)
    return float(score)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, object]]]:
    """``(line number, object)`` per non-blank line of a JSONL file (errors name the line)."""
    rows: list[tuple[int, dict[str, object]]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}: line {lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {lineno}: each line must be a JSON object")
            rows.append((lineno, obj))
    return rows


def load_prompts(path: Path) -> list[str]:
    """Read the ``prompt`` field of every JSONL record in ``path``.

    Raises:
        OSError: an unreadable file. ValueError: a line that is not a JSON object with a string ``prompt``.
    """
    prompts: list[str] = []
    for lineno, row in _read_jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}: line {lineno} has no string 'prompt' field")
        prompts.append(_text(path, lineno, prompt))
    return prompts


def _text(path: Path, lineno: int, prompt: str) -> str:
    """``prompt``, refused when it is not text the tokenizers take (JSON may spell a lone surrogate, ``\\ud800``)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: line {lineno}: 'prompt' holds a lone surrogate (not Unicode text)") from None
    return prompt


#: ``(line number, field, raw score)``: where a score shows which scale its benchmark uses.
_Evidence = tuple[int, str, float]


@dataclass
class _Scale:
    """The first score above 1 (only the 1-10 judge scale has one) and below 1 (only [0, 1] has one)."""

    above_one: _Evidence | None = None
    below_one: _Evidence | None = None

    def see(self, lineno: int, field: str, score: float) -> None:
        if score > 1.0 and self.above_one is None:
            self.above_one = (lineno, field, score)
        elif score < 1.0 and self.below_one is None:
            self.below_one = (lineno, field, score)


def _score(path: Path, lineno: int, field: str, value: object) -> float:
    """A raw score: a finite number in [0, 10] (0/1, [0, 1] or a 1-10 judge score)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: line {lineno} needs 'prompt', 'weak_score' and 'strong_score' (numbers)")
    try:
        score = float(value)
    except OverflowError:  # an integer of hundreds of digits
        score = math.inf
    if not 0.0 <= score <= 10.0:  # also false for NaN
        raise ValueError(f"{path}: line {lineno}: {field} {value} is not a score (0/1, in [0, 1], or 1-10)")
    return score


def _judge_scale(path: Path, bench: str, scale: _Scale) -> bool:
    """Whether ``bench`` is on the 1-10 judge scale; one whose scores are on both scales is refused."""
    judge = bench.lower() in _JUDGE_BENCHMARKS or scale.above_one is not None
    if not judge or scale.below_one is None:
        return judge
    lo_line, lo_field, lo = scale.below_one
    if scale.above_one is None:
        raise ValueError(
            f"{path}: line {lo_line}: {lo_field} {lo:g} is below 1, but benchmark '{bench}' is judged on the 1-10 scale"
        )
    hi_line, hi_field, hi = scale.above_one
    raise ValueError(
        f"{path}: line {hi_line}: {hi_field} {hi:g} is a 1-10 judge score, but line {lo_line} of the same benchmark "
        f"'{bench}' has {lo_field} {lo:g}, a [0, 1] score: one benchmark's scores must share one scale (give the "
        "other scale's rows their own 'benchmark')"
    )


def load_records(path: Path) -> list[Record]:
    """Read routing outcome records (fields as in ``routellm_train.jsonl``).

    Required: ``prompt``, ``weak_score``, ``strong_score``; optional: ``benchmark`` (default
    ``"unknown"``), ``item_id`` (default: the benchmark and the record's index). A benchmark is judged on the
    1-10 scale when it is a known judge benchmark or any of its scores exceeds 1.

    Raises:
        OSError: an unreadable file. ValueError: a malformed line, a score outside [0, 10], or a benchmark
        whose scores mix the [0, 1] and the 1-10 scale (the message names the lines).
    """
    raw: list[tuple[str, str, str, float, float]] = []
    scales: dict[str, _Scale] = {}
    for i, (lineno, row) in enumerate(_read_jsonl(path)):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}: line {lineno} needs 'prompt', 'weak_score' and 'strong_score'")
        prompt = _text(path, lineno, prompt)
        ws = _score(path, lineno, "weak_score", row.get("weak_score"))
        ss = _score(path, lineno, "strong_score", row.get("strong_score"))
        bench = str(row.get("benchmark") or "unknown")
        item = str(row.get("item_id") or f"{bench}/{i}")
        raw.append((prompt, bench, item, ws, ss))
        scale = scales.setdefault(bench, _Scale())
        scale.see(lineno, "weak_score", ws)
        scale.see(lineno, "strong_score", ss)
    judge = {bench: _judge_scale(path, bench, scale) for bench, scale in scales.items()}
    return [
        Record(
            prompt=prompt,
            benchmark=bench,
            item_id=item,
            weak=normalize_quality(bench, ws, judge[bench]),
            strong=normalize_quality(bench, ss, judge[bench]),
        )
        for prompt, bench, item, ws, ss in raw
    ]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the artifact as the training-data hash)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def group_ids(records: Sequence[Record]) -> NDArray[np.int64]:
    """Group id per record: turns of one item (``.../turnN``) and identical prompts share a group."""
    parent: list[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    keys: dict[str, int] = {}
    first: list[int] = []
    for rec in records:
        ids = []
        for key in ("i:" + _TURN_RE.sub("", rec.item_id), "p:" + " ".join(rec.prompt.lower().split())):
            if key not in keys:
                keys[key] = len(parent)
                parent.append(len(parent))
            ids.append(keys[key])
        ra, rb = find(ids[0]), find(ids[1])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        first.append(ids[0])
    roots = [find(a) for a in first]
    remap: dict[int, int] = {}
    return np.array([remap.setdefault(r, len(remap)) for r in roots], dtype=np.int64)


def grouped_folds(groups: NDArray[np.int64], k: int, seed: int) -> NDArray[np.int64]:
    """Assign each record a fold in ``0..k-1`` so that no group straddles two folds."""
    if k < 2:
        raise ValueError("k must be at least 2")
    n_groups = int(groups.max()) + 1 if groups.size else 0
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[rng.permutation(n_groups)] = np.arange(n_groups) % k
    return fold_of_group[groups]
