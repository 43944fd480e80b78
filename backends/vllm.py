"""The vLLM backend: the OpenAI-compatible backend plus a background scrape of vLLM's ``/metrics``.

The scrape reads ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (summed over engines for the served model) into each replica's
:class:`~backends.state.QueueState`, and marks replicas unhealthy when the server stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from backends.http import TRANSPORT_ERRORS, shown_url
from backends.openai import OpenAICompatBackend, Replica
from gateway.config import ModelSpec

log = logging.getLogger("gateway.backends.vllm")

#: A vLLM busy on every core answers /metrics slowly (seconds on a CPU build); a scrape may take this long
#: before the replica counts as unreachable. The last values stay in place meanwhile.
SCRAPE_TIMEOUT_S = 15.0

_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    # older vLLM releases
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
}


def parse_vllm_metrics(text: str, served_model: str | None = None) -> dict[str, float]:
    """Sum vLLM's queue gauges from a Prometheus exposition, for ``served_model`` if given."""
    out = {"running": 0.0, "waiting": 0.0, "kv_cache_usage": 0.0}
    kv_samples = 0
    for family in text_string_to_metric_families(text):
        field = _GAUGES.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if served_model and sample.labels.get("model_name", served_model) != served_model:
                continue
            if field == "kv_cache_usage":
                kv_samples += 1
                out[field] = max(out[field], sample.value)
            else:
                out[field] += sample.value
    return out


def metrics_url(base_url: str) -> str:
    """vLLM serves ``/metrics`` at the server root, beside ``/v1``."""
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


class VLLMBackend(OpenAICompatBackend):
    """A vLLM OpenAI server (``backend: vllm``), with live queue state from its metrics."""

    def __init__(self, spec: ModelSpec, session: aiohttp.ClientSession, scrape_seconds: float = 1.0) -> None:
        super().__init__(spec, session)
        self._scrape_seconds = scrape_seconds
        self._task: asyncio.Task[None] | None = None

    async def scrape_once(self) -> None:
        """Read every replica's metrics once."""
        await asyncio.gather(*(self._scrape(r) for r in self.replicas))
        if len(self.replicas) > 1:
            q = self.stats.queue
            q.running = sum(r.stats.queue.running for r in self.replicas)
            q.waiting = sum(r.stats.queue.waiting for r in self.replicas)
            q.kv_cache_usage = max(r.stats.queue.kv_cache_usage for r in self.replicas)
            q.scraped_at = time.monotonic()
            self.stats.healthy = any(r.stats.healthy for r in self.replicas)

    async def _scrape(self, replica: Replica) -> None:
        if self.pool_full(replica):  # busy answering: the last reading stands (see pool_full)
            return
        try:
            status, content = await self.get(replica, metrics_url(replica.base_url), SCRAPE_TIMEOUT_S)
        except TRANSPORT_ERRORS as exc:
            if replica.stats.healthy:
                log.warning("vLLM %s (%s) metrics unreachable: %s", self.name, shown_url(replica.base_url), exc)
            replica.stats.healthy = False
            replica.stats.last_error = str(exc) or type(exc).__name__
            return
        if status != 200:
            replica.stats.healthy = False
            replica.stats.last_error = f"/metrics answered HTTP {status}"
            return
        try:
            values = parse_vllm_metrics(content.decode("utf-8", "replace"), self.spec.upstream_name)
        except ValueError as exc:
            replica.stats.last_error = f"unparsable /metrics: {exc}"
            return
        q = replica.stats.queue
        q.running, q.waiting, q.kv_cache_usage = (
            values["running"],
            values["waiting"],
            values["kv_cache_usage"],
        )
        q.scraped_at = time.monotonic()
        replica.stats.healthy = True

    async def _loop(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self._scrape_seconds)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"vllm-scrape-{self.name}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
