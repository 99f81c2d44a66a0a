//! `Linear::forward_group` (the fused decode GEMV of layers sharing an input:
//! q/k/v, gate/up) computes every output exactly as each layer's own `forward`,
//! for every kernel path, mixed weight types (sharing or not sharing an
//! activation format), biases, one row (the fused pass) and several rows (the
//! per-layer fallback), and thread counts.

use edgellm_core::ops::Linear;
use edgellm_core::rng::Rng;
use edgellm_core::tensor::Tensor;
use edgellm_kernels::quant::GgmlType;
use edgellm_kernels::{Isa, Kernels};

fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (2.0 * r.next_f64() - 1.0) as f32).collect()
}

fn layer(seed: u64, rows: usize, cols: usize, ty: Option<GgmlType>, bias: bool) -> Linear {
    let w = Tensor::from_f32(&values(seed, rows * cols), vec![rows, cols]).unwrap();
    let l = Linear::new(w, bias.then(|| values(seed + 1, rows)));
    match ty {
        Some(t) => l.quantized(t).unwrap(),
        None => l,
    }
}

#[test]
fn forward_group_equals_separate_forwards() {
    let cols = 512;
    let sets: [&[(usize, Option<GgmlType>, bool)]; 4] = [
        // q/k/v of a GQA model: one large, two small, all q4_0.
        &[(96, Some(GgmlType::Q4_0)), (32, Some(GgmlType::Q4_0)), (32, Some(GgmlType::Q4_0))].map(|(r, t)| (r, t, false)),
        // Q4_K_M-like: q4_K and q6_K share the q8_K activation; a bias.
        &[(64, Some(GgmlType::Q4K), true), (48, Some(GgmlType::Q6K), false)],
        // Different activation formats and float weights in one group.
        &[(40, Some(GgmlType::Q8_0), false), (24, None, true), (17, Some(GgmlType::Q4K), false), (9, Some(GgmlType::F16), true)],
        // Rows that are not multiples of any chunk.
        &[(1, Some(GgmlType::Q4_0), false), (33, Some(GgmlType::Q5_1), true)],
    ];
    for isa in Isa::supported() {
        let k = Kernels::for_isa(isa).unwrap();
        for (si, set) in sets.iter().enumerate() {
            let layers: Vec<Linear> =
                set.iter().enumerate().map(|(i, &(r, t, b))| layer(100 * si as u64 + i as u64, r, cols, t, b)).collect();
            for tokens in [1usize, 3] {
                let x = values(7 + tokens as u64, tokens * cols);
                let want: Vec<Vec<f32>> = layers
                    .iter()
                    .map(|l| {
                        let mut o = vec![0f32; tokens * l.out_features()];
                        l.forward(k, &x, &mut o);
                        o
                    })
                    .collect();
                for threads in [1, 2, 3] {
                    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
                    let mut got: Vec<Vec<f32>> = layers.iter().map(|l| vec![f32::NAN; tokens * l.out_features()]).collect();
                    pool.install(|| {
                        let mut group: Vec<(&Linear, &mut [f32])> =
                            layers.iter().zip(got.iter_mut()).map(|(l, o)| (l, &mut o[..])).collect();
                        Linear::forward_group(k, &x, &mut group);
                    });
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} set {si} layer {i} tokens {tokens} threads {threads}: forward_group differs", isa.name());
                    }
                }
            }
        }
    }
}

/// A few rows of quantized weights (below the integer GEMM's row count: the
/// block-by-block GEMVs of `Linear::forward`) give exactly the outputs of one
/// `forward` per row, for every kernel path, row counts that are not multiples
/// of the row blocks, and thread counts. Float weights (the few-token GEMM) agree
/// to f32 summation order.
#[test]
fn few_rows_equal_row_by_row_forwards() {
    let cols = 256;
    for isa in Isa::supported() {
        let k = Kernels::for_isa(isa).unwrap();
        for (i, ty) in [Some(GgmlType::Q4_0), Some(GgmlType::Q8_0), Some(GgmlType::Q4K), Some(GgmlType::Q5_1), None, Some(GgmlType::F16)]
            .into_iter()
            .enumerate()
        {
            let l = layer(300 + i as u64, 1037, cols, ty, i % 2 == 0);
            let m = l.out_features();
            for tokens in [2usize, 3, 4, 8] {
                let x = values(40 + tokens as u64, tokens * cols);
                let mut want = vec![0f32; tokens * m];
                for (xr, or) in x.chunks_exact(cols).zip(want.chunks_exact_mut(m)) {
                    l.forward(k, xr, or);
                }
                for threads in [1, 2, 3] {
                    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
                    let mut got = vec![f32::NAN; tokens * m];
                    pool.install(|| l.forward(k, &x, &mut got));
                    let quantized = matches!(ty, Some(t) if t != GgmlType::F16);
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        let ok = if quantized && (tokens < 5 || !edgellm_kernels::quant::qgemm::has_fast_path(isa, ty.unwrap())) {
                            g.to_bits() == w.to_bits()
                        } else {
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs())
                        };
                        assert!(ok, "{} {:?} tokens {tokens} threads {threads} at {j}: {g} vs {w}", isa.name(), ty.map(|t| t.name()));
                    }
                }
            }
        }
    }
}

/// Weights repacked into resident panels (`Linear::make_resident`) give, for any
/// token count, kernel path and thread count, the scalar table's outputs on the
/// file layout bit for bit (every (row, token) is the scalar `vec_dot`), alone
/// and fused in a group; row counts that are not whole panels stay as filed.
#[test]
fn resident_weights_equal_the_scalar_file_layout_bitwise() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    for (i, (ty, rows, cols, bias)) in [
        (GgmlType::Q4_0, 1040, 256, true),
        (GgmlType::Q8_0, 24, 96, false),
        (GgmlType::Q4_0, 37, 64, false),
        (GgmlType::Q8_0, 8, 2048, true),
        (GgmlType::Q4K, 24, 512, true),
        (GgmlType::Q4K, 12, 256, false),
    ]
    .into_iter()
    .enumerate()
    {
        let plain = layer(500 + i as u64, rows, cols, Some(ty), bias);
        for isa in Isa::supported() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut res = plain.clone();
            let packed = res.make_resident(k);
            assert_eq!(packed, k.resident_gemm(ty).is_some() && rows % 8 == 0, "{} {} rows {rows}", isa.name(), ty.name());
            assert_eq!(res.resident.is_some(), packed);
            for tokens in [1usize, 2, 5, 9, 33] {
                let x = values(60 + tokens as u64, tokens * cols);
                let mut want = vec![0f32; tokens * rows];
                for (xr, or) in x.chunks_exact(cols).zip(want.chunks_exact_mut(rows)) {
                    plain.forward(scalar, xr, or);
                }
                for threads in [1, 2, 3] {
                    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
                    let mut got = vec![f32::NAN; tokens * rows];
                    pool.install(|| res.forward(k, &x, &mut got));
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same || !packed, "{} {} rows {rows} tokens {tokens} threads {threads}: resident differs from scalar", isa.name(), ty.name());
                    if tokens == 1 && threads == 2 {
                        // Fused in one pass after a layer of the other q8_0-activation
                        // type (whose per-block tables differ), or for q4_K after a
                        // q6_K layer, whose q8_K input it shares.
                        let twin = match ty {
                            GgmlType::Q4_0 => GgmlType::Q8_0,
                            GgmlType::Q8_0 => GgmlType::Q4_0,
                            _ => GgmlType::Q6K,
                        };
                        let mut other = layer(900, 16, cols, Some(twin), false);
                        other.make_resident(k);
                        let mut o2 = vec![0f32; 16];
                        let mut g1 = vec![f32::NAN; rows];
                        pool.install(|| Linear::forward_group(k, &x, &mut [(&other, &mut o2[..]), (&res, &mut g1[..])]));
                        assert!(g1.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}: forward_group differs", isa.name(), ty.name());
                    }
                }
            }
            // The scalar table cannot read the panels: the row layout serves it.
            let x = values(3, cols);
            let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
            res.forward(scalar, &x, &mut a);
            plain.forward(scalar, &x, &mut b);
            assert_eq!(a, b);
        }
    }
}

/// Float weights repacked into panels (`Linear::make_resident`): a token's
/// outputs are the same bits whether it comes alone (decode), with a few others
/// (`gemm_panels`) or in a long prompt (the packed GEMM on the panels), for any
/// thread count and in a fused group; they agree with the row layout up to
/// summation order; the scalar table, which has no panel kernels, reads the rows.
#[test]
fn float_panels_give_each_token_the_same_bits_at_every_length() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    for (i, (ty, rows, cols, bias)) in [
        (None, 1040, 256, true),
        (Some(GgmlType::F16), 37, 96, false),
        (Some(GgmlType::BF16), 48, 544, true),
        (Some(GgmlType::F16), 16, 2048, false),
    ]
    .into_iter()
    .enumerate()
    {
        let plain = layer(700 + i as u64, rows, cols, ty, bias);
        for isa in Isa::supported() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut res = plain.clone();
            let packed = res.make_resident(k);
            let what = format!("{} {ty:?} {rows}x{cols}", isa.name());
            assert_eq!(packed, k.gemm_panels.is_some(), "{what}");
            for tokens in [1usize, 2, 5, 9, 33, 64, 70] {
                let x = values(80 + tokens as u64, tokens * cols);
                let mut alone = vec![0f32; tokens * rows];
                let mut rows_layout = vec![0f32; tokens * rows];
                for ((xr, a), p) in x.chunks_exact(cols).zip(alone.chunks_exact_mut(rows)).zip(rows_layout.chunks_exact_mut(rows)) {
                    res.forward(k, xr, a);
                    plain.forward(k, xr, p);
                }
                for (a, p) in alone.iter().zip(&rows_layout) {
                    assert!((a - p).abs() <= 1e-4 * (1.0 + p.abs()), "{what}: panels {a} vs rows {p}");
                }
                for threads in [1, 2, 3] {
                    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
                    let mut got = vec![f32::NAN; tokens * rows];
                    pool.install(|| res.forward(k, &x, &mut got));
                    let same = got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same || !packed, "{what} tokens {tokens} threads {threads}: differs from one token at a time");
                    if tokens == 1 && threads == 2 {
                        let mut other = layer(901, 16, cols, Some(GgmlType::Q8_0), false);
                        other.make_resident(k);
                        let mut o2 = vec![0f32; 16];
                        let mut g1 = vec![f32::NAN; rows];
                        pool.install(|| Linear::forward_group(k, &x, &mut [(&other, &mut o2[..]), (&res, &mut g1[..])]));
                        assert!(g1.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: forward_group differs");
                    }
                }
            }
            let x = values(3, cols);
            let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
            res.forward(scalar, &x, &mut a);
            plain.forward(scalar, &x, &mut b);
            assert_eq!(a, b, "{what}: the scalar table reads the rows");
        }
    }
}

/// `Linear::forward_group_normed` (the decode step's norm fused into the input
/// quantization) gives the bits of normalising the row, then `forward_group`,
/// for every kernel path, norm kind (RMS, Gemma's `1 + w`, LayerNorm with a
/// bias), activation format (q8_0 for q4_0/q8_0, q8_K shared by q4_K and q6_K),
/// resident panels or the row layout, rows that are not whole 256-element
/// pieces, and groups it cannot fuse (float weights, mixed formats, several rows).
#[test]
fn normed_group_equals_norm_then_group_bitwise() {
    use edgellm_core::model::config::NormKind;
    use edgellm_core::ops::Norm;
    let sets: [(&[(usize, Option<GgmlType>)], usize); 6] = [
        (&[(64, Some(GgmlType::Q4_0)), (16, Some(GgmlType::Q4_0)), (16, Some(GgmlType::Q4_0))], 288),
        (&[(40, Some(GgmlType::Q8_0)), (24, Some(GgmlType::Q8_0))], 96),
        (&[(48, Some(GgmlType::Q4K)), (32, Some(GgmlType::Q6K))], 768),
        (&[(24, Some(GgmlType::Q5_0)), (8, Some(GgmlType::Q8_0))], 544),
        // Not fused: float weights; q4_0 beside q8_0 (their tables differ).
        (&[(24, None), (8, Some(GgmlType::Q8_0))], 64),
        (&[(16, Some(GgmlType::Q4_0)), (8, Some(GgmlType::Q8_0))], 64),
    ];
    for isa in Isa::supported() {
        let k = Kernels::for_isa(isa).unwrap();
        for (si, &(set, cols)) in sets.iter().enumerate() {
            for resident in [false, true] {
                let layers: Vec<Linear> = set
                    .iter()
                    .enumerate()
                    .map(|(i, &(r, t))| {
                        let mut l = layer(700 + 10 * si as u64 + i as u64, r, cols, t, i == 1);
                        if resident {
                            l.make_resident(k);
                        }
                        l
                    })
                    .collect();
                for (ni, kind) in [NormKind::Rms, NormKind::RmsOffset, NormKind::Layer].into_iter().enumerate() {
                    let norm = Norm {
                        kind,
                        weight: values(40 + ni as u64, cols),
                        bias: (kind == NormKind::Layer).then(|| values(50, cols)),
                        eps: 1e-5,
                    };
                    for tokens in [1usize, 2] {
                        // Large values: the q8 scales are not 1.
                        let x: Vec<f32> = values(80 + tokens as u64, tokens * cols).iter().map(|v| 9.0 * v).collect();
                        let mut xn = x.clone();
                        norm.apply(&mut xn);
                        let mut want: Vec<Vec<f32>> = layers.iter().map(|l| vec![0f32; tokens * l.out_features()]).collect();
                        let mut group: Vec<(&Linear, &mut [f32])> = layers.iter().zip(want.iter_mut()).map(|(l, o)| (l, &mut o[..])).collect();
                        Linear::forward_group(k, &xn, &mut group);
                        let mut got: Vec<Vec<f32>> = layers.iter().map(|l| vec![f32::NAN; tokens * l.out_features()]).collect();
                        let mut scratch = vec![0f32; x.len()];
                        let pool = edgellm_core::pool::Pool::new(2).unwrap();
                        pool.install(|| {
                            let mut group: Vec<(&Linear, &mut [f32])> =
                                layers.iter().zip(got.iter_mut()).map(|(l, o)| (l, &mut o[..])).collect();
                            Linear::forward_group_normed(k, &norm, &x, &mut scratch, &mut group);
                        });
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{} set {si} resident {resident} {kind:?} tokens {tokens}: fused norm differs",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
