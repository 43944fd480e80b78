"""prometheus_client's multiprocess mode for ``gateway serve --workers N`` (N > 1): where each worker keeps its
values, and how the worker that answers ``/metrics`` reports every worker's (:class:`SharedMetrics`).

A worker's values go through :func:`file_values` (set up when this module is imported in a worker): the files get
real blocks before they are mapped, so a full disk is an error the worker logs once, going on with its values in
memory until it can write again, instead of the SIGBUS that prometheus_client's sparse files die of. With one
process nothing here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
#: A worker that could not write its files tries again after this long (values made in between stay in memory).
_RETRY_SECONDS = 10.0
#: The size of a new file (prometheus_client's first size, ``mmap_dict._INITIAL_MMAP_SIZE``); files double as
#: they fill.
_FILE_START = 1 << 16
#: What making or reading a file may raise: a full disk (OSError) above all; a damaged file of a dead worker whose
#: pid this one got (the others).
_FILE_ERRORS = (OSError, ValueError, RuntimeError, IndexError, struct.error)


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess files when this process keeps its metrics there
    (a worker of ``gateway serve --workers N``, N > 1); None otherwise."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and getattr(values.ValueClass, "_multiprocess", False):
        return path
    return None


def _allocate(fd: int, size: int) -> None:
    """Give the first ``size`` bytes of an open file real blocks (the file grows to ``size`` if shorter).

    A page of a memory-mapped file without a block gets one when first written; on a full file system that write
    kills the process with SIGBUS (prometheus_client grows its files with ``truncate``, which leaves holes).
    Allocated first, a full disk is an OSError here instead, and no later write through the map needs a block."""
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # else: the file system cannot, zeros below
                raise
    have = os.fstat(fd).st_size  # the files' pages below this are allocated already (made here)
    while have < size:
        have += os.pwrite(fd, bytes(min(size - have, _FILE_START)), have)


def _create(filename: str) -> None:
    """Make ``filename`` with its first :data:`_FILE_START` bytes allocated, under another name first: a scrape
    never reads a file half made (an empty ``.db`` file would fail it)."""
    part = filename + ".part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _allocate(fd, _FILE_START)
        os.replace(part, filename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    finally:
        os.close(fd)


class _AllocatedDict(MmapedDict):
    """prometheus_client's file of one process's values, every page allocated before it is mapped: making or
    growing it on a full file system raises OSError (:func:`_allocate`)."""

    def __init__(self, filename: str) -> None:
        try:
            missing = os.stat(filename).st_size == 0
        except FileNotFoundError:
            missing = True
        if missing:  # else: the file of a dead worker whose pid this process got (made by this class, allocated)
            _create(filename)
        super().__init__(filename)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> None:
        """Add ``key``'s entry, allocating the larger file first when it does not fit (as ``MmapedDict`` lays
        entries out: length, key padded to 8 bytes, value and timestamp)."""
        encoded = len(key.encode("utf-8"))
        size = 4 + encoded + (8 - (encoded + 4) % 8) + 16
        capacity = self._capacity
        while self._used + size > capacity:
            capacity *= 2
        if capacity > self._capacity:
            _allocate(self._f.fileno(), capacity)
        super()._init_value(key)  # type: ignore[no-untyped-call]


class _Files:
    """One process's files (by prefix: ``counter``, ``histogram``, ``gauge_livesum``, ...) and whether it can
    write them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.files: dict[str, _AllocatedDict] = {}
        self.lock = threading.Lock()
        #: After a failure, when to try again (values made before then stay in memory).
        self.retry_at = 0.0
        self.warned = False

    def entry(self, prefix: str, key: str) -> _AllocatedDict | None:
        """The file that holds ``key`` (its entry made), or None when it cannot be written (now or for the last
        :data:`_RETRY_SECONDS`). Lock held."""
        if self.retry_at and time.monotonic() < self.retry_at:
            return None
        try:
            file = self.files.get(prefix)
            if file is None:
                directory = os.environ.get(MULTIPROC_ENV) or ""
                file = self.files[prefix] = _AllocatedDict(os.path.join(directory, f"{prefix}_{self.pid}.db"))
            file.read_value(key)  # type: ignore[no-untyped-call]  # makes the entry: the file may grow
        except _FILE_ERRORS as exc:  # never the worker's end (logged once)
            self.retry_at = time.monotonic() + _RETRY_SECONDS
            if not self.warned:
                self.warned = True
                log.warning(
                    "metrics: this worker cannot write its metrics files (%s); it goes on serving, and what it counts"
                    " from now on stays out of /metrics until it can (tried again every %g s)",
                    exc,
                    _RETRY_SECONDS,
                )
            return None
        self.retry_at = 0.0
        return file

    def close(self) -> None:
        with self.lock:
            for file in self.files.values():
                file.close()  # type: ignore[no-untyped-call]
            self.files.clear()


def file_values(process_identifier: Callable[[], int] = os.getpid) -> type[Any]:
    """A value class for ``prometheus_client.values.ValueClass``: ``values.MultiProcessValue``'s files (the same
    names and format, read by ``MultiProcessCollector``) that a full disk cannot kill.

    - files are :class:`_AllocatedDict`: making or growing one on a full disk is an error, not SIGBUS;
    - a value whose file or entry cannot be made (logged once) is kept in memory and written once it can be (tried
      again after :data:`_RETRY_SECONDS`); a counter then adds what it counted meanwhile;
    - gauges in the per-process modes (:data:`_PER_PROCESS_MODES`) are kept in memory: the worker answering a
      scrape reports its own, so their files were never read.

    The workers are spawned (uvicorn), not forked: the pid is read once, as the class is made.
    """
    files = _Files(process_identifier())

    class FileValue:
        _multiprocess = True
        _files = files

        def __init__(
            self,
            typ: str,
            metric_name: str,
            name: str,
            labelnames: Iterable[str],
            labelvalues: Iterable[str],
            help_text: str,
            multiprocess_mode: str = "",
            **kwargs: Any,
        ) -> None:
            self._typ = typ
            self._key: str = mmap_key(metric_name, name, list(labelnames), list(labelvalues), help_text)
            self._value = 0.0
            self._file: _AllocatedDict | None = None
            self._memory = typ == "gauge" and multiprocess_mode in _PER_PROCESS_MODES
            self._prefix = f"gauge_{multiprocess_mode}" if typ == "gauge" else typ
            if not self._memory:
                with files.lock:
                    self._attach()

        def _attach(self) -> _AllocatedDict | None:
            """Find or make this value's entry; a counter or histogram goes on from what it holds (a dead worker's
            counts, on its pid). Lock held."""
            file = files.entry(self._prefix, self._key)
            if file is not None:
                stored, _ = file.read_value(self._key)  # type: ignore[no-untyped-call]
                if self._typ != "gauge":
                    self._value += stored
                self._file = file
            return file

        def _write(self, timestamp: float) -> None:  # lock held
            file = self._file
            if file is None:
                file = None if self._memory else self._attach()
                if file is None:
                    return
            file.write_value(self._key, self._value, timestamp)  # type: ignore[no-untyped-call]

        def inc(self, amount: float) -> None:
            with files.lock:
                self._value += amount
                self._write(0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            with files.lock:
                self._value = value
                self._write(timestamp or 0.0)

        def set_exemplar(self, exemplar: Any) -> None:
            return  # not kept in multiprocess mode (as prometheus_client's)

        def get(self) -> float:
            with files.lock:
                return self._value

        def get_exemplar(self) -> Any:
            return None

        @classmethod
        def close_all_files(cls) -> None:
            files.close()

    return FileValue


def _use_file_values() -> None:
    """In a worker with a multiprocess directory (prometheus_client chose its multiprocess values when imported),
    use :func:`file_values` instead, before any metric is made. Nothing with one process."""
    if os.environ.get(MULTIPROC_ENV) and getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = file_values()


_use_file_values()


class TrackingRegistry(CollectorRegistry):
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


class SharedMetrics:
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

    def __init__(self, registry: TrackingRegistry, path: str) -> None:
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
        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if not _per_process_file(f)]
        merged = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return generate_latest(_Families([*merged, *local]))

    def sweep(self) -> None:
        """Remove the gauge files of workers that are gone: their live gauges leave the sums (and their
        per-process gauges, which no scrape reads, do not pile up with each restart)."""
        self._remove_gauges(lambda pid: not self.alive(pid))

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
        self._remove_gauges(lambda pid: pid == self.pid)

    def _remove_gauges(self, gone: Callable[[int], bool]) -> None:
        """Remove the live and per-process gauge files of the pids that are ``gone`` (counters and histograms stay:
        they never go down). Another worker's scrape may remove the same file first."""
        for found in glob.glob(os.path.join(self.path, "gauge_*_*.db")):
            mode, _, pid = Path(found).stem.removeprefix("gauge_").rpartition("_")
            if (mode.startswith("live") or mode in _PER_PROCESS_MODES) and pid.isdigit() and gone(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(found)


def _per_process_file(path: str) -> bool:
    """Whether ``path`` holds gauges in a per-process mode (written by prometheus_client's own value class; the
    answering worker reports its own values instead)."""
    name = os.path.basename(path)
    return any(name.startswith(f"gauge_{mode}_") for mode in _PER_PROCESS_MODES)


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
