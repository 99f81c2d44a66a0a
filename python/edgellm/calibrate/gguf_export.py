"""GGUF export of edgellm checkpoints (a pure-Python GGUF v3 writer), so llama.cpp
runs edgellm-calibrated weights: the q4_0 / q4_1 / q8_0 / q4_K blocks are copied as
they are, under llama.cpp's tensor names, with its Q/K row permutation (a per-row
reorder, so it applies to quantized rows unchanged) and the metadata and
vocabulary llama.cpp's converter writes (``convert_hf_to_gguf.py``, LlamaModel
with a GPT-2-style byte-level BPE vocabulary).

Checkpoints holding edgellm-only block types (``nf4``, ``fp8_e4m3``,
``fp8_e5m2``) are refused with :class:`~edgellm.errors.InvalidArgumentError`
naming the type: llama.cpp has none of them, and a conversion would export
different weights than the ones the checkpoint was evaluated with.

Supported: ``LlamaForCausalLM`` checkpoints (no rope scaling) whose tokenizer.json
is a byte-level BPE with GPT-2 pre-tokenization (the embedded default model's).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from ..errors import InvalidArgumentError, ModelFormatError
from .checkpoint import QUANT_METADATA_KEY, SourceTensors, to_f32
from .grid import LOWBIT_FORMATS

__all__ = ["export_gguf"]

ALIGN = 32
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8, "q4_K": 12}
# llama_ftype (general.file_type); q4_K: MOSTLY_Q4_K_S (every projection q4_K)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_K": 14}
# GGUF metadata value types
U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
# llama.cpp token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _s(x: str) -> bytes:
    b = x.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(kind: int, v: Any) -> bytes:
    if kind == U32:
        return struct.pack("<I", v)
    if kind == I32:
        return struct.pack("<i", v)
    if kind == F32:
        return struct.pack("<f", v)
    if kind == BOOL:
        return struct.pack("<?", v)
    if kind == U64:
        return struct.pack("<Q", v)
    if kind == STRING:
        return _s(v)
    raise ValueError(kind)


def _kv(key: str, kind: int, v: Any, elem: int = 0) -> bytes:
    out = _s(key) + struct.pack("<I", kind)
    if kind == ARRAY:
        out += struct.pack("<IQ", elem, len(v)) + b"".join(_value(elem, x) for x in v)
    else:
        out += _value(kind, v)
    return out


def _permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute`` of Q/K weight rows (HF rotate-half halves -> pairs)."""
    d = rows.shape[0] // n_head
    return rows.reshape(n_head, 2, d // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _vocab(tok: Dict[str, Any], vocab_size: int) -> Tuple[List[str], List[int], List[str]]:
    model = tok.get("model", {})
    pre = tok.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or not (
        pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    ):
        raise InvalidArgumentError(
            "GGUF export supports byte-level BPE tokenizers with GPT-2 pre-tokenization "
            "(tokenizer.json model BPE, pre_tokenizer ByteLevel with use_regex)"
        )
    id_to_tok: Dict[int, str] = {i: t for t, i in model["vocab"].items()}
    kinds: Dict[int, int] = {}
    for a in tok.get("added_tokens", []):
        id_to_tok[a["id"]] = a["content"]
        kinds[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    if max(id_to_tok) >= vocab_size:
        raise ModelFormatError(f"tokenizer has ids up to {max(id_to_tok)} for a vocabulary of {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in id_to_tok:
            tokens.append(id_to_tok[i])
            types.append(kinds.get(i, NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(checkpoint: Union[str, "os.PathLike[str]"], out: Union[str, "os.PathLike[str]"]) -> Path:
    """Writes the edgellm (or plain HF) checkpoint directory ``checkpoint`` as the
    GGUF file ``out``; returns its path."""
    src = Path(os.fspath(checkpoint))
    out_p = Path(os.fspath(out))
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch != "LlamaForCausalLM":
        raise InvalidArgumentError(f"GGUF export supports LlamaForCausalLM checkpoints, not {arch}")
    rope = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise InvalidArgumentError("GGUF export does not support rope scaling yet")
    theta = float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads", n_head))
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    n_layer = int(cfg["num_hidden_layers"])
    vocab_size = int(cfg["vocab_size"])
    tok_json = src / "tokenizer.json"
    if not tok_json.is_file():
        raise ModelFormatError(f"{src} has no tokenizer.json")
    tokens, types, merges = _vocab(json.loads(tok_json.read_text(encoding="utf-8")), vocab_size)
    tok_cfg_p = src / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_p.read_text(encoding="utf-8")) if tok_cfg_p.is_file() else {}

    source = SourceTensors(src)
    quant = _quantized_types(source)
    _reject_edgellm_only(quant)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(n_layer):
        for hf, g in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    if cfg.get("tie_word_embeddings"):
        names.pop("lm_head.weight")
    tensors: List[Tuple[str, List[int], str, bytes]] = []  # gguf name, HF shape, type, bytes
    for hf, g in names.items():
        if hf not in source.entries:
            if hf == "lm_head.weight":
                continue
            raise ModelFormatError(f"missing tensor {hf!r} in {src}")
        dtype, shape, data = source.raw(hf)
        if hf in quant:
            ty, shape = quant[hf]
            arr = np.frombuffer(data, dtype=np.uint8).reshape(shape[0], -1)
        elif dtype in ("F32", "F16", "BF16"):
            arr = to_f32(dtype, data).reshape(shape)
            ty = "f32" if len(shape) == 1 or dtype != "F16" else "f16"
            if ty == "f16":
                arr = arr.astype(np.float16)
        else:
            raise ModelFormatError(f"tensor {hf!r} has dtype {dtype}, which GGUF export does not handle")
        if ty in LOWBIT_FORMATS.values():
            raise InvalidArgumentError(
                f"tensor {hf!r} is {ty}, an edgellm-only low-bit format that GGUF cannot hold; "
                "re-quantize with format='q4_0' or 'q4_1' (the 4-bit container) to export"
            )
        if ty not in GGML_TYPES:
            raise InvalidArgumentError(f"tensor {hf!r} is {ty}; GGUF export writes f32, f16, q4_0, q4_1, q8_0 and q4_K")
        if g.endswith("attn_q.weight"):
            arr = _permute_rows(arr, n_head)
        elif g.endswith("attn_k.weight"):
            arr = _permute_rows(arr, n_kv)
        tensors.append((g, list(shape), ty, np.ascontiguousarray(arr).tobytes()))

    proj_types = {quant[n][0] for n in quant if ".layers." in n}
    ftype = FILE_TYPES[proj_types.pop()] if len(proj_types) == 1 else 1
    a = "llama"
    kvs = [
        _kv("general.architecture", STRING, a),
        _kv("general.name", STRING, src.name),
        _kv("general.file_type", U32, ftype),
        _kv("general.quantization_version", U32, 2),
        _kv("general.alignment", U32, ALIGN),
        _kv(f"{a}.vocab_size", U32, vocab_size),
        _kv(f"{a}.context_length", U32, int(cfg.get("max_position_embeddings", 2048))),
        _kv(f"{a}.embedding_length", U32, hidden),
        _kv(f"{a}.block_count", U32, n_layer),
        _kv(f"{a}.feed_forward_length", U32, int(cfg["intermediate_size"])),
        _kv(f"{a}.rope.dimension_count", U32, head_dim),
        _kv(f"{a}.attention.head_count", U32, n_head),
        _kv(f"{a}.attention.head_count_kv", U32, n_kv),
        _kv(f"{a}.attention.key_length", U32, head_dim),
        _kv(f"{a}.attention.value_length", U32, head_dim),
        _kv(f"{a}.rope.freq_base", F32, theta),
        _kv(f"{a}.attention.layer_norm_rms_epsilon", F32, float(cfg.get("rms_norm_eps", 1e-6))),
        _kv("tokenizer.ggml.model", STRING, "gpt2"),
        _kv("tokenizer.ggml.pre", STRING, "gpt-2"),  # llama.cpp's name (it rejects "gpt2")
        _kv("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        _kv("tokenizer.ggml.token_type", ARRAY, types, I32),
        _kv("tokenizer.ggml.merges", ARRAY, merges, STRING),
        _kv("tokenizer.ggml.add_bos_token", BOOL, bool(tok_cfg.get("add_bos_token", False))),
        _kv("tokenizer.ggml.add_eos_token", BOOL, bool(tok_cfg.get("add_eos_token", False))),
    ]
    for key, cfg_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("padding_token_id", "pad_token_id")):
        v = cfg.get(cfg_key)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int) and 0 <= v < vocab_size:
            kvs.append(_kv(f"tokenizer.ggml.{key}", U32, v))
    if isinstance(tok_cfg.get("chat_template"), str):
        kvs.append(_kv("tokenizer.chat_template", STRING, tok_cfg["chat_template"]))

    infos, offset = [], 0
    for g, shape, ty, data in tensors:
        dims = list(reversed(shape))  # GGUF lists the innermost dimension first
        infos.append(_s(g) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                     + struct.pack("<IQ", GGML_TYPES[ty], offset))
        offset += len(data) + (-len(data) % ALIGN)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    with open(out_p, "wb") as f:
        f.write(head + b"\0" * (-len(head) % ALIGN))
        for _g, _shape, _ty, data in tensors:
            f.write(data + b"\0" * (-len(data) % ALIGN))
    return out_p


# Block types only edgellm runs: GGUF has no type id for them, and converting
# would silently change the weights the checkpoint was evaluated with.
EDGELLM_ONLY_TYPES = ("nf4", "fp8_e4m3", "fp8_e5m2")


def _reject_edgellm_only(quant: Dict[str, Tuple[str, List[int]]]) -> None:
    for name, (ty, _shape) in sorted(quant.items()):
        if ty.lower() in EDGELLM_ONLY_TYPES:
            raise InvalidArgumentError(
                f"tensor {name!r} is {ty}, an edgellm-only block type that GGUF (llama.cpp) has no type for; "
                "re-quantize to q4_0/q4_1/q8_0 for GGUF export"
            )


def _quantized_types(source: SourceTensors) -> Dict[str, Tuple[str, List[int]]]:
    """name -> (ggml type, logical shape) from every file's edgellm metadata."""
    out: Dict[str, Tuple[str, List[int]]] = {}
    for f in {e[0] for e in source.entries.values()}:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            meta = json.loads(fh.read(n)).get("__metadata__") or {}
        if QUANT_METADATA_KEY in meta:
            for name, d in json.loads(meta[QUANT_METADATA_KEY]).items():
                out[name] = (d["type"], list(d["shape"]))
    return out
