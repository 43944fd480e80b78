"""``router.artifact`` at start-up: a mistyped path, or an artifact that fails its checks, stops the start with a
config error naming the path, instead of serving the shipped prior (which may route far more to the strong
model). Background adaptation's first run writes the artifact, so with it on a path that holds no artifact yet,
inside a directory that exists, starts on the prior; ``router.fallback_to_prior: true`` restores the old start.
A bad artifact at ``POST /admin/router/reload`` still leaves the running router (``test_router_reload.py``).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from gateway import components
from gateway.config import Settings, settings_from_dict
from gateway.errors import ConfigError
from gateway.tokens import load_counter, load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt
from policies.router.model import QualityRouter
from tests.helpers.processes import GatewayProcess
from tests.policies.test_router_adapt import _labels, fake_embed

MASTER = "sk-master-artifact-startup"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    fit = adapt(_labels(48), prior, fake_embed, AdaptConfig(folds=4, vector="minilm-static"))
    return fit.save(tmp_path_factory.mktemp("saved") / "art")


def _corrupt(saved: Path, dst: Path) -> Path:
    """A copy of ``saved`` with a NaN in its calibration table (the checks refuse it)."""
    shutil.copytree(saved, dst)
    arrays = dict(np.load(dst / "adapted.npz"))
    arrays["calib_scores"] = arrays["calib_scores"].copy()
    arrays["calib_scores"][0] = np.nan
    np.savez(dst / "adapted.npz", **arrays)
    return dst


def _data(tmp_path: Path, artifact: Path, *, adapt_every: int | None = None, **router: Any) -> dict[str, Any]:
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    data: dict[str, Any] = {
        "models": [
            {"name": "weak", **upstream, "input_cost_per_token": "0.0000001", "quality": 6.0},
            {"name": "strong", **upstream, "input_cost_per_token": "0.00003", "quality": 9.0},
        ],
        "routes": {"smart": {"policy": "learned", "quality_target": 0.8}},
        "router": {"artifact": str(artifact), **router},
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
        "server": {"metrics_scrape_seconds": 3600},
    }
    if adapt_every is not None:
        data["quality"] = {"enabled": True, "adapt_every_labels": adapt_every}
    return data


def _settings(tmp_path: Path, artifact: Path, **kwargs: Any) -> Settings:
    return settings_from_dict(_data(tmp_path, artifact, **kwargs))


def _kind(estimator: object) -> str:
    return "adapted" if isinstance(estimator, AdaptedRouter) else "prior"


def test_a_valid_artifact_serves(saved: Path, tmp_path: Path) -> None:
    assert _kind(components.load_router(_settings(tmp_path, saved), load_counter())) == "adapted"


@pytest.mark.parametrize(
    ("case", "adapt_every", "expected"),
    [
        ("missing", None, "does not exist"),
        ("file", None, "is not a directory"),
        ("empty directory", None, "holds no router artifact"),
        ("missing parent", 20, "does not exist"),  # adaptation would write it, but the parent is a typo too
        ("file", 20, "is not a directory"),
    ],
)
def test_a_mistyped_artifact_path_stops_the_start(
    tmp_path: Path, case: str, adapt_every: int | None, expected: str
) -> None:
    artifact = {
        "missing": tmp_path / "routr",
        "file": tmp_path / "router.json",
        "empty directory": tmp_path / "empty",
        "missing parent": tmp_path / "no-such-dir" / "router",
    }[case]
    if case == "file":
        artifact.write_text("{}")
    if case == "empty directory":
        artifact.mkdir()
    with pytest.raises(ConfigError) as err:
        components.load_router(_settings(tmp_path, artifact, adapt_every=adapt_every), load_counter())
    message = str(err.value)
    assert message.startswith("router.artifact: ") and str(artifact) in message and expected in message, message


def test_an_artifact_that_fails_its_checks_stops_the_start(saved: Path, tmp_path: Path) -> None:
    bad = _corrupt(saved, tmp_path / "bad")
    for adapt_every in (None, 20):  # with background adaptation too: an artifact is there, and it is broken
        with pytest.raises(ConfigError, match=r"router\.artifact: .*bad does not load: .*non-finite"):
            components.load_router(_settings(tmp_path, bad, adapt_every=adapt_every), load_counter())


@pytest.mark.parametrize("case", ["missing", "empty directory"])
def test_background_adaptation_starts_on_the_prior_until_it_writes_the_artifact(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tmp_path / "router"
    if case == "empty directory":
        artifact.mkdir()
        (artifact / "labels.jsonl").write_text("")  # e.g. a first fit that was not installed
    with caplog.at_level(logging.WARNING, logger="gateway.components"):
        estimator = components.load_router(_settings(tmp_path, artifact, adapt_every=20), load_counter())
    assert _kind(estimator) == "prior"
    assert any("no artifact yet" in r.getMessage() and str(artifact) in r.getMessage() for r in caplog.records)


def test_without_the_monitor_background_adaptation_does_not_run(tmp_path: Path) -> None:
    """``adapt_every_labels`` with ``quality.enabled: false`` adapts nothing: a missing artifact stays an error."""
    data = _data(tmp_path, tmp_path / "router", adapt_every=20)
    data["quality"]["enabled"] = False
    with pytest.raises(ConfigError, match="does not exist"):
        components.load_router(settings_from_dict(data), load_counter())


def test_fallback_to_prior_restores_the_old_start(
    saved: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _corrupt(saved, tmp_path / "bad")
    with caplog.at_level(logging.ERROR):
        for artifact in (bad, tmp_path / "routr"):
            estimator = components.load_router(_settings(tmp_path, artifact, fallback_to_prior=True), load_counter())
            assert _kind(estimator) == "prior"
    assert sum("does not load" in r.getMessage() for r in caplog.records) == 2


def test_router_artifact_problem_is_the_cheap_part_of_the_rule(saved: Path, tmp_path: Path) -> None:
    """What ``gateway serve`` can check before it starts workers (no artifact is loaded)."""
    assert components.router_artifact_problem(_settings(tmp_path, saved)) is None
    assert components.router_artifact_problem(_settings(tmp_path, tmp_path / "router", adapt_every=20)) is None
    problem = components.router_artifact_problem(_settings(tmp_path, tmp_path / "routr"))
    assert problem is not None and "does not exist" in problem
    fallback = _settings(tmp_path, tmp_path / "routr", fallback_to_prior=True)
    assert components.router_artifact_problem(fallback) is None


def test_gateway_serve_exits_on_a_mistyped_artifact(tmp_path: Path) -> None:
    """The whole thing: ``gateway serve`` with ``router.artifact`` naming no directory exits non-zero, its output
    naming the path; it used to serve on the shipped prior."""
    config = tmp_path / "gateway.yaml"
    typo = tmp_path / "routr"
    config.write_text(yaml.safe_dump(_data(tmp_path, typo)))
    proc = GatewayProcess(config, tmp_path / "gateway.log", env={"GATEWAY_MASTER_KEY": MASTER})
    served = False
    try:
        deadline = time.monotonic() + 60
        while proc.proc.poll() is None and time.monotonic() < deadline and not served:
            try:
                served = httpx.get(f"{proc.base_url}/health", timeout=1.0).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        proc.kill()
    assert not served, "gateway serve started on the shipped prior"
    assert proc.proc.returncode == 3
    assert f"cannot start: router.artifact: {typo} does not exist" in proc.log(), proc.log()
    # one line, not uvicorn's traceback (and the aiohttp session's "Unclosed client session" after it)
    assert "Traceback" not in proc.log() and "Unclosed" not in proc.log(), proc.log()


def test_an_artifact_this_process_may_not_read_is_a_named_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``router.artifact`` the gateway's user may not look into (an operator's ``chmod 700`` as another user) is
    the start-up's named config error, not a bare ``PermissionError``: on Python 3.11 ``Path.exists`` raises it
    rather than answer False. (The tests run as root, whom permissions do not stop: the refusal is played by
    ``Path.exists`` for that one path.)"""
    from policies.router.loader import artifact_state

    locked = tmp_path / "locked" / "router"
    real_exists = Path.exists

    def exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    assert artifact_state(locked) == "unreadable"
    problem = components.router_artifact_problem(_settings(tmp_path, locked))
    assert problem is not None and "cannot be read" in problem and str(locked) in problem
    with pytest.raises(ConfigError, match="cannot be read"):
        components.load_router(_settings(tmp_path, locked), load_counter())
