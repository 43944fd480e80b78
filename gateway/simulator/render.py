"""JSON payloads of the simulator's responses and stream chunks (OpenAI/vLLM shapes).

For ``kind="vllm"`` profiles the stream follows vLLM: the last token travels in the same
chunk as ``finish_reason``, chunks carry no ``usage`` key unless
``stream_options.continuous_usage_stats`` is set, and choices carry ``stop_reason``.
For ``kind="hosted"`` profiles it follows OpenAI: a separate final chunk with an empty
delta, and ``"usage": null`` on every chunk when ``include_usage`` is on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.simulator.protocol import ChoicePlan, GenRequest
from gateway.simulator.textgen import TokenLogprob

__all__ = ["Renderer", "usage"]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    def item(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]
    }


def _completion_logprobs(entries: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets: list[int] = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [e.logprob for e in entries],
        "tokens": [e.token for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
    }


class Renderer:
    """Builds the response or the stream chunks of one request."""

    def __init__(self, req: GenRequest, model: str, kind: str, request_id: str) -> None:
        """Render for ``req``, answering as ``model`` in the style of ``kind``."""
        self.req = req
        self.model = model
        self.vllm = kind == "vllm"
        self.id = request_id
        self.created = int(time.time())
        self.chat = req.endpoint == "chat"
        self.object = "chat.completion" if self.chat else "text_completion"

    # ----------------------------------------------------------------- non-streaming
    def response(self, plans: Sequence[ChoicePlan]) -> dict[str, Any]:
        """The complete (non-streaming) response body."""
        completion_tokens = sum(p.steps for p in plans)
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [self._choice(p) for p in plans],
            "usage": usage(self.req.prompt_tokens, completion_tokens),
        }

    def _choice(self, plan: ChoicePlan) -> dict[str, Any]:
        lps = plan.logprobs
        choice: dict[str, Any] = {"index": plan.index}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": plan.text.text}
            if plan.tool_call is not None:
                call = plan.tool_call
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ]
            elif self.vllm:
                message["tool_calls"] = []
            choice["message"] = message
            choice["logprobs"] = _chat_logprobs(lps) if lps is not None else None
        else:
            choice["text"] = plan.text.text
            choice["logprobs"] = _completion_logprobs(lps, 0) if lps is not None else None
        choice["finish_reason"] = plan.finish_reason
        if self.vllm:
            choice["stop_reason"] = plan.text.stop_reason
        return choice

    # --------------------------------------------------------------------- streaming
    def _chunk(self, choices: list[dict[str, Any]], usage_obj: dict[str, int] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage_obj is not None:
            chunk["usage"] = usage_obj
        elif self.req.include_usage and not self.vllm:
            chunk["usage"] = None
        return chunk

    def _running_usage(self, done_tokens: int) -> dict[str, int] | None:
        return usage(self.req.prompt_tokens, done_tokens) if self.req.continuous_usage else None

    def role_chunk(self, plan: ChoicePlan) -> dict[str, Any] | None:
        """The first chunk of a chat choice (``role`` and empty content); none for completions."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        choice = {"index": plan.index, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._chunk([choice], self._running_usage(0))

    def token_chunks(self, plan: ChoicePlan, step: int, text_offset: int) -> list[dict[str, Any]]:
        """Chunk(s) for decode step ``step`` of ``plan`` (the last step also finishes it)."""
        last = step == plan.steps - 1
        choice: dict[str, Any] = {"index": plan.index}
        if plan.tool_call is not None:
            call = plan.tool_call
            if step == 0:
                fn: dict[str, Any] = {"index": 0, "id": call.id, "type": "function"}
                fn["function"] = {"name": call.name, "arguments": ""}
            else:
                fn = {"index": 0, "function": {"arguments": call.fragments[step - 1]}}
            choice["delta"] = {"tool_calls": [fn]}
            choice["logprobs"] = None
        else:
            token = plan.text.tokens[step]
            entry = plan.logprobs[step : step + 1] if plan.logprobs is not None else None
            if self.chat:
                choice["delta"] = {"content": token}
                choice["logprobs"] = _chat_logprobs(entry) if entry is not None else None
            else:
                choice["text"] = token
                choice["logprobs"] = _completion_logprobs(entry, text_offset) if entry is not None else None
        chunks: list[dict[str, Any]] = []
        running = self._running_usage(step + 1)
        if last and self.vllm:
            choice["finish_reason"] = plan.finish_reason
            choice["stop_reason"] = plan.text.stop_reason
            return [self._chunk([choice], running)]
        choice["finish_reason"] = None
        chunks.append(self._chunk([choice], running))
        if last:
            final: dict[str, Any] = {"index": plan.index}
            if self.chat:
                final["delta"] = {}
            else:
                final["text"] = ""
            final["logprobs"] = None
            final["finish_reason"] = plan.finish_reason
            chunks.append(self._chunk([final]))
        return chunks

    def usage_chunk(self, plans: Sequence[ChoicePlan]) -> dict[str, Any]:
        """The ``include_usage`` chunk: no choices, the request's total usage."""
        return self._chunk([], usage(self.req.prompt_tokens, sum(p.steps for p in plans)))
