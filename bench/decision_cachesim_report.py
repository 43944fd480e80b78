"""Per-decision figures from ``callgrind_annotate`` output on stdin (see bench/decision_cachesim.sh)."""

from __future__ import annotations

import re
import sys


def main(calls: int, top: int = 15) -> None:
    rows: list[tuple[float, float, float, str]] = []
    totals: list[float] = []
    started = False
    for line in sys.stdin:
        line = re.sub(r"\([ \d.]+%\)", "", line)
        if "PROGRAM TOTALS" in line:
            totals = [float(x.replace(",", "")) for x in line.split()[:3]]
        if "file:function" in line:
            started = True
            continue
        parts = line.split()
        if not started or len(parts) < 4 or not re.match(r"[\d,.]+$", parts[0]):
            continue
        ir, il, dl = (0.0 if x == "." else float(x.replace(",", "")) for x in parts[:3])
        name = re.sub(r"\s*\[.*", "", " ".join(parts[3:]))
        rows.append((ir, il, dl, re.sub(r".*Python-3\.\d+\.\d+/", "", name)))
    if not totals:
        raise SystemExit("no callgrind totals on stdin")
    ir, il, dl = (t / calls for t in totals)
    print(f"per decision ({calls} decisions): {ir:,.0f} instructions, {il + dl:.0f} simulated cache misses")
    print(f"  ({il:.0f} for instructions, {dl:.0f} for data)")
    print(f"{'instr. misses':>13} {'data misses':>11} {'instructions':>12}  function")
    for ir_, il_, dl_, name in sorted(rows, key=lambda r: -(r[1] + r[2]))[:top]:
        print(f"{il_ / calls:13.1f} {dl_ / calls:11.1f} {ir_ / calls:12.0f}  {name}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
