"""The embedder (numpy and ONNX runtimes agree), the bucket search, and embedding off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from cache.semantic import F32, Embedder, SemanticEncoder, load_embedder

TEXTS = ["How do I reset my password?", "How can I reset my password?", "What is the refund policy?", "ok"]


def test_paraphrases_are_close_and_others_far(embedder: Embedder) -> None:
    v = embedder.embed(TEXTS)
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.9 > 0.5 > sims[0, 2]
    assert embedder.embed([]).shape == (0, 384)


def test_numpy_and_onnx_runtimes_agree(embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # build the ONNX files from scratch
    ref = load_embedder(runtime="numpy").embed(TEXTS)
    fp32 = load_embedder(runtime="onnx").embed(TEXTS)
    int8 = load_embedder(runtime="onnx-int8").embed(TEXTS)
    assert np.min((ref * fp32).sum(axis=1)) > 0.9999
    assert np.min((ref * int8).sum(axis=1)) > 0.9  # int8 weights: ~0.995 on sentences, less on one word
    assert len(list((tmp_path / "llm-gateway").glob("*.onnx"))) == 2


class SlowEmbedder:
    """Blocks until released: shows the event loop keeps running while embedding."""

    dim = 2

    def __init__(self) -> None:
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> F32:
        self.release.wait(5)
        out: F32 = np.full((len(texts), 2), np.sqrt(0.5), dtype=np.float32)
        return out


async def test_embedding_runs_off_the_event_loop_with_a_bound_and_a_timeout() -> None:
    slow = SlowEmbedder()
    enc = SemanticEncoder(slow, timeout_s=0.2, max_pending=2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1

    with pytest.raises(TimeoutError):
        await asyncio.gather(enc.encode("a"), ticker())
    assert ticks == 10  # the loop ran while the embedding blocked its thread
    pending = asyncio.ensure_future(enc.encode("b"))
    await asyncio.sleep(0.05)
    assert enc.busy  # "a" (timed out, still running) and "b" fill the queue
    assert await enc.encode("c") is None  # saturated: skip rather than queue
    slow.release.set()
    vec = await pending
    assert vec is not None and vec.shape == (2,)
    enc.close()


def test_token_states_match_the_sentence_vector(embedder: Embedder) -> None:
    from cache.minilm import MiniLMEmbedder

    if not isinstance(embedder, MiniLMEmbedder):
        pytest.skip("token states are a MiniLM feature")
    states = embedder.embed_tokens(TEXTS[:2])
    assert len(states) == 2 and embedder.embed_tokens([]) == []
    first = states[0]
    assert first.tokens[:2] == ("how", "do") and first.tokens[-1] == "?"  # [CLS] and [SEP] dropped
    assert first.states.shape == (len(first.tokens), 384)
    assert np.allclose(first.vector, embedder.embed(TEXTS[:2])[0], atol=1e-5)
    reset = first.states[first.tokens.index("reset")]
    other = states[1].states[states[1].tokens.index("reset")]
    assert float(reset @ other / np.linalg.norm(reset) / np.linalg.norm(other)) > 0.8  # aligned across paraphrases
