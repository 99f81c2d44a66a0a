"""Packing grid-quantized weights into GGML blocks (byte layouts of ggml's
``block_q4_0``, ``block_q4_1`` and ``block_q8_0``), the formats the engine's
integer-dot kernels run, and the safetensors metadata that describes them."""

from __future__ import annotations

import numpy as np

from .grid import BLOCK, QuantizedWeight

__all__ = ["pack", "BLOCK_BYTES"]

BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(*x.shape, 2)


def pack(qw: QuantizedWeight) -> "tuple[str, np.ndarray]":
    """(GGML type name, ``uint8`` array ``(rows, row_bytes)``) of ``qw``."""
    grid = qw.grid
    ty = grid.ggml_type
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
