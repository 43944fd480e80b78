"""Offline token counting with tiktoken, using the encodings litellm ships.

tiktoken downloads its encodings on first use; litellm bundles ``cl100k_base`` and ``o200k_base`` under
``litellm/litellm_core_utils/tokenizers``. Pointing ``TIKTOKEN_CACHE_DIR`` there makes plain tiktoken work
with no network, without importing litellm.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger("gateway.tokens")


#: Bytes below 0x80 (ASCII): what is left of a JSON text without them is its non-ASCII bytes.
_ASCII = bytes(range(128))


def bound_from_json(data: bytes) -> int:
    """At most how many tokens ``data`` (JSON, UTF-8) makes as a prompt, without a tokenizer: about 3 ASCII bytes a
    token (a tokenizer counts English at 4 or more), one token per other byte (a byte-fallback tokenizer, such as
    Llama-2's, spells a character it does not know one byte at a time), plus 16. Admission's reserve and the
    quality monitor's budget reservation both bound a prompt so."""
    other = len(data.translate(None, _ASCII))
    return (len(data) - other) // 3 + other + 16


class TokenCounter(Protocol):
    """Counts tokens of a text."""

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        ...

    def encode(self, text: str) -> list[int] | None:
        """The token ids of ``text`` (``None`` from a counter without a tokenizer)."""
        ...


class ApproxCounter:
    """~4 characters per token: the fallback when no encoding can be loaded."""

    def count(self, text: str) -> int:
        return (len(text) + 3) // 4

    def encode(self, text: str) -> None:
        return None


class TiktokenCounter:
    """Exact counts with a tiktoken encoding.

    The encoding is built for this counter rather than taken from tiktoken's registry, and its Python
    copy of the BPE ranks (~16 MiB for cl100k_base, kept by tiktoken only for pickling) is dropped once
    the Rust tokenizer holds them: a third of the gateway's idle memory otherwise.
    """

    def __init__(self, encoding_name: str = "cl100k_base") -> None:
        import tiktoken
        from tiktoken_ext import openai_public

        self.encoding_name = encoding_name
        constructor = getattr(openai_public, encoding_name, None)
        if constructor is None:
            self._encoding = tiktoken.get_encoding(encoding_name)
        else:
            self._encoding = tiktoken.Encoding(**constructor())
            self._encoding._mergeable_ranks = {}
        self._encode = self._encoding.encode_ordinary

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken encoding (its BPE ranks live in the Rust tokenizer only)."""
        return self._encoding

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (special-token text is encoded as ordinary text, as for counting)."""
        return self._encode(text) if text else []


def bundled_tiktoken_dir() -> Path | None:
    """litellm's bundled tiktoken cache directory, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def load_tiktoken(encoding_name: str = "cl100k_base") -> TiktokenCounter:
    """A tiktoken counter that works offline (litellm's bundled encodings); raises ``OSError``,
    ``ValueError`` or ``ImportError`` when the encoding cannot be loaded."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        bundled = bundled_tiktoken_dir()
        if bundled is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    return TiktokenCounter(encoding_name)


def load_counter(encoding_name: str = "cl100k_base") -> TokenCounter:
    """A tiktoken counter that works offline, or the approximate one (logged) if none loads."""
    try:
        return load_tiktoken(encoding_name)
    except (OSError, ValueError, ImportError) as exc:
        log.warning("tiktoken encoding %s unavailable offline (%s); counting ~4 chars/token", encoding_name, exc)
        return ApproxCounter()
