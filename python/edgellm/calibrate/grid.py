"""Integer quantization grids with group-wise scales, exactly representable as
GGML blocks (so what the calibration algorithms optimise is what the engine runs).

A weight ``W`` of shape ``(out, in)`` is split along ``in`` into groups of
``group_size`` columns (``-1``: one group per row); each (row, group) has a
``scale`` and an ``offset``:

- symmetric: ``w ≈ q * scale`` with ``q`` in ``[-2^(b-1), 2^(b-1) - 1]`` (8 bits:
  ``[-127, 127]``). The scale is signed, ``w_ext / -2^(b-1)`` for the element of
  largest magnitude ``w_ext`` (llama.cpp's Q4_0 choice, which uses all 2^b
  levels). Stored as Q4_0 (``q + 8`` nibbles) for b <= 4 and Q8_0 for b = 8.
- asymmetric: ``w ≈ q * scale + offset`` with ``q`` in ``[0, 2^b - 1]``,
  ``offset = min``; stored as Q4_1 (``d = scale``, ``m = offset``) for b <= 4.

Scales and offsets are rounded to float16 before the integers are chosen, as the
blocks store them. 3- and 2-bit grids are stored in edgellm's own packed formats
(``q3_g128`` / ``q2_g128`` symmetric, ``q3a_g128`` / ``q2a_g128`` asymmetric: one
f16 scale, plus an f16 min when asymmetric, per 128 weights; 3.125 / 3.25 / 2.125
/ 2.25 bits per weight), which need every group to cover whole 128-weight blocks:
``group_size`` a multiple of 128, or -1 for rows of a multiple of 128 values.
Other group sizes (32, 64, 96, ...) fit only the 4-bit container blocks
(``format="q4_0"``/``"q4_1"``: their quality at 4-bit size), which can also be
asked for explicitly. GGUF cannot hold the native low-bit formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["Grid", "QuantizedWeight", "rtn", "LOWBIT_FORMATS"]

BLOCK = 32
# Elements per block of the native low-bit formats.
LOWBIT_BLOCK = 128
# (bits, symmetric) -> native low-bit format.
LOWBIT_FORMATS = {(3, True): "q3_g128", (3, False): "q3a_g128", (2, True): "q2_g128", (2, False): "q2a_g128"}


@dataclass(frozen=True)
class Grid:
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    #: Storage block type; ``None``: the first of :meth:`formats`.
    format: Optional[str] = None

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise InvalidArgumentError(f"bits must be 8, 4, 3 or 2, got {self.bits!r}")
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % BLOCK):
            raise InvalidArgumentError(
                f"group_size must be a positive multiple of {BLOCK} (the GGML block) or -1 (per row), got {self.group_size!r}"
            )
        if self.bits == 8 and not self.symmetric:
            raise InvalidArgumentError("8-bit quantization is symmetric only (stored as q8_0 blocks)")
        if self.format is not None and self.format not in self.formats():
            kind = "symmetric" if self.symmetric else "asymmetric"
            raise InvalidArgumentError(
                f"format {self.format!r} cannot hold a {self.bits}-bit {kind} grid with group_size={self.group_size}; "
                f"choose one of {', '.join(self.formats())}"
            )

    def formats(self) -> Tuple[str, ...]:
        """Block types that hold this grid exactly, the default first."""
        if self.bits == 8:
            return ("q8_0",)
        container = "q4_0" if self.symmetric else "q4_1"
        if self.bits == 4:
            return (container,)
        if self.group_size == -1 or self.group_size % LOWBIT_BLOCK == 0:
            return (LOWBIT_FORMATS[(self.bits, self.symmetric)], container)
        return (container,)

    @property
    def block(self) -> int:
        """Elements per storage block: rows must be whole blocks."""
        return LOWBIT_BLOCK if self.ggml_type in LOWBIT_FORMATS.values() else BLOCK

    @property
    def qmin(self) -> int:
        if self.symmetric:
            return -127 if self.bits == 8 else -(1 << (self.bits - 1))
        return 0

    @property
    def qmax(self) -> int:
        if self.symmetric:
            return 127 if self.bits == 8 else (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1

    @property
    def ggml_type(self) -> str:
        """The block type the grid is stored as."""
        return self.format if self.format is not None else self.formats()[0]

    def groups(self, cols: int) -> int:
        g = self.group(cols)
        if cols % g:
            raise InvalidArgumentError(f"rows of {cols} values are not whole groups of {g}")
        return cols // g

    def group(self, cols: int) -> int:
        """Columns per group for rows of ``cols`` values."""
        if cols % BLOCK:
            raise InvalidArgumentError(f"rows of {cols} values are not whole blocks of {BLOCK}")
        return cols if self.group_size == -1 else self.group_size

    def params(self, w: np.ndarray, clip: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(scale, offset) of one group per row of ``w`` (``(rows, group)``), each
        ``(rows,)`` float64, f16-rounded. ``clip`` (``(rows,)``, in (0, 1]) shrinks
        the range (AWQ's clipping search)."""
        w = np.asarray(w, dtype=np.float64)
        if self.symmetric:
            idx = np.abs(w).argmax(axis=1)
            ext = w[np.arange(w.shape[0]), idx]
            if clip is not None:
                ext = ext * clip
            if self.bits == 8:
                scale = np.abs(ext) / 127.0
            else:
                scale = ext / self.qmin  # qmin < 0: maps ext to qmin exactly
            return _f16(scale), np.zeros(w.shape[0])
        lo, hi = w.min(axis=1), w.max(axis=1)
        if clip is not None:
            lo, hi = lo * clip, hi * clip
        # Like Q4_1, the range always includes its ends; an all-equal group has scale 0.
        scale = (hi - lo) / self.qmax
        return _f16(scale), _f16(lo)

    def quantize(self, w: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Integers of ``w`` (``(rows, cols)``) on the grid of per-row ``scale`` and
        ``offset`` (``(rows,)`` or broadcastable to ``w``)."""
        w = np.asarray(w, dtype=np.float64)
        s = np.asarray(scale, dtype=np.float64)
        o = np.asarray(offset, dtype=np.float64)
        if s.ndim == 1:
            s, o = s[:, None], o[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(s != 0, np.rint((w - o) / np.where(s != 0, s, 1.0)), 0.0)
        return np.clip(q, self.qmin, self.qmax)

    def dequantize(self, q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        s = np.asarray(scale, dtype=np.float64)
        o = np.asarray(offset, dtype=np.float64)
        if s.ndim == 1:
            s, o = s[:, None], o[:, None]
        return q * s + o


def _f16(x: np.ndarray) -> np.ndarray:
    """Rounded to float16 (as blocks store scales), non-finite values flushed to 0."""
    y = np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)
    return np.where(np.isfinite(y), y, 0.0)


@dataclass
class QuantizedWeight:
    """A weight on a :class:`Grid`: integers ``q`` (``(out, in)``), and per
    (row, group) ``scale`` and ``offset`` (``(out, groups)``)."""

    grid: Grid
    q: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    @property
    def shape(self) -> Tuple[int, int]:
        return self.q.shape  # type: ignore[return-value]

    def expanded(self) -> Tuple[np.ndarray, np.ndarray]:
        """Scale and offset per element, ``(out, in)``."""
        g = self.grid.group(self.q.shape[1])
        return np.repeat(self.scale, g, axis=1), np.repeat(self.offset, g, axis=1)

    def dequantize(self) -> np.ndarray:
        s, o = self.expanded()
        return (self.q * s + o).astype(np.float32)


def rtn(w: np.ndarray, grid: Grid, clip: Optional[np.ndarray] = None) -> QuantizedWeight:
    """Round-to-nearest: every group's grid from its own range. ``clip``: optional
    ``(out, groups)`` range shrink factors."""
    w = np.asarray(w, dtype=np.float64)
    rows, cols = w.shape
    g = grid.group(cols)
    ng = grid.groups(cols)
    q = np.empty_like(w)
    scale = np.empty((rows, ng))
    offset = np.empty((rows, ng))
    for j in range(ng):
        part = w[:, j * g:(j + 1) * g]
        s, o = grid.params(part, None if clip is None else clip[:, j])
        q[:, j * g:(j + 1) * g] = grid.quantize(part, s, o)
        scale[:, j], offset[:, j] = s, o
    return QuantizedWeight(grid, q, scale, offset)
