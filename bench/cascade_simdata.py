#!/usr/bin/env python3
"""Build cascade traffic from the simulator: local answers (with logprobs and finish_reason) over real sockets.

The public data (``bench/cascade_data.py``) has real answers but no log-probabilities and no truncated answers,
so it cannot show what those signals are worth. This script makes traffic that has them: each prompt is sent to a
simulated Llama-2-7b (``gateway.simulator``, over HTTP with the ``openai`` SDK, ``logprobs: true``) and a
simulated GPT-4, with the simulator's answer rules making a known share of local answers go wrong:

* ``--refuse`` share: a Llama-2-style refusal (weak quality 0);
* ``--truncate`` share: cut at 24 tokens, ``finish_reason: length`` (weak quality 0);
* ``--unsure`` share: normal text, low-confidence logprobs (weak quality 0: the model was guessing);
* the rest: normal answers whose quality is 1, except ``--hidden`` of them that are wrong in a way no signal
  shows (weak quality 0), which keeps the benchmark honest about what a check cannot see.

GPT-4's quality is 1 everywhere. Which prompt gets which fate is drawn with ``--seed``. The texts are the
simulator's filler, so this measures the mechanical signals (refusal, truncation, confidence), not language.

    python bench/cascade_simdata.py --prompts /work/extdata/cascade/test.jsonl --out /tmp/cascade_sim.jsonl
    python bench/cascade_eval.py --data /tmp/cascade_sim.jsonl --plot cascade_sim.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def simulator(profile: str) -> Iterator[str]:
    """``python -m gateway.simulator`` on a free loopback port, with no delays; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "gateway.simulator",
        "--profile",
        profile,
        "--port",
        str(port),
        "--time-scale",
        "0",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {profile} simulator did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=Path, required=True, help="JSONL with a 'prompt' field per row")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--refuse", type=float, default=0.08)
    ap.add_argument("--truncate", type=float, default=0.08)
    ap.add_argument("--unsure", type=float, default=0.10)
    ap.add_argument("--hidden", type=float, default=0.12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    prompts = [json.loads(x)["prompt"] for x in args.prompts.read_text().splitlines() if x.strip()][: args.limit]
    rng = random.Random(args.seed)
    fates = []
    for _ in prompts:
        u = rng.random()
        edges = [("refuse", args.refuse), ("truncate", args.truncate), ("low_confidence", args.unsure)]
        fate = "ok"
        for name, share in edges:
            if u < share:
                fate = name
                break
            u -= share
        if fate == "ok" and rng.random() < args.hidden:
            fate = "hidden"
        fates.append(fate)

    rows = []
    with simulator("llama-2-7b") as local, simulator("gpt-4") as strong:
        lc = openai.OpenAI(base_url=f"{local}/v1", api_key="x", max_retries=0)
        sc = openai.OpenAI(base_url=f"{strong}/v1", api_key="x", max_retries=0)
        for i, (prompt, fate) in enumerate(zip(prompts, fates, strict=True)):
            # A per-request rule: the prompt's own text, consumed by this one request.
            rule_text = f"[case {i}]"
            if fate in ("refuse", "truncate", "low_confidence"):
                rule = {"match": rule_text, "behaviour": fate, "count": 1, "tokens": 24}
                httpx.post(f"{local}/_sim/answers", json=rule).raise_for_status()
            messages = [{"role": "user", "content": f"{prompt}\n{rule_text}"}]
            r = lc.chat.completions.create(
                model="llama-2-7b",
                messages=messages,
                max_tokens=400,
                logprobs=True,
                top_logprobs=1,  # type: ignore[arg-type]
                seed=i,
            )
            s = sc.chat.completions.create(model="gpt-4", messages=messages, max_tokens=400, seed=i)  # type: ignore[arg-type]
            choice = r.choices[0]
            lp = [t.logprob for t in choice.logprobs.content] if choice.logprobs and choice.logprobs.content else []
            rows.append(
                {
                    "prompt": prompt,
                    "answer": choice.message.content or "",
                    "logprobs": lp,
                    "finish_reason": choice.finish_reason,
                    "strong_answer": s.choices[0].message.content or "",
                    "weak_score": 1.0 if fate == "ok" else 0.0,
                    "strong_score": 1.0,
                    "fate": fate,
                }
            )
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts = {f: fates.count(f) for f in sorted(set(fates))}
    print(f"{len(rows)} rows -> {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
