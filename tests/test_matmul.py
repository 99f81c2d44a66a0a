"""edgellm.matmul: the packed f32 GEMM from Python, against numpy in float64, on
every kernel path this CPU has, odd shapes, thread counts and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgellm


def _check(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    want = a.astype(np.float64) @ b.astype(np.float64)
    mag = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    tol = (a.shape[1] + 2) * np.finfo(np.float32).eps * mag + 1e-30
    assert c.shape == want.shape and c.dtype == np.float32
    assert np.all(np.abs(c - want) <= tol)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 1100),
    m=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_float64_on_every_path(n, k, m, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal((k, m), dtype=np.float32)
    for isa in edgellm.supported_isas():
        _check(a, b, edgellm.matmul(a, b, threads=2, isa=isa))


def test_large_blocked_shape_and_thread_independence():
    # Past the k-block (512) and column-block sizes; results bit-identical for any thread count.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((67, 600), dtype=np.float32)
    b = rng.standard_normal((600, 531), dtype=np.float32)
    outs = [edgellm.matmul(a, b, threads=t) for t in (1, 2, 3)]
    _check(a, b, outs[0])
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_activations_read_in_place_across_many_panels():
    # k ≤ 512 (one k-block): the AVX2 kernel reads A's rows in place, the last
    # partial 6-row panel packed; past one 96-row chunk of panels. Bit-identical
    # to the packed path, reached by zero padding k to 513 (two k-blocks: the
    # zero terms come after the real ones in each sum and add exactly nothing).
    rng = np.random.default_rng(3)
    for n, k, m in [(101, 512, 70), (97, 300, 33), (6, 1, 16)]:
        a = rng.standard_normal((n, k), dtype=np.float32)
        b = rng.standard_normal((k, m), dtype=np.float32)
        a_pad = np.concatenate([a, np.zeros((n, 513 - k), np.float32)], axis=1)
        b_pad = np.concatenate([b, np.zeros((513 - k, m), np.float32)], axis=0)
        for isa in edgellm.supported_isas():
            c = edgellm.matmul(a, b, threads=2, isa=isa)
            _check(a, b, c)
            assert np.array_equal(c, edgellm.matmul(a_pad, b_pad, threads=2, isa=isa)), isa


def test_product_too_large_for_memory_is_memory_error():
    # Tiny operands, a 4 TiB product: refused before any work, not an abort.
    a = np.ones((1 << 20, 1), np.float32)
    with pytest.raises(MemoryError):
        edgellm.matmul(a, a.T.copy())


def test_no_stale_values_from_earlier_products():
    # Neither the output nor the kept A packing is zeroed before the product
    # writes it: a product of NaNs, freed, must leave nothing in the next ones
    # (same shape, so its memory is reused; then shorter and longer ones).
    rng = np.random.default_rng(2)
    for n, k, m in [(37, 700, 45), (37, 700, 45), (13, 520, 45), (50, 900, 33)]:
        nan = edgellm.matmul(np.full((n, k), np.nan, np.float32), np.ones((k, m), np.float32), threads=2)
        assert np.isnan(nan).all()
        del nan
        a = rng.standard_normal((n, k), dtype=np.float32)
        b = rng.standard_normal((k, m), dtype=np.float32)
        _check(a, b, edgellm.matmul(a, b, threads=2))


def test_result_is_an_ordinary_writable_array():
    # The product's memory comes from the extension's allocator, handed to numpy
    # without a copy: it must behave as numpy's own and outlive the call.
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = edgellm.matmul(a, a.T.copy(), threads=2)
    assert c.flags.c_contiguous and c.flags.writeable and c.shape == (3, 3)
    c[1, 2] = -1.0
    d = c.copy()
    del a
    import gc

    gc.collect()
    np.testing.assert_array_equal(c, d)
    assert c[1, 2] == -1.0 and c[0, 0] == 14.0


def test_converts_inputs_and_handles_empty():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    b = np.asfortranarray(np.ones((4, 2), dtype=np.float16))
    c = edgellm.matmul(a, b)
    assert np.array_equal(c, (a @ b.astype(np.float64)).astype(np.float32))
    assert edgellm.matmul(np.zeros((0, 4)), np.zeros((4, 3))).shape == (0, 3)
    assert np.array_equal(edgellm.matmul(np.zeros((2, 0)), np.zeros((0, 3))), np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        (np.zeros((2, 3)), np.zeros((4, 2)), {}, "a is 2 × 3 but b is 4 × 2"),
        (np.zeros(3), np.zeros((3, 2)), {}, "2-D"),
        (np.zeros((2, 3)), np.zeros((3, 2)), {"threads": 0}, "threads"),
        (np.zeros((2, 3)), np.zeros((3, 2)), {"isa": "vliw9000"}, "vliw9000"),
    ],
)
def test_bad_arguments_raise_invalid_argument(a, b, kwargs, match):
    with pytest.raises(edgellm.InvalidArgumentError, match=match):
        edgellm.matmul(a, b, **kwargs)


def test_cli_bench_gemm_reports_ratios():
    out = subprocess.run(
        [sys.executable, "-m", "edgellm", "bench", "--gemm", "64,96", "-t", "2", "-r", "1", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = json.loads(out)
    assert [r["n"] for r in rows] == [64, 96]
    for r in rows:
        assert r["edgellm_gflops"] > 0 and r["numpy_gflops"] > 0 and r["max_rel_diff"] < 1e-4
        lo, hi = r["paired_range"]
        assert 0 < lo <= r["paired_ratio"] <= hi


def test_cli_bench_gemm_table_shows_the_paired_ratio():
    out = subprocess.run(
        [sys.executable, "-m", "edgellm", "bench", "--gemm", "48", "-t", "1", "-r", "3"],
        capture_output=True, text=True, check=True,
    ).stdout
    head, row = out.strip().splitlines()
    assert "paired (range)" in head
    n, ours, theirs, ratio, paired, rng = row.split()
    assert n == "48" and float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x") and paired.endswith("x")
    lo, hi = (float(x) for x in rng.strip("()").split("-"))
    assert lo <= float(paired[:-1]) + 0.005 and float(paired[:-1]) <= hi + 0.005


def test_bandwidth_probe_measures_and_rejects_bad_arguments():
    from edgellm import bench

    gbs = bench.bandwidth_probe(mib=16, reps=2, threads=2)
    assert np.isfinite(gbs) and gbs > 0
    with pytest.raises(edgellm.InvalidArgumentError, match="at least 1"):
        bench.bandwidth_probe(mib=0)
    with pytest.raises(edgellm.InvalidArgumentError, match="threads"):
        bench.bandwidth_probe(mib=1, threads=0)
