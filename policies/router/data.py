"""Routing data: loading JSONL outcome records, quality normalisation, grouping and folds.

A record holds a prompt and the quality of a weak and a strong model's answer to it. Qualities
are normalised to [0, 1]: correctness stays as is, 1-10 judge scores (MT-Bench) map through
``(score - 1) / 9``. Affine maps leave each benchmark's PGR unchanged; they only put benchmarks
on one scale when pooled.
"""

from __future__ import annotations

import hashlib
import json
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


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}: each line must be a JSON object")
                rows.append(obj)
    return rows


def load_prompts(path: Path) -> list[str]:
    """Read the ``prompt`` field of every JSONL record in ``path``."""
    prompts: list[str] = []
    for i, row in enumerate(_read_jsonl(path)):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}: record {i} has no string 'prompt' field")
        prompts.append(prompt)
    return prompts


def load_records(path: Path) -> list[Record]:
    """Read routing outcome records (fields as in ``routellm_train.jsonl``).

    Required: ``prompt``, ``weak_score``, ``strong_score``; optional: ``benchmark`` (default
    ``"unknown"``), ``item_id`` (default: the line number). A benchmark is judged on the 1-10
    scale when it is a known judge benchmark or any of its scores exceeds 1.
    """
    rows = _read_jsonl(path)
    raw: list[tuple[str, str, str, float, float]] = []
    max_score: dict[str, float] = {}
    for i, row in enumerate(rows):
        prompt, ws, ss = row.get("prompt"), row.get("weak_score"), row.get("strong_score")
        if not isinstance(prompt, str) or not isinstance(ws, int | float) or not isinstance(ss, int | float):
            raise ValueError(f"{path}: record {i} needs 'prompt', 'weak_score' and 'strong_score'")
        bench = str(row.get("benchmark") or "unknown")
        item = str(row.get("item_id") or f"{bench}/{i}")
        raw.append((prompt, bench, item, float(ws), float(ss)))
        max_score[bench] = max(max_score.get(bench, 0.0), float(ws), float(ss))
    out: list[Record] = []
    for prompt, bench, item, ws, ss in raw:
        judge = bench.lower() in _JUDGE_BENCHMARKS or max_score[bench] > 1.0
        out.append(
            Record(
                prompt=prompt,
                benchmark=bench,
                item_id=item,
                weak=normalize_quality(bench, ws, judge),
                strong=normalize_quality(bench, ss, judge),
            )
        )
    return out


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
