"""One tenant's feedback cannot steer the adapted router for everyone: ``quality.max_label_share_per_key``.

Feedback labels are capped per key (a team's keys together) to a share of the feedback labels of one export, the
same for ``gateway quality labels``, ``gateway router adapt --from-ledger`` and background adaptation; a deployment
whose feedback comes from one key keeps all of it, and judge verdicts are never capped.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from gateway.accounting import open_database
from gateway.accounting.quality_tables import feedback, verdicts
from gateway.cli_quality import export_from_config
from gateway.cli_router import router_app
from gateway.config import settings_from_dict
from gateway.errors import ConfigError
from gateway.quality.adapting import BackgroundAdapter
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings, wait_judged
from tests.quality.test_adapt import GOOD_FIGURES


def _verdict(i: int, prompt: str, verdict: str, key_id: str | None) -> dict[str, Any]:
    return {"ts_ms": 1_700_000_000_000 + i, "day": "2026-12-06", "request_id": f"r{i}", "kind": "pairwise",
            "route": "auto", "model": "weak", "reference_model": "strong", "judge_model": "strong",
            "verdict": verdict, "served": True, "first_order": "C", "second_order": "C", "score": None,
            "prompt": prompt, "key_id": key_id, "reference_cost_usd": 0, "judge_cost_usd": 0}  # fmt: skip


def _feedback(i: int, key_id: str | None, team: str | None, score: float) -> dict[str, Any]:
    return {"ts_ms": 1_700_000_000_000 + i, "request_id": f"r{i}", "key_id": key_id, "team": team,
            "route": "auto", "model": "weak", "score": score, "comment": None}  # fmt: skip


async def populate(engine: AsyncEngine, tenants: dict[tuple[str | None, str | None], int], start: int = 0) -> int:
    """Per ``(key, team)``: that many judged requests (ties on poems), each thumbed down by the key; the next id."""
    vs: list[dict[str, Any]] = []
    fb: list[dict[str, Any]] = []
    i = start
    for (key_id, team), n in tenants.items():
        for _ in range(n):
            vs.append(_verdict(i, f"Please write a poem about item {i}", "tie", key_id))
            fb.append(_feedback(i, key_id, team, 0.0))
            i += 1
    async with engine.begin() as conn:
        await conn.execute(verdicts.insert(), vs)
        await conn.execute(feedback.insert(), fb)
    return i


def _config(tmp_path: Path, quality: dict[str, Any] | None = None) -> tuple[Path, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    config = tmp_path / "gateway.yaml"
    data: dict[str, Any] = {
        "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "ledger": {"url": url},
    }
    if quality is not None:
        data["quality"] = quality
    config.write_text(yaml.safe_dump(data))
    return config, url


def _feedback_by_key(rows: list[dict[str, Any]], keys: dict[str, str | None]) -> Counter[str | None]:
    """Feedback labels per key (the request id says whose request it was)."""
    return Counter(keys[r["item_id"]] for r in rows if r["source"] == "feedback")


async def _setup(tmp_path: Path, tenants: dict[tuple[str | None, str | None], int], **quality: Any) -> Path:
    config, url = _config(tmp_path, quality or None)
    db = await open_database(url, require=True)
    await populate(db.engine, tenants)
    await db.aclose()
    return config


def _keys(tenants: dict[tuple[str | None, str | None], int]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = 0
    for (key_id, _), n in tenants.items():
        for _ in range(n):
            out[f"r{i}"] = key_id
            i += 1
    return out


async def test_one_key_thumbing_down_many_prompts_gets_its_share_only(tmp_path: Path) -> None:
    """Key ``a`` thumbs down 40 poems the judge found ties, four other keys 2 each: its 40 labels used to go into
    the adaptation (83% of the feedback, each weighing 11 judged ties). Now it keeps 2, a fifth of the feedback."""
    tenants: dict[tuple[str | None, str | None], int] = {("a", None): 40, ("b", None): 2, ("c", None): 2,
                                                         ("d", None): 2, ("e", None): 2}  # fmt: skip
    config = await _setup(tmp_path, tenants)
    out = tmp_path / "labels.jsonl"
    n = await export_from_config(config, out, None, None)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    by_key = _feedback_by_key(rows, _keys(tenants))
    assert sum(1 for r in rows if r["source"] == "verdict") == 48  # verdicts: never capped
    assert by_key == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2}, by_key
    assert n == 58
    kept = {r["item_id"] for r in rows if r["source"] == "feedback" and _keys(tenants)[r["item_id"]] == "a"}
    assert kept == {"r38", "r39"}  # a capped key's latest feedback


async def test_a_single_key_adapts_on_all_its_feedback(tmp_path: Path) -> None:
    """The common single-app deployment: one key (or keys off: no key at all) gives every feedback label."""
    for name, tenants in {
        "one key": {("app", None): 30},
        "keys off": {(None, None): 30},
        "one team": {("k1", "team"): 20, ("k2", "team"): 10},  # a team's keys are one tenant
    }.items():
        where = tmp_path / name.replace(" ", "_")
        where.mkdir()
        config = await _setup(where, tenants)
        out = where / "labels.jsonl"
        await export_from_config(config, out, None, None)
        rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert sum(1 for r in rows if r["source"] == "feedback") == 30, name


async def test_two_keys_get_equal_voices_and_the_setting_can_lift_the_cap(tmp_path: Path) -> None:
    """With two keys no share below one half can hold for both: each keeps as many as the smaller one gave.
    ``max_label_share_per_key: 1`` turns the cap off."""
    tenants: dict[tuple[str | None, str | None], int] = {("a", None): 12, ("b", "blue"): 3}
    capped = tmp_path / "capped"
    capped.mkdir()
    config = await _setup(capped, tenants)
    out = tmp_path / "labels.jsonl"
    await export_from_config(config, out, None, None)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert _feedback_by_key(rows, _keys(tenants)) == {"a": 3, "b": 3}
    off = tmp_path / "off"
    off.mkdir()
    config = await _setup(off, tenants, max_label_share_per_key=1.0)
    await export_from_config(config, out, None, None)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert _feedback_by_key(rows, _keys(tenants)) == {"a": 12, "b": 3}


async def test_a_lone_feedback_giver_among_several_tenants_is_capped(tmp_path: Path) -> None:
    """Team ``alpha`` sends traffic and no feedback; key ``b`` thumbs down all of its own judged requests: it was
    the only tenant with feedback, so nothing capped it. It now keeps at most a share of the export's labels:
    ``L <= 1/2 (V + L)`` with two tenants, ``V`` the other tenant's verdicts: 10 of its 30."""
    config, url = _config(tmp_path)
    db = await open_database(url, require=True)
    async with db.engine.begin() as conn:
        await conn.execute(
            verdicts.insert(), [_verdict(i, f"Please write a poem about item {i}", "tie", "a") for i in range(100, 110)]
        )
    await populate(db.engine, {("b", None): 30})
    await db.aclose()
    out = tmp_path / "labels.jsonl"
    await export_from_config(config, out, None, None)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    fb = [r for r in rows if r["source"] == "feedback"]
    assert sum(1 for r in rows if r["source"] == "verdict") == 40
    assert {r["item_id"] for r in fb} == {f"r{i}" for i in range(20, 30)}  # its latest 10


def test_cap_shares_rule() -> None:
    """The rule: with K keys each keeps at most its latest L labels, L the largest with L <= max(share, 1/K) x the
    labels kept."""
    from gateway.quality.labels import cap_shares

    assert cap_shares({"a": 40, "b": 2, "c": 2, "d": 2, "e": 2}, 0.2) == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2}
    assert cap_shares({"a": 100}, 0.2) == {"a": 100}
    assert cap_shares({"a": 12, "b": 3}, 0.2) == {"a": 3, "b": 3}
    assert cap_shares({"a": 12, "b": 3}, 1.0) == {"a": 12, "b": 3}
    # ten keys of 10 and one of 100: the large one may hold a fifth: L <= 0.2 (L + 100) -> 25
    got = cap_shares({"big": 100, **{f"k{i}": 10 for i in range(10)}}, 0.2)
    assert got["big"] == 25 and all(got[f"k{i}"] == 10 for i in range(10))
    assert got["big"] / sum(got.values()) <= 0.2
    assert cap_shares({}, 0.2) == {}
    # the only feedback giver of two tenants: at most as many as the verdicts (L <= 0.5 (V + L)); of five, a quarter
    assert cap_shares({"b": 30}, 0.2, verdicts={"a": 10, "b": 30}) == {"b": 10}
    five = {"a": 10, "c": 10, "d": 10, "e": 10, "b": 30}  # four others with 40 judged labels between them
    assert cap_shares({"b": 30}, 0.2, verdicts=five) == {"b": 10}
    assert cap_shares({"b": 30}, 0.2, verdicts={"b": 30}) == {"b": 30}  # a single-app deployment


def test_the_setting_is_a_share() -> None:
    base = {"models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}
    assert settings_from_dict(base).quality.max_label_share_per_key == 0.2
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="max_label_share_per_key"):
            settings_from_dict({**base, "quality": {"max_label_share_per_key": bad}})


def test_adapt_from_the_ledger_trains_on_the_capped_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gateway router adapt --from-ledger`` exports through the same path: the poisoning key's thumbs-down on
    poems (which the judge found ties) no longer pull the adapted router towards the strong model for poems."""
    from gateway import cli_router
    from gateway.tokens import load_tiktoken
    from policies.router.loader import load_artifact
    from tests.policies.test_router_adapt import fake_embed

    monkeypatch.setattr(cli_router, "_embedder", lambda max_tokens, vector="minilm": fake_embed)
    scores: dict[str, float] = {}
    for share in (1.0, 0.2):
        where = tmp_path / str(share)
        where.mkdir()
        config, url = _config(where, {"max_label_share_per_key": share})

        async def fill(url: str = url) -> None:
            db = await open_database(url, require=True)
            vs = []
            for i in range(60):  # the judge: proofs need the strong model, poems do not (keys b..f)
                topic = ("poem", "proof")[i % 2]
                vs.append(_verdict(i, f"Please write a {topic} about item {i}", "loss" if topic == "proof" else "tie",
                                   "bcdef"[i % 5]))  # fmt: skip
            async with db.engine.begin() as conn:
                await conn.execute(verdicts.insert(), vs)
                await conn.execute(feedback.insert(), [_feedback(i, "bcdef"[i % 5], None, 1.0) for i in range(0, 10)])
            await populate(db.engine, {("a", None): 40}, start=100)  # key a: 40 poems, thumbed down
            await db.aclose()

        asyncio.run(fill())
        out = where / "router"
        result = CliRunner().invoke(
            router_app, ["adapt", "--from-ledger", "--config", str(config), "--out", str(out), "--folds", "4"]
        )
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
        from_a = sum(1 for r in rows if r["source"] == "feedback" and int(r["item_id"][1:]) >= 100)
        assert from_a == (40 if share == 1.0 else 2)
        router = load_artifact(out, encode=load_tiktoken().encode)
        probe = ["Please write a poem about item 9999"]
        scores[str(share)] = float(router.score_batch(probe, fake_embed(probe))[0])  # type: ignore[union-attr]
    # uncapped, key a's complaints made poems look like they need the strong model; capped, they weigh little
    assert scores["0.2"] < scores["1.0"] - 0.1, scores


async def test_background_adaptation_fits_on_the_capped_labels(tmp_path: Path) -> None:
    tenants: dict[tuple[str | None, str | None], int] = {("a", None): 40, ("b", None): 2, ("c", None): 2,
                                                         ("d", None): 2, ("e", None): 2}  # fmt: skip
    _, url = _config(tmp_path)
    db = await open_database(url, require=True)
    seen: list[list[dict[str, Any]]] = []

    def fit(labels: Path, out: Path, current: Path) -> None:
        seen.append([json.loads(line) for line in labels.read_text().splitlines()])
        (out / "adapted.json").write_text(json.dumps({"held_out": GOOD_FIGURES}))

    async def reload() -> None:
        return None

    adapter = BackgroundAdapter(db.engine, tmp_path / "router", 20, fit, reload, 3600, max_label_share=0.2)
    adapter.adapted_at = 0
    await populate(db.engine, tenants)
    assert await adapter.maybe_adapt()
    await db.aclose()
    [rows] = seen
    assert _feedback_by_key(rows, _keys(tenants)) == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2}


async def test_feedback_over_the_gateway_is_capped_per_key(
    sims: dict[str, str], tmp_path: Path, master: str, redis_prefix: str
) -> None:
    """Over sockets: key ``heavy`` sends four prompts and thumbs each down, key ``light`` one; the export keeps one
    of heavy's (two keys: equal voices)."""
    cfg = make_settings(sims, tmp_path, quality={}, auth=redis_prefix)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    async with httpx.AsyncClient() as http:
        with serve_gateway(cfg) as gw:
            admin = {"authorization": f"Bearer {MASTER}"}
            keys = {}
            for name in ("heavy", "light"):
                r = await http.post(f"{gw.base_url}/admin/keys", json={"name": name}, headers=admin)
                assert r.status_code == 201, r.text
                keys[name] = r.json()["key"]
            sent: dict[str, list[str]] = {"heavy": [], "light": []}
            for name, n in (("heavy", 4), ("light", 1)):
                sdk = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=keys[name], max_retries=0)
                for i in range(n):
                    raw = await sdk.chat.completions.with_raw_response.create(
                        model="auto", messages=[{"role": "user", "content": f"plain {name} {i}"}], max_tokens=8
                    )
                    sent[name].append(raw.headers["x-request-id"])
                await sdk.close()
            await wait_judged(gw, 5)
            for name, ids in sent.items():
                for rid in ids:
                    r = await http.post(
                        f"{gw.base_url}/v1/feedback",
                        json={"request_id": rid, "thumbs": "down"},
                        headers={"authorization": f"Bearer {keys[name]}"},
                    )
                    assert r.status_code == 201, r.text
    out = tmp_path / "labels.jsonl"
    await export_from_config(config, out, None, None)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    owner = {rid: name for name, ids in sent.items() for rid in ids}
    assert Counter(owner[r["item_id"]] for r in rows if r["source"] == "feedback") == {"heavy": 1, "light": 1}
    assert sum(1 for r in rows if r["source"] == "verdict") == 5


def test_labels_into_a_directory_that_does_not_exist_blames_the_out_option(tmp_path: Path) -> None:
    """It said ``the database is unreachable: [Errno 2] No such file or directory: '/nonexist/x.jsonl'``."""
    from gateway.cli import app

    config, _ = _config(tmp_path)
    r = CliRunner().invoke(app, ["quality", "labels", "-c", str(config), "--out", str(tmp_path / "no" / "x.jsonl")])
    assert r.exit_code == 2 and "--out" in r.output and "database" not in r.output, r.output
