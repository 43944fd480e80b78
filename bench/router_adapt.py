"""Benchmark: adapting the quality router to a deployment whose traffic the prior never saw.

Simulates the shift with the RouteLLM data: the prior is trained without one benchmark (default GSM8K), then
adapted (:func:`policies.router.adapt.adapt`) on N labelled prompts of that benchmark and evaluated on the
rest of it, against the frozen prior, for N in 50, 100, 200, 400, 800 and several random draws. Prints APGR,
CPT(50%) and the share of the all-strong cost saved at 95% of the strong model's quality (mean ± sd over the
seeds) and writes a plot. Not a test: it takes minutes (one prior training, ~1k embeddings).

    python bench/router_adapt.py --data ../shared/data/routing/routellm_train.jsonl --holdout gsm8k \
        --seeds 5 --plot bench/router_adapt.png
    python bench/router_adapt.py --deployment train.jsonl test.jsonl --sizes 100 200 400 600 --seeds 20 \
        --vector minilm-static

The second form measures a deployment's own labels instead (pooled, random draws), from the shipped prior.
``--vector`` picks the prompt vector the adapted router reads (``minilm``, the default, or ``minilm-static``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway.tokens import load_tiktoken
from policies.router import metrics
from policies.router.adapt import VECTORS, AdaptConfig, adapt, prompt_embed, saved_at_quality
from policies.router.data import Record, load_records
from policies.router.model import QualityRouter
from policies.router.train import TrainConfig, train_router

SIZES = (50, 100, 200, 400, 800)


def _figures(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[float, float, float]:
    curve = metrics.pgr_curve(scores, weak, strong)
    return metrics.apgr(curve), metrics.cpt(curve, 0.5), saved_at_quality(scores, weak, strong, 0.95)


Rows = dict[int, dict[str, list[tuple[float, float, float]]]]


def _run(
    records: list[Record], prior: QualityRouter, seeds: int, min_test: int, sizes_: list[int], vector: str
) -> tuple[Rows, list[int]]:
    """Frozen vs adapted figures on random draws of N training labels (the rest evaluates)."""
    prompts = [r.prompt for r in records]
    t0 = time.perf_counter()
    vectors = prompt_embed(vector)(prompts)
    print(f"{len(prompts)} prompts embedded in {time.perf_counter() - t0:.0f} s")
    vec_of = {p: vectors[i] for i, p in enumerate(prompts)}

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([vec_of[t] for t in texts])

    weak = np.array([r.weak for r in records])
    strong = np.array([r.strong for r in records])
    prior_scores = np.array([prior.score(p) for p in prompts])
    sizes = [n for n in sizes_ if n <= len(records) - min_test]
    rows: Rows = {}
    for n in sizes:
        rows[n] = {"frozen": [], "adapted": []}
        for seed in range(seeds):
            perm = np.random.default_rng(1000 * seed + n).permutation(len(records))
            train, test = perm[:n], perm[n:]
            config = AdaptConfig(folds=5, seed=seed, vector=vector)
            router = adapt([records[i] for i in train], prior, embed, config)
            scores = router.score_batch([prompts[i] for i in test], vectors[test])
            rows[n]["adapted"].append(_figures(scores, weak[test], strong[test]))
            rows[n]["frozen"].append(_figures(prior_scores[test], weak[test], strong[test]))
    return rows, sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/routing/routellm_train.jsonl"))
    ap.add_argument("--holdout", default="gsm8k", help="the benchmark left out of the prior (the new traffic)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--min-test", type=int, default=200, help="prompts kept for evaluation at the largest N")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of training labels")
    ap.add_argument(
        "--deployment",
        type=Path,
        nargs="+",
        default=None,
        help="instead of the shift: labelled JSONL files of a deployment, adapted from the shipped prior",
    )
    ap.add_argument("--vector", choices=VECTORS, default="minilm", help="the prompt vector the adapted router reads")
    args = ap.parse_args()

    enc = load_tiktoken("cl100k_base")
    with tempfile.TemporaryDirectory() as tmp:
        if args.deployment:
            prior = QualityRouter.load(None, encode=enc.encode)
            records = [r for path in args.deployment for r in load_records(path)]
            name = "+".join(p.name for p in args.deployment)
            what = f"shipped prior; adapted on N of {len(records)} labelled prompts of {name}"
        else:
            raw = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
            rest = Path(tmp) / "prior.jsonl"
            rest.write_text("".join(json.dumps(r) + "\n" for r in raw if r.get("benchmark") != args.holdout))
            shifted = Path(tmp) / "shifted.jsonl"
            shifted.write_text("".join(json.dumps(r) + "\n" for r in raw if r.get("benchmark") == args.holdout))
            t0 = time.perf_counter()
            train_router(rest, Path(tmp) / "prior", TrainConfig(folds=2), encoding=enc.encoding)
            prior = QualityRouter.load(Path(tmp) / "prior", encode=enc.encode)
            print(f"prior trained without {args.holdout} in {time.perf_counter() - t0:.0f} s")
            records = load_records(shifted)
            name = args.holdout
            what = f"prior trained without {name}; adapted on N of its {len(records)} labelled prompts"
        rows, sizes = _run(records, prior, args.seeds, args.min_test, args.sizes, args.vector)

    print(f"\n{what}, prompt vector {args.vector},")
    print(f"evaluated on the rest; mean ± sd over {args.seeds} random draws")
    print(f"{'N':>5} {'router':<8} {'APGR':>13} {'CPT(50%)':>15} {'saved at 95%':>15}")
    for n in sizes:
        for router_name in ("frozen", "adapted"):
            a = np.array(rows[n][router_name])
            m, s = a.mean(axis=0), a.std(axis=0)
            print(
                f"{n:>5} {router_name:<8} {m[0]:>6.3f} ± {s[0]:.3f} {100 * m[1]:>6.1f}% ± {100 * s[1]:4.1f}"
                f" {100 * m[2]:>6.1f}% ± {100 * s[2]:4.1f}"
            )
    if args.plot:
        _plot(args.plot, sizes, rows, name)
        print(f"plot written to {args.plot}")
    return 0


def _plot(
    path: Path, sizes: list[int], rows: dict[int, dict[str, list[tuple[float, float, float]]]], name: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for k, (title, scale) in enumerate((("APGR", 1), ("CPT(50%) (%)", 100), ("saved at 95% quality (%)", 100))):
        for label in ("frozen", "adapted"):
            a = np.array([[row[k] for row in rows[n][label]] for n in sizes]) * scale
            axes[k].errorbar(sizes, a.mean(axis=1), yerr=a.std(axis=1), marker="o", capsize=3, label=label)
        axes[k].set_xscale("log")
        axes[k].set_xticks(sizes, [str(n) for n in sizes])
        axes[k].minorticks_off()
        axes[k].set_xlabel(f"{name} labels")
        axes[k].set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
