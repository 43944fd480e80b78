"""The gateway's offline cl100k_base tokenizer, for tests that score prompts with the learned router."""

from __future__ import annotations

from gateway.tokens import TiktokenCounter, load_counter


def _tiktoken() -> TiktokenCounter:
    counter = load_counter()
    assert isinstance(counter, TiktokenCounter), "tiktoken cl100k_base must load offline (litellm's copy)"
    return counter


cl100k_encode = _tiktoken().encode
"""Token ids of a text (``encode_ordinary``), as the gateway's features stage computes them."""
