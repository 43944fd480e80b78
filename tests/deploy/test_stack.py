"""The compose stack, run for real: scripts/stack-test.sh builds the images (air-gapped, from a Debian
base), brings up compose.yaml with the test override on podman, sends traffic through the containers and
checks Redis, PostgreSQL, Prometheus, the dashboard, a Redis restart under load, two replicas behind nginx
and that ``down -v`` leaves nothing. Cold: several minutes (debootstrap, apt, wheels); cached: the stack's
own run time."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.servers import REPO_ROOT

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(3000),
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed (scripts/test.sh installs it with apt where it can); the stack test needs it",
    ),
]


def test_compose_stack_runs_for_real() -> None:
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "stack-test.sh")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=2900,
    )
    output = proc.stdout + proc.stderr
    # Progress and errors first: the containers' log tails that follow a failure are long.
    summary = "\n".join(ln for ln in output.splitlines() if ln.startswith("[stack") or "Error" in ln)
    assert proc.returncode == 0, summary[-6000:] + "\n...\n" + output[-3000:]
    assert "PASSED: down -v left no container, volume or network" in output, summary[-6000:]
