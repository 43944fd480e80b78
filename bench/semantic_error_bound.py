#!/usr/bin/env python3
"""What a route with ``semantic_max_error`` gets on Quora-like traffic: the error bound, replayed offline.

The held-out Quora pairs (odd indices; evaluation only) are replayed in order through the gateway's own
decision code (``cache.verify.verify`` and ``cache.learn.Learner``, default sampling rates): each pair is one
lookup, ``text_a`` the cached question and ``text_b`` the new one, scored by the default runtime's cosine.
A simulated judge answers every sampled check with the pair's Quora label (a judge that agrees with Quora's
annotators). Printed per bound: the served hits' precision and recall over the whole stream and over its
second half (after the route has learned), the threshold it settled on, and the fixed default beside it.
Nothing is fitted offline: each route learns its threshold online, from its own checked outcomes, as in
production.

    .venv/bin/python bench/semantic_error_bound.py [--data-dir ../shared/data/cache] [--keep /tmp/pair-states.pkl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.semantic_pair_classifier import token_states
from cache.learn import Learner, RouteRules
from cache.minilm import MiniLMEmbedder
from cache.semantic import default_runtime, encode_vector
from cache.verify import verify
from gateway.config import CacheSettings


def replay(
    rows: list[dict[str, Any]], scores: np.ndarray, passed: np.ndarray, rules: RouteRules, seed: int
) -> tuple[np.ndarray, float | None]:
    """Served (bool per pair) for one route replaying ``rows`` in order, and its final threshold."""
    s = CacheSettings()
    learner = Learner(
        {"r": rules}, check_rate=s.semantic_check_rate, explore_rate=s.semantic_explore_rate, rng=random.Random(seed)
    )
    served = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        d = learner.decide("r", f"e{i}", float(scores[i]), "pass" if passed[i] else "fail", bool(passed[i]))
        served[i] = d.served
        if learner.sample(d):
            learner.record_outcome(d.id, row["label"] == 1)
    return served, learner.threshold("r")


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cache"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CACHE_EVAL_DATA", default)))
    ap.add_argument("--keep", type=Path, default=None, help="token states kept by semantic_pair_classifier.py")
    ap.add_argument("--bounds", default="0.05,0.10,0.15,0.20")
    ap.add_argument("--limit", type=int, default=None, help="first N held-out pairs only")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = json.loads((args.data_dir / "qqp_pairs_dev.json").read_text())[1::2][: args.limit]
    embedder = MiniLMEmbedder(runtime=default_runtime())
    states = token_states(embedder, [p[k] for p in rows for k in ("text_a", "text_b")], args.keep)

    def stored(text: str) -> np.ndarray:
        return np.frombuffer(encode_vector(states[text].vector), dtype=np.float16).astype(np.float32)

    scores = np.array([float(stored(p["text_a"]) @ states[p["text_b"]].vector) for p in rows])
    passed = np.array([verify(p["text_b"], p["text_a"]).ok for p in rows])
    labels = np.array([p["label"] == 1 for p in rows])
    half = len(rows) // 2
    settings = CacheSettings()
    print(f"Quora held-out, {len(rows)} pairs replayed in order, {labels.sum()} duplicates; judge = Quora's label")
    print("  route                         precision / recall (all)   (second half)   threshold at the end")
    fixed = RouteRules(settings.semantic_threshold, floor=settings.semantic_floor)
    cases = [(f"fixed {settings.semantic_threshold} (default)", fixed)]
    cases += [
        (
            f"semantic_max_error {b}",
            RouteRules(settings.semantic_threshold, max_error=float(b), floor=settings.semantic_floor),
        )
        for b in args.bounds.split(",")
    ]
    for name, rules in cases:
        served, final = replay(rows, scores, passed, rules, seed=0)
        parts = []
        for sl in (slice(None), slice(half, None)):
            sv, lb = served[sl], labels[sl]
            prec = (sv & lb).sum() / sv.sum() if sv.sum() else float("nan")
            parts.append(f"{prec:.3f} / {(sv & lb).sum() / lb.sum():.3f}")
        shown = "none (cold)" if final is None else f"{final:.4f}"
        print(f"  {name:<29} {parts[0]:<26} {parts[1]:<15} {shown}")


if __name__ == "__main__":
    main()
