//! Packed GEMM on every supported micro-kernel against an f64 reference, for f32,
//! f16 and bf16 weights, on odd shapes that exercise every edge (partial panels,
//! partial k-blocks, several B blocks).

use edgellm_kernels::gemm::{gemm_packed, pack_a, BRows, GemmScratch};
use edgellm_kernels::{bf16, f16, Isa, Kernels};
use proptest::prelude::*;

fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

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
    for isa in Isa::supported() {
        let kern = Kernels::for_isa(isa).unwrap();
        for (name, rows, widened) in [
            ("f32", BRows::F32(&b), b.clone()),
            ("f16", BRows::F16(&bh), bh.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
            ("bf16", BRows::Bf16(&bb), bb.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
            ("f32 k-major", BRows::F32Cols { data: &bt, ld: m }, b.clone()),
        ] {
            let mut c = vec![f32::NAN; n.saturating_sub(1) * ldc + w.max(1)];
            gemm_packed(kern.gemm_micro, &pa, rows, j0, j1, &mut c, ldc, &mut GemmScratch::default());
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
                    assert!((got - want).abs() <= tol, "{} {name} {n}x{m}x{k} ({i},{j}): {got} vs {want}", isa.name());
                }
            }
        }
    }
}

#[test]
fn gemm_edges() {
    for &(n, m, k) in &[(1, 1, 1), (6, 16, 256), (7, 17, 257), (13, 130, 300), (5, 129, 513), (12, 33, 31)] {
        check(n, m, k, (n * 31 + m * 7 + k) as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn gemm_random(n in 1usize..20, m in 1usize..70, k in 1usize..600, seed in any::<u64>()) {
        check(n, m, k, seed);
    }
}
