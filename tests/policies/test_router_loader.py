"""The server serving the shipped prior holds no numpy (about 11 MiB of its memory): only an adapted artifact
needs it, and loading one imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_RUNTIME = """
import asyncio, sys
import gateway.server
from gateway.config import Settings
from gateway.runtime import build_gateway, close_gateway

async def main() -> None:
    settings = Settings.model_validate({
        "models": [
            {"name": "small", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "large", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
        ],
        "cache": {"enabled": False},
        "ledger": {"url": "sqlite+aiosqlite:///LEDGER"},
    })
    gw = await build_gateway(settings)
    try:
        assert gw.router.estimator is not None, "the learned router should serve"
        print(type(gw.router.estimator).__name__, "numpy" in sys.modules)
    finally:
        await close_gateway(gw)

asyncio.run(main())
"""


def test_the_runtime_serving_the_shipped_prior_does_not_import_numpy(tmp_path: Path) -> None:
    code = _RUNTIME.replace("LEDGER", str(tmp_path / "ledger.db"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["QualityRouter", "False"]
