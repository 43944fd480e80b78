"""Upstream faults over real sockets: each ends with a fallback success or a clean OpenAI-style error (an SSE
error event once the stream has started), never a hung client or a traceback, and with exactly one ledger
row per request.

Two simulators run on sockets: ``sim-a`` (the one faults are injected into) and ``sim-b`` (always healthy).
``solo`` is served by sim-a alone; ``primary`` is served by sim-a and falls back to ``backup`` (sim-b);
``refused``/``refused-fb`` point at a port nothing listens on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.support import LedgerFile, assert_openai_error, clear_fault, set_fault, sse_events
from tests.helpers.servers import RunningGateway, free_port, run_asgi_server, serve_gateway

FIRST_BYTE_S = 1.0
CLIENT_TIMEOUT_S = 15.0  # far above the gateway's own bounds: a hung gateway fails the test, not the suite


@dataclass(slots=True)
class Env:
    gw: RunningGateway
    sim_a: str
    sim_b: str
    ledger: LedgerFile


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("faults")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    sim_a_app = create_simulator_app("fast", model_name="sim-a", time_scale=1.0)
    sim_b_app = create_simulator_app("fast", model_name="sim-b", time_scale=1.0)
    with run_asgi_server(sim_a_app) as sim_a, run_asgi_server(sim_b_app) as sim_b:
        timeouts = {"connect": 1.0, "first_byte": FIRST_BYTE_S, "total": 5.0, "between_chunks": FIRST_BYTE_S}
        a = {"backend": "openai", "base_url": sim_a + "/v1", "upstream_model": "sim-a", "timeouts": timeouts}
        ledger = LedgerFile(tmp / "ledger.db")
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "solo", **a},
                    {"name": "primary", **a, "fallbacks": ["backup"]},
                    {"name": "backup", "backend": "openai", "base_url": sim_b + "/v1", "upstream_model": "sim-b"},
                    {"name": "refused", "backend": "openai", "base_url": dead, "timeouts": timeouts},
                    {"name": "refused-fb", "backend": "openai", "base_url": dead, "fallbacks": ["backup"]},
                ],
                "retry": {"max_attempts": 2, "backoff_base_ms": 0},
                "breaker": {"failure_threshold": 100_000},  # every request here must reach the faulty backend
                "cache": {"enabled": False},
                "server": {"metrics_scrape_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield Env(gw, sim_a, sim_b, ledger)


@dataclass(slots=True)
class Outcome:
    status: int
    headers: httpx.Headers
    body: Any  # JSON body, or the list of SSE events
    request_id: str


async def call(env: Env, model: str, *, stream: bool, max_tokens: int = 8) -> Outcome:
    rid = f"fault-{uuid.uuid4().hex[:12]}"
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    async with httpx.AsyncClient(base_url=env.gw.base_url, timeout=CLIENT_TIMEOUT_S) as http:
        r = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": rid})
    assert r.headers.get("x-request-id") == rid
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return Outcome(r.status_code, r.headers, sse_events(r.text), rid)
    return Outcome(r.status_code, r.headers, r.json(), rid)


@pytest.fixture
def fault(env: Env) -> Iterator[Any]:
    """Set a fault on sim-a for one test; always cleared afterwards."""

    def _set(**kwargs: Any) -> None:
        set_fault(env.sim_a, **kwargs)

    yield _set
    clear_fault(env.sim_a)


# (fault, expected status without a fallback, expected error type/code fragment)
BEFORE_FIRST_BYTE = {
    "error_500": ({"mode": "error_500"}, 502, "upstream_error upstream_http_500"),  # not the gateway's own 500
    "error_429": ({"mode": "error_429", "retry_after": 7}, 429, "RateLimitError"),
    "reset": ({"mode": "reset"}, 502, "upstream_unavailable"),
    "hang": ({"mode": "hang"}, 504, "upstream_timeout"),
    "invalid_json": ({"mode": "invalid_json"}, 502, "upstream_unavailable"),
}


def _error_fingerprint(err: dict[str, Any]) -> str:
    return f"{err['type']} {err['code']}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("name", list(BEFORE_FIRST_BYTE))
async def test_fault_without_fallback_is_a_clean_error(env: Env, fault: Any, name: str, stream: bool) -> None:
    spec, status, fingerprint = BEFORE_FIRST_BYTE[name]
    fault(**spec)
    out = await call(env, "solo", stream=stream)
    assert out.status == status, out.body
    assert out.headers["content-type"].startswith("application/json")  # nothing was streamed yet
    err = assert_openai_error(out.body)
    assert fingerprint in _error_fingerprint(err), err
    if name == "error_429":
        assert out.headers.get("retry-after") == "7"
    row = await env.ledger.one_row(out.request_id)
    assert row["status_code"] == status
    assert row["error_type"]
    assert row["attempts"] == 1  # the request reached the only backend: never sent there again (issue 20)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("name", list(BEFORE_FIRST_BYTE))
async def test_fault_with_healthy_fallback_succeeds(env: Env, fault: Any, name: str, stream: bool) -> None:
    spec, _, _ = BEFORE_FIRST_BYTE[name]
    fault(**spec)
    out = await call(env, "primary", stream=stream)
    assert out.status == 200, out.body
    assert out.headers["x-gateway-model"] == "backup"
    if stream:
        assert out.body[-1] == "[DONE]"
        assert all(e["model"] == "backup" for e in out.body[:-1])
    else:
        assert out.body["model"] == "backup" and out.body["choices"][0]["message"]["content"]
    row = await env.ledger.one_row(out.request_id)
    assert (row["status_code"], row["chosen_model"], row["attempts"]) == (200, "backup", 2)
    assert row["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_connection_refused(env: Env, stream: bool) -> None:
    out = await call(env, "refused", stream=stream)
    assert out.status == 502
    err = assert_openai_error(out.body)
    assert err["code"] == "upstream_unavailable" and "refused" in err["message"]
    assert (await env.ledger.one_row(out.request_id))["status_code"] == 502

    out = await call(env, "refused-fb", stream=stream)
    assert out.status == 200 and out.headers["x-gateway-model"] == "backup"
    row = await env.ledger.one_row(out.request_id)
    assert (row["status_code"], row["chosen_model"]) == (200, "backup")


async def test_reset_mid_response_without_streaming(env: Env, fault: Any) -> None:
    """``cut_stream`` on a plain request: headers and half the JSON body, then the connection drops."""
    fault(mode="cut_stream")
    out = await call(env, "solo", stream=False)
    assert out.status == 502
    assert_openai_error(out.body)
    assert (await env.ledger.one_row(out.request_id))["status_code"] == 502
    out = await call(env, "primary", stream=False)
    assert out.status == 200 and out.body["model"] == "backup"
    assert (await env.ledger.one_row(out.request_id))["chosen_model"] == "backup"


def _assert_ends_with_error_event(events: list[Any]) -> dict[str, Any]:
    assert events, "empty stream"
    assert events[-1] != "[DONE]", "a broken stream must not end like a complete one"
    err = assert_openai_error(events[-1])
    content = [e for e in events[:-1] if e.get("choices")]
    assert content, "the chunks before the failure were relayed"
    return err


@pytest.mark.parametrize("model", ["solo", "primary"], ids=["single", "with-fallback"])
async def test_stream_cut_midway_ends_with_an_error_event(env: Env, fault: Any, model: str) -> None:
    """After the first byte the gateway cannot fall back: the stream ends with an SSE error event."""
    fault(mode="cut_stream", after_chunks=3)
    out = await call(env, model, stream=True, max_tokens=20)
    assert out.status == 200
    err = _assert_ends_with_error_event(out.body)
    assert err["code"] == "upstream_unavailable"
    row = await env.ledger.one_row(out.request_id)
    assert row["status_code"] == 200 and row["error_type"] == "UpstreamUnavailable"
    assert row["chosen_model"] == model and row["attempts"] == 1
    assert row["completion_tokens"] > 0 and row["tokens_estimated"]


@pytest.mark.parametrize(
    ("hold_s", "code"),
    [(0.1, "upstream_unavailable"), (30.0, "upstream_timeout")],
    ids=["closes-without-done", "stalls-without-done"],
)
async def test_stream_without_done(env: Env, fault: Any, hold_s: float, code: str) -> None:
    """Every chunk but ``[DONE]``: the upstream then closes (an error event at once) or stalls (an error
    event after ``between_chunks``)."""
    fault(mode="no_done", hold_s=hold_s)
    out = await call(env, "primary", stream=True)
    assert out.status == 200
    err = _assert_ends_with_error_event(out.body)
    assert err["code"] == code
    row = await env.ledger.one_row(out.request_id)
    assert row["status_code"] == 200 and row["error_type"]
    assert row["completion_tokens"] == 8 and not row["tokens_estimated"]  # the usage chunk did arrive


async def test_every_request_has_exactly_one_row(env: Env) -> None:
    """A final sweep: the ledger holds no duplicate request ids at all after the whole module."""
    import sqlite3

    with sqlite3.connect(env.ledger.path) as conn:
        dupes = conn.execute(
            "SELECT request_id, COUNT(*) FROM gw_ledger GROUP BY request_id HAVING COUNT(*) > 1"
        ).fetchall()
    assert dupes == []
