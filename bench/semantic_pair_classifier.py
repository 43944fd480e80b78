#!/usr/bin/env python3
"""Can a learned pair classifier over cheap features lift the semantic cache's precision? Measured, not shipped.

The classifier: logistic regression over features of a (cached, asked) pair that cost well under a
millisecond once both texts' token vectors are known: the sentence cosine, token-level alignment (for each
content word-piece of one text, the best cosine to any token of the other, from all-MiniLM-L6-v2's last
layer: the worst and mean over both sides, the share below 0.6), the length ratio, and the verifier's verdict
(``cache/verify.py``: numbers, names, negation, question type, opposites).

Training data is built here from GPTCache's 999 paraphrase pairs (MIT) alone, with no Quora data:

- positives: each (original, paraphrase);
- hard negatives: the two nearest *other* originals of each paraphrase (``nn``); the paraphrase with one
  content word swapped for a word of its nearest other original (``sub``); the paraphrase with a qualifier
  appended (``add``: "... for/in/with/without/on WORD"); the original with one content word deleted (``del``).

Reported, the Quora pairs only for evaluation (split as in ``semantic_cache_eval.py``: even = dev,
odd = held-out): ROC AUC and precision at recall 0.43 / 0.50 for the cosine, the default's cosine + verifier,
and the GPTCache-trained classifier; and a **ceiling**: the same features with a model fitted on the Quora
dev half and scored on the held-out half. The ceiling is never shipped (Quora's terms are non-commercial);
it says how far any model over these features could go. GPTCache's own split (by pair parity) shows what
the classifier learned on the data it was built for.

    .venv/bin/python bench/semantic_pair_classifier.py [--data-dir ../shared/data/cache] [--qqp-limit N]
        [--keep /tmp/pair-states.pkl]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.minilm import MiniLMEmbedder, TokenStates
from cache.semantic import default_runtime
from cache.verify import verify

_STOP = frozenset(
    """a an the of to in on for with and or is are was were be been being by as at from that this these those it
    its i you he she we they me my your our their his her them us do does did how what which who whom whose when
    where why can could should would will shall may might must have has had not no if then than so such there
    here about into over under between through during before after above below up down out off again further
    once all any both each few more most other some own same very just also only too don doesn isn aren wasn
    weren best way good get make use using used""".split()
)
_PIECE_STOP = frozenset(
    """. , ? ! ' " - ( ) : ; a an the of to in on for with and or is are was were be been by as at from that this
    it its i you we they my your do does did how what which who when where why can could should would will may
    have has had there s t""".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
FEATURES = (
    "cosine",
    "align_worst",
    "align_worst_other",
    "align_mean",
    "unaligned_share",
    "length_ratio",
    "verifier_fail",
)
Pair = tuple[str, str, int, str]  # cached, asked, label, kind


def content_words(text: str) -> list[str]:
    """Words of four letters or more that are not function words."""
    return [w for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) >= 4]


def build_pairs(gpt: list[dict[str, str]], vectors: dict[str, np.ndarray], seed: int = 0) -> list[Pair]:
    """GPTCache's positives and the hard negatives built from them (see the module docstring)."""
    rnd = random.Random(seed)
    origins = [p["origin"] for p in gpt]
    similars = [p["similar"] for p in gpt]
    sims = np.stack([vectors[t] for t in similars]) @ np.stack([vectors[t] for t in origins]).T
    pairs: list[Pair] = [(p["origin"], p["similar"], 1, "pos") for p in gpt]
    for i, p in enumerate(gpt):
        others = [int(j) for j in np.argsort(-sims[i]) if origins[j] != p["origin"]]
        pairs += [(origins[j], p["similar"], 0, "nn") for j in others[:2]]
        donor = [w for w in content_words(origins[others[0]]) if w.lower() not in p["similar"].lower()]
        words = content_words(p["similar"])
        if words and donor:
            w = rnd.choice(words)
            swapped = re.sub(r"\b" + re.escape(w) + r"\b", rnd.choice(donor), p["similar"], count=1)
            pairs.append((p["origin"], swapped, 0, "sub"))
        if donor:
            stem = p["similar"].rstrip(".?! ")
            end = p["similar"][len(stem) :] or "."
            prep = rnd.choice(["for", "in", "with", "without", "on"])
            pairs.append((p["origin"], f"{stem} {prep} {rnd.choice(donor)}{end}", 0, "add"))
        words = content_words(p["origin"])
        if len(words) >= 3:
            shorter = re.sub(r"\s*\b" + re.escape(rnd.choice(words)) + r"\b", "", p["origin"], count=1)
            pairs.append((shorter, p["similar"], 0, "del"))
    return pairs


def token_states(embedder: MiniLMEmbedder, texts: list[str], keep: Path | None) -> dict[str, TokenStates]:
    """Token states of every distinct text (``keep``: a pickle reused by the next run)."""
    known: dict[str, TokenStates] = pickle.loads(keep.read_bytes()) if keep and keep.exists() else {}
    todo = sorted({t for t in texts if t not in known}, key=len)
    t0 = time.perf_counter()
    for i in range(0, len(todo), 32):
        part = todo[i : i + 32]
        known.update(zip(part, embedder.embed_tokens(part), strict=True))
    if todo:
        print(f"  token states of {len(todo)} texts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if keep:
            keep.write_bytes(pickle.dumps(known))
    return known


def _best_match(a: TokenStates, b: TokenStates) -> np.ndarray:
    keep = [i for i, t in enumerate(a.tokens) if t.lstrip("#").lower() not in _PIECE_STOP] or list(range(len(a.tokens)))
    x = a.states[keep]
    y = b.states
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    y = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-9)
    out: np.ndarray = (x @ y.T).max(axis=1)
    return out


def features(cached: str, asked: str, states: dict[str, TokenStates]) -> np.ndarray:
    """The pair's features, in the order of ``FEATURES``."""
    a, b = states[cached], states[asked]
    cosine = float(a.vector @ b.vector)
    fail = 0.0 if verify(asked, cached).ok else 1.0
    if not a.tokens or not b.tokens:
        return np.array([cosine, 0.0, 0.0, 0.0, 1.0, 0.0, fail])
    sa, sb = _best_match(a, b), _best_match(b, a)
    unaligned = ((sa < 0.6).sum() + (sb < 0.6).sum()) / (len(sa) + len(sb))
    ratio = min(len(a.tokens), len(b.tokens)) / max(len(a.tokens), len(b.tokens))
    worst = sorted((float(sa.min()), float(sb.min())))
    return np.array([cosine, worst[0], worst[1], (sa.mean() + sb.mean()) / 2, unaligned, ratio, fail])


class Logistic:
    """L2-regularised logistic regression on standardised features (Newton's method)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> None:
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = np.hstack([(x - self.mu) / self.sd, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        for _ in range(30):
            p = 1 / (1 + np.exp(-z @ w))
            grad = z.T @ (p - y) + l2 * np.r_[w[:-1], 0.0]
            hess = (z * (p * (1 - p))[:, None]).T @ z + l2 * np.eye(len(w))
            w -= np.linalg.solve(hess, grad)
        self.w = w

    def score(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.hstack([(x - self.mu) / self.sd, np.ones((len(x), 1))]) @ self.w
        return out

    def describe(self) -> str:
        return ", ".join(f"{n} {w:+.2f}" for n, w in zip((*FEATURES, "bias"), self.w, strict=True))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 1
    n1, n0 = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def precision_at(scores: np.ndarray, labels: np.ndarray, recall: float) -> float:
    """Precision of the highest-scoring pairs that reach ``recall``."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order])
    k = int(np.searchsorted(tp, recall * labels.sum()))
    return float(tp[k] / (k + 1))


def report(name: str, scorers: dict[str, np.ndarray], labels: np.ndarray) -> None:
    print(f"\n{name}: {len(labels)} pairs, {labels.sum()} duplicates")
    levels = (0.2, 0.3, 0.4, 0.43, 0.5, 0.6, 0.7)
    print("  scorer                         ROC AUC   precision at recall " + " ".join(f"{r:5.2f}" for r in levels))
    for label, s in scorers.items():
        row = " ".join(f"{precision_at(s, labels, r):5.3f}" for r in levels)
        print(f"  {label:<30} {auc(s, labels):6.3f}                       {row}")


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cache"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CACHE_EVAL_DATA", default)))
    ap.add_argument("--qqp-limit", type=int, default=None, help="first N Quora pairs only")
    ap.add_argument("--keep", type=Path, default=None, help="a pickle keeping token states between runs")
    args = ap.parse_args()
    gpt: list[dict[str, str]] = json.loads((args.data_dir / "gptcache_paraphrase_positives.json").read_text())
    qqp: list[dict[str, Any]] = json.loads((args.data_dir / "qqp_pairs_dev.json").read_text())[: args.qqp_limit]
    runtime = default_runtime()
    embedder = MiniLMEmbedder(runtime=runtime)
    print(f"runtime {runtime}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    states = token_states(embedder, [p[k] for p in gpt for k in ("origin", "similar")], args.keep)
    pairs = build_pairs(gpt, {t: s.vector for t, s in states.items()})
    states = token_states(embedder, [t for a, b, *_ in pairs for t in (a, b)], args.keep)
    x = np.array([features(a, b, states) for a, b, *_ in pairs])
    y = np.array([label for _, _, label, _ in pairs], dtype=float)
    kinds = np.array([kind for *_, kind in pairs])
    print(f"self-built pairs from GPTCache: {', '.join(f'{k} {int((kinds == k).sum())}' for k in sorted(set(kinds)))}")
    source = {p["similar"]: i for i, p in enumerate(gpt)} | {p["origin"]: i for i, p in enumerate(gpt)}
    part = np.array([source.get(b, source.get(a, 0)) % 2 for a, b, *_ in pairs])
    half = Logistic(x[part == 0], y[part == 0])
    va = part == 1
    report(
        "GPTCache self-built pairs, odd source pairs (classifier fitted on the even ones)",
        {"cosine": x[va, 0], "cosine, verifier gate": x[va, 0] - 10 * x[va, 6], "classifier": half.score(x[va])},
        y[va] == 1,
    )
    model = Logistic(x, y)
    print(f"\nclassifier fitted on all self-built pairs: {model.describe()}")
    t0 = time.perf_counter()
    states = token_states(embedder, [p[k] for p in qqp for k in ("text_a", "text_b")], args.keep)
    print(f"  (Quora token states ready after {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    halves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, rows in (("dev (even)", qqp[0::2]), ("held-out (odd)", qqp[1::2])):
        t1 = time.perf_counter()
        q = np.array([features(p["text_a"], p["text_b"], states) for p in rows])
        each = (time.perf_counter() - t1) * 1e6 / len(rows)
        labels = np.array([p["label"] == 1 for p in rows])
        halves[name] = (q, labels)
        report(
            f"Quora {name} (features {each:.0f} us per pair)",
            {
                "cosine": q[:, 0],
                "cosine, verifier gate (now)": q[:, 0] - 10 * q[:, 6],
                "classifier (GPTCache-built)": model.score(q),
            },
            labels,
        )
    (qd, ld), (qh, lh) = halves["dev (even)"], halves["held-out (odd)"]
    ceiling = Logistic(qd, ld.astype(float))
    report(
        "CEILING, never shipped: the same features, a model fitted on Quora dev, scored on held-out",
        {"Quora-fitted classifier": ceiling.score(qh)},
        lh,
    )
    print(f"  its weights: {ceiling.describe()}")


if __name__ == "__main__":
    main()
