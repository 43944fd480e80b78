"""Cache keys: a canonical hash of everything that can change the answer, within a tenant's namespace.

The key covers the endpoint, the namespace, the routing constraints that choose the answering model
(``policy``, ``min_quality``, and ``max_cost_usd`` and ``max_latency_ms`` when set) and the whole request body
except the fields that only shape the transport or identify the end user (:data:`NOT_IN_KEY`): so any
parameter, known today or added tomorrow, is part of the key unless listed there. ``stream`` and
``stream_options`` are not: a cached answer serves streaming and non-streaming clients alike. A key for a model
asked by name also holds the upstream model and server behind that name (``RequestContext.cache_scope``):
pointing the name at another model starts a new cache (vectors of two embedding models must never mix; a chat
client asking for ``m1`` gets the current ``m1``'s answers). A route's key does not: its answers come from
whichever candidate the route chose, and editing the candidates keeps the route's cache.

Canonical form: keys sorted at every level, ``null`` fields dropped at the top level and in messages
(the API treats them as absent),
integral floats written as integers (``0.0`` is ``0``), a few values equal to the API's defaults dropped,
``stop: "x"`` written as ``["x"]``, a message content that is a single text part written as a string, and
``max_completion_tokens`` read as ``max_tokens``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.context import RequestContext

#: Body fields that do not change the answer.
NOT_IN_KEY = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",  # OpenAI's successor to ``user``: who asked, not what
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",  # the provider's prompt-cache routing hint
        "prompt_cache_retention",
        "gateway",
    }
)

#: Values equal to the OpenAI API's documented defaults (dropped, so ``n: 1`` and no ``n`` share a key).
#: ``temperature`` and ``top_p`` are not here: vLLM may take their defaults from the model's config.
_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "logprobs": False,
    "echo": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "parallel_tool_calls": True,
}

_VERSION = b"gw-cache-v1"
_SEMANTIC_SLOT = "\x00<last user message>\x00"


def namespace(ctx: RequestContext, shared: bool, by_team: bool = True) -> str:
    """Whose entries these are: ``team:X`` (unless not ``by_team``), else ``key:Y``, else ``anonymous`` (or
    ``shared`` if configured)."""
    if shared:
        return "shared"
    if ctx.team and by_team:
        return f"team:{ctx.team}"
    if ctx.key_id:
        return f"key:{ctx.key_id}"
    return "anonymous"


def is_deterministic(body: dict[str, Any]) -> bool:
    """Greedy sampling (``temperature`` 0 or ``top_k`` 1) or a fixed ``seed``: the same request, the same answer."""
    temp = body.get("temperature")
    if isinstance(temp, int | float) and not isinstance(temp, bool) and temp == 0:
        return True
    if body.get("top_k") == 1:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def canonical(value: Any, drop_null: bool = True) -> Any:
    """``value`` with integral floats as ints and (if ``drop_null``) ``null`` fields dropped, recursively."""
    if isinstance(value, dict):
        return {k: canonical(v, drop_null) for k, v in value.items() if v is not None or not drop_null}
    if isinstance(value, list):
        return [canonical(v, drop_null) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _message(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return canonical(msg)
    out = canonical(msg)
    content = out.get("content")
    if isinstance(content, list) and len(content) == 1:
        part = content[0]
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            out["content"] = part["text"]
    return out


def canonical_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request body as it enters the key."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in NOT_IN_KEY or v is None:
            continue
        if k == "messages" and isinstance(v, list):
            out[k] = [_message(m) for m in v]
            continue
        out[k] = canonical(v, drop_null=False)  # inside tools and schemas, null can mean something
    if "max_completion_tokens" in out and "max_tokens" not in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    if out.get("stop") == []:
        del out["stop"]
    for k, default in _DEFAULTS.items():
        if k in out and out[k] == default and type(out[k]) is type(default):
            del out[k]
    return out


def digest(parts: dict[str, Any]) -> str:
    """A SHA-256 hex digest of ``parts`` in canonical JSON (sorted keys at every level)."""
    return hashlib.sha256(_VERSION + orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


#: A longer last message is matched exactly only: the embedding model reads 256 word pieces (~1,000-1,500
#: characters of English); past that, texts that differ only in their ends get one vector, and tokenizing a
#: megabyte-long prompt would hold the embedding worker for seconds.
SEMANTIC_MAX_CHARS = 2000


def semantic_text(endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """Split the canonical body into (the rest, the last user message's text) for the semantic cache.

    None when the request has nothing to embed: no user message, or one with non-text parts (an image
    changes the answer however similar the words are), or a completions prompt that is not one string; for
    ``echo`` (the answer holds the prompt itself, so a similar prompt's answer is never this one's); and for a
    text over :data:`SEMANTIC_MAX_CHARS`.
    """
    if body.get("echo"):
        return None
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > SEMANTIC_MAX_CHARS:
            return None
        return {**body, "prompt": _SEMANTIC_SLOT}, prompt
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if not isinstance(content, str) or not content.strip() or len(content) > SEMANTIC_MAX_CHARS:
                return None
            rest = [*messages[:i], {**msg, "content": _SEMANTIC_SLOT}, *messages[i + 1 :]]
            return {**body, "messages": rest}, content
    return None


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """Where a request's answer lives: its exact key, and for the semantic cache its bucket and text."""

    exact: str
    bucket: str | None = None
    text: str | None = None


def build_keys(ctx: RequestContext, *, shared: bool, semantic: bool, by_team: bool = True) -> CacheKeys:
    """The keys of ``ctx``'s request (``semantic``: also its vector bucket and the text to embed; ``shared`` and
    ``by_team``: see :func:`namespace`)."""
    body = canonical_body(ctx.body)
    c = ctx.constraints
    scope: dict[str, Any] = {
        "endpoint": ctx.endpoint,
        "namespace": namespace(ctx, shared, by_team),
        "policy": c.policy,
        "min_quality": c.min_quality,
    }
    # A request's cost or latency limit can make a route choose another model: its answer is not the
    # unconstrained request's. Only when set, so the keys of requests without them stay as they were.
    if c.max_cost_usd is not None:
        scope["max_cost_usd"] = str(c.max_cost_usd)
    if c.max_latency_ms is not None:
        scope["max_latency_ms"] = c.max_latency_ms
    if ctx.cache_scope is not None:
        scope["upstream"] = ctx.cache_scope
    exact = "e:" + digest({**scope, "body": body})
    if not semantic:
        return CacheKeys(exact)
    split = semantic_text(ctx.endpoint, body)
    if split is None:
        return CacheKeys(exact)
    rest, text = split
    return CacheKeys(exact, "vs:" + digest({**scope, "semantic": True, "body": rest}), text)
