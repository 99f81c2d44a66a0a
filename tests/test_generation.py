"""Generation semantics: determinism, sampling filters, lengths, stop conditions,
statistics, context limits, concurrency, Ctrl-C, and perplexity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgellm
from conftest import model_dir, reference

PROMPT = "def fibonacci(n):"
HSETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def llama(models):
    return models("llama")


@pytest.fixture(scope="module")
def qwen(models):
    return models("qwen2")


def prompt_ids():
    return reference("llama")["input_ids"].tolist()


# --- determinism and greedy ------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_same_seed_same_output(models, name):
    m = models(name)
    for seed in (0, 1, 12345, 2**63 - 1):
        a = m.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        b = m.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        assert a == b
        ia = m.generate(prompt_ids(), max_new_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        ib = m.generate(prompt_ids(), max_new_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        assert ia == ib


def test_different_seeds_differ(llama):
    outs = {tuple(llama.generate(prompt_ids(), max_new_tokens=16, temperature=1.0, seed=s, ignore_eos=True)) for s in range(6)}
    assert len(outs) > 1


def test_seed_is_independent_of_thread_count(models):
    a = models("llama", threads=1).generate(prompt_ids(), max_new_tokens=16, temperature=0.8, seed=7, ignore_eos=True)
    b = models("llama", threads=2).generate(prompt_ids(), max_new_tokens=16, temperature=0.8, seed=7, ignore_eos=True)
    assert a == b


def test_default_is_greedy(llama):
    """The fixture's generation_config.json does not ask for sampling, so unset
    arguments mean greedy decoding (as transformers does)."""
    assert not llama.generation_defaults()["do_sample"]
    greedy = llama.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True)
    assert llama.generate(prompt_ids(), max_new_tokens=12, ignore_eos=True) == greedy
    assert greedy == reference("llama")["greedy_ids"].tolist()


def test_greedy_ignores_seed(llama):
    a = llama.generate(PROMPT, max_new_tokens=12, temperature=0, seed=1, ignore_eos=True)
    b = llama.generate(PROMPT, max_new_tokens=12, temperature=0, seed=2, ignore_eos=True)
    assert a == b


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_filters_that_keep_one_token_are_greedy(llama, kw):
    greedy = llama.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True)
    for seed in range(3):
        got = llama.generate(prompt_ids(), max_new_tokens=12, temperature=1.0, seed=seed, ignore_eos=True, **kw)
        assert got == greedy


def _first_token_samples(m, ids, n, **kw):
    return {m.generate(ids, max_new_tokens=1, seed=s, ignore_eos=True, **kw)[0] for s in range(n)}


def test_top_k_restricts_first_token(llama):
    ids = prompt_ids()
    last = llama.logits(ids)[-1].astype(np.float64)
    top2 = set(np.argsort(-last)[:2].tolist())
    seen = _first_token_samples(llama, ids, 40, temperature=5.0, top_k=2)
    assert seen <= top2
    assert len(seen) == 2  # with a high temperature both occur in 40 draws


def test_top_p_and_min_p_restrict_first_token(llama):
    ids = prompt_ids()
    last = llama.logits(ids)[-1].astype(np.float64)
    p = np.exp(last - last.max())
    p /= p.sum()
    order = np.argsort(-p)
    # top-p: the smallest prefix of the ranked tokens whose mass reaches top_p.
    top_p = 0.5
    k = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)
    nucleus = set(order[:k].tolist())
    assert _first_token_samples(llama, ids, 40, temperature=1.0, top_p=top_p) <= nucleus
    # min-p: tokens with probability >= min_p * max probability.
    min_p = 0.5
    allowed = set(np.nonzero(p >= min_p * p.max())[0].tolist())
    assert _first_token_samples(llama, ids, 40, temperature=1.0, min_p=min_p) <= allowed


def _greedy_reference(m, ids, n, repetition_penalty=1.0, presence=0.0, frequency=0.0):
    """Greedy decoding in numpy from full-sequence logits, with transformers'
    repetition penalty (over prompt and output: negative logits multiplied,
    positive divided) and OpenAI-style presence/frequency penalties (over
    generated tokens only)."""
    seq = list(ids)
    out = []
    for _ in range(n):
        row = m.logits(seq)[-1].astype(np.float64)
        if repetition_penalty != 1.0:
            for t in set(seq):
                row[t] = row[t] * repetition_penalty if row[t] < 0 else row[t] / repetition_penalty
        for t in set(out):
            row[t] -= presence + frequency * out.count(t)
        top2 = np.sort(row)[-2:]
        assert top2[1] - top2[0] > 1e-3, "tie-breaking would be fragile; pick another prompt"
        tok = int(np.argmax(row))
        out.append(tok)
        seq.append(tok)
    return out


@pytest.mark.parametrize("kw", [{"repetition_penalty": 1.5}, {"repetition_penalty": 0.7}, {"presence_penalty": 1.0}, {"frequency_penalty": 0.8}])
def test_penalties_match_numpy(llama, kw):
    ids = prompt_ids()
    want = _greedy_reference(
        llama, ids, 10,
        repetition_penalty=kw.get("repetition_penalty", 1.0),
        presence=kw.get("presence_penalty", 0.0),
        frequency=kw.get("frequency_penalty", 0.0),
    )
    got = llama.generate(ids, max_new_tokens=10, temperature=0, ignore_eos=True, **kw)
    assert got == want


# --- lengths and stopping -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_max_new_tokens_respected(llama, n):
    ids = llama.generate(prompt_ids(), max_new_tokens=n, temperature=1.0, seed=3, ignore_eos=True)
    assert len(ids) == n
    assert llama.last_finish_reason == "length"
    assert llama.last_stats["generated_tokens"] == n
    it = llama.stream(PROMPT, max_new_tokens=n, temperature=1.0, seed=3, ignore_eos=True)
    "".join(it)
    assert len(it.tokens) == n and it.finish_reason == "length"


def test_max_new_tokens_zero(llama):
    assert llama.generate(prompt_ids(), max_new_tokens=0) == []
    assert llama.generate(PROMPT, max_new_tokens=0) == ""
    assert list(llama.stream(PROMPT, max_new_tokens=0)) == []
    assert llama.last_finish_reason == "length"


@pytest.fixture(scope="module")
def greedy_text(llama):
    text = llama.generate(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True)
    assert len(text) >= 20
    return text


@HSETTINGS
@given(data=st.data())
def test_stop_string_truncates_at_first_occurrence(llama, greedy_text, data):
    start = data.draw(st.integers(0, len(greedy_text) - 1), label="start")
    length = data.draw(st.integers(1, min(6, len(greedy_text) - start)), label="length")
    stop = greedy_text[start : start + length]
    want = greedy_text[: greedy_text.find(stop)]
    got = llama.generate(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True, stop=stop)
    assert got == want
    assert stop not in got
    assert llama.last_finish_reason == "stop"
    streamed = "".join(llama.stream(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True, stop=[stop]))
    assert streamed == want


def test_several_stop_strings_earliest_wins(llama, greedy_text):
    a, b = greedy_text[12:15], greedy_text[5:7]
    want = greedy_text[: min(greedy_text.find(a), greedy_text.find(b))]
    assert llama.generate(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True, stop=[a, b]) == want


def test_stop_string_absent(llama, greedy_text):
    stop = "\u2603 never generated \u2603"
    assert stop not in greedy_text
    assert llama.generate(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True, stop=stop) == greedy_text
    assert llama.last_finish_reason == "length"


def test_stop_string_with_id_prompt(llama):
    """Id prompts return ids: generation ends with the token that completes the
    stop string (ids cannot be cut inside a token)."""
    ids = prompt_ids()
    gen = llama.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True)
    t = llama.tokenizer
    ctx = t.decode(ids, skip_special_tokens=True)

    def text_upto(k):  # generated text after k tokens, as the full decode gives it
        return t.decode(ids + gen[:k], skip_special_tokens=True)[len(ctx) :]

    # The first plain multi-character piece (not a byte or special token) after the start.
    k = next(k for k in range(1, len(gen) - 1) if len(t.id_to_token(gen[k]).strip("▁")) >= 2 and not t.id_to_token(gen[k]).startswith("<"))
    stop = t.id_to_token(gen[k]).replace("▁", " ")
    assert stop not in text_upto(k) and stop in text_upto(k + 1)
    out = llama.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True, stop=stop)
    assert llama.last_finish_reason == "stop"
    assert out == gen[: k + 1]


def _first_new_index(ids):
    """An index k >= 1 whose token does not occur earlier in ids."""
    for k in range(1, len(ids)):
        if ids[k] not in ids[:k]:
            return k
    raise AssertionError("no fresh token")


def test_stop_token_ids(llama):
    greedy = llama.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True)
    k = _first_new_index(greedy)
    got = llama.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=[greedy[k]])
    assert got == greedy[:k]
    assert llama.last_finish_reason == "stop"
    # Text prompts too (stop_token_ids may be a numpy array).
    full = llama.stream(PROMPT, max_new_tokens=12, temperature=0, ignore_eos=True)
    "".join(full)
    toks = full.tokens
    k = _first_new_index(toks)
    it = llama.stream(PROMPT, max_new_tokens=12, temperature=0, stop_token_ids=np.array([toks[k]]))
    "".join(it)
    assert it.tokens == toks[:k] and it.finish_reason == "stop"


def test_eos_stops_generation_unless_ignored(tmp_path, llama):
    greedy = llama.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True)
    k = _first_new_index(greedy)
    d = tmp_path / "llama_eos"
    shutil.copytree(model_dir("llama"), d)
    gc = json.loads((d / "generation_config.json").read_text())
    gc["eos_token_id"] = [greedy[k]]
    (d / "generation_config.json").write_text(json.dumps(gc))
    m = edgellm.load(d)
    assert greedy[k] in m.tokenizer.eos_token_ids
    assert m.generate(prompt_ids(), max_new_tokens=12, temperature=0) == greedy[:k]
    assert m.last_finish_reason == "eos"
    assert m.last_stats["generated_tokens"] == k
    assert m.generate(prompt_ids(), max_new_tokens=12, temperature=0, ignore_eos=True) == greedy
    assert m.last_finish_reason == "length"


def test_finish_reason_values(llama, models, greedy_text):
    llama.generate(PROMPT, max_new_tokens=3, temperature=0, ignore_eos=True)
    assert llama.last_finish_reason == "length"
    llama.generate(PROMPT, max_new_tokens=40, temperature=0, ignore_eos=True, stop=greedy_text[10:13])
    assert llama.last_finish_reason == "stop"
    short = models("llama", max_context=24)
    short.generate(prompt_ids(), max_new_tokens=40, temperature=0, ignore_eos=True)
    assert short.last_finish_reason == "context_length"
    it = llama.stream(PROMPT, max_new_tokens=3, temperature=0)
    assert it.finish_reason is None
    list(it)
    assert it.finish_reason in ("length", "eos")


# --- statistics ----------------------------------------------------------------------------------

STATS_KEYS = {
    "prompt_tokens",
    "kv_cache_bytes",
    "generated_tokens",
    "prefill_seconds",
    "prompt_tokens_per_second",
    "time_to_first_token",
    "decode_seconds",
    "decode_tokens_per_second",
}


def _check_stats(s, prompt_len, generated):
    assert set(s) == STATS_KEYS
    assert s["prompt_tokens"] == prompt_len
    assert s["generated_tokens"] == generated
    # Full f32 cache: at least the prompt and generated tokens' keys and values.
    assert isinstance(s["kv_cache_bytes"], int) and s["kv_cache_bytes"] > 0
    for k in STATS_KEYS - {"prompt_tokens", "generated_tokens", "kv_cache_bytes"}:
        assert isinstance(s[k], float) and s[k] >= 0 and np.isfinite(s[k]), k
    assert s["time_to_first_token"] >= s["prefill_seconds"]


def test_stats(llama):
    ids = prompt_ids()
    out = llama.generate(ids, max_new_tokens=10, temperature=0, ignore_eos=True)
    _check_stats(llama.last_stats, len(ids), len(out))
    it = llama.stream(PROMPT, max_new_tokens=10, temperature=0, ignore_eos=True)
    "".join(it)
    _check_stats(it.stats, len(llama.tokenizer.encode(PROMPT)), len(it.tokens))


# --- context length ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [1, 10, 15, 16])
def test_generation_stops_at_max_context(models, prompt_len):
    """max_context bounds prompt + generated tokens; reaching it ends generation
    with finish_reason "context_length", not an exception."""
    m = models("llama", max_context=16)
    ids = prompt_ids()[:prompt_len]
    out = m.generate(ids, max_new_tokens=100, temperature=0, ignore_eos=True)
    assert len(ids) + len(out) == 16
    assert m.last_finish_reason == "context_length"
    # The tokens are the same as an unconstrained model's.
    free = models("llama").generate(ids, max_new_tokens=len(out), temperature=0, ignore_eos=True)
    assert out == free


def test_max_new_tokens_exactly_fitting_is_length(models):
    m = models("llama", max_context=16)
    out = m.generate(prompt_ids()[:10], max_new_tokens=6, temperature=0, ignore_eos=True)
    assert len(out) == 6 and m.last_finish_reason == "length"


def test_text_generation_stops_at_max_context(models):
    m = models("llama", max_context=16)
    n = len(m.tokenizer.encode(PROMPT))
    it = m.stream(PROMPT, max_new_tokens=100, temperature=1.0, seed=5, ignore_eos=True)
    text = "".join(it)
    assert it.finish_reason == "context_length"
    assert len(it.tokens) == 16 - n
    assert isinstance(text, str)


def test_default_max_context_is_config(llama):
    cfg = json.loads((model_dir("llama") / "config.json").read_text())
    assert llama.max_context == cfg["max_position_embeddings"]


# --- module-level generate -----------------------------------------------------------------------


def test_module_generate_with_path(llama):
    want = llama.generate(PROMPT, max_new_tokens=5, temperature=0)
    assert edgellm.generate(PROMPT, model=model_dir("llama"), max_new_tokens=5, temperature=0) == want
    assert edgellm.generate(PROMPT, model=str(model_dir("llama")), max_new_tokens=5, temperature=0) == want
    assert edgellm.generate(PROMPT, model=llama, max_new_tokens=5, temperature=0) == want


# --- concurrency --------------------------------------------------------------------------------------


def test_concurrent_generations_match_sequential(llama, qwen):
    jobs = [
        (llama, PROMPT, {}),
        (llama, "import os\n", {}),
        (llama, prompt_ids(), {}),
        (llama, PROMPT, {"temperature": 1.0, "seed": 11}),
        (qwen, "class Foo:", {}),
    ]

    def run(job):
        m, p, kw = job
        kw = {"temperature": 0, **kw}
        return m.generate(p, max_new_tokens=24, ignore_eos=True, **kw)

    sequential = [run(j) for j in jobs]
    results = {}
    barrier = threading.Barrier(len(jobs))
    errors = []

    def worker(i):
        try:
            barrier.wait()
            for _ in range(3):
                results.setdefault(i, []).append(run(jobs[i]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for i, want in enumerate(sequential):
        assert results[i] == [want] * 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_generating_still_generates(models):
    """The worker threads are the parent's: a forked child (multiprocessing's
    default on Linux) runs every parallel loop on its own thread, and must not
    wait for workers it does not have."""
    m = models("llama", threads=2)
    want = m.generate(PROMPT, max_new_tokens=12, temperature=0, ignore_eos=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(w, m.generate(PROMPT, max_new_tokens=12, temperature=0, ignore_eos=True).encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 20
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    got = os.read(r, 1 << 16).decode()
    os.close(r)
    assert got == want


def _worker_cpu_ticks() -> tuple:
    """(worker threads, their user + system clock ticks) of this process."""
    count = total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                if not f.read().startswith("edgellm-"):
                    continue
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # pragma: no cover - a thread that just ended
            continue
        count += 1
        total += int(fields[11]) + int(fields[12])
    return count, total


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_idle_workers_park_instead_of_spinning(models):
    """Workers spin between the ops of a step, but must not burn CPU once the
    process is idle: a second of idleness costs (nearly) no worker CPU time."""
    m = models("llama", threads=3)
    m.generate(PROMPT, max_new_tokens=4, temperature=0, ignore_eos=True)
    time.sleep(0.1)  # past the spin window
    workers, before = _worker_cpu_ticks()
    assert workers >= 2  # this model's pool: the caller and two workers
    time.sleep(1.0)
    # One spinning worker would add ~100 ticks; allow a few for wake-ups.
    assert _worker_cpu_ticks()[1] - before <= 5


def test_interleaved_streams_on_one_model(llama):
    a = llama.stream(PROMPT, max_new_tokens=10, temperature=0, ignore_eos=True)
    b = llama.stream(prompt_ids(), max_new_tokens=10, temperature=0, ignore_eos=True)
    pa, pb = [], []
    for x, y in zip(a, b):
        pa.append(x)
        pb.append(y)
    pa.extend(a)
    pb.extend(b)
    assert "".join(pa) == llama.generate(PROMPT, max_new_tokens=10, temperature=0, ignore_eos=True)
    assert pb == reference("llama")["greedy_ids"].tolist()[:10]


# --- Ctrl-C --------------------------------------------------------------------------------------------

_CTRL_C_CHILD = r"""
import sys, edgellm
mode = sys.argv[2]
m = edgellm.load(sys.argv[1], threads=1, max_context=1_000_000)
try:
    if mode == "stream":
        first = True
        for piece in m.stream("def f(x):", max_new_tokens=900_000, temperature=0, ignore_eos=True):
            if first:
                print("STARTED", flush=True)
                first = False
    else:
        print("STARTED", flush=True)
        m.generate([1, 5, 9], max_new_tokens=900_000, temperature=0, ignore_eos=True)
    print("FINISHED", flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
out = m.generate("def g(y):", max_new_tokens=5, temperature=0, ignore_eos=True)
ids = m.generate([1, 5, 9], max_new_tokens=5, temperature=0, ignore_eos=True)
print("OK" if isinstance(out, str) and len(ids) == 5 else "BAD", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["stream", "generate"])
def test_ctrl_c_interrupts_and_model_stays_usable(mode):
    p = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_CHILD, str(model_dir("llama")), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline()
        assert line.strip() == "STARTED", (line, p.stderr.read() if p.poll() is not None else "")
        time.sleep(0.5)  # well inside the generation (900k tokens would take hours)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = out.split()
    assert p.returncode == 0, err
    assert lines == ["INTERRUPTED", "OK"], (out, err)


# --- perplexity -----------------------------------------------------------------------------------------


def _numpy_nll(m, ids):
    logits = m.logits(ids).astype(np.float64)[:-1]
    mx = logits.max(axis=1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]].sum(), len(ids) - 1


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_perplexity_matches_numpy(models, name):
    m = models(name)
    ids = reference(name)["input_ids"].tolist()
    nll, n = _numpy_nll(m, ids)
    assert m.perplexity(ids) == pytest.approx(np.exp(nll / n), rel=1e-5)


def test_perplexity_windows(llama):
    ids = reference("llama")["input_ids"].tolist()
    assert len(ids) == 20
    total, count = 0.0, 0
    for s in range(0, 20, 8):  # non-overlapping windows [0,8) [8,16) [16,20)
        nll, n = _numpy_nll(llama, ids[s : s + 8])
        total += nll
        count += n
    assert count == 17
    assert llama.perplexity(ids, window=8) == pytest.approx(np.exp(total / count), rel=1e-5)
    # A window as long as the sequence is the plain perplexity.
    assert llama.perplexity(ids, window=20) == pytest.approx(llama.perplexity(ids), rel=1e-12)


def test_perplexity_of_text(llama):
    text = "def add(x, y):\n    return x + y\n"
    ids = llama.tokenizer.encode(text)
    assert llama.perplexity(text) == pytest.approx(llama.perplexity(ids), rel=1e-12)
    ids_ns = llama.tokenizer.encode(text, add_special_tokens=False)
    assert llama.perplexity(text, add_special_tokens=False) == pytest.approx(llama.perplexity(ids_ns), rel=1e-12)


def test_perplexity_longer_than_context(llama):
    """Sequences longer than the context are evaluated in context-sized windows."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 512, size=150).tolist()
    total, count = 0.0, 0
    for s in range(0, len(ids), llama.max_context):
        nll, n = _numpy_nll(llama, ids[s : s + llama.max_context])
        total += nll
        count += n
    assert llama.perplexity(ids) == pytest.approx(np.exp(total / count), rel=1e-5)
