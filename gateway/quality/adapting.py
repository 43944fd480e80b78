"""Opt-in background adaptation: once enough new labels exist, refit the router on them and reload it.

With ``quality.adapt_every_labels: N`` (and ``router.artifact`` set), every ``quality.report_interval_seconds``
the gateway counts the labels (pairwise verdicts) in its database; once ``N`` more exist than when it last
adapted (or started), it exports every label (:mod:`gateway.quality.labels`), fits an adapted router on top
of the shipped prior in a worker thread (``policies.router.adapt``, the same fit as ``gateway router adapt
--from-ledger``), writes it to ``router.artifact`` (atomically per file) and reloads it: the route thresholds
are recalibrated on those labels. A fit that fails (too few labels, labels that never prefer the strong model)
is logged and the running router keeps serving.

Each process adapts on its own: run it in one gateway process (``server.workers: 1``, one replica), or adapt
with the command line and call ``POST /admin/router/reload`` on every replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.quality.labels import export_labels
from gateway.quality.tables import verdicts

log = logging.getLogger("gateway.quality")

#: ``(labels file, artifact directory)``: fit and save an adapted router (runs in a worker thread).
Fit = Callable[[Path, Path], Any]


def fit_adapted(encode: Callable[[str], list[int]], embed_max_tokens: int) -> Fit:
    """The real fit: the shipped prior, default hyper-parameters, the prompt vector the artifact being replaced
    reads (``minilm`` when there is none yet)."""

    def fit(labels: Path, out: Path) -> Any:
        from policies.router.adapt import AdaptConfig, adapt, prompt_embed, recorded_vector
        from policies.router.data import file_sha256, load_records
        from policies.router.model import ARTIFACT_DIR, QualityRouter

        records = load_records(labels)
        vector = recorded_vector(out)
        config = AdaptConfig(embed_max_tokens=embed_max_tokens, vector=vector)
        prior = QualityRouter.load(None, encode=encode)
        source = {"file": labels.name, "sha256": file_sha256(labels), "from": "ledger (background)"}
        embed = prompt_embed(vector, embed_max_tokens)
        router = adapt(records, prior, embed, config, source=source, prior_dir=ARTIFACT_DIR)
        router.save(out)
        return router

    return fit


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
    ) -> None:
        self.engine = engine
        self.artifact = artifact
        self.every = every
        self.fit = fit
        self.reload = reload
        self.interval_s = interval_s
        self.adapted_at: int | None = None  # the label count of the last adaptation (or of the start)
        self.adaptations = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def labels(self) -> int:
        """Labels (pairwise verdicts) in the database now."""
        async with self.engine.connect() as conn:
            n = await conn.scalar(select(func.count()).select_from(verdicts).where(verdicts.c.kind == "pairwise"))
        return int(n or 0)

    async def maybe_adapt(self) -> bool:
        """Adapt and reload if ``every`` labels arrived since the last time; whether it did."""
        n = await self.labels()
        if self.adapted_at is None:
            self.adapted_at = n
        if n - self.adapted_at < self.every:
            return False
        self.artifact.mkdir(parents=True, exist_ok=True)
        path = self.artifact / "labels.jsonl"
        with path.open("wb") as fh:
            await export_labels(self.engine, fh)
        self.adapted_at = n  # a fit that fails waits for the next `every` labels, not every interval
        try:
            await asyncio.to_thread(self.fit, path, self.artifact)
        except ValueError as exc:
            self.failures += 1
            log.warning("background router adaptation on %d labels skipped: %s", n, exc)
            return False
        await self.reload()
        self.adaptations += 1
        log.info("router adapted on %d labels and reloaded from %s", n, self.artifact)
        return True

    def start(self) -> None:
        """Start checking in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="quality-adapt")

    async def aclose(self) -> None:
        """Stop checking (a fit under way finishes in its thread; its result is not reloaded)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.maybe_adapt()
            except (SQLAlchemyError, OSError, RuntimeError) as exc:
                self.failures += 1
                log.warning("background router adaptation failed: %r", exc)
            await asyncio.sleep(self.interval_s)
