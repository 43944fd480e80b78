"""Request validation and output planning for the simulator's OpenAI-compatible API.

Requests are validated by hand (not with pydantic models) so that accepted inputs and
error messages follow vLLM's OpenAI server closely.  A valid request becomes a
:class:`GenRequest`, and :func:`plan_outputs` decides, deterministically, what every
choice will contain before any time is spent "generating" it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.simulator.answers import REFUSAL_TEXT, AnswerRule, split_words
from gateway.simulator.profiles import SimProfile
from gateway.simulator.textgen import (
    GeneratedText,
    TokenLogprob,
    build_tool_arguments,
    count_chat_prompt_tokens,
    count_text_tokens,
    generate_text,
    message_text,
    split_fragments,
    stable_hash,
    token_logprobs,
)

__all__ = [
    "ApiError",
    "ChoicePlan",
    "GenRequest",
    "PromptSpec",
    "ToolCallPlan",
    "parse_chat_request",
    "parse_completion_request",
    "parse_embeddings_request",
    "plan_outputs",
]

Endpoint = Literal["chat", "completions"]


class ApiError(Exception):
    """An error answered with an OpenAI/vLLM-style JSON error body."""

    def __init__(self, message: str, status: int = 400, err_type: str | None = None) -> None:
        """Describe the error; ``err_type`` defaults from ``status``."""
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One prompt of a request: its identity (for hashing), size and the user's last words."""

    key_text: str
    tokens: int
    hint: str = ""
    tool_result_last: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """A tool call the simulated model will make."""

    id: str
    name: str
    arguments: str

    @property
    def fragments(self) -> list[str]:
        """Argument fragments, one per streamed token."""
        return split_fragments(self.arguments)


@dataclass(slots=True)
class GenRequest:
    """A validated ``/v1/chat/completions`` or ``/v1/completions`` request."""

    endpoint: Endpoint
    prompts: list[PromptSpec]
    n: int = 1
    max_tokens: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None
    temperature: float = 1.0
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    logprobs: int | None = None
    tools: list[Mapping[str, Any]] = field(default_factory=list)
    tool_choice: Any = None

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all prompts."""
        return sum(p.tokens for p in self.prompts)


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    """Everything one choice will produce."""

    index: int
    prompt_index: int
    text: GeneratedText
    logprobs: list[TokenLogprob] | None = None
    tool_call: ToolCallPlan | None = None

    @property
    def steps(self) -> int:
        """Number of generated tokens (decode steps) for this choice."""
        if self.tool_call is not None:
            return 1 + len(self.tool_call.fragments)
        return len(self.text.tokens)

    @property
    def finish_reason(self) -> str:
        """The OpenAI ``finish_reason`` of this choice."""
        return "tool_calls" if self.tool_call is not None else self.text.finish_reason


def _field_error(name: str, problem: str) -> ApiError:
    return ApiError(f"1 validation error for request: body.{name}: {problem}")


def _opt_int(body: Mapping[str, Any], name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field_error(name, "Input should be a valid integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise _field_error(name, f"Input should be {bound}")
    return value


def _opt_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _field_error(name, "Input should be a valid boolean")
    return value


def _common(body: Mapping[str, Any], req: GenRequest) -> None:
    req.n = _opt_int(body, "n", 1, 128) or 1
    req.max_tokens = _opt_int(body, "max_completion_tokens", 1) or _opt_int(body, "max_tokens", 1)
    req.ignore_eos = _opt_bool(body, "ignore_eos")
    req.seed = _opt_int(body, "seed", -(2**63), 2**64)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
            raise _field_error("temperature", "Input should be a non-negative number")
        req.temperature = float(temperature)
    stop = body.get("stop")
    if isinstance(stop, str):
        req.stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = tuple(stop)
    elif stop is not None:
        raise _field_error("stop", "Input should be a string or a list of strings")
    req.stream = _opt_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not req.stream:
            raise ApiError("Stream options can only be defined when `stream=True`.")
        if not isinstance(options, Mapping):
            raise _field_error("stream_options", "Input should be a valid dictionary")
        req.include_usage = _opt_bool(options, "include_usage")
        req.continuous_usage = req.include_usage and _opt_bool(options, "continuous_usage_stats")


def _check_context(req: GenRequest, profile: SimProfile) -> None:
    ctx = profile.context_window
    for prompt in req.prompts:
        if prompt.tokens >= ctx:
            raise ApiError(
                f"This model's maximum context length is {ctx} tokens. However, your request has "
                f"{prompt.tokens} input tokens. Please reduce the length of the input messages."
            )
        if req.max_tokens is not None and prompt.tokens + req.max_tokens > ctx:
            what = "messages" if req.endpoint == "chat" else "prompt"
            raise ApiError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt.tokens + req.max_tokens} tokens ({prompt.tokens} in the {what}, "
                f"{req.max_tokens} in the completion). Please reduce the length of the {what} "
                "or completion."
            )


def parse_chat_request(body: Any, profile: SimProfile) -> GenRequest:
    """Validate a chat completion request body.

    Raises:
        ApiError: with vLLM's status and message for an invalid request.
    """
    if not isinstance(body, Mapping):
        raise ApiError("1 validation error for request: body: Input should be a valid dictionary")
    messages = body.get("messages")
    if messages is None:
        raise _field_error("messages", "Field required")
    if not isinstance(messages, list) or not messages:
        raise _field_error("messages", "Input should be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise _field_error(f"messages.{i}", "Input should be an object with a 'role'")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(_valid_tool(t) for t in tools):
        raise _field_error("tools", "Input should be a list of function tools")
    user_text = next((message_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")
    prompt = PromptSpec(
        key_text=orjson.dumps(messages).decode(),
        tokens=count_chat_prompt_tokens(messages, tools or None),
        hint=user_text,
        tool_result_last=messages[-1]["role"] == "tool",
    )
    req = GenRequest(endpoint="chat", prompts=[prompt], tools=tools)
    _common(body, req)
    top = _opt_int(body, "top_logprobs", 0, 20)
    if _opt_bool(body, "logprobs"):
        req.logprobs = top or 0
    elif top:
        raise ApiError("when using `top_logprobs`, `logprobs` must be set to true.")
    req.tool_choice = _tool_choice(body.get("tool_choice"), tools, profile)
    _check_context(req, profile)
    return req


def _valid_tool(tool: Any) -> bool:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        return False
    function = tool.get("function")
    return isinstance(function, Mapping) and isinstance(function.get("name"), str)


def _tool_choice(choice: Any, tools: list[Mapping[str, Any]], profile: SimProfile) -> Any:
    if choice is None:  # vLLM defaults to "auto" when tools are given
        if not tools:
            return "none"
        choice = "auto"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise ApiError(f'When using `tool_choice`, `tools` must be set. (tool_choice="{choice}")')
        if choice == "auto" and not profile.supports_tools:
            raise ApiError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        return choice
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        name = choice["function"].get("name")
        if not any(t["function"]["name"] == name for t in tools):
            raise ApiError(f"The tool specified in `tool_choice` does not match any of the specified `tools` ({name})")
        return {"name": name}
    raise _field_error("tool_choice", "Input should be 'none', 'auto', 'required' or a named function")


def parse_completion_request(body: Any, profile: SimProfile) -> GenRequest:
    """Validate a legacy completion request body (``prompt`` may be a batch).

    Raises:
        ApiError: with vLLM's status and message for an invalid request.
    """
    if not isinstance(body, Mapping):
        raise ApiError("1 validation error for request: body: Input should be a valid dictionary")
    prompt = body.get("prompt")
    if prompt is None:
        raise _field_error("prompt", "Field required")
    raw: list[Any]
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and _is_ids(prompt)):
        raw = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        raw = list(prompt)
    else:
        raise ApiError("prompt must be a string, array of strings, array of tokens, or array of token arrays")
    prompts = [
        PromptSpec(key_text=p, tokens=max(1, count_text_tokens(p)), hint=p)
        if isinstance(p, str)
        else PromptSpec(key_text=repr(p), tokens=len(p))
        for p in raw
    ]
    req = GenRequest(endpoint="completions", prompts=prompts)
    _common(body, req)
    req.logprobs = _opt_int(body, "logprobs", 0, 20)
    _check_context(req, profile)
    return req


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(x) is int for x in value)


def plan_outputs(
    req: GenRequest, profile: SimProfile, app_seed: int, rules: Sequence[AnswerRule | None] = ()
) -> list[ChoicePlan]:
    """Decide deterministically what each choice of ``req`` contains.

    The result depends only on the prompt, ``seed`` (the request's, else the app's),
    ``temperature`` (0 means every choice is identical, as greedy decoding would be),
    the choice index, and the answer rule matched for each prompt (``rules[i]`` for prompt ``i``).
    """
    seed = req.seed if req.seed is not None else app_seed
    plans: list[ChoicePlan] = []
    for p_idx, prompt in enumerate(req.prompts):
        max_tokens = req.max_tokens if req.max_tokens is not None else profile.context_window - prompt.tokens
        tool_def = _pick_tool(req, prompt)
        for i in range(req.n):
            sample = i if req.temperature > 0 else 0
            key = stable_hash(req.endpoint, prompt.key_text, seed if req.temperature > 0 else 0, sample)
            index = p_idx * req.n + i
            if tool_def is not None:
                fn = tool_def["function"]
                args = build_tool_arguments(fn.get("parameters"), key, prompt.hint)
                call = ToolCallPlan(
                    id=f"chatcmpl-tool-{uuid.uuid4().hex}",
                    name=fn["name"],
                    arguments=orjson.dumps(args).decode(),
                )
                plans.append(ChoicePlan(index, p_idx, GeneratedText((), "stop"), None, call))
                continue
            rule = rules[p_idx] if p_idx < len(rules) else None
            text = _answer_text(req, profile, key, max_tokens, rule)
            unsure = rule is not None and rule.behaviour == "low_confidence"
            lps = token_logprobs(key, text.tokens, req.logprobs, unsure=unsure) if req.logprobs is not None else None
            plans.append(ChoicePlan(index, p_idx, text, lps))
    return plans


def _answer_text(
    req: GenRequest, profile: SimProfile, key: int, max_tokens: int, rule: AnswerRule | None
) -> GeneratedText:
    if rule is not None and rule.behaviour == "refuse":
        words = split_words(REFUSAL_TEXT)
        if len(words) > max_tokens:
            return GeneratedText(words[:max_tokens], "length")
        return GeneratedText(words, "stop")
    if rule is not None and rule.behaviour == "truncate":
        max_tokens = min(max_tokens, rule.tokens)
        return generate_text(key, max_tokens=max_tokens, natural_tokens=profile.default_output_tokens, ignore_eos=True)
    return generate_text(
        key,
        max_tokens=max_tokens,
        natural_tokens=profile.default_output_tokens,
        ignore_eos=req.ignore_eos,
        stop=req.stop,
    )


def _pick_tool(req: GenRequest, prompt: PromptSpec) -> Mapping[str, Any] | None:
    choice = req.tool_choice
    if req.endpoint != "chat" or not req.tools or choice in (None, "none"):
        return None
    if isinstance(choice, Mapping):
        return next(t for t in req.tools if t["function"]["name"] == choice["name"])
    mentioned = _mentioned_tool(req.tools, prompt.hint)
    if choice == "required":
        return mentioned or req.tools[0]
    return None if prompt.tool_result_last else mentioned


def _mentioned_tool(tools: Sequence[Mapping[str, Any]], text: str) -> Mapping[str, Any] | None:
    lowered = text.lower()
    for tool in tools:
        name = str(tool["function"]["name"]).lower()
        if name in lowered or name.replace("_", " ") in lowered:
            return tool
    return None


def parse_embeddings_request(body: Any, profile: SimProfile) -> tuple[list[str], int, int | None, bool]:
    """Validate an embeddings request: returns (texts, prompt tokens, dimensions, base64?).

    Raises:
        ApiError: for an invalid request or a profile without embeddings.
    """
    if profile.embedding_dim is None:
        raise ApiError("The model does not support Embeddings API")
    if not isinstance(body, dict) or body.get("input") is None:
        raise ApiError("1 validation error for request: body.input: Field required")
    raw = body["input"]
    items: list[Any] = [raw] if isinstance(raw, str) or (raw and type(raw[0]) is int) else list(raw)
    if not items or not all(isinstance(x, str) or isinstance(x, list) for x in items):
        raise ApiError("input must be a string, array of strings, array of tokens, or array of token arrays")
    texts = [x if isinstance(x, str) else repr(x) for x in items]
    tokens = sum(count_text_tokens(x) if isinstance(x, str) else len(x) for x in items)
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or not 1 <= dims <= profile.embedding_dim):
        raise ApiError(f"dimensions must be between 1 and {profile.embedding_dim}")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError("encoding_format must be 'float' or 'base64'")
    return texts, tokens, dims, fmt == "base64"
