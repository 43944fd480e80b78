""":class:`gateway.runtime.RouterWatch` after a reload that failed: a bad artifact (a ``ValueError``, ``KeyError`` or
``TypeError`` from its checks) is refused once per version and not loaded again, while a failure that says nothing
about the files (the file system: ``OSError`` such as EMFILE; ``MemoryError``; the prompt encoder that did not build
after a change of vector) is retried, at once and then further apart, and logged once per distinct error.

Before, any failure was remembered as "refused" for that version: one EMFILE left a worker on the old router until
the next save."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import components, runtime
from gateway.runtime import Gateway, RouterWatch, router_status
from policies.router.adapt import AdaptedRouter
from tests.policies.test_router_watch import _id, _settings, fits, gateway  # noqa: F401  (the fixtures)


def _failing(real: Any, errors: list[BaseException]) -> Any:
    """``real``, raising the next of ``errors`` at each call until none is left."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if errors:
            raise errors.pop(0)
        return real(*args, **kwargs)

    return call


def _served(gw: Gateway) -> str | None:
    return router_status(gw)["artifact_id"]


@pytest.fixture
def watched(gateway: Gateway, fits: list[AdaptedRouter], tmp_path: Path) -> tuple[RouterWatch, Path]:  # noqa: F811
    """A watch of ``tmp_path/router``, where a fitted router was just saved (not yet checked)."""
    artifact = tmp_path / "router"
    watch = RouterWatch(gateway, artifact, 3600)
    fits[1].save(artifact)
    return watch, artifact


async def test_a_file_system_error_is_retried_at_the_next_check(
    gateway: Gateway,  # noqa: F811
    watched: tuple[RouterWatch, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, artifact = watched
    monkeypatch.setattr(
        runtime, "load_artifact", _failing(runtime.load_artifact, [OSError(errno.EMFILE, "Too many open files")])
    )
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        outcomes = [await watch.check() for _ in range(3)]
    assert outcomes == ["failed", "reloaded", "unchanged"], outcomes
    assert _served(gateway) == _id(artifact)
    assert watch.failures == 1 and watch.reloads == 1
    logged = [r.getMessage() for r in caplog.records if "Too many open files" in r.getMessage()]
    assert len(logged) == 1 and "retried" in logged[0], logged


async def test_repeated_transient_failures_back_off_and_are_logged_once_per_error(
    gateway: Gateway,  # noqa: F811
    watched: tuple[RouterWatch, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch, artifact = watched
    errors: list[BaseException] = [OSError(errno.EMFILE, "Too many open files") for _ in range(3)]
    errors.append(MemoryError("no room for the weights"))
    monkeypatch.setattr(runtime, "load_artifact", _failing(runtime.load_artifact, errors))
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        outcomes = [await watch.check() for _ in range(20)]
    # tried at the first check, then 1, 2, 4 and 8 checks later: the 4 errors, then the load that works
    tried = [i for i, o in enumerate(outcomes) if o != "waiting"]
    assert tried[:5] == [0, 1, 3, 7, 15], outcomes
    assert [outcomes[i] for i in tried[:5]] == ["failed"] * 4 + ["reloaded"]
    assert outcomes[16:] == ["unchanged"] * 4
    assert _served(gateway) == _id(artifact) and watch.failures == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Too many open files" in m for m in messages) == 1, messages
    assert sum("no room for the weights" in m for m in messages) == 1, messages
    assert watch.status()["last_error"] is not None


async def test_a_new_save_during_the_back_off_is_tried_at_once(
    gateway: Gateway,  # noqa: F811
    fits: list[AdaptedRouter],  # noqa: F811
    watched: tuple[RouterWatch, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch, artifact = watched
    errors: list[BaseException] = [OSError(errno.EIO, "I/O error") for _ in range(3)]
    monkeypatch.setattr(runtime, "load_artifact", _failing(runtime.load_artifact, errors))
    assert [await watch.check() for _ in range(3)] == ["failed", "failed", "waiting"]
    fits[0].save(artifact)  # another save: not the version that failed, no waiting
    assert await watch.check() == "failed"
    assert await watch.check() == "reloaded" and _served(gateway) == _id(artifact)


async def test_an_encoder_that_did_not_build_is_retried(
    gateway: Gateway,  # noqa: F811
    watched: tuple[RouterWatch, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new artifact loads but the prompt encoder its vector needs fails to build (a model file being
    replaced, a thread that could not start): the version is not bad, the next check builds it again."""
    watch, artifact = watched
    gateway.router_encoders.clear()  # as after a change of vector: the encoder must be built
    real = components.build_router_encoder
    calls = {"n": 0}

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("can't start new thread")
        return await real(*args, **kwargs)

    monkeypatch.setattr(components, "build_router_encoder", flaky)
    before = gateway.router.estimator
    assert await watch.check() == "failed"
    assert gateway.router.estimator is before  # nothing swapped
    assert await watch.check() == "reloaded" and _served(gateway) == _id(artifact)


@pytest.mark.parametrize("error", [ValueError("non-finite weights"), KeyError("calib_scores"), TypeError("a str")])
async def test_a_bad_artifact_is_refused_once_and_not_retried(
    gateway: Gateway,  # noqa: F811
    watched: tuple[RouterWatch, Path],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    watch, _ = watched
    serving = _served(gateway)  # the saved artifact is served only once a check loads it
    calls = {"n": 0}

    def bad(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise error

    monkeypatch.setattr(runtime, "load_artifact", bad)
    assert [await watch.check() for _ in range(4)] == ["refused"] + ["unchanged"] * 3
    assert calls["n"] == 1 and _served(gateway) == serving and watch.failures == 1
