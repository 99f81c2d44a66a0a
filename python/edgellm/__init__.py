"""edgellm: small language models on edge CPUs, from Python.

>>> import edgellm
>>> edgellm.generate("def quicksort(arr):")        # the embedded default model
>>> model = edgellm.load("path/to/hf-checkpoint", threads=2)
>>> model.generate("Hello", max_new_tokens=32, temperature=0)
"""

from . import errors
from ._core import __version__, active_isa, supported_isas
from .errors import *  # noqa: F401,F403  (every exception class, listed in errors.__all__)
from .model import Model, Tokenizer, default_model_path, generate, load
from .calibrate import quantize
from .ops import matmul

__all__ = [
    "__version__",
    "load",
    "quantize",
    "matmul",
    "generate",
    "default_model_path",
    "Model",
    "Tokenizer",
    "supported_isas",
    "active_isa",
    *errors.__all__,
]
