"""KV-cache policies through the Python API and the CLI.

Exactness: a policy that keeps everything (window ≥ length, full-budget H2O,
streaming whose window covers the sequence, KIVI whose f16 residual covers it)
gives exactly the full (or f16) cache's logits and greedy tokens, on the default
model and on fixtures of every attention variant (GQA/MQA, sliding windows,
soft-capping, per-layer rope, qk-norm). Quality: decode-mode perplexity of the
default model on its held-out text stays close to the full cache. Bounded
policies generate past the context without ContextLengthError and with bounded
memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

import edgellm
from conftest import model_dir

HELDOUT = Path(edgellm.default_model_path()) / "heldout_sample.py.txt"

# Fixtures covering the attention variants: MHA, GQA+tied, MQA, sliding window
# (mistral), soft-capping + local/global windows (gemma2, gemma3), qk-norm (qwen3),
# NoPE layers (smollm3), partial rotary (phi).
FAMILIES = ["llama", "llama_gqa_tied", "llama_mqa", "mistral", "gemma2", "gemma3", "qwen3", "smollm3", "phi"]


def greedy(model: edgellm.Model, prompt: List[int], n: int) -> List[int]:
    g = model.stream(prompt, max_new_tokens=n, temperature=0, ignore_eos=True)
    return list(g)


@pytest.fixture(scope="module")
def heldout_ids() -> List[int]:
    m = edgellm.load()
    return m.tokenizer.encode(HELDOUT.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", FAMILIES)
def test_policies_that_keep_everything_equal_the_full_cache(name: str) -> None:
    path = model_dir(name)
    full = edgellm.load(path)
    prompt = list(range(3, 40))
    want = greedy(full, prompt, 24)
    want_ppl = full.perplexity(prompt + want, mode="decode")
    n = len(prompt) + len(want)
    for kv in (
        {"type": "window", "size": n + 1},
        {"type": "streaming", "sinks": 4, "window": n},
        {"type": "h2o", "budget": 1.0},
        {"type": "h2o", "budget": n + 5, "recent": 3},
    ):
        m = edgellm.load(path, kv_cache=kv)
        assert greedy(m, prompt, 24) == want, kv
        assert m.perplexity(prompt + want, mode="decode") == pytest.approx(want_ppl, rel=1e-6), kv
    # KIVI whose f16 residual covers the sequence is the f16 cache exactly.
    f16 = edgellm.load(path, kv_cache="f16")
    kivi = edgellm.load(path, kv_cache={"type": "kivi", "bits": 2, "residual": n + 1})
    assert greedy(kivi, prompt, 24) == greedy(f16, prompt, 24)
    assert kivi.perplexity(prompt + want, mode="decode") == f16.perplexity(prompt + want, mode="decode")


def test_decode_mode_equals_chunked_for_the_full_cache(heldout_ids: List[int]) -> None:
    m = edgellm.load()
    ids = heldout_ids[:700]
    assert m.perplexity(ids, mode="decode") == pytest.approx(m.perplexity(ids), rel=1e-5)


@pytest.mark.parametrize(
    "kv, max_increase",
    [
        ("f16", 0.001),
        ("int8", 0.005),
        ({"type": "kivi", "bits": 4}, 0.01),
        ({"type": "kivi", "bits": 2}, 0.02),
        ({"type": "kivi", "bits": 2, "group_size": 32, "residual": 32}, 0.03),
        ({"type": "h2o", "budget": 0.2, "recent": 32}, 0.10),
        ({"type": "h2o", "budget": 0.2, "recent": 32, "quant": "int8"}, 0.10),
        ({"type": "streaming", "sinks": 4, "window": 256, "quant": {"type": "kivi", "bits": 2}}, 0.02),
        ({"type": "full", "select_blocks": 4}, 0.02),
        ({"type": "full", "select_blocks": 4, "quant": {"type": "kivi", "bits": 2}}, 0.03),
    ],
)
def test_decode_perplexity_stays_close_to_the_full_cache(heldout_ids: List[int], kv: Any, max_increase: float) -> None:
    ids = heldout_ids[:2048]
    full = edgellm.load().perplexity(ids, mode="decode")
    m = edgellm.load(kv_cache=kv)
    ppl = m.perplexity(ids, mode="decode")
    assert np.isfinite(ppl)
    assert ppl <= full * (1 + max_increase), (m.kv_cache, ppl, full)


def test_eviction_changes_results_when_it_evicts(heldout_ids: List[int]) -> None:
    # The quality tests above cannot pass by keeping everything: small budgets
    # must change the numbers.
    ids = heldout_ids[:600]
    full = edgellm.load().perplexity(ids, mode="decode")
    for kv in ({"type": "window", "size": 16}, {"type": "h2o", "budget": 0.05}, {"type": "kivi", "bits": 2, "residual": 0},
               {"type": "full", "select_blocks": 1}):
        assert edgellm.load(kv_cache=kv).perplexity(ids, mode="decode") != pytest.approx(full, rel=1e-4), kv


@pytest.mark.parametrize(
    "kv",
    [
        {"type": "window", "size": 48},
        {"type": "streaming", "sinks": 4, "window": 40},
        {"type": "streaming", "sinks": 4, "window": 40, "quant": {"type": "kivi", "bits": 2, "group_size": 8, "residual": 8}},
    ],
)
def test_bounded_policies_generate_past_the_context(kv: Dict[str, Any]) -> None:
    m = edgellm.load(max_context=64, kv_cache=kv)
    g = m.stream("def main():\n", max_new_tokens=300, temperature=0, ignore_eos=True)
    text = "".join(g)
    assert g.finish_reason == "length"
    assert len(g.tokens) == 300
    assert text
    # Memory is that of the window, not of the 300+ tokens.
    full = edgellm.load(max_context=400)
    full.generate("def main():\n", max_new_tokens=300, temperature=0, ignore_eos=True)
    assert m.kv_cache_bytes() < 0.5 * full.kv_cache_bytes()
    assert g.stats["kv_cache_bytes"] == m.kv_cache_bytes()


def test_streaming_perplexity_stays_stable_far_past_the_context(heldout_ids: List[int]) -> None:
    # 4x the trained context in one window: the sliding-window baseline without
    # sinks and StreamingLLM both stay near the in-context perplexity.
    m = edgellm.load(kv_cache={"type": "streaming", "sinks": 4, "window": 252})
    ids = heldout_ids[:4096]
    long = m.perplexity(ids, window=len(ids), mode="decode")
    short = edgellm.load().perplexity(ids, mode="decode")
    assert np.isfinite(long) and long < short * 1.15, (long, short)
    assert m.kv_cache_bytes() < edgellm.load().memory(context=1024)["kv_cache"] / 3


def test_full_cache_still_stops_at_the_context() -> None:
    m = edgellm.load(max_context=32)
    g = m.stream("def f(x):", max_new_tokens=100, temperature=0, ignore_eos=True)
    list(g)
    assert g.finish_reason == "context_length"
    with pytest.raises(edgellm.ContextLengthError):
        m.perplexity(list(range(10, 60)), window=50)
    h2o = edgellm.load(max_context=32, kv_cache={"type": "h2o", "budget": 0.5})
    g = h2o.stream("def f(x):", max_new_tokens=100, temperature=0, ignore_eos=True)
    list(g)
    assert g.finish_reason == "context_length"


def test_kv_cache_bytes_reflect_the_storage(heldout_ids: List[int]) -> None:
    ids = heldout_ids[:1000]
    sizes = {}
    for kv in (None, "f16", "int8", {"type": "kivi", "bits": 4}, {"type": "kivi", "bits": 2}):
        m = edgellm.load(kv_cache=kv)
        assert m.kv_cache_bytes() == 0
        m.perplexity(ids, mode="decode")
        sizes[m.kv_cache] = m.kv_cache_bytes()
    f32, f16, int8, k4, k2 = sizes.values()
    # 1000 tokens x 6 layers x 4 KV heads x 32 dims x (K + V).
    assert 1000 * 6 * 4 * 32 * 2 * 4 <= f32 <= 1.2 * 1000 * 6 * 4 * 32 * 2 * 4
    assert f16 == pytest.approx(f32 / 2, rel=0.05)
    assert int8 < 0.6 * f16
    assert k2 < k4 < int8
    assert k2 < 0.4 * f16  # 128 f16 residual tokens of 1000 included


@pytest.mark.parametrize(
    "kv, message",
    [
        ({"type": "window"}, "size"),
        ({"type": "h2o", "budget": 2.5}, "budget"),
        ({"type": "kivi", "bits": 3}, "2 or 4"),
        ({"type": "streaming", "window": 8, "quant": {"type": "kivi"}, "sinks": -1}, "non-negative"),
        ({"type": "h2o", "budget": 0.2, "quant": "kivi"}, "cannot be combined"),
        ({"type": "lru"}, "unknown kv_cache type"),
        ({"type": "streaming", "window": 64, "select_blocks": 2}, "needs type"),
        ({"window": 3}, "type"),
        (42, "dict"),
        ({"type": "window", "size": 4, "extra": object()}, "JSON"),
    ],
)
def test_bad_policies_are_invalid_arguments(kv: Any, message: str) -> None:
    with pytest.raises(edgellm.InvalidArgumentError, match=message):
        edgellm.load(kv_cache=kv)


def test_model_reports_its_policy() -> None:
    m = edgellm.load(kv_cache={"type": "streaming", "sinks": 2, "window": 100, "quant": {"type": "kivi", "bits": 4}})
    assert m.kv_cache == "streaming(sinks=2, window=100) + kivi4(group=32, residual=128)"
    assert edgellm.load().kv_cache == "full + f32"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgellm", *args], capture_output=True, text=True, timeout=300)


def test_cli_kv_flags(tmp_path: Path) -> None:
    r = run_cli("generate", "def main():", "-n", "120", "--max-context", "48", "--kv-cache", "streaming",
                "--kv-window", "32", "--kv-sinks", "4", "--kv-quant", "kivi", "--kv-bits", "2", "--kv-group", "8",
                "--kv-residual", "8", "--ignore-eos", "--temperature", "0", "--stats")
    assert r.returncode == 0, r.stderr
    assert "KV cache" in r.stderr
    text_file = tmp_path / "t.txt"
    text_file.write_text(HELDOUT.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    r = run_cli("perplexity", str(text_file), "--mode", "decode", "--kv-cache", "h2o", "--kv-budget", "0.3",
                "--kv-recent", "16")
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "h2o(budget=0.3, recent=16)" in r.stdout
    r = run_cli("perplexity", str(text_file), "--mode", "decode", "--kv-select", "2", "--kv-quant", "int8")
    assert r.returncode == 0 and "full + int8 + select 2 blocks" in r.stdout, r.stderr
    r = run_cli("perplexity", str(text_file), "--mode", "decode", "--kv-json", json.dumps({"type": "window", "size": 64}))
    assert r.returncode == 0 and "window(64)" in r.stdout, r.stderr
    r = run_cli("generate", "x", "--kv-json", "{nope")
    assert r.returncode != 0 and "JSON" in r.stderr


def test_memory_estimate_follows_the_policy(heldout_ids: List[int]) -> None:
    ids = heldout_ids[:1000]
    for kv in (None, "int8", {"type": "kivi", "bits": 2}, {"type": "window", "size": 300},
               {"type": "streaming", "sinks": 4, "window": 200, "quant": "f16"}, {"type": "h2o", "budget": 0.25}):
        m = edgellm.load(kv_cache=kv)
        estimate = m.memory(context=1000)["kv_cache"]
        m.perplexity(ids, mode="decode")
        # Measured = estimate + the stores' growth slack (rows are added 64 at a time, and a quarter more when growing).
        assert estimate <= m.kv_cache_bytes() <= 1.7 * estimate + 64 * 1024, (m.kv_cache, estimate, m.kv_cache_bytes())
    r = run_cli("info", "--kv-cache", "streaming", "--kv-window", "100", "--kv-quant", "kivi")
    assert r.returncode == 0 and "streaming(sinks=4, window=100) + kivi2" in r.stdout, r.stderr
