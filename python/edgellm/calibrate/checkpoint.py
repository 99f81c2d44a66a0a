"""Reading and writing safetensors checkpoints with the standard library and numpy
(edgellm needs no safetensors package), including edgellm's quantized tensors:
dtype ``U8`` holding GGML blocks, described by the metadata key
``edgellm.quantized_tensors`` (``{name: {"type": "q4_0", "shape": [rows, cols]}}``),
which the Rust loader (``formats/safetensors.rs``) reads."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import ModelFormatError

__all__ = ["QUANT_METADATA_KEY", "SourceTensors", "write_safetensors", "to_f32"]

QUANT_METADATA_KEY = "edgellm.quantized_tensors"
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "F64": 8, "I32": 4, "I64": 8}


class SourceTensors:
    """The tensors of an HF checkpoint directory (single or sharded safetensors),
    read lazily: ``raw(name)`` gives (dtype, shape, bytes)."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({directory / f for f in weight_map.values()})
        elif (directory / "model.safetensors").is_file():
            files = [directory / "model.safetensors"]
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ModelFormatError(f"no safetensors files in {directory}")
        self.entries: Dict[str, Tuple[Path, int, str, List[int], int, int]] = {}
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                s, e = info["data_offsets"]
                self.entries[name] = (f, 8 + n, info["dtype"], list(info["shape"]), s, e)

    def names(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def raw(self, name: str) -> Tuple[str, List[int], bytes]:
        f, start, dtype, shape, s, e = self.entries[name]
        with open(f, "rb") as fh:
            fh.seek(start + s)
            return dtype, shape, fh.read(e - s)

    def f32(self, name: str) -> np.ndarray:
        dtype, shape, data = self.raw(name)
        return to_f32(dtype, data).reshape(shape)


def to_f32(dtype: str, data: bytes) -> np.ndarray:
    if dtype == "F32":
        return np.frombuffer(data, dtype="<f4").copy()
    if dtype == "F16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    raise ModelFormatError(f"cannot read a {dtype} tensor as float")


def write_safetensors(
    path: Path,
    tensors: Mapping[str, Tuple[str, List[int], bytes]],
    quantized: Optional[Mapping[str, Tuple[str, List[int]]]] = None,
) -> int:
    """Writes ``tensors`` (name -> (dtype, shape, bytes)); ``quantized`` describes
    the U8 ones (name -> (ggml type, logical shape)). Wider dtypes come first so
    every tensor's bytes stay aligned for typed access. Returns the file size."""
    order = sorted(tensors, key=lambda n: (-_DTYPE_BYTES.get(tensors[n][0], 1), n))
    header: Dict[str, object] = {}
    meta = {"format": "pt"}
    if quantized:
        meta[QUANT_METADATA_KEY] = json.dumps(
            {n: {"type": t, "shape": list(s)} for n, (t, s) in sorted(quantized.items())}, separators=(",", ":")
        )
    header["__metadata__"] = meta
    at = 0
    for n in order:
        dtype, shape, data = tensors[n]
        header[n] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(data)]}
        at += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for n in order:
            f.write(tensors[n][2])
    return 8 + len(blob) + at
