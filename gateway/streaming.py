"""SSE framing: relaying upstream chunks to the client, replaying stored answers, and error events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import orjson

from backends import Backend, UpstreamStream
from backends.http import scrub
from gateway.context import RequestContext, usage_tokens
from gateway.errors import BudgetExceeded, GatewayError, UpstreamError, UpstreamUnavailable
from gateway.pricing import Price
from gateway.protocol import FAILED_FINISH_REASONS, generated_per_prompt
from gateway.tokens import TokenCounter

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    """One SSE event carrying ``payload``."""
    return b"data: " + payload + b"\n\n"


def error_event(err: GatewayError) -> bytes:
    """An SSE event the OpenAI SDK raises as an ``APIError``: ``{"error": {...}}``."""
    return frame(orjson.dumps(err.to_body()))


class ChunkRelay:
    """Rewrites upstream chunks for the client and observes them for accounting.

    Sets the gateway's model name, records usage, finish reasons and time to first token (a reasoning
    model's first reasoning token counts), and drops the usage-only chunk (and ``usage`` keys) when the client
    did not ask for usage: the gateway always asks the upstream for it, so it always knows the token counts. An
    error event the upstream sends in the stream (vLLM sends one, then ``[DONE]``, over a 200) raises, and so does
    an end of stream before every choice finished (:meth:`end`).
    """

    __slots__ = (
        "_base",
        "_ctx",
        "_finished",
        "_model",
        "_seen",
        "_want_usage",
        "collected",
        "generated_chars",
        "reasoning_parts",
        "text_parts",
        "tool_calls",
        "usage_seen",
    )

    def __init__(self, ctx: RequestContext, model_name: str, collect: bool = False) -> None:
        self._ctx = ctx
        self._model = model_name
        self._want_usage = ctx.client_wants_usage
        self.usage_seen = False
        self._seen: set[Any] = set()  # the indexes of the choices the stream carried
        self._finished: set[Any] = set()  # and of those a finish_reason arrived for
        self.text_parts: list[str] = []  # the answer's text
        self.reasoning_parts: list[str] = []  # a reasoning model's reasoning (generated and billed too)
        self.generated_chars = 0  # of both
        self.tool_calls = 0
        self.collected: list[dict[str, Any]] | None = [] if collect else None
        self._base: dict[str, Any] | None = None  # the first chunk's id, object and created

    def transform(self, data: bytes) -> bytes | None:
        """The bytes to send for one upstream payload (``None``: send nothing).

        Raises:
            UpstreamUnavailable: the payload is the upstream's error event, or not JSON (comments and keep-alives
                never get here: the SSE decoder drops them; a corrupt event dropped silently left a hole in an
                answer that went on, and was cached, as whole).
        """
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = _with_lone_surrogates(data)
            if chunk is None:
                raise UpstreamUnavailable(
                    f"upstream '{self._model}' sent an invalid stream event", backend=self._model
                ) from None
        if not isinstance(chunk, dict):
            return None
        failure = stream_error(chunk, self._model)
        if failure is not None:
            raise failure
        chunk["model"] = self._model
        if self._base is None:
            self._base = {k: chunk.get(k) for k in ("id", "object", "created", "model")}
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._ctx.usage.prompt_tokens = usage_tokens(usage.get("prompt_tokens"))
            self._ctx.usage.completion_tokens = usage_tokens(usage.get("completion_tokens"))
            self.usage_seen = True
        choices = chunk.get("choices") or []
        if not _well_formed(choices):  # a renderer reading it would fail, and a client be left with a cut stream
            raise UpstreamUnavailable(f"upstream '{self._model}' sent a malformed stream event", backend=self._model)
        for choice in choices:
            index = choice.get("index", 0)
            if type(index) is not int:  # a broken upstream's index must not fail the relay (an unhashable one)
                index = repr(index)
            self._seen.add(index)
            delta = choice.get("delta") or {}
            content = delta.get("content")
            text = content if isinstance(content, str) else choice.get("text")
            if not isinstance(text, str):
                text = ""
            reasoning = _reasoning(delta)
            if text:
                self.text_parts.append(text)
                self.generated_chars += len(text)
            if reasoning:
                self.reasoning_parts.append(reasoning)
                self.generated_chars += len(reasoning)
            if delta.get("tool_calls"):
                self.tool_calls += 1
            if self._ctx.ttft_s is None and (text or reasoning or delta.get("tool_calls")):
                self._ctx.ttft_s = self._ctx.elapsed()
            reason = choice.get("finish_reason")
            if reason in FAILED_FINISH_REASONS:
                raise UpstreamUnavailable(
                    f"upstream '{self._model}' ended the generation with finish_reason '{reason}'", backend=self._model
                )
            if reason:
                self._ctx.finish_reason = reason
                self._finished.add(index)
        if self.collected is not None and choices:
            self.collected.append(chunk)
        if not self._want_usage:
            if not choices and "usage" in chunk:
                return None
            chunk.pop("usage", None)
        return frame(orjson.dumps(chunk))

    def estimate_usage(self, counter: TokenCounter) -> None:
        """The upstream reported no usage: the prompt's estimate and the relayed text counted, marked as
        estimated (what the ledger charges). Once."""
        usage = self._ctx.usage
        if self.usage_seen or usage.estimated:
            return
        usage.prompt_tokens = self._ctx.prompt_tokens_estimate
        usage.completion_tokens = counter.count("".join(self.reasoning_parts + self.text_parts)) + self.tool_calls
        usage.estimated = True

    def usage_frame(self) -> bytes:
        """The usage chunk for the request's usage (:meth:`estimate_usage`'s, for a client that asked for usage
        from an upstream that sent none: the SDKs then report what the request is charged)."""
        usage = self._ctx.usage
        counts = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        counts["total_tokens"] = usage.prompt_tokens + usage.completion_tokens
        base = self._base or {"object": "chat.completion.chunk", "created": int(time.time()), "model": self._model}
        return frame(orjson.dumps({**base, "choices": [], "usage": counts}))

    @property
    def completed(self) -> bool:
        """Whether the stream carried a choice and a ``finish_reason`` arrived for every choice it carried."""
        return bool(self._seen) and self._seen <= self._finished

    def end(self, saw_done: bool) -> None:
        """Check the upstream's end of stream (``saw_done``: it sent ``[DONE]``; else it closed) before the
        gateway's ``[DONE]`` goes out.

        A stream that ends before every choice it carried finished is truncated, even when it closed cleanly with
        ``[DONE]`` (an upstream that died mid-generation behind a proxy, a buggy server): it fails as a stream cut
        after its first byte does, so it is not cached nor counted as a success. A ``finish_reason`` on the last
        content chunk, or before a usage chunk, is a finished answer. With ``n`` > 1 every choice the stream
        carried must finish; choices it never carried are not counted (a provider that ignores ``n`` answers once).

        Raises:
            UpstreamUnavailable: the stream ended without ``[DONE]``, or before every choice finished.
        """
        if not saw_done:
            raise UpstreamUnavailable(f"upstream '{self._model}' ended the stream without [DONE]", backend=self._model)
        if not self.completed:
            unfinished = sorted(str(i) for i in self._seen - self._finished)
            which = f" (choice {', '.join(unfinished)})" if len(self._seen) > 1 else ""
            raise UpstreamUnavailable(
                f"upstream '{self._model}' ended the stream before the answer finished: no finish_reason{which}",
                backend=self._model,
            )


def _well_formed(choices: Any) -> bool:
    """Whether a chunk's ``choices`` has the shape the relay and the front doors read: a list of objects whose
    ``delta`` (if any) is an object, its ``content`` text, its ``tool_calls`` a list of objects whose ``function``
    names and arguments are text."""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        delta = choice.get("delta")
        if delta is None:
            continue
        if not isinstance(delta, dict) or not _text_or_none(delta.get("content")):
            return False
        calls = delta.get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list):
            return False
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(call, dict) or not isinstance(fn or {}, dict):
                return False
            if fn and not (_text_or_none(fn.get("name")) and _text_or_none(fn.get("arguments"))):
                return False
    return True


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _with_lone_surrogates(data: bytes) -> Any:
    """An event orjson refuses only for a lone UTF-16 surrogate escape (``"\\ud83d"``, half an emoji: some
    proxies split a pair across events; JSON allows it), parsed by the standard library with each lone half
    replaced by U+FFFD; None when it is not JSON at all."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return _replace_surrogates(value)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {k: _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


#: Where a reasoning model's reasoning travels (vLLM: ``reasoning_content``, newer versions ``reasoning``).
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: Fields of a chat message replayed in one delta after the role (what vLLM and OpenAI stream beside ``content``:
#: a refusal, a reasoning model's reasoning, a legacy function call).
_REPLAYED = ("content", "refusal", *_REASONING_FIELDS, "function_call")


def _chunk_base(body: dict[str, Any], model: str) -> dict[str, Any]:
    obj = "chat.completion.chunk" if body.get("object") == "chat.completion" else "text_completion"
    base = {
        "id": body.get("id") or "cmpl-cached",
        "object": obj,
        "created": body.get("created") or int(time.time()),
        "model": model,
    }
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]
    return base


def with_new_identity(body: dict[str, Any]) -> dict[str, Any]:
    """A cached completion served again: a copy with an ``id`` and ``created`` of its own (each answer's id is
    unique, as from the API, for clients that log or deduplicate by it); other bodies (embeddings) as they are."""
    if "id" not in body or body.get("object") not in ("chat.completion", "text_completion"):
        return body
    prefix = "chatcmpl" if body.get("object") == "chat.completion" else "cmpl"
    return {**body, "id": f"{prefix}-{secrets.token_hex(12)}", "created": int(time.time())}


def replay_chunks(body: dict[str, Any], model: str, include_usage: bool) -> Iterator[bytes]:
    """A complete response body as the SSE stream an upstream would have sent (for cached and held answers)."""
    base = _chunk_base(body, model)
    chat = base["object"] == "chat.completion.chunk"

    def chunk(idx: int, finish: Any = None, logprobs: Any = None, stop: Any = None, **fields: Any) -> bytes:
        choice = {"index": idx, **fields, "logprobs": logprobs, "finish_reason": finish}
        if stop is not None:  # vLLM's matched stop string: the Messages API reports it as stop_sequence
            choice["stop_reason"] = stop
        return frame(orjson.dumps({**base, "choices": [choice]}))

    for choice in body.get("choices") or []:
        idx = choice.get("index", 0)
        if not chat:
            yield chunk(
                idx,
                choice.get("finish_reason"),
                choice.get("logprobs"),
                choice.get("stop_reason"),
                text=choice.get("text", ""),
            )
            continue
        msg = choice.get("message") or {}
        yield chunk(idx, delta={"role": msg.get("role", "assistant"), "content": ""})
        delta = {k: msg[k] for k in _REPLAYED if msg.get(k)}
        if delta or choice.get("logprobs"):
            yield chunk(idx, logprobs=choice.get("logprobs"), delta=delta)
        for i, call in enumerate(msg.get("tool_calls") or []):
            call_delta = {"index": i, "id": call.get("id"), "type": call.get("type", "function")}
            yield chunk(idx, delta={"tool_calls": [{**call_delta, "function": call.get("function")}]})
        yield chunk(idx, choice.get("finish_reason"), stop=choice.get("stop_reason"), delta={})
    if include_usage and body.get("usage"):
        yield frame(orjson.dumps({**base, "choices": [], "usage": body["usage"]}))
    yield DONE


async def aiter_list(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    """An async view of a sync iterator of frames."""
    for item in items:
        yield item


def _reasoning(delta: dict[str, Any]) -> str | None:
    """A reasoning model's reasoning in a chunk's delta."""
    for name in _REASONING_FIELDS:
        value = delta.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def stream_error(chunk: dict[str, Any], backend: str) -> UpstreamUnavailable | None:
    """The failure an upstream reports inside a stream (``{"error": {...}}`` or ``{"object": "error", ...}``:
    vLLM sends one, then ``[DONE]``, over a 200), as the gateway's error, its message scrubbed; else None."""
    if chunk.get("object") == "error":
        error: Any = chunk
    elif "error" in chunk and "choices" not in chunk:
        error = chunk["error"]
    else:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    detail = str(message or "no message")
    return UpstreamUnavailable(
        f"upstream '{backend}' failed mid-stream: {scrub(detail)}", backend=backend, detail=detail
    )


class SpendCap:
    """Stops a stream before a chunk takes its running cost past the request's reservation against its key's
    budget: the reservation alone is not trusted (an upstream may ignore ``max_tokens``).

    Output so far counts as one token per chunk at least, or as the relayed text's tokens counted with the
    gateway's tokenizer, times ``margin`` (a local model's tokenizer makes more tokens of a text than cl100k_base:
    ``gateway.routing.LOCAL_TOKEN_MARGIN``), less what an ``echo`` request relays of its prompt (its prompt per
    answer, relayed as text, not generated). Four characters a token, the estimate before, counted code indented
    with long runs of spaces, or long words, at several times their tokens, and cut streams well within their
    reservation.
    """

    __slots__ = ("_allowance", "_cap", "_chunks", "_counter", "_margin", "_parts", "_price", "_prompt", "_tokens")

    def __init__(
        self, cap: Decimal, price: Price, ctx: RequestContext, counter: TokenCounter, *, margin: float = 1.0
    ) -> None:
        self._cap, self._price, self._prompt = cap, price, ctx.prompt_tokens_estimate
        self._counter, self._margin = counter, margin
        echo = ctx.body.get("echo") is True
        self._allowance = self._prompt * generated_per_prompt(ctx.body) if echo else 0
        self._chunks = 0
        self._tokens = 0
        self._parts = (0, 0)  # text and reasoning parts of the relay counted so far

    def check(self, relay: ChunkRelay) -> None:
        """Count the chunk ``relay`` has just transformed; raise before it goes out if it passes the cap.

        Raises:
            BudgetExceeded: the stream's cost so far passed the cap.
        """
        self._chunks += 1
        texts, reasoning = relay.text_parts, relay.reasoning_parts
        seen_texts, seen_reasoning = self._parts
        for part in (*texts[seen_texts:], *reasoning[seen_reasoning:]):
            self._tokens += self._counter.count(part)
        self._parts = (len(texts), len(reasoning))
        output = max(self._chunks, math.ceil(self._tokens * self._margin) - self._allowance)
        if self._price.cost(self._prompt, output) > self._cap:
            raise BudgetExceeded(
                f"The stream was stopped: its cost passed the ${self._cap:f} reserved for it against the key's budget.",
                code="budget_exceeded_mid_stream",
            )


#: At most this many opening events that carry nothing (a role, empty text) are held back before the first that
#: does: an upstream that fails among them fails before the client got a byte, and the next candidate answers.
MAX_HELD_EVENTS = 4


def _says_nothing(chunk: dict[str, Any]) -> bool:
    """A chunk with only an assistant role or empty text in its deltas (OpenAI's and vLLM's opening chunk): nothing
    the client would miss if the answer came from another model."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or chunk.get("usage"):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason") is not None or choice.get("logprobs"):
            return False
        delta = choice.get("delta")
        if not isinstance(delta, dict) or any(v not in (None, "", []) for k, v in delta.items() if k != "role"):
            return False
    return True


async def opening_events(events: AsyncIterator[bytes], backend: Backend) -> list[bytes]:
    """The stream's opening events, checked before any byte goes to the client: the first that carries something
    (text, a tool call, a finish reason, usage) and those before it that carry nothing (at most
    :data:`MAX_HELD_EVENTS` in all). An empty or invalid stream, or an error among them, is the backend's failure,
    so the next candidate can still answer."""
    held: list[bytes] = []
    while True:
        event = await anext(events, None)
        if event is None or event == b"[DONE]":
            raise UpstreamUnavailable(f"upstream '{backend.name}' sent an empty stream", backend=backend.name)
        try:
            chunk = orjson.loads(event)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UpstreamUnavailable(f"upstream '{backend.name}' sent an invalid stream event", backend=backend.name)
        failure = stream_error(chunk, backend.name)
        if failure is not None:
            raise failure
        held.append(event)
        if len(held) >= MAX_HELD_EVENTS or not _says_nothing(chunk):
            return held


async def close_quietly(stream: UpstreamStream) -> None:
    """Close an upstream stream, ignoring how it fails (the request's outcome is already known)."""
    with contextlib.suppress(UpstreamError, OSError, RuntimeError):
        await asyncio.shield(stream.aclose())
