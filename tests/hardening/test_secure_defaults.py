"""Secure defaults (issue 20): a master key means auth is on; ``auth.enabled: false`` with one is refused at
start with one line; a non-loopback listen address with auth off is refused unless allowed explicitly (then a
warning at every start); admin endpoints never answer without the master key, loopback peers included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import load_settings
from gateway.errors import ConfigError
from tests.hardening.gateways import master_key, sim_gateway
from tests.helpers.servers import REPO_ROOT, free_port

MASTER = "sk-master-" + uuid.uuid4().hex
USER = [{"role": "user", "content": "hi"}]


def write_config(tmp: Path, **extra: object) -> Path:
    config = {
        "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp / 'l.db'}"},
        **extra,
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def server(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"}
    full.update(env or {})
    full["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [sys.executable, "-m", "gateway.server", "--config", str(config), *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_master_key_turns_auth_on(tmp_path: Path) -> None:
    with master_key(MASTER), sim_gateway(tmp_path) as gw:
        body = {"model": "cheap", "messages": USER, "max_tokens": 2}
        assert httpx.post(gw.base_url + "/v1/chat/completions", json=body).status_code == 401
        assert httpx.get(gw.base_url + "/v1/models").status_code == 401
        ok = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER}"})
        assert ok.status_code == 200, ok.text


def test_auth_disabled_with_a_master_key_is_refused_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, auth={"enabled": False})
    with master_key(MASTER), pytest.raises(ConfigError, match=r"auth\.enabled: false, but GATEWAY_MASTER_KEY is set"):
        load_settings(config)
    proc = server(config, env={"GATEWAY_MASTER_KEY": MASTER})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().count("\n") == 0 and "GATEWAY_MASTER_KEY is set" in out, out


def test_public_address_without_auth_is_refused_unless_allowed(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, server={"host": "0.0.0.0", "port": port})
    proc = server(config)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "refusing to serve on 0.0.0.0 with auth off" in out, out
    assert out.strip().count("\n") == 0, out
    allowed = server(config, "--allow-unauthenticated")
    try:
        assert allowed.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "auth OFF" not in seen and time.monotonic() < deadline and allowed.poll() is None:
            seen += allowed.stdout.readline()
        assert "serving on 0.0.0.0 with auth OFF" in seen, seen
    finally:
        allowed.terminate()
        allowed.wait(30)


def test_loopback_without_auth_starts_quietly(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config)
    assert settings.auth.enabled is False


def test_admin_endpoints_are_off_without_a_master_key(tmp_path: Path) -> None:
    with master_key(None), sim_gateway(tmp_path) as gw, httpx.Client(base_url=gw.base_url) as c:
        for method, path in (
            ("GET", "/admin/keys"),
            ("POST", "/admin/keys"),
            ("GET", "/admin/spend"),
            ("GET", "/admin/dashboard/data"),
            ("POST", "/admin/route/explain"),
        ):
            r = c.request(method, path, json={"name": "k"} if method == "POST" else None)
            assert r.status_code == 401, (path, r.text)  # a loopback peer, no key: refused
            assert "Admin endpoints are off" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json={"model": "cheap", "messages": USER}).status_code == 200
