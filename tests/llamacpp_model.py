"""Opens a GGUF file in llama.cpp (llama-cpp-python), for the tests and
benches/compare_llamacpp.py.

On CPUs with AMX, llama.cpp (llama-cpp-python 0.3.36, built natively) moves
q8_0/q4_0 weights into its AMX "extra buffer type", and `llama_decode` then
segfaults on the test fixtures (seen on a Sapphire Rapids-class VM reporting
AMX_INT8 = 1: the same file runs with the extra buffer types off). There they
are turned off, so llama.cpp runs its ordinary CPU kernels; elsewhere it runs
as a user's default install does.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union


@functools.cache
def has_amx() -> bool:
    """Whether this llama.cpp build uses AMX on this CPU (asked once per process)."""
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


def open_model(path: Union[str, Path], extra_bufts: Optional[bool] = None, **kwargs):
    """`llama_cpp.Llama(path, **kwargs)`, with llama.cpp's extra weight buffer
    types (AMX, repacked layouts) on or off; `None`: off only where AMX is used."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    if extra_bufts is None:
        extra_bufts = not has_amx()
    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = extra_bufts
        return p

    # `Llama` takes no such argument; it reads its defaults from this function.
    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    finally:
        lib.llama_model_default_params = default
