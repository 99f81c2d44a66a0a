"""Speed measurement in the style of llama-bench: prefill (pp) and decode (tg)
tokens per second over repetitions, plus a memory-bandwidth probe so decode speed
can be read as a fraction of the bandwidth bound (every weight byte is read once
per decoded token)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List

import numpy as np

from .model import Model


def bandwidth_probe(mib: int = 1024, reps: int = 5, threads: int = 2) -> float:
    """Sustained read bandwidth in GB/s: the best of `reps` passes of `threads`
    threads over a `mib` MiB buffer (far larger than the caches), claiming 1 MiB
    blocks in order as the decode GEMVs do (edgellm's own probe, in Rust: numpy's
    summation was slower than memory and under-reported the bound)."""
    from . import _core

    return _core.read_bandwidth(mib=mib, reps=reps, threads=threads)


def _summary(xs: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}


def run(model: Model, prompt_tokens: int = 512, gen_tokens: int = 128, reps: int = 3, seed: int = 0) -> Dict[str, Any]:
    """Measure pp{prompt_tokens} and tg{gen_tokens} on random token ids."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab_size  # id prompts: no tokenizer involved
    pp, tg = [], []
    for _ in range(reps):
        if prompt_tokens > 0:
            ids = rng.integers(0, vocab, prompt_tokens).tolist()
            g = model.stream(ids, max_new_tokens=1, temperature=0, ignore_eos=True)
            for _tok in g:
                pass
            pp.append(g.stats["prompt_tokens_per_second"])
        if gen_tokens > 0:
            # One-token prompt, then gen_tokens decode steps (as llama-bench's tg).
            g = model.stream([int(rng.integers(0, vocab))], max_new_tokens=gen_tokens + 1, temperature=0, ignore_eos=True)
            for _tok in g:
                pass
            tg.append(g.stats["decode_tokens_per_second"])
    info = model.info()
    out: Dict[str, Any] = {
        "model": info["path"],
        "architecture": info["architecture"],
        "dtype": info["dtype"],
        "parameters": info["parameters"]["total"],
        "file_bytes": info["file_bytes"],
        "threads": model.threads,
        "isa": model.isa,
        "reps": reps,
    }
    if pp:
        out[f"pp{prompt_tokens}"] = _summary(pp)
    if tg:
        out[f"tg{gen_tokens}"] = _summary(tg)
    return out


# Untimed calls at the start of each GEMM turn: longer than OpenBLAS's spin.
_WARM_S = 0.25


def gemm_vs_numpy(sizes: List[int], threads: int = 2, reps: int = 5) -> List[Dict[str, Any]]:
    """f32 GEMM speed of :func:`edgellm.matmul` against numpy's ``@`` (its BLAS) on
    square ``n × n`` products, interleaved repetitions, best of ``reps`` each.
    numpy's BLAS thread count is the one it was started with (set
    ``OPENBLAS_NUM_THREADS`` before importing numpy to match ``threads``).

    ``ratio`` compares the two bests; ``paired_ratio`` is the median of the
    ratios of neighbouring turns (with their ``paired_range``), which a host
    whose speed drifts over seconds (a shared VM: ±3% run to run) moves less
    than it moves two independent bests.

    The engines take turns; each turn first calls its engine untimed for
    ``_WARM_S``, then times two calls. OpenBLAS's workers spin for about 0.1 s
    after a call, and calls made meanwhile compete with them for the cores
    (measured 1.3-2x slower at n = 512). A pause instead lets this VM's idle
    cores sleep, which made the next call's thread wake-ups slow and erratic."""
    from .ops import matmul

    def timed(f: Any) -> float:
        end = time.perf_counter() + _WARM_S
        while time.perf_counter() < end:
            f()
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
        return best

    out = []
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = matmul(a, b, threads=threads)  # pool start-up and first-touch outside the timing
        ref = a @ b
        ours, theirs = [], []
        for _ in range(reps):
            ours.append(timed(lambda: matmul(a, b, threads=threads)))
            theirs.append(timed(lambda: a @ b))
        err = float(np.abs(c - ref).max() / max(np.abs(ref).max(), 1e-30))
        flops = 2.0 * n * n * n
        paired = sorted(t / o for o, t in zip(ours, theirs))
        out.append({"n": n, "edgellm_gflops": flops / min(ours) / 1e9, "numpy_gflops": flops / min(theirs) / 1e9,
                    "ratio": min(theirs) / min(ours), "paired_ratio": statistics.median(paired),
                    "paired_range": [paired[0], paired[-1]], "max_rel_diff": err})
    return out
