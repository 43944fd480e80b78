#!/usr/bin/env python3
"""Replay recorded traffic end to end through ``cascade`` routes (and ``learned`` ones, routing by the prompt alone).

Each row of ``--data`` (``bench/cascade_data.py``'s output: an AlpacaEval instruction with Llama-2-7b-chat's and
GPT-4's real answers and GPT-4-judged scores) is sent over HTTP to a real gateway whose two upstreams are
loopback servers that answer with the recorded text: ``llama-2-7b`` (a ``vllm`` backend) with Llama-2's answer,
``gpt-4`` (an ``openai`` backend) with GPT-4's. The gateway routes, asks, checks and escalates as in production;
this script reads only what came back: the answering model (``x-gateway-model``), the cost (``x-gateway-cost-usd``,
every attempt counted) and ``x-gateway-cascade``. Quality of a request = the recorded score of the model that
answered it (win 1, tie 0.5, loss 0 against text-davinci-003), reported as a share of GPT-4's mean quality;
cost as a share of sending everything to ``gpt-4`` through the same gateway.

Prices: gpt-4 $30/$60 per million tokens; the local model its GPU hour ($1.00 at 1,500 tokens/s, prompt tokens
at 10 %), pinned as a static per-token price so that the replay's instant answers do not measure a higher
throughput. Token counts are cl100k_base, reported by the upstreams as ``usage``.

    python bench/cascade_replay.py --data /work/extdata/cascade/test.jsonl --plot cascade_replay.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.tokens import load_tiktoken

TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9)
LOCAL_OUT = Decimal(1) / 3600 / 1500
LOCAL_IN = LOCAL_OUT / 10


def recorded_upstream(answers: dict[str, str], model: str) -> Starlette:
    """An OpenAI-compatible server answering each prompt with its recorded answer (usage in cl100k tokens)."""
    enc = load_tiktoken("cl100k_base")

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        text = answers[prompt]
        return JSONResponse(
            {
                "id": "rec",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,  # the public data has none
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": enc.count(prompt),
                    "completion_tokens": enc.count(text),
                    "total_tokens": enc.count(prompt) + enc.count(text),
                },
            }
        )

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def metrics(request: Request) -> PlainTextResponse:  # the vllm backend scrapes it for queue state
        return PlainTextResponse("")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
            Route("/metrics", metrics),
        ]
    )


class Served:
    """An ASGI app under uvicorn in a thread, on an ephemeral loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", log_config=None, timeout_keep_alive=300))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def gateway_settings(local: str, strong: str) -> Any:
    routes: dict[str, Any] = {}
    for t in TARGETS:
        routes[f"cascade-{t:.2f}"] = {"models": ["llama-2-7b", "gpt-4"], "policy": "cascade", "quality_target": t}
        routes[f"learned-{t:.2f}"] = {"models": ["llama-2-7b", "gpt-4"], "policy": "learned", "quality_target": t}
    return settings_from_dict(
        {
            "models": [
                {
                    "name": "llama-2-7b",
                    "backend": "vllm",
                    "base_url": local + "/v1",
                    "upstream_model": "meta-llama/Llama-2-7b-chat-hf",
                    "quality": 6.27,
                    "context_window": 1_000_000,  # the recorded answers exist: never filter them out
                    "input_cost_per_token": str(LOCAL_IN),
                    "output_cost_per_token": str(LOCAL_OUT),
                },
                {
                    "name": "gpt-4",
                    "backend": "openai",
                    "base_url": strong + "/v1",
                    "quality": 8.99,
                    "context_window": 1_000_000,
                    "input_cost_per_token": "0.00003",
                    "output_cost_per_token": "0.00006",
                },
            ],
            "routes": routes,
            "cache": {"enabled": False},
            "retry": {"max_attempts": 1},
            "server": {"log_level": "warning"},
        }
    )


@dataclass
class Totals:
    name: str
    n: int = 0
    cost: Decimal = Decimal(0)
    quality: float = 0.0
    strong: int = 0
    escalated: int = 0
    models: dict[str, int] = field(default_factory=dict)


async def run_route(client: httpx.AsyncClient, route: str, rows: list[dict[str, Any]], conc: int) -> Totals:
    t = Totals(route)
    sem = asyncio.Semaphore(conc)

    async def one(row: dict[str, Any]) -> None:
        async with sem:
            r = await client.post(
                "/v1/chat/completions",
                json={"model": route, "messages": [{"role": "user", "content": row["prompt"]}]},
            )
        if r.status_code != 200:
            raise SystemExit(f"{route}: HTTP {r.status_code}: {r.text[:300]}")
        model = r.headers["x-gateway-model"]
        t.n += 1
        t.cost += Decimal(r.headers["x-gateway-cost-usd"])
        t.quality += float(row["strong_score"] if model == "gpt-4" else row["weak_score"])
        t.strong += model == "gpt-4"
        t.escalated += r.headers.get("x-gateway-cascade") == "escalated"
        t.models[model] = t.models.get(model, 0) + 1

    await asyncio.gather(*(one(row) for row in rows))
    return t


def plot(points: dict[str, list[tuple[float, float, float]]], out: Path) -> None:
    from policies.router import plotting

    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, pts in points.items():
        xs, ys = [p[1] * 100 for p in pts], [p[0] * 100 for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        for (_q, _c, t), x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(f"{t:.1f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axhline(95, color="grey", ls=":", lw=1)
    ax.axvline(60, color="grey", ls=":", lw=1)
    ax.set_xlabel("cost, % of all-GPT-4 (every attempt counted)")
    ax.set_ylabel("quality, % of GPT-4's")
    ax.set_title("AlpacaEval test split replayed through the gateway\n(point labels: quality_target)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> int:
    rows = [json.loads(x) for x in args.data.read_text(encoding="utf-8").splitlines() if x.strip()]
    if args.limit:
        rows = rows[: args.limit]
    weak = {r["prompt"]: r["answer"] for r in rows}
    strong = {r["prompt"]: r["strong_answer"] for r in rows}
    with (
        Served(recorded_upstream(weak, "meta-llama/Llama-2-7b-chat-hf")) as lu,
        Served(recorded_upstream(strong, "gpt-4")) as su,
        Served(create_app(gateway_settings(lu, su))) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw, timeout=60) as client:
            t0 = time.perf_counter()
            base = await run_route(client, "gpt-4", rows, args.concurrency)
            strong_q = base.quality / base.n
            print(f"{args.data}: {len(rows)} rows; all-GPT-4: quality {strong_q:.3f}, cost ${base.cost:.4f}")
            print(
                f"\n{'route':<14} {'escalated':>9} {'to gpt-4':>9} {'quality':>8} {'% GPT-4':>8} "
                f"{'cost':>9} {'% cost':>7} {'saved':>6}"
            )
            points: dict[str, list[tuple[float, float, float]]] = {"cascade": [], "routing alone (learned)": []}
            for t in TARGETS:
                for kind, label in (("cascade", "cascade"), ("learned", "routing alone (learned)")):
                    r = await run_route(client, f"{kind}-{t:.2f}", rows, args.concurrency)
                    q_share = r.quality / r.n / strong_q
                    c_share = float(r.cost / base.cost)
                    esc = f"{r.escalated / r.n:9.1%}" if kind == "cascade" else f"{'-':>9}"
                    print(
                        f"{r.name:<14} {esc} {r.strong / r.n:9.1%} {r.quality / r.n:8.3f} {q_share:8.1%} "
                        f"${float(r.cost):8.4f} {c_share:7.1%} {1 - c_share:6.1%}"
                    )
                    points[label].append((q_share, c_share, t))
            print(f"\n{len(rows) * (1 + 2 * len(TARGETS))} requests in {time.perf_counter() - t0:.1f} s")
    if args.plot:
        plot(points, args.plot)
        print(f"plot: {args.plot}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    logging.getLogger("gateway").setLevel(logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
