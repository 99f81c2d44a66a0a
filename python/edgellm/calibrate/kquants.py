"""Calibrated int4 grids as GGML ``q4_K`` blocks (llama.cpp's Q4_K), so a
calibrated checkpoint exports to the k-quant format llama.cpp users expect.

A ``block_q4_K`` holds 256 weights in 8 sub-blocks of 32:
``w = d * sc_j * q - dmin * m_j`` with 4-bit ``q``, 6-bit ``sc_j``/``m_j`` and f16
``d``/``dmin`` per 256 weights. A calibrated grid (group size a multiple of 32)
gives every sub-block its own affine grid ``a_j * u + b_j`` (``u`` in 0..15), but
Q4_K can only hold ``a_j`` and ``-b_j`` as 6-bit multiples of one shared step, and
``b_j <= 0``. The exact encoding exists only when the calibrated scales happen to
be such multiples, which is rare, so this module *re-fits*:

1. ``d = max a_j / 63`` and ``dmin = max(-b_j) / 63`` (f16), ``sc_j``/``m_j`` the
   nearest 6-bit integers;
2. each sub-block tries its ``sc_j``/``m_j`` and their neighbours (±1), and keeps
   the pair whose re-chosen codes give the smallest squared error against the
   calibrated (dequantized) weights; codes are the nearest of the 16 levels.

So the stored weights are the Q4_K weights closest (per element, given the
quantized scales) to what the calibration chose, not to the float weights: the
calibration's error compensation carries over, plus a small re-fit error that
``quantize`` reports (``q4_K_refit_error``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .grid import QuantizedWeight

__all__ = ["QK_K", "Q4K_BYTES", "sub_block_grids", "refit_q4_k", "pack_q4_k", "dequantize_q4_k"]

QK_K = 256
SUB = 32
Q4K_BYTES = 144


def _f16(x: np.ndarray) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)
    return np.where(np.isfinite(y), y, 0.0)


def sub_block_grids(qw: QuantizedWeight) -> Tuple[np.ndarray, np.ndarray]:
    """``(a, b)``, each ``(rows, cols / 32)``: every sub-block's grid written as
    ``a * u + b`` with ``u`` in 0..15 and ``a >= 0`` (a symmetric grid's signed
    scale ``s`` becomes ``|s|`` with the levels mirrored)."""
    rows, cols = qw.q.shape
    g = qw.grid.group(cols)
    first = (np.arange(cols // SUB) * SUB) // g
    s = qw.scale[:, first].astype(np.float64)
    o = qw.offset[:, first].astype(np.float64)
    if qw.grid.symmetric:
        # s * (u - 8): for s < 0 the same levels are |s| * (u' - 7), u' = 15 - u.
        return np.abs(s), np.where(s >= 0, -8.0 * s, 7.0 * s)
    return s, o


def refit_q4_k(target: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Q4_K parameters for ``target`` (``(rows, cols)``, cols a multiple of 256)
    starting from the sub-block grids ``a``/``b``. Returns ``(d, dmin, sc, m, q)``:
    ``d``/``dmin`` ``(rows, cols/256)`` f16 values, ``sc``/``m`` ``(rows, cols/32)``
    in 0..63, ``q`` ``(rows, cols)`` in 0..15."""
    t = np.asarray(target, dtype=np.float64)
    rows, cols = t.shape
    nsb, nsub = cols // QK_K, cols // SUB
    a3 = a.reshape(rows, nsb, 8)
    nb3 = np.maximum(-b, 0.0).reshape(rows, nsb, 8)  # Q4_K's minimum is never positive
    d = _f16(a3.max(axis=2) / 63.0)
    dmin = _f16(nb3.max(axis=2) / 63.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc0 = np.where(d[..., None] > 0, np.rint(a3 / d[..., None]), 0.0).reshape(rows, nsub)
        m0 = np.where(dmin[..., None] > 0, np.rint(nb3 / dmin[..., None]), 0.0).reshape(rows, nsub)
    dd = np.repeat(d, 8, axis=1)  # (rows, nsub)
    dm = np.repeat(dmin, 8, axis=1)
    ts = t.reshape(rows, nsub, SUB)
    best_err = np.full((rows, nsub), np.inf)
    best_sc = np.zeros((rows, nsub))
    best_m = np.zeros((rows, nsub))
    best_q = np.zeros((rows, nsub, SUB))
    for dsc in (0, -1, 1):
        sc = np.clip(sc0 + dsc, 0, 63)
        for dmi in (0, -1, 1):
            m = np.clip(m0 + dmi, 0, 63)
            q, err = _codes(ts, dd * sc, dm * m)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_sc = np.where(better, sc, best_sc)
            best_m = np.where(better, m, best_m)
            best_q = np.where(better[..., None], q, best_q)
    return d, dmin, best_sc.astype(np.uint8), best_m.astype(np.uint8), best_q.reshape(rows, cols).astype(np.uint8)


def _codes(ts: np.ndarray, step: np.ndarray, mn: np.ndarray):
    """Nearest codes of ``ts`` (``(rows, nsub, 32)``) on ``step * q - mn`` and the
    squared error per sub-block."""
    st, mm = step[..., None], mn[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(st > 0, np.clip(np.rint((ts + mm) / np.where(st > 0, st, 1.0)), 0, 15), 0.0)
    err = ((st * q - mm - ts) ** 2).sum(axis=2)
    return q, err


def pack_q4_k(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``uint8`` ``(rows, cols/256 * 144)``: ggml's ``block_q4_K`` layout (d, dmin,
    12 bytes of 6-bit scales/mins, 128 bytes of nibbles: within each 64 weights,
    the low nibbles hold the first 32 and the high nibbles the next 32)."""
    rows, cols = q.shape
    nsb = cols // QK_K
    out = np.zeros((rows, nsb, Q4K_BYTES), dtype=np.uint8)
    out[..., 0:2] = np.ascontiguousarray(d.astype("<f2")).view(np.uint8).reshape(rows, nsb, 2)
    out[..., 2:4] = np.ascontiguousarray(dmin.astype("<f2")).view(np.uint8).reshape(rows, nsb, 2)
    s = sc.reshape(rows, nsb, 8).astype(np.uint8)
    mn = m.reshape(rows, nsb, 8).astype(np.uint8)
    k = np.zeros((rows, nsb, 12), dtype=np.uint8)
    # ggml's get_scale_min_k4 inverted: sub-blocks 0..3 in 6 bits of bytes 0..7,
    # 4..7 split into low nibbles (bytes 8..11) and 2 high bits on top of bytes 0..7.
    k[..., 0:4] = s[..., 0:4] | ((s[..., 4:8] >> 4) << 6)
    k[..., 4:8] = mn[..., 0:4] | ((mn[..., 4:8] >> 4) << 6)
    k[..., 8:12] = (s[..., 4:8] & 0x0F) | ((mn[..., 4:8] & 0x0F) << 4)
    out[..., 4:16] = k
    qq = q.reshape(rows, nsb, 4, 2, SUB).astype(np.uint8)
    out[..., 16:] = (qq[:, :, :, 0, :] | (qq[:, :, :, 1, :] << 4)).reshape(rows, nsb, 128)
    return out.reshape(rows, nsb * Q4K_BYTES)


def dequantize_q4_k(blocks: np.ndarray, cols: int) -> np.ndarray:
    """Float32 weights ``(rows, cols)`` of packed ``q4_K`` rows (an independent
    reading of the byte layout, used to check the packing)."""
    rows = blocks.shape[0]
    nsb = cols // QK_K
    b = blocks.reshape(rows, nsb, Q4K_BYTES)
    d = b[..., 0:2].copy().view("<f2")[..., 0].astype(np.float32)
    dmin = b[..., 2:4].copy().view("<f2")[..., 0].astype(np.float32)
    k = b[..., 4:16].astype(np.uint8)
    sc = np.empty((rows, nsb, 8), np.float32)
    mn = np.empty((rows, nsb, 8), np.float32)
    for j in range(8):
        if j < 4:
            sc[..., j], mn[..., j] = k[..., j] & 63, k[..., j + 4] & 63
        else:
            sc[..., j] = (k[..., j + 4] & 0x0F) | ((k[..., j - 4] >> 6) << 4)
            mn[..., j] = (k[..., j + 4] >> 4) | ((k[..., j] >> 6) << 4)
    qs = b[..., 16:].reshape(rows, nsb, 4, SUB)
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, nsb, 8, SUB).astype(np.float32)
    w = d[..., None, None] * sc[..., None] * q - dmin[..., None, None] * mn[..., None]
    return w.reshape(rows, cols)
