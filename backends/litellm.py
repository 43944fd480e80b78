"""Hosted providers that do not speak the OpenAI API (Anthropic, Bedrock, Vertex...) via ``litellm``.

``litellm`` is imported when the first such backend is built (it takes seconds to import), never at
gateway start-up otherwise. Its responses are OpenAI-shaped; they are turned into plain dicts and SSE
payloads so the pipeline treats this backend like any other, and it counts its requests in flight
(``stats.in_flight``) as the HTTP backends do.

Where a client or the bill can tell, it behaves as the HTTP backends do:

* one call sends one request: litellm's retries and those of the SDK under it are off (``num_retries=0``,
  ``max_retries=0``), so a POST that may have reached the provider is never sent again behind the
  gateway's back (the pipeline's attempt loop decides);
* the model's ``timeouts`` bound the call: ``connect``, ``first_byte`` (a complete answer's silences, a
  stream's start), ``between_chunks`` (silence inside a stream) and ``total`` (the whole call, a stream's
  last chunk included);
* a provider's HTTP error reaches the client as through the HTTP backend
  (:func:`backends.openai.rejected_from_response`): its message scrubbed of addresses and paths, the API
  key cut out, a 429's ``Retry-After`` relayed; litellm's raw text, less the key, goes to ``detail`` (the
  gateway's log) only.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from backends.base import UpstreamResponse
from backends.openai import rejected_from_response
from backends.state import LiveStats
from gateway.config import ModelSpec
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    import openai

#: How litellm dresses a provider's message, layer on layer:
#: ``litellm.MidStreamFallbackError: litellm.APIConnectionError: APIConnectionError: OpenAIException - ``.
_LITELLM_PREFIX = re.compile(r"^(?:(?:litellm\.)?\w+(?:Error|Exception)(?::|\s+-)\s*)+")
#: The longest raw error text kept for the log.
_MAX_DETAIL = 2000


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` is (or wraps) a failure to connect: then nothing reached the provider."""
    import httpx

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _rejected(exc: openai.APIStatusError, backend: str, secret: str | None) -> UpstreamRejected:
    """The provider's HTTP error, translated as the HTTP backend translates one."""
    import httpx

    response: Any = getattr(exc, "response", None)  # the provider's, or a stand-in litellm made up
    if not isinstance(response, httpx.Response):
        response = httpx.Response(exc.status_code)
    try:
        content = response.content
    except httpx.ResponseNotRead:  # a stream's error response: its body was never read
        content = b""
    raw = f"HTTP {exc.status_code}: {type(exc).__name__}: {exc}" + (f" | body: {content[:1000]!r}" if content else "")
    try:
        parsed = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        parsed = None
    if not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict | str)):
        # No OpenAI-style error body (a provider's own shape, or none at all): litellm's message, undressed.
        message = _LITELLM_PREFIX.sub("", getattr(exc, "message", None) or str(exc))
        content = orjson.dumps({"error": {"message": message}})
    err = rejected_from_response(exc.status_code, content, response.headers, backend, secret)
    err.detail = _redact(raw[:_MAX_DETAIL], secret)  # the log's copy: raw, less the key
    return err


def _translate(exc: BaseException, backend: str, secret: str | None) -> UpstreamError:
    """Map litellm's (OpenAI-SDK-derived) exceptions to the gateway's error tree. ``secret``: the backend's
    API key, cut out of everything (some providers echo the credentials they were sent)."""
    import openai

    detail = _redact(f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL], secret)
    reached = not _never_sent(exc)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"upstream '{backend}' timed out", backend=backend, detail=detail, reached=reached)
    if isinstance(exc, openai.APIStatusError) and reached:  # litellm reports a refused connection as a 500
        return _rejected(exc, backend, secret)
    return UpstreamUnavailable(f"upstream '{backend}' unreachable", backend=backend, detail=detail, reached=reached)


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    dumped: dict[str, Any] = obj.model_dump(exclude_none=False)
    return dumped


class _LiteLLMStream:
    """An open litellm stream; each chunk must come within ``between_chunks`` and the last before the
    call's ``deadline`` (the event loop's clock)."""

    def __init__(self, iterator: Any, backend: LiteLLMBackend, deadline: float) -> None:
        self._iterator = iterator
        self._backend = backend.name
        self._secret = backend.spec.api_key()
        self._between_chunks = backend.spec.timeouts.between_chunks
        self._deadline = deadline
        self._stats: LiveStats | None = backend.stats  # its in-flight count drops (once) when the stream is closed
        self.replica = "litellm"

    async def events(self) -> AsyncIterator[bytes]:
        errors = _error_types()
        loop = asyncio.get_running_loop()
        chunks = self._iterator.__aiter__()
        while True:
            stall_at = loop.time() + self._between_chunks
            try:
                async with asyncio.timeout_at(min(stall_at, self._deadline)):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                if self._deadline <= stall_at:
                    raise UpstreamTimeout(
                        f"upstream '{self._backend}' exceeded its total timeout (stream)", backend=self._backend
                    ) from None
                raise UpstreamTimeout(f"upstream '{self._backend}' stream stalled", backend=self._backend) from None
            except errors as exc:
                raise _translate(exc, self._backend, self._secret) from None
            yield orjson.dumps(_dump(chunk))
        yield b"[DONE]"

    async def aclose(self) -> None:
        stats, self._stats = self._stats, None
        if stats is None:
            return
        try:
            close = getattr(self._iterator, "aclose", None)
            if close is not None:
                await close()
        finally:
            stats.in_flight -= 1


def _error_types() -> tuple[type[BaseException], ...]:
    import openai

    return (openai.OpenAIError,)


#: What a client's body may pass on to litellm: OpenAI's chat parameters and a few providers' sampling extras.
#: Nothing else: litellm takes the destination, the credentials and its own behaviour from the same keyword
#: arguments (``api_base``, ``base_url``, ``api_key``, ``extra_headers``, ``mock_response``...), so an unfiltered
#: body could send the provider's key to a host of the client's choosing.
CLIENT_PARAMS = frozenset(
    {
        "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
        "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop", "stream",
        "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "user",
        "functions", "function_call", "reasoning_effort", "modalities", "audio", "prediction",
        "web_search_options", "top_k", "thinking",
    }
)  # fmt: skip
#: Newer OpenAI parameters the Responses door forwards (``text.verbosity``, ...): passed on only to a model litellm
#: lists them for, since litellm refuses a request with a parameter the provider does not take (a 400 before any
#: call), and clients send them by default for any model (Codex's ``prompt_cache_key``).
NEWER_PARAMS = frozenset({"verbosity", "prompt_cache_key", "safety_identifier", "service_tier"})


class LiteLLMBackend:
    """A model reached through ``litellm.acompletion`` (``backend: litellm``)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.stats = LiveStats()
        # litellm fetches its price map from the network at import unless told to use the bundled copy.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        self._litellm = importlib.import_module("litellm")
        self._params = CLIENT_PARAMS | self._supported(NEWER_PARAMS)
        import httpx  # loaded with litellm

        t = spec.timeouts
        # Per read and per connection attempt; asyncio bounds first_byte, between_chunks and total exactly.
        self._timeout = httpx.Timeout(t.first_byte, connect=t.connect)
        self._stream_timeout = httpx.Timeout(max(t.first_byte, t.between_chunks), connect=t.connect)

    def _supported(self, names: frozenset[str]) -> frozenset[str]:
        """Those of ``names`` that litellm says this model's provider takes (none when it cannot tell)."""
        litellm = self._litellm
        try:
            model, provider, *_ = litellm.get_llm_provider(self.spec.upstream_name)
            supported = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider) or []
        except litellm.exceptions.BadRequestError:  # a model name litellm cannot place: its call will say so
            return frozenset()
        return names & frozenset(supported)

    def _kwargs(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k in self._params}
        kwargs["model"] = self.spec.upstream_name
        if self.spec.base_url:
            kwargs["api_base"] = self.spec.base_url
        key = self.spec.api_key()
        if key:
            kwargs["api_key"] = key
        kwargs["timeout"] = kwargs["stream_timeout"] = self._stream_timeout if stream else self._timeout
        # One call, one request: the gateway's attempt loop alone decides what is sent again, and where.
        kwargs["num_retries"] = 0  # litellm's own retry wrapper
        kwargs["max_retries"] = 0  # the provider SDK's, under it
        if stream:
            kwargs["stream"] = True
        return kwargs

    def _only_chat(self, path: str) -> None:
        if path != "/chat/completions":
            raise UpstreamRejected(
                f"model '{self.name}' (litellm) serves chat completions only",
                upstream_status=400,
                backend=self.name,
            )

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        self._only_chat(path)
        kwargs = self._kwargs(body, stream=False)
        self.stats.in_flight += 1
        try:
            async with asyncio.timeout(self.spec.timeouts.total):
                result = await self._litellm.acompletion(**kwargs)
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{self.name}' exceeded its total timeout (response)", backend=self.name
            ) from None
        except _error_types() as exc:
            raise _translate(exc, self.name, kwargs.get("api_key")) from None
        finally:
            self.stats.in_flight -= 1
        return UpstreamResponse(status=200, body=_dump(result), replica="litellm")

    async def open_stream(self, path: str, body: dict[str, Any]) -> _LiteLLMStream:
        self._only_chat(path)
        kwargs = self._kwargs(body, stream=True)
        t = self.spec.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total
        self.stats.in_flight += 1  # until the stream is closed, or now if none is returned
        try:
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + t.first_byte)):
                    iterator = await self._litellm.acompletion(**kwargs)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"upstream '{self.name}' did not start its stream in time", backend=self.name
                ) from None
            except _error_types() as exc:
                raise _translate(exc, self.name, kwargs.get("api_key")) from None
        except BaseException:
            self.stats.in_flight -= 1
            raise
        return _LiteLLMStream(iterator, self, deadline)

    async def check_health(self) -> bool:
        # Hosted providers have no cheap, uniform health endpoint; the breaker tracks real failures.
        return self.stats.healthy

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
