"""The user-facing API: load a model, tokenize, compute logits, generate, chat."""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from .errors import InvalidArgumentError, InvalidTokenError

__all__ = ["Model", "Tokenizer", "load", "generate", "default_model_path"]

Prompt = Union[str, Sequence[int], "np.ndarray"]
Message = Mapping[str, Any]

_DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
_LOAD_OPTIONS = ("max_context", "isa", "quant", "kv_cache", "repack")


def default_model_path() -> str:
    """Directory of the small embedded default model (a Python code model)."""
    return str(_DEFAULT_MODEL_DIR)


class Tokenizer:
    """The model's tokenizer: ids identical to transformers' tokenizer call."""

    def __init__(self, core: _core.Model) -> None:
        self._core = core

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of ``text``; BOS/EOS added as the tokenizer config says."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._core.encode(text, add_special_tokens)

    __call__ = encode

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (as transformers' ``decode``)."""
        return self._core.decode(_as_id_list(ids), skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._core.token_to_id(token)

    def id_to_token(self, id: int) -> Optional[str]:
        return self._core.id_to_token(id)

    @property
    def vocab_size(self) -> int:
        return self._core.tokenizer_vocab_size

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._core.bos_token_id

    @property
    def eos_token_ids(self) -> List[int]:
        return self._core.eos_token_ids

    def __repr__(self) -> str:
        return f"<edgellm.Tokenizer vocab_size={self.vocab_size}>"


def _as_id_list(ids: Any) -> List[int]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidArgumentError(f"token ids must be a 1-D sequence, got an array of shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InvalidArgumentError(f"token ids must be integers, got dtype {ids.dtype}")
        return ids.astype(np.int64).tolist()
    if isinstance(ids, (str, bytes)):
        raise TypeError("token ids must be a sequence of ints, not a string")
    out = []
    for i in ids:
        if isinstance(i, (bool, float)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token ids must be ints, got {type(i).__name__}")
        i = int(i)
        if not -(2**63) <= i < 2**63:  # beyond what the core takes (it rejects any id >= vocab)
            raise InvalidTokenError(f"token id {i} is out of range for the vocabulary")
        out.append(i)
    return out


def _check_count(name: str, value: Any, minimum: int = 0) -> None:
    """An optional non-negative integer argument (max_new_tokens, top_k, seed, threads, ...)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= int(value) < 2**64:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value}")


_GENERATION_OPTIONS = (
    "max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos",
)


def _generation_options(args: Dict[str, Any]) -> Dict[str, Any]:
    """The generation keyword arguments of ``generate``/``stream`` (from their locals)."""
    return {k: args[k] for k in _GENERATION_OPTIONS}


def _stop_list(stop: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    return [str(s) for s in stop]


class Model:
    """A loaded model. Thread-safe: concurrent generations run independently."""

    def __init__(self, core: _core.Model) -> None:
        self._core = core
        self.tokenizer = Tokenizer(core)
        self._last_stats: Optional[Dict[str, Any]] = None
        self._last_finish_reason: Optional[str] = None
        self._imported: Optional[Dict[str, Any]] = None  # set by load() for GPTQ/AWQ checkpoints

    # --- description ------------------------------------------------------
    @property
    def path(self) -> str:
        return str(self._core.path)

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + generated tokens) this model instance accepts."""
        return self._core.max_context

    @property
    def threads(self) -> int:
        return self._core.threads

    @property
    def kv_cache(self) -> str:
        """The KV-cache policy, e.g. ``"streaming(sinks=4, window=1024) + kivi2(group=32, residual=128)"``."""
        return self._core.kv_cache

    def kv_cache_bytes(self) -> int:
        """Bytes held by the KV cache of the most recent generation or perplexity
        run on this model (as of its latest step); 0 before any."""
        return self._core.kv_cache_bytes()

    @property
    def isa(self) -> str:
        """Kernel path in use (``scalar``, ``avx2``, ``avxvnni``, ``avx512``, ``neon``, ``dotprod`` or ``i8mm``)."""
        return self._core.isa

    def info(self) -> Dict[str, Any]:
        """Architecture, parameter counts by part, dtype, file size, KV bytes per token;
        for a GPTQ/AWQ checkpoint also ``import``: its method, bits, group size,
        the block types its projections became and those dequantized to f16."""
        info = self._core.info()
        if self._imported is not None:
            info["import"] = dict(self._imported)
        return info

    def memory(self, context: Optional[int] = None, batch: int = 1) -> Dict[str, int]:
        """Bytes needed to run ``batch`` sequences of ``context`` tokens (default: the
        model's context): ``weights``, ``kv_cache``, ``activations`` and ``total``."""
        _check_count("context", context, minimum=1)
        _check_count("batch", batch, minimum=1)
        return self._core.memory(context, batch)

    def generation_defaults(self) -> Dict[str, Any]:
        """Values from generation_config.json (None where unset)."""
        return self._core.generation_defaults()

    @property
    def last_stats(self) -> Optional[Dict[str, Any]]:
        """Statistics of the last completed ``generate``/``chat`` call on this model."""
        return self._last_stats

    @property
    def last_finish_reason(self) -> Optional[str]:
        return self._last_finish_reason

    def __repr__(self) -> str:
        i = self.info()
        return (
            f"<edgellm.Model {i['architecture']} {i['parameters']['total'] / 1e6:.1f}M params "
            f"{i['dtype']} threads={self.threads} isa={self.isa} path={self.path!r}>"
        )

    # --- compute --------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of a fresh sequence: float32 ``(len(token_ids), vocab_size)``."""
        return self._core.logits(_as_id_list(token_ids))

    def _prompt_ids(self, prompt: Prompt) -> "tuple[List[int], bool]":
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt), True
        return _as_id_list(prompt), False

    def _start(self, prompt: Prompt, text: Optional[bool], kw: Dict[str, Any]) -> _core.Generator:
        for name in ("max_new_tokens", "top_k", "seed"):
            _check_count(name, kw.get(name))
        ids, is_text = self._prompt_ids(prompt)
        kw = dict(kw)
        kw["stop"] = _stop_list(kw.get("stop"))
        if kw.get("stop_token_ids") is not None:
            kw["stop_token_ids"] = _as_id_list(kw["stop_token_ids"])
        return self._core.start(ids, is_text if text is None else text, **kw)

    def generate(
        self,
        prompt: Prompt,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        ignore_eos: bool = False,
    ) -> Union[str, List[int]]:
        """Continue ``prompt``. A str prompt returns the generated str; a list of token
        ids returns the list of new token ids. ``temperature=0`` is greedy; unset
        arguments come from the model's generation_config.json (greedy if it does not
        ask for sampling). Ctrl-C stops between tokens and leaves the model usable."""
        g = self._start(prompt, None, _generation_options(locals()))
        text, ids = g.run()
        self._last_stats = g.stats
        self._last_finish_reason = g.finish_reason
        return text if isinstance(prompt, str) else ids

    def stream(
        self,
        prompt: Prompt,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        ignore_eos: bool = False,
    ) -> _core.Generator:
        """Like :meth:`generate`, but an iterator of pieces as they are produced (text
        pieces for a str prompt, token ids for ids). The iterator also has ``stats``,
        ``finish_reason`` and ``tokens``."""
        return self._start(prompt, None, _generation_options(locals()))

    # --- chat -------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return self._core.has_chat_template

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """Render ``messages`` with the model's chat template (sandboxed minijinja)."""
        extra = json.dumps(variables) if variables else None
        return self._core.apply_chat_template(json.dumps(list(messages)), add_generation_prompt, extra)

    def chat(self, messages: Sequence[Message], *, stream: bool = False, **kw: Any) -> Union[str, Iterator[str]]:
        """Reply to a conversation (a list of ``{"role", "content"}`` dicts) using the
        chat template; generation arguments as for :meth:`generate`."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        if stream:
            return self._start(ids, True, kw)
        g = self._start(ids, True, kw)
        text, _ = g.run()
        self._last_stats = g.stats
        self._last_finish_reason = g.finish_reason
        return text

    # --- evaluation ---------------------------------------------------------------
    def perplexity(
        self,
        text: Union[str, Sequence[int]],
        window: Optional[int] = None,
        add_special_tokens: bool = True,
        mode: str = "chunked",
    ) -> float:
        """Teacher-forced perplexity of ``text`` (or token ids) over consecutive
        windows of at most ``window`` tokens (default: the model's context).

        ``mode="decode"`` feeds the tokens one per step through the model's KV
        policy (eviction and quantization act between steps, as in generation and
        as these methods are evaluated in their papers); ``"chunked"`` (default)
        runs each window in chunks of 128 tokens. With a ``window`` or
        ``streaming`` KV policy, ``window`` may exceed the context length."""
        if mode not in ("chunked", "decode"):
            raise InvalidArgumentError(f"perplexity mode must be 'chunked' or 'decode', not {mode!r}")
        _check_count("window", window, minimum=2)
        if isinstance(text, str):
            ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        else:
            ids = _as_id_list(text)
        if len(ids) < 2:
            raise InvalidArgumentError("perplexity needs at least 2 tokens")
        nll, count = self._core.nll(ids, window, decode=mode == "decode")
        return float(np.exp(nll / count))


class _ProgressBar:
    """A one-line text progress bar on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        sys.stderr.flush()


def _progress_callback(progress: Any, label: str) -> Optional[Callable[[int, int], None]]:
    if callable(progress):
        return progress
    if progress is None:
        progress = sys.stderr.isatty()
    return _ProgressBar(label) if progress else None


def load(
    path: Union[None, str, "os.PathLike[str]"] = None,
    *,
    threads: Optional[int] = None,
    progress: Union[None, bool, Callable[[int, int], None]] = None,
    **options: Any,
) -> Model:
    """Load a model. ``path=None`` loads the embedded default model; otherwise an HF
    checkpoint directory (config.json, *.safetensors, tokenizer.json) or a GGUF file.
    GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ GEMM) checkpoints are converted
    once into an edgellm checkpoint (q4_0 / q4_1 / q8_0 blocks where the grid maps
    exactly, f16 otherwise; cached under ``$EDGELLM_CACHE_DIR``, default
    ``~/.cache/edgellm``), see ``edgellm.calibrate.hf_import``; ``info()["import"]``
    describes the conversion.

    Options: ``threads`` (default: all cores), ``max_context`` (tokens),
    ``isa`` (force a kernel path: "scalar", "avx2", "avxvnni", "avx512", "neon", "dotprod", "i8mm"; default from ``EDGELLM_ISA``),
    ``quant`` (quantize the weights at load: "q8_0", "q4_0", "q4_K", "q6_K", ... —
    GGUF-compatible blocks run by the integer-dot kernels — or edgellm's own
    "nf4" (QLoRA NormalFloat, f16 absmax per 64 values, 4.25 bits/weight),
    "fp8_e4m3", "fp8_e5m2" (FP8 codes, f16 absmax per 32 values, 8.5 bits/weight),
    run by their own kernels with float32 activations).
    ``repack``: weight matrices repacked at load into the kernels' panels
    (same size; a file's pages are then released, so memory is not doubled):
    q4_0/q8_0 (and q4_K/q5_K/q6_K on x86-64) into interleaved 8-row panels (results
    identical bit for bit),
    f32/f16/bf16 into the float GEMM's 16-row panels (summed in the GEMM's order
    at every prompt length: a token's logits do not depend on the batch).
    ``"auto"`` (default: q4_0, q8_0, q4_K, q5_K, q6_K and float weights mapped from the file, on
    x86-64),
    ``"all"`` (also weights quantized at load, whose row copy then stays in
    memory beside the panels; on aarch64, where the NEON panels are not yet timed
    on hardware, the only way in) or ``"off"`` (the file's layout);
    ``True``/``False`` mean auto/off.

    ``kv_cache``: the KV-cache policy of every generation and evaluation, an
    eviction rule composed with a storage format (default: everything, f32):

    - ``{"type": "window", "size": N}``: the N most recent tokens;
    - ``{"type": "streaming", "sinks": 4, "window": N}``: StreamingLLM, the first
      tokens plus a recent window, positions counted inside the cache;
    - ``{"type": "h2o", "budget": 0.2, "recent": N}``: H2O heavy hitters within a
      budget (a fraction of the tokens seen, or a token count);
    - ``{"type": "kivi", "bits": 2, "group_size": 32, "residual": 128}``,
      ``{"type": "int8"}``, ``{"type": "f16"}``: quantized storage of every token.

    - ``{"type": "full", "select_blocks": N}``: query-aware block selection
      (Quest): each decoding step attends only to the N 64-token key blocks with
      the highest bound on the attention score, plus the newest block; nothing
      is evicted, attention reads less.

    The eviction rules take ``"quant": {...}`` (or ``"int8"``, ``"kivi"``...) to
    store their tokens quantized, e.g. ``{"type": "streaming", "sinks": 4,
    "window": 1024, "quant": {"type": "kivi", "bits": 2}}``. With ``window`` and
    ``streaming`` generation never raises ``ContextLengthError``.

    ``progress``: a bar on stderr while quantizing (default: when stderr is a
    terminal; ``True``/``False`` to force), or a callable ``f(done, total)``."""
    unknown = set(options) - set(_LOAD_OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown load option(s): {', '.join(sorted(unknown))} (known: threads, {', '.join(_LOAD_OPTIONS)})"
        )
    _check_count("threads", threads, minimum=1)
    _check_count("max_context", options.get("max_context"), minimum=1)
    p = default_model_path() if path is None else os.fspath(path)
    kv = options.get("kv_cache")
    if kv is not None:
        if not isinstance(kv, (str, Mapping)):
            raise InvalidArgumentError(f"kv_cache must be a dict or a type name, not {type(kv).__name__}")
        try:
            options["kv_cache"] = json.dumps(kv if isinstance(kv, str) else dict(kv))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"kv_cache is not JSON-serialisable: {e}") from None
    if options.get("quant") is not None:
        options["progress"] = _progress_callback(progress, f"quantizing to {options['quant']}")
    if isinstance(options.get("repack"), bool):
        options["repack"] = "auto" if options["repack"] else "off"
    imported = None
    if os.path.isdir(p):
        from .calibrate.hf_import import cached_import, quant_method

        if quant_method(p) is not None:
            converted, imported = cached_import(p)
            p = str(converted)
            if imported["dequantized"]:
                warnings.warn(
                    f"{len(imported['dequantized'])} {imported['method']} projection(s) do not map onto GGML blocks "
                    f"and run dequantized to f16: {', '.join(imported['dequantized'][:4])}"
                    + (" ..." if len(imported["dequantized"]) > 4 else ""),
                    stacklevel=2,
                )
    model = Model(_core.Model.load(p, threads=threads, **options))
    model._imported = imported
    return model


_default_lock = threading.Lock()
_default_model: Optional[Model] = None


def _shared_default() -> Model:
    global _default_model
    with _default_lock:
        if _default_model is None:
            _default_model = load()
        return _default_model


def generate(prompt: str, model: Union[None, Model, str, "os.PathLike[str]"] = None, **kw: Any) -> str:
    """One-call generation: ``model`` is a :class:`Model`, a path, or None for the
    embedded default model (loaded once and reused)."""
    if model is None:
        m = _shared_default()
    elif isinstance(model, Model):
        m = model
    else:
        m = load(model)
    return m.generate(prompt, **kw)  # type: ignore[return-value]
