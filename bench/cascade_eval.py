#!/usr/bin/env python3
"""The cascade's answer check on recorded traffic: APGR, and quality against cost at several operating points.

Input: outcome JSONL rows ``{"prompt", "answer", "weak_score", "strong_score"}`` with ``"strong_answer"`` (for
the strong model's token cost) and optionally ``"logprobs"`` / ``"finish_reason"`` of the local answer
(``bench/cascade_data.py`` builds such rows from AlpacaEval, ``bench/cascade_simdata.py`` from the simulator).

Printed:

1. APGR / CPT(50%) / CPT(80%) of escalating by the answer check alone (no router input), the prompt router
   alone, and both combined (the check's head that reads the router's score), beside random and perfect.
   Scores come from ``policies.answer_check.batch.score_row``, the code path of ``gateway router verify``;
   ``--scores FILE`` reads that command's output instead (one ``{"score"}`` line per row).
2. Replay: for each quality target (and so threshold), the cascade (every prompt answered locally first,
   escalated when the score reaches the threshold) and routing by the prompt router alone (its own
   calibration for the same target): escalation/strong share, quality as a share of the strong model's,
   and cost as a share of sending everything to the strong model, counting every attempt (the local answer
   of an escalated prompt is paid for too). Token counts are cl100k_base; prices are the example config's:
   gpt-4 $30/$60 per million, the local model its GPU hour ($1.00 at 1,500 tokens/s, prompt tokens at 10 %).
3. A plot (``--plot``): PGR against escalation share, and quality against cost.

    python bench/cascade_eval.py --data /work/extdata/cascade/test.jsonl --plot cascade_eval.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.tokens import load_tiktoken
from policies.answer_check import AnswerCheck
from policies.answer_check.batch import CheckRow, score_row
from policies.router import metrics
from policies.router.model import QualityRouter

TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
STRONG_IN, STRONG_OUT = 30e-6, 60e-6  # gpt-4, USD per token
LOCAL_OUT = 1.00 / 3600 / 1500  # llama-2-7b in gateway.example.yaml
LOCAL_IN = LOCAL_OUT * 0.1


@dataclass
class Data:
    rows: list[dict[str, Any]]
    weak: np.ndarray
    strong: np.ndarray
    local_cost: np.ndarray
    strong_cost: np.ndarray


def load(path: Path) -> Data:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    enc = load_tiktoken("cl100k_base")
    weak = np.array([float(r["weak_score"]) for r in rows])
    strong = np.array([float(r["strong_score"]) for r in rows])
    if max(weak.max(), strong.max()) > 1.0:  # 1-10 judge scores
        weak, strong = (weak - 1) / 9, (strong - 1) / 9
    p_tok = np.array([enc.count(r["prompt"]) for r in rows], dtype=float)
    a_tok = np.array([enc.count(r["answer"]) for r in rows], dtype=float)
    s_tok = np.array([enc.count(r.get("strong_answer", r["answer"])) for r in rows], dtype=float)
    return Data(rows, weak, strong, p_tok * LOCAL_IN + a_tok * LOCAL_OUT, p_tok * STRONG_IN + s_tok * STRONG_OUT)


def check_rows(d: Data) -> list[CheckRow]:
    return [CheckRow(r["prompt"], r["answer"], r.get("logprobs"), r.get("finish_reason"), None) for r in d.rows]


def summary(name: str, scores: np.ndarray, d: Data) -> dict[str, float]:
    c = metrics.pgr_curve(scores, d.weak, d.strong)
    return {"name": name, "apgr": metrics.apgr(c), "cpt50": metrics.cpt(c, 0.5), "cpt80": metrics.cpt(c, 0.8)}


def operating_point(escalate: np.ndarray, d: Data, cascade: bool) -> tuple[float, float, float]:
    """(strong share, quality / strong quality, cost / all-strong cost)."""
    quality = np.where(escalate, d.strong, d.weak).mean()
    local = d.local_cost.sum() if cascade else d.local_cost[~escalate].sum()
    cost = local + d.strong_cost[escalate].sum()
    return float(escalate.mean()), float(quality / d.strong.mean()), float(cost / d.strong_cost.sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--scores", type=Path, help="`gateway router verify` output for --data (combined head)")
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--signals", action="store_true", help="also print each signal's firing and loss rates")
    args = ap.parse_args()

    d = load(args.data)
    check = AnswerCheck.load(args.artifact)
    router = QualityRouter.load(None, encode=load_tiktoken("cl100k_base").encode)
    crow = check_rows(d)
    router_scores = np.array([router.score(r.prompt) for r in crow])
    t0 = time.process_time()  # CPU time: less sensitive than wall time to other processes on a shared machine
    alone = np.array([score_row(check, r, None).score for r in crow])
    per_answer_us = (time.process_time() - t0) / len(crow) * 1e6
    if args.scores:
        combined = np.array([json.loads(x)["score"] for x in args.scores.read_text().splitlines() if x.strip()])
        if combined.size != len(crow):
            raise SystemExit(f"--scores has {combined.size} lines for {len(crow)} rows")
    else:
        combined = np.array([score_row(check, r, router.score).score for r in crow])

    print(f"{args.data} : {len(crow)} rows, weak quality {d.weak.mean():.3f}, strong {d.strong.mean():.3f}")
    mean_chars = sum(len(r.answer) for r in crow) / len(crow)
    print(f"answer check: {per_answer_us:.0f} us CPU per answer (mean answer {mean_chars:.0f} chars, in-process)")
    print(f"\n{'escalate by':<28} {'APGR':>6} {'CPT50':>7} {'CPT80':>7}")
    results = [
        summary("answer check alone", alone, d),
        summary("prompt router alone", router_scores, d),
        summary("check + router (combined)", combined, d),
        summary("random", np.zeros(len(crow)), d),
        summary("perfect (oracle)", d.strong - d.weak, d),
    ]
    if any(r.logprobs is not None or r.finish_reason is not None for r in crow):
        text_only = [CheckRow(r.prompt, r.answer) for r in crow]
        results.insert(
            3, summary("  same, text only", np.array([score_row(check, r, router.score).score for r in text_only]), d)
        )
        results.insert(
            4,
            summary(
                "  same, no logprobs",
                np.array(
                    [
                        score_row(check, CheckRow(r.prompt, r.answer, None, r.finish_reason), router.score).score
                        for r in crow
                    ]
                ),
                d,
            ),
        )
    for r in results:
        print(f"{r['name']:<28} {r['apgr']:>6.3f} {100 * r['cpt50']:>6.1f}% {100 * r['cpt80']:>6.1f}%")

    print(
        f"\n{'target':>6} | {'cascade: threshold':>18} {'escalated':>9} {'quality':>8} {'cost':>6} {'saved':>6} |"
        f" {'router: strong':>14} {'quality':>8} {'cost':>6} {'saved':>6}"
    )
    points: dict[str, list[tuple[float, float]]] = {"cascade": [], "router": []}
    for t in TARGETS:
        thr = check.threshold_for_quality_target(t)
        esc, q, c = operating_point(combined >= thr, d, cascade=True)
        r_thr = router.threshold_for_quality_target(t)
        r_esc, r_q, r_c = operating_point(router_scores >= r_thr, d, cascade=False)
        points["cascade"].append((c, q))
        points["router"].append((r_c, r_q))
        print(
            f"{t:>6.2f} | {thr:>18.3f} {100 * esc:>8.1f}% {100 * q:>7.1f}% {100 * c:>5.1f}% {100 * (1 - c):>5.1f}% |"
            f" {100 * r_esc:>13.1f}% {100 * r_q:>7.1f}% {100 * r_c:>5.1f}% {100 * (1 - r_c):>5.1f}%"
        )
    print("quality = mean served quality / strong model's; cost = all attempts / everything on the strong model")

    if args.signals:
        print_signals(d, crow, router_scores)

    if args.plot:
        plot(
            args.plot,
            d,
            {"answer check": alone, "prompt router": router_scores, "check + router": combined},
            check,
            combined,
            router_scores,
            router,
        )
        print(f"plot written to {args.plot}")
    return 0


def print_signals(d: Data, crow: list[CheckRow], router_scores: np.ndarray) -> None:
    """Each signal alone: how often it fires, the loss rate (strong better) when it fires and when not, and the
    APGR of escalating by it alone."""
    from policies.answer_check.confidence import confidence
    from policies.answer_check.signals import text_signals

    sig = [text_signals(r.prompt, r.answer) for r in crow]
    loss = (d.strong - d.weak) > 0
    columns: dict[str, np.ndarray] = {
        name: np.array([float(getattr(x, name)) for x in sig])
        for name in (
            "refusal",
            "moralising",
            "disclaimer",
            "hedge",
            "caveat",
            "objects_early",
            "empty",
            "repetition",
            "code_missing",
            "unfinished",
        )
    }
    columns["short answer (-words)"] = -np.array([float(x.answer_words) for x in sig])
    columns["truncated (finish_reason)"] = np.array([float(r.finish_reason == "length") for r in crow])
    confs = [confidence(r.logprobs) if r.logprobs else None for r in crow]
    if any(c is not None for c in confs):
        columns["-mean logprob"] = np.array([-c.mean if c else 0.0 for c in confs])
        columns["low-logprob share"] = np.array([c.low_share if c else 0.0 for c in confs])
    columns["prompt router score"] = router_scores
    print(f"\n{'signal':<26} {'fires':>6} {'loss|fires':>10} {'loss|not':>9} {'APGR':>6}")
    for name, v in columns.items():
        fires = v > 0 if name not in ("short answer (-words)", "prompt router score") else v > np.median(v)
        lf = f"{loss[fires].mean():.3f}" if fires.any() else "  -"
        ln = f"{loss[~fires].mean():.3f}" if (~fires).any() else "  -"
        apgr = metrics.apgr(metrics.pgr_curve(v, d.weak, d.strong))
        print(f"{name:<26} {100 * fires.mean():>5.1f}% {lf:>10} {ln:>9} {apgr:>6.3f}")
    print(
        "fires: share of rows where the signal is non-zero (for length and router: above the median);"
        " loss: share where the strong model did better"
    )


def plot(
    out: Path,
    d: Data,
    scores: dict[str, np.ndarray],
    check: AnswerCheck,
    combined: np.ndarray,
    router_scores: np.ndarray,
    router: QualityRouter,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, s in scores.items():
        c = metrics.pgr_curve(s, d.weak, d.strong)
        a1.plot(100 * c.shares, c.pgr, label=f"{name} (APGR {metrics.apgr(c):.3f})")
    a1.plot([0, 100], [0, 1], "--", color="grey", label="random (0.500)")
    a1.axhline(0.8, color="grey", lw=0.5)
    a1.set_xlabel("% escalated to the strong model")
    a1.set_ylabel("PGR (share of the quality gap recovered)")
    a1.set_title(f"{out.stem}: n={len(d.rows)}")
    a1.legend(fontsize=8, loc="lower right")

    targets = np.linspace(0.05, 1.0, 20)
    for label, esc_fn, cascade in (
        ("cascade (check + router)", lambda t: combined >= check.threshold_for_quality_target(t), True),
        ("prompt router alone", lambda t: router_scores >= router.threshold_for_quality_target(t), False),
    ):
        pts = [operating_point(esc_fn(t), d, cascade) for t in targets]
        a2.plot([100 * c for _, _, c in pts], [100 * q for _, q, _ in pts], "o-", ms=3, label=label)
        e8 = operating_point(esc_fn(0.8), d, cascade)
        a2.plot([100 * e8[2]], [100 * e8[1]], "k*", ms=10)
    a2.axhline(95, color="grey", lw=0.5)
    a2.axvline(60, color="grey", lw=0.5)
    a2.set_xlabel("cost, % of all-strong (every attempt counted)")
    a2.set_ylabel("quality, % of the strong model's")
    a2.set_title("quality target 0.05..1.0 (star: 0.8)")
    a2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
