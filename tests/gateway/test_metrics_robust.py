"""Multiprocess metrics (``gateway serve --workers N``) when their files cannot be written or are raced for.

prometheus_client grows its memory-mapped files with ``truncate``, which leaves holes: on a full file system the
first write to such a page kills the process with SIGBUS, and uvicorn's replacement dies the same way. The workers'
files now get real blocks before they are mapped (a full disk is an OSError, and the worker goes on without
writing); the server puts them on /dev/shm where it can, checks the space first, and falls back to per-worker
metrics with a warning when no directory will do. The set-up of simulated workers: test_metrics_multiprocess.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Gauge, values
from prometheus_client.mmap_dict import MmapedDict

from gateway import metrics_multiprocess as gateway_metrics
from gateway import server
from gateway.metrics import Metrics
from gateway.metrics_multiprocess import MULTIPROC_ENV
from tests.gateway.test_metrics_multiprocess import Workers, backends, request, value

REPO_ROOT = Path(__file__).resolve().parents[2]

#: A worker's life on a file system that fills up: its files are made while there is room, then the disk is filled
#: and the worker serves requests for new models (new entries in its files: new pages, then larger files), and a
#: second worker starts (new files). Prints what each one's /metrics reported.
_FILL_UP = r"""
import json, logging, os, subprocess, sys
from decimal import Decimal

base, late = sys.argv[1], len(sys.argv) > 2
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(base, "m")
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

from gateway.context import RequestContext
from gateway.metrics import Metrics

def request(model):
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="auto")
    ctx.route, ctx.chosen_model, ctx.status_code, ctx.total_s, ctx.ttft_s = "auto", model, 200, 0.2, 0.05
    ctx.cost_usd = Decimal("0.01")
    return ctx

m = Metrics()
m.observe(request("m"))
if late:
    print(json.dumps({"text": m.render().decode()}))
    sys.exit(0)
if os.environ.get("FILL_UP") == "1":
    with open(os.path.join(base, "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(bytes(4096))
        except OSError:
            pass
for i in range(300):
    m.observe(request(f"model-{i}"))
m.observe(request("m"))
second = subprocess.run([sys.executable, __file__, base, "late"], capture_output=True, text=True)
print(json.dumps({"text": m.render().decode(), "late_rc": second.returncode, "late": second.stdout,
                  "late_err": second.stderr}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}
    env.pop(MULTIPROC_ENV, None)
    return env


def _in_small_tmpfs(script: Path, size: str = "1m") -> subprocess.CompletedProcess[str]:
    """Run ``script`` with a fresh tmpfs of ``size`` (holding an empty ``m`` folder) as its argument, in a mount
    namespace of its own: the mount goes with the process, nothing to unmount. Skips where mounting is not
    allowed (no user namespaces, no CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        pytest.skip("needs unshare(1) on Linux to mount a small tmpfs")
    namespace = [unshare, "--mount", "--map-root-user", "sh", "-c"]
    with tempfile.TemporaryDirectory() as mnt:
        probe = subprocess.run(
            [*namespace, 'mount -t tmpfs -o size=64k tmpfs "$0"', mnt], capture_output=True, text=True
        )
        if probe.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
        shell = f'mount -t tmpfs -o size={size} tmpfs "$0" && mkdir "$0/m" && exec "$1" "$2" "$0"'
        return subprocess.run(
            [*namespace, shell, mnt, sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=_env(FILL_UP="1"),
            timeout=120,
        )


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING gateway.metrics")]


def test_a_full_file_system_does_not_kill_a_worker(tmp_path: Path) -> None:
    """The reviewer's crash loop: SIGBUS (rc -7) on the first new page once the tmpfs was full."""
    script = tmp_path / "fill_up.py"
    script.write_text(_FILL_UP)
    done = _in_small_tmpfs(script)
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stderr[-3000:]}"
    out = json.loads(done.stdout)
    text = out["text"].encode()
    # series written before the disk filled up go on being counted; new ones are counted in memory only
    assert value(text, "gateway_requests_total", route="auto", model="m", status="2xx", cache="bypass") == 2
    [warning] = _warnings(done.stderr)  # logged once, whatever the number of writes left out
    assert "No space left" in warning
    # a worker that starts on the full disk serves, its own metrics in memory (not in the others' scrapes)
    assert out["late_rc"] == 0, out["late_err"][-3000:]
    [warning] = _warnings(out["late_err"])
    assert "No space left" in warning
    late = json.loads(out["late"])["text"].encode()
    assert value(late, "gateway_requests_total", route="auto", model="m", status="2xx", cache="bypass") == 2


def test_the_files_of_a_worker_have_no_holes(tmp_path: Path) -> None:
    """Every page of every file is allocated when it is made or grows (a hole is what SIGBUS needs)."""
    script = tmp_path / "fill_up.py"
    script.write_text(_FILL_UP)
    (tmp_path / "m").mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT, env=_env()
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["late_rc"] == 0 and not _warnings(done.stderr)
    files = sorted((tmp_path / "m").glob("*.db"))
    assert files and any(f.stat().st_size > 1 << 16 for f in files)  # one of them grew
    for f in files:
        st = f.stat()
        assert st.st_blocks * 512 >= st.st_size, f"{f.name}: {st.st_blocks * 512} of {st.st_size} bytes allocated"


def test_one_worker_keeps_prometheus_clients_values(tmp_path: Path) -> None:
    """Without the multiprocess directory (one worker), importing the metrics changes nothing."""
    script = "import gateway.metrics; from prometheus_client import values; print(values.ValueClass.__name__)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert done.returncode == 0 and done.stdout.strip() == "MutexValue", done.stderr
    assert not list(tmp_path.iterdir())


# -- simulated workers with the gateway's value class -----------------------------------------------------------


class SafeWorkers(Workers):
    """Workers whose values go through :func:`gateway.metrics_multiprocess.file_values`, as in ``gateway serve``."""

    @contextlib.contextmanager
    def worker(self, pid: int) -> Iterator[None]:
        if pid not in self._classes:
            self._classes[pid] = gateway_metrics.file_values(lambda: pid)
        self.live.add(pid)
        self.monkeypatch.setattr(values, "ValueClass", self._classes[pid])
        yield

    def close(self) -> None:
        for cls in self._classes.values():
            cls.close_all_files()


@pytest.fixture
def safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SafeWorkers]:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    workers = SafeWorkers(tmp_path, monkeypatch)
    yield workers
    workers.close()


@pytest.fixture
def stock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    """Workers with prometheus_client's own value class (files for every gauge mode)."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    yield Workers(tmp_path, monkeypatch)
    values.close_all_multiprocess_files()


def test_a_worker_that_cannot_write_counts_in_memory_and_catches_up(
    safe: SafeWorkers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = safe.metrics(801)
    with safe.worker(801):
        a.observe(request())
    tries: list[int] = []

    def no_space(fd: int, size: int) -> None:
        tries.append(size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = gateway_metrics._allocate
    monkeypatch.setattr(gateway_metrics, "_allocate", no_space)  # the disk is full from now on
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        b = safe.metrics(802)  # starts on the full disk: no file can be made
        with safe.worker(802):
            for _ in range(3):
                b.observe(request())
            b.watch(*backends(in_flight=2, waiting=0, open_=False))
            text = b.render()
    labels = {"route": "auto", "model": "m", "status": "2xx", "cache": "bypass"}
    assert value(text, "gateway_requests_total", **labels) == 1  # a's; b's are not in the files
    assert len(caplog.records) == 1 and "No space left" in caplog.records[0].getMessage()
    assert len(tries) == 1  # then no other try for _RETRY_SECONDS
    assert not list(safe.path.glob("*_802.db*"))  # nothing half made

    monkeypatch.setattr(gateway_metrics, "_allocate", real)  # room again
    with safe.worker(802):
        values.ValueClass._files.retry_at = 0.0  # the time to try again has come
        b.observe(request())
        b.watch(*backends(in_flight=2, waiting=0, open_=False))
    text = a.render()
    assert value(text, "gateway_requests_total", **labels) == 5  # b's counts from memory, written now
    assert value(text, "gateway_backend_in_flight", model="m") == 2
    assert len(caplog.records) == 1


def test_per_process_gauges_are_kept_in_memory(safe: SafeWorkers) -> None:
    """The quality gauges are reported by the scraping worker from its own values: no file is written for them."""
    m = safe.metrics(901)
    with safe.worker(901):
        g = Gauge("t_quality", "Quality", ["route"], registry=m.registry)
        g.labels("auto").set(0.8)
        m.observe(request())
        text = m.render()
    assert value(text, "t_quality", route="auto") == 0.8
    assert not list(safe.path.glob("gauge_all_*")) and list(safe.path.glob("counter_901.db"))


# -- sweeping dead workers' files --------------------------------------------------------------------------------


def test_two_workers_sweeping_the_same_dead_worker(stock: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker's scrape removed the dead worker's file first: this scrape still answers."""
    a, b, dead = stock.metrics(1001), stock.metrics(1002), stock.metrics(1003)
    for pid, m in ((1001, a), (1002, b), (1003, dead)):
        with stock.worker(pid):
            m.observe(request())
            m.watch(*backends(in_flight=1, waiting=0, open_=False))
    stock.live.discard(1003)
    real_remove = os.remove

    def raced(path: Any, *args: Any, **kwargs: Any) -> None:
        real_remove(path, *args, **kwargs)  # the other worker's sweep
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(os, "remove", raced)
    monkeypatch.setattr(os, "unlink", raced)
    text = a.render()
    monkeypatch.undo()
    assert value(text, "gateway_backend_in_flight", model="m") == 2
    assert not list(stock.path.glob("gauge_live*_1003.db"))


def test_dead_workers_per_process_gauge_files_are_swept(stock: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client's own value class writes the quality gauges to ``gauge_all_<pid>.db``: a dead worker's
    are removed at the next scrape, and no scrape reads any (the answering worker reports its own)."""
    ms = {}
    for pid in (1101, 1102):
        m = stock.metrics(pid)
        with stock.worker(pid):
            Gauge("t_quality", "Quality", ["route"], registry=m.registry).labels("auto").set(0.5)
            m.observe(request())
        ms[pid] = m
    assert list(stock.path.glob("gauge_all_1102.db"))
    stock.live.discard(1102)
    read: list[str] = []
    real = MmapedDict.read_all_values_from_file

    def reading(filename: str) -> Any:
        read.append(os.path.basename(filename))
        return real(filename)

    monkeypatch.setattr(MmapedDict, "read_all_values_from_file", staticmethod(reading))
    text = ms[1101].render()
    assert value(text, "t_quality", route="auto") == 0.5
    assert not list(stock.path.glob("gauge_all_1102.db"))
    assert read and not [f for f in read if f.startswith("gauge_all_")]
    with stock.worker(1101):
        ms[1101].close()
    assert not list(stock.path.glob("gauge_all_1101.db"))


# -- the server's choice of directory ----------------------------------------------------------------------------


@pytest.fixture
def no_multiproc_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    yield
    os.environ.pop(MULTIPROC_ENV, None)


def _cleanup(path: str | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def test_the_directory_is_on_dev_shm_where_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_multiproc_env: None
) -> None:
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), tmp.mkdir()
    monkeypatch.setattr(server, "SHM_DIR", str(shm))
    monkeypatch.setenv("TMPDIR", str(tmp))
    path = server.metrics_dir(3)
    try:
        assert path is not None and Path(path).parent == shm and os.environ[MULTIPROC_ENV] == path
    finally:
        _cleanup(path)
    shm.rmdir()  # no /dev/shm (macOS): TMPDIR
    path = server.metrics_dir(3)
    try:
        assert path is not None and Path(path).parent == tmp
    finally:
        _cleanup(path)


def test_no_usable_directory_means_per_worker_metrics_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_multiproc_env: None
) -> None:
    """The reviewer's TMPDIR that does not exist: ``serve`` died with a traceback (or, full, mkdtemp went
    elsewhere without a word)."""
    monkeypatch.setattr(server, "SHM_DIR", str(tmp_path / "no-shm"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-tmp"))
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        path = server.metrics_dir(3)
    _cleanup(path)
    assert path is None and MULTIPROC_ENV not in os.environ
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no-shm" in warning and "no-tmp" in warning and "its own" in warning


def test_a_full_or_failing_directory_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_multiproc_env: None
) -> None:
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), tmp.mkdir()
    monkeypatch.setattr(server, "SHM_DIR", str(shm))
    monkeypatch.setenv("TMPDIR", str(tmp))
    real_usage = shutil.disk_usage

    def usage(path: Any) -> Any:
        found = real_usage(path)
        return found._replace(free=100 * 1024) if Path(path) == shm else found

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        path = server.metrics_dir(4)
    try:
        assert path is not None and Path(path).parent == tmp  # /dev/shm too full: TMPDIR
    finally:
        _cleanup(path)
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        if Path(kwargs.get("dir") or "") == tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        path = server.metrics_dir(4)
    _cleanup(path)
    assert path is None and MULTIPROC_ENV not in os.environ
    assert "100 KiB free" in caplog.text and "No space left" in caplog.text


def test_one_worker_needs_no_directory(monkeypatch: pytest.MonkeyPatch, no_multiproc_env: None) -> None:
    def untouched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("one worker looked for a metrics directory")

    monkeypatch.setattr(shutil, "disk_usage", untouched)
    monkeypatch.setattr(tempfile, "mkdtemp", untouched)
    assert server.metrics_dir(1) is None and MULTIPROC_ENV not in os.environ


def test_metrics_without_a_directory_are_the_single_process_ones() -> None:
    assert Metrics().shared is None  # (no PROMETHEUS_MULTIPROC_DIR: what each worker does after the warning)
