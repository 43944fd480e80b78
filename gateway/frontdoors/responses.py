"""The OpenAI Responses API (``POST /v1/responses``) translated to chat completions and back.

Supported: ``input`` as a string or a list of items (messages with text/image parts, ``function_call``
and ``function_call_output`` items, this gateway's ``compaction`` items), ``instructions``, function ``tools`` and
``tool_choice``, ``text.format`` (``text``, ``json_object``, ``json_schema``), ``max_output_tokens``, ``temperature``,
``top_p``, ``parallel_tool_calls``, ``reasoning.effort`` (chat's ``reasoning_effort``), ``metadata``, ``user``,
``store`` and ``previous_response_id``; ``text.verbosity``, ``prompt_cache_key``, ``safety_identifier``,
``service_tier`` and log probabilities (:mod:`gateway.frontdoors.responses_settings`).
Hosted tools, background mode, server-side conversations and prompt templates are refused with a 400
naming the field.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from gateway.context import usage_tokens
from gateway.errors import InvalidRequest
from gateway.frontdoors import compaction
from gateway.frontdoors import responses_settings as settings
from gateway.frontdoors.chunks import reasoning_of, usage_detail
from gateway.frontdoors.strict import applied_strict, tool_parameters
from gateway.protocol import Temperature, UnitInterval, required_str, validate

#: Request fields the gateway cannot honour; each is refused when set to something other than its default.
_UNSUPPORTED = {
    "background": "Background mode is not supported by this gateway.",
    "conversation": "Server-side conversations are not supported by this gateway; use previous_response_id.",
    "prompt": "Prompt templates are not supported by this gateway.",
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextFormat(_Open):
    """``text.format``."""

    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class TextConfig(_Open):
    """``text``."""

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # chat's ``verbosity``


class ReasoningConfig(_Open):
    """``reasoning``: ``effort`` goes upstream as chat's ``reasoning_effort`` (for reasoning models)."""

    effort: StrictStr | None = None  # the upstream checks the value (models differ in the efforts they take)
    summary: StrictStr | None = None


class ResponsesBody(_Open):
    """A Responses request's fields, validated for types (items and tools are checked while translating); ``model``
    and ``input`` may be left out (``POST /v1/responses/input_tokens``)."""

    model: StrictStr | None = Field(None, min_length=1)
    # optional (and nullable) in a token count, as in the SDK's InputTokenCountParams: a stored conversation
    # (previous_response_id) or instructions alone are counted
    input: StrictStr | list[dict[str, Any]] | None = None
    instructions: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Temperature | None = None
    top_p: UnitInterval | None = None  # a JSON number, as OpenAI requires (a lax float took "0.5" or true)
    metadata: dict[str, StrictStr] | None = None
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    stream: StrictBool | None = None
    user: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    service_tier: StrictStr | None = None  # the upstream checks the value (providers' tiers differ)
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    include: list[StrictStr] | None = None
    gateway: dict[str, Any] | None = None


class ResponsesRequest(ResponsesBody):
    """``POST /v1/responses``."""

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[dict[str, Any]]


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``resp_…``, ``msg_…``, ``fc_…``)."""
    return f"{prefix}_{secrets.token_hex(24)}"


#: The prefix of an output item's id, by its type.
_ITEM_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}
#: An output item's id: its prefix, its response's 48 hex digits, then its index (4 hex digits).
_OUTPUT_ITEM_ID = re.compile(r"(?:msg|rs|fc)_([0-9a-f]{48})[0-9a-f]{4}")


def output_item_id(response_id: str, item: dict[str, Any], index: int) -> str:
    """The id of ``response_id``'s output item ``index``: it names its response, so an ``item_reference`` to it is
    found through that response's stored record (no index of every item is kept)."""
    return f"{_ITEM_PREFIXES.get(str(item.get('type')), 'item')}_{response_id.removeprefix('resp_')}{index:04x}"


def response_of_item(item_id: str) -> str | None:
    """The response whose output holds the item ``item_id`` (an id :func:`output_item_id` made), else None."""
    found = _OUTPUT_ITEM_ID.fullmatch(item_id)
    return None if found is None else f"resp_{found.group(1)}"


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Validate a Responses request body; 400 naming the first bad or unsupported field."""
    _refuse_unsupported(body)
    return validate(ResponsesRequest, body)


def parse_count_request(body: dict[str, Any]) -> ResponsesBody:
    """Validate a ``POST /v1/responses/input_tokens`` body: a Responses request whose ``model`` may be left out."""
    _refuse_unsupported(body)
    return validate(ResponsesBody, body)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, message in _UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")


def input_messages(req: ResponsesBody) -> list[dict[str, Any]]:
    """The request's ``input`` as chat messages (without ``instructions``). A chat ``tool`` message holds text only:
    the images a tool returned go in a user message after the tool messages of its turn (chat APIs require those to
    follow the assistant's calls directly), as the Messages door sends a ``tool_result``'s images."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # the current turn's tool outputs' images
    for i, item in enumerate(req.input or []):
        if images and item.get("type", "message") not in ("function_call_output", "reasoning"):
            out.append({"role": "user", "content": images})
            images = []
        images += _add_item(out, item, f"input[{i}]")
    if images:
        out.append({"role": "user", "content": images})
    return out


def input_items(req: ResponsesBody) -> list[dict[str, Any]]:
    """The request's ``input`` as the Responses API's input items, each with an id (the client's, else a new
    one): what ``GET /v1/responses/{id}/input_items`` lists. Call after :func:`input_messages` validated it."""
    if isinstance(req.input, str):
        return [_input_message("user", [{"type": "input_text", "text": req.input}], None)]
    out: list[dict[str, Any]] = []
    for item in req.input or []:
        kind = item.get("type", "message")
        item_id = item.get("id") if isinstance(item.get("id"), str) else None
        if kind == "message":
            content = item["content"]
            if isinstance(content, str):
                part = "output_text" if item["role"] == "assistant" else "input_text"
                content = [{"type": part, "text": content}]
            out.append(_input_message(item["role"], content, item_id))
        elif kind in ("function_call", "function_call_output"):
            out.append({**item, "id": item_id or new_id("fc" if kind == "function_call" else "fco"), "type": kind})
            out[-1].setdefault("status", "completed")
        elif kind == "compaction":
            out.append({"id": item_id or new_id("cmp"), "type": kind, "encrypted_content": item["encrypted_content"]})
    return out


def _input_message(role: str, content: list[dict[str, Any]], item_id: str | None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"}


def _add_item(out: list[dict[str, Any]], item: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Add ``item`` to ``out`` as chat messages; returns the images of a ``function_call_output`` (as chat parts),
    which the caller sends after the turn's tool messages."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}.", param=f"{where}.role")
        out.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        call = {
            "id": required_str(item, "call_id", where),
            "type": "function",
            "function": {
                "name": required_str(item, "name", where),
                "arguments": required_str(item, "arguments", where),
            },
        }
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant message carries them all
        elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
            last["tool_calls"] = [call]
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        images: list[dict[str, Any]] = []
        if isinstance(output, list):  # input_text and input_image parts (input_file is refused, a 400)
            parts = _content(output, f"{where}.output")
            images = [p for p in parts if p["type"] != "text"] if isinstance(parts, list) else []
            output = parts if isinstance(parts, str) else "".join(p["text"] for p in parts if p["type"] == "text")
        if not isinstance(output, str):
            raise InvalidRequest(f"Invalid value for '{where}.output': expected a string.", param=f"{where}.output")
        out.append({"role": "tool", "tool_call_id": required_str(item, "call_id", where), "content": output})
        return images
    elif kind == "reasoning":
        pass  # a reasoning item replayed from another model's output: nothing a chat backend can use
    elif kind == "compaction":  # the earlier turns, as POST /v1/responses/compact summarised them
        out.append(compaction.as_message(compaction.decode(item, where)))
    else:
        raise InvalidRequest(
            f"Input items of type '{kind}' are not supported by this gateway.",
            param=f"{where}.type",
            code="unsupported_parameter",
        )
    return []


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{where}': expected a string or a list.", param=where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported by this gateway.",
                param=f"{where}[{i}].type",
                code="unsupported_parameter",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text: what every chat backend takes
    return parts


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"Tools of type '{tool.get('type')}' are not supported by this gateway; only function tools are.",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name")
        _check_strict(tool, i)
        # strict by default: the schema made strict where that keeps its meaning, as OpenAI does
        parameters, strict = tool_parameters(tool)
        fn: dict[str, Any] = {"name": tool["name"], "parameters": parameters, "strict": strict}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _check_strict(tool: dict[str, Any], i: int) -> None:
    """A function tool's ``strict`` is a bool or null (400 otherwise). Null or left out: the Responses API's default,
    true where the schema can be made strict (:func:`~gateway.frontdoors.strict.tool_parameters`), where chat
    completions' is false, so the applied value is always sent upstream explicitly."""
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(f"Invalid value for 'tools[{i}].strict': expected a boolean.", param=f"tools[{i}].strict")


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"tool_choice of type '{choice.get('type')}' is not supported by this gateway.",
        param="tool_choice",
        code="unsupported_parameter",
    )


def _response_format(fmt: TextFormat) -> dict[str, Any] | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None or not fmt.name:
        raise InvalidRequest("text.format of type 'json_schema' needs 'name' and 'schema'.", param="text.format")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def to_chat(req: ResponsesBody, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions body for ``req``, continuing ``history`` (earlier turns' chat messages)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages.extend(history)
    messages.extend(input_messages(req))
    if not messages:
        raise InvalidRequest("The request has no input.", param="input")
    _check_outputs_follow_calls(messages)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.model is None:  # counting input tokens: no model to send
        del body["model"]
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice is not None:
        choice = _tool_choice(req.tool_choice)  # checked either way
        if req.tools:  # without tools, chat APIs refuse it (vLLM, OpenAI); the Responses API ignores it
            body["tool_choice"] = choice
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.text is not None and req.text.format is not None:
        fmt = _response_format(req.text.format)
        if fmt is not None:
            body["response_format"] = fmt
    # ``max_completion_tokens``: reasoning models refuse ``max_tokens``, and it counts reasoning tokens too, as
    # ``max_output_tokens`` does.
    params = (("max_output_tokens", "max_completion_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))
    for src, dst in params:
        value = getattr(req, src)
        if value is not None:
            body[dst] = value
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    if req.user is not None:
        body["user"] = req.user
    settings.add_settings(req, body)
    if req.gateway is not None:
        body["gateway"] = req.gateway
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _check_outputs_follow_calls(messages: list[dict[str, Any]]) -> None:
    """Each ``function_call_output`` answers a ``function_call`` made before it, in the input or in the stored
    history, as the Responses API requires (chat backends differ: OpenAI refuses an orphan, vLLM renders it)."""
    called: set[str] = set()
    for message in messages:
        called.update(call["id"] for call in message.get("tool_calls") or ())
        if message["role"] == "tool" and message["tool_call_id"] not in called:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id {message['tool_call_id']}.", param="input"
            )


def skeleton(req: ResponsesRequest, response_id: str, created_at: int | None = None) -> dict[str, Any]:
    """A response object without output (``in_progress``): what streaming announces first."""
    fmt: dict[str, Any] = {"type": "text"}
    if req.text is not None and req.text.format is not None:
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True)
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "store": req.store is not False,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [{**t, "strict": applied_strict(t)} for t in req.tools or []],  # as applied
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": req.user,
        "metadata": req.metadata or {},
    }
    settings.echo(req, response)
    return response


def usage_of(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat ``usage`` as the Responses API's: the token counts, and the prompt's cached tokens, the prompt tokens
    written to the upstream's cache and the answer's reasoning tokens where the upstream reported them (0 where not:
    openai-python's ``ResponseUsage`` requires each)."""
    prompt = usage_tokens(usage.get("prompt_tokens"))
    completion = usage_tokens(usage.get("completion_tokens"))
    cached = usage_detail(usage, "prompt_tokens_details", "cached_tokens")
    written = usage_detail(usage, "prompt_tokens_details", "cache_write_tokens")
    reasoning = usage_detail(usage, "completion_tokens_details", "reasoning_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def as_stored(response: dict[str, Any]) -> dict[str, Any]:
    """A stored response object as served again: one stored before ``input_tokens_details.cache_write_tokens`` was
    reported gets it (0), which openai-python's ``ResponseUsage`` requires."""
    usage = response.get("usage")
    details = usage.get("input_tokens_details") if isinstance(usage, dict) else None
    if isinstance(details, dict) and "cache_write_tokens" not in details:
        assert isinstance(usage, dict)
        return {**response, "usage": {**usage, "input_tokens_details": {**details, "cache_write_tokens": 0}}}
    return response


#: Chat finish reasons that leave a response ``incomplete``, and the reason the Responses API gives.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def item_status(finish_reason: str | None) -> str:
    """The status of the message a chat answer with ``finish_reason`` ends in: cut short, it is ``incomplete``."""
    return "incomplete" if finish_reason in _INCOMPLETE else "completed"


def finish(response: dict[str, Any], finish_reason: str | None) -> None:
    """Set ``status`` (and ``incomplete_details``) from the chat finish reason."""
    reason = _INCOMPLETE.get(finish_reason or "")
    response["status"] = "completed" if reason is None else "incomplete"
    if reason is None:
        response["completed_at"] = int(time.time())  # the SDK's Response.completed_at: "present when completed"
    else:
        response["incomplete_details"] = {"reason": reason}


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """An assistant ``message`` output item holding ``text``."""
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def reasoning_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """A ``reasoning`` output item holding the upstream's reasoning ``text`` as a ``reasoning_text`` part (what
    OpenAI's API and vLLM's send for open-weight models; no ``summary``, no ``encrypted_content``)."""
    return {
        "type": "reasoning",
        "id": item_id or new_id("rs"),
        "summary": [],
        "content": [reasoning_part(text)],
        "status": status,
    }


def reasoning_part(text: str) -> dict[str, Any]:
    """A reasoning item's ``reasoning_text`` content part."""
    return {"type": "reasoning_text", "text": text}


def text_part(text: str) -> dict[str, Any]:
    """A message's ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    """A message's ``refusal`` content part (the model declined; chat's ``message.refusal``)."""
    return {"type": "refusal", "refusal": refusal}


def whole_arguments(arguments: str) -> str:
    """A call's final arguments: blank ones, as some OpenAI-compatible servers send for a call without any, are
    ``{}`` (the SDK's ``responses.parse``/``stream`` parse them as JSON)."""
    return arguments if arguments.strip() else "{}"


def function_item(call_id: str, name: str, arguments: str, item_id: str | None = None) -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "type": "function_call",
        "id": item_id or new_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def from_chat(req: ResponsesRequest, response_id: str, completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as the Responses API's response object."""
    response = skeleton(req, response_id, completion.get("created"))
    response["model"] = completion.get("model") or req.model
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        output.append(reasoning_item(reasoning))
    content = message.get("content")
    status = item_status(choice.get("finish_reason"))
    if isinstance(content, str) and content:
        output.append(message_item(content, status=status))
        if settings.wants_logprobs(req):
            output[-1]["content"][0]["logprobs"] = settings.output_logprobs(settings.chat_logprobs(choice))
    elif message.get("refusal"):
        item = message_item("", status=status)
        item["content"] = [refusal_part(message["refusal"])]
        output.append(item)
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        arguments = whole_arguments(fn.get("arguments", ""))
        output.append(function_item(call.get("id") or new_id("call"), fn.get("name", ""), arguments))
    for index, item in enumerate(output):
        item["id"] = output_item_id(response_id, item, index)
    response["output"] = output
    settings.served_tier(response, completion.get("service_tier"))
    usage = completion.get("usage")
    response["usage"] = usage_of(usage if isinstance(usage, dict) else {})
    finish(response, choice.get("finish_reason"))
    return response


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as chat messages (what a later turn continues from)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(output):
        if item.get("type") == "message":
            texts = [p.get("text") or p.get("refusal") or "" for p in item.get("content") or []]
            out.append({"role": "assistant", "content": "".join(texts)})
        else:
            _add_item(out, item, f"output[{i}]")
    return out
