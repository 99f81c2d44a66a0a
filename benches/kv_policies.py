"""KV-cache policies: speed, memory and quality, with plots.

    python benches/kv_policies.py [--out benches/out] [--threads 2] [--quick]

Measures, in one run:
1. decode time per token versus position (default model, 8192 generated
   tokens; the full cache is given max_context=8192 so its cost can be seen);
2. per-token decode time at position ~1k and ~8k on a random-weight
   SmolLM-135M-shape checkpoint (benches/make_checkpoint.py) for StreamingLLM;
3. KV memory versus context for each policy on the SmolLM-135M shape
   (``Model.kv_cache_bytes()`` after the context is prefilled; "f16 cache" is
   the analytic size of an f16 full cache, the usual baseline);
4. decode-mode perplexity of the default model on its held-out text versus the
   H2O budget and the KIVI bits.

Writes ``kv_policies.json`` and PNG plots into ``--out`` and prints the goal
numbers of the KV-cache issue. Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

import edgellm

HERE = Path(__file__).resolve().parent
HELDOUT = Path(edgellm.default_model_path()) / "heldout_sample.py.txt"

KIVI2 = {"type": "kivi", "bits": 2, "group_size": 32, "residual": 128}
TIME_POLICIES: Dict[str, Optional[Dict[str, Any]]] = {
    "full": None,
    "window 1024": {"type": "window", "size": 1024},
    "streaming 4+1020": {"type": "streaming", "sinks": 4, "window": 1020},
    "kivi2": KIVI2,
    "streaming 4+1020 + kivi2": {"type": "streaming", "sinks": 4, "window": 1020, "quant": KIVI2},
    "h2o 20%": {"type": "h2o", "budget": 0.2, "recent": 64},
    "quest 8 blocks": {"type": "full", "select_blocks": 8},
}
MEMORY_POLICIES: Dict[str, Optional[Dict[str, Any]]] = {
    "full f32": None,
    "full f16": "f16",  # type: ignore[dict-item]
    "int8": "int8",  # type: ignore[dict-item]
    "kivi4": {"type": "kivi", "bits": 4},
    "kivi2": KIVI2,
    "kivi2 r32": {"type": "kivi", "bits": 2, "residual": 32},
    "kivi2 g64": {"type": "kivi", "bits": 2, "group_size": 64},
    "h2o 20%": {"type": "h2o", "budget": 0.2, "recent": 64},
    "streaming 4+1020": {"type": "streaming", "sinks": 4, "window": 1020},
    "streaming 4+1020 + kivi2": {"type": "streaming", "sinks": 4, "window": 1020, "quant": KIVI2},
}


def per_token_times(model: edgellm.Model, prompt: str, n: int) -> np.ndarray:
    """Seconds of each decode step of a greedy generation of ``n`` tokens."""
    g = model.stream(prompt, max_new_tokens=n, temperature=0, ignore_eos=True)
    times = []
    t = time.perf_counter()
    for _ in g:
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return np.array(times[1:])  # the first step includes the prefill


def smooth(x: np.ndarray, w: int = 128) -> np.ndarray:
    """Rolling median (robust to scheduler noise on a shared machine)."""
    return np.array([np.median(x[max(0, i - w // 2): i + w // 2 + 1]) for i in range(len(x))])


def decode_time_vs_position(threads: int, n: int) -> Dict[str, List[float]]:
    out = {}
    for name, kv in TIME_POLICIES.items():
        m = edgellm.load(threads=threads, max_context=n + 64, kv_cache=kv)
        t = per_token_times(m, "def main():\n", n)
        out[name] = t.tolist()
        print(f"  {name:28s} mean {1e3 * t.mean():6.3f} ms/token  "
              f"@1k {1e3 * np.median(t[900:1100]):6.3f}  @{n // 1000}k {1e3 * np.median(t[-200:]):6.3f}", flush=True)
    return out


def smollm_checkpoint(root: Path) -> Path:
    path = root / "smollm-135m"
    if not (path / "config.json").exists():
        subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(path), "--shape", "smollm-135m",
                        "--dtype", "float32"], check=True)
    return path


def decode_at(model: edgellm.Model, ids: List[int], steps: int = 48) -> float:
    """Median seconds per decode step right after prefilling ``ids``."""
    t = per_token_times(model, ids, steps + 1)
    return float(np.median(t))


def streaming_position_cost(path: Path, threads: int, far: int) -> Dict[str, float]:
    kv = {"type": "streaming", "sinks": 4, "window": 1020}
    m = edgellm.load(path, threads=threads, kv_cache=kv)
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 40000, size=far).tolist()
    near = decode_at(m, ids[:1000])
    far_t = decode_at(m, ids)
    return {"near_position": 1000, "far_position": far, "near_ms": 1e3 * near, "far_ms": 1e3 * far_t,
            "ratio": far_t / near}


def memory_vs_context(path: Path, threads: int, contexts: List[int]) -> Dict[str, Any]:
    info = edgellm.load(path).info()
    kv_f32_per_token = info["kv_bytes_per_token"]
    rng = np.random.default_rng(1)
    ids = rng.integers(100, 40000, size=max(contexts)).tolist()
    out: Dict[str, Any] = {"f16 cache (analytic)": [c * kv_f32_per_token // 2 for c in contexts]}
    for name, kv in MEMORY_POLICIES.items():
        m = edgellm.load(path, threads=threads, max_context=max(contexts) + 8, kv_cache=kv)
        sizes = []
        for c in contexts:
            m.generate(ids[:c], max_new_tokens=1, ignore_eos=True)
            sizes.append(m.kv_cache_bytes())
        out[name] = sizes
        print(f"  {name:28s} " + "  ".join(f"{c}: {s / 2**20:7.2f} MiB" for c, s in zip(contexts, sizes)), flush=True)
    return out


def perplexities(threads: int, tokens: int) -> Dict[str, Any]:
    base = edgellm.load(threads=threads)
    ids = base.tokenizer.encode(HELDOUT.read_text(encoding="utf-8"))[:tokens]
    full = base.perplexity(ids, mode="decode")
    res: Dict[str, Any] = {"tokens": len(ids), "full": full, "h2o": {}, "kivi": {}}
    for budget in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
        m = edgellm.load(threads=threads, kv_cache={"type": "h2o", "budget": budget, "recent": 32})
        res["h2o"][str(budget)] = m.perplexity(ids, mode="decode")
    res["select"] = {}
    for blocks in (1, 2, 4, 8):
        m = edgellm.load(threads=threads, kv_cache={"type": "full", "select_blocks": blocks})
        res["select"][str(blocks)] = m.perplexity(ids, mode="decode")
    for name, kv in (("2", {"type": "kivi", "bits": 2}), ("4", {"type": "kivi", "bits": 4}),
                     ("2 (r32)", {"type": "kivi", "bits": 2, "residual": 32}),
                     ("2 (g64)", {"type": "kivi", "bits": 2, "group_size": 64}),
                     ("2 (r0)", {"type": "kivi", "bits": 2, "residual": 0}),
                     ("8 (int8)", "int8"), ("16 (f16)", "f16")):
        res["kivi"][name] = edgellm.load(threads=threads, kv_cache=kv).perplexity(ids, mode="decode")
    for k in ("h2o", "kivi", "select"):
        for name, p in res[k].items():
            print(f"  {k} {name:10s} ppl {p:9.3f} ({100 * (p / full - 1):+6.2f}%)")
    return res


def plots(r: Dict[str, Any], out: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, t in r["decode_time"].items():
        t = np.array(t)
        ax.plot(np.arange(len(t)) + 1, 1e3 * smooth(t), label=name)
    ax.set_xlabel("position (tokens generated)")
    ax.set_ylabel("decode time per token, ms (rolling median)")
    ax.set_title(f"Default model, {r['threads']} threads: decode time vs position")
    ax.legend()
    ax.grid(alpha=0.3)
    files.append(out / "kv_decode_time_vs_position.png")
    fig.tight_layout()
    fig.savefig(files[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ctx = r["memory"]["contexts"]
    for name, sizes in r["memory"]["bytes"].items():
        ax.plot(ctx, np.array(sizes) / 2**20, marker="o", label=name, linestyle="--" if "analytic" in name else "-")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("KV cache, MiB")
    ax.set_title("SmolLM-135M shape: KV memory vs context")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    files.append(out / "kv_memory_vs_context.png")
    fig.tight_layout()
    fig.savefig(files[-1], dpi=110)

    p = r["perplexity"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    budgets = [float(b) for b in p["h2o"]]
    a1.plot([100 * b for b in budgets], list(p["h2o"].values()), marker="o", label="H2O (recent 32)")
    a1.axhline(p["full"], color="gray", linestyle="--", label="full cache")
    a1.set_xlabel("H2O budget, % of tokens seen")
    a1.set_ylabel("decode-mode perplexity")
    a1.legend()
    a1.grid(alpha=0.3)
    names = list(p["kivi"])
    a2.bar(names, list(p["kivi"].values()))
    a2.axhline(p["full"], color="gray", linestyle="--")
    a2.set_ylim(p["full"] * 0.97, max(p["kivi"].values()) * 1.01)
    a2.set_xlabel("KV bits (KIVI group 32, residual 128 unless noted)")
    a2.tick_params(axis="x", labelsize=7)
    blocks = list(p["select"])
    a3.plot([int(b) for b in blocks], [p["select"][b] for b in blocks], marker="o", label="Quest selection")
    a3.axhline(p["full"], color="gray", linestyle="--", label="full cache")
    a3.set_xlabel("key blocks of 64 tokens attended per step")
    a3.legend()
    a3.grid(alpha=0.3)
    fig.suptitle(f"Default model, held-out text ({p['tokens']} tokens, decode mode)")
    fig.tight_layout()
    files.append(out / "kv_perplexity.png")
    fig.savefig(files[-1], dpi=110)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    ap.add_argument("--checkpoints", default=None, help="where to write the SmolLM-shape checkpoint (default: a temp dir)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 2048 if a.quick else 8192
    r: Dict[str, Any] = {"threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.checkpoints) if a.checkpoints else Path(tmp)
        smol = smollm_checkpoint(root)
        print("KV memory vs context (SmolLM-135M shape):")
        contexts = [512, 1024, 2048] if a.quick else [512, 1024, 2048, 4096]
        r["memory"] = {"contexts": contexts, "bytes": memory_vs_context(smol, a.threads, contexts)}
        print("StreamingLLM per-token decode time, position ~1k vs far (SmolLM-135M shape):")
        r["streaming_smollm"] = streaming_position_cost(smol, a.threads, 3000 if a.quick else 8000)
        print(f"  {r['streaming_smollm']}")
    print(f"decode time vs position (default model, {n} tokens):")
    r["decode_time"] = decode_time_vs_position(a.threads, n)
    print("decode-mode perplexity (default model, held-out):")
    r["perplexity"] = perplexities(a.threads, 1024 if a.quick else 4096)

    mem = r["memory"]["bytes"]
    i = len(r["memory"]["contexts"]) - 1
    f16 = mem["f16 cache (analytic)"][i]
    p = r["perplexity"]
    t = {k: np.array(v) for k, v in r["decode_time"].items()}
    near = float(np.median(t["streaming 4+1020"][900:1100]))
    far = float(np.median(t["streaming 4+1020"][-200:]))
    goals = {
        "kivi2_ppl_increase_pct": 100 * (p["kivi"]["2"] / p["full"] - 1),
        "kivi2_memory_vs_f16": mem["kivi2"][i] / f16,
        "kivi2_r32_memory_vs_f16": mem["kivi2 r32"][i] / f16,
        "kivi2_r32_ppl_increase_pct": 100 * (p["kivi"]["2 (r32)"] / p["full"] - 1),
        "kivi2_g64_memory_vs_f16": mem["kivi2 g64"][i] / f16,
        "kivi2_g64_ppl_increase_pct": 100 * (p["kivi"]["2 (g64)"] / p["full"] - 1),
        "memory_context": r["memory"]["contexts"][i],
        "h2o_20pct_ppl_increase_pct": 100 * (p["h2o"]["0.2"] / p["full"] - 1),
        "streaming_default_far_vs_1k": far / near,
        "streaming_smollm_far_vs_1k": r["streaming_smollm"]["ratio"],
    }
    r["goals"] = goals
    (out / "kv_policies.json").write_text(json.dumps(r, indent=1))
    files = plots(r, out)
    print("goals:")
    for k, v in goals.items():
        print(f"  {k:32s} {v:.4f}")
    print("wrote", out / "kv_policies.json", *files)


if __name__ == "__main__":
    main()
