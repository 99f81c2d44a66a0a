//! Float weights in resident panels (`edgellm_kernels::panels`), on random shapes
//! (1..70 rows, partial last panels; k across the `KC` block edges; 1..12
//! tokens) and each element type:
//! - the reference `gemm_panels_ref` against an f64 dot product;
//! - every table's `Kernels::gemm_panels` (decode, short prompts) bit for bit
//!   against the reference, outputs past the rows untouched;
//! - the packed GEMM reading the panels in place (`gemm::gemm_panels_raw`, the
//!   f16/bf16 micro-kernels) bit for bit against the same reference: a token's
//!   outputs do not depend on how many tokens came with it.

use edgellm_kernels::gemm::{self, pack_a};
use edgellm_kernels::panels::{self, Panels, WIDTH};
use edgellm_kernels::{bf16, f16};
use proptest::prelude::*;

mod common;
use common::{paths, Rng};

#[derive(Clone, Copy, Debug)]
enum Ty {
    F32,
    F16,
    Bf16,
}

/// Panels of `w` (row-major `m × k`) in `ty`, and `w` rounded to `ty`.
struct Packed {
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    rounded: Vec<f32>,
}

impl Packed {
    fn new(ty: Ty, w: &[f32], m: usize, k: usize) -> Packed {
        let len = panels::panels_len(m, k).unwrap();
        let mut p = Packed { f32: vec![], f16: vec![], bf16: vec![], rounded: vec![] };
        fn pack<E: Copy + Default>(w: &[E], m: usize, k: usize, len: usize) -> Vec<E> {
            let mut out = vec![E::default(); len];
            for (i, panel) in out.chunks_exact_mut(k * WIDTH).enumerate() {
                panels::pack_panel(w, m, k, i, panel);
            }
            out
        }
        match ty {
            Ty::F32 => {
                p.rounded = w.to_vec();
                p.f32 = pack(w, m, k, len);
            }
            Ty::F16 => {
                let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                p.rounded = h.iter().map(|v| v.to_f32()).collect();
                p.f16 = pack(&h, m, k, len);
            }
            Ty::Bf16 => {
                let h: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                p.rounded = h.iter().map(|v| v.to_f32()).collect();
                p.bf16 = pack(&h, m, k, len);
            }
        }
        p
    }

    fn panels(&self, ty: Ty) -> Panels<'_> {
        match ty {
            Ty::F32 => Panels::F32(&self.f32),
            Ty::F16 => Panels::F16(&self.f16),
            Ty::Bf16 => Panels::Bf16(&self.bf16),
        }
    }
}

const FILL: f32 = -7.25;

fn check(ty: Ty, m: usize, k: usize, n: usize, seed: u64) {
    let mut r = Rng::new(seed);
    let w: Vec<f32> = (0..m * k).map(|_| r.normalish()).collect();
    let x: Vec<f32> = (0..n * k).map(|_| r.normalish()).collect();
    let packed = Packed::new(ty, &w, m, k);
    let p = packed.panels(ty);
    let ldo = m + 3;
    let len = (n - 1) * ldo + m + 3;
    let mut reference = vec![FILL; len];
    panels::gemm_panels_ref(p, m, &x, n, &mut reference, ldo);
    let what = |path: &str, t: usize, j: usize| format!("{path} {ty:?} m={m} k={k} n={n} (token {t}, row {j})");
    for t in 0..n {
        for j in 0..ldo {
            let got = reference[t * ldo + j];
            if j >= m {
                assert_eq!(got, FILL, "{}: wrote past the rows", what("reference", t, j));
                continue;
            }
            let (mut exact, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let prod = packed.rounded[j * k + kk] as f64 * x[t * k + kk] as f64;
                exact += prod;
                mag += prod.abs();
            }
            let tol = 1e-6 * mag * (k as f64).sqrt().max(1.0) + 1e-30;
            assert!((got as f64 - exact).abs() <= tol, "{}: {got} vs f64 {exact}", what("reference", t, j));
        }
    }
    for kern in paths() {
        let Some(run) = kern.gemm_panels else { continue };
        let name = kern.isa.name();
        let mut out = vec![FILL; len];
        run(p, m, &x, n, &mut out, ldo);
        for (i, (o, rf)) in out.iter().zip(&reference).enumerate() {
            assert_eq!(o.to_bits(), rf.to_bits(), "{}: {o} vs reference {rf}", what(name, i / ldo, i % ldo));
        }
        // The packed GEMM on the same panels, in place.
        let a = pack_a(&x, n, k);
        let mut out = vec![FILL; len];
        // SAFETY: `out` holds n rows of `ldo ≥ m`.
        unsafe { gemm::gemm_panels_raw(kern, &a, p, m, out.as_mut_ptr(), ldo) };
        for (i, (o, rf)) in out.iter().zip(&reference).enumerate() {
            assert_eq!(o.to_bits(), rf.to_bits(), "{}: {o} vs reference {rf}", what(&format!("{name} packed GEMM"), i / ldo, i % ldo));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(32, 16)))]

    #[test]
    fn panels_equal_the_reference_bitwise(
        seed in any::<u64>(),
        m in 1usize..70,
        k in prop::sample::select(vec![1usize, 7, 31, 33, 255, 256, 257, 511, 512, 513, 1100]),
        n in 1usize..13,
    ) {
        for ty in [Ty::F32, Ty::F16, Ty::Bf16] {
            check(ty, m, k, n, seed);
        }
    }
}

/// The shapes of a small model's layers, every token count the engine sends to
/// `gemm_panels` and short prompts for the GEMM; then prompts long enough (over
/// 16 A panels) for the GEMM's column-block order, with a partial last block.
#[test]
fn panels_model_shapes() {
    for (m, k) in [(64, 2048), (48, 5632)] {
        for n in [1, 2, 5, 8, 9, 20] {
            check(Ty::F16, m, k, n, (m * k + n) as u64);
        }
    }
    for ty in [Ty::F32, Ty::F16, Ty::Bf16] {
        check(ty, 300, 520, 101, 7);
    }
}

/// Every SIMD table has the panel kernel and the widening micro-kernels (and
/// the AVX-512 one its wide tiles), so
/// the tests above compare something on each machine but a scalar-only one.
#[test]
fn simd_tables_have_the_panel_kernels() {
    for kern in paths() {
        if kern.isa == edgellm_kernels::Isa::Scalar {
            continue;
        }
        assert!(kern.gemm_panels.is_some() && kern.gemm_micro_f16.is_some() && kern.gemm_micro_bf16.is_some(), "{}", kern.isa.name());
        // The 512-bit table runs whole panel pairs on its 12 × 32 tiles.
        assert_eq!(kern.gemm_wide.is_some(), kern.isa == edgellm_kernels::Isa::Avx512, "{}", kern.isa.name());
    }
}
