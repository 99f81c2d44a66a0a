"""edgellm's native NF4 and FP8 (E4M3, E5M2) weight formats end to end:
``edgellm.quantize(..., format=...)`` writes their blocks, ``edgellm.load`` runs
them (and quantizes to them in situ), the stored layout matches an independent
numpy decoder, quality on the default model's held-out text, SIMD vs scalar
paths, the CLI, and the error paths (GGUF export, bad arguments, bad files)."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import edgellm
from edgellm import _core
from edgellm.calibrate.checkpoint import SourceTensors, write_safetensors
from edgellm.calibrate.minifloat import nf4_roundtrip

DEFAULT = Path(edgellm.default_model_path())
FORMATS = ["nf4", "fp8_e4m3", "fp8_e5m2"]
BLOCK = {"nf4": 64, "fp8_e4m3": 32, "fp8_e5m2": 32}
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


@pytest.fixture(scope="module")
def native_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    out = {}
    for fmt in FORMATS:
        report = edgellm.quantize(DEFAULT, root / fmt, method="rtn", format=fmt, progress=False)
        assert report["format"] == fmt and report["bits"] is None
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="module")
def heldout_ids():
    text = (DEFAULT / "heldout_sample.py.txt").read_text(encoding="utf-8")
    return edgellm.load().tokenizer.encode(text, add_special_tokens=False)[:4096]


@pytest.fixture(scope="module")
def f16_ppl(heldout_ids):
    return edgellm.load().perplexity(heldout_ids, window=1024)


def _decode(blocks: np.ndarray, fmt: str, cols: int) -> np.ndarray:
    """Independent numpy decoder of the documented block layouts."""
    rows = blocks.shape[0]
    b = blocks.reshape(rows, -1, 34)
    d = b[..., :2].copy().view("<f2")[..., 0].astype(np.float32)
    qs = b[..., 2:]
    if fmt == "nf4":
        table = np.asarray(_core.nf4_values(), np.float32)
        codes = np.concatenate([qs & 15, qs >> 4], axis=-1)  # elements j and j + 32
        return (table[codes] * d[..., None]).reshape(rows, cols)
    vals = _core.fp8_decode(qs.ravel(), fmt[4:]).reshape(qs.shape)
    return (vals * (d / np.float32(FP8_MAX[fmt]))[..., None]).astype(np.float32).reshape(rows, cols)


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_layout_and_sizes(native_dirs, fmt):
    d = native_dirs[fmt]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["edgellm_quantization"]["format"] == fmt
    assert cfg["edgellm_quantization"]["projection_bits_per_weight"] == (4.25 if fmt == "nf4" else 8.5)
    src = SourceTensors(d)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert src.entries[name][2] == "U8"
    info = edgellm.load(d).info()
    p = info["parameters"]
    assert info["dtype"] == fmt
    bits = 4.25 if fmt == "nf4" else 8.5
    assert info["weight_bytes"][fmt] == (p["attention"] + p["ffn"]) * bits / 8
    assert info["weight_bytes"]["q8_0"] == p["embedding"] * 8.5 / 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_stored_blocks_decode_like_numpy_and_rust(native_dirs, fmt):
    """The file's blocks decode (numpy, from the documented layout) to what the
    engine runs (Calibrator.linear dequantizes the loaded tensor in Rust), and
    are within the format's error of the source weights."""
    src = SourceTensors(DEFAULT)
    out = SourceTensors(native_dirs[fmt])
    m = edgellm.load(native_dirs[fmt])
    cal = _core.Calibrator(m._core, [[1, 2]])
    for short, hf in [("q", "self_attn.q_proj"), ("down", "mlp.down_proj")]:
        name = f"model.layers.0.{hf}.weight"
        w = src.f32(name)
        dtype, shape, raw = out.raw(name)
        blocks = np.frombuffer(raw, np.uint8).reshape(w.shape[0], -1)
        mine = _decode(blocks, fmt, w.shape[1])
        np.testing.assert_array_equal(_core.dequantize_blocks(blocks, fmt, w.shape[1]), mine)
        got, _ = cal.linear(short)
        np.testing.assert_array_equal(got, mine)
        np.testing.assert_array_equal(_core.quantize_blocks(w, fmt), blocks)  # RTN is deterministic
        amax = np.abs(w.reshape(w.shape[0], -1, BLOCK[fmt])).max(axis=-1, keepdims=True)
        err = np.abs(mine - w).reshape(amax.shape[0], -1, BLOCK[fmt]) / np.maximum(amax, 1e-30)
        assert err.max() <= {"nf4": 0.153, "fp8_e4m3": 0.063, "fp8_e5m2": 0.126}[fmt]


def test_quality_on_heldout_text(native_dirs, heldout_ids, f16_ppl, tmp_path):
    ppl = {f: edgellm.load(native_dirs[f]).perplexity(heldout_ids, window=1024) for f in FORMATS}
    assert ppl["fp8_e4m3"] < f16_ppl * 1.01
    assert ppl["fp8_e5m2"] < f16_ppl * 1.02
    # NF4 against its float32 simulation (QLoRA's f32 absmax per 64, weights run in
    # f32): the f16 absmax and the native kernels cost no more than a hair.
    src = SourceTensors(DEFAULT)
    tensors, quantized = {}, {}
    nf4 = SourceTensors(native_dirs["nf4"])
    for name in src.names():
        if name in nf4.entries and nf4.entries[name][2] == "U8" and ".layers." in name:
            tensors[name] = ("F32", list(src.entries[name][3]), nf4_roundtrip(src.f32(name)).astype("<f4").tobytes())
        else:
            tensors[name] = nf4.raw(name)
            if nf4.entries[name][2] == "U8":
                quantized[name] = ("q8_0", list(src.entries[name][3]))
    sim = tmp_path / "sim"
    sim.mkdir()
    write_safetensors(sim / "model.safetensors", tensors, quantized)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (sim / f).write_bytes((DEFAULT / f).read_bytes())
    sim_ppl = edgellm.load(sim).perplexity(heldout_ids, window=1024)
    assert abs(ppl["nf4"] / sim_ppl - 1) < 0.003, (ppl["nf4"], sim_ppl)
    assert ppl["nf4"] < f16_ppl * 1.02


@pytest.mark.parametrize("fmt", FORMATS)
def test_in_situ_quant_generates_and_matches_scalar(fmt):
    m = edgellm.load(quant=fmt, progress=False)
    info = m.info()
    assert info["dtype"] == fmt and fmt in info["weight_bytes"]
    text = m.generate("def add(a, b):", max_new_tokens=12, temperature=0)
    assert isinstance(text, str) and text
    f16 = edgellm.load().logits(m.tokenizer.encode("import os\nfor name in os.listdir('.'):\n"))
    ids = m.tokenizer.encode("import os\nfor name in os.listdir('.'):\n")
    # The prompt (prefill: dequantized panels + f32 GEMM) on the best ISA vs the
    # scalar reference (its vec_dot loop), and decode step by step vs prefill.
    best = m.logits(ids)
    scalar = edgellm.load(quant=fmt, isa="scalar", progress=False).logits(ids)
    np.testing.assert_allclose(best, scalar, rtol=0, atol=2e-3 * np.abs(scalar).max())
    assert np.abs(best - f16).max() < 0.1 * np.abs(f16).max()
    assert m.logits(ids[:1]).shape == (1, m.vocab_size)
    np.testing.assert_allclose(m.logits(ids[:1])[0], best[0], rtol=0, atol=1e-3 * np.abs(best[0]).max())


def test_cli_quantize_info_and_load(tmp_path, capsys):
    from edgellm.cli import main

    dst = tmp_path / "e5"
    assert main(["quantize", "default", str(dst), "--method", "rtn", "--format", "fp8_e5m2", "--progress", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "fp8_e5m2"
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "quantized by        rtn (fp8_e5m2 blocks" in out and "fp8_e5m2" in out.split("weights by format")[1]
    assert main(["generate", "--quant", "nf4", "-n", "4", "def f(x):"]) == 0
    assert main(["quantize", "default", str(tmp_path / "g"), "--method", "gptq", "--format", "nf4"]) == 1
    assert "round to nearest only" in capsys.readouterr().err


def test_gguf_export_refuses_native_types(native_dirs, tmp_path):
    from edgellm.calibrate import export_gguf

    for fmt in FORMATS:
        with pytest.raises(edgellm.InvalidArgumentError, match=fmt):
            export_gguf(native_dirs[fmt], tmp_path / f"{fmt}.gguf")
        assert not (tmp_path / f"{fmt}.gguf").exists()


def test_argument_errors(tmp_path):
    for method in ("gptq", "awq", "smoothquant"):
        with pytest.raises(edgellm.InvalidArgumentError, match="round to nearest"):
            edgellm.quantize(DEFAULT, tmp_path / method, method=method, format="nf4", bits=8 if method == "smoothquant" else 4)
    with pytest.raises(edgellm.InvalidArgumentError, match="mixed_bpw"):
        edgellm.quantize(DEFAULT, tmp_path / "m", method="rtn", format="fp8_e4m3", mixed_bpw=6.0)
    with pytest.raises(edgellm.InvalidArgumentError, match="nf4"):
        edgellm.load(quant="nf5")
    with pytest.raises(edgellm.InvalidArgumentError, match="not whole nf4 blocks"):
        _core.quantize_blocks(np.zeros((2, 96), np.float32), "nf4")
    with pytest.raises(edgellm.InvalidArgumentError):
        _core.quantize_blocks(np.zeros((2, 64), np.float32), "fp8")
    with pytest.raises(edgellm.InvalidArgumentError):
        _core.dequantize_blocks(np.zeros((2, 33), np.uint8), "fp8_e4m3", 32)


def test_zero_weights_quantize_to_zeros():
    for fmt in FORMATS:
        blocks = _core.quantize_blocks(np.zeros((3, 128), np.float32), fmt)
        back = _core.dequantize_blocks(blocks, fmt, 128)
        assert np.all(back == 0) and not np.isnan(back).any()


def test_bad_native_blocks_are_format_errors(native_dirs, tmp_path):
    import shutil

    for old, new in [("nf4", "fp8_e4m3"), ("nf4", "q4_0")]:
        bad = tmp_path / f"bad_{new}"
        shutil.copytree(native_dirs[old], bad)
        f = bad / "model.safetensors"
        raw = bytearray(f.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        header = raw[8:8 + n].decode()
        # Claim other blocks than the stored nf4 ones: the byte count no longer fits.
        swapped = header.replace(f'\\"type\\":\\"{old}\\"', f'\\"type\\":\\"{new}\\"', 1)
        assert swapped != header
        f.write_bytes(bytes(raw[:8]) + swapped.encode() + bytes(raw[8 + n:]))
        with pytest.raises(edgellm.ModelFormatError):
            edgellm.load(bad)
