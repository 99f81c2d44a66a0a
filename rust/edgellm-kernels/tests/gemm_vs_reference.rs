//! Packed GEMM on every supported micro-kernel against an f64 reference, for f32,
//! f16 and bf16 weights, on odd shapes that exercise every edge (partial panels,
//! partial k-blocks, several B blocks); A read in place (one k-block) against
//! A packed, and k-major f32 B (packed as the product goes, where the table
//! streams it) against row-major, bit for bit, and the AVX-512 table (12 × 32
//! tiles) against AVX2's (6 × 16) bit for bit.

use edgellm_kernels::gemm::{gemm_packed, pack_a, pack_b, AOperand, BRows, BStream, GemmScratch, MR, NR};
use edgellm_kernels::{bf16, f16, Isa, Kernels};
use proptest::prelude::*;

mod common;
use common::uniform_vec as data;

fn check(n: usize, m: usize, k: usize, seed: u64) {
    let a = data(seed, n * k);
    let b = data(seed ^ 0xABCD, m * k);
    let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
    let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
    // B transposed (k-major), for the `A @ B` operand form.
    let bt: Vec<f32> = (0..k * m).map(|i| b[(i % m) * k + i / m]).collect();
    let pa = pack_a(&a, n, k);
    // Compute a column window j0..j1 to also test offsets.
    let (j0, j1) = (m / 3, m);
    let w = j1 - j0;
    let ldc = w + 2;
    // Each B type's AVX2 product, which the AVX-512 table (whose wide tiles
    // sum in the same order) must match bit for bit.
    let mut avx2: Vec<(&str, Vec<f32>)> = Vec::new();
    for isa in Isa::supported() {
        let kern = Kernels::for_isa(isa).unwrap();
        let mut f32_rows: Option<Vec<f32>> = None;
        for (name, rows, widened) in [
            ("f32", BRows::F32(&b), b.clone()),
            (
                "f16",
                BRows::F16(&bh),
                bh.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            ),
            (
                "bf16",
                BRows::Bf16(&bb),
                bb.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            ),
            (
                "f32 k-major",
                BRows::F32Cols { data: &bt, ld: m },
                b.clone(),
            ),
        ] {
            let mut c = vec![f32::NAN; n.saturating_sub(1) * ldc + w.max(1)];
            gemm_packed(
                kern,
                &pa,
                rows,
                j0,
                j1,
                &mut c,
                ldc,
                &mut GemmScratch::default(),
            );
            // The same B values in the same order: k-major B (streamed) gives
            // row-major B's bits.
            match (&rows, &f32_rows) {
                (BRows::F32(_), _) => f32_rows = Some(c.clone()),
                (BRows::F32Cols { .. }, Some(want)) => assert!(
                    c.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan()),
                    "{} {n}x{m}x{k}: k-major B differs from row-major",
                    isa.name()
                ),
                _ => {}
            }
            match isa {
                Isa::Avx2 => avx2.push((name, c.clone())),
                Isa::Avx512 => {
                    let (_, want) = avx2.iter().find(|(t, _)| *t == name).expect("AVX-512 implies AVX2");
                    assert!(
                        c.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan()),
                        "{name} {n}x{m}x{k}: the AVX-512 product differs from AVX2's"
                    );
                }
                _ => {}
            }
            if let Some(in_place) = AOperand::rows(kern, &a, n, k) {
                let mut got = vec![f32::NAN; c.len()];
                gemm_packed(kern, in_place, rows, j0, j1, &mut got, ldc, &mut GemmScratch::default());
                for (i, (g, want)) in got.iter().zip(&c).enumerate() {
                    assert!(
                        g.to_bits() == want.to_bits() || (i % ldc >= w && g.is_nan()),
                        "{} {name} {n}x{m}x{k}: A in place differs at {i}: {g} vs {want}",
                        isa.name()
                    );
                }
            }
            for i in 0..n {
                for j in j0..j1 {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for q in 0..k {
                        let t = a[i * k + q] as f64 * widened[j * k + q] as f64;
                        want += t;
                        mag += t.abs();
                    }
                    let got = c[i * ldc + j - j0] as f64;
                    let tol = 1e-6 + (k as f64 + 2.0) * f32::EPSILON as f64 * mag;
                    assert!(
                        (got - want).abs() <= tol,
                        "{} {name} {n}x{m}x{k} ({i},{j}): {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_edges() {
    for &(n, m, k) in &[
        (1, 1, 1),
        (6, 16, 256),
        (6, 16, 512),
        (7, 17, 513),
        (3, 40, 1100),
        (7, 17, 257),
        (13, 130, 300),
        (5, 129, 513),
        (12, 33, 31),
        // Several chunks of A panels, the last panel partial.
        (100, 40, 300),
        (97, 20, 512),
        // Several chunks, k-blocks and B blocks, whole and partial panels.
        (200, 300, 1100),
        (101, 272, 40),
    ] {
        check(n, m, k, (n * 31 + m * 7 + k) as u64);
    }
}

/// Every table's B packer against the reference, bit for bit: rows that are not
/// whole 8-row groups or panels, k-ranges that are not whole 8-element steps.
fn check_pack_b(m: usize, k: usize, j0: usize, j1: usize, k0: usize, kc: usize, seed: u64) {
    let b = data(seed, m * k);
    let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
    let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
    let bt: Vec<f32> = (0..k * m).map(|i| b[(i % m) * k + i / m]).collect();
    let len = (j1 - j0).div_ceil(NR) * kc * NR;
    for rows in [
        BRows::F32(&b),
        BRows::F16(&bh),
        BRows::Bf16(&bb),
        BRows::F32Cols { data: &bt, ld: m },
    ] {
        let mut want = vec![f32::NAN; len];
        pack_b(rows, k, j0, j1, k0, kc, &mut want);
        for isa in Isa::supported() {
            let mut got = vec![f32::NAN; len];
            (Kernels::for_isa(isa).unwrap().gemm_pack_b)(rows, k, j0, j1, k0, kc, &mut got);
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(
                same,
                "{} pack_b m={m} k={k} rows {j0}..{j1} k {k0}+{kc}",
                isa.name()
            );
        }
    }
}

#[test]
fn pack_b_edges() {
    for &(m, k, j0, j1, k0, kc) in &[
        (1, 1, 0, 1, 0, 1),
        (16, 8, 0, 16, 0, 8),
        (40, 300, 3, 40, 17, 256),
        (9, 33, 0, 9, 1, 31),
        (64, 64, 8, 56, 0, 64),
    ] {
        check_pack_b(m, k, j0, j1, k0, kc, (m * 7 + k) as u64);
    }
}

/// The A packer on every block of odd shapes (partial panels, partial
/// k-blocks), over a buffer of NaN: each value at its place, and every padding
/// row written as zero (packings are not zeroed before they are filled).
#[test]
fn pack_a_edges() {
    use edgellm_kernels::gemm::{pack_a_block, KC};
    for &(n, k) in &[(1usize, 1usize), (6, 8), (7, 9), (13, 300), (12, 513), (5, 31), (18, 256), (7, 1030)] {
        let a = data((n * 13 + k) as u64, n * k);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..n.div_ceil(MR) {
                let mut got = vec![f32::NAN; kc * MR];
                pack_a_block(&a, n, k, k0, p, &mut got);
                for (kk, vals) in got.chunks_exact(MR).enumerate() {
                    for (r, &v) in vals.iter().enumerate() {
                        let i = p * MR + r;
                        let expect = if i < n { a[i * k + k0 + kk] } else { 0.0 };
                        assert_eq!(v.to_bits(), expect.to_bits(), "pack_a n={n} k={k} ({i}, {})", k0 + kk);
                    }
                }
            }
        }
    }
}

/// The micro-kernel of every table against the scalar one, storing and adding in
/// place at a row stride wider than the tile.
#[test]
fn micro_kernel_stores_and_adds_in_place() {
    for kc in [1usize, 7, 64, 256] {
        let (ap, bp) = (data(kc as u64, kc * MR), data(kc as u64 + 99, kc * NR));
        let ldc = NR + 5;
        let base = data(7, MR * ldc);
        for add in [false, true] {
            let mut want = base.clone();
            // SAFETY: full panels; MR rows of NR at stride ldc fit in the buffer.
            unsafe {
                edgellm_kernels::gemm::micro_kernel_scalar(
                    kc,
                    ap.as_ptr(),
                    bp.as_ptr(),
                    want.as_mut_ptr(),
                    ldc,
                    add,
                )
            };
            for isa in Isa::supported() {
                let mut got = base.clone();
                unsafe {
                    (Kernels::for_isa(isa).unwrap().gemm_micro)(
                        kc,
                        ap.as_ptr(),
                        bp.as_ptr(),
                        got.as_mut_ptr(),
                        ldc,
                        add,
                    )
                };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if i % ldc >= NR {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{}: wrote outside the tile at {i}",
                            isa.name()
                        );
                    } else {
                        let tol = 1e-5 * (kc as f32).sqrt() * (1.0 + w.abs());
                        assert!(
                            (g - w).abs() <= tol,
                            "{} kc={kc} add={add} at {i}: {g} vs {w}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// Every streaming micro-kernel against its table's plain one on the packed
/// panel, bit for bit: A packed and in place, B read from the panel or from
/// k-major source rows (then written to the panel: the packer's values), with
/// and without rows to fetch ahead.
#[test]
fn stream_kernel_matches_the_packed_panel() {
    for kc in [1usize, 7, 64, 512] {
        let ld = NR + 9;
        let src = data(kc as u64 + 5, kc * ld);
        // The panel the packer makes of those rows.
        let panel: Vec<f32> = (0..kc * NR).map(|i| src[i / NR * ld + i % NR]).collect();
        let lda = kc + 3;
        let rows = data(kc as u64 + 11, MR * lda);
        let packed_a: Vec<f32> = (0..kc * MR).map(|i| rows[i % MR * lda + i / MR]).collect();
        let ldc = NR + 5;
        let base = data(3, MR * ldc);
        for isa in Isa::supported() {
            let kern = Kernels::for_isa(isa).unwrap();
            let Some(stream) = kern.gemm_micro_stream else { continue };
            for add in [false, true] {
                let mut want = base.clone();
                // SAFETY: full panels; MR rows of NR at stride ldc fit.
                unsafe { (kern.gemm_micro)(kc, packed_a.as_ptr(), panel.as_ptr(), want.as_mut_ptr(), ldc, add) };
                for (a_ptr, a_ld) in [(packed_a.as_ptr(), 0), (rows.as_ptr(), lda)] {
                    for from_src in [false, true] {
                        for ahead_rows in [0usize, 1, kc] {
                            let mut out = if from_src { vec![f32::NAN; kc * NR] } else { panel.clone() };
                            let b = BStream {
                                panel: out.as_mut_ptr(),
                                src: if from_src { src.as_ptr() } else { core::ptr::null() },
                                ld,
                                ahead: src.as_ptr(),
                                ahead_rows,
                            };
                            let mut got = base.clone();
                            // SAFETY: as above; `out` holds the panel, `src` its rows.
                            unsafe { stream(kc, a_ptr, a_ld, &b, got.as_mut_ptr(), ldc, add) };
                            let what = format!("{} kc={kc} add={add} lda={a_ld} from_src={from_src} ahead={ahead_rows}", isa.name());
                            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{what}: tile differs");
                            assert!(out.iter().zip(&panel).all(|(g, w)| g.to_bits() == w.to_bits()), "{what}: panel differs");
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn pack_b_random(m in 1usize..50, k in 1usize..300, s0 in 0usize..50, s1 in 0usize..50, c0 in 0usize..300, seed in any::<u64>()) {
        let (j0, j1) = (s0.min(s1) % m, (s0.max(s1) % m + 1).max(s0.min(s1) % m + 1));
        let k0 = c0 % k;
        let kc = (k - k0).min(edgellm_kernels::gemm::KC);
        check_pack_b(m, k, j0, j1.min(m), k0, kc, seed);
    }

    #[test]
    fn gemm_random(n in 1usize..20, m in 1usize..70, k in 1usize..1200, seed in any::<u64>()) {
        check(n, m, k, seed);
    }
}
