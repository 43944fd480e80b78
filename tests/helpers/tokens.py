"""The gateway's offline cl100k_base tokenizer, for tests that score prompts with the learned router."""

from __future__ import annotations

from gateway.tokens import load_tiktoken

cl100k_encode = load_tiktoken().encode
"""Token ids of a text (``encode_ordinary``), as the gateway's features stage computes them."""
