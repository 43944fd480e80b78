"""OpenTelemetry over real sockets: the gateway exports its spans over OTLP/HTTP to a receiver on loopback
(decoding the protobuf the collector would), one server span per request with the GenAI attributes and the
client's trace id, a client span per upstream attempt, and the attempt's context passed upstream.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai import AsyncOpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import TelemetrySettings, settings_from_dict
from gateway.errors import ConfigError
from gateway.simulator import create_simulator_app
from gateway.telemetry import NoTracing, build_tracing, tracing_enabled
from tests.helpers.servers import RunningGateway, free_port, run_asgi_server, serve_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass(slots=True)
class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, as plain dicts."""

    spans: list[dict[str, Any]] = field(default_factory=list)

    async def traces(self, request: Request) -> Response:
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(raw)
        for rs in msg.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        {
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "kind": s.kind,
                            "status": s.status.code,
                            "attrs": {a.key: _value(a.value) for a in s.attributes},
                            "resource": resource,
                        }
                    )
        return Response(b"", media_type="application/x-protobuf")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.spans)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class HeaderRecorder:
    """ASGI middleware in front of the simulator: remembers each request's ``traceparent``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.traceparents: list[str | None] = []
        self.passed_on: list[bytes] = []  # the names of other trace headers that reached the upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/completions"):
            headers = dict(scope["headers"])
            tp = headers.get(b"traceparent")
            self.traceparents.append(tp.decode() if tp else None)
            self.passed_on += [name for name in (b"tracestate", b"baggage") if name in headers]
        await self.app(scope, receive, send)


@dataclass(slots=True)
class Env:
    gw: RunningGateway
    receiver: Receiver
    upstream: HeaderRecorder


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    receiver = Receiver()
    upstream = HeaderRecorder(create_simulator_app("fast", model_name="sim", time_scale=0.0))
    with run_asgi_server(receiver.app()) as otlp, run_asgi_server(upstream) as sim:
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "sim", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim"},
                    # nothing served under this path: its calls fail (404) while its health probe passes (a model
                    # down by its probe would be tried after its fallbacks)
                    {"name": "dead", "backend": "openai", "base_url": sim + "/missing/v1", "fallbacks": ["sim"]},
                ],
                "retry": {"max_attempts": 2, "backoff_base_ms": 0},
                "breaker": {"failure_threshold": 100_000},
                "cache": {"enabled": False},
                "server": {"metrics_scrape_seconds": 3600},
                "ledger": {"url": "sqlite+aiosqlite:///:memory:"},
                "telemetry": {
                    "enabled": True,
                    "endpoint": otlp + "/v1/traces",
                    "export_interval_ms": 20,
                    "service_name": "gw-under-test",
                },
            }
        )
        with serve_gateway(settings) as gw:
            yield Env(gw, receiver, upstream)


def _client(env: Env) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=env.gw.base_url + "/v1", api_key="unused", max_retries=0)


def _spans_of(env: Env, request_id: str, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request's server span and its attempt spans (waiting until ``n`` spans of its trace arrived)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = env.receiver.wait_for(0)
        server = [s for s in spans if s["attrs"].get("gateway.request_id") == request_id]
        if server:
            mine = [s for s in spans if s["trace_id"] == server[0]["trace_id"]]
            if len(mine) >= n:
                return server[0], [s for s in mine if s["parent"] == server[0]["span_id"]]
        time.sleep(0.02)
    raise AssertionError(f"spans of {request_id} did not arrive: {env.receiver.spans}")


async def test_one_span_per_request_with_genai_attributes_and_the_clients_trace(env: Env) -> None:
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    resp = await _client(env).chat.completions.with_raw_response.create(
        model="sim",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=12,
        temperature=0.2,
        extra_headers={
            "traceparent": traceparent,
            "tracestate": "internal=corp-secret-tenant-42",
            "baggage": "user.email=alice@corp.example",
            "x-request-id": "otel-plain",
        },
    )
    completion = resp.parse()
    server, attempts = _spans_of(env, "otel-plain", 2)

    assert server["trace_id"] == TRACE_ID
    assert server["parent"] == CLIENT_SPAN
    assert server["kind"] == 2  # SPAN_KIND_SERVER
    assert server["name"] == "chat sim"
    a = server["attrs"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "sim"
    assert a["gen_ai.response.model"] == "sim"
    assert a["gen_ai.request.max_tokens"] == 12
    assert a["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert completion.usage is not None
    assert a["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert a["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]
    assert a["gateway.policy"] == resp.headers["x-gateway-policy"]
    assert a["gateway.reason"] == resp.headers["x-gateway-reason"]
    assert a["gateway.cache"] == resp.headers["x-gateway-cache"]
    assert a["gateway.cost_usd"] == pytest.approx(float(resp.headers["x-gateway-cost-usd"]))
    assert a["gateway.attempts"] == ["sim"]
    assert a["http.response.status_code"] == 200
    assert server["resource"]["service.name"] == "gw-under-test"

    assert len(attempts) == 1
    (attempt,) = attempts
    assert attempt["kind"] == 3  # SPAN_KIND_CLIENT
    assert attempt["name"] == "chat sim"
    assert attempt["attrs"]["gen_ai.provider.name"] == "openai"
    assert attempt["attrs"]["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    # The upstream was called under the attempt span: W3C context passed on, and nothing else of the client's
    # (its tracestate and baggage reached every upstream, hosted providers included).
    assert f"00-{TRACE_ID}-{attempt['span_id']}-01" in env.upstream.traceparents
    assert env.upstream.passed_on == []


async def test_a_stream_and_a_failed_attempt_each_get_a_child_span(env: Env) -> None:
    stream = await _client(env).chat.completions.create(
        model="dead",
        messages=[{"role": "user", "content": "Count to three"}],
        max_tokens=8,
        stream=True,
        extra_headers={"x-request-id": "otel-stream"},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    server, attempts = _spans_of(env, "otel-stream", 3)

    assert server["trace_id"] != TRACE_ID  # no traceparent: a new trace
    assert server["parent"] == ""
    assert server["attrs"]["gateway.stream"] is True
    assert server["attrs"]["gateway.attempts"] == ["dead", "sim"]
    assert server["attrs"]["gen_ai.response.model"] == "sim"
    assert server["attrs"]["gen_ai.usage.output_tokens"] > 0
    by_model = {s["attrs"]["gen_ai.request.model"]: s for s in attempts}
    assert set(by_model) == {"dead", "sim"}
    assert by_model["dead"]["status"] == 2  # STATUS_CODE_ERROR
    assert by_model["dead"]["attrs"]["error.type"] == "UpstreamRejected"
    assert by_model["sim"]["status"] != 2
    # GenAI conventions for a CLIENT span: the model as the provider is asked for it, and where it is served
    assert by_model["sim"]["attrs"]["gateway.model"] == "sim"
    assert by_model["sim"]["attrs"]["server.address"] == "127.0.0.1" and by_model["sim"]["attrs"]["server.port"] > 0


async def test_a_refused_request_is_traced_too(env: Env) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        await _client(env).chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "otel-404"},
        )
    server, attempts = _spans_of(env, "otel-404", 1)
    assert server["attrs"]["http.response.status_code"] == 404
    assert server["attrs"]["error.type"] == "NotFound"
    assert attempts == []


def test_export_to_a_dead_collector_never_fails_a_request(tmp_path: Any) -> None:
    dead_collector = f"http://127.0.0.1:{free_port()}/v1/traces"
    with run_asgi_server(create_simulator_app("fast", model_name="sim", time_scale=0.0)) as sim:
        settings = settings_from_dict(
            {
                "models": [{"name": "sim", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim"}],
                "cache": {"enabled": False},
                "ledger": {"url": "sqlite+aiosqlite:///:memory:"},
                "telemetry": {"enabled": True, "endpoint": dead_collector, "export_interval_ms": 10},
            }
        )
        with serve_gateway(settings) as gw:
            import httpx

            for _ in range(20):
                r = httpx.post(
                    gw.base_url + "/v1/chat/completions",
                    json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                    timeout=10,
                )
                assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("enabled", "env", "on"),
    [
        (None, {}, False),  # off by default
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        (True, {}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        (True, {"OTEL_SDK_DISABLED": "TRUE"}, False),
    ],
)
def test_switched_on_the_standard_way(enabled: bool | None, env: dict[str, str], on: bool) -> None:
    assert tracing_enabled(TelemetrySettings(enabled=enabled), env) is on


def test_off_means_the_no_op_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing = build_tracing(TelemetrySettings(), {})
    assert isinstance(tracing, NoTracing)
    assert tracing.trace_configs() == []


async def test_a_front_door_request_says_which_api(env: Env) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=env.gw.base_url, api_key="unused", max_retries=0)
    message = await client.messages.create(
        model="sim",
        max_tokens=8,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-request-id": "otel-messages"},
    )
    server, attempts = _spans_of(env, "otel-messages", 2)
    assert server["attrs"]["gateway.api"] == "messages"
    assert server["attrs"]["gen_ai.operation.name"] == "chat"
    assert server["attrs"]["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    assert len(attempts) == 1


def test_a_collector_that_never_answers_holds_shutdown_at_most_the_exporter_s_timeout() -> None:
    """The SDK's shutdown waits up to 30 s on a collector that accepts and never answers: the gateway waits at most
    SHUTDOWN_WAIT_S (the exporter's own default timeout), inside the pod's grace period."""
    import asyncio
    import socket

    from gateway.config import TelemetrySettings
    from gateway.telemetry import SHUTDOWN_WAIT_S, build_tracing

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # accepts, never answers
    endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}/v1/traces"

    async def run() -> float:
        tracing = build_tracing(TelemetrySettings(enabled=True, endpoint=endpoint, export_interval_ms=60_000), {})
        provider = tracing._provider  # type: ignore[attr-defined]
        tracer = provider.get_tracer("t")
        for _ in range(500):
            tracer.start_span("s").end()
        t0 = time.monotonic()
        await tracing.aclose()
        return time.monotonic() - t0

    try:
        took = asyncio.run(run())
    finally:
        hole.close()
    assert took < SHUTDOWN_WAIT_S + 2


def test_an_attempt_whose_answer_is_not_the_request_s_carries_its_own_usage() -> None:
    """A cascade's checked rung (and its judge) is answered before the request's usage is known: its attempt span
    had 0 tokens for an answer that was generated and paid for."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.context import RequestContext
    from gateway.telemetry import OTelTracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OTelTracing(provider, {})
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="casc")
    tracing.request_started(ctx)
    answer = {"choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": 16, "completion_tokens": 186}}
    with tracing.attempt(ctx, "llama-2-7b", stream=False):
        tracing.attempt_answered(ctx, answer)
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["gen_ai.usage.input_tokens"] == 16
    assert span.attributes["gen_ai.usage.output_tokens"] == 186
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def _memory_tracing() -> tuple[Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.telemetry import OTelTracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OTelTracing(provider, {}), exporter


def test_an_upstream_error_quoting_the_prompt_does_not_put_it_on_a_span() -> None:
    """vLLM's validation errors quote the request: the message went into the attempt's and the request's span
    status, though prompts never go on spans."""
    from gateway.context import RequestContext
    from gateway.errors import UpstreamRejected

    tracing, exporter = _memory_tracing()
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m")
    tracing.request_started(ctx)
    quoted = "Invalid value for 'messages[0]': [{'role': 'user', 'content': 'my SSN is 123-45-6789'}]"
    err = UpstreamRejected(quoted, upstream_status=400, backend="m")
    with pytest.raises(UpstreamRejected), tracing.attempt(ctx, "m", stream=False):
        raise err
    ctx.status_code, ctx.error_type, ctx.error_message = 502, "UpstreamRejected", quoted
    tracing.request_ended(ctx)
    attempt, request = exporter.get_finished_spans()
    assert attempt.status.description == "UpstreamRejected: upstream HTTP 400"
    assert request.status.description == "UpstreamRejected (HTTP 502)"
    assert all("SSN" not in str(s.status.description) for s in (attempt, request))


def test_a_stream_the_client_left_says_so_on_its_attempt_with_what_it_relayed() -> None:
    from gateway.context import RequestContext

    tracing, exporter = _memory_tracing()
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m")
    tracing.request_started(ctx)
    with tracing.attempt(ctx, "m", stream=True):
        pass
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 9, 4
    ctx.status_code, ctx.error_type = 499, "ClientDisconnected"
    tracing.attempt_ended(ctx)  # the relay's end, as the pipeline calls it
    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert attempt.attributes["error.type"] == "ClientDisconnected"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 4
    assert attempt.status.description == "ClientDisconnected"


def test_a_collector_refusing_every_batch_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A collector answering 500 made the exporter log an ERROR line per batch (~24 a second under load), beside
    the request log; a dead or rate-limiting one backs off. One line per 30 s now, the next saying how many more."""
    refused = {"n": 0}

    async def refuse(request: Request) -> Response:
        refused["n"] += 1
        return Response(b"no", status_code=500)

    collector = Starlette(routes=[Route("/v1/traces", refuse, methods=["POST"])])
    with (
        run_asgi_server(collector) as otlp,
        run_asgi_server(create_simulator_app("fast", model_name="sim", time_scale=0.0)) as sim,
    ):
        settings = settings_from_dict(
            {
                "models": [{"name": "sim", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim"}],
                "cache": {"enabled": False},
                "ledger": {"url": "sqlite+aiosqlite:///:memory:"},
                "telemetry": {"enabled": True, "endpoint": otlp + "/v1/traces", "export_interval_ms": 10},
            }
        )
        with serve_gateway(settings) as gw:
            import httpx

            body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            for _ in range(30):
                assert httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
                time.sleep(0.03)  # a batch each
    lines = [r for r in caplog.records if r.name.startswith("opentelemetry") and "export" in r.getMessage().lower()]
    assert refused["n"] >= 5
    assert len(lines) <= 2, [r.getMessage() for r in lines]  # 0 when an earlier test's line started the interval


def test_without_the_extra_an_environment_s_collector_is_a_warning_and_the_setting_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` set for a host's other services, and a plain ``pip install .``: start-up was
    a traceback naming a package that does not exist (``llm-gateway[otel]``)."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert isinstance(build_tracing(TelemetrySettings(), {}), NoTracing)
    assert "pip install 'llm-hybrid-gateway[otel]'" in caplog.text
    with pytest.raises(ConfigError, match=r"telemetry.enabled is true but .*llm-hybrid-gateway\[otel\]"):
        build_tracing(TelemetrySettings(enabled=True), {})
