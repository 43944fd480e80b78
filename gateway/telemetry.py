"""OpenTelemetry traces: one span per request and a child span per upstream attempt.

Spans follow the OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``...) and add the gateway's
own attributes under ``gateway.*`` (route, policy, reason, cost, cache result, attempts). The client's W3C
trace context (``traceparent``/``tracestate``) is the request span's parent, and every upstream HTTP call
carries the attempt span's context onwards (an aiohttp trace hook injects the headers).

Off unless ``telemetry.enabled`` is true, or (``enabled`` left unset) the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` turn it off. When off, the pipeline holds :class:`NoTracing`, whose
methods do nothing, and the ``opentelemetry`` packages (the ``otel`` extra) are never imported. Spans are
exported over OTLP/HTTP by the SDK's batch processor, in its own thread, from a bounded queue that drops
when full: export never blocks or fails a request. The exporter reads the rest of its configuration
(headers, timeout, compression, certificates, sampler, resource attributes) from the standard
``OTEL_*`` variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from yarl import URL

from gateway.config import ModelSpec, TelemetrySettings
from gateway.context import RequestContext, usage_tokens
from gateway.errors import ConfigError
from gateway.logs import OncePer
from gateway.protocol import first_finish_reason

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("gateway.telemetry")

#: gen_ai.operation.name per endpoint (the GenAI conventions' well-known values).
OPERATIONS: dict[str, str] = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}

#: gen_ai.provider.name per backend kind (``vllm`` is not a well-known value; the conventions allow others).
PROVIDERS: dict[str, str] = {"openai": "openai", "vllm": "vllm", "litellm": "litellm"}


@dataclass(frozen=True, slots=True)
class Upstream:
    """A model as its attempt spans describe it: its backend kind, what it is called upstream (``upstream_model``)
    and where it is served (host and port of its ``base_url``)."""

    backend: str
    model: str
    address: str | None = None
    port: int | None = None


#: How long a shutdown waits for the queued spans to be exported (the exporter's own default timeout).
SHUTDOWN_WAIT_S = 10.0
#: OTLP's integer attributes are int64.
_INT64 = range(-(2**63), 2**63)
_REQUEST_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),  # what the Responses and Messages doors send
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)


class Tracing(Protocol):
    """What the pipeline calls at fixed points of a request; :class:`NoTracing` when traces are off."""

    def request_started(self, ctx: RequestContext) -> None:
        """Open the request's span (parent: the client's ``traceparent``), before anything else runs."""
        ...

    def attempt(
        self, ctx: RequestContext, model: str, *, stream: bool | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Around one upstream call: a child span, current while the call is made so that its context
        travels upstream. It ends when the block ends, except for a stream that opened (``stream``, by
        default ``ctx.stream``): that one ends with :meth:`attempt_ended`, when the stream does."""
        ...

    def attempt_ended(self, ctx: RequestContext, error: BaseException | None = None) -> None:
        """End the open attempt span of a stream (``error`` marks it failed)."""
        ...

    def attempt_answered(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """The open attempt's answer ``body`` when it is not the request's (a cascade's checked rung, its judge):
        its usage goes on the attempt span (else the span shows the request's usage when it ends)."""
        ...

    def request_ended(self, ctx: RequestContext) -> None:
        """Set what the request became (model, tokens, cost, cache, status) and end its span."""
        ...

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """aiohttp hooks for the upstream session (none when off)."""
        ...

    async def aclose(self) -> None:
        """Export what is queued and stop."""
        ...


class NoTracing:
    """Traces off: every hook is a no-op."""

    _NULL = contextlib.nullcontext()

    def request_started(self, ctx: RequestContext) -> None:
        """Nothing."""

    def attempt(
        self, ctx: RequestContext, model: str, *, stream: bool | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Nothing."""
        return self._NULL

    def attempt_ended(self, ctx: RequestContext, error: BaseException | None = None) -> None:
        """Nothing."""

    def attempt_answered(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """Nothing."""

    def request_ended(self, ctx: RequestContext) -> None:
        """Nothing."""

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """None."""
        return []

    async def aclose(self) -> None:
        """Nothing."""


@dataclass(slots=True)
class _Trace:
    """A request's spans, carried on ``ctx.trace``."""

    span: Span
    context: Context
    attempt: Span | None = None
    attempt_usage: tuple[int, int, str | None] | None = None  # (input, output, finish reason) of the open attempt


def tracing_enabled(settings: TelemetrySettings, env: Mapping[str, str]) -> bool:
    """Whether traces are on for ``settings`` and the process environment ``env``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if settings.enabled is not None:
        return settings.enabled
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def build_tracing(settings: TelemetrySettings, models: Mapping[str, Upstream], routes: Iterable[str] = ()) -> Tracing:
    """The tracing for these settings (``models``: each model's :class:`Upstream`; ``routes``: the route names):
    :class:`OTelTracing` when on, else :class:`NoTracing`.

    Raises:
        ConfigError: ``telemetry.enabled: true`` but the ``otel`` extra is not installed (traces on only by an
            ``OTEL_EXPORTER_OTLP_*`` variable of the environment: logged, and the gateway runs without them).
    """
    if not tracing_enabled(settings, os.environ):
        return NoTracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        missing = f"OpenTelemetry is not installed ({exc.name}): pip install 'llm-hybrid-gateway[otel]'"
        if settings.enabled is None:  # an environment meant for other services: not a reason to refuse to start
            log.warning("OTEL_EXPORTER_OTLP_* is set but %s; serving without traces", missing)
            return NoTracing()
        raise ConfigError(f"telemetry.enabled is true but {missing}") from exc
    name = os.environ.get("OTEL_SERVICE_NAME") or settings.service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.export_interval_ms,
            max_export_batch_size=min(settings.export_batch_size, settings.max_queue_size),
        )
    )
    once = OncePer()  # a collector refusing every batch (a 500) logged a line per batch: ~24 a second under load
    for logger_name in _EXPORT_LOGGERS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, OncePer) for f in logger.filters):
            logger.addFilter(once)
    log.info("OpenTelemetry traces on (service.name=%s)", name)
    return OTelTracing(provider, models, routes)


#: The OpenTelemetry loggers that log each failed export (the exporter's, and the batch processor's).
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)


def upstream_of(spec: ModelSpec) -> Upstream:
    """A model's :class:`Upstream` from its config (no address for a ``litellm`` model: litellm picks it)."""
    if not spec.base_url:
        return Upstream(spec.backend, spec.upstream_name)
    url = URL(spec.base_url)
    return Upstream(spec.backend, spec.upstream_name, url.host, url.explicit_port or url.port)


class OTelTracing:
    """Spans through the OpenTelemetry SDK (build with :func:`build_tracing`)."""

    def __init__(
        self,
        provider: TracerProvider,
        models: Mapping[str, Upstream],
        routes: Iterable[str] = (),
    ) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        # W3C trace context only: a client's ``baggage`` is neither read nor passed on (it travelled to every
        # upstream, hosted providers included, with whatever the client or its mesh put in it).
        self._w3c = TraceContextTextMapPropagator()
        self._tracer: Tracer = provider.get_tracer("llm-gateway")
        self._models = dict(models)
        #: what a span may be named after: a client's name for something the gateway does not serve (a 404) would
        #: make a new operation in the trace back end for every name sent
        self._served = frozenset(models) | frozenset(routes)
        self._context = context
        self._trace = trace
        self._kind_server = SpanKind.SERVER
        self._kind_client = SpanKind.CLIENT
        self._status = Status
        self._error_code = StatusCode.ERROR

    def request_started(self, ctx: RequestContext) -> None:
        """Open the request's span under the client's trace context (if it sent one)."""
        parent = self._w3c.extract(ctx.headers)
        op = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        span = self._tracer.start_span(
            op,
            context=parent,
            kind=self._kind_server,
            start_time=int(ctx.started_wall * 1e9),
            attributes={"gen_ai.operation.name": op, "gateway.request_id": ctx.request_id},
        )
        ctx.trace = _Trace(span, self._trace.set_span_in_context(span, parent))

    @contextlib.contextmanager
    def attempt(self, ctx: RequestContext, model: str, *, stream: bool | None = None) -> Iterator[None]:
        """A child span for one upstream call, current during the call (so aiohttp injects its context)."""
        trace: _Trace | None = ctx.trace
        if trace is None:
            yield
            return
        self.attempt_ended(ctx)  # one open at a time
        op = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        upstream = self._models.get(model) or Upstream("openai", model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op,
            # the model as the provider is asked for it (GenAI conventions); the gateway's name beside it
            "gen_ai.request.model": upstream.model,
            "gateway.model": model,
            "gen_ai.provider.name": PROVIDERS.get(upstream.backend, "openai"),
            "gateway.attempt": len(ctx.attempts),
        }
        if upstream.address:
            attributes["server.address"] = upstream.address
            if upstream.port is not None:
                attributes["server.port"] = upstream.port
        span = self._tracer.start_span(
            f"{op} {model}", context=trace.context, kind=self._kind_client, attributes=attributes
        )
        trace.attempt = span
        token = self._context.attach(self._trace.set_span_in_context(span, trace.context))
        try:
            yield
        except BaseException as exc:
            self.attempt_ended(ctx, exc)
            raise
        else:
            if not (ctx.stream if stream is None else stream):
                self.attempt_ended(ctx)
        finally:
            self._context.detach(token)

    def attempt_ended(self, ctx: RequestContext, error: BaseException | None = None) -> None:
        """End the open attempt span, marked failed when ``error`` is given."""
        trace: _Trace | None = ctx.trace
        if trace is None or trace.attempt is None:
            return
        span, trace.attempt = trace.attempt, None
        own, trace.attempt_usage = trace.attempt_usage, None
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self._status(self._error_code, _message(error)))
        else:
            # a stream cut by the client leaving or the budget ends here too: what it relayed, and why it stopped
            usage = own or (ctx.usage.prompt_tokens, ctx.usage.completion_tokens, ctx.finish_reason)
            span.set_attribute("gen_ai.usage.input_tokens", usage[0])
            span.set_attribute("gen_ai.usage.output_tokens", usage[1])
            if usage[2]:
                span.set_attribute("gen_ai.response.finish_reasons", [usage[2]])
            if ctx.error_type is not None:
                span.set_attribute("error.type", ctx.error_type)
                span.set_status(self._status(self._error_code, ctx.error_type))
        span.end()

    def attempt_answered(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """Keep the answer's usage for the attempt span (:meth:`Tracing.attempt_answered`)."""
        trace: _Trace | None = ctx.trace
        if trace is None or trace.attempt is None:
            return
        usage = body.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        prompt, completion = usage_tokens(usage.get("prompt_tokens")), usage_tokens(usage.get("completion_tokens"))
        trace.attempt_usage = (prompt, completion, first_finish_reason(body))  # as the pipeline reads an answer

    def request_ended(self, ctx: RequestContext) -> None:
        """Set the outcome's attributes and end the request span (once)."""
        trace: _Trace | None = ctx.trace
        if trace is None:
            return
        ctx.trace = None
        if trace.attempt is not None:  # a stream the client left, or a bug: its attempt ends with the request
            self.attempt_ended(ctx, None if ctx.error_type is None else RuntimeError(ctx.error_type))
        span = trace.span
        op = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        span.update_name(f"{op} {ctx.requested_model}" if ctx.requested_model in self._served else op)
        span.set_attributes(_request_attributes(ctx))
        if ctx.status_code >= 500 or (ctx.error_type is not None and ctx.status_code == 200):
            span.set_status(self._status(self._error_code, f"{ctx.error_type} (HTTP {ctx.status_code})"))
        span.end()

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """An aiohttp hook putting the current span's ``traceparent`` on each upstream request (not the client's
        ``tracestate``: vendor data of the client's, not for a third party)."""
        inject = self._w3c.inject

        async def on_request_start(
            session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams
        ) -> None:
            carrier: dict[str, str] = {}
            inject(carrier)
            if "traceparent" in carrier:
                params.headers["traceparent"] = carrier["traceparent"]

        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_request_start)
        return [config]

    async def aclose(self) -> None:
        """Flush and stop the exporter, waiting at most :data:`SHUTDOWN_WAIT_S` (the SDK's shutdown blocks up to
        30 s on a collector that does not answer; it runs in a daemon thread, left behind after the wait)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            try:
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed after the wait gave up
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shutdown, name="otel-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, SHUTDOWN_WAIT_S)
        except TimeoutError:
            log.warning("OpenTelemetry: spans still queued after %.0f s at shutdown were dropped", SHUTDOWN_WAIT_S)


def _request_attributes(ctx: RequestContext) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.request.model": ctx.requested_model,
        "gen_ai.usage.input_tokens": ctx.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": ctx.usage.completion_tokens,
        "http.response.status_code": ctx.status_code,
        "gateway.stream": ctx.stream,
        "gateway.cache": ctx.cache_status,
        "gateway.attempts": list(ctx.attempts),
        "gateway.cost_usd": float(ctx.cost_usd),
        "gateway.saved_usd": float(ctx.saved_usd),
        "gateway.usage_estimated": ctx.usage.estimated,
    }
    for field, attr in _REQUEST_PARAMS:
        value = ctx.body.get(field)
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and value in _INT64):
            attrs[attr] = value  # OTLP's integers are int64: a larger one failed the export with a traceback
    if ctx.chosen_model:
        attrs["gen_ai.response.model"] = ctx.chosen_model
    if ctx.finish_reason:
        attrs["gen_ai.response.finish_reasons"] = [ctx.finish_reason]
    for name, value in (
        ("gateway.route", ctx.route),
        ("gateway.policy", ctx.policy),
        ("gateway.reason", ctx.reason or None),
        ("gateway.key_id", ctx.key_id),
        ("gateway.team", ctx.team),
        ("gateway.api", ctx.api),
        ("error.type", ctx.error_type),
    ):
        if value:
            attrs[name] = value
    if ctx.cache_score is not None:
        attrs["gateway.cache_score"] = ctx.cache_score
    if ctx.ttft_s is not None:
        attrs["gateway.time_to_first_token_s"] = ctx.ttft_s
    return attrs


def _message(error: BaseException) -> str:
    """A failed span's status: the error's kind and code, never its message (an upstream's error may quote the
    request, the client's prompt included: vLLM's validation errors do; prompts never go on spans)."""
    status = getattr(error, "upstream_status", None)
    code = getattr(error, "code", None)
    if isinstance(status, int):
        return f"{type(error).__name__}: upstream HTTP {status}"
    return f"{type(error).__name__}: {code}" if isinstance(code, str | int) else type(error).__name__


__all__ = ["NoTracing", "OTelTracing", "Tracing", "build_tracing", "tracing_enabled"]
