"""Routing decision time per request, per policy (p50, p99), on the example config's three models.

    .venv/bin/python bench/routing_decision.py [--n 20000]

Measures the decide stage as the pipeline runs it: request features (tiktoken prompt count, capabilities)
plus ``Router.plan`` (candidate predictions, constraints, the policy's ranking). No backend is called.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from gateway.app import build_gateway, close_gateway
from gateway.config import load_settings
from gateway.context import Constraints
from gateway.features import extract_features

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Say hello.",
    "Write a Python function that merges two sorted lists and explain its complexity step by step.",
    "What is the capital of Australia?",
    "Solve for x: 3x + 7 = 22, then compute the probability that a fair die shows x.",
    "Summarise the plot of Hamlet in three sentences. " * 4,
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(n: int) -> None:
    settings = load_settings(ROOT / "gateway.example.yaml")
    gw = await build_gateway(settings)
    router, counter = gw.router, gw.pipeline.counter
    estimator = "learned router" if router.estimator is not None else "heuristic difficulty"
    print(f"models: {[m.name for m in settings.models]}; quality signal: {estimator}; n={n} per policy")
    print(f"{'policy':10} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}   (features + plan)")
    try:
        for policy in sorted(router.policies):
            constraints = Constraints(policy=policy)
            times: list[float] = []
            for i in range(n + 500):
                body = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
                t0 = time.perf_counter()
                feats = extract_features("chat", body, counter)
                router.plan("auto", feats, constraints)
                if i >= 500:
                    times.append(time.perf_counter() - t0)
            us = [t * 1e6 for t in times]
            print(f"{policy:10} {pct(us, 0.5):8.1f} {pct(us, 0.99):8.1f} {statistics.fmean(us):8.1f}")
    finally:
        await close_gateway(gw)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    asyncio.run(main(parser.parse_args().n))
