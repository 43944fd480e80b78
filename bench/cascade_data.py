#!/usr/bin/env python3
"""Build the answer-check data set from AlpacaEval's published results (read in place, never copied here).

AlpacaEval (github tatsu-lab/alpaca_eval, ``results/``) publishes, for its 805 instructions, each model's answer
and GPT-4's pairwise verdict against text-davinci-003's answer (annotator ``alpaca_eval_gpt4``). With the same
reference and judge for both models, a prompt's quality for a model is its win against the reference
(1 win, 0.5 tie, 0 loss), so the weak-strong gap per prompt is ``strong - weak``, as in RouteLLM's PGR.

Writes JSONL rows ``{"prompt", "answer", "strong_answer", "weak_score", "strong_score", "benchmark", "item_id",
"weak_model", "strong_model"}`` (the router's outcome format plus the answers) split by a hash of the
instruction: ``train.jsonl`` (60 %) and ``test.jsonl`` (40 %, held out: nothing is tuned on it).

    python bench/cascade_data.py --alpaca-eval /work/extdata/alpaca_eval --out /work/extdata/cascade
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

ANNOTATOR = "alpaca_eval_gpt4"
#: preference -> the model's quality against the reference (1 = reference won, 2 = model won, 0 = tie).
_WIN = {1: 0.0, 2: 1.0, 0: 0.5}
TEST_SHARE = 0.4


def split_of(instruction: str) -> str:
    """``train`` or ``test``: a stable hash of the instruction (the same rule everywhere, data-independent)."""
    h = int.from_bytes(hashlib.sha256(instruction.encode("utf-8")).digest()[:8], "big")
    return "test" if h % 1000 < TEST_SHARE * 1000 else "train"


def _verdicts(root: Path, model: str) -> dict[str, tuple[str, float]]:
    rows: list[dict[str, Any]] = json.loads((root / "results" / model / ANNOTATOR / "annotations.json").read_text())
    out: dict[str, tuple[str, float]] = {}
    for r in rows:
        pref = r.get("preference")
        if r.get("generator_2") != model:
            continue
        if pref is None or round(float(pref)) not in _WIN:
            continue
        out[r["instruction"]] = (r["output_2"], _WIN[round(float(pref))])
    return out


def build(root: Path, weak: str, strong: str) -> list[dict[str, Any]]:
    """Join both models' judged answers on the instruction."""
    w, s = _verdicts(root, weak), _verdicts(root, strong)
    rows = []
    for i, (instruction, (answer, wq)) in enumerate(sorted(w.items())):
        if instruction not in s:
            continue
        strong_answer, sq = s[instruction]
        rows.append(
            {
                "prompt": instruction,
                "answer": answer,
                "strong_answer": strong_answer,
                "weak_score": wq,
                "strong_score": sq,
                "benchmark": "alpaca_eval",
                "item_id": f"alpaca_eval/{i}",
                "weak_model": weak,
                "strong_model": strong,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpaca-eval", type=Path, required=True, help="a checkout (or copy) of alpaca_eval's results/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weak", default="llama-2-7b-chat-hf")
    ap.add_argument("--strong", default="gpt4")
    args = ap.parse_args()
    rows = build(args.alpaca_eval, args.weak, args.strong)
    args.out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for r in rows:
        parts[split_of(r["prompt"])].append(r)
    for name, part in parts.items():
        with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for r in part:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        wq = sum(r["weak_score"] for r in part) / len(part)
        sq = sum(r["strong_score"] for r in part) / len(part)
        print(f"{name}: {len(part)} rows, weak {wq:.3f}, strong {sq:.3f} -> {args.out / (name + '.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
