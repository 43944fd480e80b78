"""The semantic cache's vector index: an in-process mirror of each bucket, kept current incrementally.

A bucket lives in the store as an append-only log (a Redis stream; a list in the in-process store) of
:class:`cache.base.BucketMember` rows, trimmed to the newest ``max_bucket``. Reading the whole bucket on
every lookup costs ~1 KB per member (8 MB for 10,000), so each process keeps a decoded float32 matrix per
bucket and asks the store only for the rows appended since its cursor (one round trip, usually empty).
The search is one matrix-vector product over the live rows: ~1 ms for 10,000 x 384 on one core.

Rows of an entry key that was stored again are superseded (the newest row wins); rows whose entry has
expired are skipped; rows older than the store's oldest row (trimmed, or the bucket expired and started
again) are forgotten. The mirrors are bounded by ``max_vectors`` in total, least recently used dropped
first (a dropped bucket is read whole on its next lookup). ``docs/semantic-cache.md`` explains how this
scales beyond one process's memory (a server-side vector index, sharding by bucket).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cache.base import BucketDelta, BucketMember, row_order

F32 = npt.NDArray[np.float32]
#: What a search reads: matrix, expiry times, keys, questions, the first and the end row.
_View = tuple[F32, npt.NDArray[np.float64], list[str], list[str], int, int]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A cached entry near the query: its similarity, entry key and the question it answered."""

    score: float
    entry_key: str
    question: str


class _Mirror:
    """One bucket's rows: vectors (capacity-doubling matrix), keys, questions, expiry times.

    The bucket is rows ``start`` to ``rows``. Rows the store dropped (trimmed, or older than its oldest row)
    are skipped by moving ``start`` and removed by the next copy the matrix needs anyway, so a write into a
    full bucket costs a few microseconds on the event loop instead of a copy of the whole bucket.
    """

    __slots__ = ("cursor", "dead", "dim", "expires", "ids", "keys", "matrix", "questions", "rows", "start", "where")

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.cursor: str | None = None
        self.matrix = np.zeros((16, dim), dtype=np.float32)
        self.expires = np.zeros(16, dtype=np.float64)
        self.keys: list[str] = []
        self.questions: list[str] = []
        self.ids: list[tuple[int, int]] = []  # the store's row ids, ascending
        self.where: dict[str, int] = {}  # entry key -> its live row
        self.start = 0  # rows before it are dropped
        self.rows = 0
        self.dead = 0  # superseded rows at or after start

    @property
    def size(self) -> int:
        """Rows in the bucket (superseded ones included)."""
        return self.rows - self.start

    def append(self, members: list[BucketMember], ids: list[str]) -> None:
        need = self.rows + len(members)
        if need > len(self.matrix) and self.start:
            self._shift(spare=self.size + len(members))
            need = self.rows + len(members)
        if need > len(self.matrix):
            cap = max(need, 2 * len(self.matrix))
            grown = np.zeros((cap, self.dim), dtype=np.float32)
            grown[: self.rows] = self.matrix[: self.rows]
            self.matrix = grown
            exp = np.zeros(cap, dtype=np.float64)
            exp[: self.rows] = self.expires[: self.rows]
            self.expires = exp
        start, size = self.rows, self.dim * 2
        if all(len(m.vector) == size for m in members):
            block = np.frombuffer(b"".join(m.vector for m in members), dtype=np.float16)
            self.matrix[start : start + len(members)] = block.reshape(len(members), self.dim)
        else:
            for j, m in enumerate(members):  # a vector of another model (size) never matches
                ok = len(m.vector) == size
                self.matrix[start + j] = np.frombuffer(m.vector, dtype=np.float16) if ok else 0.0
        self.expires[start : start + len(members)] = [m.expires_at for m in members]
        for m in members:
            i = self.rows
            old = self.where.get(m.entry_key)
            if old is not None:
                self._kill(old)
            self.where[m.entry_key] = i
            self.keys.append(m.entry_key)
            self.questions.append(m.question)
            self.rows += 1
        self.ids.extend(row_order(i) for i in ids)

    def drop_before(self, first: tuple[int, int]) -> None:
        """Forget the rows the store no longer holds (ids older than its oldest)."""
        self._skip(bisect.bisect_left(self.ids, first, lo=self.start))

    def _kill(self, i: int) -> None:
        self.matrix[i] = 0.0
        self.expires[i] = 0.0
        self.dead += 1

    def trim(self, keep: int) -> None:
        """Keep the newest ``keep`` rows (the store trims the oldest the same way)."""
        self._skip(self.rows - keep)

    def _skip(self, upto: int) -> None:
        """Drop the rows before ``upto``: searches skip them from now on."""
        for i in range(self.start, upto):
            key = self.keys[i]
            if self.where.get(key) == i:
                del self.where[key]
            else:
                self.dead -= 1
        self.start = max(self.start, upto)

    def compact(self) -> None:
        """Copy the live rows when superseded rows are over half the bucket, or dropped ones over half the matrix."""
        if self.dead * 2 > self.size:
            self._rebuild([i for i in range(self.start, self.rows) if self.where.get(self.keys[i]) == i])
        elif self.start * 2 > self.rows:
            self._shift(spare=self.size)

    def _shift(self, spare: int) -> None:
        """Move rows ``start`` to ``rows`` to the front of new arrays with ``spare`` free rows: the copy
        growing would make anyway, without the dropped rows (superseded rows are zero already)."""
        start, n = self.start, self.size
        matrix = np.zeros((max(16, n + spare), self.dim), dtype=np.float32)
        matrix[:n] = self.matrix[start : self.rows]
        expires = np.zeros(len(matrix), dtype=np.float64)
        expires[:n] = self.expires[start : self.rows]
        self.matrix, self.expires = matrix, expires
        self.keys, self.questions, self.ids = self.keys[start:], self.questions[start:], self.ids[start:]
        self.where = {k: i - start for k, i in self.where.items()}
        self.start, self.rows = 0, n

    def _rebuild(self, rows: list[int]) -> None:
        idx = np.asarray(rows, dtype=np.int64)
        cap = max(16, len(rows))
        matrix = np.zeros((cap, self.dim), dtype=np.float32)
        matrix[: len(rows)] = self.matrix[idx]
        expires = np.zeros(cap, dtype=np.float64)
        expires[: len(rows)] = self.expires[idx]
        keys = [self.keys[i] for i in rows]
        questions = [self.questions[i] for i in rows]
        self.ids = [self.ids[i] for i in rows]
        where: dict[str, int] = {}
        dead = 0
        for j, k in enumerate(keys):
            if k in where:
                dead += 1
            where[k] = j
        for j, k in enumerate(keys):
            if where[k] != j:
                matrix[j] = 0.0
                expires[j] = 0.0
        self.matrix, self.expires, self.keys, self.questions = matrix, expires, keys, questions
        self.where, self.start, self.rows, self.dead = where, 0, len(rows), dead

    def snapshot(self) -> _View:
        """The arrays a search reads. Appends only write past ``rows``, rebuilds make new arrays and skips
        only move ``start``, so a snapshot stays consistent while the loop thread applies deltas (a
        superseded row may read as zero)."""
        return self.matrix, self.expires, self.keys, self.questions, self.start, self.rows


def _search(view: _View, query: F32, now: float, limit: int) -> list[Candidate]:
    matrix, expires, keys, questions, start, rows = view
    n = rows - start
    if n <= 0:
        return []
    # einsum, not BLAS: one thread by construction. A multithreaded BLAS matrix-vector product (numpy's
    # default) measured 10x slower here at p50 under CPU contention: its threads wait for each other.
    scores = np.einsum("ij,j->i", matrix[start:rows], query)
    scores[expires[start:rows] <= now] = -2.0
    k = min(limit, n)
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    top = top[np.lexsort((-top, -scores[top]))]  # best first; on a tie, the newest row
    return [Candidate(float(scores[i]), keys[start + i], questions[start + i]) for i in top if scores[i] > -1.5]


class VectorIndex:
    """Bucket mirrors for one process, bounded by ``max_vectors`` rows in total (LRU).

    :meth:`apply` takes what the store returned for a bucket since its :meth:`cursor`; :meth:`search`
    is CPU work (a matrix-vector product) meant for a worker thread; a lock makes the two safe to run
    from different threads (the search holds it only to take a snapshot).
    """

    def __init__(
        self, dim: int, *, max_bucket: int, max_vectors: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.dim = dim
        self.max_bucket = max_bucket
        self.max_vectors = max_vectors
        self._clock = clock
        self._mirrors: OrderedDict[str, _Mirror] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()  # apply (loop thread) vs snapshot (worker thread)

    def __len__(self) -> int:
        return self._total

    def cursor(self, bucket: str) -> str | None:
        """Where the next read of ``bucket`` starts (None: from the beginning)."""
        mirror = self._mirrors.get(bucket)
        return None if mirror is None else mirror.cursor

    def apply(self, bucket: str, delta: BucketDelta) -> None:
        """Fold in what the store returned since :meth:`cursor`: forget the rows it no longer holds (older
        than its oldest row: trimmed, or the bucket expired and started again), append the new ones."""
        with self._lock:
            mirror = self._mirrors.get(bucket)
            if delta.length == 0:
                if mirror is not None:
                    self._drop(bucket)
                return
            if mirror is None:
                mirror = _Mirror(self.dim)
                self._mirrors[bucket] = mirror
            before = mirror.size
            if delta.first is not None and mirror.size:
                mirror.drop_before(row_order(delta.first))
            if delta.members:
                mirror.append(delta.members, delta.ids)
            mirror.trim(self.max_bucket)
            mirror.compact()
            mirror.cursor = delta.cursor
            self._total += mirror.size - before
            self._mirrors.move_to_end(bucket)
            while self._total > self.max_vectors and len(self._mirrors) > 1:
                self._drop(next(iter(self._mirrors)))

    def search(self, bucket: str, query: F32, limit: int = 4) -> list[Candidate]:
        """The ``limit`` live rows nearest ``query`` (cosine, best first)."""
        with self._lock:
            mirror = self._mirrors.get(bucket)
            if mirror is None:
                return []
            view = mirror.snapshot()
        return _search(view, query.reshape(-1), self._clock(), limit)

    def _drop(self, bucket: str) -> None:
        mirror = self._mirrors.pop(bucket)
        self._total -= mirror.size
