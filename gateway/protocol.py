"""Pydantic models of the OpenAI request bodies, used to validate; the original dict is what is forwarded.

Validation catches what would otherwise fail later or upstream with a worse message (wrong types,
negative ``max_tokens``, empty ``messages``). Unknown fields are allowed (vendor extras pass through), except
``stream``/``stream_options`` on an embeddings request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from gateway.constraints import ConstraintFields
from gateway.errors import InvalidRequest, UpstreamUnavailable

#: Deepest JSON nesting accepted in a request body. orjson parses up to 1024 levels but serialises only
#: 254, and the body is serialised again for the upstream and the cache key.
MAX_JSON_DEPTH = 128

M = TypeVar("M", bound=BaseModel)
#: The numeric sampling fields are JSON numbers (an int or a float), never a string or a bool, as the OpenAI API
#: requires: a lax ``float`` would accept ``"0.5"`` or ``true`` and the original dict, string and all, would be
#: forwarded upstream (and ``"0"`` would not count as deterministic). ``StrictFloat`` accepts an int.
Temperature = Annotated[StrictFloat, Field(ge=0, le=2)]
UnitInterval = Annotated[StrictFloat, Field(ge=0, le=1)]
Penalty = Annotated[StrictFloat, Field(ge=-2, le=2)]
#: ``logit_bias``: token ids (JSON object keys, so strings of digits) to a bias in [-100, 100]
LogitBias = dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[StrictFloat, Field(ge=-100, le=100)]]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Open):
    """One chat message; content may be text, parts (vision), or null with tool calls."""

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None


class StreamOptions(_Open):
    """``stream_options`` of a streaming request."""

    include_usage: StrictBool | None = None


class InferenceRequest(_Open):
    """What every inference request body has."""

    model: StrictStr = Field(min_length=1)
    #: per-request routing constraints, also settable as x-gateway-* headers (``gateway.constraints``)
    gateway: ConstraintFields | None = None


class _Sampling(InferenceRequest):
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Temperature | None = None
    top_p: UnitInterval | None = None
    n: StrictInt | None = Field(None, ge=1, le=128)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: StrictStr | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    #: 0 with ``echo``: the prompt's log probabilities, nothing generated (vLLM's and the legacy API's way)
    max_tokens: StrictInt | None = Field(None, ge=0)
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    echo: StrictBool | None = None
    best_of: StrictInt | None = Field(None, ge=1, le=128)


class EmbeddingRequest(InferenceRequest):
    """``POST /v1/embeddings``: no ``stream`` (:func:`_refuse_streaming`)."""

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = None


def _param(loc: tuple[int | str, ...]) -> str:
    if "[key]" in loc:  # a mapping's bad key (the key follows the mapping): the mapping is the parameter
        loc = loc[: loc.index("[key]") - 1]
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in (
            "str",
            "list[str]",
            "list[int]",
            "list[list[int]]",
            "list[dict[str,any]]",
            "dict[str,any]",
        ):
            break  # union branch names add nothing for the client
        else:
            out += ("." if out else "") + item
    return out


def _check_chat(request: ChatCompletionRequest) -> None:
    """What the OpenAI API requires of a chat request beyond its fields' types: ``top_logprobs`` only with
    ``logprobs: true`` (vLLM refuses it too, a hosted model may not), and each message's fields."""
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is set.",
            param="top_logprobs",
            code="invalid_value",
        )
    _require_message_fields(request)


def _require_message_fields(request: ChatCompletionRequest) -> None:
    """What the OpenAI API requires of each message beyond its types: ``content``, except on an assistant message
    that carries tool calls (or a function call, or a refusal) instead; ``tool_call_id`` on a ``tool`` message;
    ``text`` on a text part. A backend may accept a message without them and answer something else."""
    for i, m in enumerate(request.messages):
        if m.role == "tool" and m.tool_call_id is None:
            _missing(f"messages[{i}].tool_call_id", "a 'tool' message answers a tool call by its id")
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    _missing(f"messages[{i}].content[{j}].text", "a text part needs its text")
        if m.content is not None:
            continue
        extra = m.model_extra or {}
        if m.role == "assistant" and (m.tool_calls or extra.get("function_call") or extra.get("refusal")):
            continue
        _missing(f"messages[{i}].content", f"a '{m.role}' message needs content")


def _refuse_streaming(body: dict[str, Any]) -> None:
    """The embeddings API does not stream (OpenAI answers 400 to ``stream``): ``stream`` other than ``false`` or
    ``null``, or ``stream_options`` other than ``null``, is a 400 naming it, so that the pipeline, which reads
    ``stream`` from this body, never streams an embeddings request. ``stream: false``/``null`` and
    ``stream_options: null`` ask for what the API does anyway (some clients send them on every call): accepted,
    and dropped from ``body`` (the dict forwarded), so that the upstream never sees them."""
    for name in ("stream", "stream_options"):
        if name not in body:
            continue
        value = body[name]
        if value is None or (name == "stream" and value is False):
            del body[name]
            continue
        raise InvalidRequest(
            f"Unsupported parameter: '{name}' is not supported by the embeddings API, which does not stream.",
            param=name,
            code="unsupported_parameter",
        )


def _missing(param: str | None, why: str | None = None) -> NoReturn:
    """The 400 OpenAI answers for a missing field (code ``missing_required_parameter``); ``why`` when the field is
    required only in context."""
    reason = f" ({why})" if why else ""
    raise InvalidRequest(
        f"Missing required parameter: '{param}'{reason}.", param=param, code="missing_required_parameter"
    )


def required_str(obj: dict[str, Any], key: str, where: str, *, empty: bool = True) -> str:
    """``obj[key]``, a string (a non-empty one unless ``empty``), or the 400 naming ``where.key``: for the fields
    of the Messages and Responses APIs' items that a translation to chat needs."""
    value = obj.get(key)
    if not isinstance(value, str) or not (value or empty):
        _missing(f"{where}.{key}")
    return value


def validate(model: type[M], body: dict[str, Any]) -> M:
    """Validate ``body``; raise :class:`InvalidRequest` naming the first bad field. An embeddings body loses a
    ``stream: false`` (:func:`_refuse_streaming`)."""
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
    else:
        if isinstance(request, ChatCompletionRequest):
            _check_chat(request)
        elif isinstance(request, EmbeddingRequest):
            _refuse_streaming(body)
        return request
    param = _param(tuple(err["loc"])) or None
    if err["type"] == "missing":
        _missing(param)
    message = f"Invalid value for '{param}': {err['msg']}." if param else str(err["msg"])
    raise InvalidRequest(message, param=param, code="invalid_value")


def prompt_count(endpoint: str, body: dict[str, Any]) -> int:
    """How many prompts a request carries: a completions request may send a list (each gets ``n`` answers)."""
    prompt = body.get("prompt") if endpoint == "completions" else None
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """The completion tokens a request allows per answer: ``max_completion_tokens``, else ``max_tokens`` (None when
    it sets neither as a number from 0)."""
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None


def generated_per_prompt(body: dict[str, Any]) -> int:
    """How many answers the upstream generates (and bills) per prompt: ``n``, or ``best_of`` when larger (a
    completions request's candidates, of which it returns the ``n`` best)."""
    counts = [v for v in (body.get("n"), body.get("best_of")) if isinstance(v, int) and not isinstance(v, bool)]
    return max([1, *counts])


def check_fan_out(endpoint: str, body: dict[str, Any], max_n: int, max_prompts: int) -> None:
    """Refuse a request asking for more completions than the server allows (``server.max_n`` per prompt,
    ``server.max_prompts`` prompts): each is a 400 naming the field."""
    for name in ("n", "best_of"):
        value = body.get(name)
        if isinstance(value, int) and value > max_n:
            message = f"Invalid value for '{name}': at most {max_n} on this gateway, got {value}."
            raise InvalidRequest(message, param=name)
    count = prompt_count(endpoint, body)
    if count > max_prompts:
        raise InvalidRequest(
            f"Invalid value for 'prompt': at most {max_prompts} prompts per request on this gateway, got {count}.",
            param="prompt",
        )


def load_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; 400 (``invalid_json``) for anything else or for absurd nesting."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.", code="invalid_json")
    return body


def _nested_deeper_than(body: dict[str, Any], limit: int) -> bool:
    """Whether ``body`` nests lists/objects more than ``limit`` levels (visits containers only)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def choice_text(choice: dict[str, Any]) -> str:
    """The text of one choice of a completion: its content and tool calls, or a legacy completion's text."""
    msg = choice.get("message")
    if isinstance(msg, dict):
        parts = [msg.get("content") or ""]
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
        return "".join(p for p in parts if isinstance(p, str))
    text = choice.get("text")
    return text if isinstance(text, str) else ""


#: Finish reasons that say a generation failed rather than ended: vLLM's ``abort`` (its engine dropped the
#: request) and the ``error`` of OpenAI-compatible routers. The answer is cut: never served as complete or cached.
FAILED_FINISH_REASONS = frozenset({"abort", "error"})


def check_not_cut(body: dict[str, Any], model: str) -> None:
    """Raise :class:`UpstreamUnavailable` when a choice of ``model``'s complete answer ended with a finish reason
    that says its generation failed (:data:`FAILED_FINISH_REASONS`)."""
    for c in body.get("choices") or []:
        if isinstance(c, dict) and c.get("finish_reason") in FAILED_FINISH_REASONS:
            raise UpstreamUnavailable(
                f"upstream '{model}' ended the generation with finish_reason '{c['finish_reason']}'", backend=model
            )


def first_finish_reason(body: dict[str, Any]) -> str | None:
    """The first choice's ``finish_reason`` that is set, if any."""
    for c in body.get("choices") or []:
        if isinstance(c, dict) and c.get("finish_reason"):
            return str(c["finish_reason"])
    return None
