"""The numpy calibration algorithms on single linear layers: GPTQ and AWQ lower
the output error of round-to-nearest on inputs with outlier channels; grids are
exact GGML blocks (checked against the gguf package's dequantizer); SmoothQuant
preserves the layer's function while flattening activation outliers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgellm.calibrate import Grid, Hessian, awq_clip, awq_scales, gptq, gram, output_error, rtn, smooth_scales
from edgellm.calibrate.blocks import pack
from edgellm.errors import InvalidArgumentError


def layer(seed, rows, cols, n=384, outliers=4):
    """A weight and correlated inputs in which a few channels are 10-50x larger."""
    r = np.random.default_rng(seed)
    w = r.standard_normal((rows, cols))
    mix = np.eye(cols) + 0.3 * r.standard_normal((cols, cols)) / np.sqrt(cols)
    x = r.standard_normal((n, cols)) @ mix
    idx = r.choice(cols, outliers, replace=False)
    x[:, idx] *= r.uniform(10, 50, outliers)
    return w, x


grids = st.sampled_from([Grid(4, 32, True), Grid(4, 128, True), Grid(4, 64, False), Grid(3, 32, False),
                         Grid(3, 128, True), Grid(4, -1, True), Grid(2, 64, True)])
shapes = st.tuples(st.sampled_from([8, 24, 40]), st.sampled_from([64, 128, 256]))


def _fits(grid, cols):
    return grid.group_size == -1 or cols % grid.group_size == 0


def _outlier_case(shape, grid, seed):
    """(w, x, XᵀX/n, RTN's output error) of a layer with outlier input channels,
    or None when the grid's groups do not divide the columns."""
    rows, cols = shape
    if not _fits(grid, cols):
        return None
    w, x = layer(seed, rows, cols)
    g = gram(x)
    return w, x, g, output_error(w, rtn(w, grid).dequantize(), g)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, grid=grids, seed=st.integers(0, 2**31 - 1))
def test_gptq_beats_rtn_on_outlier_inputs(shape, grid, seed):
    case = _outlier_case(shape, grid, seed)
    if case is None:
        return
    w, x, g, e_rtn = case
    h = Hessian(shape[1])
    for part in np.array_split(x, 3):  # accumulated in pieces = 2·XᵀX/n at once
        h.add(part)
    np.testing.assert_allclose(h.h, 2 * g, rtol=1e-10, atol=1e-10)
    e_gptq = output_error(w, gptq(w, h, grid, act_order=True).dequantize(), g)
    assert e_gptq < 0.9 * e_rtn


@settings(max_examples=25, deadline=None)
@given(shape=shapes, grid=grids, seed=st.integers(0, 2**31 - 1))
def test_awq_beats_rtn_on_outlier_inputs(shape, grid, seed):
    case = _outlier_case(shape, grid, seed)
    if case is None:
        return
    w, x, g, e_rtn = case
    s, _ = awq_scales(np.abs(x).mean(axis=0), g, [w], grid)
    ws = w * s
    clip = awq_clip(ws, g / np.outer(s, s), grid)  # Gram of the scaled inputs x / s
    e_awq = output_error(w, rtn(ws, grid, clip).dequantize() / s, g)
    assert e_awq < 0.9 * e_rtn


def test_gptq_without_act_order_beats_rtn_on_average():
    grid = Grid(4, 128, True)
    ratios = []
    for seed in range(6):
        w, x = layer(seed, 16, 256)
        g = gram(x)
        ratios.append(output_error(w, gptq(w, 2 * g, grid).dequantize(), g) / output_error(w, rtn(w, grid).dequantize(), g))
    assert np.mean(ratios) < 0.9


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_uncorrelated_inputs_is_rtn(act_order):
    # A diagonal Hessian propagates no error between columns: GPTQ rounds like RTN.
    r = np.random.default_rng(0)
    w = r.standard_normal((12, 128))
    h = np.diag(r.uniform(0.5, 3.0, 128))
    grid = Grid(4, 32, True)
    a, b = gptq(w, h, grid, act_order=act_order, damp=1e-6), rtn(w, grid)
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.scale, b.scale)


def test_gptq_dead_inputs_and_errors():
    r = np.random.default_rng(1)
    w, x = r.standard_normal((8, 64)), r.standard_normal((100, 64))
    x[:, 5] = 0.0  # an input that is never active
    q = gptq(w, 2 * gram(x), Grid(4, 32, True))
    assert np.all(q.q[:, 5] == 0) and np.isfinite(q.dequantize()).all()
    with pytest.raises(InvalidArgumentError):
        gptq(w, np.eye(32), Grid(4, 32, True))
    with pytest.raises(InvalidArgumentError):
        gptq(w, np.eye(64), Grid(4, 32, True), damp=0.0)


@pytest.mark.parametrize("grid", [Grid(4, 32, True), Grid(4, 128, True), Grid(4, 64, False), Grid(8, 32, True),
                                  Grid(8, -1, True), Grid(3, 32, True), Grid(3, 64, False), Grid(2, 32, False)])
def test_packed_blocks_match_gguf_dequantizer(grid):
    """Independent reference: the gguf package's numpy dequantizers of q4_0/q4_1/q8_0."""
    gguf = pytest.importorskip("gguf")
    r = np.random.default_rng(3)
    w = r.standard_normal((6, 256)) * r.uniform(0.01, 3, (6, 1))
    w[2, :64] = 0.0  # an all-zero group gives zeros, not NaN
    qw = rtn(w, grid)
    assert qw.q.min() >= grid.qmin and qw.q.max() <= grid.qmax
    ty, blocks = pack(qw)
    assert ty == grid.ggml_type
    ref = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, ty.upper()))
    np.testing.assert_allclose(ref, qw.dequantize(), rtol=1e-6, atol=1e-7)
    assert np.all(qw.dequantize()[2, :64] == 0.0)
    # RTN error: half a step (plus f16 scale rounding) inside the grid's range; the
    # symmetric grid's short side (-8..7 steps) can leave one step at the far end.
    s, o = qw.expanded()
    err = np.abs(qw.dequantize() - w)
    lo, hi = np.minimum(grid.qmin * s, grid.qmax * s) + o, np.maximum(grid.qmin * s, grid.qmax * s) + o
    inside = (w >= lo) & (w <= hi)
    tol = 1e-3 * np.abs(w) + 1e-7
    assert np.all(err[inside] <= (0.5 * np.abs(s) + tol)[inside])
    assert np.all(err <= np.abs(s) + tol)


def test_grid_validation():
    for bad in [dict(bits=5), dict(group_size=48), dict(group_size=0), dict(bits=8, symmetric=False)]:
        with pytest.raises(InvalidArgumentError):
            Grid(**bad)
    with pytest.raises(InvalidArgumentError):
        rtn(np.ones((2, 48)), Grid(4, 32, True))


def test_smoothquant_preserves_function_and_flattens_outliers():
    w, x = layer(7, 16, 128)
    s = smooth_scales(np.abs(x).max(axis=0), [w], alpha=0.5)
    np.testing.assert_allclose((x / s) @ (w * s).T, x @ w.T, rtol=1e-9, atol=1e-9)
    ratio = lambda a: np.abs(a).max(axis=0).max() / np.median(np.abs(a).max(axis=0))
    assert ratio(x / s) < ratio(x) / 3
    # W8A8 on smoothed tensors (per-row int8 activations, as in the paper) beats W8A8 on raw ones.
    def w8a8_error(xx, ww):
        xq = rtn(xx, Grid(8, -1, True)).dequantize()
        wq = rtn(ww, Grid(8, -1, True)).dequantize()
        return np.square(xq @ wq.T - x @ w.T).mean()
    assert w8a8_error(x / s, w * s) < w8a8_error(x, w)
    with pytest.raises(InvalidArgumentError):
        smooth_scales(np.ones(4), [np.ones((2, 4))], alpha=1.5)
