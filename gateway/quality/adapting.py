"""Opt-in background adaptation: once enough new labels exist, refit the router on them and reload it.

With ``quality.adapt_every_labels: N`` (and ``router.artifact`` set), every ``quality.report_interval_seconds``
the gateway counts the labels (pairwise verdicts) in its database; once ``N`` more exist than when it last
adapted (or started), it exports every label (:mod:`gateway.quality.labels`) and fits an adapted router on top
of the shipped prior in a worker thread (``policies.router.adapt``, the same fit as ``gateway router adapt
--from-ledger``), into a **staging** directory inside ``router.artifact`` (the serving files are untouched;
``.staging-*``, held by this process while in use: one a killed process left is removed at the next start or
save, :func:`policies.router.store.remove_stale`).

The new artifact replaces the serving one only if its own held-out figures (5-fold cross-validation on the
labels, recorded in ``adapted.json``) are not worse than the frozen prior's or a random router's on the same
labels (:func:`held_out_regressions`: APGR and the cost saved at 95% quality); otherwise it is dropped, logged
and counted (:attr:`BackgroundAdapter.rejections`). An accepted one is moved into place (with its
``labels.jsonl``) under the directory's lock and reloaded (the route thresholds are recalibrated on those
labels); if the reload fails, the previous files are put back, so the directory always holds the artifact that
serves. A fit, save or reload that fails is logged and counted (:attr:`BackgroundAdapter.failures`), the
running router keeps serving, and the loop goes on.

**One process fits.** Several gateway processes (``gateway serve --workers N``, replicas sharing the directory)
each run this loop, but only the one holding the ``flock`` on ``router.artifact/.adapting.lock`` counts labels and
fits: the first to take it keeps it for its lifetime (the kernel releases it when the process dies; another one
then takes it at its next round, counting new labels from then). The others skip every round, and, like every
process, follow the artifact the fitting one installs (``router.watch_seconds``, :class:`gateway.runtime.RouterWatch`).
Where ``flock`` is not available (another OS, a file system without it) each process fits on its own, as before
(logged). The lock file creates ``router.artifact`` itself when only its parent exists (as the start-up rule
allows), never the parents: while the parent is missing (a typo'd path, a volume not mounted yet) every round is
skipped, logged once. Replicas on separate file systems do not see one another's lock: run background adaptation
in one of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.quality_tables import verdicts
from gateway.errors import GatewayError
from gateway.quality.labels import DEFAULT_MAX_LABEL_SHARE, export_labels, open_private
from policies.router.store import STAGING_PREFIX, directory_lock, install, remove_stale, work_directory

log = logging.getLogger("gateway.quality")

#: ``(labels file, staging directory to write, the serving artifact directory)``: fit an adapted router on the
#: labels, reading the prompt vector the serving artifact reads, and save it to the staging directory (runs in a
#: worker thread). Raises ValueError when the labels cannot be fitted on.
Fit = Callable[[Path, Path, Path], Any]
#: The labels file kept beside the artifact (what it was trained on).
LABELS = "labels.jsonl"
#: The file in ``router.artifact`` whose ``flock`` the one fitting process holds (see the module docstring).
ADAPTING_LOCK = ".adapting.lock"
#: What one attempt can raise (the database, the fit, the file system, a reload refused): counted, and the loop
#: goes on.
_ATTEMPT_ERRORS = (GatewayError, SQLAlchemyError, OSError, ValueError, KeyError, RuntimeError)


def fit_adapted(encode: Callable[[str], list[int]], embed_max_tokens: int) -> Fit:
    """The real fit: the shipped prior, default hyper-parameters, the prompt vector the artifact being replaced
    reads (``minilm`` when there is none yet); the saved artifact is loaded back (checked) before it is kept."""

    def fit(labels: Path, out: Path, current: Path) -> Any:
        from policies.router.adapt import AdaptConfig, adapt, prompt_embed, recorded_vector
        from policies.router.data import file_sha256, load_records
        from policies.router.loader import load_artifact
        from policies.router.model import ARTIFACT_DIR, QualityRouter

        records = load_records(labels)
        vector = recorded_vector(current)
        config = AdaptConfig(embed_max_tokens=embed_max_tokens, vector=vector)
        prior = QualityRouter.load(None, encode=encode)
        source = {"file": labels.name, "sha256": file_sha256(labels), "from": "ledger (background)"}
        embed = prompt_embed(vector, embed_max_tokens)
        router = adapt(records, prior, embed, config, source=source, prior_dir=ARTIFACT_DIR)
        router.save(out)
        load_artifact(out, encode=encode)  # ValueError if what was written does not load
        return router

    return fit


def held_out_regressions(held_out: object) -> list[str]:
    """Where an adapted artifact's held-out figures (``adapted.json``'s ``held_out``: APGR and the cost saved at
    the reported quality, ``saved_at_95``) are worse than the frozen prior's or a random router's recorded beside
    them; empty when none is. Figures without a value (APGR when the strong model is not better) are skipped;
    an artifact without figures is worse (nothing says it is not)."""
    adapted = held_out.get("adapted") if isinstance(held_out, dict) else None
    if not isinstance(held_out, dict) or not isinstance(adapted, dict):
        return ["the artifact records no held-out figures"]
    keys = ["apgr", *sorted(k for k in adapted if k.startswith("saved_at_"))]
    worse: list[str] = []
    for baseline in ("prior", "random"):
        figures = held_out.get(baseline)
        if not isinstance(figures, dict):
            continue
        for key in keys:
            new, old = adapted.get(key), figures.get(key)
            if isinstance(new, int | float) and isinstance(old, int | float) and new < old:
                worse.append(f"{key} {new:.3f} < the {baseline}'s {old:.3f}")
    return worse


def _read_held_out(directory: Path) -> object:
    """The ``held_out`` figures ``directory/adapted.json`` records (None when it has none or does not parse)."""
    try:
        meta = json.loads((directory / "adapted.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("held_out") if isinstance(meta, dict) else None


def _swap(staged: Path, target: Path, files: Sequence[str], previous: Path) -> None:
    """Under ``target``'s lock: copy its current ``files`` to ``previous``, then move the staged ones in (all or,
    when a move fails, none)."""
    with directory_lock(target):
        for name in files:
            if (target / name).is_file():
                (previous / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target / name, previous / name)
        try:
            install(staged, target, files)
        except OSError:
            _put_back(previous, target, files)
            raise


def _restore(previous: Path, target: Path, files: Sequence[str]) -> None:
    """Under ``target``'s lock: undo :func:`_swap`."""
    with directory_lock(target):
        _put_back(previous, target, files)


def _put_back(previous: Path, target: Path, files: Sequence[str]) -> None:
    """Put the files :func:`_swap` kept back, removing those ``target`` had none of."""
    for name in files:
        if (previous / name).is_file():
            os.replace(previous / name, target / name)
        else:
            (target / name).unlink(missing_ok=True)


class BackgroundAdapter:
    """Counts labels and adapts the router when enough new ones exist (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        artifact: Path,
        every: int,
        fit: Fit,
        reload: Callable[[], Awaitable[Any]],
        interval_s: float,
        *,
        max_label_share: float | None = DEFAULT_MAX_LABEL_SHARE,
        lock: Path | None = None,
    ) -> None:
        """``fit``: :func:`fit_adapted` (or a stand-in); ``reload``: loads ``artifact`` into the running router
        (raising when it does not load); ``max_label_share``: ``quality.max_label_share_per_key``, the per-key
        cap on the feedback labels of one fit (:mod:`gateway.quality.labels`, as ``--from-ledger`` applies it);
        ``lock``: the file whose ``flock`` lets one process fit (``artifact / ADAPTING_LOCK`` in the gateway; None:
        this one always fits)."""
        self.engine = engine
        self.lock = lock
        self._lock_fd: int | None = None
        self._fd_guard = threading.Lock()  # _lead runs in a thread, _release on the loop
        self._closed = False
        self._parent_missing = False  # logged once while router.artifact's parent does not exist
        #: whether this process fits: True (it holds the lock, or there is none to hold), False (another does),
        #: None (not known yet, or router.artifact's parent does not exist: nothing fits)
        self.fitting_here: bool | None = None
        self.max_label_share = max_label_share
        self.artifact = artifact
        self.every = every
        self.fit = fit
        self.reload = reload
        self.interval_s = interval_s
        self.adapted_at: int | None = None  # the label count of the last adaptation (or of the start)
        self.adaptations = 0
        self.failures = 0
        #: fits kept out because their held-out figures were worse than the prior's or random's
        self.rejections = 0
        self.last_error: str | None = None
        self.last_rejection: str | None = None
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        """Counters and the last failure and rejection (JSON-able)."""
        return {
            "every_labels": self.every,
            "adapted_at_labels": self.adapted_at,
            "adaptations": self.adaptations,
            "failures": self.failures,
            "rejections": self.rejections,
            "last_error": self.last_error,
            "last_rejection": self.last_rejection,
            "running": self._task is not None and not self._task.done(),
            "fitting_here": self.fitting_here,
        }

    def _lead(self) -> bool:
        """Whether this process fits (runs in a thread): it holds :attr:`lock` (taking it if it is free, and then
        keeping it), or there is no lock to hold. Logged when that changes."""
        if self.lock is None or self._lock_fd is not None:
            self.fitting_here = True
            return True
        fd: int | None = None
        try:
            directory = self.lock.parent  # router.artifact
            if not directory.is_dir():
                if not directory.parent.is_dir():
                    return self._no_parent(directory)
                directory.mkdir(exist_ok=True)  # the artifact directory itself, as the start-up rule allows
            self._parent_missing = False
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
            if sys.platform != "win32":
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if fd is not None:
                os.close(fd)
            if self.fitting_here is not False:
                log.info("background router adaptation: another gateway process fits (it holds %s)", self.lock)
            self.fitting_here = False
            return False
        except OSError as exc:  # no flock here, or the file cannot be created: fit on our own, as before
            if fd is not None:
                os.close(fd)
            if self.fitting_here is None:
                log.warning("background router adaptation cannot lock %s (%s): this process fits alone", self.lock, exc)
            self.fitting_here = True
            return True
        with self._fd_guard:
            if self._closed:  # aclose() ran while this thread took it: give it back
                os.close(fd)
                return False
            self._lock_fd = fd
        if self.fitting_here is False:
            log.info("background router adaptation: this process fits now (it holds %s)", self.lock)
        self.fitting_here = True
        return True

    def _no_parent(self, directory: Path) -> bool:
        """``router.artifact``'s parent directory does not exist (a typo'd path, a volume not mounted yet): no
        directory is created (docs/routing.md, "Start-up": the parent must exist) and this round is skipped; logged
        once until the parent appears."""
        if not self._parent_missing:
            self._parent_missing = True
            log.warning(
                "background router adaptation skipped: the parent directory %s of router.artifact does not exist "
                "(it is not created; checked again every round)",
                directory.parent,
            )
        self.fitting_here = None
        return False

    def _release(self) -> None:
        with self._fd_guard:
            self._closed = True
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock: another process fits from its next round
                self._lock_fd = None

    async def labels(self) -> int:
        """Labels (pairwise verdicts) in the database now."""
        async with self.engine.connect() as conn:
            n = await conn.scalar(select(func.count()).select_from(verdicts).where(verdicts.c.kind == "pairwise"))
        return int(n or 0)

    async def maybe_adapt(self) -> bool:
        """Adapt, and install and reload the result, if ``every`` labels arrived since the last time; whether a
        new artifact now serves. Nothing (False) in a process that does not hold :attr:`lock`: another one fits.

        Raises:
            What the database, the file system or the reload raise (the previous artifact then still serves and
            is the one on disk); a fit that refuses the labels (ValueError) is counted and logged instead.
        """
        if not await asyncio.to_thread(self._lead):
            return False  # another process counts and fits; this one follows what it installs
        n = await self.labels()
        if self.adapted_at is None:
            self.adapted_at = n
        if n - self.adapted_at < self.every:
            return False
        # held (flock on its owner file) while in use: a process killed mid-fit leaves one that the next save or
        # start removes, and no clean-up in another process removes this one meanwhile (policies.router.store)
        with work_directory(self.artifact, STAGING_PREFIX) as staging:
            return await self._adapt(staging, n)

    async def _adapt(self, staging: Path, n: int) -> bool:
        labels = staging / LABELS
        with open_private(labels) as fh:
            await export_labels(self.engine, fh, max_share=self.max_label_share)
        self.adapted_at = n  # a fit that fails waits for the next `every` labels, not every interval
        try:
            await asyncio.to_thread(self.fit, labels, staging, self.artifact)
        except ValueError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("background router adaptation on %d labels skipped: %s", n, exc)
            return False
        worse = held_out_regressions(_read_held_out(staging))
        if worse:
            self.rejections += 1
            self.last_rejection = "; ".join(worse)
            log.warning(
                "router adapted on %d labels not installed, the running router stays: its held-out figures are "
                "worse (%s)",
                n,
                self.last_rejection,
            )
            return False
        await self._install(staging)
        self.adaptations += 1
        log.info("router adapted on %d labels and reloaded from %s", n, self.artifact)
        return True

    async def _install(self, staging: Path) -> None:
        """Move the staged artifact into ``artifact`` and reload it; if the reload fails (or is cancelled), put
        the previous files back, so the directory holds what serves, and re-raise."""
        from policies.router.adapted_checks import ARTIFACT_FILES

        files = [name for name in (LABELS, *ARTIFACT_FILES) if (staging / name).is_file()]
        previous = staging / ".previous"
        await asyncio.to_thread(_swap, staging, self.artifact, files, previous)
        try:
            await self.reload()
        except BaseException:
            _restore(previous, self.artifact, files)  # a few renames: done here, even in a cancelled task
            raise

    def start(self) -> None:
        """Start checking in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="quality-adapt")

    async def aclose(self) -> None:
        """Stop checking (a fit under way finishes in its thread; its result is not installed)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._release()

    async def _run(self) -> None:
        await asyncio.to_thread(remove_stale, self.artifact)  # what a process killed mid-fit left behind
        while True:
            try:
                await self.maybe_adapt()
            except _ATTEMPT_ERRORS as exc:
                self.failures += 1
                self.last_error = repr(exc)
                log.warning("background router adaptation failed, the running router stays: %r", exc)
            await asyncio.sleep(self.interval_s)
