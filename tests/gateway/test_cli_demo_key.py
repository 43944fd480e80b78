"""``gateway demo`` always runs with a fresh master key of its own: a production ``GATEWAY_MASTER_KEY`` in the
shell is neither used nor printed, and is back in place when the demo ends."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

PRODUCTION = "sk-prod-master-key-never-print-me"


def test_the_demo_key_is_fresh_whatever_the_shell_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo import run

    monkeypatch.setenv("GATEWAY_MASTER_KEY", PRODUCTION)
    with run.demo_master_key() as key:
        assert key != PRODUCTION and key.startswith("sk-demo-") and len(key) >= 32
        assert os.environ["GATEWAY_MASTER_KEY"] == key  # the in-process gateway authenticates with it
        with run.demo_master_key() as again:
            assert again != key  # each run its own
    assert os.environ["GATEWAY_MASTER_KEY"] == PRODUCTION


def test_without_a_shell_key_none_is_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.demo import run

    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)
    with run.demo_master_key() as key:
        assert os.environ["GATEWAY_MASTER_KEY"] == key
    assert "GATEWAY_MASTER_KEY" not in os.environ


def test_the_printed_key_is_the_demos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.demo import run

    monkeypatch.setenv("GATEWAY_MASTER_KEY", PRODUCTION)
    out = io.StringIO()
    with run.demo_master_key() as key:
        run._urls(Console(file=out, width=200), "http://127.0.0.1:1", tmp_path, tmp_path / "g.yaml", True, key)
    text = out.getvalue()
    assert PRODUCTION not in text
    assert f"Master key            {key}" in text and f"Bearer {key}" in text
