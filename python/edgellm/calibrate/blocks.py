"""Packing grid-quantized weights into GGML blocks (byte layouts of ggml's
``block_q4_0``, ``block_q4_1`` and ``block_q8_0``) and edgellm's low-bit group
formats (``q3_g128``, ``q3a_g128``, ``q2_g128``, ``q2a_g128``), the formats the
engine's integer-dot kernels run.

Low-bit block (128 weights; see rust/edgellm-kernels/src/quant/blocks.rs): f16
``d``, f16 ``m`` (asymmetric only), 32 bytes ``qs``, 16 bytes ``qh`` (3-bit only).
Code ``u`` of element ``e = 32s + 16h + l``: low bits at bits ``2s..2s+2`` of
``qs[16h + l]``, third bit at bit ``4h + s`` of ``qh[l]``. Symmetric grids store
``u = q + 2^(bits-1)`` (``w = d·(u − 2^(bits−1))``), asymmetric ``u = q``
(``w = d·u + m``), so the codes the algorithms chose are stored exactly."""

from __future__ import annotations

import numpy as np

from .grid import BLOCK, LOWBIT_BLOCK, LOWBIT_FORMATS, QuantizedWeight

__all__ = ["pack", "BLOCK_BYTES"]

BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34, "q3_g128": 50, "q3a_g128": 52, "q2_g128": 34, "q2a_g128": 36}


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(*x.shape, 2)


def pack(qw: QuantizedWeight) -> "tuple[str, np.ndarray]":
    """(GGML type name, ``uint8`` array ``(rows, row_bytes)``) of ``qw``."""
    grid = qw.grid
    ty = grid.ggml_type
    if ty in LOWBIT_FORMATS.values():
        return ty, _pack_lowbit(qw)
    rows, cols = qw.q.shape
    nb = cols // BLOCK
    g = grid.group(cols)
    first = (np.arange(nb) * BLOCK) // g  # group of each block
    d = qw.scale[:, first]
    m = qw.offset[:, first]
    q = qw.q.astype(np.int64).reshape(rows, nb, BLOCK)
    out = np.empty((rows, nb, BLOCK_BYTES[ty]), dtype=np.uint8)
    out[..., 0:2] = _f16_bytes(d)
    if ty == "q8_0":
        out[..., 2:] = q.astype(np.int8).view(np.uint8)
    else:
        if ty == "q4_0":
            nib = (q + 8).astype(np.uint8)
            at = 2
        else:
            out[..., 2:4] = _f16_bytes(m)
            nib = q.astype(np.uint8)
            at = 4
        if nib.max(initial=0) > 15:
            raise AssertionError("4-bit block value out of range")
        out[..., at:] = nib[..., :16] | (nib[..., 16:] << 4)
    return ty, out.reshape(rows, nb * BLOCK_BYTES[ty])


def _pack_lowbit(qw: QuantizedWeight) -> np.ndarray:
    grid = qw.grid
    ty = grid.ggml_type
    rows, cols = qw.q.shape
    if cols % LOWBIT_BLOCK:
        raise ValueError(f"{ty} rows must be whole blocks of {LOWBIT_BLOCK}, got {cols} values")
    nb = cols // LOWBIT_BLOCK
    g = grid.group(cols)
    if g % LOWBIT_BLOCK:
        raise ValueError(f"{ty} needs groups of a multiple of {LOWBIT_BLOCK}, got {g}")
    first = (np.arange(nb) * LOWBIT_BLOCK) // g
    u = qw.q.astype(np.int64) - grid.qmin  # symmetric: q + 2^(bits-1); asymmetric: q
    if u.min(initial=0) < 0 or u.max(initial=0) >= 1 << grid.bits:
        raise AssertionError(f"{grid.bits}-bit code out of range")
    u = u.astype(np.uint8).reshape(rows, nb, 4, 2, 16)  # (row, block, s, h, l)
    shifts = np.arange(4, dtype=np.uint8)[None, None, :, None, None]
    qs = np.bitwise_or.reduce((u & 3) << (2 * shifts), axis=2).reshape(rows, nb, 32)
    parts = [_f16_bytes(qw.scale[:, first])]
    if not grid.symmetric:
        parts.append(_f16_bytes(qw.offset[:, first]))
    parts.append(qs)
    if grid.bits == 3:
        hs = (4 * np.arange(2, dtype=np.uint8)[None, :] + np.arange(4, dtype=np.uint8)[:, None])[None, None, :, :, None]
        parts.append(np.bitwise_or.reduce((((u >> 2) & 1) << hs).reshape(rows, nb, 8, 16), axis=2))
    out = np.concatenate(parts, axis=2)
    assert out.shape[2] == BLOCK_BYTES[ty]
    return out.reshape(rows, nb * BLOCK_BYTES[ty])
