"""Array operations on edgellm's kernels, numpy in and out."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from .errors import InvalidArgumentError

__all__ = ["matmul"]


def matmul(a: Any, b: Any, *, threads: Optional[int] = None, isa: Optional[str] = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays in float32 on edgellm's packed GEMM (the prefill
    kernel: register-blocked micro-kernel, cache blocking, the AVX2/NEON path this
    CPU has or ``isa``), on ``threads`` worker threads (default: all cores), with
    the GIL released. Inputs are converted to C-contiguous float32 (a copy only
    when they are not already); the result is a new ``(n, m)`` float32 array."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2:
        raise InvalidArgumentError(f"matmul takes 2-D arrays, got {a.ndim}-D and {b.ndim}-D")
    if a.shape[1] != b.shape[0]:
        raise InvalidArgumentError(f"matmul: a is {a.shape[0]} × {a.shape[1]} but b is {b.shape[0]} × {b.shape[1]}")
    return _core.matmul(a, b, threads, isa)
