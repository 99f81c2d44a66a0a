//! Every SIMD path this machine supports against the scalar reference and an f64
//! reference, on random data and odd lengths.

use edgellm_kernels::{bf16, f16, scalar, Isa, Kernels};
use proptest::prelude::*;

const ODD_LENGTHS: [usize; 10] = [0, 1, 7, 8, 31, 33, 64, 255, 1000, 4097];

fn paths() -> Vec<&'static Kernels> {
    Isa::supported()
        .into_iter()
        .map(|i| Kernels::for_isa(i).unwrap())
        .collect()
}

fn dot_f64(a: impl IntoIterator<Item = f32>, b: &[f32]) -> (f64, f64) {
    // Returns (exact-ish value, sum of |terms|) for a relative error bound.
    a.into_iter().zip(b).fold((0.0, 0.0), |(s, m), (x, y)| {
        let t = x as f64 * *y as f64;
        (s + t, m + t.abs())
    })
}

fn close(got: f32, (want, mag): (f64, f64), n: usize) -> bool {
    // f32 accumulation error grows at most ~n·eps·Σ|terms|; usually far less.
    (got as f64 - want).abs() <= 1e-6 + (n as f64 + 2.0) * f32::EPSILON as f64 * mag
}

fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn check_all(n: usize, seed: u64) {
    let a = data(seed, n);
    let b = data(seed + 1, n);
    let h: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
    let bh: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
    for k in paths() {
        let name = k.isa.name();
        let r = dot_f64(a.iter().copied(), &b);
        assert!(close((k.dot_f32)(&a, &b), r, n), "{name} dot_f32 n={n}");
        assert!(close(scalar::dot_f32(&a, &b), r, n));
        let r = dot_f64(h.iter().map(|x| x.to_f32()), &b);
        assert!(close((k.dot_f16)(&h, &b), r, n), "{name} dot_f16 n={n}");
        let r = dot_f64(bh.iter().map(|x| x.to_f32()), &b);
        assert!(close((k.dot_bf16)(&bh, &b), r, n), "{name} dot_bf16 n={n}");

        let mut y = b.clone();
        (k.axpy)(0.37, &a, &mut y);
        let mut yr = b.clone();
        scalar::axpy(0.37, &a, &mut yr);
        for (g, w) in y.iter().zip(&yr) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{name} axpy n={n}");
        }

        // Widening is exact: bit-identical to the reference.
        let mut d = vec![0f32; n];
        (k.f16_to_f32)(&h, &mut d);
        assert!(
            d.iter()
                .zip(&h)
                .all(|(d, h)| d.to_bits() == h.to_f32().to_bits()),
            "{name} f16_to_f32"
        );
        (k.bf16_to_f32)(&bh, &mut d);
        assert!(
            d.iter()
                .zip(&bh)
                .all(|(d, h)| d.to_bits() == h.to_f32().to_bits()),
            "{name} bf16_to_f32"
        );
    }
}

#[test]
fn dots_on_odd_lengths() {
    for (i, &n) in ODD_LENGTHS.iter().enumerate() {
        check_all(n, i as u64);
    }
}

#[test]
fn f16_specials_widen_exactly() {
    let specials: Vec<f16> = (0..=u16::MAX).step_by(7).map(f16::from_bits).collect();
    for k in paths() {
        let mut d = vec![0f32; specials.len()];
        (k.f16_to_f32)(&specials, &mut d);
        for (h, d) in specials.iter().zip(&d) {
            let want = h.to_f32();
            assert!(
                want.to_bits() == d.to_bits() || (want.is_nan() && d.is_nan()),
                "{} {:?}",
                k.isa.name(),
                h
            );
        }
    }
}

fn check_matmul(n: usize, m: usize, k: usize, seed: u64) {
    let a = data(seed, n * k);
    let b = data(seed + 7, m * k);
    let ldc = m + 3;
    for kern in paths() {
        let mut c = vec![f32::NAN; n.saturating_sub(1) * ldc + m.max(1)];
        (kern.matmul_f32)(&a, &b, k, &mut c, ldc);
        for i in 0..n {
            for j in 0..m {
                let r = dot_f64(
                    a[i * k..(i + 1) * k].iter().copied(),
                    &b[j * k..(j + 1) * k],
                );
                assert!(
                    close(c[i * ldc + j], r, k),
                    "{} matmul {n}x{m}x{k} at ({i},{j})",
                    kern.isa.name()
                );
            }
        }
    }
}

/// The float decode GEMVs: row by row bit-identical to the same table's dot, and
/// within f32 summation error of f64 (so also of the scalar reference).
fn check_gemv(rows: usize, n: usize, seed: u64) {
    let w = data(seed, rows * n);
    let x = data(seed + 3, n);
    let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let bh: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    for k in paths() {
        let name = k.isa.name();
        let mut out = vec![f32::NAN; rows];
        (k.gemv_f32)(&w, &x, &mut out);
        for (r, &o) in out.iter().enumerate() {
            let row = &w[r * n..(r + 1) * n];
            assert_eq!(
                o.to_bits(),
                (k.dot_f32)(row, &x).to_bits(),
                "{name} gemv_f32 {rows}x{n} row {r}"
            );
            assert!(
                close(o, dot_f64(row.iter().copied(), &x), n),
                "{name} gemv_f32 vs f64"
            );
        }
        (k.gemv_f16)(&h, &x, &mut out);
        for (r, &o) in out.iter().enumerate() {
            let row = &h[r * n..(r + 1) * n];
            assert_eq!(
                o.to_bits(),
                (k.dot_f16)(row, &x).to_bits(),
                "{name} gemv_f16 {rows}x{n} row {r}"
            );
            assert!(
                close(o, dot_f64(row.iter().map(|v| v.to_f32()), &x), n),
                "{name} gemv_f16 vs f64"
            );
        }
        (k.gemv_bf16)(&bh, &x, &mut out);
        for (r, &o) in out.iter().enumerate() {
            let row = &bh[r * n..(r + 1) * n];
            assert_eq!(
                o.to_bits(),
                (k.dot_bf16)(row, &x).to_bits(),
                "{name} gemv_bf16 {rows}x{n} row {r}"
            );
            assert!(
                close(o, dot_f64(row.iter().map(|v| v.to_f32()), &x), n),
                "{name} gemv_bf16 vs f64"
            );
        }
    }
}

/// The few-token float GEMM: every element within f32 summation error of f64 (so
/// of the scalar reference too), for f32, f16 and bf16 weights, at a row stride
/// past the weight rows, whose padding must stay untouched.
fn check_gemm_few(rows: usize, n: usize, k: usize, seed: u64) {
    use edgellm_kernels::gemm::BRows;
    let w = data(seed, rows * k);
    let x = data(seed + 5, n * k);
    let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let bh: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let ldo = rows + 2;
    let widened: [(&str, BRows, Vec<f32>); 3] = [
        ("f32", BRows::F32(&w), w.clone()),
        ("f16", BRows::F16(&h), h.iter().map(|v| v.to_f32()).collect()),
        ("bf16", BRows::Bf16(&bh), bh.iter().map(|v| v.to_f32()).collect()),
    ];
    for kern in paths() {
        for (ty, b, wf) in &widened {
            let mut out = vec![f32::NAN; (n - 1) * ldo + rows + 1];
            (kern.gemm_few)(*b, &x, n, &mut out, ldo);
            for t in 0..n {
                for j in 0..rows {
                    let r = dot_f64(wf[j * k..(j + 1) * k].iter().copied(), &x[t * k..(t + 1) * k]);
                    assert!(
                        close(out[t * ldo + j], r, k),
                        "{} gemm_few {ty} {rows}x{n}x{k} at ({t},{j})",
                        kern.isa.name()
                    );
                }
                for pad in rows..ldo {
                    if let Some(v) = out.get(t * ldo + pad) {
                        assert!(v.is_nan(), "{} gemm_few {ty} wrote past row {rows}", kern.isa.name());
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_few_on_odd_shapes() {
    for &k in &[1usize, 7, 8, 31, 33, 255, 1000] {
        for rows in [1usize, 3, 4, 5, 9] {
            for n in [1usize, 2, 3, 4, 7] {
                check_gemm_few(rows, n, k, (rows * 31 + n * 7 + k) as u64);
            }
        }
    }
}

/// The AVX-512 table runs 5-8 tokens two weight rows per pass, each row summed
/// as the one-row pass sums it: its results equal the AVX2 table's bit for bit.
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_few_row_pairs_equal_single_rows_bitwise() {
    use edgellm_kernels::gemm::BRows;
    let (Ok(avx2), Ok(wide)) = (Kernels::for_isa(Isa::Avx2), Kernels::for_isa(Isa::Avx512)) else {
        eprintln!("skipped: this CPU lacks AVX-512");
        return;
    };
    for (i, &k) in [8usize, 15, 16, 24, 33, 1000].iter().enumerate() {
        for rows in [2usize, 3, 6, 7] {
            for n in 5..=8 {
                let w = data(40 + i as u64, rows * k);
                let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let x = data(50 + n as u64, n * k);
                for b in [BRows::F32(&w), BRows::F16(&h)] {
                    let (mut a, mut c) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                    (avx2.gemm_few)(b, &x, n, &mut a, rows);
                    (wide.gemm_few)(b, &x, n, &mut c, rows);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&c), "gemm_few {rows}x{n}x{k}");
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "output too small")]
fn gemm_few_rejects_a_short_output() {
    use edgellm_kernels::gemm::BRows;
    let k = Kernels::for_isa(Isa::best()).unwrap();
    let mut out = vec![0f32; 5];
    (k.gemm_few)(BRows::F32(&[0.0; 12]), &[0.0; 8], 2, &mut out, 3);
}

#[test]
fn gemv_on_odd_shapes() {
    for (i, &n) in ODD_LENGTHS.iter().enumerate() {
        for rows in [1usize, 2, 5] {
            check_gemv(rows, n, 100 + i as u64);
        }
    }
}

/// Rows long enough for the multi-row GEMV (AVX2 three rows per pass, AVX-512
/// four): row counts with and without a remainder, lengths with 8-wide steps
/// and scalar tails; still bit-identical to the dot row by row.
#[test]
fn gemv_on_long_rows() {
    for (i, &n) in [5120usize, 5121, 5127, 5160, 5632].iter().enumerate() {
        for rows in [1usize, 3, 4, 5, 7, 8, 9] {
            check_gemv(rows, n, 300 + i as u64);
        }
    }
}

#[test]
#[should_panic(expected = "weight length mismatch")]
fn gemv_rejects_a_short_weight() {
    let k = Kernels::for_isa(Isa::best()).unwrap();
    let mut out = vec![0f32; 3];
    (k.gemv_f32)(&[0.0; 8], &[0.0; 3], &mut out);
}

/// `matmul_nn_f32` (`c = a · b`, `b` row-major k × m) of every path: the SIMD
/// ones bit for bit equal to one fused multiply-add chain per output (their
/// contract, whatever their tiles), every path within f32 rounding of f64, and
/// nothing written between `m` and `ldc`.
fn check_matmul_nn(n: usize, m: usize, k: usize, seed: u64) {
    let a = data(seed, n * k);
    let b = data(seed + 11, k * m);
    let ldc = m + 2;
    const FILL: f32 = -3.5;
    for kern in paths() {
        let mut c = vec![FILL; (n - 1) * ldc + m + 2];
        (kern.matmul_nn_f32)(&a, &b, k, m, &mut c, ldc);
        for i in 0..n {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                let what = format!("{} matmul_nn {n}x{k}x{m} at ({i},{j})", kern.isa.name());
                if j >= m {
                    assert_eq!(got, FILL, "{what}: written past the columns");
                    continue;
                }
                let col: Vec<f32> = (0..k).map(|p| b[p * m + j]).collect();
                let row = &a[i * k..(i + 1) * k];
                assert!(close(got, dot_f64(row.iter().copied(), &col), k), "{what}: {got} vs f64");
                if kern.isa != Isa::Scalar {
                    let fused = row.iter().zip(&col).fold(0f32, |s, (x, y)| x.mul_add(*y, s));
                    assert_eq!(got.to_bits(), fused.to_bits(), "{what}: {got} vs the fused chain {fused}");
                }
            }
        }
    }
}

#[test]
fn matmul_nn_edge_shapes() {
    // Attention's shapes (64-key blocks, head_dim 64 and 128, up to 48 rows),
    // and every ragged edge of the 6-row, 4/8/16-lane tiles.
    for &(n, k, m) in &[(48, 64, 64), (48, 64, 128), (13, 128, 64), (7, 1, 1), (6, 3, 17), (5, 9, 33), (1, 64, 65), (12, 5, 100), (8, 31, 7)] {
        check_matmul_nn(n, m, k, (n * m * k) as u64);
    }
}

/// `exp_sum` of every path on odd lengths of scores up to `shift`, with −∞
/// (masked keys), values past exp's underflow and `shift` itself among them:
/// each exponential bit for bit `scalar::exp_neg`'s, which is within 2e-7 of
/// f64's `exp`, and the sum within f32 rounding of the f64 sum.
fn check_exp_sum(n: usize, seed: u64) {
    let shift = 1.5f32;
    let mut x: Vec<f32> = data(seed, n).iter().map(|v| shift - 30.0 * v.abs()).collect();
    for (i, v) in x.iter_mut().enumerate() {
        match i % 11 {
            3 => *v = f32::NEG_INFINITY,
            5 => *v = shift - 90.0 - i as f32,
            7 => *v = shift,
            _ => {}
        }
    }
    for kern in paths() {
        let mut y = x.clone();
        let s = (kern.exp_sum)(&mut y, shift);
        let mut want = 0f64;
        for (i, (&got, &xi)) in y.iter().zip(&x).enumerate() {
            let e = scalar::exp_neg(xi - shift);
            assert_eq!(got.to_bits(), e.to_bits(), "{} exp_sum n={n} at {i}: {got} vs exp_neg {e}", kern.isa.name());
            let exact = ((xi - shift) as f64).exp();
            assert!((e as f64 - exact).abs() <= 2e-7 * exact + 1e-38, "exp_neg({}) = {e}, f64 {exact}", xi - shift);
            want += e as f64;
        }
        assert!((s as f64 - want).abs() <= (n as f64 + 2.0) * f32::EPSILON as f64 * want + 1e-30, "{} exp_sum n={n}: sum {s} vs {want}", kern.isa.name());
    }
}

#[test]
fn exp_sum_odd_lengths() {
    for n in ODD_LENGTHS {
        check_exp_sum(n, n as u64 + 1);
    }
}

#[test]
fn matmul_edge_shapes() {
    for &(n, m, k) in &[
        (1, 1, 1),
        (3, 4, 8),
        (4, 5, 33),
        (7, 9, 31),
        (13, 17, 255),
        (2, 64, 64),
    ] {
        check_matmul(n, m, k, (n * m * k) as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn dots_random(n in 0usize..600, seed in any::<u64>()) {
        check_all(n, seed);
    }

    #[test]
    fn gemv_random(rows in 1usize..9, n in 0usize..300, seed in any::<u64>()) {
        check_gemv(rows, n, seed);
    }

    #[test]
    fn gemm_few_random(rows in 1usize..11, n in 1usize..9, k in 1usize..300, seed in any::<u64>()) {
        check_gemm_few(rows, n, k, seed);
    }

    #[test]
    fn matmul_random(n in 1usize..12, m in 1usize..14, k in 1usize..90, seed in any::<u64>()) {
        check_matmul(n, m, k, seed);
    }

    #[test]
    fn exp_sum_random(n in 0usize..200, seed in any::<u64>()) {
        check_exp_sum(n, seed);
    }

    #[test]
    fn matmul_nn_random(n in 1usize..15, m in 1usize..140, k in 1usize..80, seed in any::<u64>()) {
        check_matmul_nn(n, m, k, seed);
    }
}

#[test]
fn isa_override_parsing() {
    assert_eq!(Isa::parse("AVX2").unwrap(), Some(Isa::Avx2));
    assert_eq!(Isa::parse("avx512").unwrap(), Some(Isa::Avx512));
    // The AVX-512 level needs VNNI on top of F/BW/VL (and everything AVX2 needs).
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let avx512 = Isa::Avx2.is_supported()
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512vnni");
        assert_eq!(Kernels::for_isa(Isa::Avx512).is_ok(), avx512);
        assert_eq!(Isa::best() == Isa::Avx512, avx512);
        // AVX-VNNI: as the CPU reports it, or the override for CPUs whose
        // hypervisor masks the bit; below AVX-512 when both run.
        let reported = has!("avxvnni");
        let assumed = std::env::var(edgellm_kernels::ASSUME_AVXVNNI_ENV).is_ok_and(|v| v.trim() == "1");
        assert_eq!(Kernels::for_isa(Isa::AvxVnni).is_ok(), Isa::Avx2.is_supported() && (reported || assumed));
        assert_eq!(Isa::best() == Isa::AvxVnni, !avx512 && Isa::AvxVnni.is_supported());
        eprintln!("x86 kernel tables under test: {:?}", Isa::supported());
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert!(Kernels::for_isa(Isa::Avx512).is_err() && Kernels::for_isa(Isa::AvxVnni).is_err());
    assert_eq!(Isa::parse("AvxVnni").unwrap(), Some(Isa::AvxVnni));
    assert_eq!(Isa::parse("auto").unwrap(), None);
    assert!(Isa::parse("sse9").is_err());
    assert!(Kernels::for_isa(Isa::Scalar).is_ok());
    #[cfg(target_arch = "x86_64")]
    for arm in [Isa::Neon, Isa::Dotprod, Isa::I8mm] {
        assert!(Kernels::for_isa(arm).is_err());
    }
    assert_eq!(Isa::parse("i8mm").unwrap(), Some(Isa::I8mm));
    assert_eq!(Isa::parse("dotprod").unwrap(), Some(Isa::Dotprod));
    // Every aarch64 core has NEON; the dotprod and i8mm levels follow the CPU's
    // own report, and the best level is the one the CPU reaches.
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        assert!(Kernels::for_isa(Isa::Neon).is_ok());
        assert_eq!(Kernels::for_isa(Isa::Dotprod).is_ok(), has!("dotprod"));
        assert_eq!(
            Kernels::for_isa(Isa::I8mm).is_ok(),
            has!("dotprod") && has!("i8mm")
        );
        let best = if has!("dotprod") && has!("i8mm") {
            Isa::I8mm
        } else if has!("dotprod") {
            Isa::Dotprod
        } else {
            Isa::Neon
        };
        assert_eq!(Isa::best(), best);
        eprintln!("aarch64 kernel tables under test: {:?}", Isa::supported());
    }
}
