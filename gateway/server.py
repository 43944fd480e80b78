"""The server process: ``python -m gateway.server --config F [--host H] [--port P] [--workers N]``.

``gateway serve`` validates the config (one clear line and exit 2 on a bad file), then replaces itself
with this module through ``exec``: the long-running process then holds neither the CLI framework nor
anything else the command line needed (about 2 MiB). Plain ``argparse`` here for the same reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from gateway._config_source import read_text
from gateway.config import CONFIG_TEXT_ENV, Settings, load_settings
from gateway.errors import ConfigError
from gateway.exposure import exposure_problem, exposure_warning, is_loopback_host, listen_flags_problem
from gateway.http_limits import BODY_TIMEOUT_ENV, HEAD_TIMEOUT_ENV, GuardedHttpToolsProtocol
from gateway.logs import logging_config, setup_logging

log = logging.getLogger("gateway.server")

#: prometheus_client's multiprocess switch (``gateway.metrics.MULTIPROC_ENV``; not imported here: this process
#: serves nothing and loads no metrics). The lower-case spelling is its deprecated alias.
_MULTIPROC_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


#: First choice for the workers' metrics files: RAM-backed (the files are memory-mapped anyway), and not the disk
#: under TMPDIR, which other things may fill (the Kubernetes manifest's /tmp holds the semantic cache's model).
SHM_DIR = "/dev/shm"
#: Free space a directory needs per worker to be chosen: a worker's four files take 256 KiB, more with many models
#: or routes (each file doubles when full), and each replacement of a dead worker makes its own.
FREE_PER_WORKER = 1 << 20


def metrics_dir(workers: int) -> str | None:
    """With several workers, a fresh private directory for prometheus_client's multiprocess files, named in the
    environment the workers inherit (they import prometheus_client after it is set); the caller removes it at exit.
    It goes in /dev/shm, else in TMPDIR (or /tmp), the first that exists with room for it; with none, None and a
    warning: each worker then reports its own series. With one worker, None: its metrics stay in its own registry
    (an inherited directory is not used), and nothing is looked at."""
    inherited = [name for name in _MULTIPROC_ENVS if os.environ.pop(name, None) is not None]
    if inherited:
        log.info("%s from the environment not used: the server chooses where its workers keep metrics", inherited[0])
    if workers <= 1:
        return None
    need = workers * FREE_PER_WORKER
    passed: list[str] = []
    for parent in dict.fromkeys((SHM_DIR, os.environ.get("TMPDIR") or "/tmp")):
        try:
            free = shutil.disk_usage(parent).free
            if free < need:
                passed.append(f"{parent}: {free // 1024} KiB free, {need // 1024} KiB needed")
                continue
            path = tempfile.mkdtemp(prefix="gateway-metrics-", dir=parent)  # 0700
        except OSError as exc:
            passed.append(f"{parent}: {exc.strerror or exc}")
            continue
        os.environ[_MULTIPROC_ENVS[0]] = path
        return path
    log.warning(
        "no directory for the %d workers' shared metrics (%s): each worker's /metrics reports its own series only, "
        "so scrapes disagree; free some space or set TMPDIR (docs/observability.md)",
        workers,
        "; ".join(passed),
    )
    return None


#: The supervisor's pid, in the environment of the workers it starts (:func:`follow_supervisor`).
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"


def follow_supervisor(every: float = 1.0) -> threading.Thread | None:
    """In a worker of ``--workers N``: a daemon thread that stops this worker gracefully (SIGTERM to itself: uvicorn
    drains its requests and the lifespan flushes the ledger) once its supervisor is gone. A supervisor killed with
    SIGKILL (the OOM killer, ``kill -9``) cannot stop its workers, which otherwise go on serving, orphaned, on the
    inherited socket: no replacement for one that dies, and a restarted gateway cannot bind the port. None when
    this process is not a supervised worker."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is None or not expected.isdigit() or os.getppid() != int(expected):
        return None

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(every)
        log.warning("the server process %s is gone: this worker stops", expected)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="follow-supervisor", daemon=True)
    thread.start()
    return thread


#: Environment variables (at most ~128 KiB each on Linux): a larger file is read again by each worker.
_MAX_CONFIG_TEXT = 100_000


def run(
    settings: Settings,
    config_path: str,
    host: str | None,
    port: int | None,
    workers: int | None,
    config_text: str | None = None,
) -> None:
    """Serve the app for ``config_path`` with uvicorn: each worker builds it from ``GATEWAY_CONFIG`` and the file's
    ``config_text`` as this process read and checked it (``CONFIG_TEXT_ENV``)."""

    setup_logging(settings.server.log_level)
    bind = host or settings.server.host
    if not settings.auth.enabled and not is_loopback_host(bind):  # allowed explicitly, or run() is not reached
        log.warning(
            "serving on %s with auth OFF (server.allow_unauthenticated): anyone who reaches it can use every model",
            bind,
        )
    warning = exposure_warning(settings, bind)
    if warning is not None:
        log.warning("%s", warning)
    n = workers if workers is not None else settings.server.workers
    if n > 1 and not (settings.cache.redis_url or settings.auth.redis_url):
        log.warning(
            "%d workers without Redis: each keeps its own cache and rate-limit/budget counters; "
            "set REDIS_URL (or cache.redis_url) to share them",
            n,
        )
    if n > 1 and settings.router.artifact is not None:  # each worker serves its own router (docs/routing.md)
        if settings.router.watch_seconds == 0:
            log.warning("%d workers, router.watch_seconds 0: a reload or adaptation reaches one worker only", n)
        elif settings.quality.enabled and settings.quality.adapt_every_labels is not None:
            log.info("%d workers: one fits in the background (it holds router.artifact/.adapting.lock)", n)
    os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
    if config_text is not None and len(config_text) <= _MAX_CONFIG_TEXT:
        os.environ[CONFIG_TEXT_ENV] = config_text
    limits = settings.server
    os.environ[HEAD_TIMEOUT_ENV] = str(limits.head_timeout_seconds)  # read by each worker's protocol
    os.environ[BODY_TIMEOUT_ENV] = str(limits.body_timeout_seconds)
    shared_metrics = metrics_dir(n)  # every worker's /metrics then reports all of them (gateway.metrics)
    options: dict[str, Any] = {
        "factory": True,
        "host": bind,
        "port": port if port is not None else settings.server.port,
        "workers": n,
        "access_log": False,
        "http": GuardedHttpToolsProtocol,  # httptools, with head and body deadlines
        "timeout_keep_alive": int(max(1, limits.keepalive_timeout_seconds)),
        "limit_concurrency": limits.max_connections,
        "ws": "none",  # no websocket endpoints: do not load a websocket protocol
        "log_config": logging_config(settings.server.log_level),  # applied in each worker process too
        "timeout_graceful_shutdown": 30,
    }
    try:
        if n == 1:
            uvicorn.run("gateway.app:app_from_env", **options)
        else:
            supervised(uvicorn.Config("gateway.app:app_from_env", **options))
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)


def supervised(config: uvicorn.Config) -> None:
    """Serve ``config``'s workers under :class:`Supervisor`; exit 3 (uvicorn's start-up failure) if one failed to
    start."""
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.failed_to_start:
        raise SystemExit(STARTUP_FAILURE)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, with three changes:

    - a worker that fails to start makes the server exit non-zero (uvicorn's stops every worker and returns as from
      a clean stop: exit 0, which a service manager reads as success);
    - the listening socket is closed here as soon as the server stops: new connections are refused at once while
      the workers drain (this process's copy kept them queued, and each was reset when it exited);
    - each worker stops once this process is gone (:func:`follow_supervisor`), rather than serve on, orphaned;
    - workers started after the first ones (to replace one that died) start on the shipped router prior if
      ``router.artifact`` no longer loads (``router.fallback_to_prior``, logged): a replacement that failed to
      start stopped every healthy worker too. They read the configuration text the first ones read
      (``CONFIG_TEXT_ENV``).
    """

    failed_to_start = False

    def init_processes(self) -> None:
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the workers stop if this process is killed
        super().init_processes()
        os.environ["GATEWAY_ROUTER__FALLBACK_TO_PRIOR"] = "true"  # for the replacements only

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if self.should_exit.is_set() and any(p.exitcode == STARTUP_FAILURE for p in self.processes):
            self.failed_to_start = True

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m gateway.server``."""
    parser = argparse.ArgumentParser(prog="gateway-server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", default="gateway.yaml")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--allow-unauthenticated", action="store_true", help="serve a non-loopback address, auth off")
    args = parser.parse_args(argv)
    flags = listen_flags_problem(args.port, args.workers)
    if flags is not None:
        print(f"error: {flags}", file=sys.stderr)
        raise SystemExit(2)
    try:
        text = read_text(Path(args.config))
        settings = load_settings(args.config, text)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.allow_unauthenticated:
        server = settings.server.model_copy(update={"allow_unauthenticated": True})
        settings = settings.model_copy(update={"server": server})
        os.environ["GATEWAY_SERVER__ALLOW_UNAUTHENTICATED"] = "true"  # the workers read the config again
    problem = exposure_problem(settings, args.host or settings.server.host)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run(settings, args.config, args.host, args.port, args.workers, text)


if __name__ == "__main__":
    main()
