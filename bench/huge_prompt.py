"""How long a huge prompt delays everyone else: ``/health`` ping latency while a 3.9 MB prompt is handled.

    PYTHONPATH=. python bench/huge_prompt.py [--size 3900000] [--rounds 3]

Runs a gateway over the loopback simulator twice: tokens counted on the event loop
(``server.offload_bytes`` above the body size, the old behaviour) and off it (the default). Prints the worst
and median ping delay per mode (issue 20: the target is ~50 ms at most).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.hardening.gateways import sim_gateway
from tests.hardening.test_huge_prompt import huge_text


def measure(size: int, offload_bytes: int) -> tuple[float, float, int]:
    body = {"model": "auto", "messages": [{"role": "user", "content": huge_text(size)}], "max_tokens": 1}
    os.environ.pop("GATEWAY_MASTER_KEY", None)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"server": {"offload_bytes": offload_bytes, "metrics_scrape_seconds": 3600}}
        with (
            sim_gateway(Path(tmp), overrides, chat_model={"context_window": 8192}) as gw,
            httpx.Client(base_url=gw.base_url, timeout=60) as c,
        ):
            for _ in range(20):
                c.get("/health")
            done = threading.Event()

            def big() -> None:
                with httpx.Client(base_url=gw.base_url, timeout=60) as b:
                    b.post("/v1/chat/completions", json=body)
                done.set()

            delays: list[float] = []
            thread = threading.Thread(target=big)
            thread.start()
            while not done.is_set():
                t0 = time.perf_counter()
                c.get("/health")
                delays.append(time.perf_counter() - t0)
                time.sleep(0.002)
            thread.join()
    return max(delays), statistics.median(delays), len(delays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=3_900_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for label, offload in (("on the loop (before)", 1 << 40), ("off the loop (after)", 64 * 1024)):
        for i in range(args.rounds):
            worst, median, n = measure(args.size, offload)
            print(
                f"{label:22} round {i + 1}: worst ping {worst * 1000:7.1f} ms, median {median * 1000:5.1f} ms, {n} pings"
            )


if __name__ == "__main__":
    main()
