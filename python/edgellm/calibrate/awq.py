"""AWQ (Lin et al., 2023): activation-aware weight quantization.

Weights multiplying large activations matter most. AWQ scales each input channel
``j`` of a group of linear layers that read the same input by ``s_j`` (weights
``W[:, j] · s_j``, input ``x_j / s_j``, the inverse folded into the operation that
produces the input: a norm's gain, or the rows of the previous linear), so the
important channels get finer effective resolution; then it shrinks each weight
group's range where that lowers the output error (clipping). Both searches
minimise the output error ``||X Wᵀ - X Ŵᵀ||²`` on calibration inputs, computed
through the Gram matrix ``XᵀX``.

- scale search: ``s = mean|x|^r / mean|ŵ|^(1-r)`` (``ŵ``: weights normalised by
  their group maximum; AutoAWQ's ``duo_scaling``) and the paper's ``s = mean|x|^r``,
  normalised by ``sqrt(max s · min s)``, over a grid of exponents ``r`` in
  ``[0, 1)``; ``s = 1`` (plain RTN) is a candidate, so the search never does worse
  than RTN on the calibration data.
- clipping search: per (row, group), the range shrink factor in
  ``[1, 1 - max_shrink]`` minimising that group's contribution to the error.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .grid import Grid, QuantizedWeight, rtn

__all__ = ["gram", "awq_scales", "awq_clip", "output_error"]


def gram(x: np.ndarray) -> np.ndarray:
    """``XᵀX / n`` in float64 (the second moment of the inputs)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    return (x.T @ x) / max(x.shape[0], 1)


def output_error(w: np.ndarray, w_hat: np.ndarray, g: np.ndarray) -> float:
    """Mean squared output error ``E||x (w - ŵ)ᵀ||²`` per token given ``g = XᵀX/n``."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.sum((d @ g) * d))


def _w_mean(weights: Sequence[np.ndarray], grid: Grid) -> np.ndarray:
    """Mean over rows of ``|w|`` normalised by its group's max (AutoAWQ's w_mean)."""
    parts = []
    for w in weights:
        w = np.abs(np.asarray(w, dtype=np.float64))
        gsz = grid.group(w.shape[1])
        wg = w.reshape(w.shape[0], -1, gsz)
        m = wg.max(axis=2, keepdims=True)
        parts.append((wg / np.where(m > 0, m, 1.0)).reshape(w.shape))
    return np.concatenate(parts, axis=0).mean(axis=0)


def awq_scales(
    x_mean: np.ndarray,
    g: np.ndarray,
    weights: Sequence[np.ndarray],
    grid: Grid,
    *,
    n_grid: int = 20,
    duo: bool = True,
) -> Tuple[np.ndarray, float]:
    """Per-input-channel scales for ``weights`` (all reading the same input) and the
    chosen exponent. ``x_mean``: mean ``|x|`` per channel; ``g``: ``XᵀX/n``."""
    x_mean = np.asarray(x_mean, dtype=np.float64)
    w_mean = _w_mean(weights, grid)
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    best = (np.inf, np.ones_like(x_mean), 0.0)
    candidates: List[Tuple[float, bool]] = [(0.0, False)]  # plain RTN first
    candidates += [(i / n_grid, duo) for i in range(n_grid)]
    if duo:
        candidates += [(i / n_grid, False) for i in range(1, n_grid)]  # the paper's mean|x|^r too
    for r, use_w in candidates:
        if use_w:
            s = np.power(np.maximum(x_mean, 1e-8), r) / np.power(np.maximum(w_mean, 1e-8), 1 - r)
        else:
            s = np.power(np.maximum(x_mean, 1e-8), r)
        s = np.maximum(s, 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        err = 0.0
        for w in ws:
            w_hat = rtn(w * s, grid).dequantize().astype(np.float64) / s
            err += output_error(w, w_hat, g)
        if err < best[0]:
            best = (err, s, r)
    return best[1], best[2]


def awq_clip(w: np.ndarray, g: np.ndarray, grid: Grid, *, n_grid: int = 20, max_shrink: float = 0.5) -> np.ndarray:
    """Per (row, group) range shrink factors (``(out, groups)``) minimising each
    group's output error ``dᵀ G_jj d`` (``G = XᵀX/n``)."""
    w = np.asarray(w, dtype=np.float64)
    rows, cols = w.shape
    gsz, ng = grid.group(cols), grid.groups(cols)
    best_err = np.full((rows, ng), np.inf)
    best = np.ones((rows, ng))
    for i in range(int(max_shrink * n_grid) + 1):
        ratio = 1.0 - i / n_grid
        clip = np.full((rows, ng), ratio)
        d = w - rtn(w, grid, clip).dequantize().astype(np.float64)
        for j in range(ng):
            sl = slice(j * gsz, (j + 1) * gsz)
            dj = d[:, sl]
            err = np.sum((dj @ g[sl, sl]) * dj, axis=1)
            better = err < best_err[:, j]
            best_err[better, j] = err[better]
            best[better, j] = ratio
    return best


def awq_quantize(w: np.ndarray, s: np.ndarray, g_scaled: np.ndarray, grid: Grid, *, clip: bool = True) -> QuantizedWeight:
    """Quantizes the scaled weight ``w · s`` (columns), with the clipping search run
    against the scaled inputs' Gram matrix ``g_scaled``."""
    ws = np.asarray(w, dtype=np.float64) * s
    c = awq_clip(ws, g_scaled, grid) if clip else None
    return rtn(ws, grid, c)
