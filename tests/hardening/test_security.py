"""Who gets in, and what leaks.

* With keys on, every ``/v1`` and admin route (enumerated from the app, so new routes are covered) refuses
  a missing or unknown key; admin routes, the dashboard's data included, refuse virtual keys too.
* A key cannot read another key's spend or be served another key's cached answers.
* Keys and upstream secrets never appear in logs (caplog of an in-process gateway at DEBUG, and the
  stderr of a ``gateway serve`` process), in error bodies, in ``/metrics`` or in any other response.
* The master key is compared in constant time; request heads and bodies have size limits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.app import create_app
from gateway.auth import admission as admission_module
from gateway.config import Settings, settings_from_dict
from tests.hardening.support import assert_openai_error
from tests.helpers.servers import REPO_ROOT, free_port, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
UPSTREAM_SECRET = "sk-upstream-" + uuid.uuid4().hex
WRONG_KEY = "sk-gw-" + uuid.uuid4().hex + "WRONG"
USER = [{"role": "user", "content": "What is the capital of France?"}]


# -- an upstream that echoes the credentials it received, as careless providers do in their errors ---------


def echo_upstream() -> Starlette:
    calls: list[str] = []

    async def chat(request: Request) -> Response:
        body = await request.json()
        auth = request.headers.get("authorization", "")
        text = " ".join(str(m.get("content")) for m in body.get("messages", []))
        calls.append(text)
        if "fail401" in text:
            return JSONResponse(
                {"error": {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request_error"}}, 401
            )
        if "fail500" in text:
            return JSONResponse({"error": {"message": f"engine crashed while serving {auth}"}}, 500)
        if "failtext" in text:
            return Response(f"upstream proxy error for {auth}", 502, media_type="text/plain")
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                yield b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up","choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":"stop"}]}\n\n'
                yield (
                    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up","choices":[],"usage":'
                    + str(usage).replace("'", '"').encode()
                    + b"}\n\n"
                )
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "up",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Paris ({len(calls)})"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
    app.state.calls = calls
    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[str]]]:
    app = echo_upstream()
    with run_asgi_server(app) as url:
        yield url, app.state.calls


def config(upstream_url: str, ledger_path: Path) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "m",
                "backend": "openai",
                "base_url": upstream_url + "/v1",
                "upstream_model": "up",
                "api_key_env": "HARDENING_UPSTREAM_KEY",
                "input_cost_per_token": "0.000001",
                "output_cost_per_token": "0.000002",
            },
        ],
        "retry": {"max_attempts": 1},
        "cache": {"enabled": True},
        "server": {"metrics_scrape_seconds": 3600, "log_level": "debug"},
        "ledger": {"url": f"sqlite+aiosqlite:///{ledger_path}", "flush_interval_seconds": 0.05},
        "auth": {"enabled": True},
    }


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    monkeypatch.setenv("HARDENING_UPSTREAM_KEY", UPSTREAM_SECRET)


@pytest.fixture
def settings(upstream: tuple[str, list[str]], tmp_path: Path, secrets_env: None) -> Settings:
    return settings_from_dict(config(upstream[0], tmp_path / "ledger.db"))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def create_key(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    r = await http.post("/admin/keys", json={"name": name}, headers=bearer(MASTER))
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


# -- every /v1 and admin route needs a key ---------------------------------------------------------------


def app_routes(routes: list[BaseRoute]) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, descending into included routers."""
    for route in routes:
        nested = getattr(route, "original_router", None) or getattr(route, "app", None)
        if isinstance(route, Route) or hasattr(route, "methods"):
            for method in sorted(getattr(route, "methods", None) or []):
                if method != "HEAD":
                    yield method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        elif nested is not None and hasattr(nested, "routes"):
            yield from app_routes(nested.routes)


def protected(path: str) -> bool:
    return path.startswith(("/v1/", "/admin/"))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def error_type(path: str, body: Any) -> str:
    """The error's type, in the Anthropic shape on the Anthropic Messages paths, else the OpenAI one."""
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return str(body["error"]["type"])
    return str(assert_openai_error(body)["type"])


async def test_every_v1_and_admin_route_needs_a_valid_key(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # every admin route is tried with wrong keys from one address: past 20 a minute the address would be locked out
    # (429, tests/accounting/test_admin_surface.py), and each refusal here must be the 401 or 403 itself
    monkeypatch.setattr("gateway.auth.admin_guard.MAX_FAILURES", 10_000)
    app = create_app(settings)
    routes = sorted(set(app_routes(app.router.routes)))
    documented = set(app.openapi()["paths"])
    assert documented <= {p for _, p in routes}, "route enumeration missed documented routes"
    checked = [(m, p) for m, p in routes if protected(p)]
    assert len(checked) >= 11, checked  # 4 inference + models x2 + spend + admin; grows with new routes
    with serve_gateway(settings) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http:
            _, virtual = await create_key(http, "plain")
            for method, path in checked:
                url = concrete(path)
                body = {"model": "m", "messages": USER} if method == "POST" else None
                for headers, why in [
                    ({}, "no key"),
                    (bearer(WRONG_KEY), "unknown key"),
                    (bearer("x"), "junk key"),
                    ({"authorization": "Basic " + MASTER}, "not bearer"),
                ]:
                    r = await http.request(method, url, json=body, headers=headers)
                    # (admin routes answer an unknown key shaped like a virtual one with 403, not 401)
                    allowed = (401, 403) if path.startswith("/admin/") and why == "unknown key" else (401,)
                    assert r.status_code in allowed, (method, path, why, r.status_code, r.text)
                    assert error_type(path, r.json()) in ("authentication_error", "permission_error")
                r = await http.request(method, url, json=body, headers=bearer(virtual))
                if path.startswith("/admin/"):
                    assert r.status_code == 403, (method, path, r.text)
                    assert assert_openai_error(r.json())["type"] == "permission_error"
                else:
                    assert r.status_code not in (401, 403), (method, path, r.text)
                r = await http.request(method, url, json=body, headers=bearer(MASTER))
                assert r.status_code not in (401, 403), (method, path, r.text)
            page = await http.get("/dashboard")  # a login form: it holds no data, its data calls need the master key
            assert page.status_code == 200 and MASTER not in page.text


@pytest.mark.parametrize("peer", ["203.0.113.7", "127.0.0.1"])
async def test_admin_routes_without_a_master_key_are_off(
    upstream: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer: str
) -> None:
    """Keys off and no master key: admin routes answer nobody, loopback peers included (a reverse proxy on the
    same host would otherwise open them to the world; issue 20)."""
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)
    data = config(upstream[0], tmp_path / "l.db")
    data["auth"] = {"enabled": False}
    app = create_app(settings_from_dict(data))
    admin = sorted({(m, p) for m, p in app_routes(app.router.routes) if p.startswith("/admin/")})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for method, path in admin:
                r = await http.request(method, concrete(path), json={"name": "x"} if method == "POST" else None)
                assert r.status_code == 401 and "Admin endpoints are off" in r.text, (method, path, r.text)


# -- isolation between keys ----------------------------------------------------------------------------------


async def test_a_key_sees_only_its_own_spend(settings: Settings) -> None:
    with serve_gateway(settings) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http:
            a_id, a = await create_key(http, "alice")
            b_id, b = await create_key(http, "bob")
            for key, n in ((a, 3), (b, 2)):
                for i in range(n):
                    r = await http.post(
                        "/v1/chat/completions",
                        headers=bearer(key),
                        json={"model": "m", "messages": [{"role": "user", "content": f"q{i} {key[:9]}"}]},
                    )
                    assert r.status_code == 200
            own = (await http.get("/v1/spend", headers=bearer(a))).json()
            assert own["totals"]["requests"] == 3 and own["key"]["id"] == a_id
            # asking for someone else's data changes nothing
            for params in ({"key_id": b_id}, {"group_by": "key"}, {"group_by": "user"}, {"group_by": "team"}):
                r = await http.get("/v1/spend", headers=bearer(a), params=params)
                assert r.status_code == 200
                assert r.json()["totals"]["requests"] == 3, (params, r.json())
                assert b_id not in r.text and "bob" not in r.text
            for path in ("/admin/spend", f"/admin/spend?key_id={b_id}", "/admin/keys", "/admin/dashboard/data"):
                r = await http.get(path, headers=bearer(a))
                assert r.status_code == 403 and b_id not in r.text
            everyone = (await http.get("/admin/spend?group_by=key", headers=bearer(MASTER))).json()
            assert {row["group"]: row["requests"] for row in everyone["data"]} == {a_id: 3, b_id: 2}


async def test_a_key_is_never_served_another_keys_cached_answer(
    settings: Settings, upstream: tuple[str, list[str]]
) -> None:
    _, calls = upstream
    question = {
        "model": "m",
        "messages": [{"role": "user", "content": f"secret plan {uuid.uuid4().hex}"}],
        "temperature": 0,
    }
    with serve_gateway(settings) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http:
            _, a = await create_key(http, "alice")
            _, b = await create_key(http, "bob")
            before = len(calls)
            first = await http.post("/v1/chat/completions", json=question, headers=bearer(a))
            assert first.headers["x-gateway-cache"] == "miss"
            for _ in range(50):  # the store is written in the background
                again = await http.post("/v1/chat/completions", json=question, headers=bearer(a))
                if again.headers["x-gateway-cache"] == "hit":
                    break
                await asyncio.sleep(0.02)
            assert again.headers["x-gateway-cache"] == "hit" and again.json()["choices"] == first.json()["choices"]
            streamed = await http.post("/v1/chat/completions", json={**question, "stream": True}, headers=bearer(b))
            assert streamed.headers["x-gateway-cache"] == "miss"
            other = await http.post("/v1/chat/completions", json={**question, "seed": 1}, headers=bearer(b))
            assert other.headers["x-gateway-cache"] == "miss"
            assert other.json()["choices"] != first.json()["choices"]  # the upstream answered bob itself
            anonymous = await http.post("/v1/chat/completions", json=question, headers=bearer(MASTER))
            assert anonymous.headers["x-gateway-cache"] == "miss"
    assert len(calls) - before == 4


# -- secrets never leak ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything the clients got back, for grepping."""

    texts: list[str] = field(default_factory=list)

    def add(self, r: httpx.Response) -> httpx.Response:
        self.texts.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r


async def exercise(base_url: str, seen: Seen) -> list[str]:
    """Successes, every kind of failure, and every read endpoint; returns the virtual keys' secrets."""
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as http:
        created = await http.post("/admin/keys", json={"name": "leaky"}, headers=bearer(MASTER))
        assert created.status_code == 201
        key_id, virtual = created.json()["id"], created.json()["key"]  # (this one response shows it, once)
        ok = {"model": "m", "messages": USER}
        assert seen.add(await http.post("/v1/chat/completions", json=ok, headers=bearer(virtual))).status_code == 200
        seen.add(await http.post("/v1/chat/completions", json={**ok, "stream": True}, headers=bearer(virtual)))
        seen.add(await http.post("/v1/chat/completions", json=ok, headers=bearer(MASTER)))
        for headers in (
            {},
            bearer(WRONG_KEY),
            {"authorization": b"Bearer " + WRONG_KEY.encode() + b"\xe9\xff"},
            {"authorization": WRONG_KEY},
            {"x-api-key": WRONG_KEY},
        ):
            assert seen.add(await http.post("/v1/chat/completions", json=ok, headers=headers)).status_code == 401
        for trigger, status in (("fail401", 502), ("fail500", 502), ("failtext", 502)):  # a provider 401 is ours
            bad = {"model": "m", "messages": [{"role": "user", "content": trigger}]}
            r = seen.add(await http.post("/v1/chat/completions", json=bad, headers=bearer(virtual)))
            assert r.status_code == status, r.text
            assert_openai_error(r.json())
            seen.add(await http.post("/v1/chat/completions", json={**bad, "stream": True}, headers=bearer(virtual)))
        seen.add(
            await http.post("/v1/chat/completions", content=b"{bad json " + virtual.encode(), headers=bearer(virtual))
        )
        seen.add(await http.post("/admin/keys", json={"name": "x"}, headers=bearer(virtual)))
        seen.add(await http.post(f"/admin/keys/{key_id}/revoke", headers=bearer(WRONG_KEY)))
        for path in (
            "/metrics",
            "/ready",
            "/health",
            "/v1/models",
            "/v1/models/m",
            "/openapi.json",
            "/dashboard",
            "/v1/spend",
            "/admin/spend?group_by=key",
            "/admin/keys",
            "/admin/dashboard/data",
        ):
            seen.add(await http.get(path, headers=bearer(MASTER if path.startswith("/admin") else virtual)))
        seen.add(await http.post("/admin/route/explain", json=ok, headers=bearer(MASTER)))
        await asyncio.sleep(0.3)  # let the ledger writer log whatever it logs
        seen.add(await http.get("/metrics"))
        return [virtual]


def assert_no_secret(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:8]}...) appears in {where}"
        assert secret[-16:] not in text, f"the end of a secret ({secret[:8]}...) appears in {where}"


async def test_secrets_never_in_logs_errors_or_metrics_in_process(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Seen()
    with serve_gateway(settings) as gw:
        keys = await exercise(gw.base_url, seen)
    secrets = [MASTER, UPSTREAM_SECRET, WRONG_KEY, *keys]
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert len(caplog.records) > 10  # the gateway did log (at DEBUG), so the check has something to read
    assert_no_secret("the gateway's log records", logged, secrets)
    for text in seen.texts:
        assert_no_secret("a response", text, secrets)
    assert any("fail" in t or "Incorrect API key" in t for t in seen.texts)  # the upstream errors came through


def start_gateway_process(config_path: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m gateway serve`` with the secrets in its environment, once ``/health`` answers."""
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_MASTER_KEY": MASTER,
        "HARDENING_UPSTREAM_KEY": UPSTREAM_SECRET,
        "PYTHONPATH": str(REPO_ROOT),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 40
    while True:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text())
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(log_path.read_text())
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def test_secrets_never_in_a_gateway_process_stderr(upstream: tuple[str, list[str]], tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(config(upstream[0], tmp_path / "ledger.db")))
    log_path = tmp_path / "stderr.log"
    proc, base = start_gateway_process(cfg, log_path)
    try:
        seen = Seen()
        keys = await exercise(base, seen)
    finally:
        stop_process(proc)
    logged = log_path.read_text(errors="replace")
    assert '"level":"debug"' in logged.replace(" ", "")  # it really logged at DEBUG
    assert "Traceback" not in logged, logged[-3000:]
    secrets = [MASTER, UPSTREAM_SECRET, WRONG_KEY, *keys]
    assert_no_secret("the gateway process's stderr", logged, secrets)
    for text in seen.texts:
        assert_no_secret("a response", text, secrets)


# -- the mechanisms ---------------------------------------------------------------------------------------------


def test_master_key_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    source = inspect.getsource(admission_module.KeyAdmission.is_master)
    assert "hmac.compare_digest" in source
    assert "==" not in source.split('"""')[-1]
    calls: list[tuple[bytes, bytes]] = []
    real = admission_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admission_module.hmac, "compare_digest", spy)
    store: Any = None
    adm = admission_module.KeyAdmission(
        settings, store, admission_module.MemoryLimiter(reservation_ttl_s=60), master_key=MASTER, shared=False
    )
    assert adm.is_master(MASTER) and not adm.is_master(MASTER[:-1] + "x") and not adm.is_master(MASTER[:5])
    assert len(calls) == 3 and all(b == MASTER.encode() for _, b in calls)
    # virtual keys are looked up by their SHA-256, never compared as secrets
    assert "hash_key(secret)" in inspect.getsource(admission_module.KeyCache.lookup)


def test_limits_are_configured_and_enforced_in_the_app(settings: Settings) -> None:
    """The head and body limits come from the settings (their behaviour: test_bad_input.py)."""
    from gateway.http_limits import HeaderLimit

    app = create_app(settings)
    limits = [m for m in app.user_middleware if m.cls is HeaderLimit]
    assert limits and limits[0].kwargs["max_header_bytes"] == settings.server.max_header_bytes
    assert settings.server.max_body_bytes <= 16 * 1024 * 1024
