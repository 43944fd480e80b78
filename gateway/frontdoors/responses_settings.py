"""The Responses API's settings that chat completions take too, and what an answer reports of them.

``text.verbosity`` (chat's ``verbosity``), ``prompt_cache_key``, ``safety_identifier`` and ``service_tier`` are
forwarded; the response echoes them (``service_tier`` as the upstream reports the tier that served it, else as asked).
``include: ["message.output_text.logprobs"]`` asks for chat's ``logprobs: true`` (with ``top_logprobs``, when given,
as chat's): each ``output_text`` part then carries the upstream's log probabilities in the Responses format
(``token``, ``bytes``, ``logprob``, ``top_logprobs``; a stream's text events carry them without ``bytes``, as
OpenAI's do). ``top_logprobs`` without that ``include`` is echoed and asks for nothing, as on OpenAI's API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.frontdoors.responses import ResponsesBody

#: The ``include`` value that asks for the answer's log probabilities.
LOGPROBS_INCLUDE = "message.output_text.logprobs"

#: Settings forwarded as they are, and echoed in the response.
FORWARDED = ("prompt_cache_key", "safety_identifier", "service_tier")


def wants_logprobs(req: ResponsesBody) -> bool:
    """Whether the request asked for its answer's log probabilities."""
    return req.include is not None and LOGPROBS_INCLUDE in req.include


def add_settings(req: ResponsesBody, body: dict[str, Any]) -> None:
    """The request's settings into the chat body ``body``."""
    if req.text is not None and req.text.verbosity is not None:
        body["verbosity"] = req.text.verbosity
    for name in FORWARDED:
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if wants_logprobs(req):
        body["logprobs"] = True
        if req.top_logprobs is not None:
            body["top_logprobs"] = req.top_logprobs


def echo(req: ResponsesBody, response: dict[str, Any]) -> None:
    """The request's settings into its response object (``text`` already set)."""
    if req.text is not None and req.text.verbosity is not None:
        response["text"]["verbosity"] = req.text.verbosity
    for name in (*FORWARDED, "top_logprobs"):
        value = getattr(req, name)
        if value is not None:
            response[name] = value


def served_tier(response: dict[str, Any], tier: Any) -> None:
    """The service tier the upstream says served the answer (chat's ``service_tier``), if it says one."""
    if isinstance(tier, str) and tier:
        response["service_tier"] = tier


def chat_logprobs(choice: dict[str, Any]) -> Any:
    """A chat choice's (or a chunk choice's) token log probabilities: ``logprobs.content``."""
    logprobs = choice.get("logprobs")
    return logprobs.get("content") if isinstance(logprobs, dict) else None


def output_logprobs(content: Any) -> list[dict[str, Any]]:
    """Chat's ``logprobs.content`` as an ``output_text`` part's ``logprobs``: each token with its ``bytes`` (its
    UTF-8 encoding where the upstream sent none), ``logprob`` and ``top_logprobs`` (the same three each)."""
    out: list[dict[str, Any]] = []
    for item in content if isinstance(content, list) else []:
        entry = _entry(item)
        if entry is None:
            continue
        tops = item.get("top_logprobs")
        alternatives = [_entry(top) for top in tops] if isinstance(tops, list) else []
        entry["top_logprobs"] = [top for top in alternatives if top is not None]
        out.append(entry)
    return out


def event_logprobs(logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`output_logprobs` as the text events of a stream carry them (``response.output_text.delta`` and
    ``.done``): without ``bytes``."""
    return [
        {
            "token": lp["token"],
            "logprob": lp["logprob"],
            "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]} for top in lp["top_logprobs"]],
        }
        for lp in logprobs
    ]


def _entry(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    token, logprob = item.get("token"), item.get("logprob")
    if not isinstance(token, str) or not isinstance(logprob, int | float) or isinstance(logprob, bool):
        return None
    raw = item.get("bytes")
    ok = isinstance(raw, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in raw)
    return {"token": token, "bytes": raw if ok else list(token.encode()), "logprob": float(logprob)}
