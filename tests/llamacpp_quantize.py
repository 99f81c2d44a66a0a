"""llama.cpp's own quantizer (``llama-quantize``, through llama-cpp-python's
``llama_model_quantize``), shared by tests/test_llamacpp_parity.py and
benches/compare_llamacpp.py.

llama.cpp chooses some tensor types itself (``output.weight`` / a tied
``token_embd.weight`` go to q6_K for Q4_0, falling back to q8_0 when a row is not
a multiple of 256), exactly as a user's ``llama-quantize`` run would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

# llama_ftype values (llama.h)
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_K_M": 15, "q5_K_M": 17, "q6_K": 18}


def quantize(src: Union[str, Path], dst: Union[str, Path], fmt: str, threads: int = 2) -> Path:
    """Writes ``dst``: the GGUF ``src`` quantized by llama.cpp to ``fmt`` (a key of FTYPES)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[fmt]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama.cpp quantization of {src} to {fmt} failed ({rc})")
    return Path(dst)
