"""GGUF model files: ``edgellm.load("model.gguf")`` with the same API as HF directories.

The fixtures in tests/fixtures/gguf/ were written by scripts/make_gguf_fixtures.py,
which reproduces llama.cpp's convert_hf_to_gguf.py for the fixture models (see
tests/fixtures/gguf/README.md). This module also carries a small GGUF reader and
writer (no `gguf` package at test time) that it uses to

* convert more HF fixtures to GGUF the way llama.cpp's converter names, permutes
  and shifts tensors, so that every architecture the loader translates is checked
  against transformers' logits (reference.npz);
* rebuild an HF checkpoint from the dequantized tensors of the f16 / q8_0 / q4_0
  fixtures, which isolates the loader's translation from quantization error;
* build hostile files (truncated, absurd counts, overlapping tensors, bad types,
  ...), each of which must raise edgellm.ModelFormatError naming the problem.

Tolerances: f32 (and f16/bf16 GGUFs of f16/bf16 checkpoints) 1e-4, as the HF path.
Lossy types, against transformers' float32 logits on these random-weight models
(|logits| <= ~6; measured maxima in parentheses): f16 0.02 (0.0064), q8_0 0.4
(0.15 llama, 0.25 phi3), q4_0 4.0 (2.5). Against the same model rebuilt from the
file's dequantized tensors: 1e-4 for f16 and 2e-2 for block-quantized types
(exact today; the slack allows kernels that quantize activations as ggml does).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

import edgellm
import numpy_reference as npref
from conftest import FIXTURES_DIR, load_cases, model_dir, reference

GGUF_DIR = FIXTURES_DIR / "gguf"
ATOL = 1e-4

# --------------------------------------------------------------------------------------------
# A minimal GGUF reader / writer (little-endian, v2/v3)
# --------------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
T_F32, T_F16, T_Q4_0, T_Q8_0, T_BF16 = 0, 1, 2, 8, 30
_BLOCK = {T_F32: (1, 4), T_F16: (1, 2), T_BF16: (1, 2), T_Q8_0: (32, 34), T_Q4_0: (32, 18)}


class Tensor:
    def __init__(self, name: str, dims: Sequence[int], ggml_type: int, data: bytes):
        self.name, self.dims, self.type, self.data = name, list(dims), ggml_type, data
        self.info_pos: Dict[str, int] = {}

    @classmethod
    def f32(cls, name: str, arr: np.ndarray, ggml_type: int = T_F32) -> "Tensor":
        """A tensor from a numpy array (row-major shape; ggml dims are reversed)."""
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if ggml_type == T_F32:
            data = a.astype("<f4").tobytes()
        elif ggml_type == T_F16:
            data = a.astype("<f2").tobytes()
        elif ggml_type == T_BF16:
            data = (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raise ValueError(ggml_type)
        return cls(name, list(reversed(a.shape)) or [1], ggml_type, data)

    def to_f32(self) -> np.ndarray:
        shape = tuple(reversed(self.dims))
        raw = np.frombuffer(self.data, dtype=np.uint8)
        if self.type == T_F32:
            out = raw.view("<f4").astype(np.float32)
        elif self.type == T_F16:
            out = raw.view("<f2").astype(np.float32)
        elif self.type == T_BF16:
            out = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif self.type == T_Q8_0:
            b = raw.reshape(-1, 34)
            d = b[:, :2].copy().view("<f2").astype(np.float32)
            out = (d * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
        elif self.type == T_Q4_0:
            b = raw.reshape(-1, 18)
            d = b[:, :2].copy().view("<f2").astype(np.float32)
            q = b[:, 2:]
            lo = (q & 0x0F).astype(np.int32) - 8
            hi = (q >> 4).astype(np.int32) - 8
            out = (d * np.concatenate([lo, hi], axis=1).astype(np.float32)).reshape(-1)
        else:
            raise ValueError(f"type {self.type}")
        return out.reshape(shape)


class Gguf:
    """A parsed GGUF file (kv: key -> (type, value); arrays are (ARR, (elem_type, [values])))."""

    def __init__(self, kv: List[Tuple[str, int, Any]], tensors: List[Tensor], version: int = 3, alignment: int = 32):
        self.kv, self.tensors, self.version, self.alignment = kv, tensors, version, alignment
        self.kv_pos: Dict[str, int] = {}

    # ---- reading ----
    @classmethod
    def parse(cls, raw: bytes) -> "Gguf":
        pos = 0

        def take(fmt):
            nonlocal pos
            v = struct.unpack_from(fmt, raw, pos)
            pos += struct.calcsize(fmt)
            return v[0]

        def string():
            nonlocal pos
            n = take("<Q")
            s = raw[pos : pos + n].decode("utf-8")
            pos += n
            return s

        def value(t):
            if t in _SCALAR:
                return take(_SCALAR[t])
            if t == STR:
                return string()
            et, n = take("<I"), take("<Q")
            return (et, [value(et) for _ in range(n)])

        assert raw[:4] == b"GGUF"
        pos = 4
        version, n_t, n_kv = take("<I"), take("<Q"), take("<Q")
        kv, kv_pos = [], {}
        for _ in range(n_kv):
            start = pos
            key = string()
            t = take("<I")
            kv_pos[key] = start
            kv.append((key, t, value(t)))
        tensors = []
        for _ in range(n_t):
            info = {"start": pos}
            name = string()
            info["n_dims"] = pos
            nd = take("<I")
            info["dims"] = pos
            dims = [take("<Q") for _ in range(nd)]
            info["type"] = pos
            typ = take("<I")
            info["offset"] = pos
            off = take("<Q")
            t = Tensor(name, dims, typ, b"")
            t.info_pos, t.offset = info, off
            tensors.append(t)
        alignment = next((v for k, _, v in kv if k == "general.alignment"), 32)
        data_start = (pos + alignment - 1) // alignment * alignment
        for t in tensors:
            elems, size = _BLOCK.get(t.type, (1, 0))
            n = math.prod(t.dims)
            t.data = raw[data_start + t.offset : data_start + t.offset + n // elems * size]
        g = cls(kv, tensors, version, alignment)
        g.kv_pos, g.data_start = kv_pos, data_start
        return g

    @classmethod
    def read(cls, path) -> "Gguf":
        return cls.parse(Path(path).read_bytes())

    def get(self, key: str, default=None):
        return next((v for k, _, v in self.kv if k == key), default)

    def set(self, key: str, typ: int, value) -> "Gguf":
        self.kv = [e for e in self.kv if e[0] != key] + [(key, typ, value)]
        return self

    def drop(self, key: str) -> "Gguf":
        self.kv = [e for e in self.kv if e[0] != key]
        return self

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)

    # ---- writing ----
    def to_bytes(self) -> bytes:
        out = bytearray(b"GGUF")

        def put(fmt, v):
            out.extend(struct.pack(fmt, v))

        def string(s):
            b = s.encode("utf-8") if isinstance(s, str) else s
            put("<Q", len(b))
            out.extend(b)

        def value(t, v):
            if t in _SCALAR:
                put(_SCALAR[t], v)
            elif t == STR:
                string(v)
            else:
                et, items = v
                put("<I", et)
                put("<Q", len(items))
                for x in items:
                    value(et, x)

        put("<I", self.version)
        put("<Q", len(self.tensors))
        put("<Q", len(self.kv))
        for k, t, v in self.kv:
            string(k)
            put("<I", t)
            value(t, v)
        offsets, at = [], 0
        for t in self.tensors:
            offsets.append(at)
            at += (len(t.data) + self.alignment - 1) // self.alignment * self.alignment
        for t, off in zip(self.tensors, offsets):
            string(t.name)
            put("<I", len(t.dims))
            for d in t.dims:
                put("<Q", d)
            put("<I", t.type)
            put("<Q", off)
        out.extend(b"\0" * (-len(out) % self.alignment))
        for t in self.tensors:
            out.extend(t.data)
            out.extend(b"\0" * (-len(t.data) % self.alignment))
        return bytes(out)

    def write(self, path) -> Path:
        Path(path).write_bytes(self.to_bytes())
        return Path(path)


# --------------------------------------------------------------------------------------------
# HF checkpoints <-> GGUF, as llama.cpp's converter names and transforms tensors
# --------------------------------------------------------------------------------------------

GGUF_ARCH = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "PhiForCausalLM": "phi2",
    "Phi3ForCausalLM": "phi3",
    "StableLmForCausalLM": "stablelm",
    "MiniCPMForCausalLM": "minicpm",
    "SmolLM3ForCausalLM": "smollm3",
}
PERMUTED = ("llama", "minicpm", "smollm3")
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "model.final_layernorm": "output_norm", "lm_head": "output"}
_LAYER = {
    "input_layernorm": "attn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.dense": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.fc1": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.fc2": "ffn_down",
}


def gguf_name(arch: str, hf: str) -> str:
    base, suffix = hf.rsplit(".", 1)
    if base in _TOP:
        return f"{_TOP[base]}.{suffix}"
    _, _, layer, part = base.split(".", 3)
    if part == "post_attention_layernorm":
        g = "post_attention_norm" if arch in ("gemma2", "gemma3") else "ffn_norm"
    else:
        g = _LAYER[part]
    return f"blk.{layer}.{g}.{suffix}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp LlamaModel.permute (HF rotate-half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(name: str) -> Dict[str, np.ndarray]:
    d = model_dir(name)
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out: Dict[str, np.ndarray] = {}
    for f in files:
        out.update(npref.read_safetensors(str(d / f)))
    return out


def convert(name: str, ggml_type: int = T_F32, extra: Sequence[Tuple[str, int, Any]] = ()) -> Gguf:
    """HF fixture `name` as llama.cpp's converter writes it (no vocabulary)."""
    cfg = json.loads((model_dir(name) / "config.json").read_text())
    arch = GGUF_ARCH[cfg["architectures"][0]]
    a = arch
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "rope_theta" in cfg and "rope_theta" not in rp:
        rp = dict(rp, rope_theta=cfg["rope_theta"])
    full = rp.get("full_attention", rp)
    kv: List[Tuple[str, int, Any]] = [
        ("general.architecture", STR, arch),
        (f"{a}.block_count", U32, cfg["num_hidden_layers"]),
        (f"{a}.context_length", U32, cfg["max_position_embeddings"]),
        (f"{a}.embedding_length", U32, hidden),
        (f"{a}.feed_forward_length", U32, cfg["intermediate_size"]),
        (f"{a}.attention.head_count", U32, n_head),
        (f"{a}.attention.head_count_kv", U32, n_kv),
    ]
    if "rope_theta" in full:
        kv.append((f"{a}.rope.freq_base", F32, full["rope_theta"]))
    if "rms_norm_eps" in cfg:
        kv.append((f"{a}.attention.layer_norm_rms_epsilon", F32, cfg["rms_norm_eps"]))
    if "layer_norm_eps" in cfg:
        kv.append((f"{a}.attention.layer_norm_epsilon", F32, cfg["layer_norm_eps"]))
    if "head_dim" in cfg:
        kv += [(f"{a}.attention.key_length", U32, head_dim), (f"{a}.attention.value_length", U32, head_dim)]
    partial = rp.get("partial_rotary_factor", 1.0)
    kv.append((f"{a}.rope.dimension_count", U32, int(partial * hidden) // n_head if "head_dim" not in cfg else int(partial * head_dim)))
    rtype = full.get("rope_type")
    if rtype == "linear":
        kv += [(f"{a}.rope.scaling.type", STR, "linear"), (f"{a}.rope.scaling.factor", F32, full["factor"])]
    elif rtype == "yarn":
        kv += [
            (f"{a}.rope.scaling.type", STR, "yarn"),
            (f"{a}.rope.scaling.factor", F32, full["factor"]),
            (f"{a}.rope.scaling.original_context_length", U32, full["original_max_position_embeddings"]),
        ]
    if "sliding_attention" in rp:
        kv.append((f"{a}.rope.freq_base_swa", F32, rp["sliding_attention"]["rope_theta"]))
    if arch == "llama" and cfg.get("sliding_window"):
        kv.append((f"{a}.attention.sliding_window", U32, cfg["sliding_window"]))
    if arch in ("gemma2", "gemma3"):
        kv.append((f"{a}.attention.sliding_window", U32, cfg["sliding_window"]))
        if cfg.get("attn_logit_softcapping"):
            kv.append((f"{a}.attn_logit_softcapping", F32, cfg["attn_logit_softcapping"]))
        if cfg.get("final_logit_softcapping"):
            kv.append((f"{a}.final_logit_softcapping", F32, cfg["final_logit_softcapping"]))
    if arch == "stablelm":
        kv.append((f"{a}.use_parallel_residual", BOOL, cfg.get("use_parallel_residual", True)))
    if arch == "minicpm":
        kv += [
            (f"{a}.embedding_scale", F32, cfg["scale_emb"]),
            (f"{a}.residual_scale", F32, cfg["scale_depth"] / cfg["num_hidden_layers"] ** 0.5),
            (f"{a}.logit_scale", F32, hidden / cfg["dim_model_base"]),
        ]
    kv += list(extra)

    tensors: List[Tensor] = []
    if full.get("rope_type") == "llama3":
        base, dim = full["rope_theta"], head_dim
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor, lo, hi = full["factor"], full["low_freq_factor"], full["high_freq_factor"]
        old = full["original_max_position_embeddings"]
        f = []
        for fr in freqs:
            wl = 2 * math.pi / fr
            if wl < old / hi:
                f.append(1.0)
            elif wl > old / lo:
                f.append(factor)
            else:
                s = (old / wl - lo) / (hi - lo)
                f.append(1 / ((1 - s) / factor + s))
        tensors.append(Tensor.f32("rope_freqs.weight", np.array(f, dtype=np.float32)))
    if arch == "phi3" and rp.get("rope_type") == "longrope":
        orig = rp["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / orig
        kv += [
            (f"{a}.rope.scaling.original_context_length", U32, orig),
            (f"{a}.rope.scaling.attn_factor", F32, math.sqrt(1 + math.log(scale) / math.log(orig))),
        ]
        tensors.append(Tensor.f32("rope_factors_long.weight", np.array(rp["long_factor"], dtype=np.float32)))
        tensors.append(Tensor.f32("rope_factors_short.weight", np.array(rp["short_factor"], dtype=np.float32)))

    w = hf_tensors(name)
    stacked: Dict[str, List[Tuple[int, np.ndarray]]] = {}
    for hf, t in w.items():
        if arch.startswith("gemma") and hf == "lm_head.weight":
            continue
        t = t.astype(np.float32)
        if "_layernorm.norms." in hf:  # StableLM: per-head q/k norms stacked as [heads, head_dim]
            layer, which, head = hf.split(".")[2], hf.split(".")[4][0], int(hf.split(".")[-2])
            stacked.setdefault(f"blk.{layer}.attn_{which}_norm.weight", []).append((head, t))
            continue
        if arch in PERMUTED and (hf.endswith("q_proj.weight") or (hf.endswith("q_proj.bias") and arch != "minicpm")):
            t = permute(t, n_head)
        if arch in PERMUTED and (hf.endswith("k_proj.weight") or (hf.endswith("k_proj.bias") and arch != "minicpm")):
            t = permute(t, n_kv)
        if arch.startswith("gemma") and hf.endswith("norm.weight"):
            t = t + 1
        g = gguf_name(arch, hf)
        typ = T_F32 if t.ndim <= 1 or g.endswith("_norm.weight") or not g.endswith(".weight") else ggml_type
        tensors.append(Tensor.f32(g, t, typ))
    for g, heads in stacked.items():
        tensors.append(Tensor.f32(g, np.stack([t for _, t in sorted(heads, key=lambda x: x[0])])))
    return Gguf(kv, tensors)


def hf_dir_from_gguf(path: Path, hf_name: str, out: Path) -> Path:
    """An HF checkpoint of the GGUF's dequantized tensors (inverse of `convert`),
    with the HF fixture's config and tokenizer files."""
    g = Gguf.read(path)
    arch = g.get("general.architecture")
    cfg = json.loads((model_dir(hf_name) / "config.json").read_text())
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    inverse = {}
    for hf in hf_tensors(hf_name):
        inverse[gguf_name(arch, hf)] = hf
    tensors = {}
    for t in g.tensors:
        if t.name not in inverse:
            continue
        hf, a = inverse[t.name], t.to_f32()
        if arch in PERMUTED and ".attn_q." in t.name:
            a = unpermute(a, n_head)
        if arch in PERMUTED and ".attn_k." in t.name:
            a = unpermute(a, n_kv)
        if arch.startswith("gemma") and t.name.endswith("norm.weight"):
            a = a - 1
        tensors[hf] = a
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors", tensors)
    for f in model_dir(hf_name).iterdir():
        if f.suffix == ".json" and "safetensors" not in f.name:
            shutil.copy(f, out / f.name)
    return out


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray]) -> None:
    header, blobs, at = {}, [], 0
    for k, v in tensors.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def gguf_models():
    cache: Dict[str, edgellm.Model] = {}

    def get(name: str) -> edgellm.Model:
        if name not in cache:
            cache[name] = edgellm.load(GGUF_DIR / f"{name}.gguf", threads=2)
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------
# The shipped fixtures
# --------------------------------------------------------------------------------------------

SHIPPED = json.loads((GGUF_DIR / "manifest.json").read_text())["files"]


def test_fixtures_stay_small():
    assert sum((GGUF_DIR / f["file"]).stat().st_size for f in SHIPPED) < 2_000_000
    assert sorted(p.name for p in GGUF_DIR.glob("*.gguf")) == sorted(f["file"] for f in SHIPPED)


@pytest.mark.parametrize("name", ["llama-f32", "qwen2-f32"])
def test_f32_gguf_matches_hf_directory(models, gguf_models, name):
    hf = name.split("-")[0]
    ref = reference(hf)
    ids = ref["input_ids"].tolist()
    m = gguf_models(name)
    got = m.logits(ids)
    assert got.shape == ref["logits"].shape
    assert max_abs_diff(got, models(hf).logits(ids)) <= ATOL
    assert max_abs_diff(got, ref["logits"]) <= ATOL
    assert m.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True) == ref["greedy_ids"].tolist()


def test_gguf_reports_like_an_hf_model(models, gguf_models):
    m, h = gguf_models("llama-f32"), models("llama")
    info, hinfo = m.info(), h.info()
    assert m.path.endswith("llama-f32.gguf") and info["files"] == [m.path]
    assert info["file_bytes"] == (GGUF_DIR / "llama-f32.gguf").stat().st_size
    for key in ["architecture", "dtype", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "max_position_embeddings", "tie_word_embeddings", "rope_theta", "parameters"]:
        assert info[key] == hinfo[key], key
    assert gguf_models("qwen2-f32").info()["tie_word_embeddings"] is True
    assert gguf_models("llama-q8_0").info()["dtype"] == "q8_0"


LOSSY = {"llama-q8_0": ("llama", 0.4), "llama-q4_0": ("llama", 4.0), "phi3-q8_0": ("phi3", 0.4), "gemma-f16": ("gemma", 0.02)}


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_gguf_matches_its_dequantized_tensors(gguf_models, tmp_path, name):
    """The loader's translation (names, Q/K permutation, Gemma's +1, fused Phi-3
    tensors, dequantization) against an HF checkpoint rebuilt in NumPy from the
    file's dequantized tensors."""
    hf, _ = LOSSY[name]
    ids = reference(hf)["input_ids"].tolist()
    # Quantized files: the rebuilt checkpoint is quantized again at load, which
    # reproduces the file's blocks exactly (a dequantized q8_0/q4_0 block keeps its
    # extreme value, hence its scale and every quant), so both models run the same
    # int8-activation products and only the translation could differ.
    quant = None if name.endswith("f16") else name.rsplit("-", 1)[1]
    rebuilt = edgellm.load(hf_dir_from_gguf(GGUF_DIR / f"{name}.gguf", hf, tmp_path / hf), threads=2, quant=quant)
    assert max_abs_diff(gguf_models(name).logits(ids), rebuilt.logits(ids)) <= 1e-4


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_gguf_is_close_to_transformers(gguf_models, name):
    hf, tol = LOSSY[name]
    ref = reference(hf)
    got = gguf_models(name).logits(ref["input_ids"].tolist())
    assert max_abs_diff(got, ref["logits"]) <= tol
    if name == "gemma-f16":
        # Gemma's GGUF marks token 107 as end-of-turn (CodeGemma ids, as llama.cpp's
        # converter writes them): ignore_eos keeps the greedy run comparable.
        ids = ref["input_ids"].tolist()
        assert gguf_models(name).generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True) == ref["greedy_ids"].tolist()


def test_quant_option_applies_to_gguf(gguf_models):
    """load(..., quant=) quantizes a GGUF's weights as it does an HF checkpoint's:
    the f32 file quantized to q8_0 at load computes what the q8_0 file does."""
    ids = reference("llama")["input_ids"].tolist()
    m = edgellm.load(GGUF_DIR / "llama-f32.gguf", threads=2, quant="q8_0")
    assert m.info()["dtype"] == "q8_0"
    assert max_abs_diff(m.logits(ids), gguf_models("llama-q8_0").logits(ids)) <= 1e-3


def test_gemma_end_of_turn_stops_generation(gguf_models):
    m = gguf_models("gemma-f16")
    assert 107 in m.tokenizer.eos_token_ids and 2 in m.tokenizer.eos_token_ids


# --------------------------------------------------------------------------------------------
# Tokenizer: ids equal transformers' on cases.json (no deviations on these texts)
# --------------------------------------------------------------------------------------------

CASES = load_cases()
TOK_FILES = {"spm_bpe": "llama-f32", "bytelevel_bpe": "qwen2-f32"}


@pytest.mark.parametrize("tok,i", [pytest.param(t, i, id=f"{t}-{i}") for t in TOK_FILES for i in range(len(CASES[t]["texts"]))])
def test_tokenizer_matches_transformers(gguf_models, tok, i):
    case = CASES[tok]["texts"][i]
    t = gguf_models(TOK_FILES[tok]).tokenizer
    assert t.encode(case["text"]) == case["ids"]
    assert t.encode(case["text"], add_special_tokens=False) == case["ids_no_special"]
    assert t.decode(case["ids"]) == case["decoded"]
    assert t.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"]
    assert [t.id_to_token(x) for x in case["ids"]] == case["tokens"]


@pytest.mark.parametrize("tok", sorted(TOK_FILES))
def test_tokenizer_special_tokens(gguf_models, tok):
    c = CASES[tok]
    t = gguf_models(TOK_FILES[tok]).tokenizer
    assert t.vocab_size == c["vocab_size"]
    assert c["eos_token_id"] in t.eos_token_ids
    # qwen2's GGUF carries bos_token_id 509 (config.json's), as llama.cpp's converter writes it;
    # BOS is still not added (tokenizer.ggml.add_bos_token = false).
    assert t.encode("x")[:1] == ([c["bos_token_id"]] if c["bos_token_id"] is not None else t.encode("x", add_special_tokens=False)[:1])


@pytest.mark.parametrize("tok,i", [pytest.param(t, i, id=f"{t}-{i}") for t in TOK_FILES for i in range(len(CASES[t]["chat"]))])
def test_chat_template_from_gguf(gguf_models, tok, i):
    case = CASES[tok]["chat"][i]
    m = gguf_models(TOK_FILES[tok])
    assert m.has_chat_template
    if "error" in case:
        with pytest.raises(edgellm.ChatTemplateError):
            m.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
    else:
        rendered = m.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert rendered == case["rendered"]
        assert m.tokenizer.encode(rendered, add_special_tokens=False) == case["ids"]


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "stablelm2", "smollm", "starcoder"])
def test_byte_level_pre_tokenizers(tmp_path, pre):
    """Each supported tokenizer.ggml.pre round-trips text and splits digit runs as
    llama.cpp's regexes do (GPT-2: whole runs; Llama 3: up to three digits; Qwen2,
    StableLM 2, SmolLM, StarCoder: single digits). Three unused single-character
    tokens become "12", "123", "1234" with merges that build them."""
    g = Gguf.read(GGUF_DIR / "qwen2-f32.gguf").set("tokenizer.ggml.pre", STR, pre)
    tokens, merges = list(g.get("tokenizer.ggml.tokens")[1]), list(g.get("tokenizer.ggml.merges")[1])
    used = set("".join(m.split(" ")) for m in merges) | set(p for m in merges for p in m.split(" "))
    free = [i for i, t in enumerate(tokens[:256]) if len(t) == 1 and t not in used and not t.isascii()][-3:]
    for i, t in zip(free, ["12", "123", "1234"]):
        tokens[i] = t
    g.set("tokenizer.ggml.tokens", ARR, (STR, tokens))
    g.set("tokenizer.ggml.merges", ARR, (STR, ["1 2", "12 3", "123 4"] + merges))
    t = edgellm.load(g.write(tmp_path / f"{pre}.gguf")).tokenizer
    for case in CASES["bytelevel_bpe"]["texts"]:
        text = case["text"]
        if not any(ord(c) >= 0x80 for c in text):  # (the three replaced tokens were non-ASCII bytes)
            assert t.decode(t.encode(text)) == text
    pieces = [t.decode([i]) for i in t.encode("x 1234", add_special_tokens=False)]
    want = {"default": ["1234"], "gpt-2": ["1234"], "llama-bpe": ["123", "4"]}.get(pre, ["1", "2", "3", "4"])
    assert [p for p in pieces if p.strip().isdigit()] == want, pieces


def test_text_generation_and_streaming(gguf_models, models):
    g, h = gguf_models("qwen2-f32"), models("qwen2")
    kw = dict(max_new_tokens=10, temperature=0, ignore_eos=True)
    text = g.generate("def add(x, y):", **kw)
    assert text == h.generate("def add(x, y):", **kw)
    assert "".join(g.stream("def add(x, y):", **kw)) == text


def test_file_without_vocabulary_has_no_tokenizer(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    for k in [k for k, _, _ in g.kv if k.startswith("tokenizer.")]:
        g.drop(k)
    m = edgellm.load(g.write(tmp_path / "novocab.gguf"))
    ids = reference("llama")["input_ids"].tolist()
    assert max_abs_diff(m.logits(ids), reference("llama")["logits"]) <= ATOL
    with pytest.raises(edgellm.TokenizerError):
        m.tokenizer.encode("x")


# --------------------------------------------------------------------------------------------
# Every architecture, converted in-test the way llama.cpp's converter does
# --------------------------------------------------------------------------------------------

# Extra keys where a tiny fixture departs from the real models' values that
# llama.cpp hard-codes (its converter writes neither): Gemma 2/3's
# query_pre_attn_scalar (attention.scale = scalar^-1/2) and Gemma 3's layer pattern.
EXTRA = {
    "gemma2": lambda cfg: [("gemma2.attention.scale", F32, cfg["query_pre_attn_scalar"] ** -0.5)],
    "gemma3": lambda cfg: [
        ("gemma3.attention.scale", F32, cfg["query_pre_attn_scalar"] ** -0.5),
        ("gemma3.attention.sliding_window_pattern", U32, cfg["sliding_window_pattern"]),
    ],
}
CONVERTED = [
    "llama", "llama_gqa_tied", "llama_mqa", "llama_rope_linear", "llama_rope_yarn", "llama3_rope", "llama_sharded",
    "llama_f16", "llama_bf16", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi", "phi3", "stablelm",
    "stablelm_parallel", "minicpm",
]


def converted(name: str, tmp_path: Path) -> edgellm.Model:
    cfg = json.loads((model_dir(name) / "config.json").read_text())
    native = {"llama_f16": T_F16, "llama_bf16": T_BF16}.get(name, T_F32)
    extra = EXTRA.get(name, lambda c: [])(cfg)
    return edgellm.load(convert(name, native, extra).write(tmp_path / f"{name}.gguf"), threads=2)


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_architecture_matches_transformers(tmp_path, models, name):
    ref = reference(name)
    m = converted(name, tmp_path)
    ids = ref["input_ids"].tolist()
    assert m.info()["architecture"] == models(name).info()["architecture"]
    assert max_abs_diff(m.logits(ids), ref["logits"]) <= ATOL
    if name != "phi3":  # longrope switches factors mid-generation in transformers (see test_parity)
        greedy = ref["greedy_ids"].tolist()
        assert m.logits(ids + greedy[:-1])[len(ids) - 1 :].argmax(axis=1).tolist() == greedy
    if "logits_long" in ref:
        assert max_abs_diff(m.logits(ref["input_ids_long"].tolist()), ref["logits_long"]) <= ATOL


def test_smollm3_uses_llama_cpp_nope_interval(tmp_path):
    """llama.cpp hard-codes SmolLM3's NoPE interval (every 4th layer) and the
    converter writes no key for it; the fixture's [1, 0] pattern is therefore not
    representable, and the GGUF runs as the HF model with interval 4 would."""
    d = tmp_path / "smollm3_i4"
    shutil.copytree(model_dir("smollm3"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("no_rope_layers")
    cfg["no_rope_layer_interval"] = 4
    (d / "config.json").write_text(json.dumps(cfg))
    ids = reference("smollm3")["input_ids"].tolist()
    want = npref.logits(d, ids)
    m = edgellm.load(convert("smollm3").write(tmp_path / "smollm3.gguf"))
    assert max_abs_diff(m.logits(ids), want) <= ATOL


def test_llama3_rope_recovered_from_rope_freqs(tmp_path):
    m = converted("llama3_rope", tmp_path)
    s = m.info()["rope_scaling"]
    assert s.startswith("Llama3") and "original_max: 32" in s


def test_sliding_window_makes_llama_mistral(tmp_path):
    assert converted("mistral", tmp_path).info()["sliding_windows"] == [8, 8]


def test_gemma2_defaults_follow_llama_cpp(tmp_path):
    """Without attention.scale, Gemma 2's query scaling is head_dim^-1/2 (llama.cpp's
    rule for all but the 27B model), which the fixture (scalar 24) does not use."""
    m = edgellm.load(convert("gemma2").write(tmp_path / "g2.gguf"))
    ids = reference("gemma2")["input_ids"].tolist()
    assert max_abs_diff(m.logits(ids), reference("gemma2")["logits"]) > 1e-2


# --------------------------------------------------------------------------------------------
# Variants written in-test: bf16 / f16 tensors, version 2, other alignments
# --------------------------------------------------------------------------------------------


def test_bf16_and_f16_variants_match_their_dequantized_tensors(tmp_path):
    ids = reference("llama")["input_ids"].tolist()
    base = edgellm.load(GGUF_DIR / "llama-f32.gguf").logits(ids)
    for typ, tol in [(T_F16, 0.02), (T_BF16, 0.1)]:
        g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
        g.tensors = [Tensor.f32(t.name, t.to_f32(), typ) if len(t.dims) == 2 else t for t in g.tensors]
        path = g.write(tmp_path / f"llama-{typ}.gguf")
        m = edgellm.load(path)
        rebuilt = edgellm.load(hf_dir_from_gguf(path, "llama", tmp_path / f"hf-{typ}"))
        assert max_abs_diff(m.logits(ids), rebuilt.logits(ids)) <= ATOL
        assert max_abs_diff(m.logits(ids), base) <= tol


@pytest.mark.parametrize("version,alignment", [(2, 32), (3, 1), (3, 8), (3, 64)])
def test_versions_and_alignments(tmp_path, version, alignment):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.version, g.alignment = version, alignment
    if alignment != 32:
        g.set("general.alignment", U32, alignment)
    ids = reference("llama")["input_ids"].tolist()
    m = edgellm.load(g.write(tmp_path / "v.gguf"))
    assert max_abs_diff(m.logits(ids), reference("llama")["logits"]) <= ATOL


def test_magic_without_extension_and_metadata_types(tmp_path):
    """Detected by magic; nested arrays and every value type are parsed (and ignored)."""
    g = Gguf.read(GGUF_DIR / "qwen2-f32.gguf")
    for i, (t, v) in enumerate([(U8, 1), (I8, -1), (U16, 2), (I16, -2), (U32, 3), (I32, -3), (F32, 0.5), (BOOL, True),
                                 (STR, "s"), (U64, 2**40), (I64, -(2**40)), (F64, 0.25)]):
        g.set(f"test.scalar{i}", t, v)
    g.set("test.nested", ARR, (ARR, [(U8, [1, 2]), (STR, ["a", "b"]), (ARR, [(F64, [1.0])])]))
    m = edgellm.load(g.write(tmp_path / "model.bin"))
    assert m.info()["architecture"] == "Qwen2ForCausalLM"


# --------------------------------------------------------------------------------------------
# Hostile files: each raises ModelFormatError naming the problem, never a crash
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_bytes() -> bytes:
    return (GGUF_DIR / "llama-f32.gguf").read_bytes()


def load_bytes(tmp_path: Path, data: bytes, name: str = "bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return edgellm.load(p)


def expect_format_error(tmp_path, data: bytes, *needles: str) -> str:
    with pytest.raises(edgellm.ModelFormatError) as ei:
        load_bytes(tmp_path, data)
    msg = str(ei.value)
    for n in needles:
        assert n.lower() in msg.lower(), msg
    return msg


def patched(raw: bytes, pos: int, fmt: str, value) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def test_truncated_everywhere(tmp_path, llama_bytes):
    g = Gguf.parse(llama_bytes)
    last = max(t.offset + len(t.data) for t in g.tensors) + g.data_start
    cuts = sorted(set(list(range(0, 64)) + list(range(64, g.data_start, 97)) + [g.data_start - 1, g.data_start]
                      + list(range(g.data_start + 1, last, 50_003)) + [last - 1]))
    for cut in cuts:
        with pytest.raises(edgellm.ModelFormatError) as ei:
            load_bytes(tmp_path, llama_bytes[:cut])
        msg = str(ei.value).lower()
        assert any(w in msg for w in ("truncated", "end of the file", "bad magic", "ends after", "remain", "cannot fit", "impossible")), (cut, msg)


def test_bad_magic_and_versions(tmp_path, llama_bytes):
    expect_format_error(tmp_path, b"GGML" + llama_bytes[4:], "bad magic")
    expect_format_error(tmp_path, b"", "bad magic")
    expect_format_error(tmp_path, patched(llama_bytes, 4, "<I", 1), "version 1")
    expect_format_error(tmp_path, patched(llama_bytes, 4, "<I", 7), "version 7")
    expect_format_error(tmp_path, patched(llama_bytes, 4, ">I", 3), "big-endian")


def test_absurd_counts(tmp_path, llama_bytes):
    expect_format_error(tmp_path, patched(llama_bytes, 8, "<Q", 2**60), "tensor count")
    expect_format_error(tmp_path, patched(llama_bytes, 16, "<Q", 2**60), "metadata count")
    expect_format_error(tmp_path, patched(llama_bytes, 8, "<Q", 2**64 - 1), "tensor count")


def test_string_length_past_the_end(tmp_path, llama_bytes):
    g = Gguf.parse(llama_bytes)
    pos = g.kv_pos["general.name"]
    expect_format_error(tmp_path, patched(llama_bytes, pos, "<Q", 2**62), "length")
    # a value string: general.architecture's value length
    arch = g.kv_pos["general.architecture"] + 8 + len("general.architecture") + 4
    expect_format_error(tmp_path, patched(llama_bytes, arch, "<Q", len(llama_bytes)), "general.architecture", "length")
    tok0 = g.tensors[0].info_pos["start"]
    expect_format_error(tmp_path, patched(llama_bytes, tok0, "<Q", 2**63), "tensor #0")


def test_bad_tensor_infos(tmp_path, llama_bytes):
    g = Gguf.parse(llama_bytes)
    t0, t1 = g.tensors[0], g.tensors[1]
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["n_dims"], "<I", 5), t0.name, "5 dimensions")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["n_dims"], "<I", 0), t0.name, "0 dimensions")
    big = patched(patched(llama_bytes, t0.info_pos["dims"], "<Q", 2**32), t0.info_pos["dims"] + 8, "<Q", 2**32)
    expect_format_error(tmp_path, big, t0.name, "overflow")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["dims"], "<Q", 0), t0.name, "dimension 0")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["type"], "<I", 99), t0.name, "unknown type id 99")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["type"], "<I", 16), t0.name, "iq2_xxs")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["offset"], "<Q", 2**40), t0.name, "past the end")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["offset"], "<Q", 2**64 - 32), t0.name, "past the end")
    expect_format_error(tmp_path, patched(llama_bytes, t0.info_pos["offset"], "<Q", 16), t0.name, "alignment")
    expect_format_error(tmp_path, patched(llama_bytes, t1.info_pos["offset"], "<Q", t0.offset), "overlap")


def test_alignment_values(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    for bad in (0, 3, 48, 2**31):
        g.set("general.alignment", U32, bad)
        expect_format_error(tmp_path, g.to_bytes(), "general.alignment", str(bad))
    g.set("general.alignment", STR, "32")
    expect_format_error(tmp_path, g.to_bytes(), "general.alignment", "unsigned integer")


def test_duplicates(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.tensors[1].name = g.tensors[0].name
    expect_format_error(tmp_path, g.to_bytes(), "duplicate tensor name", g.tensors[0].name)
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.kv.append(("general.name", STR, "again"))
    expect_format_error(tmp_path, g.to_bytes(), "duplicate metadata key", "general.name")


@pytest.mark.parametrize(
    "key,typ,value,needle",
    [
        ("tokenizer.ggml.scores", ARR, (U8, [0] * 512), "tokenizer.ggml.scores"),
        ("tokenizer.ggml.scores", ARR, (F32, [0.0] * 3), "tokenizer.ggml.scores"),
        ("tokenizer.ggml.tokens", ARR, (U32, list(range(512))), "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.tokens", STR, "abc", "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.token_type", ARR, (F32, [1.0] * 512), "tokenizer.ggml.token_type"),
        ("tokenizer.ggml.token_type", ARR, (I32, [1] * 5), "tokenizer.ggml.token_type"),
        ("tokenizer.ggml.bos_token_id", U32, 512, "bos_token_id"),
        ("tokenizer.ggml.bos_token_id", F32, 1.0, "bos_token_id"),
        ("tokenizer.ggml.add_bos_token", U8, 1, "add_bos_token"),
        ("tokenizer.chat_template", U32, 5, "chat_template"),
        ("general.architecture", U32, 1, "general.architecture"),
        ("llama.block_count", STR, "2", "llama.block_count"),
        ("llama.attention.head_count", U32, 0, "llama.attention.head_count"),
        ("llama.attention.head_count", I32, -4, "llama.attention.head_count"),
        ("llama.attention.head_count", U64, 2**40, "llama.attention.head_count"),
        ("llama.embedding_length", U64, 2**62, "llama.embedding_length"),
        ("llama.attention.head_count_kv", U32, 3, "llama.attention.head_count_kv"),
        ("llama.context_length", U64, 2**62, "llama.context_length"),
        ("llama.rope.freq_base", STR, "1e4", "llama.rope.freq_base"),
        ("llama.rope.freq_base", F32, float("nan"), "llama.rope.freq_base"),
        ("llama.rope.dimension_count", U32, 7, "llama.rope.dimension_count"),
        ("llama.rope.scaling.type", STR, "wavy", "llama.rope.scaling.type"),
        ("llama.rope.scaling.type", STR, "linear", "llama.rope.scaling.factor"),
        ("llama.vocab_size", U32, 100, "llama.vocab_size"),
        ("split.count", U16, 3, "split"),
    ],
)
def test_wrong_metadata(tmp_path, key, typ, value, needle):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.set(key, typ, value)
    expect_format_error(tmp_path, g.to_bytes(), needle)


def test_missing_and_misshapen_tensors(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.tensors = [t for t in g.tensors if t.name != "blk.1.ffn_up.weight"]
    expect_format_error(tmp_path, g.to_bytes(), "model.layers.1.mlp.up_proj.weight")
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    t = g.tensor("blk.0.ffn_up.weight")
    t.dims = list(reversed(t.dims))
    expect_format_error(tmp_path, g.to_bytes(), "blk.0.ffn_up.weight", "shape")
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.tensors = [t for t in g.tensors if t.name != "token_embd.weight"]
    expect_format_error(tmp_path, g.to_bytes(), "token_embd.weight")


def test_quantized_rows_must_be_whole_blocks(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-q8_0.gguf")
    t = g.tensor("blk.0.ffn_down.weight")  # 128 x 64, q8_0 blocks of 32
    t.dims = [48, len(t.data) // 34 * 32 // 48]
    expect_format_error(tmp_path, g.to_bytes(), "blk.0.ffn_down.weight", "blocks")


def test_metadata_values_that_cannot_be_parsed(tmp_path, llama_bytes):
    g = Gguf.parse(llama_bytes)
    key_pos = g.kv_pos["general.name"]
    type_pos = key_pos + 8 + len("general.name")
    expect_format_error(tmp_path, patched(llama_bytes, type_pos, "<I", 13), "value type id 13")
    bad_utf8 = bytearray(llama_bytes)
    bad_utf8[key_pos + 8] = 0xFF
    expect_format_error(tmp_path, bytes(bad_utf8), "utf-8")
    g2 = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    nested: Any = (U8, [1])
    for _ in range(12):
        nested = (ARR, [nested])
    g2.set("test.deep", ARR, nested)
    expect_format_error(tmp_path, g2.to_bytes(), "nested")
    g3 = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g3.set("test.flag", BOOL, True)
    raw = g3.to_bytes()
    flag = Gguf.parse(raw).kv_pos["test.flag"] + 8 + len("test.flag") + 4
    expect_format_error(tmp_path, patched(raw, flag, "<B", 2), "bool")
    g4 = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g4.set("test.arr", ARR, (U8, [1, 2, 3]))
    raw = g4.to_bytes()
    count = Gguf.parse(raw).kv_pos["test.arr"] + 8 + len("test.arr") + 4 + 4
    expect_format_error(tmp_path, patched(raw, count, "<Q", 2**60), "test.arr", "cannot fit")
    expect_format_error(tmp_path, patched(raw, count - 4, "<I", 77), "test.arr", "value type id 77")


def test_unsupported_architecture_and_tokenizer(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.set("general.architecture", STR, "bert")
    with pytest.raises(edgellm.UnsupportedArchitectureError, match="bert"):
        load_bytes(tmp_path, g.to_bytes())
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf").drop("general.architecture")
    expect_format_error(tmp_path, g.to_bytes(), "general.architecture")
    g = Gguf.read(GGUF_DIR / "qwen2-f32.gguf")
    g.set("tokenizer.ggml.pre", STR, "klingon")
    with pytest.raises(edgellm.TokenizerError, match="klingon"):
        load_bytes(tmp_path, g.to_bytes())
    g = Gguf.read(GGUF_DIR / "qwen2-f32.gguf").drop("tokenizer.ggml.merges")
    expect_format_error(tmp_path, g.to_bytes(), "tokenizer.ggml.merges")
    g = Gguf.read(GGUF_DIR / "qwen2-f32.gguf")
    g.set("tokenizer.ggml.merges", ARR, (STR, ["Ġ nonexistent-token"]))
    expect_format_error(tmp_path, g.to_bytes(), "tokenizer.ggml.merges")


def test_inconsistent_rope_tables(tmp_path):
    g = Gguf.read(GGUF_DIR / "llama-f32.gguf")
    g.tensors.append(Tensor.f32("rope_freqs.weight", np.array([3, 1, 2, 1, 1, 1, 1, 9], dtype=np.float32)))
    expect_format_error(tmp_path, g.to_bytes(), "rope_freqs")
    g = Gguf.read(GGUF_DIR / "phi3-q8_0.gguf")
    g.tensors = [t for t in g.tensors if t.name != "rope_factors_short.weight"]
    expect_format_error(tmp_path, g.to_bytes(), "rope_factors")


FUZZ = r"""
import os, sys, random, edgellm
raw = open(sys.argv[1], "rb").read()
head = int(sys.argv[2])
rng = random.Random(1234)
out = sys.argv[3]
bad = 0
for i in range(int(sys.argv[4])):
    b = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(head)
        b[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    with open(out, "wb") as f:
        f.write(b)
    try:
        edgellm.load(out)
    except edgellm.EdgeLLMError:
        pass
    except BaseException as e:
        print("NOT AN EDGELLM ERROR", i, type(e).__name__, e)
        bad += 1
print("done", bad)
"""


def test_random_header_corruption_never_crashes(tmp_path, python):
    """Byte mutations of the header / metadata / tensor infos, in a subprocess (so a
    crash would fail this test rather than the suite): every load either works or
    raises an edgellm error."""
    raw_path = GGUF_DIR / "qwen2-f32.gguf"
    head = Gguf.read(raw_path).data_start
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    r = subprocess.run([python, str(script), str(raw_path), str(head), str(tmp_path / "m.gguf"), "300"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, RAYON_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("done 0"), r.stdout[-2000:]


@pytest.mark.parametrize("name", ["llama-q4_0", "llama-q8_0", "llama-f32", "gemma-f16"])
def test_repacked_weights_compute_what_the_file_layout_does(name):
    """Weights repacked at load into the kernels' panels (`repack`, on by default
    on x86-64; `info()` counts the bytes) give what the file's row layout gives.
    q4_0/q8_0: the same logits and greedy tokens, bit for bit. Float weights: the
    prompt's logits bit for bit too (from 9 tokens the row layout takes the packed
    GEMM, which sums in the panels' order), decode up to summation order, the
    same greedy tokens; and with panels every token's logits are the same bits
    whether the prompt is read at once or a token at a time."""
    ids = reference(name.split("-")[0])["input_ids"].tolist()
    assert len(ids) >= 9
    path = GGUF_DIR / f"{name}.gguf"
    off = edgellm.load(path, threads=2, repack="off")
    assert off.info()["repacked_bytes"] == 0
    want = off.logits(ids)
    greedy = off.generate(ids, max_new_tokens=8, temperature=0, ignore_eos=True)
    packs = edgellm.active_isa() in ("avx2", "avxvnni", "avx512")
    for repack in ["all", True, None]:
        m = edgellm.load(path, threads=2, **({} if repack is None else {"repack": repack}))
        assert (m.info()["repacked_bytes"] > 0) == packs, repack
        assert np.array_equal(m.logits(ids), want), repack
        assert m.generate(ids, max_new_tokens=8, temperature=0, ignore_eos=True) == greedy
    if name.startswith("llama-q"):
        return
    # Every prefix read at once (1-8 tokens take `gemm_panels` rather than the
    # GEMM): each position's logits within summation order of the full prompt's.
    m = edgellm.load(path, threads=2)
    prefixes = np.stack([m.logits(ids[: i + 1])[-1] for i in range(len(ids))])
    np.testing.assert_allclose(prefixes, want, rtol=1e-4, atol=1e-4)
    if packs:
        # The first token alone, with one more, and in the whole prompt (read by
        # the row layout's packed GEMM): the same bits.
        assert np.array_equal(m.logits(ids[:1])[-1], want[0])
        assert np.array_equal(m.logits(ids[:2])[0], want[0])
    with pytest.raises(edgellm.InvalidArgumentError, match="auto, all or off"):
        edgellm.load(path, repack="sometimes")
