"""Start and stop a real vLLM OpenAI-compatible server (CPU) for integration tests.

Only the standard library and httpx are used here: vLLM lives in its own virtual environment
(``scripts/setup-vllm.sh``) and is run as a subprocess with that environment's interpreter.

Usage::

    with start_vllm_server(max_num_seqs=2) as server:
        httpx.get(f"{server.base_url}/models")

or, without ``with``: ``server = start_vllm_server(); ...; server.stop()``.

Environment variables:

* ``GATEWAY_VLLM_VENV``  - the vLLM venv (default ``~/.cache/llm-gateway/vllm-venv``)
* ``GATEWAY_TEST_CACHE`` - model and logs (default ``~/.cache/llm-gateway``)
* ``GATEWAY_VLLM_STARTUP_TIMEOUT`` - seconds to wait for the server to answer (default 180)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.helpers.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-vllm.sh"
MODEL_SCRIPT = Path(__file__).resolve().with_name("vllm_model.py")
# Written by scripts/setup-vllm.sh once the venv has passed its checks.
VENV_READY_MARKER = ".llm-gateway-vllm-ready"
# Written by vllm_model.py once the model directory is complete.
MODEL_MARKER = ".llm-gateway-model-complete"

SERVER_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# Ready after ~25-80 s on 2 cores (more when the machine is busy); GATEWAY_VLLM_STARTUP_TIMEOUT overrides.
DEFAULT_STARTUP_TIMEOUT_S = float(os.environ.get("GATEWAY_VLLM_STARTUP_TIMEOUT") or 180)
SETUP_TIMEOUT_S = 1800.0


class VLLMSetupError(RuntimeError):
    """The vLLM venv or the test model could not be prepared, or the server did not come up."""


def vllm_venv() -> Path:
    return Path(os.environ.get("GATEWAY_VLLM_VENV") or Path.home() / ".cache/llm-gateway/vllm-venv")


def cache_dir() -> Path:
    return Path(os.environ.get("GATEWAY_TEST_CACHE") or Path.home() / ".cache/llm-gateway")


def vllm_python() -> Path:
    return vllm_venv() / "bin" / "python"


def model_dir() -> Path:
    return cache_dir() / "tiny-llama"


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _run_step(cmd: Sequence[str], what: str, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, timeout=SETUP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VLLMSetupError(f"{what} failed: {exc} (log: {log_path})") from exc
    if proc.returncode != 0:
        raise VLLMSetupError(
            f"{what} failed with exit status {proc.returncode}: {' '.join(cmd)}\n"
            f"--- last lines of {log_path} ---\n{_tail(log_path)}"
        )


_setup_failures: dict[str, VLLMSetupError] = {}


def ensure_vllm_venv() -> Path:
    """Run ``scripts/setup-vllm.sh`` unless the venv carries its ready marker; return its python.

    A failure is remembered for the process, so later callers fail at once with the same message.
    """
    venv = str(vllm_venv())
    if venv in _setup_failures:
        raise _setup_failures[venv]
    if not (vllm_python().exists() and (vllm_venv() / VENV_READY_MARKER).exists()):
        try:
            _run_step(["bash", str(SETUP_SCRIPT)], "scripts/setup-vllm.sh", cache_dir() / "setup-vllm.log")
        except VLLMSetupError as exc:
            _setup_failures[venv] = exc
            raise
    return vllm_python()


def ensure_model() -> Path:
    """Build the tiny Llama model unless already built; return its directory."""
    directory = model_dir()
    if not (directory / MODEL_MARKER).exists():
        python = ensure_vllm_venv()
        _run_step(
            [str(python), str(MODEL_SCRIPT), str(directory)],
            "building the tiny Llama model",
            cache_dir() / "build-model.log",
        )
    return directory


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the process (thread) that started it dies, e.g. a killed pytest."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class VLLMServer:
    """A running vLLM OpenAI server. ``base_url`` ends with ``/v1``; ``root_url`` has /health, /metrics."""

    base_url: str
    root_url: str
    served_model_name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model_dir: Path
    startup_s: float = 0.0
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1])

    def model_spec(self, name: str = "tiny") -> dict[str, Any]:
        """This server as a gateway ``models:`` entry (a vLLM backend priced by GPU time)."""
        return {
            "name": name,
            "backend": "vllm",
            "base_url": self.base_url,
            "upstream_model": self.served_model_name,
            "context_window": 1024,
            "gpu_hour_usd": 1.0,
            "tokens_per_second": 500,
        }

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, wait, then SIGKILL whatever is left."""
        _stop_group(self.process, timeout)

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    pgid = process.pid  # started with start_new_session=True: pid == pgid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    # The API server's children (engine core, worker) leave shortly after it does.
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _lower_engine_priority(pgid: int) -> None:
    """Linux: run the server's engine processes (``VLLM::EngineCore``, ``VLLM::Worker``) at nice 10. On 2 cores they
    take both while generating, and the API server, which admits requests and answers /metrics, then stalls for
    seconds at a time (a queue test waited 6 s in one run and 80 s in another for a scrape to see the queue); at a
    lower priority they yield the CPU to it, and to the tests, whenever those have work."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            pgrp = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if pgrp == pgid and comm.startswith("VLLM::"):
                os.setpriority(os.PRIO_PROCESS, int(entry.name), 10)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to change


def _server_ready(client: httpx.Client, root_url: str, name: str) -> bool:
    try:
        if client.get(f"{root_url}/health").status_code != 200:
            return False
        models = client.get(f"{root_url}/v1/models")
        if models.status_code != 200:
            return False
        return any(m.get("id") == name for m in models.json().get("data", []))
    except (httpx.HTTPError, ValueError):
        return False


def start_vllm_server(
    *,
    served_model_name: str = "tiny-llama",
    max_num_seqs: int | None = None,
    max_model_len: int = 1024,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> VLLMServer:
    """Prepare the venv and model if needed, start vLLM on a free port and wait until it serves.

    The returned :class:`VLLMServer` is a context manager that stops the server on exit. Raises
    :class:`VLLMSetupError` (with the server log's tail) if anything fails. On Linux the server also
    gets SIGTERM when the *thread* that started it exits (so a killed test run leaves no 3 GB server
    behind): call this from a long-lived thread, not from a short-lived worker thread.
    """
    python = ensure_vllm_venv()
    directory = ensure_model()
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    server_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    server_env.update(SERVER_ENV)
    server_env.update(env or {})

    last_error: VLLMSetupError | None = None
    for _attempt in range(3):  # a free port can be taken by someone else before vLLM binds it
        port = free_port()
        args = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(directory),
            "--served-model-name",
            served_model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(max_model_len),
            "--enforce-eager",
        ]
        if max_num_seqs is not None:
            args += ["--max-num-seqs", str(max_num_seqs)]
        args += list(extra_args)
        log_path = logs / f"vllm-{served_model_name}-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            return _launch(args, server_env, log_path, directory, served_model_name, port, startup_timeout)
        except VLLMSetupError as exc:
            last_error = exc
            if "address already in use" not in _tail(log_path, 200).lower():
                raise
    assert last_error is not None
    raise last_error


def _launch(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    directory: Path,
    name: str,
    port: int,
    startup_timeout: float,
) -> VLLMServer:
    root_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(args) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(directory.parent),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    server = VLLMServer(
        base_url=f"{root_url}/v1",
        root_url=root_url,
        served_model_name=name,
        process=process,
        log_path=log_path,
        model_dir=directory,
        args=args,
    )
    try:
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = process.poll()
                if code is not None:
                    raise VLLMSetupError(
                        f"vLLM server exited with status {code} before becoming ready\n"
                        f"--- last lines of {log_path} ---\n{_tail(log_path)}"
                    )
                if _server_ready(client, root_url, name):
                    if sys.platform == "linux":
                        _lower_engine_priority(process.pid)  # started in a session of its own: pid == pgid
                    break
                if time.monotonic() - started > startup_timeout:
                    raise VLLMSetupError(
                        f"vLLM server not ready after {startup_timeout:.0f} s\n"
                        f"--- last lines of {log_path} ---\n{_tail(log_path)}"
                    )
                time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.monotonic() - started
    return server
