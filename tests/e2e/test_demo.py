"""``gateway demo``: one command, simulated backends, a real gateway; its report matches the ledger, and it
leaves no process behind (after ``--exit``, and after Ctrl-C while it keeps serving)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.servers import REPO_ROOT

MODELS = {"llama-2-7b", "llama-2-13b", "gpt-4"}
MONEY = Decimal("1e-12")  # the SQLite ledger stores USD as integer 1e-12 units


def demo_command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--workdir",
        str(workdir),
        "--port",
        "0",
        "--time-scale",
        "0.05",
        "--json",
        str(workdir / "report.json"),
        *args,
    ]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "160"
    return env


def ledger_by_model(db: Path, start_ms: int, end_ms: int) -> dict[str, dict[str, Any]]:
    """The ledger read with plain SQL (independently of the gateway's query code)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT chosen_model, count(*), sum(cost_usd), sum(baseline_cost_usd),"
            " sum(cache_status IN ('hit', 'semantic-hit')), sum(prompt_tokens), sum(completion_tokens)"
            " FROM gw_ledger WHERE ts_ms >= ? AND ts_ms < ? GROUP BY chosen_model",
            (start_ms, end_ms),
        ).fetchall()
    finally:
        con.close()
    return {
        model: {
            "requests": n,
            "cost": Decimal(cost) * MONEY,
            "baseline": Decimal(base) * MONEY,
            "hits": hits,
            "prompt": p,
            "completion": c,
        }
        for model, n, cost, base, hits, p, c in rows
    }


def table_row(out: str, model: str) -> list[str]:
    """The cells of ``model``'s row in the printed table."""
    for text in out.splitlines():
        cells = [c.strip() for c in text.strip().strip("│").split("│")]
        if cells[0] == model:
            return cells
    raise AssertionError(f"no table row for {model}:\n{out}")


def gone(pid: int) -> bool:
    """The process has exited (and is not a zombie of ours)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_nothing_left(report: dict[str, Any]) -> None:
    deadline = time.monotonic() + 5
    while not gone(report["backends_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(report["backends_pid"]), "the simulated backends' process outlived the demo"
    ports = [*report["backend_ports"].values(), int(report["gateway_url"].rsplit(":", 1)[1])]
    assert all(port_closed(p) for p in ports), ports


def test_demo_report_matches_the_ledger(tmp_path: Path) -> None:
    n = 40
    proc = subprocess.run(
        demo_command(tmp_path, "--requests", str(n), "--concurrency", "8", "--exit"),
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert_nothing_left(report)

    ledger = ledger_by_model(tmp_path / "gateway-ledger.db", report["start_ms"], report["end_ms"])
    assert set(ledger) <= MODELS and len(ledger) >= 2, ledger  # a mixed workload uses several backends
    assert report["requests"] == n == sum(m["requests"] for m in ledger.values())
    assert report["client"] == {"ok": n, "failed": 0, "wall_seconds": report["client"]["wall_seconds"]}
    assert report["errors"] == 0
    for line in report["models"]:
        row = ledger[line["model"]]
        assert line["requests"] == row["requests"]
        assert Decimal(line["cost_usd"]) == row["cost"]
        assert Decimal(line["baseline_cost_usd"]) == row["baseline"]
        assert line["cache_hits"] == row["hits"]
        assert (line["prompt_tokens"], line["completion_tokens"]) == (row["prompt"], row["completion"])
        if row["requests"] > row["hits"]:
            assert line["p50_ms"] is not None and line["p50_ms"] <= line["p95_ms"]
        # the printed table shows the same figures
        assert table_row(out, line["model"])[1::5] == [str(row["requests"]), str(row["hits"])], out
    cost = sum(m["cost"] for m in ledger.values())
    baseline = sum(m["baseline"] for m in ledger.values())
    hits = sum(m["hits"] for m in ledger.values())
    assert Decimal(report["cost_usd"]) == cost
    assert Decimal(report["baseline_cost_usd"]) == baseline
    assert Decimal(report["savings_usd"]) == baseline - cost > 0
    assert report["cache_hits"] == hits >= 1  # the FAQ repeats
    assert report["cache_hit_rate"] == round(hits / n, 6)
    # the ledger's GPT-4 baseline is GPT-4's list price (litellm: $30 / $60 per 1M tokens)
    tokens_in = sum(m["prompt"] for m in ledger.values())
    tokens_out = sum(m["completion"] for m in ledger.values())
    assert baseline == Decimal("0.00003") * tokens_in + Decimal("0.00006") * tokens_out

    assert f"Total: {n} requests" in out
    assert f"({report['savings_share']:.1%})" in out
    assert f"Cache hit rate: {report['cache_hit_rate']:.1%} ({hits} of {n}" in out
    assert f"Client view: {n} ok, 0 failed" in out


def test_demo_keeps_serving_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo_command(tmp_path, "--requests", "8"),
        cwd=tmp_path,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out
        report = json.loads((tmp_path / "report.json").read_text())
        base = report["gateway_url"]
        assert f"Dashboard             {base}/dashboard" in out
        assert f"Gateway (OpenAI API)  {base}/v1" in out
        # still serving: the dashboard, the API (through the still running simulated backends)
        assert httpx.get(f"{base}/dashboard", timeout=10).status_code == 200
        master = re.search(r"Master key +(\S+)", out)
        assert master, out  # the demo runs with auth on, with a master key it prints
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            timeout=30,
            headers={"authorization": f"Bearer {master.group(1)}"},
            json={"model": "llama-2-7b", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-gateway-model"] == "llama-2-7b"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_nothing_left(report)
    con = sqlite3.connect(tmp_path / "gateway-ledger.db")
    try:
        assert con.execute("SELECT count(*) FROM gw_ledger").fetchone()[0] == 9  # the workload and our request
    finally:
        con.close()
