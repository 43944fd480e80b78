"""Prometheus metrics on a per-app registry (no global state), with label sets of bounded size.

Labels only ever take values from the config (model and route names), a fixed set of statuses and cache
outcomes, or error types from the gateway's own hierarchy, so cardinality is bounded.

With one worker (the default) everything lives in the process's own registry, as prometheus_client keeps it.
With ``gateway serve --workers N`` (N > 1) the server points ``PROMETHEUS_MULTIPROC_DIR`` at a private
directory before the workers start (:mod:`gateway.server`): prometheus_client then keeps every counter,
histogram and gauge in a memory-mapped file per worker process, and :meth:`Metrics.render`, in whichever worker
answers ``/metrics``, reads all of them (:class:`_Shared`), so every scrape reports the whole server.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import warnings
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.context import RequestContext

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.breaker import CircuitBreaker

log = logging.getLogger("gateway.metrics")

#: prometheus_client's switch to multiprocess mode: read when ``prometheus_client.values`` is first imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often each worker writes what only it can measure into its files (the backend gauges, which are sampled,
#: and the series of collectors that prometheus_client does not keep, such as the ledger writer's counters).
PUBLISH_SECONDS = 1.0
#: Gauges in these modes are kept per process (prometheus_client would add a ``pid`` label): in multiprocess
#: mode the worker answering the scrape reports its own values. The gateway's are figures every worker computes
#: from shared state (the quality monitor's, from the ledger); their labels can be removed, which multiprocess
#: files do not support.
_PER_PROCESS_MODES = frozenset({"all", "liveall"})


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess files when this process keeps its metrics there
    (a worker of ``gateway serve --workers N``, N > 1); None otherwise."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and getattr(values.ValueClass, "_multiprocess", False):
        return path
    return None


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
    its counts into its multiprocess file every second (:class:`_Shared`), so ``observe`` costs the same.
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
        tracking = None if path is None else _TrackingRegistry()
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
        self.shared = None if path is None or tracking is None else _Shared(tracking, path)

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


class _TrackingRegistry(CollectorRegistry):
    """A registry that remembers its collectors in order (multiprocess mode reads them apart)."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.collectors.remove(collector)


class _Families:
    """Metric families to render (``generate_latest`` takes any object with ``collect``)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Mirror:
    """One sample of a process's own collector, kept in this worker's multiprocess file.

    Counters and histogram buckets are written as the process's total plus what the file held when it was opened:
    a worker that gets the pid of a dead one goes on from its counts (as prometheus_client's own values do)
    instead of taking them back."""

    def __init__(self, typ: str, family: Metric, name: str, labels: Mapping[str, str]) -> None:
        kwargs = {"multiprocess_mode": "livesum"} if typ == "gauge" else {}
        self.value = values.ValueClass(
            typ, family.name, name, tuple(labels), tuple(labels.values()), family.documentation, **kwargs
        )
        self.base = 0.0 if typ == "gauge" else float(self.value.get())

    def set(self, value: float) -> None:
        self.value.set(self.base + value)


class _Shared:
    """A worker's side of multiprocess mode.

    prometheus_client's own metrics (counters, histograms, gauges with a ``live*`` mode) write every change to
    the worker's files; :meth:`render` merges all the workers' files with prometheus_client's
    ``MultiProcessCollector``. Three kinds of series need more:

    - gauges sampled when scraped (the backends' in flight, queue and breaker): every worker sets them every
      :data:`PUBLISH_SECONDS` (:meth:`start`), the one answering the scrape right before it;
    - collectors of the process's own figures (the routing-decision histogram, the ledger writer's counters):
      at the same times their counters, gauges and histograms are copied into the worker's files (as the
      worker's totals; a gauge is summed over the live workers); other kinds are reported by the scraping
      worker;
    - gauges in the per-process modes (:data:`_PER_PROCESS_MODES`): reported by the scraping worker alone.

    Counters of a dead worker stay in the sum (they never go down); its live gauges leave it: a worker that
    closes takes its own out, and each scrape takes out those of workers that are gone (killed: uvicorn
    starts another), found by their pid.
    """

    def __init__(self, registry: _TrackingRegistry, path: str) -> None:
        self.registry = registry
        self.path = path
        self.pid = os.getpid()
        #: Whether a pid that wrote live gauges is still a worker (replaced in tests).
        self.alive: Callable[[int], bool] = _sibling_alive
        self._sampler: Callable[[], None] | None = None
        self._mirrors: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Mirror] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._failing = False
        # The quality gauges remove labels with no data; multiprocess files keep them, but those gauges are
        # reported from the scraping process's own values (above), where the removal works.
        warnings.filterwarnings("ignore", "Removal of labels has not been implemented", UserWarning)

    # -- publishing -------------------------------------------------------------------------------------------

    def start(self, sampler: Callable[[], None]) -> None:
        """Publish now and every :data:`PUBLISH_SECONDS` on the running loop (when there is one)."""
        self._sampler = sampler
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.publish()
            return
        self._tick(loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.publish()
            self._failing = False
        except Exception:  # never stop publishing over one bad collection (logged once until it works again)
            if not self._failing:
                log.exception("metrics: publishing this worker's series failed")
            self._failing = True
        if not self._closed:
            self._timer = loop.call_later(PUBLISH_SECONDS, self._tick, loop)

    def publish(self) -> list[Metric]:
        """Write this worker's sampled gauges and own collectors' series into its files; return the families that
        only the scraping worker reports."""
        if self._sampler is not None:
            self._sampler()
        local: list[Metric] = []
        for collector in self.registry.collectors:
            if isinstance(collector, MetricWrapperBase):
                if getattr(collector, "_multiprocess_mode", None) in _PER_PROCESS_MODES:
                    local.extend(collector.collect())
                continue  # in the files already
            for family in collector.collect():
                if family.type == "counter":
                    for sample in family.samples:
                        if sample.name.endswith("_total"):
                            self._mirror("counter", family, sample.name, sample.labels, sample.value)
                elif family.type == "gauge":
                    for sample in family.samples:
                        self._mirror("gauge", family, sample.name, sample.labels, sample.value)
                elif family.type == "histogram":
                    self._mirror_histogram(family)
                else:
                    local.append(family)
        return local

    def _mirror(self, typ: str, family: Metric, name: str, labels: Mapping[str, str], value: float) -> None:
        key = (typ, name, tuple(sorted(labels.items())))
        mirror = self._mirrors.get(key)
        if mirror is None:
            mirror = self._mirrors[key] = _Mirror(typ, family, name, labels)
        mirror.set(value)

    def _mirror_histogram(self, family: Metric) -> None:
        """A histogram's buckets as the files keep them: per bucket, not cumulative (``_count`` is their sum)."""
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name == family.name + "_bucket":
                rest = tuple((k, v) for k, v in sample.labels.items() if k != "le")
                buckets.setdefault(rest, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name == family.name + "_sum":
                self._mirror("histogram", family, sample.name, sample.labels, sample.value)
        for rest, cumulative in buckets.items():
            below = 0.0
            for bound, total in sorted(cumulative):
                labels = {**dict(rest), "le": floatToGoString(bound)}  # type: ignore[no-untyped-call]
                self._mirror("histogram", family, family.name + "_bucket", labels, total - below)
                below = total

    # -- scraping ---------------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Every worker's series, in the exposition format."""
        local = self.publish()
        self.sweep()
        files = MultiProcessCollector(None, self.path)  # type: ignore[no-untyped-call]
        merged = [
            m
            for m in files.collect()  # type: ignore[no-untyped-call]
            if not (m.type == "gauge" and getattr(m, "_multiprocess_mode", None) in _PER_PROCESS_MODES)
        ]
        return generate_latest(_Families([*merged, *local]))

    def sweep(self) -> None:
        """Take the live gauges of workers that are gone out of the files."""
        for found in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            pid = Path(found).stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not self.alive(int(pid)):
                mark_process_dead(int(pid), self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Publish a last time (the ledger's final counts), stop, and take this worker's live gauges out."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.publish()
        except Exception:
            log.exception("metrics: publishing this worker's series failed")
        mark_process_dead(self.pid, self.path)  # type: ignore[no-untyped-call]


def _sibling_alive(pid: int) -> bool:
    """Whether ``pid`` is this process or a live worker beside it (a child of the same parent: uvicorn's)."""
    if pid == os.getpid():
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state not in ("Z", "X") and int(ppid) == os.getppid()
