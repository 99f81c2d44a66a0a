"""SmoothQuant (Xiao et al., 2022): migrate activation outliers into the weights.

Per input channel ``j`` of a group of linear layers that read the same input,
``s_j = max|x_j|^α / max|W[:, j]|^(1-α)``; the input is divided by ``s`` (folded
into the producing norm or previous linear) and the weights' columns multiplied
by it, so both activations and weights become easy to quantize to int8 (W8A8).
In edgellm the weights are then stored as q8_0 and the decode kernels quantize
each activation row to int8 blocks of 32 for integer dot products.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["smooth_scales"]


def smooth_scales(x_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Smoothing factors per input channel (``(in,)``, > 0)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    xm = np.maximum(np.asarray(x_absmax, dtype=np.float64), 1e-5)
    wm = np.max([np.abs(np.asarray(w, dtype=np.float64)).max(axis=0) for w in weights], axis=0)
    wm = np.maximum(wm, 1e-5)
    s = np.power(xm, alpha) / np.power(wm, 1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)
