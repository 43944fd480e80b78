"""Routing decision time per request, per policy (p50, p99), on the example config's three models.

    .venv/bin/python bench/routing_decision.py [--n 5000] [--data routellm_train.jsonl] [--added-ms 0.84]
        [--prompt TEXT] [--cold-mib 8] [--policy NAME]

Measures the decide stage as the pipeline runs it, on real prompts (a seeded sample of the RouteLLM
routing data: ``--data``, else ``shared/data/routing/routellm_train.jsonl`` beside or above the checkout
when present, else five built-in prompts), as two timings per request:

* ``features``: ``extract_features`` (the tiktoken count of the prompt, capabilities). Every request pays
  it, an explicit model name included (context-window check, predicted cost); it is shown for reference.
* ``decision``: ``Router.plan`` for the route ``auto``: the learned router's score (reading the token ids the
  features stage produced), candidate predictions, constraints and the policy's ranking and reason. This
  is what routing adds to a request; no backend is called.

With ``--cold-mib N``, N MiB of memory are read between two requests (outside the timings), so every decision
starts with its code and data out of the CPU caches, as in the server, where everything else a request does
runs between two decisions (8 MiB came close to the decision times the gateway's own histogram shows in
``bench/decision_share.sh``'s sequential phase; the warm figures are 3-4x lower).

With ``--added-ms`` (the gateway's added latency p50 of a routed request, from ``bench/run_side_by_side.sh``
with ``OTHER_MODEL=auto``), it also prints the decision's share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import time
from pathlib import Path

from gateway.config import load_settings
from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.runtime import build_gateway, close_gateway

ROOT = Path(__file__).resolve().parents[1]
_REL = Path("shared") / "data" / "routing" / "routellm_train.jsonl"
DATA = next((p for p in (ROOT / _REL, ROOT.parent / _REL) if p.exists()), None)
BUILTIN = [
    "Say hello.",
    "Write a Python function that merges two sorted lists and explain its complexity step by step.",
    "What is the capital of Australia?",
    "Solve for x: 3x + 7 = 22, then compute the probability that a fair die shows x.",
    "Summarise the plot of Hamlet in three sentences. " * 4,
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def load_prompts(n: int, seed: int, prompt: str | None, data: Path | None) -> tuple[list[str], str]:
    if prompt is not None:
        return [prompt], f"one prompt ({len(prompt)} chars)"
    if data is None:
        return BUILTIN, "five built-in prompts"
    prompts = [json.loads(line)["prompt"] for line in data.open(encoding="utf-8") if line.strip()]
    sample = random.Random(seed).sample(prompts, min(n, len(prompts)))
    chars = statistics.median(len(p) for p in sample)
    return sample, f"{len(sample)} RouteLLM prompts (median {chars:.0f} chars)"


async def main(
    n: int, added_ms: float | None, seed: int, prompt: str | None, cold_mib: float, only: str | None, data: Path | None
) -> None:
    settings = load_settings(ROOT / "gateway.example.yaml")
    gw = await build_gateway(settings)
    router, counter = gw.router, gw.pipeline.counter
    prompts, described = load_prompts(n, seed, prompt, data)
    estimator = "learned router" if router.estimator is not None else "heuristic difficulty"
    print(f"models: {[m.name for m in settings.models]}; quality signal: {estimator}")
    print(f"prompts: {described}; {n} requests per policy after 500 warm-up")
    # Read (bytes() copies it) between requests to evict the caches; kept outside the timings.
    evict = bytearray(int(cold_mib * 2**20)) if cold_mib > 0 else None
    if evict is not None:
        print(f"caches: {cold_mib:g} MiB read between two requests (cold, as in the server)")
    header = f"{'policy':10} {'decision p50':>12} {'p99':>8} {'mean':>8}   {'features p50':>12} {'p99':>8}  (us)"
    print(header)
    gc.collect()
    decisions: dict[str, float] = {}
    try:
        for policy in [None, *sorted(router.policies)] if only is None else [only]:
            constraints = Constraints(policy=policy)
            model = "auto" if policy is not None else settings.models[0].name
            feat_us: list[float] = []
            plan_us: list[float] = []
            for i in range(n + 500):
                body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
                if evict is not None:
                    bytes(evict)
                t0 = time.perf_counter()
                feats = extract_features("chat", body, counter)
                t1 = time.perf_counter()
                router.plan(model, feats, constraints)
                t2 = time.perf_counter()
                if i >= 500:
                    feat_us.append((t1 - t0) * 1e6)
                    plan_us.append((t2 - t1) * 1e6)
            name = policy or "(explicit)"
            decisions[name] = pct(plan_us, 0.5)
            print(
                f"{name:10} {pct(plan_us, 0.5):12.1f} {pct(plan_us, 0.99):8.1f} {statistics.fmean(plan_us):8.1f}"
                f"   {pct(feat_us, 0.5):12.1f} {pct(feat_us, 0.99):8.1f}"
            )
    finally:
        await close_gateway(gw)
    if added_ms:
        print(f"decision p50 as a share of the gateway's added latency ({added_ms} ms):")
        for name, us in decisions.items():
            print(f"  {name:10} {us / (added_ms * 1000) * 100:5.2f} %")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--added-ms", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default=None, help="time this one prompt (e.g. the side-by-side harness's)")
    parser.add_argument("--cold-mib", type=float, default=0.0, help="MiB read between requests to evict the caches")
    parser.add_argument("--policy", default=None, help="time this policy only (on the route auto)")
    parser.add_argument("--data", type=Path, default=DATA, help="RouteLLM-style JSONL with a 'prompt' per line")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.added_ms, args.seed, args.prompt, args.cold_mib, args.policy, args.data))
