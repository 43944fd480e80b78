"""Work directories a killed process left inside ``router.artifact`` (a background fit's ``.staging-*``, a save's
``.tmp-artifact-*``) are removed by the next save or start, never one a live process in another process is using.

Each is held, while in use, by an ``flock`` on its ``.owner`` file: the kernel drops it when its process dies. A
directory whose lock is free and that has not changed for ``STALE_AFTER_S`` is stale; one without an owner file
(older versions) only after ``UNOWNED_STALE_AFTER_S``. Real processes, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.accounting import open_database
from gateway.quality.adapting import BackgroundAdapter
from tests.helpers.servers import REPO_ROOT

_FIT = r"""
import asyncio, sys, time
from pathlib import Path

from gateway.accounting import open_database
from gateway.quality.adapting import BackgroundAdapter
from tests.quality.test_adapt import add_verdicts


async def main(url: str, artifact: str, marker: str) -> None:
    db = await open_database(url, require=True)
    await add_verdicts(db.engine, 0, 20)

    def fit(labels: Path, out: Path, current: Path) -> None:
        (out / "adapted.npz").write_bytes(b"half a fit")
        Path(marker).write_text(str(out))
        time.sleep(3600)  # killed here, mid-fit

    async def reload() -> None:
        return None

    adapter = BackgroundAdapter(db.engine, Path(artifact), 20, fit, reload, 3600)
    adapter.adapted_at = 0
    await adapter.maybe_adapt()


asyncio.run(main(*sys.argv[1:]))
"""


class Fitting:
    """A background fit in another process, stopped in its fit (its staging directory in ``artifact``)."""

    def __init__(self, tmp_path: Path, artifact: Path) -> None:
        script = tmp_path / "fit.py"
        script.write_text(_FIT)
        self.marker = tmp_path / f"staging-{time.monotonic_ns()}"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        url = f"sqlite+aiosqlite:///{tmp_path / 'fit-ledger.db'}"
        self.proc = subprocess.Popen([sys.executable, str(script), url, str(artifact), str(self.marker)], env=env)
        deadline = time.monotonic() + 60
        while not self.marker.exists():
            assert self.proc.poll() is None, "the fitting process died"
            assert time.monotonic() < deadline, "the fit did not start"
            time.sleep(0.05)
        self.staging = Path(self.marker.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def fitting(tmp_path: Path) -> Iterator[tuple[Path, list[Fitting]]]:
    artifact = tmp_path / "router"
    started: list[Fitting] = []
    yield artifact, started
    for f in started:
        f.kill()


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look untouched for ``seconds``."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _save(artifact: Path) -> None:
    """A save into ``artifact`` (``gateway router adapt --out``, ``AdaptedRouter.save``: the same function)."""
    from policies.router.store import write_atomically

    write_atomically(artifact, ["keep.txt"], lambda tmp: (tmp / "keep.txt").write_text("saved"))


def _work_dirs(artifact: Path) -> list[str]:
    return sorted(p.name for p in artifact.iterdir() if p.name.startswith((".staging-", ".tmp-artifact-")))


def test_a_fit_killed_mid_way_is_cleaned_up_by_the_next_save(
    tmp_path: Path, fitting: tuple[Path, list[Fitting]]
) -> None:
    artifact, started = fitting
    fit = Fitting(tmp_path, artifact)
    started.append(fit)
    fit.kill()
    assert fit.staging.is_dir() and fit.staging.name.startswith(".staging-")  # what a killed fit leaves
    _save(artifact)
    assert _work_dirs(artifact) == [fit.staging.name]  # minutes may not have passed: a fresh one stays
    _age(fit.staging, 600)
    _save(artifact)
    assert _work_dirs(artifact) == [] and (artifact / "keep.txt").read_text() == "saved"


def test_a_live_fit_in_another_process_is_left_alone(tmp_path: Path, fitting: tuple[Path, list[Fitting]]) -> None:
    artifact, started = fitting
    fit = Fitting(tmp_path, artifact)
    started.append(fit)
    _age(fit.staging, 7200)  # however old it looks: its process holds it
    _save(artifact)
    assert fit.staging.is_dir() and (fit.staging / "adapted.npz").read_bytes() == b"half a fit"
    fit.kill()
    _save(artifact)
    assert _work_dirs(artifact) == []


async def test_background_adaptation_cleans_up_when_it_starts(
    tmp_path: Path, fitting: tuple[Path, list[Fitting]]
) -> None:
    artifact, started = fitting
    fit = Fitting(tmp_path, artifact)
    started.append(fit)
    fit.kill()
    _age(fit.staging, 600)
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", require=True)

    def never(labels: Path, out: Path, current: Path) -> None:
        raise AssertionError("no labels: no fit")

    async def reload() -> None:
        return None

    adapter = BackgroundAdapter(db.engine, artifact, 20, never, reload, 3600)
    adapter.start()
    try:
        for _ in range(250):
            if not fit.staging.exists():
                break
            await asyncio.sleep(0.02)
        assert _work_dirs(artifact) == []
    finally:
        await adapter.aclose()
        await db.aclose()


def test_the_gateway_start_cleans_up(tmp_path: Path, fitting: tuple[Path, list[Fitting]]) -> None:
    from gateway import components
    from gateway.config import settings_from_dict
    from gateway.tokens import load_counter

    artifact, started = fitting
    fit = Fitting(tmp_path, artifact)
    started.append(fit)
    fit.kill()
    _age(fit.staging, 600)
    settings = settings_from_dict(
        {
            "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "router": {"artifact": str(artifact)},
            "quality": {"enabled": True, "adapt_every_labels": 20},
        }
    )
    components.load_router(settings, load_counter())  # no artifact yet: the prior, after the clean-up
    assert _work_dirs(artifact) == []


def test_directories_without_an_owner_go_after_an_hour_only(tmp_path: Path) -> None:
    """Left by an older version, or by a process killed between creating one and locking it."""
    from policies.router.store import UNOWNED_STALE_AFTER_S, remove_stale

    artifact = tmp_path / "router"
    artifact.mkdir()
    old, recent, other = artifact / ".tmp-artifact-old", artifact / ".staging-recent", artifact / ".keep-me"
    for d in (old, recent, other):
        d.mkdir()
        (d / "file").write_text("x")
    _age(old, UNOWNED_STALE_AFTER_S + 60)
    _age(recent, 600)
    _age(other, UNOWNED_STALE_AFTER_S + 60)
    assert remove_stale(artifact) == [old]
    assert sorted(p.name for p in artifact.iterdir()) == [".keep-me", ".staging-recent"]
    assert remove_stale(tmp_path / "missing") == []
