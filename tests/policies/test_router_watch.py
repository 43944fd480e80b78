"""Following ``router.artifact`` on disk, in one process: the cheap change detection
(:func:`policies.router.watch.artifact_stamp`), one check of :class:`gateway.runtime.RouterWatch` at a time, its
loop outliving errors, its life in the app's lifespan, and background adaptation fitting in one process only.
The multi-worker behaviour over sockets is in ``test_router_watch_workers.py``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.accounting import open_database
from gateway.config import Settings, settings_from_dict
from gateway.quality.adapting import ADAPTING_LOCK, BackgroundAdapter
from gateway.runtime import (
    Gateway,
    RouterWatch,
    build_gateway,
    close_gateway,
    router_status,
    start_router_watch,
)
from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt
from policies.router.model import ARTIFACT_DIR, QualityRouter
from policies.router.watch import artifact_stamp
from tests.helpers.servers import REPO_ROOT, serve_gateway
from tests.policies.test_router_adapt import _labels, fake_embed
from tests.quality.test_adapt import GOOD_FIGURES, add_verdicts

MASTER = "sk-master-router-watch"


@pytest.fixture(scope="module")
def fits() -> list[AdaptedRouter]:
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    config = AdaptConfig(folds=4, vector="minilm-static")
    return [adapt(_labels(48, seed=seed), prior, fake_embed, config) for seed in (1, 2)]


def _id(artifact: Path) -> str:
    return str(json.loads((artifact / "adapted.json").read_text())["artifact_id"])


def _corrupt_copy(fit: AdaptedRouter, scratch: Path, artifact: Path) -> str:
    """Save ``fit`` to ``scratch`` with a NaN in its calibration table and copy it over ``artifact`` in place (the
    weights first, then the JSON); the corrupt save's id."""
    bad = fit.save(scratch)
    arrays = dict(np.load(bad / "adapted.npz"))
    arrays["calib_scores"] = arrays["calib_scores"].copy()
    arrays["calib_scores"][0] = np.nan
    np.savez(bad / "adapted.npz", **arrays)
    for name in ("adapted.npz", "adapted.json"):
        (artifact / name).write_bytes((bad / name).read_bytes())
    return _id(bad)


# ------------------------------------------------------------------ change detection


def test_no_artifact_no_stamp(tmp_path: Path) -> None:
    assert artifact_stamp(tmp_path / "missing") is None
    (tmp_path / "file").write_text("x")
    assert artifact_stamp(tmp_path / "file") is None
    empty = tmp_path / "router"
    empty.mkdir()
    (empty / "labels.jsonl").write_text("")  # what background adaptation may leave before its first install
    (empty / ADAPTING_LOCK).write_text("")
    assert artifact_stamp(empty) is None


def test_a_stamp_changes_with_each_save_and_each_rewrite(fits: list[AdaptedRouter], tmp_path: Path) -> None:
    artifact = fits[0].save(tmp_path / "router")
    first = artifact_stamp(artifact)
    assert first is not None and first.kind == "adapted" and first.artifact_id == _id(artifact)
    assert {name for name, *_ in first.files} == {
        "adapted.json",
        "adapted.npz",
        "prior/router.json",
        "prior/router.npz",
    }
    assert artifact_stamp(artifact) == first  # nothing changed: equal (the watch loads nothing)
    (artifact / "labels.jsonl").write_text("{}\n")
    assert artifact_stamp(artifact) == first  # files that are not the artifact's do not count
    fits[0].save(artifact)  # the same fit saved again: a new save, a new id
    second = artifact_stamp(artifact)
    assert second is not None and second != first and second.artifact_id not in (None, first.artifact_id)
    weights = (artifact / "adapted.npz").read_bytes()
    (artifact / "adapted.npz").write_bytes(weights + b"\0")  # rewritten in place: same id, another stamp
    third = artifact_stamp(artifact)
    assert third is not None and third != second and third.artifact_id == second.artifact_id
    (artifact / "adapted.json").write_text("{not json")  # a JSON that does not parse: still a stamp, no id
    broken = artifact_stamp(artifact)
    assert broken is not None and broken.artifact_id is None and broken.kind == "adapted"


def test_a_prior_artifact_is_stamped_by_its_files(tmp_path: Path) -> None:
    prior = tmp_path / "prior"
    shutil.copytree(ARTIFACT_DIR, prior)
    stamp = artifact_stamp(prior)
    assert stamp is not None and stamp.kind == "prior" and stamp.artifact_id is None
    os.utime(prior / "router.npz", ns=(1, 1))
    assert artifact_stamp(prior) != stamp


def test_a_stamp_loads_no_numpy(fits: list[AdaptedRouter], tmp_path: Path) -> None:
    """The check every few seconds reads a few stats and a small JSON: numpy is not even imported."""
    artifact = fits[0].save(tmp_path / "router")
    code = (
        "import sys; from pathlib import Path; from policies.router.watch import artifact_stamp; "
        f"s = artifact_stamp(Path({str(artifact)!r})); assert s is not None and s.artifact_id; "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ one process's watch


def _settings(tmp_path: Path, artifact: Path, **router: Any) -> Settings:
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    return settings_from_dict(
        {
            "models": [
                {"name": "weak", **upstream, "input_cost_per_token": "0.0000001", "quality": 6.0},
                {"name": "strong", **upstream, "input_cost_per_token": "0.00003", "quality": 9.0},
            ],
            "routes": {"smart": {"policy": "learned", "quality_target": 0.8}},
            "router": {"artifact": str(artifact), **router},
            "cache": {"enabled": False},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
            "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
        }
    )


@pytest.fixture
async def gateway(fits: list[AdaptedRouter], tmp_path: Path) -> AsyncIterator[Gateway]:
    """A runtime serving ``fits[0]`` from ``tmp_path/router``, its watch not started (the tests call ``check``)."""
    fits[0].save(tmp_path / "router")
    gw = await build_gateway(_settings(tmp_path, tmp_path / "router", watch_seconds=3600))
    try:
        yield gw
    finally:
        await close_gateway(gw)


def _served(gw: Gateway) -> str | None:
    return router_status(gw)["artifact_id"]


async def test_a_check_reloads_a_new_save_once(
    gateway: Gateway, fits: list[AdaptedRouter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tmp_path / "router"
    watch = RouterWatch(gateway, artifact, 3600)
    started = router_status(gateway)
    assert started["artifact_id"] == _id(artifact) and started["loaded_by"] == "start"
    assert await watch.check() == "unchanged"  # what it started with: not loaded again
    fits[1].save(artifact)
    assert await watch.check() == "reloaded"
    status = router_status(gateway)
    assert status["artifact_id"] == _id(artifact) and status["version"] == fits[1].version
    assert status["loaded_by"] == "watch" and status["loaded_at"] > started["loaded_at"]
    assert status["pid"] == os.getpid()
    assert await watch.check() == "unchanged" and watch.reloads == 1
    # The same save's files rewritten (copied back, touched): the save already serves, nothing is loaded.
    for name in ("adapted.npz", "adapted.json"):
        (artifact / name).write_bytes((artifact / name).read_bytes())
    before = gateway.router.estimator
    assert await watch.check() == "served"
    assert gateway.router.estimator is before and watch.reloads == 1
    assert await watch.check() == "unchanged"


async def test_a_corrupt_artifact_keeps_the_running_router_and_is_logged_once(
    gateway: Gateway, fits: list[AdaptedRouter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tmp_path / "router"
    watch = RouterWatch(gateway, artifact, 3600)
    serving, estimator = _served(gateway), gateway.router.estimator
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        bad_id = _corrupt_copy(fits[1], tmp_path / "bad", artifact)
        outcomes = [await watch.check() for _ in range(5)]
    assert outcomes == ["refused"] + ["unchanged"] * 4
    assert gateway.router.estimator is estimator and _served(gateway) == serving
    refused = [r.getMessage() for r in caplog.records if "does not load" in r.getMessage()]
    assert len(refused) == 1 and bad_id in refused[0] and "non-finite" in refused[0], refused
    assert watch.failures == 1 and "non-finite" in str(watch.status()["last_error"])
    # A half-written one (the JSON of one save beside the weights of another): refused too, once.
    fits[0].save(tmp_path / "other")
    (artifact / "adapted.json").write_bytes((tmp_path / "other" / "adapted.json").read_bytes())
    assert [await watch.check() for _ in range(3)] == ["refused", "unchanged", "unchanged"]
    assert gateway.router.estimator is estimator
    fits[1].save(artifact)  # a good save again
    assert await watch.check() == "reloaded" and _served(gateway) == _id(artifact)


async def test_a_removed_artifact_keeps_the_running_router(
    gateway: Gateway, fits: list[AdaptedRouter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tmp_path / "router"
    watch = RouterWatch(gateway, artifact, 3600)
    serving = _served(gateway)
    shutil.rmtree(artifact)
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        assert [await watch.check() for _ in range(3)] == ["missing"] * 3
    assert _served(gateway) == serving
    assert sum("holds no artifact any more" in r.getMessage() for r in caplog.records) == 1
    fits[1].save(artifact)
    assert await watch.check() == "reloaded" and _served(gateway) == _id(artifact)


async def test_an_artifact_that_appears_later_is_picked_up(fits: list[AdaptedRouter], tmp_path: Path) -> None:
    """Background adaptation writes ``router.artifact`` after the start (here: a start on the prior allowed by
    ``fallback_to_prior``): the watch loads it when it appears."""
    artifact = tmp_path / "router"
    gw = await build_gateway(_settings(tmp_path, artifact, watch_seconds=3600, fallback_to_prior=True))
    try:
        watch = RouterWatch(gw, artifact, 3600)
        assert router_status(gw)["kind"] == "prior" and _served(gw) is None
        assert await watch.check() == "missing"
        artifact.mkdir()
        (artifact / "labels.jsonl").write_text("")
        assert await watch.check() == "missing"  # a directory without an artifact yet
        fits[0].save(artifact)
        assert await watch.check() == "reloaded"
        assert router_status(gw)["kind"] == "adapted" and _served(gw) == _id(artifact)
    finally:
        await close_gateway(gw)


async def test_the_loop_outlives_errors(
    fits: list[AdaptedRouter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway import runtime

    fits[0].save(tmp_path / "router")
    gw = await build_gateway(_settings(tmp_path, tmp_path / "router", watch_seconds=0.02))
    real = runtime.artifact_stamp
    calls = {"n": 0}

    def flaky(directory: Path) -> Any:
        calls["n"] += 1
        if calls["n"] <= 5:
            raise RuntimeError("the disk hiccupped")
        return real(directory)

    monkeypatch.setattr(runtime, "artifact_stamp", flaky)
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.runtime"):
            watch = start_router_watch(gw)
            assert watch is not None
            for _ in range(200):
                if calls["n"] > 8:
                    break
                await asyncio.sleep(0.02)
        assert watch.status()["running"] and watch.failures == 5
        assert sum("the disk hiccupped" in r.getMessage() for r in caplog.records) == 1  # once, not each tick
        fits[1].save(tmp_path / "router")
        for _ in range(200):
            if _served(gw) == _id(tmp_path / "router"):
                break
            await asyncio.sleep(0.02)
        assert _served(gw) == _id(tmp_path / "router") and watch.reloads == 1
    finally:
        await close_gateway(gw)
    assert not watch.status()["running"]  # cancelled by close_gateway


def test_the_watch_lives_in_the_lifespan(fits: list[AdaptedRouter], tmp_path: Path) -> None:
    fits[0].save(tmp_path / "router")
    os.environ["GATEWAY_MASTER_KEY"] = MASTER
    try:
        with serve_gateway(_settings(tmp_path, tmp_path / "router", watch_seconds=0.1)) as running:
            watch = running.gateway.router_watch
            assert watch is not None and watch.status()["running"]
            info = httpx.get(f"{running.base_url}/admin/router", headers={"authorization": f"Bearer {MASTER}"}).json()
            assert info["watch"]["running"] and info["watch"]["every_s"] == 0.1
            assert info["artifact_id"] == _id(tmp_path / "router") and info["pid"] == os.getpid()
            assert info["loaded_at"] and info["background_adaptation"] is None
        assert not watch.status()["running"]  # cancelled at shutdown
        with serve_gateway(_settings(tmp_path, tmp_path / "router", watch_seconds=0)) as running:
            assert running.gateway.router_watch is None  # 0: no watch; the reload call still works
            answer = httpx.post(
                f"{running.base_url}/admin/router/reload", headers={"authorization": f"Bearer {MASTER}"}
            ).json()
            assert answer["artifact_id"] == _id(tmp_path / "router") and answer["other_processes_within_s"] is None
            assert "router.watch_seconds is 0" in answer["other_processes"]
    finally:
        del os.environ["GATEWAY_MASTER_KEY"]


# ------------------------------------------------------------------ background adaptation: one process fits


async def test_one_process_fits_while_it_lives(tmp_path: Path) -> None:
    """Two adapters sharing ``router.artifact`` (two workers): the one holding ``.adapting.lock`` counts and fits,
    the other skips every round; when the first stops, the second takes over."""
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", require=True)
    artifact = tmp_path / "router"
    fits: list[str] = []

    def fit_as(name: str) -> Any:
        def fit(labels: Path, out: Path, current: Path) -> None:
            fits.append(name)
            (out / "adapted.json").write_text(json.dumps({"held_out": GOOD_FIGURES, "by": name}))
            (out / "adapted.npz").write_bytes(b"weights")

        return fit

    async def reload() -> None:
        return None

    lock = artifact / ADAPTING_LOCK
    first = BackgroundAdapter(db.engine, artifact, 20, fit_as("first"), reload, 3600, lock=lock)
    second = BackgroundAdapter(db.engine, artifact, 20, fit_as("second"), reload, 3600, lock=lock)
    try:
        assert not await first.maybe_adapt() and first.status()["fitting_here"] is True
        assert not await second.maybe_adapt() and second.status()["fitting_here"] is False
        assert second.adapted_at is None  # it does not even count the labels
        await add_verdicts(db.engine, 0, 25)
        assert not await second.maybe_adapt()
        assert await first.maybe_adapt() and fits == ["first"]
        await first.aclose()  # the fitting process stops (or dies): the lock is free
        assert not await second.maybe_adapt() and second.status()["fitting_here"] is True
        await add_verdicts(db.engine, 25, 20)
        assert await second.maybe_adapt() and fits == ["first", "second"]
    finally:
        await first.aclose()
        await second.aclose()
        await db.aclose()
