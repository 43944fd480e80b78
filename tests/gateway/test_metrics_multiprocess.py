"""Metrics in prometheus_client's multiprocess mode (``gateway serve --workers N``), in one test process.

Each "worker" here is a prometheus_client value class for a pid of its own (as prometheus_client's own tests
do), writing into one directory; a worker's metrics are built and used while its value class is the current one.
The same thing over real sockets and processes: tests/gateway/test_metrics_workers.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import Gauge, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from gateway import server
from gateway.context import RequestContext
from gateway.metrics import Metrics
from gateway.metrics_multiprocess import MULTIPROC_ENV, _sibling_alive, multiprocess_dir


class Workers:
    """Simulated worker processes sharing one multiprocess directory."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.monkeypatch = monkeypatch
        self.live: set[int] = set()
        self._classes: dict[int, Any] = {}

    @contextlib.contextmanager
    def worker(self, pid: int) -> Iterator[None]:
        """Run the block as process ``pid`` (its metrics' values go to its own files)."""
        if pid not in self._classes:
            self._classes[pid] = values.MultiProcessValue(lambda: pid)
        self.live.add(pid)
        self.monkeypatch.setattr(values, "ValueClass", self._classes[pid])
        yield

    def metrics(self, pid: int) -> Metrics:
        with self.worker(pid):
            m = Metrics()
        assert m.shared is not None
        m.shared.pid = pid
        m.shared.alive = lambda other: other in self.live
        return m


@pytest.fixture
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    yield Workers(tmp_path, monkeypatch)
    values.close_all_multiprocess_files()


def request(model: str = "m", status: int = 200, total_s: float = 0.2) -> RequestContext:
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="auto")
    ctx.route, ctx.chosen_model, ctx.status_code, ctx.total_s, ctx.ttft_s = "auto", model, status, total_s, 0.05
    ctx.cost_usd = Decimal("0.01")
    return ctx


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"{key} reported twice"
            out[key] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def backends(in_flight: int, waiting: int, open_: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    stats = SimpleNamespace(in_flight=in_flight, queue=SimpleNamespace(waiting=waiting))
    return {"m": SimpleNamespace(stats=stats)}, {"m": SimpleNamespace(available=lambda: not open_)}


def test_one_process_keeps_its_own_registry(tmp_path: Path) -> None:
    """No multiprocess directory: today's registry, no files (the default, one worker)."""
    assert multiprocess_dir() is None
    m = Metrics()
    assert m.shared is None and type(m.registry).__name__ == "CollectorRegistry"
    m.observe(request())
    m.watch(*backends(1, 0, False))  # nothing to do with one process
    m.close()
    assert value(m.render(), "gateway_requests_total", route="auto", model="m", status="2xx", cache="bypass") == 1


def test_counters_and_histograms_sum_over_workers(workers: Workers) -> None:
    a, b = workers.metrics(101), workers.metrics(102)
    with workers.worker(101):
        for _ in range(3):
            a.observe(request())
    with workers.worker(102):
        b.observe(request(total_s=3.0))
        b.observe(request(status=502))
    for m in (a, b):  # whichever worker answers the scrape
        text = m.render()
        labels = {"route": "auto", "model": "m", "cache": "bypass"}
        assert value(text, "gateway_requests_total", status="2xx", **labels) == 4
        assert value(text, "gateway_requests_total", status="5xx", **labels) == 1
        assert value(text, "gateway_backend_latency_seconds_count", model="m") == 4  # the 502 is not timed
        assert value(text, "gateway_backend_latency_seconds_bucket", model="m", le="0.25") == 3
        assert value(text, "gateway_backend_latency_seconds_bucket", model="m", le="+Inf") == 4
        assert value(text, "gateway_cost_usd_total", model="m") == pytest.approx(0.05)
        assert not any(("pid", p) in k[1] for k in samples(text) for p in ("101", "102"))


def test_gauge_modes(workers: Workers) -> None:
    """In flight: the sum over live workers; the vLLM queue (each worker scrapes the same one) and the breaker
    flag (each worker keeps its own breaker): the largest of the live workers'."""
    a, b = workers.metrics(201), workers.metrics(202)
    with workers.worker(201):
        a.watch(*backends(in_flight=3, waiting=4, open_=False))  # no loop: published once, now
    with workers.worker(202):
        b.watch(*backends(in_flight=2, waiting=7, open_=True))
    for m in (a, b):
        text = m.render()
        assert value(text, "gateway_backend_in_flight", model="m") == 5
        assert value(text, "gateway_backend_queue_waiting", model="m") == 7
        assert value(text, "gateway_backend_breaker_open", model="m") == 1


def test_a_dead_worker_leaves_its_counts_and_takes_its_live_gauges(workers: Workers) -> None:
    a, b, c = workers.metrics(301), workers.metrics(302), workers.metrics(303)
    for pid, m, flight in ((301, a, 1), (302, b, 4), (303, c, 2)):
        with workers.worker(pid):
            m.observe(request())
            m.watch(*backends(in_flight=flight, waiting=0, open_=pid == 302))
    text = a.render()
    assert value(text, "gateway_backend_in_flight", model="m") == 7
    assert value(text, "gateway_backend_breaker_open", model="m") == 1

    workers.live.discard(302)  # killed (SIGKILL: it closed nothing)
    text = a.render()
    assert value(text, "gateway_backend_in_flight", model="m") == 3
    assert value(text, "gateway_backend_breaker_open", model="m") == 0
    assert value(text, "gateway_requests_total", route="auto", model="m", status="2xx", cache="bypass") == 3
    assert not list(workers.path.glob("gauge_live*_302.db")) and list(workers.path.glob("counter_302.db"))

    with workers.worker(303):
        c.close()  # shut down cleanly: its counts stay, its live gauges go
    text = a.render()
    assert value(text, "gateway_backend_in_flight", model="m") == 1
    assert value(text, "gateway_requests_total", route="auto", model="m", status="2xx", cache="bypass") == 3


def test_per_process_collectors_are_published_and_summed(workers: Workers) -> None:
    """Series prometheus_client does not keep (the routing-decision histogram, the ledger writer's counters) are
    written to each worker's files as its totals; kinds that cannot be merged come from the scraping worker."""

    class Ledgerish:
        def __init__(self, written: int, pending: int) -> None:
            self.written, self.pending = written, pending

        def collect(self) -> Iterator[Any]:
            yield CounterMetricFamily("t_written_rows", "Rows written", value=self.written)
            yield GaugeMetricFamily("t_pending_rows", "Rows pending", value=self.pending)
            yield InfoMetricFamily("t_build", "Build", value={"pid": str(self.written)})

    a, b = workers.metrics(401), workers.metrics(402)
    ledgers = {401: Ledgerish(10, 1), 402: Ledgerish(5, 2)}
    for pid, m, times in ((401, a, (1e-5, 3e-5)), (402, b, (5e-6,))):
        with workers.worker(pid):
            m.registry.register(ledgers[pid])
            for t in times:
                m.decision_time.observe(t)
            m.watch({}, {})  # publishes
    text = a.render()
    assert value(text, "gateway_routing_decision_seconds_count") == 3
    assert value(text, "gateway_routing_decision_seconds_bucket", le="1e-05") == 2
    assert value(text, "gateway_routing_decision_seconds_bucket", le="+Inf") == 3
    assert value(text, "gateway_routing_decision_seconds_sum") == pytest.approx(4.5e-5)
    assert value(text, "t_written_rows_total") == 15
    assert value(text, "t_pending_rows") == 3
    assert value(text, "t_build_info", pid="10") == 1 and value(text, "t_build_info", pid="5") is None

    with workers.worker(402):
        ledgers[402].written, ledgers[402].pending = 8, 0
        b.decision_time.observe(1.0)
        text = b.render()  # the scraping worker publishes its own figures first
    assert value(text, "t_written_rows_total") == 18 and value(text, "t_pending_rows") == 1
    assert value(text, "gateway_routing_decision_seconds_count") == 4
    assert value(text, "t_build_info", pid="8") == 1


def test_a_new_worker_on_a_dead_ones_pid_goes_on_from_its_counts(workers: Workers) -> None:
    class Written:
        def __init__(self, n: int) -> None:
            self.n = n

        def collect(self) -> Iterator[Any]:
            yield CounterMetricFamily("t_written_rows", "Rows written", value=self.n)

    with workers.worker(501):
        old = workers.metrics(501)
        old.registry.register(Written(7))
        old.watch({}, {})
    values.close_all_multiprocess_files()
    workers._classes.clear()
    with workers.worker(501):
        new = workers.metrics(501)
        new.registry.register(Written(2))
        assert value(new.render(), "t_written_rows_total") == 9


def test_gauges_kept_per_process_are_reported_once(workers: Workers) -> None:
    """Gauges in prometheus_client's default mode (the quality monitor's, which every worker computes from the
    ledger) are reported by the scraping worker alone: no ``pid`` label, and removing a label works."""
    gauges = {}
    for pid in (601, 602):
        with workers.worker(pid):
            m = workers.metrics(pid)
            g = Gauge("t_quality", "Quality", ["route", "bound"], registry=m.registry)
            g.labels("auto", "estimate").set(0.8 if pid == 601 else 0.81)
            g.labels("auto", "low").set(0.7)
            gauges[pid] = (m, g)
    m, g = gauges[601]
    assert value(m.render(), "t_quality", route="auto", bound="estimate") == 0.8
    g.remove("auto", "low")
    text = m.render()
    assert value(text, "t_quality", route="auto", bound="low") is None
    assert [k for k in samples(text) if k[0] == "t_quality"] == [
        ("t_quality", (("bound", "estimate"), ("route", "auto")))
    ]


def test_names_and_help_texts_are_those_of_one_process(workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    def described(text: bytes) -> set[str]:
        return {line for line in text.decode().splitlines() if line.startswith(("# HELP", "# TYPE"))}

    with workers.worker(701):
        shared = workers.metrics(701)
        shared.observe(request())
        shared.decision_time.observe(1e-5)
        shared.watch(*backends(1, 0, False))
        many = shared.render()
    monkeypatch.delenv(MULTIPROC_ENV)
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    one = Metrics()
    one.observe(request())
    one.decision_time.observe(1e-5)
    one.sample_backends(*backends(1, 0, False))  # what /metrics does with one process
    single = one.render()
    # the same series and texts; multiprocess files hold no ``_created`` series, nor families never written to
    assert described(many) <= described(single)
    assert {k[0] for k in samples(many)} == {k[0] for k in samples(single) if not k[0].endswith("_created")}


def test_sibling_alive() -> None:
    assert _sibling_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert not _sibling_alive(child.pid)  # our child, not a sibling (alive or a zombie)
    child.wait()
    assert not _sibling_alive(child.pid)  # gone
    assert not _sibling_alive(os.getppid())


def test_serve_gives_several_workers_a_fresh_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))  # inherited: never used
    assert server.metrics_dir(1) is None and MULTIPROC_ENV not in os.environ
    path = server.metrics_dir(3)
    try:
        assert path is not None and os.environ[MULTIPROC_ENV] == path and path != str(tmp_path)
        assert os.listdir(path) == [] and (os.stat(path).st_mode & 0o777) == 0o700
    finally:
        if path is not None:
            os.rmdir(path)
        monkeypatch.delenv(MULTIPROC_ENV, raising=False)
