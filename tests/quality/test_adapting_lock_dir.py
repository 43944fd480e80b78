"""Background adaptation's lock file (``router.artifact/.adapting.lock``) and the start-up rule that the
artifact's parent directory must exist (docs/routing.md, "Start-up"): the artifact directory itself may be created
(its first fit is installed there), its parents never (a typo'd path would otherwise grow a directory tree)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import open_database
from gateway.quality.adapting import ADAPTING_LOCK, BackgroundAdapter


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", require=True)
    try:
        yield db.engine
    finally:
        await db.aclose()


def _adapter(engine: AsyncEngine, artifact: Path) -> BackgroundAdapter:
    def fit(labels: Path, out: Path, current: Path) -> Any:
        raise AssertionError("no fit expected")

    async def reload() -> None:
        return None

    return BackgroundAdapter(engine, artifact, 20, fit, reload, 3600, lock=artifact / ADAPTING_LOCK)


async def test_the_lock_does_not_create_the_artifact_s_parents(
    engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = tmp_path / "typo" / "deeper" / "router"
    adapter = _adapter(engine, artifact)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.quality"):
            assert not await adapter.maybe_adapt()
            assert not await adapter.maybe_adapt()
        assert not (tmp_path / "typo").exists()
        assert adapter.status()["fitting_here"] is not True and adapter.adapted_at is None  # skipped: nothing counted
        logged = [r.getMessage() for r in caplog.records if "parent" in r.getMessage()]
        assert len(logged) == 1 and str(artifact.parent) in logged[0], logged
        # The parent appears (a volume mounted late): the artifact directory is created and this process fits.
        artifact.parent.mkdir(parents=True)
        assert not await adapter.maybe_adapt()  # no labels yet: nothing to fit
        assert (artifact / ADAPTING_LOCK).is_file() and adapter.status()["fitting_here"] is True
    finally:
        await adapter.aclose()


async def test_the_artifact_directory_is_created_when_its_parent_exists(engine: AsyncEngine, tmp_path: Path) -> None:
    artifact = tmp_path / "router"
    adapter = _adapter(engine, artifact)
    try:
        assert not await adapter.maybe_adapt()
        assert artifact.is_dir() and (artifact / ADAPTING_LOCK).is_file()
        assert adapter.status()["fitting_here"] is True and adapter.adapted_at == 0
    finally:
        await adapter.aclose()
