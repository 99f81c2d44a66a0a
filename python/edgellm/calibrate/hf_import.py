"""Import of GPTQ and AWQ checkpoints (HF layouts) into edgellm checkpoints, so
``edgellm.load(gptq_dir)`` runs them on the integer-dot kernels.

Recognised by ``config.json``'s ``quantization_config.quant_method``:

- ``"gptq"`` (AutoGPTQ / GPTQModel): ``qweight`` int32 ``[in*bits/32, out]``,
  codes packed along the input dimension as a little-endian bit stream (for 2, 4
  and 8 bits, ``32/bits`` codes per word; 3-bit codes straddle words);
  ``qzeros`` int32 ``[groups, out*bits/32]`` packed the same way along the output
  dimension, stored as ``zero - 1`` (``checkpoint_format`` ``"gptq"``, the v1
  convention) or as ``zero`` (``"gptq_v2"``); ``scales`` f16 ``[groups, out]``;
  ``g_idx`` int32 ``[in]`` (group of every input column; act-order checkpoints
  permute it). ``w[o, i] = scale[g, o] * (q[o, i] - zero[g, o])``, ``g = g_idx[i]``.
- ``"awq"`` (AutoAWQ, ``version: "gemm"``, 4 bits): ``qweight`` int32
  ``[in, out/8]`` packed along the output dimension in the order 0,2,4,6,1,3,5,7
  (nibble ``k`` of word ``c`` is output column ``8c + order[k]``); ``qzeros``
  int32 ``[groups, out/8]`` packed the same way, zero stored as is; ``scales`` f16
  ``[groups, out]``; group ``i // group_size`` of input column ``i``.

Each projection becomes GGML blocks wherever every 32-column block lies in one
group (trivial ``g_idx``, group sizes a multiple of 32):

- 4 bits, every zero 8 (symmetric): ``q4_0`` with ``d = scale``, exact;
- 4 bits otherwise: ``q4_1`` with ``d = scale``, ``m = -zero * scale`` rounded to
  f16 (at most half an f16 ulp of ``zero * scale`` off; the largest such error
  is reported as ``max_offset_rounding``);
- other bit widths when every ``q - zero`` fits int8 (2/3 bits, symmetric 8
  bits): ``q8_0`` with ``d = scale``, ``q - zero`` as the integers, exact.

Anything else (act-order ``g_idx`` mixing groups within a block, 8-bit codes
with arbitrary zeros) is dequantized to f16 and listed under ``dequantized`` in
the import record (``Model.info()["import"]``), with a warning at load.

The converted checkpoint is cached (``$EDGELLM_CACHE_DIR``, default
``~/.cache/edgellm``, under ``imported/``), keyed by the source path, file sizes
and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ModelFormatError
from .checkpoint import SourceTensors, write_safetensors

__all__ = ["quant_method", "import_quantized", "cached_import", "unpack_gptq", "unpack_awq", "CONVERTER_VERSION"]

CONVERTER_VERSION = 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output column (within 8) of nibble k
_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_COPY_FILES = (
    "tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


def quant_method(directory: Union[str, "os.PathLike[str]"]) -> Optional[str]:
    """``"gptq"`` / ``"awq"`` when ``directory`` holds such a checkpoint, else None
    (also for other quantization methods, which the engine's own loader reports)."""
    cfg = Path(os.fspath(directory)) / "config.json"
    if not cfg.is_file():
        return None
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the engine's loader reports an unreadable config.json
    qc = config.get("quantization_config") if isinstance(config, dict) else None  # (and a non-object one)
    if not isinstance(qc, dict):
        return None
    m = str(qc.get("quant_method", "")).lower()
    return m if m in ("gptq", "awq") else None


def _bitstream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-wide codes of each row of ``words`` (int32
    ``(rows, n)``), read as one little-endian bit stream per row."""
    w = np.ascontiguousarray(words).astype("<i4").view("<u4")
    rows = w.shape[0]
    if 32 % bits == 0:
        per = 32 // bits
        shifts = np.arange(per, dtype=np.uint32) * bits
        codes = (w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
        return codes.reshape(rows, -1)[:, :count].astype(np.int32)
    bitarr = np.unpackbits(w.view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
    bitarr = bitarr[:, : count * bits].reshape(rows, count, bits).astype(np.int32)
    return (bitarr << np.arange(bits, dtype=np.int32)).sum(axis=2, dtype=np.int32)


def unpack_gptq(qweight: np.ndarray, qzeros: np.ndarray, bits: int, in_features: int, out_features: int,
                zero_offset: int) -> Tuple[np.ndarray, np.ndarray]:
    """(codes ``(out, in)``, zeros ``(groups, out)``) of GPTQ tensors."""
    q = _bitstream(qweight.T, bits, in_features)  # each output column's words along the input
    z = _bitstream(qzeros, bits, out_features) + zero_offset
    return q, z


def unpack_awq(qweight: np.ndarray, qzeros: np.ndarray, out_features: int) -> Tuple[np.ndarray, np.ndarray]:
    """(codes ``(out, in)``, zeros ``(groups, out)``) of AWQ GEMM tensors (4 bits)."""

    def cols(words: np.ndarray) -> np.ndarray:
        nib = _bitstream(words, 4, words.shape[1] * 8).reshape(words.shape[0], -1, 8)
        out = np.empty_like(nib)
        out[:, :, list(AWQ_ORDER)] = nib
        return out.reshape(words.shape[0], -1)[:, :out_features]

    return cols(qweight).T.copy(), cols(qzeros)


class _Spec:
    """The quantization_config fields the import needs, validated."""

    def __init__(self, qc: Dict[str, Any]) -> None:
        self.method = str(qc.get("quant_method", "")).lower()
        bits = qc.get("bits", qc.get("w_bit"))
        gs = qc.get("group_size", qc.get("q_group_size"))
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise ModelFormatError(f"quantization_config: bits must be an integer, got {bits!r}")
        if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or gs > 0):
            raise ModelFormatError(f"quantization_config: group_size must be a positive integer or -1, got {gs!r}")
        self.bits, self.group_size = bits, gs
        if self.method == "gptq":
            if bits not in (2, 3, 4, 8):
                raise ModelFormatError(f"GPTQ checkpoints with {bits}-bit codes are not supported (2, 3, 4 or 8)")
            fmt = str(qc.get("checkpoint_format", qc.get("format", "gptq"))).lower()
            if fmt not in ("gptq", "gptq_v2"):
                raise ModelFormatError(f"GPTQ checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
            self.format = fmt
            self.zero_offset = 1 if fmt == "gptq" else 0
            self.desc_act = bool(qc.get("desc_act", False))
        else:
            version = str(qc.get("version", "gemm")).lower()
            if version != "gemm":
                raise ModelFormatError(f"AWQ version {version!r} is not supported (gemm)")
            if bits != 4:
                raise ModelFormatError(f"AWQ checkpoints with {bits}-bit codes are not supported (4)")
            if qc.get("zero_point", True) is False:
                raise ModelFormatError("AWQ checkpoints without zero points are not supported")
            self.format = "gemm"
            self.zero_offset = 0

    def record(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {"method": self.method, "bits": self.bits, "group_size": self.group_size,
                             "checkpoint_format": self.format}
        if self.method == "gptq":
            r["desc_act"] = self.desc_act
        return r


def _tensor(source: SourceTensors, name: str, dtype: str, ndim: int) -> np.ndarray:
    got, shape, data = source.raw(name)
    if got != dtype:
        raise ModelFormatError(f"{name}: dtype {got}, expected {dtype}")
    if len(shape) != ndim:
        raise ModelFormatError(f"{name}: shape {shape}, expected {ndim} dimensions")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    width = {"I32": 4, "F16": 2}[dtype]
    if len(data) != n * width:
        raise ModelFormatError(f"{name}: {len(data)} bytes for shape {shape}")
    return np.frombuffer(data, dtype={"I32": "<i4", "F16": "<f2"}[dtype]).reshape(shape)


def _layer(source: SourceTensors, spec: _Spec, prefix: str):
    """(codes (out, in), zeros (G, out), scales (G, out) float64, group per column (in,))."""
    for part in ("qweight", "qzeros", "scales"):
        if f"{prefix}.{part}" not in source.entries:
            raise ModelFormatError(f"quantized layer {prefix!r} has no {part}")
    qweight = _tensor(source, f"{prefix}.qweight", "I32", 2)
    qzeros = _tensor(source, f"{prefix}.qzeros", "I32", 2)
    scales = _tensor(source, f"{prefix}.scales", "F16", 2)
    groups, out_f = scales.shape
    bits = spec.bits
    if spec.method == "gptq":
        if (qweight.shape[0] * 32) % bits:
            raise ModelFormatError(f"{prefix}.qweight: {qweight.shape[0]} rows of {bits}-bit codes is no whole column")
        in_f = qweight.shape[0] * 32 // bits
        if qweight.shape[1] != out_f:
            raise ModelFormatError(f"{prefix}.qweight has {qweight.shape[1]} columns, scales {out_f}")
        expect_z = (groups, -(-out_f * bits // 32))
    else:
        in_f = qweight.shape[0]
        if qweight.shape[1] * 8 != out_f:
            raise ModelFormatError(f"{prefix}.qweight packs {qweight.shape[1] * 8} columns, scales have {out_f}")
        expect_z = (groups, qweight.shape[1])
    if tuple(qzeros.shape) != expect_z:
        raise ModelFormatError(f"{prefix}.qzeros has shape {list(qzeros.shape)}, expected {list(expect_z)}")
    if in_f == 0 or out_f == 0 or groups == 0:
        raise ModelFormatError(f"{prefix}: empty quantized tensor")
    g = in_f if spec.group_size == -1 else spec.group_size
    gi_name = f"{prefix}.g_idx"
    if gi_name in source.entries:
        gi = _tensor(source, gi_name, "I32", 1).astype(np.int64)
        if gi.shape[0] != in_f:
            raise ModelFormatError(f"{gi_name} has {gi.shape[0]} entries for {in_f} input columns")
    else:
        gi = np.arange(in_f, dtype=np.int64) // g
    if gi.min() < 0 or gi.max() >= groups:
        raise ModelFormatError(f"{prefix}: group indices outside 0..{groups - 1}")
    if spec.method == "awq" and groups != -(-in_f // g):
        raise ModelFormatError(f"{prefix}: {groups} groups of scales for {in_f} inputs in groups of {g}")
    if spec.method == "gptq":
        q, z = unpack_gptq(qweight, qzeros, bits, in_f, out_f, spec.zero_offset)
    else:
        q, z = unpack_awq(qweight, qzeros, out_f)
    return q, z, scales.astype(np.float64), gi


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(*x.shape, 2)


def _convert(q: np.ndarray, z: np.ndarray, s: np.ndarray, gi: np.ndarray, bits: int):
    """(dtype, shape, bytes, ggml type or None, offset rounding) of one projection."""
    out_f, in_f = q.shape
    homogeneous = in_f % 32 == 0 and bool((gi.reshape(-1, 32) == gi[::32, None]).all())
    if homogeneous:
        bg = gi[::32]  # group of each 32-column block
        nb = in_f // 32
        d = s[bg].T  # (out, nb)
        zb = z[bg].T
        qb = q.reshape(out_f, nb, 32).astype(np.int64)
        if bits == 4 and (zb == 8).all():
            blk = np.empty((out_f, nb, 18), np.uint8)
            blk[..., 0:2] = _f16_bytes(d)
            nib = qb.astype(np.uint8)
            blk[..., 2:] = nib[..., :16] | (nib[..., 16:] << 4)
            return "U8", [out_f, nb * 18], blk.tobytes(), "q4_0", 0.0
        if bits == 4:
            m_exact = -zb * d
            m = m_exact.astype(np.float16)
            blk = np.empty((out_f, nb, 20), np.uint8)
            blk[..., 0:2] = _f16_bytes(d)
            blk[..., 2:4] = _f16_bytes(m)
            nib = qb.astype(np.uint8)
            blk[..., 4:] = nib[..., :16] | (nib[..., 16:] << 4)
            err = float(np.abs(m.astype(np.float64) - m_exact).max())
            return "U8", [out_f, nb * 20], blk.tobytes(), "q4_1", err
        v = qb - zb[..., None]
        if v.min() >= -128 and v.max() <= 127:
            blk = np.empty((out_f, nb, 34), np.uint8)
            blk[..., 0:2] = _f16_bytes(d)
            blk[..., 2:] = v.astype(np.int8).view(np.uint8)
            return "U8", [out_f, nb * 34], blk.tobytes(), "q8_0", 0.0
    w = s[gi].T * (q - z[gi].T)
    return "F16", [out_f, in_f], w.astype("<f2").tobytes(), None, 0.0


def import_quantized(src: Union[str, "os.PathLike[str]"], dst: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Converts the GPTQ/AWQ checkpoint directory ``src`` into the edgellm
    checkpoint directory ``dst`` (created; must not exist). Returns the import
    record, also stored in ``dst/config.json`` as ``edgellm_import``."""
    src_p, dst_p = Path(os.fspath(src)), Path(os.fspath(dst))
    config = json.loads((src_p / "config.json").read_text(encoding="utf-8"))
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() not in ("gptq", "awq"):
        raise ModelFormatError(f"{src_p} is not a GPTQ or AWQ checkpoint (quantization_config.quant_method)")
    spec = _Spec(qc)
    source = SourceTensors(src_p)
    prefixes = sorted({n.rsplit(".", 1)[0] for n in source.entries if n.endswith(".qweight")})
    if not prefixes:
        raise ModelFormatError(f"{src_p}: quantization_config says {spec.method} but no tensor is a .qweight")
    taken = {f"{p}.{part}" for p in prefixes for part in _PARTS}
    for n in source.entries:
        if n.rsplit(".", 1)[-1] in _PARTS and n not in taken:
            raise ModelFormatError(f"{n} belongs to no quantized layer (no {n.rsplit('.', 1)[0]}.qweight)")
    tensors: Dict[str, Tuple[str, List[int], bytes]] = {}
    quantized: Dict[str, Tuple[str, List[int]]] = {}
    types: Dict[str, int] = {}
    dequantized: List[str] = []
    rounding = 0.0
    for p in prefixes:
        q, z, s, gi = _layer(source, spec, p)
        dtype, shape, data, ty, err = _convert(q, z, s, gi, spec.bits)
        tensors[f"{p}.weight"] = (dtype, shape, data)
        if ty is None:
            dequantized.append(f"{p}.weight")
            types["f16"] = types.get("f16", 0) + 1
        else:
            quantized[f"{p}.weight"] = (ty, list(q.shape))
            types[ty] = types.get(ty, 0) + 1
        rounding = max(rounding, err)
    for n in source.names():
        if n not in taken:
            tensors[n] = source.raw(n)
    record = {**spec.record(), "source": str(src_p.resolve()), "tensors": types, "dequantized": dequantized,
              "max_offset_rounding": rounding, "converter_version": CONVERTER_VERSION}
    config.pop("quantization_config", None)
    config["edgellm_import"] = record
    dst_p.mkdir(parents=True)
    write_safetensors(dst_p / "model.safetensors", tensors, quantized)
    for f in _COPY_FILES:
        if (src_p / f).is_file():
            shutil.copyfile(src_p / f, dst_p / f)
    (dst_p / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return record


def _cache_root() -> Path:
    env = os.environ.get("EDGELLM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgellm"


def cached_import(src: Union[str, "os.PathLike[str]"]) -> Tuple[Path, Dict[str, Any]]:
    """(edgellm checkpoint directory, import record) of the GPTQ/AWQ checkpoint
    ``src``, converted once and reused while its files are unchanged."""
    src_p = Path(os.fspath(src)).resolve()
    h = hashlib.sha256(f"{CONVERTER_VERSION}\0{src_p}".encode())
    for f in sorted(src_p.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    dst = _cache_root() / "imported" / f"{src_p.name}-{h.hexdigest()[:16]}"
    cfg = dst / "config.json"
    if cfg.is_file():  # written last: the directory is complete
        try:
            return dst, json.loads(cfg.read_text(encoding="utf-8"))["edgellm_import"]
        except (OSError, ValueError, KeyError):
            shutil.rmtree(dst, ignore_errors=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        record = import_quantized(src_p, tmp)
        try:
            os.replace(tmp, dst)
        except OSError:
            if not (dst / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst, record
