"""Span attributes copied from the client's body must be exportable: an integer outside OTLP's int64 (a ``seed`` or
``max_tokens`` of 2**63, which validation accepts) makes the exporter log an error with a traceback for every such
request and drop the attribute."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.gateway.test_telemetry import Receiver
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway


@pytest.fixture
def traced() -> Iterator[tuple[RunningGateway, Receiver]]:
    receiver = Receiver()
    with (
        run_asgi_server(receiver.app()) as otlp,
        run_asgi_server(create_simulator_app("fast", model_name="sim", time_scale=0.0)) as sim,
    ):
        settings = settings_from_dict(
            {
                "models": [{"name": "sim", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim"}],
                "cache": {"enabled": False},
                "server": {"metrics_scrape_seconds": 3600},
                "ledger": {"url": "sqlite+aiosqlite:///:memory:"},
                "telemetry": {"enabled": True, "endpoint": otlp + "/v1/traces", "export_interval_ms": 20},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, receiver


@pytest.mark.parametrize("field", ["seed", "max_tokens"])
def test_an_out_of_range_integer_is_no_export_error(
    traced: tuple[RunningGateway, Receiver], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw, receiver = traced
    caplog.set_level(logging.WARNING)
    rid = f"huge-{field}"
    r = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], field: 2**63},
        headers={"x-request-id": rid},
        timeout=30,
    )
    assert r.status_code in (200, 400), r.text  # the simulator refuses a 2**63 max_tokens (context length)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(s["attrs"].get("gateway.request_id") == rid for s in receiver.spans):
        time.sleep(0.02)
    span = next(s for s in receiver.spans if s["attrs"].get("gateway.request_id") == rid)
    # Errors of this gateway's export (an earlier test's exporter, still flushing to a port since reused, may log
    # a failed export of its own): before, "Failed to encode key gen_ai.request.seed: Value out of range" + traceback
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if (r.levelno >= logging.ERROR or r.exc_info) and "Failed to export spans batch code" not in r.getMessage()
    ]
    assert not errors, errors
    assert span["attrs"]["http.response.status_code"] == r.status_code


def test_an_unknown_model_does_not_name_the_span(traced: tuple[RunningGateway, Receiver]) -> None:
    """Span names are what trace back ends index as operations (they must be low-cardinality): a model name the
    gateway does not serve (a 404) comes from the client, and any number of them may be sent."""
    gw, receiver = traced
    names = [f"no-such-model-{i}" for i in range(3)]
    for i, model in enumerate(names):
        r = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": f"unknown-{i}"},
            timeout=30,
        )
        assert r.status_code == 404
    deadline = time.monotonic() + 10
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(spans) < len(names):
        spans = [s for s in receiver.spans if str(s["attrs"].get("gateway.request_id", "")).startswith("unknown-")]
        time.sleep(0.02)
    assert len(spans) == len(names)
    assert not [s["name"] for s in spans if any(m in s["name"] for m in names)]  # now: "chat no-such-model-0", ...
