#!/usr/bin/env python3
"""What a cascade costs a streaming client in time to first token (TTFT).

A cascade route holds the local answer until the answer check passes (``gateway/cascade.py``), so an accepted
stream's first token arrives when the whole local answer is done, and an escalated one's after the local answer
plus the strong model's own TTFT. This script measures it over real sockets: simulated backends with their
profiles' timing (``llama-2-7b`` local, ``gpt-4`` hosted; ``--time-scale`` shrinks both), the gateway in front,
streamed requests through the local model directly, the strong model directly, and a ``cascade`` route (accepted
and escalated: the local simulator refuses prompts containing "refuseme"). Prints median and p90 TTFT and total.

    python bench/cascade_ttft.py --n 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cascade_replay import Served
from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app

PROMPTS = ["Write a short poem about the sea.", "Explain how a bicycle works.", "Describe a walk in the woods."]


def settings(local: str, strong: str) -> Any:
    return settings_from_dict(
        {
            "models": [
                {
                    "name": "llama-2-7b",
                    "backend": "vllm",
                    "base_url": local + "/v1",
                    "upstream_model": "meta-llama/Llama-2-7b-chat-hf",
                    "gpu_hour_usd": 1.0,
                    "tokens_per_second": 1500,
                },
                {"name": "gpt-4", "backend": "openai", "base_url": strong + "/v1", "upstream_model": "gpt-4"},
            ],
            "routes": {"cascade": {"models": ["llama-2-7b", "gpt-4"], "policy": "cascade", "quality_target": 0.5}},
            "cache": {"enabled": False},
            "server": {"log_level": "warning"},
        }
    )


async def one(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> tuple[str, float, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        path = r.headers.get("x-gateway-cascade", "direct")
        async for line in r.aiter_lines():
            if (
                ttft is None
                and line.startswith("data: {")
                and '"content":"' in line.replace(" ", "")
                and ('"content":""' not in line.replace(" ", ""))
            ):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return path, ttft if ttft is not None else total, total


def row(label: str, samples: list[tuple[float, float]]) -> str:
    if not samples:
        return f"{label:<34} (none)"
    ttft = sorted(s[0] * 1000 for s in samples)
    total = sorted(s[1] * 1000 for s in samples)
    p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
    return f"{label:<34} {len(samples):>3} {statistics.median(ttft):9.0f} {p90:9.0f} {statistics.median(total):10.0f}"


async def main_async(args: argparse.Namespace) -> int:
    local = create_simulator_app(
        "llama-2-7b", time_scale=args.time_scale, seed=1, answer_rules=[{"match": "refuseme", "behaviour": "refuse"}]
    )
    strong = create_simulator_app("gpt-4", time_scale=args.time_scale, seed=2)
    with Served(local) as lu, Served(strong) as su, Served(create_app(settings(lu, su))) as gw:
        async with httpx.AsyncClient(base_url=gw, timeout=120) as client:
            results: dict[str, list[tuple[float, float]]] = {}
            cases = [
                ("llama-2-7b", "", "local model directly"),
                ("gpt-4", "", "gpt-4 directly"),
                ("cascade", "", "cascade"),
                ("cascade", "refuseme: ", "cascade"),
            ]
            for i in range(args.n):
                for model, prefix, label in cases:
                    prompt = prefix + PROMPTS[i % len(PROMPTS)]
                    path, ttft, total = await one(client, model, prompt, args.max_tokens)
                    key = label if path == "direct" else f"{label}, {path}"
                    results.setdefault(key, []).append((ttft, total))
    print(f"streamed, max_tokens {args.max_tokens}, simulator time scale {args.time_scale}, sequential")
    print(f"{'path':<34} {'n':>3} {'TTFT p50':>9} {'TTFT p90':>9} {'total p50':>10}  (ms)")
    for key in ("local model directly", "gpt-4 directly", "cascade, accepted", "cascade, escalated"):
        print(row(key, results.get(key, [])))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--time-scale", type=float, default=1.0)
    args = ap.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
