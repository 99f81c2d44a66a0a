"""Synthetic GPTQ and AWQ checkpoints of the random-weight fixture models, packed
here from the published layouts (AutoGPTQ's ``QuantLinear.pack``, AutoAWQ's
``WQLinear_GEMM.from_linear``), independently of edgellm's importer, plus the
f32 checkpoint of their exact dequantization for comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from edgellm.calibrate.checkpoint import SourceTensors, write_safetensors

PROJ_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """int32 words ``(rows, n*bits/32)``: each row's codes as a little-endian bit
    stream, as AutoGPTQ packs (3-bit codes straddle words)."""
    rows, n = values.shape
    words = np.zeros((rows, n * bits // 32), dtype=np.uint64)
    for k in range(n):
        pos = k * bits
        wi, sh = divmod(pos, 32)
        v = values[:, k].astype(np.uint64)
        words[:, wi] |= (v << np.uint64(sh)) & np.uint64(0xFFFFFFFF)
        if sh + bits > 32:
            words[:, wi + 1] |= v >> np.uint64(32 - sh)
    return words.astype(np.uint32).view(np.int32)


def _quantize(w: np.ndarray, g_idx: np.ndarray, groups: int, bits: int, sym: bool, rng):
    """(codes (out, in), zeros (G, out), f16 scales (G, out)) of ``w`` (out, in)."""
    out_f, _ = w.shape
    qmax = (1 << bits) - 1
    scales = np.zeros((groups, out_f))
    zeros = np.zeros((groups, out_f), dtype=np.int64)
    for gi in range(groups):
        part = w[:, g_idx == gi]
        lo, hi = np.minimum(part.min(axis=1), 0), np.maximum(part.max(axis=1), 0)
        if sym:
            amax = np.maximum(np.abs(lo), hi)
            s = 2 * amax / qmax
            z = np.full(out_f, (qmax + 1) // 2)
        else:
            s = (hi - lo) / qmax
            z = np.clip(np.rint(-lo / s), 0, qmax).astype(np.int64)
            # Some zeros at the extremes, which the v1 "zero - 1" convention must carry.
            z[rng.random(out_f) < 0.05] = 0
        scales[gi] = s.astype(np.float16)
        zeros[gi] = z
    s_full, z_full = scales[g_idx].T, zeros[g_idx].T
    q = np.clip(np.rint(w / s_full) + z_full, 0, qmax).astype(np.int64)
    return q, zeros, scales


def make_quantized(src: Path, dst: Path, method: str, bits: int = 4, group_size: int = 32, sym: bool = False,
                   desc_act: bool = False, seed: int = 0, ref_dir: Optional[Path] = None,
                   checkpoint_format: str = "gptq") -> Dict[str, np.ndarray]:
    """Writes ``dst``: the fixture ``src`` with every projection quantized as
    ``method`` ("gptq" / "awq") stores it, other tensors in f16. Returns the exact
    dequantized weight (out, in) of each projection; ``ref_dir`` also gets the f32
    checkpoint of those weights (and the same f16-rounded other tensors)."""
    rng = np.random.default_rng(seed)
    source = SourceTensors(src)
    cfg = json.loads((src / "config.json").read_text())
    tensors: Dict[str, Tuple[str, list, bytes]] = {}
    ref: Dict[str, Tuple[str, list, bytes]] = {}
    deq: Dict[str, np.ndarray] = {}
    for name in source.names():
        w = source.f32(name)
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix is None or not prefix.endswith(PROJ_SUFFIXES):
            w16 = w.astype(np.float16)
            tensors[name] = ("F16", list(w.shape), w16.tobytes())
            ref[name] = ("F32", list(w.shape), w16.astype(np.float32).tobytes())
            continue
        out_f, in_f = w.shape
        g = in_f if group_size == -1 else group_size
        groups = -(-in_f // g)
        g_idx = np.arange(in_f) // g
        if desc_act:
            g_idx = g_idx[rng.permutation(in_f)]  # act-order: groups follow a column permutation
        q, z, s = _quantize(w.astype(np.float64), g_idx, groups, bits, sym, rng)
        if method == "gptq" and checkpoint_format == "gptq":
            # v1 stores zero - 1 in `bits` bits: a zero of 0 wraps around to all
            # ones and reads back as 2^bits (AutoGPTQ's kernels do the same).
            stored_z = (z - 1) & ((1 << bits) - 1)
            z = stored_z + 1
        else:
            stored_z = z
        deq[name] = (s[g_idx].T * (q - z[g_idx].T)).astype(np.float32)
        if method == "gptq":
            tensors[f"{prefix}.qweight"] = ("I32", [in_f * bits // 32, out_f], pack_stream(q, bits).T.copy().tobytes())
            tensors[f"{prefix}.qzeros"] = ("I32", [groups, out_f * bits // 32], pack_stream(stored_z, bits).tobytes())
            tensors[f"{prefix}.g_idx"] = ("I32", [in_f], g_idx.astype(np.int32).tobytes())
        else:
            tensors[f"{prefix}.qweight"] = ("I32", [in_f, out_f // 8], _awq_pack(q.T).tobytes())
            tensors[f"{prefix}.qzeros"] = ("I32", [groups, out_f // 8], _awq_pack(z).tobytes())
        tensors[f"{prefix}.scales"] = ("F16", [groups, out_f], s.astype(np.float16).tobytes())
        ref[name] = ("F32", [out_f, in_f], deq[name].tobytes())
    qc = {"quant_method": method, "bits": bits, "group_size": group_size}
    if method == "gptq":
        qc.update(desc_act=desc_act, sym=sym, checkpoint_format=checkpoint_format)
    else:
        qc.update(version="gemm", zero_point=True)
    for d, ts, extra in ((dst, tensors, {"quantization_config": qc}), (ref_dir, ref, {})):
        if d is None:
            continue
        d.mkdir(parents=True, exist_ok=True)
        write_safetensors(d / "model.safetensors", ts)
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name == "generation_config.json":
                shutil.copyfile(f, d / f.name)
        (d / "config.json").write_text(json.dumps({**cfg, **extra}, indent=2))
    return deq


def _awq_pack(v: np.ndarray) -> np.ndarray:
    """AutoAWQ's GEMM packing along the last axis: nibble i of word c holds column
    8c + AWQ_ORDER[i]."""
    rows, n = v.shape
    words = np.zeros((rows, n // 8), dtype=np.uint32)
    for c in range(n // 8):
        for i in range(8):
            words[:, c] |= v[:, c * 8 + AWQ_ORDER[i]].astype(np.uint32) << np.uint32(4 * i)
    return words.view(np.int32)
