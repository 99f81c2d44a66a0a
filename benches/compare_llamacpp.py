"""edgellm vs llama.cpp on the same GGUF files, same threads, one run.

    python benches/compare_llamacpp.py [--work /tmp/edgellm-bench] [-t 2] [-p 512] [-n 128] [-r 3]

Writes a random-weight TinyLlama-1.1B-shape checkpoint (benches/make_checkpoint.py),
converts it to GGUF F16 (the converter of scripts/make_gguf_fixtures.py), quantizes
it with llama.cpp's own quantizer (Q8_0, Q4_0, Q4_K_M; Q5_K_M and Q6_K with
--formats), then measures prefill
(pp) and decode (tg) tokens/s of both engines and reports the ratios and the decode
speed as a fraction of the memory-bandwidth bound. Needs numpy, safetensors, gguf,
torch/transformers (converter only) and llama-cpp-python; results go to
benches/out/compare_llamacpp.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The quantized ones made by llama.cpp's quantizer (tests/llamacpp_quantize.py).
FORMATS = ("f16", "q8_0", "q4_0", "q4_K_M", "q5_K_M", "q6_K")
DEFAULT_FORMATS = FORMATS[:4]


def ensure_checkpoint(work: Path) -> Path:
    hf = work / "tinyllama-hf"
    if not (hf / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "benches" / "make_checkpoint.py"), str(hf)], check=True)
        # The GGUF converter wants a SentencePiece-style vocabulary: use the test one,
        # padded with unused tokens to the model's 32000 rows (llama.cpp checks that
        # the vocabulary matches the embedding).
        spm = ROOT / "tests" / "fixtures" / "tokenizers" / "spm_bpe"
        for f in spm.iterdir():
            shutil.copy(f, hf / f.name)
        tok = json.loads((hf / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        n = json.loads((hf / "config.json").read_text())["vocab_size"]
        for i in range(len(vocab), n):
            vocab[f"[PAD{i}]"] = i
        (hf / "tokenizer.json").write_text(json.dumps(tok))
    return hf


def ensure_gguf(work: Path, hf: Path, formats) -> dict:
    files = {"f16": work / "tinyllama-f16.gguf"}
    if not files["f16"].exists():
        spec = importlib.util.spec_from_file_location("conv", ROOT / "scripts" / "make_gguf_fixtures.py")
        conv = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(conv)
        arch = json.loads((hf / "config.json").read_text())["architectures"][0]
        conv.CLASSES[arch](hf, "f16").write(files["f16"], "tinyllama-shape-random")
    lq = tests_module("llamacpp_quantize")
    for name in (f for f in formats if f != "f16"):
        out = work / f"tinyllama-{name}.gguf"
        files[name] = out
        if not out.exists():
            lq.quantize(files["f16"], out, name, threads=2)
    return files


def bytes_per_token(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor but the token embedding, of
    which a step reads one row (unless it doubles as the output layer)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in tensors
    return sum(n for name, n in tensors.items() if tied or name != "token_embd.weight")


@functools.cache
def tests_module(name: str):
    """A helper module of tests/ shared with the benches (llama.cpp's quantizer, its
    loader), loaded once."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on one file: one pp and one tg measurement per call."""

    def __init__(self, path: Path, threads: int, pp: int, tg: int, vocab: int):
        # Without its AMX weight buffers where llama.cpp would use them: they crash
        # there (tests/llamacpp_model.py); the report says which ran.
        self.llm = tests_module("llamacpp_model").open_model(
            path, n_threads=threads, n_threads_batch=threads, n_batch=pp, n_ubatch=pp, n_ctx=max(pp, tg) + 16,
            verbose=False)
        self.pp, self.tg, self.vocab = pp, tg, vocab
        self.rng = np.random.default_rng(0)

    def rep(self) -> tuple:
        llm, rng = self.llm, self.rng
        llm.reset()
        toks = rng.integers(3, self.vocab, self.pp).tolist()
        t = time.perf_counter()
        llm.eval(toks)
        pp = self.pp / (time.perf_counter() - t)
        llm.reset()
        llm.eval([int(rng.integers(3, self.vocab))])
        t = time.perf_counter()
        for _ in range(self.tg):
            llm.eval([int(rng.integers(3, self.vocab))])
        return pp, self.tg / (time.perf_counter() - t)


class Edgellm:
    """edgellm on the same file, measured like `edgellm bench` (one repetition per call)."""

    def __init__(self, path: Path, threads: int, pp: int, tg: int, isa: str | None = None):
        import edgellm

        self.model = edgellm.load(path, threads=threads, **({"isa": isa} if isa else {}))
        self.pp, self.tg, self.seed = pp, tg, 0

    def rep(self) -> tuple:
        from edgellm import bench

        self.seed += 1
        r = bench.run(self.model, prompt_tokens=self.pp, gen_tokens=self.tg, reps=1, seed=self.seed)
        return r[f"pp{self.pp}"]["mean"], r[f"tg{self.tg}"]["mean"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/edgellm-bench")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--formats", nargs="*", default=list(DEFAULT_FORMATS), choices=FORMATS)
    ap.add_argument("--isa", help="edgellm's kernel path (e.g. avx2: what a Zen 3 runs); llama.cpp runs the build that "
                    "`import llama_cpp` finds (PYTHONPATH may point at one built for the same instruction sets)")
    a = ap.parse_args()
    from edgellm.bench import bandwidth_probe

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    hf = ensure_checkpoint(work)
    files = ensure_gguf(work, hf, a.formats)
    vocab = 512  # the spm test vocabulary; any id below it is a valid token for both
    rows, probes = [], []
    for fmt in a.formats:
        path = files[fmt]
        engines = {"llama.cpp": LlamaCpp(path, a.threads, a.p, a.n, vocab), "edgellm": Edgellm(path, a.threads, a.p, a.n, a.isa)}
        # This machine's bandwidth drifts by up to 2x over minutes (shared host):
        # the engines alternate repetition by repetition and the bound is probed
        # around them, so every ratio compares the same minutes.
        meas = {name: {"pp": [], "tg": []} for name in engines}
        bw = [bandwidth_probe(threads=a.threads)]
        for r in range(a.reps):
            # Who goes first alternates too (a drifting minute favours neither).
            for name, eng in (list(engines.items()) if r % 2 == 0 else list(engines.items())[::-1]):
                pp, tg = eng.rep()
                meas[name]["pp"].append(pp)
                meas[name]["tg"].append(tg)
        bw.append(bandwidth_probe(threads=a.threads))
        del engines
        bw_fmt = max(bw)
        probes.append(bw_fmt)
        size = bytes_per_token(path)
        row = {
            "format": fmt,
            "file_bytes": path.stat().st_size,
            "bytes_per_token": size,
            "bandwidth_gb_s": bw_fmt,
            **{name: {k: statistics.fmean(v) for k, v in m.items()} | {f"{k}_all": v for k, v in m.items()} for name, m in meas.items()},
        }
        row["ratio_pp"] = row["edgellm"]["pp"] / row["llama.cpp"]["pp"]
        row["ratio_tg"] = row["edgellm"]["tg"] / row["llama.cpp"]["tg"]
        # Medians too: one slow minute on this shared VM moves a mean of three.
        med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in meas.items()}
        row["median"] = med
        row["median_ratio_pp"] = med["edgellm"]["pp"] / med["llama.cpp"]["pp"]
        row["median_ratio_tg"] = med["edgellm"]["tg"] / med["llama.cpp"]["tg"]
        # Ratios within each repetition (the same minutes), then their median.
        for k in ("pp", "tg"):
            row[f"paired_ratio_{k}"] = statistics.median(e / l for e, l in zip(meas["edgellm"][k], meas["llama.cpp"][k]))
        bound = bw_fmt * 1e9 / size
        row["tg_bandwidth_fraction"] = {"edgellm": row["edgellm"]["tg"] / bound, "llama.cpp": row["llama.cpp"]["tg"] / bound}
        rows.append(row)
        print(f"{fmt:7s} pp{a.p}: edgellm {row['edgellm']['pp']:7.1f} llama.cpp {row['llama.cpp']['pp']:7.1f} "
              f"({row['ratio_pp']:.2f}x) | tg{a.n}: edgellm {row['edgellm']['tg']:6.1f} llama.cpp "
              f"{row['llama.cpp']['tg']:6.1f} ({row['ratio_tg']:.2f}x) | read bandwidth {bw_fmt:.1f} GB/s, "
              f"bound {bound:.1f} tok/s: edgellm {100 * row['tg_bandwidth_fraction']['edgellm']:.0f}%, "
              f"llama.cpp {100 * row['tg_bandwidth_fraction']['llama.cpp']:.0f}% | median ratios pp "
              f"{row['median_ratio_pp']:.2f}x tg {row['median_ratio_tg']:.2f}x, paired pp "
              f"{row['paired_ratio_pp']:.2f}x tg {row['paired_ratio_tg']:.2f}x", flush=True)
    out = ROOT / "benches" / "out"
    out.mkdir(exist_ok=True)
    import llama_cpp

    # Which llama.cpp ran: its version and the instruction sets it was built for
    # (a native build, or one made for another CPU class; see benches/README.md).
    report = {"threads": a.threads, "pp": a.p, "tg": a.n, "reps": a.reps, "edgellm_isa": a.isa or "best",
              "llamacpp_version": llama_cpp.__version__,
              "llamacpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
              "llamacpp_extra_bufts": not tests_module("llamacpp_model").has_amx(), "bandwidth_gb_s": max(probes), "rows": rows}
    (out / "compare_llamacpp.json").write_text(json.dumps(report, indent=2))
    print(f"report in {out / 'compare_llamacpp.json'}")


if __name__ == "__main__":
    main()
