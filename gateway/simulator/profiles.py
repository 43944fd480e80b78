"""Timing and capability profiles for the backend simulator.

A :class:`SimProfile` describes how a simulated backend behaves: how long it takes to
produce the first token, how fast it streams after that, how many requests it runs at
once (vLLM's ``--max-num-seqs``) and which features it supports.  The numbers are rough
approximations of real deployments and are meant for tests and demos only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["PROFILES", "BackendKind", "SimProfile", "get_profile"]

BackendKind = Literal["vllm", "hosted"]


@dataclass(frozen=True, slots=True)
class SimProfile:
    """Behaviour of one simulated backend.

    Attributes:
        name: Profile name used on the command line (``--profile``).
        model_name: Default served model name (what ``/v1/models`` lists and responses echo).
        ttft_base_ms: Fixed part of the time to first token, in milliseconds.
        ttft_per_prompt_token_ms: Prefill cost per prompt token, in milliseconds.
        per_token_ms: Decode time per generated token, in milliseconds.
        jitter: Relative jitter applied to every delay (0.1 means +/-10 %).
        max_concurrency: Requests that run at once; the rest wait in a FIFO queue.
        default_output_tokens: Typical ("natural") length of an answer, in tokens.
        supports_tools: Whether ``tool_choice="auto"`` is accepted (vLLM's auto tool choice).
        context_window: Maximum prompt + completion tokens (vLLM's ``max_model_len``).
        embedding_dim: Dimension of ``/v1/embeddings`` vectors, or ``None`` when unsupported.
        kind: ``"vllm"`` for a self-hosted vLLM server, ``"hosted"`` for a hosted API.
    """

    name: str
    model_name: str
    ttft_base_ms: float
    ttft_per_prompt_token_ms: float
    per_token_ms: float
    jitter: float = 0.1
    max_concurrency: int = 8
    default_output_tokens: int = 128
    supports_tools: bool = True
    context_window: int = 4096
    embedding_dim: int | None = 384
    kind: BackendKind = "vllm"

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if min(self.ttft_base_ms, self.ttft_per_prompt_token_ms, self.per_token_ms) < 0:
            raise ValueError("delays must be non-negative")
        if self.context_window < 16 or self.default_output_tokens < 1:
            raise ValueError("context_window and default_output_tokens are too small")

    @property
    def owned_by(self) -> str:
        """The ``owned_by`` value reported by ``/v1/models``."""
        return "vllm" if self.kind == "vllm" else "openai"

    def with_overrides(self, *, model_name: str | None = None, max_concurrency: int | None = None) -> SimProfile:
        """Return a copy with the served model name and/or concurrency limit replaced."""
        return replace(
            self,
            model_name=model_name if model_name is not None else self.model_name,
            max_concurrency=max_concurrency if max_concurrency is not None else self.max_concurrency,
        )


PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in (
        SimProfile(
            name="llama-2-7b",
            model_name="meta-llama/Llama-2-7b-chat-hf",
            ttft_base_ms=60.0,
            ttft_per_prompt_token_ms=0.2,
            per_token_ms=22.0,
            max_concurrency=8,
            default_output_tokens=160,
            supports_tools=True,
            context_window=4096,
        ),
        SimProfile(
            name="llama-2-13b",
            model_name="meta-llama/Llama-2-13b-chat-hf",
            ttft_base_ms=100.0,
            ttft_per_prompt_token_ms=0.35,
            per_token_ms=40.0,
            max_concurrency=6,
            default_output_tokens=160,
            supports_tools=False,
            context_window=4096,
        ),
        SimProfile(
            name="gpt-4",
            model_name="gpt-4",
            ttft_base_ms=450.0,
            ttft_per_prompt_token_ms=0.05,
            per_token_ms=35.0,
            jitter=0.2,
            max_concurrency=256,
            default_output_tokens=200,
            supports_tools=True,
            context_window=8192,
            kind="hosted",
        ),
        SimProfile(
            name="fast",
            model_name="sim-fast",
            ttft_base_ms=1.0,
            ttft_per_prompt_token_ms=0.0,
            per_token_ms=0.2,
            jitter=0.0,
            max_concurrency=64,
            default_output_tokens=48,
            supports_tools=True,
            context_window=8192,
        ),
    )
}


def get_profile(name: str) -> SimProfile:
    """Look up a built-in profile by name (case-insensitive).

    Raises:
        KeyError: if no profile has that name; the message lists the known profiles.
    """
    profile = PROFILES.get(name) or PROFILES.get(name.lower())
    if profile is None:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown simulator profile {name!r}; known profiles: {known}")
    return profile
