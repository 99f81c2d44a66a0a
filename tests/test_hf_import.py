"""GPTQ and AWQ checkpoints (HF layouts, packed by tests/quantized_checkpoints.py
from the published layouts): ``edgellm.load`` converts them, the loaded weights
equal an independent dequantization, the logits match the f32 checkpoint of that
dequantization, the CLI runs them, and malformed ones raise ModelFormatError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import edgellm
from edgellm import _core
from conftest import model_dir
from quantized_checkpoints import make_quantized

NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

# (family, method, bits, group, sym, desc_act, checkpoint_format, the block type expected)
CASES = [
    ("llama", "gptq", 4, 32, False, False, "gptq", "q4_1"),
    ("qwen2", "gptq", 4, 64, True, False, "gptq", "q4_0"),
    ("llama", "gptq", 4, -1, False, False, "gptq_v2", "q4_1"),
    ("llama", "gptq", 4, 32, False, True, "gptq", "f16"),
    ("qwen2", "gptq", 3, 32, False, False, "gptq", "q8_0"),
    ("llama", "gptq", 2, 64, False, False, "gptq", "q8_0"),
    ("llama", "gptq", 8, 32, True, False, "gptq", "q8_0"),
    ("llama", "awq", 4, 32, False, False, "gemm", "q4_1"),
    ("qwen2", "awq", 4, 64, False, False, "gemm", "q4_1"),
]
IDS = [f"{c[0]}-{c[1]}{c[2]}-g{c[3]}{'-sym' if c[4] else ''}{'-act' if c[5] else ''}-{c[6]}" for c in CASES]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _make(tmp_path: Path, case):
    fam, method, bits, group, sym, act, fmt, _ty = case
    src, ref = tmp_path / "quantized", tmp_path / "ref"
    deq = make_quantized(model_dir(fam), src, method, bits=bits, group_size=group, sym=sym, desc_act=act,
                         ref_dir=ref, checkpoint_format=fmt if method == "gptq" else "gptq")
    return src, ref, deq


def _load(src):
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = edgellm.load(src, threads=2)
    return m, [str(x.message) for x in w]


def _weight_tolerance(ty: str, deq: np.ndarray) -> float:
    # q4_0 / q8_0 hold d * (q - zero) exactly; q4_1 rounds m = -zero * scale to f16
    # (half an ulp of |zero * scale| <= 16 * max|scale|); f16 rounds each weight.
    if ty in ("q4_0", "q8_0"):
        return 0.0
    return float(np.abs(deq).max()) * 2.0**-10 + 1e-7 if ty == "f16" else 16 * float(np.abs(deq).max()) * 2.0**-11


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_import_weights_and_logits(tmp_path, case):
    src, ref_dir, deq = _make(tmp_path, case)
    ty = case[-1]
    m, warns = _load(src)
    imp = m.info()["import"]
    assert imp["method"] == case[1] and imp["bits"] == case[2] and imp["group_size"] == case[3]
    n_proj = len(deq)
    assert imp["tensors"] == {ty: n_proj}
    if ty == "f16":
        assert len(imp["dequantized"]) == n_proj and any("dequantized to f16" in w for w in warns)
        assert m.info()["dtype"] == "f16"
    else:
        assert imp["dequantized"] == [] and not warns
        assert m.info()["dtype"] == ty
    # Weights as the engine holds them, dequantized by its own row reader.
    cal = _core.Calibrator(m._core, [[1, 2]])
    for li in range(cal.num_layers):
        for short, hf in NAMES.items():
            want = deq[f"model.layers.{li}.{hf}.weight"]
            got, _ = cal.linear(short)
            np.testing.assert_allclose(got, want, rtol=0, atol=_weight_tolerance(ty, want), err_msg=f"{li}.{short}")
        cal.advance()
    ref = edgellm.load(ref_dir, threads=2)
    ids = list(np.random.default_rng(1).integers(0, m.vocab_size, 24))
    a, b = m.logits(ids), ref.logits(ids)
    # Both run the same weights; the difference is the engine's activation
    # rounding: f16 weights take f16-rounded activations (as llama.cpp's F16), the
    # block formats quantize every activation row to 8 bits before the integer
    # dot products, as ggml does. Measured on these random models (logit std
    # ~1.15): f16 max 0.008 / mean 7e-4; q4_0/q4_1 max 0.011-0.15 / mean
    # 0.0012-0.022; q8_0 max 0.2-1.24 / mean 0.02-0.061 (the 2/3-bit weights make a
    # far rougher random model; loading the f32 reference with quant="q8_0" moves
    # its logits by 0.26-0.77 as well).
    max_tol, mean_tol = {"f16": (0.03, 3e-3), "q4_0": (0.3, 0.05), "q4_1": (0.3, 0.05), "q8_0": (2.0, 0.12)}[ty]
    diff = np.abs(a - b)
    assert diff.max() < max_tol and diff.mean() < mean_tol, (diff.max(), diff.mean())
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.75


def test_import_is_cached_and_refreshed(tmp_path, cache_dir):
    src, _ref, _deq = _make(tmp_path, CASES[0])
    m1, _ = _load(src)
    converted = Path(m1.path)
    assert converted.parent == cache_dir / "imported"
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    m2, _ = _load(src)
    assert Path(m2.path) == converted and (converted / "model.safetensors").stat().st_mtime_ns == stamp
    cfg = json.loads((src / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (src / "config.json").write_text(json.dumps(cfg))
    m3, _ = _load(src)
    assert Path(m3.path) != converted


def test_cli_runs_imported_checkpoint(tmp_path, capsys):
    from edgellm.cli import main

    src, _ref, _deq = _make(tmp_path, CASES[-2])
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "imported from       awq 4-bit group 32 (gemm): projections as 14 q4_1" in out
    assert main(["info", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["import"]["tensors"] == {"q4_1": 14}
    assert main(["generate", "hello", "--model", str(src), "-n", "4", "--temperature", "0", "-t", "2"]) == 0
    assert capsys.readouterr().out.startswith("hello")


def _rewrite(src: Path, edit) -> None:
    """Applies ``edit(header, data)`` to the checkpoint's safetensors header."""
    f = src / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header, data = edit(header, data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _set_config(src: Path, **qc) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"].update(qc)
    (src / "config.json").write_text(json.dumps(cfg))


def _reshape(name, shape):
    def edit(h, d):
        h[name]["shape"] = shape
        return h, d
    return edit


def _rename(old, new):
    def edit(h, d):
        h[new] = h.pop(old)
        return h, d
    return edit


def _retype(name, dtype):
    def edit(h, d):
        h[name]["dtype"] = dtype
        return h, d
    return edit


P = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("method,bad", [
    ("gptq", lambda s: _set_config(s, bits=5)),
    ("gptq", lambda s: _set_config(s, bits="4")),
    ("gptq", lambda s: _set_config(s, group_size=0)),
    ("gptq", lambda s: _set_config(s, checkpoint_format="marlin")),
    ("awq", lambda s: _set_config(s, version="gemv")),
    ("awq", lambda s: _set_config(s, bits=8)),
    ("gptq", lambda s: _rewrite(s, _reshape(f"{P}.qzeros", [1, 8]))),  # 2 groups x 8 words
    ("gptq", lambda s: _rewrite(s, _reshape(f"{P}.scales", [4, 32]))),  # 2x64 scales read as 4x32
    ("gptq", lambda s: _rewrite(s, _reshape(f"{P}.g_idx", [32]))),
    ("gptq", lambda s: _rewrite(s, _retype(f"{P}.scales", "BF16"))),
    ("gptq", lambda s: _rewrite(s, _rename(f"{P}.qzeros", f"{P}.qzeroes"))),
    ("gptq", lambda s: _rewrite(s, _rename(f"{P}.qweight", f"{P}.weight_packed"))),  # orphan parts
    ("awq", lambda s: _rewrite(s, _reshape(f"{P}.qweight", [32, 16]))),
    ("awq", lambda s: _set_config(s, group_size=16)),  # scales no longer one row per group
])
def test_malformed_checkpoints_raise_model_format_error(tmp_path, method, bad):
    src = tmp_path / "bad"
    make_quantized(model_dir("llama"), src, method, bits=4, group_size=32)
    bad(src)
    with pytest.raises(edgellm.ModelFormatError):
        edgellm.load(src, threads=2)


def test_out_of_range_g_idx_raises(tmp_path):
    src = tmp_path / "bad"
    make_quantized(model_dir("llama"), src, "gptq", bits=4, group_size=32)

    def edit(h, d):
        s, e = h[f"{P}.g_idx"]["data_offsets"]
        gi = np.frombuffer(d[s:e], "<i4").copy()
        gi[5] = 7  # two groups only
        return h, d[:s] + gi.tobytes() + d[e:]

    _rewrite(src, edit)
    with pytest.raises(edgellm.ModelFormatError, match="group indices"):
        edgellm.load(src, threads=2)
