"""``gateway serve`` and ``python -m gateway.server`` hold ``--port`` and ``--workers`` to the bounds of
``server.port`` (0-65535) and ``server.workers`` (>= 1): one line, exit 2, nothing started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gateway.test_config import MINIMAL

BAD_FLAGS = [
    (["--port", "70000"], "--port 70000: "),
    (["--port", "-5"], "--port -5: "),
    (["--workers", "-2"], "--workers -2: "),
    (["--workers", "0"], "--workers 0: "),
]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for key in list(os.environ):
        if key.upper().startswith("GATEWAY_") or key in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(key)
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    return str(path)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """What would have been started: ``gateway serve``'s exec and the server's uvicorn.run are recorded."""
    import uvicorn

    import gateway.server
    from gateway.http_limits import BODY_TIMEOUT_ENV, HEAD_TIMEOUT_ENV

    for name in ("GATEWAY_CONFIG", HEAD_TIMEOUT_ENV, BODY_TIMEOUT_ENV):  # run() sets them: restored after the test
        monkeypatch.delenv(name, raising=False)
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append({"argv": argv}))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(gateway.server, "setup_logging", lambda level: None)
    return calls


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS)
def test_serve_refuses_out_of_range_flags_with_one_line(
    config: str, started: list[dict[str, object]], flags: list[str], expected: str
) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    result = CliRunner().invoke(app, ["serve", "--config", config, *flags])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert started == []


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS)
def test_server_process_refuses_out_of_range_flags_with_one_line(
    config: str,
    started: list[dict[str, object]],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    from gateway.server import main

    with pytest.raises(SystemExit) as exc:
        main(["--config", config, *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {expected}"), err
    assert started == []


def test_flags_in_range_are_passed_on(config: str, started: list[dict[str, object]]) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.server import main

    result = CliRunner().invoke(app, ["serve", "--config", config, "--port", "0", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert started[0]["argv"][-4:] == ["--port", "0", "--workers", "2"]  # type: ignore[index]
    main(["--config", config, "--port", "65535", "--workers", "1"])
    assert (started[1]["port"], started[1]["workers"]) == (65535, 1)
