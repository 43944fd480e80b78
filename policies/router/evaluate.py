"""Evaluate the quality router: APGR / CPT per benchmark and a PGR-curve plot.

On the router's own training file the figures come from grouped k-fold cross-validation
(out-of-fold scores, retraining the artifact's recipe on each fold); on any other file the given
artifact scores the prompts directly. Run ``python -m policies.router.evaluate --data FILE``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from policies.router import metrics, plotting
from policies.router.data import Record, file_sha256, load_records
from policies.router.model import QualityRouter
from policies.router.train import TrainConfig, benchmark_report, cross_val_scores, load_encoding

__all__ = ["EvalResult", "evaluate_file", "format_report", "plot_pgr"]

Mode = Literal["auto", "cv", "artifact"]


@dataclass(frozen=True)
class EvalResult:
    """Scores used, how they were obtained, and the per-benchmark report."""

    mode: Literal["cv", "artifact"]
    scores: NDArray[np.float64]
    report: dict[str, dict[str, Any]]


def _config_from_metadata(meta: dict[str, Any], folds: int | None, seed: int | None) -> TrainConfig:
    stored = meta.get("config", {})
    known = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in stored.items() if k in known}
    if folds is not None:
        kwargs["folds"] = folds
    if seed is not None:
        kwargs["seed"] = seed
    return TrainConfig(**kwargs)


def evaluate_file(
    data: Path,
    artifact: Path | None = None,
    mode: Mode = "auto",
    folds: int | None = None,
    seed: int | None = None,
) -> EvalResult:
    """Evaluate on ``data``; ``auto`` cross-validates when ``data`` is the artifact's training file.

    In CV mode the artifact's stored recipe (:class:`TrainConfig`) is retrained on each fold,
    with folds grouped by item so turns and duplicate prompts never straddle folds. The prompts are
    encoded with :func:`~policies.router.train.load_encoding` (offline where ``TIKTOKEN_CACHE_DIR`` is set).
    """
    encoding = load_encoding()
    router = QualityRouter.load(artifact, encode=encoding.encode_ordinary)
    records = load_records(data)
    if mode == "auto":
        mode = "cv" if file_sha256(data) == router.training_data_sha256 else "artifact"
    if mode == "cv":
        config = _config_from_metadata(router.metadata, folds, seed)
        scores = cross_val_scores(records, config, encoding=encoding)
        return EvalResult(mode="cv", scores=scores, report=benchmark_report(records, scores))
    scores = router.score_many(r.prompt for r in records)
    return EvalResult(mode="artifact", scores=scores, report=benchmark_report(records, scores))


def _pct(x: float) -> str:
    return "   n/a" if x != x else f"{100 * x:5.1f}%"


def format_report(report: dict[str, dict[str, Any]]) -> str:
    """Plain-text table: router vs random vs perfect, APGR and CPT(50%)/CPT(80%) per benchmark."""
    head = (
        f"{'benchmark':<10} {'n':>6} {'weak':>6} {'strong':>6} | "
        f"{'router APGR':>11} {'CPT50':>6} {'CPT80':>6} | "
        f"{'random APGR':>11} {'CPT50':>6} {'CPT80':>6} | "
        f"{'perfect APGR':>12} {'CPT50':>6} {'CPT80':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, row in report.items():
        r, q, p = row["router"], row["random"], row["perfect"]
        lines.append(
            f"{name:<10} {row['n']:>6} {row['weak_quality']:>6.3f} {row['strong_quality']:>6.3f} | "
            f"{r['apgr']:>11.3f} {_pct(r['cpt50'])} {_pct(r['cpt80'])} | "
            f"{q['apgr']:>11.3f} {_pct(q['cpt50'])} {_pct(q['cpt80'])} | "
            f"{p['apgr']:>12.3f} {_pct(p['cpt50'])} {_pct(p['cpt80'])}"
        )
    lines.append("quality normalised to [0,1] (MT-Bench judge score (s-1)/9); overall = all prompts pooled")
    return "\n".join(lines)


def plot_pgr(records: Sequence[Record], scores: NDArray[np.float64], out: Path, title: str = "") -> Path:
    """Write PGR-vs-strong-share curves (router, random, perfect) per benchmark to a PNG (needs the ``plot``
    extra).

    Raises:
        PlottingUnavailable: matplotlib is not installed (the message says what to install).
    """
    plt = plotting.pyplot()

    names = np.array([r.benchmark for r in records])
    weak = np.array([r.weak for r in records])
    strong = np.array([r.strong for r in records])
    panels = [*sorted(set(names.tolist())), "overall"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        m = np.ones(names.size, dtype=bool) if name == "overall" else names == name
        curves = {
            "router": metrics.pgr_curve(scores[m], weak[m], strong[m]),
            "random": metrics.random_curve(weak[m], strong[m]),
            "perfect": metrics.perfect_curve(weak[m], strong[m]),
        }
        for label, curve in curves.items():
            style = {"router": "-", "random": "--", "perfect": ":"}[label]
            ax.plot(100 * curve.shares, curve.pgr, style, label=f"{label} (APGR {metrics.apgr(curve):.3f})")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.axhline(0.8, color="grey", lw=0.5)
        ax.set_title(f"{name} (n={int(m.sum())})")
        ax.set_xlabel("% calls to strong model")
        ax.set_ylabel("PGR")
        ax.set_xlim(0, 100)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: print the report and write the PNG."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--mode", choices=["auto", "cv", "artifact"], default="auto")
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--plot", type=Path, default=Path("router_pgr.png"))
    ap.add_argument("--no-plot", action="store_true", help="print the report only (no matplotlib needed)")
    args = ap.parse_args(argv)
    if not args.no_plot:
        try:
            plotting.require()  # before the evaluation, which takes a while
        except plotting.PlottingUnavailable as exc:
            ap.error(f"{exc} (or pass --no-plot)")
    result = evaluate_file(args.data, args.artifact, args.mode, args.folds)
    print(f"evaluation mode: {result.mode}")
    print(format_report(result.report))
    if not args.no_plot:
        plot_pgr(load_records(args.data), result.scores, args.plot, f"{args.data.name} ({result.mode})")
        print(f"PGR curve written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
