"""The report of ``bench/decision_share.sh``: the decision's share of the added latency, phase by phase.

    python bench/decision_share_report.py RESULTS_DIR ROUNDS

Reads, per round, the harness's load-generator results (``direct-seq-R.json``, ``gateway-seq-R.json``,
``direct-conc-R.json``, ``gateway-conc-R.json``) and the gateway's ``/metrics`` scraped before and after each
gateway phase (``metrics-R-0.txt`` .. ``metrics-R-2.txt``); the decisions of a phase are the difference of the
``gateway_routing_decision_seconds`` histogram across it.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

NAME = "gateway_routing_decision_seconds"


def histogram(path: Path) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets, count, sum in seconds) of the decision-time histogram in a /metrics scrape."""
    text = path.read_text()
    buckets = [(float(le), float(n)) for le, n in re.findall(rf'^{NAME}_bucket{{le="([^"]+)"}} (\S+)', text, re.M)]
    count = float(re.search(rf"^{NAME}_count (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(rf"^{NAME}_sum (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    return buckets, count, total


def phase(before: Path, after: Path) -> tuple[float, float, int]:
    """(p50, mean) in microseconds and the count of the decisions made between two scrapes."""
    b0, n0, s0 = histogram(before)
    b1, n1, s1 = histogram(after)
    count = n1 - n0
    if count <= 0:
        raise SystemExit(f"no decisions between {before.name} and {after.name}")
    lower, below = 0.0, 0.0
    p50 = float("nan")
    for (bound, c1), (_, c0) in zip(b1, b0, strict=True):
        cumulative = c1 - c0
        if cumulative >= count / 2:  # linear interpolation inside the bucket holding the median
            top = bound if bound != float("inf") else lower * 2
            p50 = lower + (top - lower) * (count / 2 - below) / max(cumulative - below, 1.0)
            break
        lower, below = bound, cumulative
    return p50 * 1e6, (s1 - s0) / count * 1e6, int(count)


def load(path: Path) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = json.loads(path.read_text())
    return result


def main(out: Path, rounds: int) -> None:
    print((out / "decision-1-before.txt").read_text().splitlines()[0])
    shares: dict[str, list[float]] = {
        "seq: decision p50 / added latency p50": [],
        "seq: decision mean / added latency p50": [],
        "conc: decision mean / gateway CPU per request": [],
        "conc: decision mean / added latency p50": [],
    }
    for r in range(1, rounds + 1):
        seq_direct, seq_gw = load(out / f"direct-seq-{r}.json")["seq"], load(out / f"gateway-seq-{r}.json")["seq"]
        conc_direct = load(out / f"direct-conc-{r}.json")["conc"]
        conc_gw = load(out / f"gateway-conc-{r}.json")["conc"]
        added_seq = (seq_gw["p50_ms"] - seq_direct["p50_ms"]) * 1000
        added_conc = (conc_gw["p50_ms"] - conc_direct["p50_ms"]) * 1000
        cpu_conc = conc_gw["server_cpu_ms_per_req"] * 1000
        s_p50, s_mean, s_n = phase(out / f"metrics-{r}-0.txt", out / f"metrics-{r}-1.txt")
        c_p50, c_mean, c_n = phase(out / f"metrics-{r}-1.txt", out / f"metrics-{r}-2.txt")
        bench = [
            float(re.search(r"^balanced\s+([\d.]+)", (out / f"decision-{r}-{when}.txt").read_text(), re.M).group(1))  # type: ignore[union-attr]
            for when in ("before", "after")
        ]
        shares["seq: decision p50 / added latency p50"].append(s_p50 / added_seq * 100)
        shares["seq: decision mean / added latency p50"].append(s_mean / added_seq * 100)
        shares["conc: decision mean / gateway CPU per request"].append(c_mean / cpu_conc * 100)
        shares["conc: decision mean / added latency p50"].append(c_mean / added_conc * 100)
        print(
            f"round {r}:\n"
            f"  seq   added latency p50 {added_seq:7.0f} us (gateway {seq_gw['p50_ms'] * 1000:.0f}, direct "
            f"{seq_direct['p50_ms'] * 1000:.0f}); {s_n} decisions: p50 {s_p50:.1f} us ({s_p50 / added_seq * 100:.2f} %), "
            f"mean {s_mean:.1f} us ({s_mean / added_seq * 100:.2f} %)\n"
            f"  conc  {conc_gw['rps']:.0f} req/s, CPU {cpu_conc:.0f} us/request, added latency p50 {added_conc:.0f} us; "
            f"{c_n} decisions: p50 {c_p50:.1f} us, mean {c_mean:.1f} us ({c_mean / cpu_conc * 100:.2f} % of the CPU, "
            f"{c_mean / added_conc * 100:.2f} % of the added latency)\n"
            f"  routing_decision.py balanced p50 {bench[0]:.1f} us before, {bench[1]:.1f} us after"
        )
    print("decision time as a share, median [min-max] over the rounds:")
    for key, values in shares.items():
        print(f"  {key:46} {statistics.median(values):5.2f} %  [{min(values):.2f}-{max(values):.2f}]")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
