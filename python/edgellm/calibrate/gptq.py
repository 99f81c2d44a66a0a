"""GPTQ (Frantar et al., 2022): quantize a linear layer's columns one at a time,
spreading each column's rounding error over the not-yet-quantized columns through
the inverse Hessian of the layer's reconstruction loss ``||X Wᵀ - X Qᵀ||²``.

Steps as in the reference implementation: Hessian ``H = 2/n Σ xᵀx`` accumulated
over calibration rows; dead inputs (zero diagonal) pinned; dampening
``λ = damp · mean(diag H)``; the upper Cholesky factor of ``H⁻¹`` (via the
Cholesky factor of ``H``); columns processed in blocks with the error of a block
applied lazily to the remaining columns in one matrix product; optional
activation order (columns by decreasing ``diag H``). Group scales: with
``act_order`` they are fixed up front from the original weights (static groups,
so each group stays a run of contiguous columns, as GGML blocks require);
otherwise each group's grid is chosen from the error-updated weights when its
first column is reached.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InvalidArgumentError
from .grid import Grid, QuantizedWeight

__all__ = ["Hessian", "gptq"]


class Hessian:
    """Running ``2/n Σ xᵀx`` over rows of layer inputs (float64)."""

    def __init__(self, columns: int) -> None:
        self.h = np.zeros((columns, columns))
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.h.shape[0])
        m = x.shape[0]
        if m == 0:
            return
        total = self.n + m
        self.h *= self.n / total
        self.h += (2.0 / total) * (x.T @ x)
        self.n = total


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``(H + λI)⁻¹ = Uᵀ U``), raising
    the dampening tenfold until ``H + λI`` is positive definite."""
    mean_diag = float(np.mean(np.diag(h)))
    lam = damp * (mean_diag if mean_diag > 0 else 1.0)
    eye = np.eye(h.shape[0])
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h + lam * eye)
            linv = np.linalg.solve(lower, eye)  # L⁻¹, lower triangular
            hinv = linv.T @ linv
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            lam *= 10.0
    raise InvalidArgumentError("GPTQ: the Hessian stays singular even with strong dampening")


def gptq(
    w: np.ndarray,
    h: "np.ndarray | Hessian",
    grid: Grid,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> QuantizedWeight:
    """Quantizes ``w`` (``(out, in)``) given the Hessian of its inputs."""
    if isinstance(h, Hessian):
        h = h.h
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise InvalidArgumentError(f"GPTQ: Hessian of shape {h.shape} for a weight with {cols} columns")
    if not damp > 0:
        raise InvalidArgumentError(f"GPTQ: damp must be > 0, got {damp}")
    g = grid.group(cols)
    ng = grid.groups(cols)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    scale = np.zeros((rows, ng))
    offset = np.zeros((rows, ng))
    static = act_order
    if static:
        for j in range(ng):
            scale[:, j], offset[:, j] = grid.params(w[:, j * g:(j + 1) * g])

    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    w = w[:, perm]
    h = h[perm][:, perm]
    u = _inverse_cholesky(h, damp)
    q = np.zeros_like(w)
    group_of = perm // g  # group (in original order) of each permuted column

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            grp = group_of[c]
            if not static and perm[c] % g == 0:
                # First column of a group (no permutation here): the group's grid
                # from the current, error-compensated weights.
                ahead = w1[:, i:i + g] if i + g <= i2 - i1 else np.concatenate([w1[:, i:], w[:, i2:c + g]], axis=1)
                scale[:, grp], offset[:, grp] = grid.params(ahead)
            col = w1[:, i]
            qc = grid.quantize(col[:, None], scale[:, grp], offset[:, grp])[:, 0]
            q[:, c] = qc
            deq = qc * scale[:, grp] + offset[:, grp]
            e = (col - deq) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]

    inv = np.argsort(perm)
    return QuantizedWeight(grid, q[:, inv], scale, offset)
