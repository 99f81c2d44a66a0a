"""FP8 (E4M3, E5M2) and NF4 codecs of the Rust kernels, bit-exact against an
independent reference: ml_dtypes' float8_e4m3fn / float8_e5m2 for all 256 codes,
for values between codes (round to nearest even), out of range and special
values; NF4's code book rebuilt from normal quantiles (QLoRA's construction)."""

from statistics import NormalDist

import numpy as np
import pytest

from edgellm import _core
from edgellm.errors import InvalidArgumentError

ml_dtypes = pytest.importorskip("ml_dtypes")
FORMATS = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_decode_all_256_codes(fmt):
    codes = np.arange(256, dtype=np.uint8)
    ours = _core.fp8_decode(codes, fmt)
    ref = codes.view(FORMATS[fmt]).astype(np.float32)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(ours[ok].view(np.uint32), ref[ok].view(np.uint32))  # bit-exact, signed zeros too


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_encode_matches_ml_dtypes(fmt):
    dt = FORMATS[fmt]
    vals = np.arange(256, dtype=np.uint8).view(dt).astype(np.float32)
    finite = np.sort(np.unique(vals[np.isfinite(vals)]))
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact ties: round half to even
    r = np.random.default_rng(0)
    x = np.concatenate([
        vals, mids.astype(np.float32), np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
        np.nextafter(mids.astype(np.float32), np.float32(-np.inf)),
        r.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** r.integers(-8, 6, 20000).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 1e-30, -1e-30, 3e38, 1e5, -1e5, 460.0, 464.0, 470.0, 61440.0, 57344.0 * 1.06],
                 dtype=np.float32),
    ]).astype(np.float32)
    ours = _core.fp8_encode(x, fmt)
    ref = x.astype(dt)
    ref_vals = ref.astype(np.float32)
    our_vals = _core.fp8_decode(ours, fmt)
    nan = np.isnan(ref_vals)
    assert np.array_equal(np.isnan(our_vals), nan)
    assert np.array_equal(ours[~nan], ref.view(np.uint8)[~nan])


def test_format_properties():
    e4 = _core.fp8_decode(np.arange(256, dtype=np.uint8), "e4m3")
    assert np.nanmax(e4) == 448 and not np.isinf(e4).any()
    assert np.isnan(e4).sum() == 2  # one NaN pattern per sign: S.1111.111
    assert e4[1] == 2.0 ** -9  # smallest subnormal
    e5 = _core.fp8_decode(np.arange(256, dtype=np.uint8), "e5m2")
    assert np.nanmax(e5[np.isfinite(e5)]) == 57344 and np.isinf(e5).sum() == 2
    assert e5[1] == 2.0 ** -16
    big = np.array([1e6, -1e6, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(_core.fp8_decode(_core.fp8_encode(big, "e4m3", saturate=True), "e4m3"), [448, -448, 448])
    np.testing.assert_array_equal(_core.fp8_decode(_core.fp8_encode(big, "e5m2", saturate=True), "e5m2"),
                                  [57344, -57344, 57344])
    # An all-zero group (scale 0 -> values 0) encodes to zeros, not NaN.
    assert not _core.fp8_encode(np.zeros(32, np.float32), "e4m3").any()
    with pytest.raises(InvalidArgumentError):
        _core.fp8_encode(np.zeros(2, np.float32), "e3m4")


def test_nf4_code_book_is_qlora_normal_quantiles():
    """QLoRA (Dettmers et al. 2023), bitsandbytes create_normal_map(offset=0.9677083)."""
    n = NormalDist()
    offset = 0.9677083
    pos = [n.inv_cdf(offset - i * (offset - 0.5) / 8) for i in range(8)]  # linspace(offset, 0.5, 9)[:-1]
    neg = [-n.inv_cdf(offset - i * (offset - 0.5) / 7) for i in range(7)]  # linspace(offset, 0.5, 8)[:-1]
    table = np.sort(np.array(pos + [0.0] + neg))
    table /= table.max()
    np.testing.assert_allclose(_core.nf4_values(), table, atol=1e-6)
    vals = np.array(_core.nf4_values(), dtype=np.float32)
    x = np.random.default_rng(1).uniform(-1.2, 1.2, 5000).astype(np.float32)
    idx = _core.nf4_encode(x)
    nearest = np.abs(x[:, None] - vals[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(idx, nearest)


def test_weight_roundtrips():
    from edgellm.calibrate.minifloat import fp8_roundtrip, nf4_roundtrip

    r = np.random.default_rng(2)
    w = r.standard_normal((16, 128)).astype(np.float32)
    w[3] = 0.0  # all-zero rows give zeros, not NaN
    for deq, tol in [(nf4_roundtrip(w), 0.2), (fp8_roundtrip(w, "e4m3"), 0.04), (fp8_roundtrip(w, "e5m2"), 0.08)]:
        assert np.isfinite(deq).all() and not deq[3].any()
        assert np.abs(deq - w).max() <= tol * np.abs(w).max()
    # E4M3's 3 mantissa bits beat E5M2's 2; row maxima are exact in both.
    assert np.abs(fp8_roundtrip(w, "e4m3") - w).mean() < np.abs(fp8_roundtrip(w, "e5m2") - w).mean()
    rows = np.abs(w).argmax(axis=1)
    np.testing.assert_allclose(fp8_roundtrip(w, "e4m3")[np.arange(16), rows], w[np.arange(16), rows], rtol=1e-6)
