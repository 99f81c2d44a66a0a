"""Native 3- and 2-bit checkpoints (q3_g128, q3a_g128, q2_g128, q2a_g128): the
packed layout decoded independently in numpy, the default model quantized with
RTN loads and runs them, the stored codes read back exactly, perplexity equals
the same grid in the 4-bit container (same weights, same kernels' sums) and the
float simulation of the grid, files are smaller than int4's, and the argument,
CLI and GGUF-export behaviour."""

import json
from pathlib import Path

import numpy as np
import pytest

import edgellm
from edgellm import _core
from edgellm.calibrate import Grid, export_gguf, rtn
from edgellm.calibrate.blocks import BLOCK_BYTES, pack
from edgellm.calibrate.checkpoint import SourceTensors, write_safetensors

DEFAULT = Path(edgellm.default_model_path())
FORMATS = {(3, True): "q3_g128", (3, False): "q3a_g128", (2, True): "q2_g128", (2, False): "q2a_g128"}


def _decode(ty: str, row: np.ndarray, cols: int) -> np.ndarray:
    """Element-by-element decoder of the documented layout (independent of pack)."""
    bits = 3 if ty.startswith("q3") else 2
    asym = "a_" in ty
    bb = BLOCK_BYTES[ty]
    out = np.empty(cols)
    for b in range(cols // 128):
        blk = row[b * bb:(b + 1) * bb]
        d = float(blk[0:2].view("<f2")[0])
        m = float(blk[2:4].view("<f2")[0]) if asym else 0.0
        qs = blk[4 if asym else 2:][:32]
        qh = blk[4 if asym else 2:][32:48]
        for e in range(128):
            s, h, l = e // 32, (e // 16) % 2, e % 16
            u = (int(qs[16 * h + l]) >> (2 * s)) & 3
            if bits == 3:
                u |= ((int(qh[l]) >> (4 * h + s)) & 1) << 2
            out[b * 128 + e] = d * (u - (0 if asym else 1 << (bits - 1))) + m
    return out


@pytest.mark.parametrize("bits,symmetric", list(FORMATS))
@pytest.mark.parametrize("group_size", [128, 256, -1])
def test_pack_layout_decodes_to_the_grid(bits, symmetric, group_size):
    r = np.random.default_rng(bits * 10 + symmetric)
    w = r.standard_normal((3, 512)) * r.uniform(0.01, 3, (3, 1))
    w[1] = 0.0  # all-zero groups: zeros, no NaN
    w[2] = 0.7  # constant groups
    grid = Grid(bits, group_size, symmetric)
    qw = rtn(w, grid)
    ty, blocks = pack(qw)
    assert ty == FORMATS[(bits, symmetric)] == grid.ggml_type
    assert blocks.shape == (3, 4 * BLOCK_BYTES[ty])
    want = qw.dequantize().astype(np.float64)
    for i in range(3):
        np.testing.assert_allclose(_decode(ty, blocks[i], 512), want[i], rtol=1e-6, atol=0)
    assert np.all(want[1] == 0.0) and np.all(np.isfinite(want))
    np.testing.assert_allclose(want[2], 0.7, rtol=2e-3)


def test_grid_formats_and_errors(tmp_path):
    assert Grid(3, 128, False).formats() == ("q3a_g128", "q4_1")
    assert Grid(2, 64, True).formats() == ("q4_0",)  # groups of 64 only fit the container
    assert Grid(3, 128, True, format="q4_0").ggml_type == "q4_0"
    with pytest.raises(edgellm.InvalidArgumentError, match="q3_g128"):
        Grid(3, 128, True, format="q3a_g128")
    with pytest.raises(edgellm.InvalidArgumentError, match="q2a_g128"):
        Grid(4, 128, False, format="q2a_g128")
    # Native 3/2-bit needs groups of whole 128-weight blocks; the container is explicit.
    with pytest.raises(edgellm.InvalidArgumentError, match="format='q4_1'"):
        edgellm.quantize(DEFAULT, tmp_path / "x", method="rtn", bits=3, group_size=64, symmetric=False, progress=False)
    rep = edgellm.quantize(DEFAULT, tmp_path / "c", method="rtn", bits=2, group_size=64, format="q4_0", progress=False)
    assert rep["format"] == "q4_0"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """RTN g128 checkpoints: native int3/int2 (both symmetries), and int3 asym and
    int4 in the 4-bit container blocks."""
    root = tmp_path_factory.mktemp("lowbit")
    out = {}
    for name, kw in {
        "q3a": dict(bits=3, symmetric=False),
        "q3": dict(bits=3, symmetric=True),
        "q2a": dict(bits=2, symmetric=False),
        "q2": dict(bits=2, symmetric=True),
        "q3a_in_q4_1": dict(bits=3, symmetric=False, format="q4_1"),
        "int4_asym": dict(bits=4, symmetric=False),
        "int4": dict(bits=4, symmetric=True),
    }.items():
        rep = edgellm.quantize(DEFAULT, root / name, method="rtn", group_size=128, progress=False, **kw)
        out[name] = (root / name, rep)
    return out


@pytest.fixture(scope="module")
def heldout_ids():
    text = (DEFAULT / "heldout_sample.py.txt").read_text(encoding="utf-8")
    return edgellm.load().tokenizer.encode(text, add_special_tokens=False)[:2048]


@pytest.mark.parametrize("name,bits,symmetric", [("q3a", 3, False), ("q3", 3, True), ("q2a", 2, False), ("q2", 2, True)])
def test_native_checkpoint_loads_and_reads_back_exactly(ckpts, name, bits, symmetric):
    path, rep = ckpts[name]
    ty = FORMATS[(bits, symmetric)]
    assert rep["format"] == ty and json.loads((path / "config.json").read_text())["edgellm_quantization"]["format"] == ty
    m = edgellm.load(path)
    info = m.info()
    p = info["parameters"]
    bpw = BLOCK_BYTES[ty] * 8 / 128
    assert info["weight_bytes"][ty] == (p["attention"] + p["ffn"]) * bpw / 8
    assert rep["projection_bits_per_weight"] == bpw
    # What Rust dequantizes from the file is exactly the Python grid.
    src = SourceTensors(DEFAULT)
    cal = _core.Calibrator(m._core, [[1, 2]])
    for lin, hf in [("q", "self_attn.q_proj"), ("down", "mlp.down_proj")]:
        w = src.f32(f"model.layers.0.{hf}.weight").astype(np.float64)
        got, _ = cal.linear(lin)
        np.testing.assert_array_equal(got, rtn(w, Grid(bits, 128, symmetric)).dequantize())
    assert len(m.generate("def main(", max_new_tokens=8, temperature=0.0)) > 0


def test_files_are_smaller_than_int4(ckpts):
    size = {k: v[1]["file_bytes"] for k, v in ckpts.items()}
    assert size["q2"] < size["q2a"] < size["q3"] < size["q3a"] < size["int4"] < size["int4_asym"]
    assert size["q3a_in_q4_1"] == size["int4_asym"]


def test_perplexity_equals_the_container_and_the_float_simulation(ckpts, heldout_ids, tmp_path):
    native = edgellm.load(ckpts["q3a"][0]).perplexity(heldout_ids, window=1024)
    container = edgellm.load(ckpts["q3a_in_q4_1"][0]).perplexity(heldout_ids, window=1024)
    # Same codes, scales and mins: identical dequantized weights and integer sums.
    assert native == container
    # The grid simulated in float32 (projections dequantized, embedding q8_0 as in
    # the quantized checkpoints): only the int8 activations of the quantized
    # kernels differ.
    src = SourceTensors(DEFAULT)
    tensors, quantized = {}, {}
    for name in src.names():
        dtype, shape, data = src.raw(name)
        if len(shape) == 2 and (".self_attn." in name or ".mlp." in name):
            deq = rtn(src.f32(name), Grid(3, 128, False)).dequantize()
            tensors[name] = ("F32", shape, deq.astype("<f4").tobytes())
        elif name == "model.embed_tokens.weight":
            ty, blocks = pack(rtn(src.f32(name), Grid(8, 32, True)))
            tensors[name] = ("U8", list(blocks.shape), blocks.tobytes())
            quantized[name] = (ty, shape)
        else:
            tensors[name] = (dtype, shape, data)
    sim = tmp_path / "sim"
    sim.mkdir()
    write_safetensors(sim / "model.safetensors", tensors, quantized)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (sim / f).write_bytes((DEFAULT / f).read_bytes())
    simulated = edgellm.load(sim).perplexity(heldout_ids, window=1024)
    assert native == pytest.approx(simulated, rel=2e-3)
    f16 = edgellm.load().perplexity(heldout_ids, window=1024)
    q2a = edgellm.load(ckpts["q2a"][0]).perplexity(heldout_ids, window=1024)
    assert f16 < native < q2a


def test_gguf_export_names_the_native_type(ckpts, tmp_path):
    with pytest.raises(edgellm.InvalidArgumentError, match="q3a_g128"):
        export_gguf(ckpts["q3a"][0], tmp_path / "x.gguf")


def test_cli_quantize_bits3_and_info(tmp_path, capsys):
    from edgellm.cli import main

    dst = tmp_path / "cli3"
    assert main(["quantize", "default", str(dst), "--method", "rtn", "--bits", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "q3_g128"
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "q3_g128" in out
    assert main(["quantize", "default", str(tmp_path / "c"), "--method", "rtn", "--bits", "2", "--asymmetric",
                 "--format", "q4_1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "q4_1"
