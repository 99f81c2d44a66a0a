"""NF4 and FP8 (E4M3 / E5M2) weight grids on the Rust codecs
(``edgellm._core.fp8_encode`` / ``nf4_encode``): quantize-dequantize of a weight
matrix with an f32 scale (per 64 values for NF4, per row for FP8), for studying
the codecs. The engine's native NF4 / FP8 weight formats (``quant="nf4"``,
``edgellm.quantize(..., format="fp8_e4m3")``) store an f16 absmax per block
instead: see ``rust/edgellm-kernels/src/quant/blocks.rs``."""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import InvalidArgumentError

__all__ = ["nf4_roundtrip", "fp8_roundtrip", "FP8_MAX"]

FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def nf4_roundtrip(w: np.ndarray, block: int = 64) -> np.ndarray:
    """NF4 with one float32 absmax per ``block`` consecutive values of a row (QLoRA's
    layout without double quantization): 4 bits + 32/block bits per weight."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % block:
        raise InvalidArgumentError(f"NF4 needs rows of whole {block}-value blocks, got shape {w.shape}")
    b = w.reshape(-1, block)
    absmax = np.abs(b).max(axis=1, keepdims=True)
    scaled = np.divide(b, absmax, out=np.zeros_like(b), where=absmax > 0)
    codes = _core.nf4_encode(np.ascontiguousarray(scaled.ravel()))
    vals = np.asarray(_core.nf4_values(), dtype=np.float32)[codes].reshape(b.shape)
    return (vals * absmax).reshape(w.shape)


def fp8_roundtrip(w: np.ndarray, fmt: str = "e4m3") -> np.ndarray:
    """FP8 with one float32 scale per output row (``absmax / format max``), values
    saturated to the format's range."""
    if fmt not in FP8_MAX:
        raise InvalidArgumentError(f"unknown FP8 format {fmt!r}; choose e4m3 or e5m2")
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=1, keepdims=True) / np.float32(FP8_MAX[fmt])).astype(np.float32)
    scaled = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)
    codes = _core.fp8_encode(np.ascontiguousarray(scaled.ravel()), fmt, saturate=True)
    return (_core.fp8_decode(codes, fmt).reshape(w.shape) * scale).astype(np.float32)
