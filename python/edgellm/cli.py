"""The ``edgellm`` command line: generate, chat, info, perplexity, bench, quantize."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from .errors import EdgeLLMError
from .model import Model, load


def _add_model_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("model", nargs="?", default=None, help="model directory (default: the embedded model)")
    else:
        p.add_argument("-m", "--model", default=None, help="model directory (default: the embedded model)")
    p.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--max-context", type=int, default=None, help="longest sequence in tokens (default: the model's)")
    p.add_argument("--isa", default=None, help="force a kernel path: scalar, avx2, avxvnni, avx512, neon, dotprod, i8mm")
    p.add_argument("--quant", default=None,
                   help="quantize weights at load: q8_0, q4_0, q4_K, q6_K, ..., nf4, fp8_e4m3, fp8_e5m2")
    p.add_argument("--repack", default=None, choices=["auto", "all", "off"],
                   help="repack weights at load into the kernels' panels (q4_0, q8_0 and the k-quants q4_K, q5_K, q6_K on x86-64, f32/f16/bf16): auto (mapped from the file, x86-64), all, off")
    k = p.add_argument_group("KV cache (an eviction rule x a storage format)")
    k.add_argument("--kv-cache", default=None, choices=["full", "window", "streaming", "h2o"],
                   help="eviction rule (default: full); or a JSON policy via --kv-json")
    k.add_argument("--kv-window", type=int, default=None, help="window/streaming: recent tokens kept")
    k.add_argument("--kv-sinks", type=int, default=None, help="streaming: attention-sink tokens kept (default 4)")
    k.add_argument("--kv-budget", type=float, default=None,
                   help="h2o: tokens kept, as a fraction of those seen (<= 1) or a count")
    k.add_argument("--kv-recent", type=int, default=None, help="h2o: newest tokens always kept")
    k.add_argument("--kv-quant", default=None, choices=["f32", "f16", "int8", "kivi"], help="storage (default f32)")
    k.add_argument("--kv-bits", type=int, default=None, help="kivi: 2 or 4 bits (default 2)")
    k.add_argument("--kv-group", type=int, default=None, help="kivi: group size (default 32)")
    k.add_argument("--kv-residual", type=int, default=None, help="kivi: newest tokens kept in f16 (default 128)")
    k.add_argument("--kv-select", type=int, default=None,
                   help="full cache: attend only to the N most relevant 64-token key blocks per step (Quest)")
    k.add_argument("--kv-json", default=None, help="the whole policy as JSON, as load(kv_cache=...) takes it")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("-n", "--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--stats", action="store_true", help="print timing statistics to stderr")


def _sampling_kwargs(a: argparse.Namespace) -> Dict[str, Any]:
    keys = ["max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
            "presence_penalty", "frequency_penalty", "seed", "stop"]
    kw = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
    if a.ignore_eos:
        kw["ignore_eos"] = True
    return kw


def _load(a: argparse.Namespace) -> Model:
    opts: Dict[str, Any] = {}
    if a.max_context is not None:
        opts["max_context"] = a.max_context
    if a.isa is not None:
        opts["isa"] = a.isa
    if a.quant is not None:
        opts["quant"] = a.quant
    if a.repack is not None:
        opts["repack"] = a.repack
    kv = _kv_policy(a)
    if kv is not None:
        opts["kv_cache"] = kv
    return load(a.model, threads=a.threads, **opts)


def _kv_policy(a: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The ``kv_cache`` dict described by the ``--kv-*`` flags (None: the default)."""
    if a.kv_json is not None:
        try:
            policy = json.loads(a.kv_json)
        except ValueError as e:
            raise EdgeLLMError(f"--kv-json is not valid JSON: {e}") from None
        return policy
    quant: Optional[Dict[str, Any]] = None
    if a.kv_quant is not None:
        quant = {"type": a.kv_quant}
        if a.kv_quant == "kivi":
            for key, flag in (("bits", a.kv_bits), ("group_size", a.kv_group), ("residual", a.kv_residual)):
                if flag is not None:
                    quant[key] = flag
    rule = a.kv_cache or "full"
    if rule == "full" and quant is None and a.kv_select is None:
        return None
    policy: Dict[str, Any] = {"type": rule}
    if a.kv_select is not None:
        policy["select_blocks"] = a.kv_select
    if rule in ("window", "streaming") and a.kv_window is not None:
        policy["size" if rule == "window" else "window"] = a.kv_window
    if rule == "streaming" and a.kv_sinks is not None:
        policy["sinks"] = a.kv_sinks
    if rule == "h2o":
        if a.kv_budget is not None:
            b = a.kv_budget
            policy["budget"] = int(b) if b > 1 and b == int(b) else b
        if a.kv_recent is not None:
            policy["recent"] = a.kv_recent
    if quant is not None:
        policy["quant"] = quant
    return policy


def _print_stats(stats: Optional[Dict[str, Any]]) -> None:
    if not stats:
        return
    print(
        f"\n[prompt {stats['prompt_tokens']} tok, {stats['prompt_tokens_per_second']:.1f} tok/s | "
        f"first token {stats['time_to_first_token'] * 1000:.0f} ms | "
        f"generated {stats['generated_tokens']} tok, {stats['decode_tokens_per_second']:.1f} tok/s | "
        f"KV cache {_human_bytes(stats.get('kv_cache_bytes', 0))}]",
        file=sys.stderr,
    )


def cmd_generate(a: argparse.Namespace) -> int:
    model = _load(a)
    if not a.no_echo:
        sys.stdout.write(a.prompt)
        sys.stdout.flush()
    it = model.stream(a.prompt, **_sampling_kwargs(a))
    for piece in it:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if a.stats:
        _print_stats(it.stats)
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    model = _load(a)
    kw = _sampling_kwargs(a)
    messages: List[Dict[str, str]] = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    templated = model.has_chat_template
    if not templated:
        print("(this model has no chat template: continuing the conversation as plain text)", file=sys.stderr)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        user = line.rstrip("\n")
        if user.strip() in ("/exit", "/quit"):
            break
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        if templated:
            it = model.chat(messages, stream=True, **kw)
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
            it = model.stream(text, **{"stop": ["\nUser:"], **kw})
        reply = []
        for piece in it:
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply).strip()})
        if a.stats:
            _print_stats(it.stats)  # type: ignore[union-attr]
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_info(a: argparse.Namespace) -> int:
    model = _load(a)
    info = model.info()
    mem = model.memory(a.context, a.batch)
    if a.json:
        info["memory"] = mem
        info["quantization"] = _quantization_section(info["path"])
        print(json.dumps(info, indent=2))
        return 0
    p = info["parameters"]
    print(f"architecture        {info['architecture']}")
    print(f"path                {info['path']}")
    print(f"weights dtype       {info['dtype']}")
    print(f"file size           {_human_bytes(info['file_bytes'])} ({info['file_bytes']} bytes)")
    if info.get("repacked_bytes"):
        print(f"repacked at load    {_human_bytes(info['repacked_bytes'])} (kernel panels; the file's pages released)")
    print(f"layers              {info['num_layers']}  hidden {info['hidden_size']}  ffn {info['intermediate_size']}")
    print(f"heads               {info['num_heads']} (kv {info['num_kv_heads']}, head_dim {info['head_dim']})")
    print(f"vocabulary          {info['vocab_size']}")
    print(f"context             {info['max_context']} (trained {info['max_position_embeddings']})")
    print("parameters")
    for part in ("embedding", "attention", "ffn", "norms", "head", "total"):
        note = " (tied to embedding)" if part == "head" and info["tie_word_embeddings"] else ""
        print(f"  {part:<17} {p[part]:>14,}{note}")
    kv = info["kv_bytes_per_token"]
    print(f"KV cache            {_human_bytes(kv)} per token ({info['kv_dtype']}), "
          f"{_human_bytes(kv * info['max_context'])} at full context")
    print(f"KV policy           {info['kv_cache']}")
    print("weights by format   " + ", ".join(f"{k} {_human_bytes(v)}" for k, v in info["weight_bytes"].items()))
    q = _quantization_section(info["path"])
    if q:
        sym = "symmetric" if q.get("symmetric", True) else "asymmetric"
        group = "per row" if q.get("group_size") == -1 else f"group {q.get('group_size')}"
        # Code-book formats (nf4, fp8_*) have no bit width / grid of their own to show.
        grid = "" if q.get("bits") is None else f" {q.get('bits')}-bit {sym} {group}"
        print(f"quantized by        {q.get('method')}{grid} ({q.get('format')} blocks, "
              f"embedding {q.get('embedding')}), {q.get('calibration_tokens', 0)} calibration tokens")
        if q.get("projection_bits_per_weight"):
            print(f"projection bits     {q['projection_bits_per_weight']} per weight")
        plan = q.get("plan")
        if isinstance(plan, dict) and plan:
            print(f"per-layer plan      (mixed precision, target {q.get('mixed_bpw')} bits/weight)")
            layers: Dict[str, List[str]] = {}
            for key, ty in plan.items():
                _, idx, proj = str(key).split(".", 2)
                layers.setdefault(idx, []).append(f"{proj} {ty}")
            for idx in sorted(layers, key=int):
                print(f"  layer {idx:<13} {', '.join(layers[idx])}")
    imp = info.get("import")
    if imp:
        group = "per row" if imp.get("group_size") == -1 else f"group {imp.get('group_size')}"
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(imp.get("tensors", {}).items()))
        print(f"imported from       {imp.get('method')} {imp.get('bits')}-bit {group} "
              f"({imp.get('checkpoint_format')}): projections as {kinds}")
        if imp.get("dequantized"):
            print(f"  dequantized to f16 {len(imp['dequantized'])} (their groups do not map onto 32-weight blocks)")
    print(f"memory at {mem['context']} tokens x {mem['batch']}: weights {_human_bytes(mem['weights'])} + "
          f"KV {_human_bytes(mem['kv_cache'])} + activations {_human_bytes(mem['activations'])} "
          f"= {_human_bytes(mem['total'])}")
    return 0


def _quantization_section(path: str) -> Optional[Dict[str, Any]]:
    """The ``edgellm_quantization`` section ``edgellm quantize`` writes to config.json."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return None
    try:
        with open(cfg, encoding="utf-8") as f:
            section = json.load(f).get("edgellm_quantization")
    except (OSError, ValueError):
        return None
    return section if isinstance(section, dict) else None


def cmd_perplexity(a: argparse.Namespace) -> int:
    model = _load(a)
    with open(a.file, encoding="utf-8") as f:
        text = f.read()
    ppl = model.perplexity(text, window=a.window, mode=a.mode)
    print(f"perplexity {ppl:.4f}")
    if a.mode == "decode":
        print(f"kv cache {model.kv_cache}: {_human_bytes(model.kv_cache_bytes())} at the end")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from . import bench

    if a.gemm:
        sizes = [int(x) for x in a.gemm.split(",") if x.strip()]
        rows = bench.gemm_vs_numpy(sizes, threads=a.threads or 2, reps=a.reps)
        if a.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'n':>6} {'edgellm GFLOP/s':>16} {'numpy GFLOP/s':>14} {'ratio':>7} {'paired (range)':>22}")
        for r in rows:
            lo, hi = r["paired_range"]
            paired = f"{r['paired_ratio']:.2f}x ({lo:.2f}-{hi:.2f})"
            print(f"{r['n']:>6} {r['edgellm_gflops']:>16.1f} {r['numpy_gflops']:>14.1f} {r['ratio']:>6.2f}x {paired:>22}")
        return 0
    model = _load(a)
    r = bench.run(model, prompt_tokens=a.p, gen_tokens=a.n, reps=a.reps)
    if a.bandwidth:
        bw = bench.bandwidth_probe(threads=model.threads)
        r["bandwidth_gb_s"] = bw
        r["tg_bound_tok_s"] = bw * 1e9 / r["file_bytes"]
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{'model':<40} {'dtype':<6} {'threads':>7} {'isa':<6} {'test':>7} {'t/s':>16}")
    for key in (f"pp{a.p}", f"tg{a.n}"):
        if key in r:
            m = r[key]
            print(f"{r['model'][-40:]:<40} {r['dtype']:<6} {r['threads']:>7} {r['isa']:<6} {key:>7} "
                  f"{m['mean']:>9.2f} ± {m['std']:<5.2f}")
    if a.bandwidth:
        tg = r.get(f"tg{a.n}", {}).get("mean", 0.0)
        print(f"read bandwidth {r['bandwidth_gb_s']:.1f} GB/s -> decode bound {r['tg_bound_tok_s']:.1f} tok/s; "
              f"measured {tg:.1f} tok/s = {100 * tg / r['tg_bound_tok_s']:.0f}% of the bound")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from .calibrate import quantize
    from .model import default_model_path

    texts = None
    if a.calibration:
        texts = []
        for path in a.calibration:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
    src = default_model_path() if a.src == "default" else a.src
    report = quantize(
        src, a.dst, method=a.method, bits=a.bits, group_size=a.group_size, symmetric=not a.asymmetric,
        calibration=texts, format=a.format, embedding=a.embedding, seq_len=a.seq_len, max_tokens=a.max_tokens,
        act_order=not a.no_act_order, damp=a.damp, alpha=a.alpha, mixed_bpw=a.mixed_bpw, threads=a.threads,
        overwrite=a.overwrite, progress=None if a.progress is None else a.progress == "on",
    )
    if a.gguf:
        from .calibrate import export_gguf

        report["gguf"] = str(export_gguf(a.dst, a.gguf))
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        if a.gguf:
            print(f"wrote {report['gguf']}")
        errs = report["relative_output_error"]
        mean = f", mean relative output error {sum(errs.values()) / len(errs):.4f}" if errs else ""
        print(f"wrote {report['dst']} ({report['method']}, {report['format']}, {_human_bytes(report['file_bytes'])}, "
              f"{report['calibration_tokens']} calibration tokens, {report['seconds']:.1f} s{mean})")
        if report.get("q4_K_refit_error") is not None:
            print(f"q4_K re-fit error {report['q4_K_refit_error']:.4f} of the calibration's own weight error (mean)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="edgellm", description="Run small language models on edge CPUs.")
    parser.add_argument("--version", action="version", version=f"edgellm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt")
    p.add_argument("prompt")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--no-echo", action="store_true", help="do not print the prompt before the continuation")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (uses the model's chat template)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", default=None, help="system message")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="architecture, parameter counts, memory")
    _add_model_args(p, positional=True)
    p.add_argument("--context", type=int, default=None, help="context length for the memory estimate")
    p.add_argument("--batch", type=int, default=1, help="sequences for the memory estimate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    _add_model_args(p, positional=True)
    p.add_argument("file")
    p.add_argument("--window", type=int, default=None, help="tokens per window (default: the context)")
    p.add_argument("--mode", choices=["chunked", "decode"], default="chunked",
                   help="decode: one token per step through the KV policy")
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("bench", help="prefill/decode speed (like llama-bench)")
    _add_model_args(p, positional=True)
    p.add_argument("-p", type=int, default=512, help="prompt tokens (pp test; 0 to skip)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (tg test; 0 to skip)")
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("--bandwidth", action="store_true", help="also probe memory bandwidth and report the decode bound")
    p.add_argument("--gemm", default=None, metavar="SIZES",
                   help="instead: f32 GEMM of n×n matrices (e.g. 512,1024,2048) against numpy's BLAS, "
                        "-t threads (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quantize", help="calibrated quantization (RTN, GPTQ, AWQ, SmoothQuant) into a new checkpoint")
    p.add_argument("src", help="HF checkpoint directory, or 'default' for the embedded model")
    p.add_argument("dst", help="output directory (an edgellm checkpoint that `edgellm.load` runs)")
    p.add_argument("--method", default="gptq", choices=["rtn", "gptq", "awq", "smoothquant"])
    p.add_argument("--bits", type=int, default=4, choices=[8, 4, 3, 2])
    p.add_argument("--group-size", type=int, default=128, help="columns per scale: a multiple of 32, or -1 (per row)")
    p.add_argument("--asymmetric", action="store_true", help="zero-points (q4_1, q3a_g128, q2a_g128) instead of symmetric")
    p.add_argument("--calibration", action="append", default=None, metavar="FILE",
                   help="calibration text file (repeatable; default: the embedded model's sample, RTN needs none)")
    p.add_argument("--format", default=None, metavar="TYPE",
                   help="block format of the projections (default from --bits/--asymmetric: q8_0, q4_0/q4_1, "
                        "q3_g128/q3a_g128, q2_g128/q2a_g128); q4_0/q4_1 also hold 3/2-bit grids; q4_K: "
                        "llama.cpp's Q4_K, re-fitted from the calibrated grid; nf4, fp8_e4m3, fp8_e5m2: "
                        "edgellm's code-book formats (with --method rtn)")
    p.add_argument("--embedding", default="q8_0", choices=["q8_0", "keep"], help="format of embedding and head")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument("--max-tokens", type=int, default=16384, help="calibration tokens in all")
    p.add_argument("--no-act-order", action="store_true", help="GPTQ: quantize columns in their stored order")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (fraction of the mean Hessian diagonal)")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--mixed-bpw", type=float, default=None, metavar="BPW",
                   help="mixed precision: promote the most sensitive projections to q8_0 within this average bits/weight")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--progress", choices=["on", "off"], default=None, help="progress bar (default: on a terminal)")
    p.add_argument("--gguf", default=None, metavar="FILE", help="also export the result as a GGUF file (llama.cpp)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_quantize)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeLLMError as e:
        print(f"edgellm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n(interrupted)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
