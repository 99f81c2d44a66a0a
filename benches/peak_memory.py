"""Peak resident memory of a generation versus file size + KV cache.

    python benches/peak_memory.py FILE_OR_DIR [...] [-p 512] [-n 64] [-t 2] [--quant q8_0] [--llamacpp]

Each model runs in a fresh subprocess: load, prefill ``-p`` tokens, decode ``-n``;
the subprocess reports its peak RSS (``ru_maxrss``) and the KV cache's bytes. A
subprocess that only imports edgellm and numpy gives the interpreter's baseline.
Weights are memory-mapped, so a full pass touches every page of the file once:
the goal is ``peak ≈ baseline + file + KV + a small constant`` (no second copy of
the weights; in-situ quantization, ``--quant``, owns its quantized copy instead).
With ``--llamacpp`` each GGUF file also runs the same workload in llama.cpp
(llama-cpp-python: one batch of ``-p`` tokens, then ``-n`` greedy steps) in a
subprocess of its own, against a baseline that imports llama_cpp and numpy.
Writes ``benches/out/peak_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys
import numpy as np
import edgellm
path, p, n, threads, quant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if path == "-":
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    sys.exit(0)
opts = {"quant": quant} if quant != "-" else {}
m = edgellm.load(path, threads=threads, max_context=p + n + 8, **opts)
ids = np.random.default_rng(0).integers(3, min(m.vocab_size, 32000), size=p).tolist()
m.generate(ids, max_new_tokens=n, ignore_eos=True)
print(json.dumps({
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "kv_cache_bytes": m.kv_cache_bytes(),
    "file_bytes": m.info()["file_bytes"],
    "weight_bytes": sum(m.info()["weight_bytes"].values()),
    "dtype": m.info()["dtype"],
}))
"""


LLAMACPP_CHILD = r"""
import json, resource, sys
import numpy as np
from llama_cpp import Llama
path, p, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])  # argv[5]: --quant, unused
if path == "-":
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    sys.exit(0)
ctx = p + n + 8
# One batch for the prompt (n_ubatch = p, as edgellm's 512-token chunk); n_batch
# spans the context so that llama-cpp-python keeps a logits row per position.
m = Llama(path, n_ctx=ctx, n_batch=ctx, n_ubatch=min(p, 512), n_threads=threads, n_threads_batch=threads, verbose=False)
ids = np.random.default_rng(0).integers(3, min(m.n_vocab(), 32000), size=p).tolist()
m.eval(ids)
for _ in range(n):
    m.eval([int(np.argmax(m.scores[m.n_tokens - 1]))])
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(path: str, p: int, n: int, threads: int, quant: Optional[str], script: str = CHILD) -> Dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", script, path, str(p), str(n), str(threads), quant or "-"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(x: float) -> str:
    return f"{x / 2**20:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--quant", default=None, help="quantize at load (HF checkpoints)")
    ap.add_argument("--llamacpp", action="store_true", help="also run GGUF files in llama.cpp (llama-cpp-python)")
    a = ap.parse_args()
    base = child("-", 0, 0, 1, None)["peak_rss"]
    base_llama = child("-", 0, 0, 1, None, LLAMACPP_CHILD)["peak_rss"] if a.llamacpp else None
    rows = []
    print(f"baseline (python + numpy + edgellm): {mib(base)} MiB")
    if base_llama is not None:
        print(f"baseline (python + numpy + llama_cpp): {mib(base_llama)} MiB")
    print(f"{'model':<40} {'file MiB':>9} {'weights':>9} {'KV MiB':>8} {'peak MiB':>9} {'overhead':>9}"
          + (f" {'llama.cpp peak':>15} {'peak - file':>12} {'(edgellm)':>10}" if a.llamacpp else ""))
    for path in a.models:
        r = child(path, a.p, a.n, a.threads, a.quant)
        # In-situ quantization owns its weights; otherwise the file is mapped.
        resident = r["weight_bytes"] if a.quant else r["file_bytes"]
        r.update(model=path, baseline_rss=base, overhead=r["peak_rss"] - base - resident - r["kv_cache_bytes"])
        line = (f"{Path(path).name[-40:]:<40} {mib(r['file_bytes'])} {mib(r['weight_bytes'])} {mib(r['kv_cache_bytes'])} "
                f"{mib(r['peak_rss'])} {mib(r['overhead'])}")
        if a.llamacpp and path.endswith(".gguf"):
            # Above the baseline and the file, KV cache included (llama.cpp's
            # is f16, edgellm's f32 by default).
            peak = child(path, a.p, a.n, a.threads, None, LLAMACPP_CHILD)["peak_rss"]
            r["llamacpp"] = {"peak_rss": peak, "baseline_rss": base_llama, "above_file": peak - base_llama - r["file_bytes"]}
            line += f" {mib(peak):>15} {mib(r['llamacpp']['above_file']):>12} {mib(r['peak_rss'] - base - r['file_bytes']):>10}"
        rows.append(r)
        print(line)
    out = ROOT / "benches" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak_memory.json").write_text(json.dumps({"prompt": a.p, "generated": a.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
