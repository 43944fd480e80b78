"""Does the ledger keep up with the traffic? (A benchmark, not a test.)

    python bench/ledger_under_load.py [--duration 60] [--connections 32] [--db sqlite|postgresql] [--url URL]

The side-by-side harness's set-up (``../shared/bench``: its fake upstream and ``wrk`` with its ``lua/chat.lua``,
on core 0; ``gateway serve --config bench/gateway-bench.yaml`` pinned to core 1), held for ``--duration``
seconds instead of 20, sampling the gateway's ``/metrics`` every ``--every`` seconds: rows pending in the
ledger's queue, rows written, rows dropped, and the process's RSS. Then the load stops and the script waits
for the queue to drain.

What it answers: the throughput the harness reports counts requests whose ledger rows may still be queued at
its end. If ``pending`` grows during the load, the writer is behind: the sustained rate the ledger keeps up
with is ``written / duration``, the queue grows the RSS by its rows, and past ``ledger.max_pending_rows`` rows
would be dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "bench"
_METRIC = re.compile(r"^(gateway_ledger_(?:pending_rows|written_rows_total|dropped_rows_total)) (\S+)$", re.M)


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in _METRIC.finditer(text)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--url", help="ledger URL (default: a new SQLite file, or the local PostgreSQL's test db)")
    ap.add_argument("--upstream-port", type=int, default=18761)
    ap.add_argument("--port", type=int, default=18762)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: bash ../shared/bench/setup.sh")
    tmp = Path(tempfile.mkdtemp(prefix="ledger-load-"))
    url = args.url or (
        f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"
        if args.db == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    env = dict(os.environ, BENCH_UPSTREAM_BASE=f"http://127.0.0.1:{args.upstream_port}/v1", GATEWAY_LEDGER__URL=url)
    py = "/tmp/bench-venv/bin/python" if Path("/tmp/bench-venv/bin/python").exists() else sys.executable
    upstream = subprocess.Popen(
        ["taskset", "-c", "0", py, str(HARNESS / "upstream.py"), "--port", str(args.upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway_cmd = [str(ROOT / ".venv/bin/gateway"), "serve", "--config", str(ROOT / "bench/gateway-bench.yaml")]
    gateway = subprocess.Popen(
        ["taskset", "-c", "1", *gateway_cmd, "--port", str(args.port)],
        env=env,
        stdout=open(tmp / "gateway.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{args.port}/v1/models")
        pid = int(subprocess.check_output(["pgrep", "-n", "-f", f"gateway.server.*{args.port}"]).split()[0])
        print(f"ledger {url}; load average {os.getloadavg()[0]:.2f}; RSS at start {rss_mib(pid):.0f} MiB")
        lua = str(HARNESS / "lua/chat.lua")
        wrk_cmd = [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "-s",
            lua,
            f"http://127.0.0.1:{args.port}",
        ]
        wrk = subprocess.Popen(
            ["taskset", "-c", "0", *wrk_cmd],
            stdout=subprocess.PIPE,
            text=True,
        )
        t0 = time.monotonic()
        base = metrics(args.port)
        print(f"{'t s':>6} {'pending':>9} {'written':>9} {'dropped':>8} {'RSS MiB':>8}")
        while wrk.poll() is None:
            time.sleep(args.every)
            m = metrics(args.port)
            written = m["gateway_ledger_written_rows_total"] - base["gateway_ledger_written_rows_total"]
            print(
                f"{time.monotonic() - t0:6.1f} {m['gateway_ledger_pending_rows']:9.0f} {written:9.0f}"
                f" {m['gateway_ledger_dropped_rows_total']:8.0f} {rss_mib(pid):8.0f}"
            )
        out = wrk.communicate()[0]
        load_s = time.monotonic() - t0
        end = metrics(args.port)
        rate = re.search(r"Requests/sec:\s+(\S+)", out)
        written = end["gateway_ledger_written_rows_total"] - base["gateway_ledger_written_rows_total"]
        print(f"wrk: {rate.group(1) if rate else '?'} req/s over {args.duration} s ({args.connections} connections)")
        print(f"written during the load: {written:.0f} rows = {written / load_s:.0f} rows/s")
        print(f"pending when the load stopped: {end['gateway_ledger_pending_rows']:.0f} rows")
        while metrics(args.port)["gateway_ledger_pending_rows"] > 0 and time.monotonic() - t0 < load_s + 120:
            time.sleep(0.2)
        print(
            f"drained {time.monotonic() - t0 - load_s:.1f} s after; dropped {end['gateway_ledger_dropped_rows_total']:.0f}"
        )
        print(f"RSS after draining {rss_mib(pid):.0f} MiB; load average {os.getloadavg()[0]:.2f}")
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(30)
        upstream.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
