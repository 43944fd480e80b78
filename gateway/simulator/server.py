"""The simulator's ASGI app: a vLLM-like OpenAI-compatible server with a timing model.

This is a TEST AND DEMO tool.  It produces deterministic filler text, never real model
output, and says so in the ``x-simulator`` response header and at startup.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.simulator.answers import AnswerRule, AnswerRules, parse_answer_rules, split_words
from gateway.simulator.engine import FifoLimiter, Pacer, SimStats, TimingModel
from gateway.simulator.faults import RAW_SEND_KEY, FaultConfig, FaultInjector, error_body, parse_fault
from gateway.simulator.judge import JudgeRules, parse_judge
from gateway.simulator.metrics import SimMetrics
from gateway.simulator.profiles import SimProfile, get_profile
from gateway.simulator.protocol import (
    ApiError,
    ChoicePlan,
    GenRequest,
    parse_chat_request,
    parse_completion_request,
    parse_embeddings_request,
    plan_outputs,
)
from gateway.simulator.render import Renderer
from gateway.simulator.streaming import AbortConnection, PartialBody, SimResponse, cut_job, sse
from gateway.simulator.textgen import GeneratedText, embed_text, stable_hash

__all__ = ["SimState", "create_simulator_app", "serve"]

logger = logging.getLogger("gateway.simulator")
_DONE = b"data: [DONE]\n\n"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson."""
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


def _error(exc: ApiError) -> Response:
    return json_response(error_body(exc.message, exc.status, exc.err_type), exc.status)


@dataclass
class SimState:
    """Everything one simulator app shares between requests (``app.state.sim``)."""

    profile: SimProfile
    timing: TimingModel
    limiter: FifoLimiter
    metrics: SimMetrics
    stats: SimStats
    faults: FaultInjector
    seed: int
    answers: AnswerRules
    judge: JudgeRules

    @property
    def model_name(self) -> str:
        """The served model name."""
        return self.profile.model_name

    def check_model(self, body: Any) -> None:
        """Raise a 404 ``ApiError`` unless the body names this model (or none)."""
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and model not in (self.profile.model_name, self.profile.name):
            raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError")


class SimulatorApp(Starlette):
    """Starlette app that records the server's own ``send`` in the scope (for ``reset``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] == "http":
            scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


class _Handlers:
    def __init__(self, state: SimState) -> None:
        self.st = state

    # ------------------------------------------------------------------ plain routes
    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return json_response({"version": "simulator", "profile": self.st.profile.name})

    async def models(self, request: Request) -> Response:
        p = self.st.profile
        card = {
            "id": p.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": p.owned_by,
            "root": p.model_name,
            "parent": None,
            "max_model_len": p.context_window,
        }
        return json_response({"object": "list", "data": [card]})

    async def metrics(self, request: Request) -> Response:
        return Response(self.st.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def stats(self, request: Request) -> Response:
        stats = self.st.stats.to_json(self.st.limiter, self.st.faults.injected)
        stats["answer_rules_applied"] = self.st.answers.applied
        return json_response(stats)

    async def faults(self, request: Request) -> Response:
        inj = self.st.faults
        if request.method == "DELETE":
            inj.clear()
        elif request.method == "POST":
            try:
                inj.set(parse_fault(orjson.loads(await request.body())))
            except (ValueError, orjson.JSONDecodeError) as exc:
                return _error(ApiError(str(exc)))
        active = inj.active
        return json_response({"fault": active.to_json() if active else None})

    async def answers(self, request: Request) -> Response:
        rules = self.st.answers
        if request.method == "DELETE":
            rules.clear()
        elif request.method == "POST":
            try:
                rules.set(parse_answer_rules(orjson.loads(await request.body())))
            except (ValueError, orjson.JSONDecodeError) as exc:
                return _error(ApiError(str(exc)))
        return json_response({"rules": [r.to_json() for r in rules.rules]})

    async def judge(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.st.judge = JudgeRules()
        elif request.method == "POST":
            try:
                self.st.judge = parse_judge(orjson.loads(await request.body()))
            except (ValueError, orjson.JSONDecodeError) as exc:
                return _error(ApiError(str(exc)))
        return json_response(self.st.judge.to_json())

    # ------------------------------------------------------------- inference routes
    async def chat(self, request: Request) -> Response:
        return await self._inference(request, parse_chat_request)

    async def completions(self, request: Request) -> Response:
        return await self._inference(request, parse_completion_request)

    async def _read(self, request: Request) -> tuple[Any, FaultConfig | None, Response | None]:
        """Read the body, take the next fault, and answer at once for request-level faults."""
        st = self.st
        st.stats.received += 1
        arrival = time.monotonic()
        raw = await request.body()
        fault = st.faults.take()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            body = exc
        early = self._fault_response(fault, body, request) if fault else None
        if early is not None:
            return body, fault, early
        if isinstance(body, Exception):
            st.stats.failed += 1
            return body, fault, _error(ApiError(f"JSON decode error: {body}"))
        try:
            st.check_model(body)
        except ApiError as exc:
            st.stats.failed += 1
            return body, fault, _error(exc)
        request.state.arrival = arrival
        return body, fault, None

    def _fault_response(self, fault: FaultConfig, body: Any, request: Request) -> Response | None:
        mode = fault.mode
        stream = isinstance(body, dict) and body.get("stream") is True
        if mode.startswith("error_"):
            self.st.stats.failed += 1
            status = fault.http_status
            msg = fault.message or f"Simulated upstream error ({mode}, HTTP {status})"
            headers = {"retry-after": f"{fault.retry_after:g}"} if mode == "error_429" else None
            return json_response(error_body(msg, status), status, headers)
        if mode == "reset":
            return SimResponse(self.st.stats, self._reset_job(), stream=False)
        if mode == "hang":
            return SimResponse(self.st.stats, self._hang_job(fault.hold_s), stream=False)
        if mode == "invalid_json":
            self.st.stats.completed += 1
            if stream:
                bad = b'data: {"id": "cmpl-sim-invalid", "choices": [{"delta": \n\n' + _DONE
                return Response(bad, media_type="text/event-stream")
            return Response(b'{"id": "cmpl-sim-invalid", "choices": [ <not json>', media_type="application/json")
        return None

    async def _reset_job(self) -> AsyncIterator[bytes | PartialBody]:
        raise AbortConnection
        yield b""  # pragma: no cover - makes this an async generator

    async def _hang_job(self, hold_s: float | None) -> AsyncIterator[bytes | PartialBody]:
        try:
            await asyncio.sleep(hold_s if hold_s is not None else 10**9)
        except asyncio.CancelledError:
            self.st.stats.cancelled += 1
            raise
        raise AbortConnection
        yield b""  # pragma: no cover

    async def _inference(self, request: Request, parse: Callable[[Any, SimProfile], GenRequest]) -> Response:
        st = self.st
        body, fault, early = await self._read(request)
        if early is not None:
            return early
        try:
            req = parse(body, st.profile)
        except ApiError as exc:
            st.stats.failed += 1
            return _error(exc)
        verdict = st.judge.reply(req.prompts[0].hint) if req.endpoint == "chat" else None
        if verdict is not None:  # a judge's prompt: answered as a judge (gateway.simulator.judge)
            plans = [ChoicePlan(0, 0, GeneratedText(split_words(verdict), "stop"))]
        else:
            plans = plan_outputs(req, st.profile, st.seed, [st.answers.take(p.hint) for p in req.prompts])
        prefix = "chatcmpl" if req.endpoint == "chat" else "cmpl"
        renderer = Renderer(req, st.model_name, st.profile.kind, f"{prefix}-{uuid.uuid4().hex}")
        job = self._generate(req, plans, renderer, fault, request.state.arrival)
        return SimResponse(st.stats, job, stream=req.stream, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {"x-simulator": f"gateway-simulator/{self.st.profile.name}"}

    async def _generate(
        self,
        req: GenRequest,
        plans: list[ChoicePlan],
        renderer: Renderer,
        fault: FaultConfig | None,
        arrival: float,
    ) -> AsyncIterator[bytes | PartialBody]:
        st, timing = self.st, self.st.timing
        mode = fault.mode if fault else None
        factor = fault.factor if fault and mode == "slow" else 1.0
        rng = random.Random(stable_hash(req.prompts[0].key_text, st.seed, "timing"))
        finished = False
        try:
            async with st.limiter.slot():
                pacer = Pacer()
                await pacer.advance(timing.ttft_s(req.prompt_tokens, rng, factor))
                ttft = time.monotonic() - arrival
                st.metrics.ttft.observe(ttft)
                st.metrics.prompt_tokens.inc(req.prompt_tokens)
                steps = max(p.steps for p in plans)
                if not req.stream:
                    await pacer.advance(sum(timing.token_s(rng, factor) for _ in range(steps - 1)))
                    body = orjson.dumps(renderer.response(plans))
                    if mode == "cut_stream":
                        yield PartialBody(body[: len(body) // 2], len(body))
                        raise AbortConnection
                    finished = self._finish(plans, arrival, ttft, steps)
                    yield body
                    return
                offsets = [0] * len(plans)
                for step in range(steps):
                    parts: list[bytes] = []
                    if step == 0:
                        parts = [sse(c) for p in plans if (c := renderer.role_chunk(p)) is not None]
                    else:
                        await pacer.advance(timing.token_s(rng, factor))
                    if mode == "cut_stream" and fault is not None and step >= fault.after_chunks:
                        if parts:
                            yield b"".join(parts)
                        raise AbortConnection
                    for k, p in enumerate(plans):
                        if step < p.steps:
                            parts.extend(sse(c) for c in renderer.token_chunks(p, step, offsets[k]))
                            offsets[k] += len(p.text.tokens[step]) if p.tool_call is None else 0
                    yield b"".join(parts)
                if req.include_usage:
                    yield sse(renderer.usage_chunk(plans))
                finished = self._finish(plans, arrival, ttft, steps)
            if mode == "no_done" and fault is not None:
                await asyncio.sleep(fault.hold_s if fault.hold_s is not None else 10.0)
                return
            yield _DONE
        except asyncio.CancelledError:
            if not finished:
                st.stats.cancelled += 1
                st.metrics.request_finished("abort")
            raise

    def _finish(self, plans: list[ChoicePlan], arrival: float, ttft: float, steps: int) -> bool:
        st = self.st
        e2e = time.monotonic() - arrival
        st.stats.completed += 1
        st.metrics.generation_tokens.inc(sum(p.steps for p in plans))
        st.metrics.request_finished("length" if plans[0].finish_reason == "length" else "stop")
        st.metrics.e2e.observe(e2e)
        if steps > 1:
            st.metrics.tpot.observe((e2e - ttft) / (steps - 1))
        return True

    # -------------------------------------------------------------------- embeddings
    async def embeddings(self, request: Request) -> Response:
        st = self.st
        body, fault, early = await self._read(request)
        if early is not None:
            return early
        try:
            texts, tokens, dims, b64 = parse_embeddings_request(body, st.profile)
        except ApiError as exc:
            st.stats.failed += 1
            return _error(exc)
        factor = fault.factor if fault and fault.mode == "slow" else 1.0
        await asyncio.sleep(st.timing.embedding_s(tokens, factor))
        data = []
        for i, text in enumerate(texts):
            vec = embed_text(text, dims or st.profile.embedding_dim or 1)
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
            data.append({"index": i, "object": "embedding", "embedding": emb})
        st.stats.completed += 1
        st.metrics.prompt_tokens.inc(tokens)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
        payload = {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": st.model_name,
            "data": data,
            "usage": usage,
        }
        if fault is not None and fault.mode == "cut_stream":
            raw = orjson.dumps(payload)
            return SimResponse(st.stats, cut_job(raw), stream=False)
        return json_response(payload, headers=self._headers())


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
    return json_response({"detail": detail}, status)


def _rules(raw: list[AnswerRule] | list[dict[str, Any]] | dict[str, Any] | None) -> list[AnswerRule]:
    if raw is None:
        return []
    if isinstance(raw, list) and all(isinstance(r, AnswerRule) for r in raw):
        return [r for r in raw if isinstance(r, AnswerRule)]
    return parse_answer_rules(raw)


def create_simulator_app(
    profile: SimProfile | str,
    *,
    time_scale: float = 1.0,
    max_concurrency: int | None = None,
    model_name: str | None = None,
    seed: int = 0,
    faults: FaultConfig | dict[str, Any] | str | None = None,
    answer_rules: list[AnswerRule] | list[dict[str, Any]] | dict[str, Any] | None = None,
    judge: JudgeRules | dict[str, Any] | None = None,
) -> SimulatorApp:
    """Build the simulator ASGI app for ``profile``.

    Args:
        profile: A :class:`SimProfile` or the name of a built-in one.
        time_scale: Multiplies every delay (0.01 makes tests fast; 0 removes them).
        max_concurrency: Overrides the profile's limit on concurrently running requests.
        model_name: Overrides the served model name.
        seed: Default seed for generation when a request gives none.
        faults: An initial fault (a :class:`FaultConfig`, its JSON dict, or a mode name).
        answer_rules: Initial per-prompt answer rules (see :mod:`gateway.simulator.answers`).
        judge: The ground truth it judges by (see :mod:`gateway.simulator.judge`).

    The shared state is available as ``app.state.sim`` (a :class:`SimState`).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    prof = prof.with_overrides(model_name=model_name, max_concurrency=max_concurrency)
    limiter = FifoLimiter(prof.max_concurrency)
    state = SimState(
        profile=prof,
        timing=TimingModel(prof, time_scale),
        limiter=limiter,
        metrics=SimMetrics(prof.model_name, limiter),
        stats=SimStats(),
        faults=FaultInjector(parse_fault(faults) if faults is not None else None),
        seed=seed,
        answers=AnswerRules(_rules(answer_rules)),
        judge=judge if isinstance(judge, JudgeRules) else parse_judge(judge) if judge is not None else JudgeRules(),
    )
    h = _Handlers(state)
    routes = [
        Route("/health", h.health, methods=["GET"]),
        Route("/version", h.version, methods=["GET"]),
        Route("/v1/models", h.models, methods=["GET"]),
        Route("/metrics", h.metrics, methods=["GET"]),
        Route("/v1/chat/completions", h.chat, methods=["POST"]),
        Route("/v1/completions", h.completions, methods=["POST"]),
        Route("/v1/embeddings", h.embeddings, methods=["POST"]),
        Route("/_sim/faults", h.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/answers", h.answers, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/stats", h.stats, methods=["GET"]),
        Route("/_sim/judge", h.judge, methods=["GET", "POST", "DELETE"]),
    ]
    app = SimulatorApp(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.sim = state
    return app


def serve(
    profile: str | SimProfile,
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    time_scale: float = 1.0,
    max_concurrency: int | None = None,
    model_name: str | None = None,
    seed: int = 0,
    faults: FaultConfig | dict[str, Any] | str | None = None,
    answer_rules: list[AnswerRule] | list[dict[str, Any]] | dict[str, Any] | None = None,
    judge: JudgeRules | dict[str, Any] | None = None,
    log_level: str = "info",
) -> None:
    """Run a simulator under uvicorn until interrupted (blocking).

    Raises:
        KeyError: if ``profile`` names no built-in profile.
    """
    import uvicorn

    app = create_simulator_app(
        profile,
        time_scale=time_scale,
        max_concurrency=max_concurrency,
        model_name=model_name,
        seed=seed,
        faults=faults,
        answer_rules=answer_rules,
        judge=judge,
    )
    prof = app.state.sim.profile
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.warning(
        "BACKEND SIMULATOR (test/demo only, NOT a real model): profile=%s model=%r "
        "max_concurrency=%d time_scale=%g on http://%s:%d",
        prof.name,
        prof.model_name,
        prof.max_concurrency,
        time_scale,
        host,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)
