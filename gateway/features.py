"""Request features, computed once per request: prompt text and tokens, capabilities, output size."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.tokens import TokenCounter

_PER_MESSAGE_TOKENS = 4  # role and separators, as OpenAI's chat format counts them
#: An image's tokens, unseen (its size is not read): OpenAI's count for a 1024x1024 image at high detail (4 tiles of
#: 170, and 85), and at low detail. Anthropic's are of the same order (width x height / 750: ~1,400 for 1024x1024).
IMAGE_TOKENS = 765
LOW_DETAIL_IMAGE_TOKENS = 85
#: The most tokens one image bills, for a budget's worst case when the model's own (``max_image_tokens``) is not
#: configured: gpt-4o-mini's high detail, 2,833 and 5,667 per 512-px tile, up to 8 tiles (48,169: it bills images
#: at ~33 times gpt-4o's tokens for ~the same dollars). Others bill far fewer: gpt-4o at most 1,445 (85 and 170 a
#: tile), gpt-4.1-nano 3,779 (1,536 patches x 2.46), Anthropic's models ~1,600 (1.15 megapixels at most).
IMAGE_TOKENS_AT_MOST = 48_169
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


@dataclass(slots=True)
class RequestFeatures:
    """What routing needs to know about a request."""

    prompt: str  # the text that decides difficulty: the last user message (or the prompt)
    prompt_tokens: int  # what must fit a context window: a batch's longest prompt
    prompt_ids: list[int] | None  # token ids of ``prompt`` (None without a tokenizer): the router reads them
    max_output_tokens: int | None
    needs_tools: bool = False
    needs_json: bool = False
    needs_vision: bool = False
    n: int = 1
    needs_completions: bool = False  # ``/v1/completions``: a chat-only backend cannot serve it
    #: What the upstream reads and bills: every prompt of a batch, every input of an embeddings request (None:
    #: ``prompt_tokens``).
    input_tokens: int | None = None

    @property
    def billed_prompt_tokens(self) -> int:
        """The prompt tokens an answer to the whole request bills (:attr:`input_tokens`)."""
        return self.prompt_tokens if self.input_tokens is None else self.input_tokens


def content_text(content: Any) -> tuple[str, int]:
    """Text of a message's content, and the tokens of its images (0: none; :data:`IMAGE_TOKENS` each)."""
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        texts: list[str] = []
        images = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in _IMAGE_PARTS:
                url = part.get("image_url")
                detail = url.get("detail") if isinstance(url, dict) else part.get("detail")
                images += LOW_DETAIL_IMAGE_TOKENS if detail == "low" else IMAGE_TOKENS
        return "\n".join(texts), images
    return "", 0


def images_and_token_ids(value: Any) -> tuple[int, int]:
    """How many image parts and prompt token ids ``value`` (a request's messages, prompt or input) holds: what its
    size in bytes does not bound (a ~30-byte image URL bills hundreds of tokens; a token id is 2 bytes of JSON)."""
    images = ids = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in _IMAGE_PARTS:
                images += 1
            else:
                stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            if item and isinstance(item[0], int):
                ids += len(item)  # a prompt of token ids (a batch is a list of them)
            else:
                stack.extend(v for v in item if isinstance(v, dict | list))
    return images, ids


def _encode(counter: TokenCounter, text: str) -> tuple[list[int] | None, int]:
    """The routing prompt's ids (for the learned router) and its token count, from one encoding."""
    ids = counter.encode(text)
    return ids, len(ids) if ids is not None else counter.count(text)


def extract_features(endpoint: str, body: dict[str, Any], counter: TokenCounter) -> RequestFeatures:
    """Compute :class:`RequestFeatures` from a validated request body."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n") or 1
    if endpoint == "chat":
        messages = body.get("messages") or []
        texts: list[str] = []
        last_user = -1  # index in texts of the last user message's text
        vision = False
        image_tokens = 0
        for m in messages:
            text, images = content_text(m.get("content"))
            vision = vision or images > 0
            image_tokens += images
            if m.get("role") == "user":
                last_user = len(texts)
            texts.append(text)
            if m.get("tool_calls"):
                texts.append(orjson.dumps(m["tool_calls"]).decode())
        # The routing prompt is encoded on its own (its ids go to the router), the rest of the conversation
        # in one piece; as in OpenAI's counting recipe, message boundaries are the per-message overhead.
        prompt_at = last_user if last_user >= 0 else len(texts) - 1
        prompt = texts[prompt_at] if texts else ""
        ids, tokens = _encode(counter, prompt)
        if len(texts) > 1:
            tokens += counter.count("\n".join(texts[:prompt_at] + texts[prompt_at + 1 :]))
        tokens += _PER_MESSAGE_TOKENS * len(messages) + 3 + image_tokens
        # ``functions``/``function_call``: the deprecated spelling of tools, still sent by older SDKs and agents
        tools = body.get("tools") or body.get("functions")
        if tools:
            tokens += counter.count(orjson.dumps(tools).decode())
        fmt = body.get("response_format")
        needs_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        choice = body.get("tool_choice") if body.get("tools") else body.get("function_call")
        needs_tools = bool(tools) and choice != "none"
        return RequestFeatures(prompt, tokens, ids, max_tokens, needs_tools, needs_json, vision, n)
    raw = body.get("input") if endpoint == "embeddings" else body.get("prompt")
    text, ids, tokens, total = "", None, 0, 0
    if isinstance(raw, str):
        text = raw
        ids, tokens = _encode(counter, text)
        total = tokens
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        # A batch: the last prompt is routed, the longest decides the context window, all of them are billed.
        text = raw[-1]
        ids, last = _encode(counter, text)
        counts = [*(counter.count(p) for p in raw[:-1]), last]
        tokens, total = max(counts), sum(counts)
    elif isinstance(raw, list) and raw and isinstance(raw[0], list):  # token ids, one list per prompt
        tokens, total = max(len(p) for p in raw), sum(len(p) for p in raw)
    elif isinstance(raw, list):
        tokens = total = len(raw)
    completions = endpoint == "completions"
    return RequestFeatures(text, tokens, ids, max_tokens, n=n, needs_completions=completions, input_tokens=total)


_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|#include|\bselect\b.*\bfrom\b|=>|\bimport |\{\s*\n|;\s*$", re.M)
_MATH = re.compile(
    r"\d+\s*[-+*/^=]\s*\d+|\\frac|\\sum|\b(?:integral|derivative|prove|equation|probability|how many|"
    r"calculate|solve)\b"
)
_REASONING = re.compile(
    r"\b(?:step[- ]by[- ]step|explain why|compare|analy[sz]e|design|trade-?offs?|justify|plan|"
    r"evaluate)\b"
)


def heuristic_difficulty(prompt: str) -> float:
    """A transparent 0..1 difficulty estimate from length, code, math and multi-step reasoning cues."""
    text = prompt[:4000].lower()  # cues show early; bounding the scan keeps long prompts cheap
    length = min(len(prompt) / 2000.0, 1.0) * 0.3
    code = 0.25 if _CODE.search(text) else 0.0
    math = 0.25 if _MATH.search(text) else 0.0
    steps = "first" in text and "then" in text
    reasoning = 0.2 if steps or _REASONING.search(text) else 0.0
    return min(0.1 + length + code + math + reasoning, 1.0)
