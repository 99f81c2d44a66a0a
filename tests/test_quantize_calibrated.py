"""`edgellm.quantize` end to end: the Rust capture API, calibrated checkpoints that
`edgellm.load` runs on the quantized kernels, the stored blocks read back exactly,
quality on the embedded model's held-out text, the CLI, and argument errors."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import edgellm
from edgellm import _core
from edgellm.calibrate import Grid, rtn
from edgellm.calibrate.checkpoint import SourceTensors
from conftest import model_dir

DEFAULT = Path(edgellm.default_model_path())
TEXTS = [
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "import os\nimport sys\n\nfor name in os.listdir('.'):\n    print(name, file=sys.stderr)\n",
    "Hello world, this is a short calibration text about numbers: 1 2 3 4 5 6 7 8 9 10.\n",
]


def _seqs(model, n=2, length=12):
    r = np.random.default_rng(0)
    return [r.integers(0, model.vocab_size, length).tolist() for _ in range(n)]


@pytest.mark.parametrize("name", ["llama_gqa_tied", "phi", "gemma2"])
def test_calibrator_walks_layers_to_the_model_logits(name):
    m = edgellm.load(model_dir(name), threads=2)
    seqs = _seqs(m)
    cal = _core.Calibrator(m._core, seqs)
    info = m.info()
    assert cal.tokens == 24 and cal.num_layers == info["num_layers"]
    while cal.layer < cal.num_layers:
        caps = cal.capture()
        assert caps["attn_in"].shape == (24, info["hidden_size"])
        assert caps["o_in"].shape == (24, info["num_heads"] * info["head_dim"])
        assert caps["mlp_in"].shape == (24, info["hidden_size"])
        assert caps["down_in"].shape == (24, info["intermediate_size"])
        assert all(a.dtype == np.float32 for a in caps.values())
        cal.advance()
    got = cal.logits()
    np.testing.assert_array_equal(got[:12], m.logits(seqs[0]))
    np.testing.assert_array_equal(got[12:], m.logits(seqs[1]))
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.capture()


def test_calibrator_argument_errors():
    m = edgellm.load(model_dir("llama"), threads=2)
    with pytest.raises(edgellm.InvalidArgumentError):
        _core.Calibrator(m._core, [])
    with pytest.raises(edgellm.InvalidTokenError):
        _core.Calibrator(m._core, [[m.vocab_size]])
    with pytest.raises(edgellm.InvalidTokenError):
        _core.Calibrator(m._core, [[-1, 2]])
    cal = _core.Calibrator(m._core, _seqs(m))
    w, b = cal.linear("q")
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.set_linear("q", np.zeros((w.shape[0], w.shape[1] + 1), np.float32))
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.set_linear("q", np.asfortranarray(np.zeros((64, 64), np.float32))[:, ::2])
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.linear("qkv")
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.norm("final_norm")
    nw, nb = cal.norm("attn_norm")
    with pytest.raises(edgellm.InvalidArgumentError):
        cal.set_norm("attn_norm", nw, nw)  # RMSNorm has no bias


@pytest.fixture(scope="module")
def rtn_dir(tmp_path_factory):
    dst = tmp_path_factory.mktemp("q") / "rtn4"
    report = edgellm.quantize(DEFAULT, dst, method="rtn", bits=4, group_size=128, progress=False)
    assert report["format"] == "q4_0" and report["calibration_tokens"] == 0
    return dst


def test_quantized_checkpoint_layout(rtn_dir):
    cfg = json.loads((rtn_dir / "config.json").read_text())
    assert cfg["edgellm_quantization"]["method"] == "rtn"
    assert cfg["edgellm_quantization"]["format"] == "q4_0"
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (rtn_dir / f).is_file()
    src = SourceTensors(rtn_dir)
    assert src.entries["model.layers.0.self_attn.q_proj.weight"][2] == "U8"
    assert src.entries["model.norm.weight"][2] == "F16"  # untouched tensors are copied as they were
    m = edgellm.load(rtn_dir)
    info = m.info()
    assert info["dtype"] == "q4_0"
    # q4_0 projections (4.5 bits) and a q8_0 tied embedding (8.5 bits); norms in f16.
    p = info["parameters"]
    assert info["weight_bytes"]["q4_0"] == (p["attention"] + p["ffn"]) * 4.5 / 8
    assert info["weight_bytes"]["q8_0"] == p["embedding"] * 8.5 / 8


def test_stored_blocks_read_back_exactly(rtn_dir):
    """What Rust dequantizes from the file is what the Python grid computed."""
    src = SourceTensors(DEFAULT)
    m = edgellm.load(rtn_dir)
    cal = _core.Calibrator(m._core, [[1, 2]])
    for name, hf in [("q", "self_attn.q_proj"), ("down", "mlp.down_proj")]:
        w = src.f32(f"model.layers.0.{hf}.weight").astype(np.float64)
        want = rtn(w, Grid(4, 128, True)).dequantize()
        got, _ = cal.linear(name)
        np.testing.assert_array_equal(got, want)


def test_rtn_int4_group128_quality(rtn_dir, heldout_ids, f16_ppl):
    ppl = edgellm.load(rtn_dir).perplexity(heldout_ids, window=1024)
    assert f16_ppl < ppl < f16_ppl * 1.05


@pytest.fixture(scope="module")
def heldout_ids():
    text = (DEFAULT / "heldout_sample.py.txt").read_text(encoding="utf-8")
    return edgellm.load().tokenizer.encode(text, add_special_tokens=False)[:4096]


@pytest.fixture(scope="module")
def f16_ppl(heldout_ids):
    return edgellm.load().perplexity(heldout_ids, window=1024)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_int4_recovers_rtn_loss(method, rtn_dir, heldout_ids, f16_ppl, tmp_path):
    """At int4 group 128 (calibrated on the built-in training-split sample) GPTQ meets
    the issue's goal, losing at most 0.7x what RTN loses (measured here: below f16);
    AWQ loses less than RTN (0.47x here, but 0.94x on the whole held-out sample with
    16k calibration tokens: benches/quality_table.md), so only that is asserted."""
    rtn_ppl = edgellm.load(rtn_dir).perplexity(heldout_ids, window=1024)
    report = edgellm.quantize(DEFAULT, tmp_path / method, method=method, bits=4, group_size=128,
                              max_tokens=4096, progress=False)
    assert report["calibration_tokens"] == 4096
    errs = report["relative_output_error"]
    assert len(errs) == 6 * 7 and all(0 < e < 0.1 for e in errs.values())
    ppl = edgellm.load(tmp_path / method).perplexity(heldout_ids, window=1024)
    assert ppl - f16_ppl <= (0.7 if method == "gptq" else 0.95) * (rtn_ppl - f16_ppl)


@pytest.mark.parametrize("name", ["llama", "phi", "gemma", "gemma2", "qwen3", "stablelm_parallel"])
def test_every_family_quantizes_and_runs(name, tmp_path):
    """Scale folding (LayerNorm with bias, Gemma's 1 + w norms, parallel blocks, v
    and up rows with biases) keeps the function: at 8 bits every method stays close
    to the float logits (prompts run the int8 GEMM, so activations are int8 too:
    measured max error 0.7-7.5% of the logit range on these random-weight
    fixtures); at 4 bits GPTQ and AWQ land closer than RTN (measured 0.57-0.89x of
    RTN's logit error)."""
    src = model_dir(name)
    ref = edgellm.load(src, threads=2)
    ids = ref.tokenizer.encode(TEXTS[0])[:24]
    a = ref.logits(ids)

    def error(method, bits):
        dst = tmp_path / f"{method}{bits}"
        report = edgellm.quantize(src, dst, method=method, bits=bits, group_size=32, calibration=TEXTS,
                                  seq_len=32, embedding="keep", progress=False, threads=2)
        # phi's hidden size (80) is not whole 32-blocks: those projections stay float.
        assert bool(report["kept_float"]) == (name == "phi")
        b = edgellm.load(dst, threads=2).logits(ids)
        assert np.isfinite(b).all()
        return np.abs(a - b).max() / np.abs(a).max()

    for method in ("rtn", "gptq", "awq", "smoothquant"):
        assert error(method, 8) < 0.1, method
    rtn4 = error("rtn", 4)
    assert error("gptq", 4) < rtn4
    assert error("awq", 4) < rtn4


def test_quantize_argument_errors(tmp_path):
    with pytest.raises(edgellm.InvalidArgumentError, match="calibration"):
        edgellm.quantize(model_dir("llama"), tmp_path / "a", method="gptq")
    with pytest.raises(edgellm.InvalidArgumentError):
        edgellm.quantize(DEFAULT, tmp_path / "b", method="rtn", bits=5)
    with pytest.raises(edgellm.InvalidArgumentError):
        edgellm.quantize(DEFAULT, tmp_path / "c", method="smoothquant", bits=4)
    with pytest.raises(edgellm.InvalidArgumentError):
        edgellm.quantize(DEFAULT, tmp_path / "d", method="nope")
    with pytest.raises(edgellm.InvalidArgumentError):
        edgellm.quantize(DEFAULT, tmp_path / "e", method="rtn", format="q4_1")
    with pytest.raises(edgellm.InvalidArgumentError, match="fused"):
        edgellm.quantize(model_dir("phi3"), tmp_path / "f", method="rtn", group_size=32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(edgellm.InvalidArgumentError, match="not empty"):
        edgellm.quantize(DEFAULT, tmp_path / "full", method="rtn")
    with pytest.raises(TypeError):
        edgellm.quantize(DEFAULT, tmp_path / "g", method="gptq", calibration="one string")
    with pytest.raises(edgellm.ModelFormatError):
        edgellm.quantize(tmp_path / "nothing", tmp_path / "h", method="rtn")


def test_corrupted_quant_metadata_is_a_format_error(rtn_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(rtn_dir, bad)
    f = bad / "model.safetensors"
    raw = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].decode()
    # Claim q8_0 blocks where q4_0 blocks are stored: the byte count no longer fits.
    swapped = header.replace('\\"type\\":\\"q4_0\\"', '\\"type\\":\\"q8_0\\"', 1)
    assert swapped != header
    f.write_bytes(bytes(raw[:8]) + swapped.encode() + bytes(raw[8 + n:]))
    with pytest.raises(edgellm.ModelFormatError):
        edgellm.load(bad)


def test_cli_quantize(tmp_path, capsys):
    from edgellm.cli import main

    assert main(["quantize", "default", str(tmp_path / "cli"), "--method", "rtn", "--bits", "8",
                 "--group-size", "32", "--progress", "off", "--json", "--gguf", str(tmp_path / "cli.gguf")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "q8_0"
    assert edgellm.load(tmp_path / "cli").info()["dtype"] == "q8_0"
    assert edgellm.load(tmp_path / "cli.gguf").info()["dtype"] == "q8_0"
    assert main(["quantize", "default", str(tmp_path / "cli"), "--method", "rtn"]) == 1  # exists, not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "cli")]) == 0
    assert "quantized by        rtn 8-bit symmetric group 32 (q8_0 blocks" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "cli"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["method"] == "rtn"


def test_gguf_export_round_trips(rtn_dir, tmp_path):
    """The calibrated checkpoint exported to GGUF loads back with the same blocks,
    tokenizer and logits; the gguf package (an independent reader) sees llama.cpp's
    names and block types."""
    from edgellm.calibrate import export_gguf

    path = export_gguf(rtn_dir, tmp_path / "m.gguf")
    a, b = edgellm.load(rtn_dir), edgellm.load(path)
    ids = a.tokenizer.encode(TEXTS[0] + TEXTS[1])
    assert b.tokenizer.encode(TEXTS[0] + TEXTS[1]) == ids
    # The GGUF's Q/K rows are in llama.cpp's interleaved order and run that way
    # (rotary pairs (2i, 2i+1)): the same products, summed in another order.
    np.testing.assert_allclose(a.logits(ids), b.logits(ids), rtol=0, atol=1e-4)
    # Greedy tokens agree up to a near-tie (a 1e-5 change can flip an int8
    # activation rounding in decode, moving logits by ~0.1; the llama.cpp parity
    # test allows the same for q4_0).
    ga = a.generate(ids, max_new_tokens=16, temperature=0, ignore_eos=True)
    gb = b.generate(ids, max_new_tokens=16, temperature=0, ignore_eos=True)
    d = next((i for i, (x, y) in enumerate(zip(ga, gb)) if x != y), None)
    if d is not None:
        row = np.sort(a.logits(ids + ga[:d])[-1])
        assert row[-1] - row[-2] < 0.15, f"tokens differ at {d} with a top-2 margin of {row[-1] - row[-2]}"
    assert b.info()["dtype"] == "q4_0"
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.5.ffn_down.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    with pytest.raises(edgellm.InvalidArgumentError):
        export_gguf(model_dir("qwen2"), tmp_path / "q.gguf")


def test_mixed_precision_promotes_sensitive_projections(rtn_dir, heldout_ids, f16_ppl, tmp_path, capsys):
    """A sensitivity pass promotes the projections with the largest RTN output error
    to q8_0 within the bits-per-weight target; the result beats plain RTN int4."""
    from edgellm.cli import main

    report = edgellm.quantize(DEFAULT, tmp_path / "mixed", method="rtn", bits=4, group_size=128, mixed_bpw=5.5,
                              calibration=[(DEFAULT / "calibration_sample.py.txt").read_text()], max_tokens=4096,
                              progress=False)
    plan = report["plan"]
    assert len(plan) == 42 and set(plan.values()) == {"q4_0", "q8_0"}
    assert 5.0 < report["projection_bits_per_weight"] <= 5.5
    m = edgellm.load(tmp_path / "mixed")
    wb = m.info()["weight_bytes"]
    p = m.info()["parameters"]
    assert (wb["q4_0"] + wb["q8_0"]) * 8 == pytest.approx(
        report["projection_bits_per_weight"] * (p["attention"] + p["ffn"]) + 8.5 * p["embedding"])
    rtn_ppl = edgellm.load(rtn_dir).perplexity(heldout_ids, window=1024)
    assert f16_ppl < m.perplexity(heldout_ids, window=1024) < rtn_ppl
    assert main(["info", str(tmp_path / "mixed")]) == 0
    out = capsys.readouterr().out
    assert "per-layer plan" in out and "q8_0" in out.split("per-layer plan")[1]
    with pytest.raises(edgellm.InvalidArgumentError):
        edgellm.quantize(DEFAULT, tmp_path / "bad", method="rtn", bits=4, mixed_bpw=9.0)
    with pytest.raises(edgellm.InvalidArgumentError, match="calibration"):
        edgellm.quantize(model_dir("llama"), tmp_path / "bad2", method="rtn", bits=4, group_size=32, mixed_bpw=6.0)
