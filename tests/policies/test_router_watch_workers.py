"""Over sockets: every process of ``gateway serve --workers 3`` follows ``router.artifact`` on disk.

A reload used to swap the router in the one worker that got ``POST /admin/router/reload``: the others went on
serving the artifact they started with (an audit saw 19 of 20 ``GET /admin/router`` answers still on the old one).
Each process now checks the artifact every ``router.watch_seconds`` and reloads it when it changed. The answers
are asked for over new connections (each one may land on any worker) until 20 in a row, from every worker, report
the artifact written last.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from gateway.simulator import create_simulator_app
from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt
from policies.router.model import QualityRouter
from tests.helpers.processes import GatewayProcess
from tests.helpers.servers import run_asgi_server
from tests.policies.test_router_adapt import _labels, fake_embed

MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}
WORKERS = 3
WATCH_S = 0.5
#: Answers in a row (each over a new connection) that must all report the expected artifact.
IN_A_ROW = 20
#: Answers asked for at once, each over its own connection.
AT_ONCE = 5


@pytest.fixture(scope="module")
def fits() -> list[AdaptedRouter]:
    """Three adapted routers fitted on different labels (different versions)."""
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    config = AdaptConfig(folds=4, vector="minilm-static")
    return [adapt(_labels(48, seed=seed), prior, fake_embed, config) for seed in (1, 2, 3)]


def _config(tmp: Path, upstream: str, artifact: Path, quality: dict[str, Any] | None = None, **router: Any) -> Path:
    model = {"backend": "openai", "base_url": f"{upstream}/v1", "upstream_model": "sim-fast"}
    data: dict[str, Any] = {
        "models": [
            {"name": "weak", **model, "input_cost_per_token": "0.0000001", "quality": 6.0},
            {"name": "strong", **model, "input_cost_per_token": "0.00003", "quality": 9.0},
        ],
        "routes": {"smart": {"policy": "learned", "quality_target": 0.8}},
        "router": {"artifact": str(artifact), **router},
        "cache": {"enabled": False},
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"},
        "server": {"metrics_scrape_seconds": 3600},
    }
    if quality is not None:
        data["quality"] = quality
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _saved_id(artifact: Path) -> str:
    return str(json.loads((artifact / "adapted.json").read_text())["artifact_id"])


class Served:
    """A multi-worker gateway process serving ``artifact``."""

    def __init__(self, proc: GatewayProcess, artifact: Path) -> None:
        self.proc = proc
        self.artifact = artifact

    def ask(self, n: int = 1) -> list[dict[str, Any]]:
        """``n`` answers of ``GET /admin/router``, asked at once, each over a new connection: any worker may
        answer each (asked one at a time, the worker that accepted the last connection tends to win the next)."""

        def one(_: int) -> dict[str, Any]:
            answer = httpx.get(f"{self.proc.base_url}/admin/router", headers=ADMIN, timeout=10.0)
            assert answer.status_code == 200, answer.text
            info: dict[str, Any] = answer.json()
            return info

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))

    def wait_all(self, version: str, artifact_id: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Ask until ``IN_A_ROW`` answers in a row, from every worker, report ``version``/``artifact_id``; the
        answers of that run. Fails with the last answers seen when that does not happen in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        run: list[dict[str, Any]] = []
        seen: list[tuple[Any, Any, Any]] = []
        while time.monotonic() < deadline:
            for info in self.ask(AT_ONCE):
                seen.append((info.get("pid"), info.get("version"), info.get("artifact_id")))
                if info.get("version") == version and info.get("artifact_id") == artifact_id:
                    run.append(info)
                else:
                    run = []
            if len(run) >= IN_A_ROW and len({i.get("pid") for i in run}) == WORKERS:
                return run
            if not run:
                time.sleep(0.05)
        kinds = [(pid, v) for pid, v, _ in seen[-IN_A_ROW:]]
        wrong = sum(1 for _, v, a in seen[-IN_A_ROW:] if (v, a) != (version, artifact_id))
        raise AssertionError(
            f"after {timeout_s} s, {wrong} of the last {IN_A_ROW} answers do not report {version}/{artifact_id}: {kinds}"
        )


@pytest.fixture(scope="module")
def served(fits: list[AdaptedRouter], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("workers")
    artifact = fits[0].save(tmp / "router")
    with run_asgi_server(create_simulator_app("fast", model_name="sim-fast")) as upstream:
        config = _config(tmp, upstream, artifact, watch_seconds=WATCH_S)
        proc = GatewayProcess(
            config, tmp / "gateway.log", "--workers", str(WORKERS), env={"GATEWAY_MASTER_KEY": MASTER}
        )
        try:
            proc.wait_ready(120)
            yield Served(proc, artifact)
        finally:
            proc.stop()


def test_every_worker_serves_the_artifact_it_started_with(served: Served, fits: list[AdaptedRouter]) -> None:
    served.wait_all(fits[0].version, _saved_id(served.artifact))


def test_one_reload_call_reaches_every_worker(served: Served, fits: list[AdaptedRouter]) -> None:
    """The audit's case: a new artifact, one ``POST /admin/router/reload`` (it lands on one worker), then every
    answer must report the new artifact."""
    fits[1].save(served.artifact)
    new_id = _saved_id(served.artifact)
    reloaded = httpx.post(f"{served.proc.base_url}/admin/router/reload", headers=ADMIN, timeout=30.0)
    assert reloaded.status_code == 200, reloaded.text
    answer = reloaded.json()
    assert answer["version"] == fits[1].version and answer["artifact_id"] == new_id
    assert answer["other_processes_within_s"] == WATCH_S and "within 0.5 s" in answer["other_processes"]
    served.wait_all(fits[1].version, new_id, timeout_s=8 * WATCH_S + 10)


def test_a_new_artifact_is_followed_without_a_call(served: Served, fits: list[AdaptedRouter]) -> None:
    """What background adaptation, ``gateway router adapt --out`` or a deploy writes: no call at all."""
    fits[2].save(served.artifact)
    served.wait_all(fits[2].version, _saved_id(served.artifact), timeout_s=8 * WATCH_S + 10)


def test_a_corrupt_artifact_written_in_place_keeps_the_running_one(
    served: Served, fits: list[AdaptedRouter], tmp_path: Path
) -> None:
    """A save whose weights hold a NaN, copied over the serving files in place (not atomically): every worker
    keeps the artifact it serves, and logs the bad one once (not every check); a good save then serves."""
    fits[0].save(served.artifact)
    good_id = _saved_id(served.artifact)
    served.wait_all(fits[0].version, good_id, timeout_s=8 * WATCH_S + 10)
    bad = fits[1].save(tmp_path / "bad")
    arrays = dict(np.load(bad / "adapted.npz"))
    arrays["calib_scores"] = arrays["calib_scores"].copy()
    arrays["calib_scores"][0] = np.nan
    np.savez(bad / "adapted.npz", **arrays)
    for name in ("adapted.npz", "adapted.json"):
        (served.artifact / name).write_bytes((bad / name).read_bytes())
    time.sleep(6 * WATCH_S)  # several checks in every worker
    served.wait_all(fits[0].version, good_id, timeout_s=5)
    log = served.proc.log()
    refused = [line for line in log.splitlines() if "does not load" in line and _saved_id(bad) in line]
    assert 1 <= len(refused) <= WORKERS, "\n".join(refused)  # once per worker at most, not once per check
    fits[2].save(served.artifact)
    served.wait_all(fits[2].version, _saved_id(served.artifact), timeout_s=8 * WATCH_S + 10)


def test_background_adaptation_fits_in_one_worker_and_all_follow_the_artifact_it_writes(
    fits: list[AdaptedRouter], tmp_path: Path
) -> None:
    """``router.artifact`` does not exist yet (background adaptation will write it): every worker starts on the
    prior; one worker holds ``.adapting.lock`` and fits, the others skip; when the artifact appears (written here
    as the fitting worker's install would), every worker serves it."""
    artifact = tmp_path / "router"
    with run_asgi_server(create_simulator_app("fast", model_name="sim-fast")) as upstream:
        config = _config(
            tmp_path,
            upstream,
            artifact,
            watch_seconds=WATCH_S,
            quality={"enabled": True, "adapt_every_labels": 1000, "report_interval_seconds": 0.2},
        )
        proc = GatewayProcess(
            config, tmp_path / "gateway.log", "--workers", str(WORKERS), env={"GATEWAY_MASTER_KEY": MASTER}
        )
        try:
            proc.wait_ready(120)
            served = Served(proc, artifact)
            roles: dict[int, Any] = {}
            deadline = time.monotonic() + 30
            while (len(roles) < WORKERS or None in roles.values()) and time.monotonic() < deadline:
                for info in served.ask(AT_ONCE):
                    assert info["kind"] == "prior" and info["artifact_id"] is None
                    roles[info["pid"]] = info["background_adaptation"]["fitting_here"]
            assert sorted(roles.values()) == [False] * (WORKERS - 1) + [True], roles
            assert (artifact / ".adapting.lock").is_file()
            fits[0].save(artifact)
            answers = served.wait_all(fits[0].version, _saved_id(artifact), timeout_s=8 * WATCH_S + 10)
            assert {a["loaded_by"] for a in answers} == {"watch"}
        finally:
            proc.stop()
    assert "one fits in the background" in proc.log()
