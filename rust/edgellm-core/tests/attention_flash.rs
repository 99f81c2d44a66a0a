//! Flash attention against the f64 reference (`attention::naive`) over random
//! shapes, every supported ISA, and 1 and 2 threads (which must agree bit for bit).

mod attention_util;

use attention_util::Rng;
use attention_util::*;
use edgellm_core::attention::flash::{flash_attend, flash_attend_slices, SPLIT_MIN_KEYS};
use edgellm_core::attention::naive::{causal_mask, naive_attend};
use edgellm_core::attention::AttentionParams;
use edgellm_core::kv_cache::KvCache;
use proptest::prelude::*;
use proptest::sample::Index;

const TOL: f32 = 1e-5;

#[derive(Debug, Clone)]
struct Case {
    nh: usize,
    nkv: usize,
    hd: usize,
    n: usize,
    prefix: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    /// Multiplies 1/sqrt(head_dim).
    scale: f32,
    /// Query amplitude (sharper or flatter softmax).
    amp: f32,
    seed: u64,
}

fn case(n: std::ops::RangeInclusive<usize>, prefix: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Case> {
    (
        (1usize..=8, any::<Index>(), 1usize..=80),
        (n, prefix),
        (proptest::option::of(1usize..=40), proptest::option::of(0.5f32..30.0)),
        (0.3f32..2.0, 0.2f32..3.0, any::<u64>()),
    )
        .prop_map(|((nh, kvi, hd), (n, prefix), (window, softcap), (scale, amp, seed))| {
            let d = divisors(nh);
            Case { nh, nkv: d[kvi.index(d.len())], hd, n, prefix, window, softcap, scale, amp, seed }
        })
}

struct Data {
    p: AttentionParams,
    q: Vec<f32>,
    cache: KvCache,
    kv_len: usize,
}

fn data(c: &Case) -> Data {
    let mut rng = Rng(c.seed);
    let kv_len = c.prefix + c.n;
    let k = rng.vec(kv_len * c.nkv * c.hd, 1.0);
    let v = rng.vec(kv_len * c.nkv * c.hd, 1.0);
    let q = rng.vec(c.n * c.nh * c.hd, c.amp);
    let p = params(c.nh, c.nkv, c.hd, c.scale / (c.hd as f32).sqrt(), c.window, c.softcap);
    Data { p, q, cache: cache_with(c.nkv, c.hd, &k, &v), kv_len }
}

/// The reference output and key mass.
fn reference(d: &Data, pos0: usize) -> (Vec<f32>, Vec<f32>) {
    let hd = d.p.head_dim;
    let heads: Vec<_> = (0..d.p.num_kv_heads).map(|h| d.cache.head(0, h, d.kv_len)).collect();
    let mut out = vec![0f32; d.q.len()];
    let mut mass = vec![0f32; d.kv_len];
    naive_attend(
        &d.p,
        &d.q,
        d.kv_len,
        |h, j| &heads[h].0[j * hd..(j + 1) * hd],
        |h, j| &heads[h].1[j * hd..(j + 1) * hd],
        causal_mask(pos0, d.p.window),
        &mut out,
        Some(&mut mass),
    );
    (out, mass)
}

/// Flash on every ISA and both pools against the reference; returns the worst
/// output and mass errors.
fn check_flash(c: &Case) -> Result<(f32, f32), TestCaseError> {
    let d = data(c);
    let (want, want_mass) = reference(&d, c.prefix);
    let (mut worst, mut worst_mass) = (0f32, 0f32);
    for k in all_kernels() {
        let mut first: Option<(Vec<u32>, Vec<u32>)> = None;
        for pool in pools() {
            let mut out = vec![f32::NAN; d.q.len()];
            let mut mass = vec![0f32; d.kv_len];
            pool.install(|| flash_attend(k, &d.p, &d.cache, 0, c.prefix, &d.q, &mut out, Some(&mut mass)));
            let e = max_rel_err(&out, &want);
            prop_assert!(e <= TOL, "{:?} {:?}: output error {e}", k.isa, c);
            let em = max_rel_err(&mass, &want_mass);
            prop_assert!(em <= TOL, "{:?} {:?}: key mass error {em}", k.isa, c);
            (worst, worst_mass) = (worst.max(e), worst_mass.max(em));
            let got = (bits(&out), bits(&mass));
            match &first {
                None => first = Some(got),
                Some(f) => prop_assert!(*f == got, "{:?} {:?}: 1 and 2 threads differ", k.isa, c),
            }
        }
        // Without the mass the output is the same.
        let mut plain = vec![0f32; d.q.len()];
        pools()[1].install(|| flash_attend(k, &d.p, &d.cache, 0, c.prefix, &d.q, &mut plain, None));
        prop_assert!(first.as_ref().unwrap().0 == bits(&plain), "{:?}: mass changes the output", k.isa);
    }
    Ok((worst, worst_mass))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Prefill and short decodes: heads 1..8, head_dim 1..80, 1..70 queries after 0..300 cached.
    #[test]
    fn flash_matches_naive(c in case(1..=70, 0..=300)) {
        check_flash(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Few queries over a long context: the keys are split across tasks and merged.
    #[test]
    fn flash_decoding_matches_naive(c in case(1..=16, SPLIT_MIN_KEYS..=1500)) {
        check_flash(&c)?;
    }
}

#[test]
fn decode_one_token_long_context() {
    // MHA, GQA and MQA decoding at 2000 cached tokens, with and without a window.
    for (nh, nkv) in [(4, 4), (8, 2), (6, 1)] {
        for window in [None, Some(700)] {
            let c = Case {
                nh,
                nkv,
                hd: 64,
                n: 1,
                prefix: 2000,
                window,
                softcap: None,
                scale: 1.0,
                amp: 2.0,
                seed: nh as u64,
            };
            check_flash(&c).unwrap();
        }
    }
}

#[test]
fn key_mass_sums_to_queries_times_heads() {
    let c = Case {
        nh: 8,
        nkv: 2,
        hd: 16,
        n: 40,
        prefix: 100,
        window: Some(30),
        softcap: Some(5.0),
        scale: 1.0,
        amp: 1.0,
        seed: 7,
    };
    let d = data(&c);
    let k = edgellm_kernels::kernels().unwrap();
    let mut out = vec![0f32; d.q.len()];
    let mut mass = vec![1f32; d.kv_len]; // added to, not overwritten
    flash_attend(k, &d.p, &d.cache, 0, c.prefix, &d.q, &mut out, Some(&mut mass));
    let total: f32 = mass.iter().sum::<f32>() - d.kv_len as f32;
    assert!((total - (c.n * c.nh) as f32).abs() < 1e-3, "{total}");
    // Keys no query's window reaches get nothing.
    assert!(mass[..c.prefix + 1 - 30].iter().all(|&m| m == 1.0));
}

#[test]
fn slices_and_cache_agree() {
    let c =
        Case { nh: 4, nkv: 2, hd: 24, n: 9, prefix: 50, window: None, softcap: None, scale: 1.0, amp: 1.0, seed: 3 };
    let d = data(&c);
    let k = edgellm_kernels::kernels().unwrap();
    // Slices longer than pos0 + n: the extra rows are ignored.
    let hd = c.hd;
    let owned: Vec<(Vec<f32>, Vec<f32>)> = (0..c.nkv)
        .map(|h| {
            let (kk, vv) = d.cache.head(0, h, d.kv_len);
            let pad = vec![1e30f32; 3 * hd];
            ([kk, &pad].concat(), [vv, &pad].concat())
        })
        .collect();
    let keys: Vec<&[f32]> = owned.iter().map(|o| o.0.as_slice()).collect();
    let values: Vec<&[f32]> = owned.iter().map(|o| o.1.as_slice()).collect();
    let (mut a, mut b) = (vec![0f32; d.q.len()], vec![0f32; d.q.len()]);
    flash_attend(k, &d.p, &d.cache, 0, c.prefix, &d.q, &mut a, None);
    flash_attend_slices(k, &d.p, &keys, &values, c.prefix, &d.q, &mut b, None);
    assert_eq!(bits(&a), bits(&b));
}
