"""Prometheus metrics on a per-app registry (no global state), with label sets of bounded size.

Labels only ever take values from the config (model and route names), a fixed set of statuses and cache
outcomes, or error types from the gateway's own hierarchy, so cardinality is bounded.

With one worker (the default) everything lives in the process's own registry, as prometheus_client keeps it.
With ``gateway serve --workers N`` (N > 1) the server points ``PROMETHEUS_MULTIPROC_DIR`` at a private
directory before the workers start (:mod:`gateway.server`): prometheus_client then keeps every counter,
histogram and gauge in a memory-mapped file per worker process, and :meth:`Metrics.render`, in whichever worker
answers ``/metrics``, reads all of them (:class:`SharedMetrics`), so every scrape reports the whole server.

How the workers keep and share their values: :mod:`gateway.metrics_multiprocess`.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

from gateway.context import RequestContext
from gateway.metrics_multiprocess import SharedMetrics, TrackingRegistry, multiprocess_dir

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.breaker import CircuitBreaker

log = logging.getLogger("gateway.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DECISION_BUCKETS = (
    2.5e-6,
    5e-6,
    7.5e-6,
    1e-5,
    1.25e-5,
    1.5e-5,
    2e-5,
    2.5e-5,
    3e-5,
    4e-5,
    5e-5,
    7.5e-5,
    1e-4,
    2.5e-4,
    1e-3,
)


class FastHistogram:
    """A Prometheus histogram without labels for a figure observed on every request, in one process.

    ``observe`` is a bisect and two additions (prometheus_client's Histogram takes a lock and costs about
    1 us, a tenth of the routing decision this measures); the cumulative buckets are built when scraped.
    All observations come from the event loop's thread, so no lock is needed. With several workers, each copies
    its counts into its multiprocess file every second (:class:`SharedMetrics`), so ``observe`` costs the same.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (``le`` semantics: a value equal to a bound falls in that bound's bucket)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The exposition form (called by the registry at scrape time)."""
        family = HistogramMetricFamily(self.name, self.documentation)
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(repr, self._bounds), "+Inf"], self._counts, strict=True):
            total += count
            buckets.append((bound, total))
        family.add_metric([], buckets, sum_value=self._sum)
        yield family


class Metrics:
    """The gateway's metrics, registered on their own registry."""

    def __init__(self) -> None:
        path = multiprocess_dir()
        tracking = None if path is None else TrackingRegistry()
        self.registry = CollectorRegistry(auto_describe=True) if tracking is None else tracking
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests served", ["route", "model", "status", "cache"], registry=r
        )
        self.tokens = Counter("gateway_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.cost = Counter("gateway_cost_usd", "Cost of served requests in USD", ["model"], registry=r)
        self.saved = Counter("gateway_saved_usd", "Saving against the baseline model in USD", ["model"], registry=r)
        # a counter only rises: what requests cost beyond the baseline (a cascade's escalations) is counted apart,
        # and the net saving is the difference (it read ~47% high when negative savings were left out)
        self.overspent = Counter(
            "gateway_overspent_usd",
            "Cost beyond the baseline model's in USD (negative savings); net saving = saved - overspent",
            ["model"],
            registry=r,
        )
        self.decisions = Counter(
            "gateway_routing_decisions", "Routing decisions", ["route", "policy", "model"], registry=r
        )
        self.fallbacks = Counter("gateway_fallbacks", "Attempts that failed over", ["model"], registry=r)
        self.cascade = Counter(
            "gateway_cascade", "Cascade route answers, accepted or escalated", ["route", "outcome"], registry=r
        )
        self.errors = Counter("gateway_errors", "Errors by type", ["type"], registry=r)
        self.cache_errors = Counter("gateway_cache_errors", "Cache store failures", ["op"], registry=r)
        self.ttft = Histogram(
            "gateway_backend_ttft_seconds",
            "Time to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "gateway_backend_latency_seconds",
            "Total request time",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # The modes say how the workers' values add up (multiprocess mode only; see docs/observability.md):
        # requests in flight are the sum over the live workers; each worker scrapes vLLM's queue itself, so the
        # workers report the same queue (a sum would count it N times: the largest view of the live ones); each
        # worker keeps its own breaker, and the flag says it is open in at least one live worker.
        self.in_flight = Gauge(
            "gateway_backend_in_flight", "Requests in flight", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.queue_waiting = Gauge(
            "gateway_backend_queue_waiting",
            "vLLM requests waiting (scraped)",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_open = Gauge(
            "gateway_backend_breaker_open",
            "1 when the breaker is open",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.decision_time = FastHistogram(
            "gateway_routing_decision_seconds",
            "Time the decide stage took per request (learned router, predictions, constraints, policy)",
            _DECISION_BUCKETS,
        )
        r.register(self.decision_time)
        self._children: dict[tuple[Any, ...], Any] = {}
        #: Multiprocess mode only: the workers' files, read at every scrape.
        self.shared = None if path is None or tracking is None else SharedMetrics(tracking, path)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: label values come from bounded sets (see the module
        doc), and resolving them costs more than the increment itself on every request."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, ctx: RequestContext) -> None:
        """Count one finished request."""
        child = self.child
        model = ctx.chosen_model or "none"
        status = f"{ctx.status_code // 100}xx"
        child(self.requests, ctx.route or "-", model, status, ctx.cache_status).inc()
        if ctx.usage.prompt_tokens:
            child(self.tokens, model, "prompt").inc(ctx.usage.prompt_tokens)
        if ctx.usage.completion_tokens:
            child(self.tokens, model, "completion").inc(ctx.usage.completion_tokens)
        if ctx.cost_usd:
            child(self.cost, model).inc(float(ctx.cost_usd))
        if ctx.saved_usd > 0:
            child(self.saved, model).inc(float(ctx.saved_usd))
        elif ctx.saved_usd < 0:
            child(self.overspent, model).inc(float(-ctx.saved_usd))
        if ctx.error_type:
            child(self.errors, ctx.error_type).inc()
        if ctx.cascade is not None:
            child(self.cascade, ctx.route or "-", ctx.cascade).inc()
        if ctx.chosen_model and not ctx.cache_hit and ctx.status_code < 400:
            if ctx.ttft_s is not None:
                child(self.ttft, model).observe(ctx.ttft_s)
            if ctx.total_s is not None:
                child(self.latency, model).observe(ctx.total_s)

    def sample_backends(self, backends: Mapping[str, Backend], breakers: Mapping[str, CircuitBreaker]) -> None:
        """Set the backend gauges from the backends' live figures (what ``/metrics`` does before rendering)."""
        child = self.child
        for name, backend in backends.items():
            child(self.in_flight, name).set(backend.stats.in_flight)
            child(self.queue_waiting, name).set(backend.stats.queue.waiting)
            child(self.breaker_open, name).set(0 if breakers[name].available() else 1)

    def watch(self, backends: Mapping[str, Backend], breakers: Mapping[str, CircuitBreaker]) -> None:
        """Multiprocess mode: from now on, publish this worker's backend gauges and its own collectors' series
        every :data:`PUBLISH_SECONDS` (a worker that answers no scrape must still count in the others'). With one
        process, nothing: ``/metrics`` sets the gauges when it is scraped."""
        if self.shared is not None:
            self.shared.start(lambda: self.sample_backends(backends, breakers))

    def close(self) -> None:
        """Multiprocess mode: publish a last time, stop publishing, and take this worker's live gauges out of the
        sum (its counters stay in it). Nothing with one process."""
        if self.shared is not None:
            self.shared.close()

    def render(self) -> bytes:
        """The exposition text (in multiprocess mode: of every worker, whichever answers the scrape)."""
        if self.shared is None:
            return generate_latest(self.registry)
        return self.shared.render()
