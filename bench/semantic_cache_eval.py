#!/usr/bin/env python3
"""Semantic cache quality: hit rate, false hits and precision per similarity threshold.

Two public data sets (see ``shared/data/README.md``; never copied into this repository):

1. Quora Question Pairs (20,000 pairs, label 1 = same question, 0 = a hard non-duplicate). Each pair is
   one cache bucket holding ``text_a``; querying with ``text_b`` hits when the cosine reaches the
   threshold. Reported: hit rate on duplicates (recall), false-hit rate on non-duplicates, and precision
   (duplicates among hits, at this data set's 37% duplicate share).
2. GPTCache's 999 paraphrase pairs, measured as GPTCache's own benchmark does: all 999 originals go into
   one cache (one bucket: same system prompt, same parameters), every paraphrase is a query, a hit is
   correct when the entry returned is the paraphrase's own original; precision = correct hits / hits.
   Printed beside GPTCache's published table (ONNX albert embeddings + FAISS).

Everything runs through the gateway's own code: the all-MiniLM-L6-v2 embedder the cache uses, vectors
stored as float16 in the in-process store, and the same bucket search (``cache.semantic.best_matches``).

    .venv/bin/python bench/semantic_cache_eval.py [--runtime onnx] [--data-dir ../shared/data/cache] [--qqp-limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.memory import MemoryStore
from cache.semantic import (
    Embedder,
    best_matches,
    decode_vectors,
    default_runtime,
    encode_vector,
    load_embedder,
)

THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
#: GPTCache's published results on the same 999 pairs: threshold -> (hit rate, precision).
GPTCACHE = {0.95: (0.45, 0.944), 0.90: (0.88, 0.913), 0.80: (1.00, 0.908)}


def embed_all(embedder: Embedder, texts: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    """Unit vectors for each distinct text (batched by length so padding stays small)."""
    unique = sorted(set(texts), key=len)
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for i in range(0, len(unique), batch):
        part = unique[i : i + batch]
        for text, vec in zip(part, embedder.embed(part), strict=True):
            out[text] = vec
    dt = time.perf_counter() - t0
    print(f"  embedded {len(unique)} texts in {dt:.1f} s ({len(unique) / dt:.0f}/s)", file=sys.stderr)
    return out


def as_stored(vec: np.ndarray) -> np.ndarray:
    """The vector as the cache compares it (after the float16 round trip)."""
    out: np.ndarray = decode_vectors([encode_vector(vec)], vec.shape[-1])[0]
    return out


def qqp(embedder: Embedder, path: Path, limit: int | None) -> None:
    pairs = json.loads(path.read_text())[:limit]
    vecs = embed_all(embedder, [p["text_a"] for p in pairs] + [p["text_b"] for p in pairs])
    labels = np.array([p["label"] for p in pairs], dtype=bool)
    scores = np.array([float(as_stored(vecs[p["text_a"]]) @ vecs[p["text_b"]]) for p in pairs])
    pos, neg = labels.sum(), (~labels).sum()
    print(f"\nQuora Question Pairs: {len(pairs)} pairs ({pos} duplicates, {neg} non-duplicates)")
    print("threshold  hit rate (dup)  false-hit rate (non-dup)  precision of hits")
    for t in THRESHOLDS:
        hit = scores >= t
        tp, fp = int((hit & labels).sum()), int((hit & ~labels).sum())
        prec = tp / (tp + fp) if tp + fp else float("nan")
        print(f"  {t:.2f}     {tp / pos:6.1%}          {fp / neg:6.1%}                   {prec:6.1%}")


async def gptcache_pairs(embedder: Embedder, pairs: list[dict[str, str]]) -> None:
    vecs = embed_all(embedder, [p["origin"] for p in pairs] + [p["similar"] for p in pairs])
    store = MemoryStore(max_entries=10_000, max_bucket=len(pairs) + 1)
    for i, p in enumerate(pairs):
        await store.add_vector("v:bench", f"e:{i}", encode_vector(vecs[p["origin"]]), 3600)
    members = await store.vectors("v:bench")
    rows: dict[float, tuple[float, float, float]] = {}
    top = [best_matches(vecs[p["similar"]], members, -1.0, limit=1)[0] for p in pairs]  # (score, key) each
    for t in sorted({*THRESHOLDS, *np.round(np.arange(0.60, 0.96, 0.01), 2)}):
        hits = correct = same_text = 0
        for i, p in enumerate(pairs):
            score, key = top[i]
            if score >= t:  # what best_matches(query, members, t, limit=1) returns at this threshold
                hits += 1
                j = int(key.removeprefix("e:"))
                correct += j == i
                same_text += pairs[j]["origin"] == p["origin"]
        rows[float(t)] = (hits / len(pairs), correct / hits if hits else 0.0, same_text / hits if hits else 0.0)
    dupes = len(pairs) - len({p["origin"] for p in pairs})
    print(f"\nGPTCache paraphrase pairs: {len(pairs)} originals cached, {len(pairs)} paraphrases queried")
    print(f"({dupes} originals repeat an earlier one word for word: GPTCache's rule counts the twin as wrong)")
    print("threshold  ours: hit rate  precision (GPTCache's rule / twins right)   GPTCache: hit rate  precision")
    for t in THRESHOLDS:
        hr, prec, prec_text = rows[t]
        theirs = GPTCACHE.get(t)
        ref = f"{theirs[0]:6.1%}        {theirs[1]:6.1%}" if theirs else "   -             -"
        print(f"  {t:.2f}          {hr:6.1%}     {prec:6.1%} / {prec_text:6.1%}                      {ref}")
    print("at GPTCache's hit rates (our highest threshold reaching it):")
    for t_ref, (hr_ref, prec_ref) in sorted(GPTCACHE.items(), reverse=True):
        ok = [t for t, row in rows.items() if row[0] >= hr_ref - 1e-9]
        if not ok:
            print(f"  hit rate {hr_ref:.0%}: not reached (max {max(row[0] for row in rows.values()):.1%})")
            continue
        t = max(ok)
        hr, prec, prec_text = rows[t]
        print(
            f"  hit rate >= {hr_ref:.0%}: ours {hr:.1%} at {prec:.1%} precision ({prec_text:.1%} with twins right;"
            f" threshold {t:.2f}); GPTCache {hr_ref:.0%} at {prec_ref:.1%} (threshold {t_ref:.2f})"
        )


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cache"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CACHE_EVAL_DATA", default)))
    ap.add_argument("--qqp-limit", type=int, default=None, help="first N Quora pairs only")
    ap.add_argument("--runtime", default="auto", choices=["auto", "numpy", "onnx", "onnx-int8"])
    ap.add_argument("--only", choices=["gptcache", "qqp"], default=None, help="run one of the two evaluations")
    args = ap.parse_args()
    t0 = time.perf_counter()
    runtime = default_runtime() if args.runtime == "auto" else args.runtime
    embedder = load_embedder(runtime=runtime)
    print(f"model: all-MiniLM-L6-v2, runtime {runtime} (loaded in {time.perf_counter() - t0:.1f} s)")
    if args.only != "qqp":
        pairs = json.loads((args.data_dir / "gptcache_paraphrase_positives.json").read_text())
        asyncio.run(gptcache_pairs(embedder, pairs))
    if args.only != "gptcache":
        qqp(embedder, args.data_dir / "qqp_pairs_dev.json", args.qqp_limit)


if __name__ == "__main__":
    main()
