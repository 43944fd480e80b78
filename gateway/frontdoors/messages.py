"""The Anthropic Messages API (``POST /v1/messages``) translated to chat completions and back.

Supported: ``system`` (a string or text blocks), ``messages`` with text, image, ``tool_use`` and
``tool_result`` blocks, custom ``tools`` and ``tool_choice`` (``auto``, ``any``, ``tool``, ``none``,
``disable_parallel_tool_use``; dropped without tools), ``max_tokens`` (chat's ``max_completion_tokens``),
``stop_sequences`` (at most 4, as chat APIs take), ``temperature``, ``top_p``, ``top_k`` (forwarded: vLLM honours it),
``metadata.user_id``, ``output_config`` (and the structured-outputs beta's ``output_format``), ``thinking`` (checked as
Anthropic checks it and not forwarded: chat APIs have no thinking budget; the upstream's reasoning, where it reports
it, comes back as ``thinking`` blocks). Server tools, documents, MCP servers, containers and message threads are
refused with a 400 naming the field. Errors use Anthropic's shape.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from gateway.context import usage_tokens
from gateway.errors import (
    AllCandidatesFailed,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.frontdoors.chunks import reasoning_of, usage_detail
from gateway.frontdoors.strict import held_to
from gateway.protocol import UnitInterval, required_str, validate

#: Anthropic's error ``type`` for each HTTP status the gateway answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: Upstream statuses that say it is out of capacity for now: answered as Anthropic's own overload (529).
_OVERLOADED = frozenset({503, 529})

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

#: The most ``stop`` strings OpenAI's chat API takes (vLLM takes more; a request must not depend on the route).
MAX_STOP_SEQUENCES = 4

#: ``thinking.type`` values (Anthropic's); all but ``disabled`` show the upstream's reasoning (:func:`shows_thinking`).
THINKING_TYPES = ("enabled", "adaptive", "between_tools", "disabled")
#: The fields each ``thinking.type`` takes.
_THINKING_FIELDS = {
    "enabled": {"type", "budget_tokens", "display"},
    "adaptive": {"type", "display"},
    "between_tools": {"type"},
    "disabled": {"type"},
}
#: The smallest ``thinking.budget_tokens`` Anthropic takes, and the smallest ``top_p`` it takes with thinking on.
MIN_THINKING_BUDGET = 1024
MIN_THINKING_TOP_P = 0.95
_UNSUPPORTED = {
    "mcp_servers": "MCP servers are not supported by this gateway.",
    "container": "Containers are not supported by this gateway.",
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputMessage(_Open):
    """One turn of ``messages``."""

    role: Literal["user", "assistant"]
    content: StrictStr | list[dict[str, Any]]


class Metadata(_Open):
    """``metadata``."""

    user_id: StrictStr | None = None


class CountTokensRequest(_Open):
    """``POST /v1/messages/count_tokens``: a Messages request whose ``max_tokens`` may be left out."""

    model: StrictStr = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    system: StrictStr | list[dict[str, Any]] | None = None
    stop_sequences: list[StrictStr] | None = None
    # JSON numbers, as Anthropic requires: a lax float took "0.5" or true and forwarded a float
    temperature: UnitInterval | None = None
    top_p: UnitInterval | None = None
    top_k: StrictInt | None = Field(None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: Metadata | None = None
    stream: StrictBool | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's spelling of output_config.format
    gateway: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: StrictInt = Field(ge=1)


class ThreadUnsupported(InvalidRequest):
    """A message thread (``thread``: the server keeping the conversation between turns), which this gateway does not
    keep. Its 400 carries Anthropic's ``error.details`` (``thread_unsupported_request``): the SDK's tool runner then
    sends the whole history without a thread, as it does for any server that cannot thread a request."""

    default_code = "thread_unsupported_request"
    details: ClassVar[dict[str, Any]] = {"error_code": "thread_unsupported_request", "unsupported": ["thread"]}


def new_id(prefix: str = "msg") -> str:
    """An id in Anthropic's style (``msg_…``, ``toolu_…``)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def parse_request(body: dict[str, Any], *, count_only: bool = False) -> CountTokensRequest:
    """Validate a Messages request body (``max_tokens`` required unless ``count_only``); 400 naming the first
    bad or unsupported field."""
    for name, message in _UNSUPPORTED.items():
        if body.get(name):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    if body.get("thread") is not None:
        raise ThreadUnsupported(
            "Message threads are not supported by this gateway: send the whole conversation in messages.",
            param="thread",
        )
    req = validate(CountTokensRequest if count_only else MessagesRequest, body)
    if req.thinking is not None:
        _check_thinking(req)
    if req.stop_sequences is not None and len(req.stop_sequences) > MAX_STOP_SEQUENCES:
        # chat APIs take at most 4 (OpenAI's refuses more; vLLM takes them): cutting the list would change where
        # the answer stops, and forwarding it would work or fail depending on the model a route picked
        raise InvalidRequest(
            f"stop_sequences: at most {MAX_STOP_SEQUENCES} stop sequences are supported by this gateway "
            f"(got {len(req.stop_sequences)}).",
            param="stop_sequences",
        )
    return req


def _check_thinking(req: CountTokensRequest) -> None:
    """``thinking`` checked as Anthropic checks it (a client that breaks its rules fails here as it would there): a
    known ``type`` with only its own fields; for ``enabled`` a ``budget_tokens`` of at least 1,024 and below
    ``max_tokens``; and with thinking on (``enabled``, ``adaptive``) no ``temperature`` but 1, no ``top_k``, no
    ``top_p`` below 0.95 and no forced tool (``tool_choice`` ``any`` or ``tool``)."""
    thinking = req.thinking
    assert thinking is not None
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise InvalidRequest(f"thinking.type: expected one of {', '.join(THINKING_TYPES)}.", param="thinking.type")
    extra = sorted(set(thinking) - _THINKING_FIELDS[kind])
    if extra:
        name = extra[0]
        raise InvalidRequest(f"thinking.{name}: not a field of thinking of type '{kind}'.", param=f"thinking.{name}")
    if thinking.get("display") not in (None, "summarized", "omitted"):
        raise InvalidRequest("thinking.display: expected 'summarized' or 'omitted'.", param="thinking.display")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
            raise InvalidRequest(
                f"thinking.budget_tokens: expected an integer of at least {MIN_THINKING_BUDGET}.",
                param="thinking.budget_tokens",
            )
        max_tokens = getattr(req, "max_tokens", None)  # count_tokens takes none
        if max_tokens is not None and budget >= max_tokens:
            raise InvalidRequest("`max_tokens` must be greater than `thinking.budget_tokens`.", param="max_tokens")
    if kind not in ("enabled", "adaptive"):
        return
    if req.temperature is not None and req.temperature != 1:
        raise InvalidRequest("`temperature` may only be set to 1 when thinking is enabled.", param="temperature")
    if req.top_k is not None:
        raise InvalidRequest("`top_k` may not be set when thinking is enabled.", param="top_k")
    if req.top_p is not None and req.top_p < MIN_THINKING_TOP_P:
        raise InvalidRequest(
            f"`top_p` must be between {MIN_THINKING_TOP_P} and 1 when thinking is enabled.", param="top_p"
        )
    if req.tool_choice is not None and req.tool_choice.get("type") in ("any", "tool"):
        raise InvalidRequest("Thinking may not be enabled when tool_choice forces tool use.", param="tool_choice")


def shows_thinking(req: CountTokensRequest) -> bool:
    """Whether the answer carries the model's reasoning, where the upstream reports it, as ``thinking`` blocks."""
    thinking = req.thinking
    return thinking is not None and thinking.get("type") != "disabled" and thinking.get("display") != "omitted"


def _text_of(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    texts = []
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"Expected text blocks in '{where}'.", param=f"{where}[{i}]")
        texts.append(block["text"])
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str) or not data:
            raise InvalidRequest(
                f"An image's base64 source needs 'media_type' and 'data' strings in '{where}'.", param=f"{where}.source"
            )
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest(f"Unsupported image source in '{where}'.", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn's blocks as chat messages: one ``tool`` message per tool result, then the rest."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type")
        at = f"{where}[{i}]"
        if kind == "text":
            parts.append({"type": "text", "text": required_str(block, "text", at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            call_id = required_str(block, "tool_use_id", at)
            text, images = _result_content(block.get("content"), f"{at}.content")
            parts.extend(images)  # a chat tool message holds text only: its images follow in the user message
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            raise _unsupported_block(kind, at)
    if parts:
        plain = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if plain else parts})
    return out


def _result_content(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """A ``tool_result``'s text, and its images as chat parts; another kind of block is refused (400)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{where}'.", param=where)
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(required_str(block, "text", at))
        elif kind == "image":
            images.append(_image(block, at))
        else:
            raise _unsupported_block(kind, at)
    return "\n".join(texts), images


def _assistant_turn(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type")
        at = f"{where}[{i}]"
        if kind == "text":
            texts.append(required_str(block, "text", at))
        elif kind == "tool_use":
            # id and name are required by the Messages API; a chat backend would get an id of null
            call_id, name = required_str(block, "id", at, empty=False), required_str(block, "name", at, empty=False)
            if not isinstance(block.get("input", {}), dict):
                raise InvalidRequest(f"Invalid value for '{at}.input': expected an object.", param=f"{at}.input")
            # as written: escaping non-ASCII (json's default) made a CJK argument ~6x the tokens
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"), ensure_ascii=False)
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # another model's reasoning, replayed: nothing a chat backend can take
        else:
            raise _unsupported_block(kind, at)
    # A turn of thinking alone (a reasoning model that used its max_tokens thinking) stays an (empty) assistant turn.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _unsupported_block(kind: Any, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"Content blocks of type '{kind}' are not supported by this gateway.",
        param=f"{where}.type",
        code="unsupported_parameter",
    )


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"Tools of type '{tool.get('type')}' are not supported by this gateway; only custom tools are.",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        if tool.get("strict") is True:  # strict tool use: arguments held to the schema
            fn["parameters"], fn["strict"] = held_to(fn["parameters"])
        elif tool.get("strict") is False:
            fn["strict"] = False
        out.append({"type": "function", "function": fn})
    return out


_EFFORTS = ("low", "medium", "high")


def _output_config(config: dict[str, Any], body: dict[str, Any], legacy: dict[str, Any] | None) -> None:
    """``output_config`` (structured outputs, effort) as chat's ``response_format`` and ``reasoning_effort``;
    anything else in it is a 400 rather than silently unconstrained output. ``legacy``: the top-level
    ``output_format`` of the structured-outputs beta, which Anthropic still takes while clients move to
    ``output_config.format`` (older SDKs and frameworks send it): the same, and a 400 with both."""
    for key in config:
        if key not in ("format", "effort"):
            raise InvalidRequest(
                f"output_config.{key} is not supported by this gateway.",
                param=f"output_config.{key}",
                code="unsupported_parameter",
            )
    fmt, where = config.get("format"), "output_config.format"
    if legacy is not None:
        if fmt is not None:
            raise InvalidRequest(
                "output_format is the deprecated spelling of output_config.format: send one of them.",
                param="output_format",
            )
        fmt, where = legacy, "output_format"
    if fmt is not None:
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(schema, dict):
            raise InvalidRequest(f"{where} must be {{'type': 'json_schema', 'schema': {{...}}}}.", param=where)
        schema, strict = held_to(schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": strict},
        }
    effort = config.get("effort")
    if effort is not None:
        if effort not in _EFFORTS:
            raise InvalidRequest(
                f"output_config.effort must be one of {', '.join(_EFFORTS)}.", param="output_config.effort"
            )
        body["reasoning_effort"] = effort


def _tool_choice(choice: dict[str, Any], body: dict[str, Any]) -> None:
    """``tool_choice`` as chat's: checked either way, and sent only with tools (chat APIs refuse it without;
    vLLM and OpenAI do)."""
    kind = choice.get("type")
    chat: str | dict[str, Any]
    if kind == "auto":
        chat = "auto"
    elif kind == "any":
        chat = "required"
    elif kind == "none":
        chat = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(f"Invalid value for 'tool_choice.type': {kind!r}.", param="tool_choice.type")
    if "tools" not in body:
        return
    body["tool_choice"] = chat
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


def to_chat(req: CountTokensRequest) -> dict[str, Any]:
    """The chat-completions body for ``req``."""
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _text_of(req.system, "system")})
    for i, turn in enumerate(req.messages):
        where = f"messages[{i}].content"
        if isinstance(turn.content, str):
            messages.append({"role": turn.role, "content": turn.content})
        elif turn.role == "user":
            messages.extend(_user_turn(turn.content, where))
        else:
            messages.append(_assistant_turn(turn.content, where))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.max_tokens is not None:
        # ``max_completion_tokens``, as the Responses door sends: reasoning models (gpt-5, o-series) refuse
        # ``max_tokens``, and ``output_config.effort`` asks for one; the gateway reads either as the limit.
        body["max_completion_tokens"] = req.max_tokens
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice is not None:
        _tool_choice(req.tool_choice, body)
    if req.output_config is not None or req.output_format is not None:
        _output_config(req.output_config or {}, body, req.output_format)
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    for name in ("temperature", "top_p", "top_k"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id
    if req.gateway is not None:
        body["gateway"] = req.gateway
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def stop_reason(
    finish_reason: str | None,
    matched: Any,
    stop_sequences: list[str] | None,
    *,
    called: bool = False,
    refused: bool = False,
) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat finish reason (and vLLM's ``stop_reason``:
    the stop string that matched, if any); ``called``: the answer holds tool calls (a call forced by name ends
    with ``stop`` on OpenAI and vLLM, where the Messages API says ``tool_use``, what agent loops test);
    ``refused``: the model declined (chat's ``refusal``)."""
    if refused:
        return "refusal", None
    if called and finish_reason in (None, "stop"):
        return "tool_use", None
    if finish_reason == "stop" and isinstance(matched, str) and matched in (stop_sequences or []):
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def thinking_block(text: str) -> dict[str, Any]:
    """A ``thinking`` block holding the upstream's reasoning ``text`` (its ``signature`` empty: no Anthropic model wrote
    it; sent back in a later turn, it is dropped like every replayed thinking block)."""
    return {"type": "thinking", "thinking": text, "signature": ""}


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as ``tool_use.input`` (an object, as Anthropic requires)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def usage_of(usage: dict[str, Any], prompt_estimate: int = 0) -> dict[str, Any]:
    """A chat ``usage`` as Anthropic's (``prompt_estimate`` where it has no prompt count): the prompt tokens read
    from the upstream's prompt cache (OpenAI's ``prompt_tokens_details.cached_tokens``) are Anthropic's
    ``cache_read_input_tokens`` and those written to it (``prompt_tokens_details.cache_write_tokens``) its
    ``cache_creation_input_tokens``, each apart from ``input_tokens`` (Anthropic's three add up to the prompt)."""
    prompt = usage_tokens(usage.get("prompt_tokens")) or prompt_estimate
    cached = min(usage_detail(usage, "prompt_tokens_details", "cached_tokens"), prompt)
    written = min(usage_detail(usage, "prompt_tokens_details", "cache_write_tokens"), prompt - cached)
    return {
        "input_tokens": prompt - cached - written,
        "output_tokens": usage_tokens(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def from_chat(req: CountTokensRequest, completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as Anthropic's message object."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning and shows_thinking(req):
        content.append(thinking_block(reasoning))
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    refusal = message.get("refusal")
    refused = isinstance(refusal, str) and bool(refusal)  # the model declined (chat's structured-output refusal)
    if refused:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu"),
                "name": fn.get("name", ""),
                "input": tool_input(fn.get("arguments") or ""),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"),
        choice.get("stop_reason"),
        req.stop_sequences,
        called=bool(message.get("tool_calls")),
        refused=refused,
    )
    usage = completion.get("usage") or {}
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or req.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(usage),
    }


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_status(err: GatewayError) -> int:
    """The HTTP status the Messages API answers ``err`` with: the gateway's, except an upstream out of capacity
    (a 503 or 529 from the last candidate tried, where the chat door answers 503 or 502), which is Anthropic's
    529 ``overloaded_error``, so that clients back off and retry as they do against Anthropic."""
    last = err.last if isinstance(err, AllCandidatesFailed) else err
    if isinstance(last, UpstreamRejected) and last.upstream_status in _OVERLOADED:
        return 529
    return err.status


def error_body(err: GatewayError, request_id: str | None) -> dict[str, Any]:
    """A gateway error in Anthropic's shape."""
    kind = error_type(error_status(err))
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message}}
    if isinstance(err, ThreadUnsupported):
        body["error"]["details"] = dict(err.details)
    if request_id:
        body["request_id"] = request_id
    return body


def stream_error_type(error: dict[str, Any]) -> str:
    """Anthropic's error ``type`` for the pipeline's in-stream error event (``{"error": {...}}`` in OpenAI's shape,
    sent after the status line): a budget cut is ``billing_error``, as the same cap is before or after a whole
    answer (402); an upstream's silence ``timeout_error`` (504 when not streaming); any other failure ``api_error``."""
    code = error.get("code")
    if error.get("type") == BudgetExceeded.error_type or (isinstance(code, str) and code.startswith("budget_exceeded")):
        return "billing_error"
    if error.get("type") == UpstreamTimeout.error_type:
        return "timeout_error"
    return "api_error"
