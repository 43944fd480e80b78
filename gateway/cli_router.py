"""``gateway router ...``: train, score with, and evaluate the learned quality router.

Mounted by the main CLI with ``app.add_typer(router_app, name="router")``; also runnable alone as
``python -m gateway.cli_router``. Heavy imports (numpy, matplotlib) happen inside the commands; the plot of
``eval`` needs the ``plot`` extra (``pip install 'llm-hybrid-gateway[plot]'``), checked before any work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, cast

import typer

if TYPE_CHECKING:
    from gateway.tokens import TiktokenCounter
    from policies.router.adapt import AdaptedRouter, Embed
    from policies.router.model import QualityRouter

__all__ = ["router_app"]

router_app = typer.Typer(
    help="Learned quality router: train, adapt, score, eval; the cascade's answer check: verify.", no_args_is_help=True
)

_DEFAULT_PLOT = Path("router_pgr.png")


def _fail(message: str) -> NoReturn:
    """Stop with ``error: MESSAGE`` on one line and exit code 2 (bad input, no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def require_plotting(skip_hint: str) -> None:
    """Stop with exit code 2 and what to install when matplotlib is missing (before any work is done)."""
    from policies.router import plotting

    try:
        plotting.require()
    except plotting.PlottingUnavailable as exc:
        typer.echo(f"error: {exc} (or {skip_hint})", err=True)
        raise typer.Exit(2) from None


def _tokenizer() -> TiktokenCounter:
    """The offline ``cl100k_base`` tokenizer the router reads ids of (also points tiktoken's cache at it)."""
    from gateway.tokens import load_tiktoken

    try:
        return load_tiktoken("cl100k_base")
    except (OSError, ValueError, ImportError) as exc:
        raise typer.BadParameter(f"the learned router needs tiktoken's cl100k_base encoding: {exc}") from exc


@router_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help="Training JSONL.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Artifact directory to write.")],
    seed: Annotated[int, typer.Option(help="Random seed (fold assignment).")] = 0,
    folds: Annotated[int, typer.Option(help="Grouped CV folds for metrics and calibration.")] = 5,
    version: Annotated[str, typer.Option(help="Version string stored in the artifact.")] = "2",
) -> None:
    """Train the router on DATA (RouteLLM-style outcome records) and write the artifact to OUT."""
    from policies.router.evaluate import format_report
    from policies.router.train import TrainConfig, train_router

    encoding = _tokenizer().encoding
    result = train_router(data, out, TrainConfig(seed=seed, folds=folds), version=version, encoding=encoding)
    typer.echo(f"artifact written to {result.out_dir}")
    typer.echo(f"cross-validated ({folds}-fold, grouped by item):")
    typer.echo(format_report(result.metadata["cv_metrics"]))


@router_app.command("score")
def score_cmd(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help="JSONL with 'prompt'.")],
    artifact: Annotated[
        Path | None,
        typer.Option("--router", "--artifact", help="Artifact directory, prior or adapted (default: shipped prior)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSONL (default: stdout).")] = None,
) -> None:
    """Write one JSON line {"score": x} per record (higher = the strong model is more needed)."""
    import orjson

    from policies.router.adapt import AdaptedRouter
    from policies.router.data import load_prompts

    try:
        prompts = load_prompts(data)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    router = _load_router(artifact)
    if isinstance(router, AdaptedRouter):
        embed = _embedder(int(router.metadata["embedding"]["max_tokens"]), router.vector)
        scores = router.score_batch(prompts, embed(prompts)).tolist()
    else:
        scores = [router.score(p) for p in prompts]
    lines = b"".join(orjson.dumps({"score": s}) + b"\n" for s in scores)
    if out is None:
        sys.stdout.write(lines.decode("utf-8"))
        sys.stdout.flush()
    else:
        out.write_bytes(lines)


def _load_router(artifact: Path | None) -> QualityRouter | AdaptedRouter:
    """The router artifact in ``artifact`` (None: the shipped prior), or a one-line error naming the directory."""
    from policies.router.loader import load_artifact

    encode = _tokenizer().encode
    try:
        return load_artifact(artifact, encode=encode)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load the router artifact {artifact}: {exc}")


def _embedder(max_tokens: int, vector: str = "minilm") -> Embed:
    """The adapted router's prompt vectors (MiniLM's, full or static), or a clean error naming the extra."""
    from cache.minilm import ModelUnavailable
    from policies.router.adapt import prompt_embed

    try:
        return prompt_embed(vector, max_tokens)
    except ModelUnavailable as exc:
        typer.echo(f"error: {exc} (the adapted router needs the 'semantic' extra)", err=True)
        raise typer.Exit(2) from None


@router_app.command("adapt")
def adapt_cmd(
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Adapted artifact directory to write.")],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", exists=True, dir_okay=False, help='JSONL rows {"prompt", "weak_score", "strong_score"}.'
        ),
    ] = None,
    from_ledger: Annotated[
        bool, typer.Option("--from-ledger", help="Export the deployment's verdicts and feedback first (--config).")
    ] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="gateway YAML config (--from-ledger)")] = None,
    prior: Annotated[Path | None, typer.Option(help="Prior artifact directory (default: shipped).")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (held-out figures, calibration).")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed (fold assignment).")] = 0,
    vector: Annotated[
        str,
        typer.Option(
            help="Prompt vector: minilm (the semantic cache's embedding, shared when the route uses the cache) or "
            "minilm-static (MiniLM's embedding layer only, ~0.1 ms: for routes without the semantic cache)."
        ),
    ] = "minilm",
) -> None:
    """Fit a deployment router on LABELS (or, with --from-ledger, on the labels the quality monitor and the
    clients' feedback left in the ledger's database) on top of the prior; write it to OUT with its held-out
    figures."""
    from policies.router.adapt import VECTORS

    if vector not in VECTORS:
        raise typer.BadParameter(f"one of {', '.join(VECTORS)}", param_hint="--vector")
    if from_ledger == (labels is not None):
        raise typer.BadParameter("give either --labels FILE or --from-ledger --config FILE", param_hint="--labels")
    if labels is not None:
        _adapt(labels, out, prior, folds, seed, vector, source={"file": labels.name})
        return
    exported = _export_ledger_labels(config, out)
    try:
        _adapt(exported, out, prior, folds, seed, vector, source={"file": _LEDGER_LABELS, "from": "ledger"})
        exported.replace(out / _LEDGER_LABELS)  # beside the artifact it was trained on: only once it is saved
    finally:
        exported.unlink(missing_ok=True)


#: The file beside an artifact adapted ``--from-ledger``: the labels it was trained on.
_LEDGER_LABELS = "labels.jsonl"


def _adapt(
    labels: Path, out: Path, prior: Path | None, folds: int, seed: int, vector: str, source: dict[str, str]
) -> None:
    """Fit on ``labels`` and save to ``out`` (one ``error:`` line and exit 2 when it cannot)."""
    from policies.router.adapt import AdaptConfig, adapt, format_held_out
    from policies.router.data import file_sha256, load_records
    from policies.router.model import ARTIFACT_DIR, QualityRouter

    try:
        records = load_records(labels)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    adapt_config = AdaptConfig(folds=folds, seed=seed, vector=vector)
    encode = _tokenizer().encode
    try:
        base = QualityRouter.load(prior, encode=encode)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load the prior artifact {prior}: {exc}")
    source = {**source, "sha256": file_sha256(labels)}
    try:
        router = adapt(
            records,
            base,
            _embedder(adapt_config.embed_max_tokens, vector),
            adapt_config,
            source=source,
            prior_dir=prior or ARTIFACT_DIR,
        )
    except ValueError as exc:
        _fail(f"{labels if source.get('from') != 'ledger' else 'the labels exported from the ledger'}: {exc}")
    try:
        router.save(out)  # all files at once: a gateway reloading OUT meanwhile reads the old artifact or this one
    except OSError as exc:
        _fail(f"cannot write the artifact to {out}: {exc}")
    typer.echo(f"adapted router written to {out} ({len(records)} labelled prompts)")
    typer.echo(format_held_out(router.held_out))


def _export_ledger_labels(config: Path | None, out: Path) -> Path:
    """``gateway quality labels`` into a new file in ``OUT``, moved to ``OUT/labels.jsonl`` (kept beside the artifact:
    what it was trained on) once the artifact is saved: a failed run (too few labels, a wrong database) left the
    serving artifact without the labels it was trained on."""
    import asyncio
    import tempfile

    from sqlalchemy.exc import SQLAlchemyError

    from gateway.cli_quality import capped_note, export_from_config
    from gateway.errors import ConfigError
    from gateway.quality.labels import LabelCounts

    if config is None:
        raise typer.BadParameter("--from-ledger needs --config (it finds the database)", param_hint="--config")
    out.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".labels-", suffix=".jsonl", dir=out)
    os.close(handle)
    path = Path(name)
    counts = LabelCounts()
    try:
        n = asyncio.run(export_from_config(config, path, None, None, counts))
    except ConfigError as exc:
        path.unlink(missing_ok=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        path.unlink(missing_ok=True)
        typer.echo(f"error: the database is unreachable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{n} labels exported from the ledger{capped_note(counts)}")
    return path


@router_app.command("verify")
def verify_cmd(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help='JSONL rows {"prompt", "answer"}.')],
    artifact: Annotated[Path | None, typer.Option(help="Answer-check artifact (default: shipped).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSONL (default: stdout).")] = None,
    use_router: Annotated[bool, typer.Option("--router/--no-router", help="Read the prompt router too.")] = True,
    explain: Annotated[bool, typer.Option(help="Add each row's reasons.")] = False,
) -> None:
    """Write one JSON line {"score": x} per row: the cascade's answer check (higher = escalate).

    Rows may carry "logprobs" (the answer's token log-probabilities), "finish_reason" and "router_score"."""
    import orjson

    from policies.answer_check import AnswerCheck
    from policies.answer_check.batch import RowError, read_rows, score_row
    from policies.router.model import QualityRouter

    check = AnswerCheck.load(artifact)
    router = QualityRouter.load(None, encode=_tokenizer().encode).score if use_router else None
    try:
        verdicts = [score_row(check, row, router) for row in read_rows(data)]
    except RowError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    lines = b"".join(
        orjson.dumps({"score": v.score, "reasons": list(v.reasons)} if explain else {"score": v.score}) + b"\n"
        for v in verdicts
    )
    if out is None:
        sys.stdout.write(lines.decode("utf-8"))
        sys.stdout.flush()
    else:
        out.write_bytes(lines)


@router_app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", exists=True, dir_okay=False, help="Outcome JSONL.")],
    artifact: Annotated[Path | None, typer.Option(help="Artifact directory (default: shipped).")] = None,
    mode: Annotated[
        str, typer.Option(help="auto: CV on the artifact's training file, else score it directly; cv; artifact.")
    ] = "auto",
    folds: Annotated[int | None, typer.Option(help="CV folds (default: the artifact's).")] = None,
    plot: Annotated[Path, typer.Option(help="Where to write the PGR curve PNG.")] = _DEFAULT_PLOT,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Print the report only (no matplotlib needed).")] = False,
) -> None:
    """Print APGR, CPT(50%)/CPT(80%) vs random and perfect routers; write the PGR curve PNG."""
    from policies.router.data import load_records
    from policies.router.evaluate import evaluate_file, format_report, plot_pgr

    if mode not in ("auto", "cv", "artifact"):
        raise typer.BadParameter("mode must be auto, cv or artifact", param_hint="--mode")
    if not no_plot:
        require_plotting("pass --no-plot")
    _tokenizer()
    result = evaluate_file(data, artifact, cast(Literal["auto", "cv", "artifact"], mode), folds)
    how = "grouped k-fold cross-validation" if result.mode == "cv" else "shipped/given artifact, no retraining"
    typer.echo(f"evaluation on {data.name}: {how}")
    typer.echo(format_report(result.report))
    if not no_plot:
        plot_pgr(load_records(data), result.scores, plot, f"{data.name} ({result.mode})")
        typer.echo(f"PGR curve written to {plot}")


if __name__ == "__main__":
    router_app()
