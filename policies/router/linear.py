"""Weighted L2-regularised logistic regression on sparse n-grams + dense cues (numpy L-BFGS).

Training-time only; inference lives in :mod:`policies.router.model`. The design matrix is
``[X_sparse | X_dense | 1]`` with ``X_sparse`` in CSR arrays, so no scipy is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

__all__ = ["Design", "LinearFit", "fit_logistic"]


@dataclass(frozen=True)
class Design:
    """A CSR sparse block (``indptr``/``indices``/``values``, ``n_sparse`` columns) + dense block."""

    indptr: IntArray
    indices: IntArray
    values: FloatArray
    n_sparse: int
    dense: FloatArray

    @property
    def n_rows(self) -> int:
        """Number of rows (prompts)."""
        return int(self.indptr.size - 1)

    def rows_of_nnz(self) -> IntArray:
        """Row index of every stored sparse value."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.indptr))

    def subset(self, rows: IntArray) -> Design:
        """Design restricted to ``rows`` (in that order)."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)] or [np.empty(0)])
        take = take.astype(np.int64)
        return Design(
            indptr=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            indices=self.indices[take],
            values=self.values[take],
            n_sparse=self.n_sparse,
            dense=self.dense[rows],
        )


@dataclass(frozen=True)
class LinearFit:
    """Fitted coefficients: ``z = sparse @ w_sparse + dense @ w_dense + bias``."""

    w_sparse: FloatArray
    w_dense: FloatArray
    bias: float
    iterations: int
    loss: float

    def decision(self, design: Design) -> FloatArray:
        """Linear scores (logits) of every row of ``design``."""
        contrib = design.values * self.w_sparse[design.indices]
        z = np.bincount(design.rows_of_nnz(), weights=contrib, minlength=design.n_rows)
        return np.asarray(z + design.dense @ self.w_dense + self.bias, dtype=np.float64)


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def fit_logistic(
    design: Design,
    target: FloatArray,
    weights: FloatArray,
    l2_sparse: float,
    l2_dense: float,
    max_iter: int = 300,
    tol: float = 1e-6,
    memory: int = 10,
) -> LinearFit:
    """Minimise weighted mean log-loss (soft targets in [0, 1] allowed) + L2 penalties.

    ``weights`` are normalised to mean 1; the bias is not penalised. Deterministic.
    """
    n, v, d = design.n_rows, design.n_sparse, design.dense.shape[1]
    rows = design.rows_of_nnz()
    wt = weights / weights.sum()
    dense = design.dense
    lam = np.concatenate((np.full(v, l2_sparse), np.full(d, l2_dense), [0.0]))

    def loss_grad(theta: FloatArray) -> tuple[float, FloatArray]:
        ws, wd, b = theta[:v], theta[v : v + d], theta[-1]
        z = np.bincount(rows, weights=design.values * ws[design.indices], minlength=n) + dense @ wd + b
        # log(1 + e^z) - y z, computed stably.
        loss = float(np.dot(wt, np.logaddexp(0.0, z) - target * z)) + 0.5 * float(np.dot(lam, theta * theta))
        r = wt * (_sigmoid(z) - target)
        g = np.empty_like(theta)
        g[:v] = np.bincount(design.indices, weights=design.values * r[rows], minlength=v)
        g[v : v + d] = dense.T @ r
        g[-1] = r.sum()
        g += lam * theta
        return loss, g

    theta = np.zeros(v + d + 1)
    pos = float(np.clip(np.dot(wt, target), 1e-6, 1 - 1e-6))
    theta[-1] = np.log(pos / (1 - pos))
    f, g = loss_grad(theta)
    s_hist: list[FloatArray] = []
    y_hist: list[FloatArray] = []
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        # Two-loop recursion for the L-BFGS direction.
        q = g.copy()
        alphas: list[float] = []
        for s, y in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = float(np.dot(s, q)) / float(np.dot(y, s))
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= float(np.dot(s_hist[-1], y_hist[-1])) / float(np.dot(y_hist[-1], y_hist[-1]))
        for (s, y), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            beta = float(np.dot(y, q)) / float(np.dot(y, s))
            q += (a - beta) * s
        direction = -q
        slope = float(np.dot(g, direction))
        if slope >= 0:
            direction, slope = -g, -float(np.dot(g, g))
            s_hist.clear()
            y_hist.clear()
        step = 1.0 if s_hist else min(1.0, 1.0 / max(float(np.abs(g).sum()), 1e-12))
        while True:
            cand = theta + step * direction
            f_new, g_new = loss_grad(cand)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s_vec, y_vec = cand - theta, g_new - g
        if float(np.dot(s_vec, y_vec)) > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= tol * max(1.0, abs(f))
        theta, f, g = cand, f_new, g_new
        if converged or float(np.max(np.abs(g))) < tol:
            break
    return LinearFit(
        w_sparse=theta[:v].copy(), w_dense=theta[v : v + d].copy(), bias=float(theta[-1]), iterations=it, loss=f
    )
