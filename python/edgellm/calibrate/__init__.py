"""Calibrated post-training quantization: :func:`quantize` (``edgellm.quantize``)
and the numpy algorithms it runs on activations captured by the Rust engine
(``edgellm._core.Calibrator``):

- :mod:`.grid`: group-wise integer grids stored as GGML blocks; round-to-nearest;
- :mod:`.gptq`: GPTQ (Hessian, dampening, Cholesky inverse, lazy batches, act-order);
- :mod:`.awq`: AWQ (activation-aware scale search, clipping search, folding);
- :mod:`.smoothquant`: SmoothQuant smoothing factors (W8A8);
- :mod:`.blocks`: packing into q4_0 / q4_1 / q8_0 blocks and the native q3/q2 formats; :mod:`.checkpoint`: safetensors I/O;
- :mod:`.gguf_export`: :func:`export_gguf`, the checkpoint as a GGUF file for llama.cpp;
- :mod:`.kquants`: calibrated grids re-fitted to llama.cpp's Q4_K (``quantize(format="q4_K")``);
- :mod:`.hf_import`: GPTQ / AWQ checkpoints converted to edgellm blocks (``edgellm.load`` calls it);
- :mod:`.minifloat`: NF4 / FP8 round trips on the Rust codecs.
"""

from .awq import awq_clip, awq_scales, gram, output_error
from .gguf_export import export_gguf
from .gptq import Hessian, gptq
from .grid import Grid, QuantizedWeight, rtn
from .run import METHODS, quantize
from .smoothquant import smooth_scales

__all__ = [
    "quantize", "export_gguf", "METHODS", "Grid", "QuantizedWeight", "rtn", "gptq", "Hessian",
    "awq_scales", "awq_clip", "gram", "output_error", "smooth_scales",
]
