"""A huge prompt does not stall other requests (issue 20): its tokens are counted off the event loop.

Over a real socket: while a 3.9 MB prompt is being handled, ``/health`` keeps answering. Before, the loop was
blocked ~2 s counting its tokens. The margin here is generous (the machine is shared); ``bench/huge_prompt.py``
measures the delay precisely."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx

from tests.hardening.gateways import master_key, sim_gateway

WORDS = ["alpha", "beta", "gamma", "delta", "x1", "zz", "foo", "barbaz", "quux"]


def huge_text(size: int) -> str:
    rng = random.Random(1)
    return " ".join(rng.choice(WORDS) for _ in range(size // 5))[:size]


def test_huge_prompt_does_not_stall_the_loop(tmp_path: Path) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": huge_text(3_900_000)}], "max_tokens": 1}
    with (
        master_key(None),
        sim_gateway(tmp_path, chat_model={"context_window": 8192}) as gw,
        httpx.Client(base_url=gw.base_url, timeout=60) as c,
    ):
        for _ in range(5):
            c.get("/health")
        done = threading.Event()
        status: list[int] = []

        def big() -> None:
            with httpx.Client(base_url=gw.base_url, timeout=60) as b:
                status.append(b.post("/v1/chat/completions", json=body).status_code)
            done.set()

        worst = 0.0
        thread = threading.Thread(target=big)
        started = time.perf_counter()
        thread.start()
        pings = 0
        while not done.is_set():
            t0 = time.perf_counter()
            assert c.get("/health").status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            pings += 1
            time.sleep(0.005)
        thread.join()
        took = time.perf_counter() - started
    assert status and status[0] < 500, status
    assert pings >= 5, (pings, took)  # the big request took a while: pings ran meanwhile
    assert worst < 0.6, f"a /health ping waited {worst * 1000:.0f} ms while a 3.9 MB prompt was handled"
