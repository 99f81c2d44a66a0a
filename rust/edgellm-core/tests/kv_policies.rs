//! KV policies at the cache level: every eviction rule and store, fed one token
//! per step with rotated keys, attends exactly like the plain f64 reference over
//! the tokens the policy says it keeps, at the positions it says they have.

use edgellm_core::attention::naive::naive_attend;
use edgellm_core::attention::AttentionParams;
use edgellm_core::kv_cache::{KvCache, KvConfig};
use edgellm_core::model::config::{RopeConfig, RopeScaling};
use edgellm_core::model::rope::Rope;
use edgellm_core::rng::Rng;
use edgellm_kernels::Kernels;

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;

fn kernels() -> &'static Kernels {
    edgellm_kernels::kernels().unwrap()
}

fn params(window: Option<usize>) -> AttentionParams {
    AttentionParams {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HD,
        scale: 1.0 / (HD as f32).sqrt(),
        window,
        softcap: None,
    }
}

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
}

fn rope() -> Rope {
    Rope::new(&RopeConfig { theta: 10000.0, dim: HD, scaling: RopeScaling::None })
}

/// `x` (`[heads × HD]`) rotated at `pos`.
fn rotated(r: &Rope, x: &[f32], heads: usize, pos: usize) -> Vec<f32> {
    let (c, s) = r.tables(pos..pos + 1, pos + 1);
    let mut y = x.to_vec();
    r.apply(&mut y, heads, HD, &c, &s);
    y
}

struct Token {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Feeds `n` random tokens one per step; returns the last step's output and the
/// tokens (unrotated).
fn run(cfg: &KvConfig, n: usize, window: Option<usize>, seed: u64) -> (Vec<f32>, Vec<Token>, KvCache) {
    let mut rng = Rng::new(seed);
    let r = rope();
    let mut cache = KvCache::with_config(cfg, kernels(), 1, KV_HEADS, HD, 1 << 20);
    let p = params(window);
    let mut toks = Vec::new();
    let mut out = vec![0f32; HEADS * HD];
    for t in 0..n {
        let tok = Token { q: random(HEADS * HD, &mut rng), k: random(KV_HEADS * HD, &mut rng), v: random(KV_HEADS * HD, &mut rng) };
        cache.reserve(1).unwrap();
        cache.write(0, &rotated(&r, &tok.k, KV_HEADS, t), &tok.v);
        let q = rotated(&r, &tok.q, HEADS, t);
        let shift = cache.sink_shift();
        let shift_sinks = |keys: &mut [f32], _: usize| {
            if let Some(d) = shift {
                r.shift(keys, HD, d, t + 1);
            }
        };
        cache.attend(kernels(), 0, &p, &q, &mut out, Some(&shift_sinks));
        cache.advance(1);
        toks.push(tok);
    }
    (out, toks, cache)
}

/// The reference: the last query attends over `kept` tokens (indices into
/// `toks`), key `i` rotated at `key_pos[i]`, the query at `q_pos`.
fn reference(toks: &[Token], kept: &[usize], key_pos: &[usize], q_pos: usize, window: Option<usize>) -> Vec<f32> {
    let r = rope();
    let keys: Vec<Vec<f32>> = kept.iter().zip(key_pos).map(|(&i, &p)| rotated(&r, &toks[i].k, KV_HEADS, p)).collect();
    let q = rotated(&r, &toks[toks.len() - 1].q, HEADS, q_pos);
    let mut out = vec![0f32; HEADS * HD];
    naive_attend(
        &params(None),
        &q,
        kept.len(),
        |h, j| &keys[j][h * HD..(h + 1) * HD],
        |h, j| &toks[kept[j]].v[h * HD..(h + 1) * HD],
        |_, j| window.map_or(true, |w| key_pos[j] + w > q_pos),
        &mut out,
        None,
    );
    out
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(d <= tol, "{what}: max |Δ| {d}");
}

#[test]
fn window_attends_to_the_last_tokens_at_true_positions() {
    for size in [1, 7, 64, 100] {
        let n = 150;
        let cfg = KvConfig::from_json(&format!(r#"{{"type": "window", "size": {size}}}"#)).unwrap();
        let (out, toks, cache) = run(&cfg, n, None, size as u64);
        // Before the last step's eviction the cache held `size` old tokens + the new one.
        let kept: Vec<usize> = (n - 1 - size.min(n - 1)..n).collect();
        assert_close(&out, &reference(&toks, &kept, &kept, n - 1, None), 2e-5, &format!("window {size}"));
        assert_eq!(cache.len(), size.min(n));
    }
}

#[test]
fn streaming_puts_sinks_right_before_the_window() {
    for (sinks, window, n) in [(4, 16, 100), (1, 5, 40), (4, 200, 100), (2, 1, 9)] {
        let cfg = KvConfig::from_json(&format!(r#"{{"type": "streaming", "sinks": {sinks}, "window": {window}}}"#)).unwrap();
        let (out, toks, cache) = run(&cfg, n, None, (sinks * 100 + window) as u64);
        // Last step: the sinks, the `window` previous tokens, the new one, at cache positions 0, 1, ...
        let recent = (n - sinks).min(window + 1);
        let kept: Vec<usize> = (0..sinks).chain(n - recent..n).collect();
        let slots: Vec<usize> = (0..kept.len()).collect();
        let want = reference(&toks, &kept, &slots, kept.len() - 1, None);
        assert_close(&out, &want, 2e-5, &format!("streaming {sinks}+{window}"));
        assert_eq!(cache.len(), sinks + window.min(n - sinks));
    }
}

#[test]
fn quantized_stores_stay_close_and_f16_residual_is_exact() {
    let n = 120;
    let (full, toks, _) = run(&KvConfig::default(), n, None, 7);
    let all: Vec<usize> = (0..n).collect();
    assert_close(&full, &reference(&toks, &all, &all, n - 1, None), 2e-5, "full");
    // KIVI with a residual covering the sequence is the f16 cache, bit for bit.
    let (f16, ..) = run(&KvConfig::from_json(r#""f16""#).unwrap(), n, None, 7);
    let (kivi_all, ..) =
        run(&KvConfig::from_json(r#"{"type": "kivi", "bits": 2, "residual": 1000}"#).unwrap(), n, None, 7);
    assert_eq!(f16, kivi_all);
    assert_close(&f16, &full, 2e-3, "f16");
    for (spec, tol) in [
        (r#""int8""#, 2e-2),
        (r#"{"type": "kivi", "bits": 4, "group_size": 16, "residual": 16}"#, 0.08),
        (r#"{"type": "kivi", "bits": 2, "group_size": 32, "residual": 32}"#, 0.3),
    ] {
        let (out, ..) = run(&KvConfig::from_json(spec).unwrap(), n, None, 7);
        assert_close(&out, &full, tol, spec);
    }
}

#[test]
fn streaming_with_kivi_attends_over_the_same_tokens() {
    // KIVI-stored window + f32 sinks vs the f32 streaming cache: close, not equal.
    let s = r#"{"type": "streaming", "sinks": 4, "window": 40}"#;
    let q = r#"{"type": "streaming", "sinks": 4, "window": 40, "quant": {"type": "kivi", "bits": 4, "group_size": 8, "residual": 8}}"#;
    let (a, ..) = run(&KvConfig::from_json(s).unwrap(), 200, None, 3);
    let (b, _, cache) = run(&KvConfig::from_json(q).unwrap(), 200, None, 3);
    assert_close(&a, &b, 0.08, "streaming + kivi4");
    assert_eq!(cache.len(), 44);
}

#[test]
fn h2o_full_budget_is_the_full_cache_and_small_budgets_keep_their_size() {
    let n = 90;
    let (full, ..) = run(&KvConfig::default(), n, None, 11);
    let (h2o, ..) = run(&KvConfig::from_json(r#"{"type": "h2o", "budget": 1.0}"#).unwrap(), n, None, 11);
    assert_eq!(full, h2o);
    let (_, _, cache) = run(&KvConfig::from_json(r#"{"type": "h2o", "budget": 0.2, "recent": 4}"#).unwrap(), n, None, 11);
    assert_eq!(cache.len(), 18);
    let (_, _, cache) = run(&KvConfig::from_json(r#"{"type": "h2o", "budget": 10, "recent": 4, "quant": "int8"}"#).unwrap(), n, None, 11);
    assert_eq!(cache.len(), 10);
}

#[test]
fn h2o_with_a_model_window_masks_by_true_position() {
    // Budget 30 of 60 tokens with a model window of 12: what the last query sees
    // must be the kept tokens whose true position is within the window.
    let n = 60;
    let cfg = KvConfig::from_json(r#"{"type": "h2o", "budget": 30, "recent": 3}"#).unwrap();
    let mut rng = Rng::new(5);
    let r = rope();
    let mut cache = KvCache::with_config(&cfg, kernels(), 1, KV_HEADS, HD, 1 << 20);
    let p = params(Some(12));
    let mut toks = Vec::new();
    let mut out = vec![0f32; HEADS * HD];
    for t in 0..n {
        let tok = Token { q: random(HEADS * HD, &mut rng), k: random(KV_HEADS * HD, &mut rng), v: random(KV_HEADS * HD, &mut rng) };
        let mut kept: Vec<usize> = cache.positions(0).unwrap().iter().map(|&p| p as usize).collect();
        assert!(kept.len() <= 30);
        kept.push(t);
        cache.reserve(1).unwrap();
        cache.write(0, &rotated(&r, &tok.k, KV_HEADS, t), &tok.v);
        cache.attend(kernels(), 0, &p, &rotated(&r, &tok.q, HEADS, t), &mut out, None);
        toks.push(tok);
        let want = reference(&toks, &kept, &kept, t, Some(12));
        assert_close(&out, &want, 2e-5, &format!("h2o + window, step {t}"));
        cache.advance(1);
    }
    // Heavy hitters, not just the newest: some kept token is older than the last 30.
    assert!(cache.positions(0).unwrap()[0] < (n - 30) as u32);
}

#[test]
fn block_selection_attends_to_the_blocks_with_the_highest_bound() {
    let n = 64 * 9 + 17;
    // Enough blocks selected: the full cache, bit for bit.
    let (full, toks, _) = run(&KvConfig::default(), n, None, 21);
    let (all, ..) = run(&KvConfig::from_json(r#"{"type": "full", "select_blocks": 10}"#).unwrap(), n, None, 21);
    assert_eq!(full, all);
    // Three blocks plus the newest: the reference recomputes Quest's bound per
    // KV head from the rotated keys and attends over the chosen blocks only.
    let (got, ..) = run(&KvConfig::from_json(r#"{"type": "full", "select_blocks": 3}"#).unwrap(), n, None, 21);
    let r = rope();
    let keys: Vec<Vec<f32>> = toks.iter().enumerate().map(|(t, tok)| rotated(&r, &tok.k, KV_HEADS, t)).collect();
    let q = rotated(&r, &toks[n - 1].q, HEADS, n - 1);
    let group = HEADS / KV_HEADS;
    let nb = n.div_ceil(64);
    let mut want = vec![0f32; HEADS * HD];
    for kvh in 0..KV_HEADS {
        let bound = |b: usize| -> f32 {
            let (mut lo, mut hi) = (vec![f32::INFINITY; HD], vec![f32::NEG_INFINITY; HD]);
            for k in &keys[b * 64..((b + 1) * 64).min(n)] {
                for c in 0..HD {
                    lo[c] = lo[c].min(k[kvh * HD + c]);
                    hi[c] = hi[c].max(k[kvh * HD + c]);
                }
            }
            (0..group)
                .map(|g| {
                    let qh = &q[(kvh * group + g) * HD..][..HD];
                    (0..HD).map(|c| (qh[c] * lo[c]).max(qh[c] * hi[c])).sum::<f32>()
                })
                .fold(f32::NEG_INFINITY, f32::max)
        };
        let mut order: Vec<usize> = (0..nb - 1).collect();
        order.sort_by(|&a, &b| bound(b).total_cmp(&bound(a)));
        let mut blocks: Vec<usize> = order[..3].to_vec();
        blocks.push(nb - 1);
        let kept: Vec<usize> = blocks.iter().flat_map(|&b| b * 64..((b + 1) * 64).min(n)).collect();
        let out = reference(&toks, &kept, &kept, n - 1, None);
        want[kvh * group * HD..(kvh + 1) * group * HD].copy_from_slice(&out[kvh * group * HD..(kvh + 1) * group * HD]);
    }
    assert_close(&got, &want, 2e-5, "select 3 blocks");
    assert_close(&got, &full, f32::INFINITY, "");
    assert!(got != full, "selecting 4 of 10 blocks changed nothing");
}

#[test]
fn a_step_of_many_tokens_sees_what_one_token_steps_see() {
    // Windows and sinks apply inside a step too. For a window the last token's
    // output is the same whether the sequence arrives one token per step or in
    // chunks. StreamingLLM's sinks sit right before the oldest window token of the
    // step, so in a chunk they are further from its later queries than in decoding:
    // checked against the reference with that placement.
    for (spec, sinks, window) in [
        (r#"{"type": "window", "size": 20}"#, 0, 20),
        (r#"{"type": "streaming", "sinks": 3, "window": 17}"#, 3, 17),
        (r#"{"type": "streaming", "sinks": 4, "window": 40, "quant": "f16"}"#, 4, 40),
    ] {
        let cfg = KvConfig::from_json(spec).unwrap();
        let n = 150;
        let (one, toks, _) = run(&cfg, n, None, 31);
        let r = rope();
        for chunk in [7, 64, 150] {
            let mut cache = KvCache::with_config(&cfg, kernels(), 1, KV_HEADS, HD, 1 << 20);
            let mut last = Vec::new();
            for c0 in (0..n).step_by(chunk) {
                let c1 = (c0 + chunk).min(n);
                let k: Vec<f32> = (c0..c1).flat_map(|t| rotated(&r, &toks[t].k, KV_HEADS, t)).collect();
                let v: Vec<f32> = (c0..c1).flat_map(|t| toks[t].v.clone()).collect();
                let q: Vec<f32> = (c0..c1).flat_map(|t| rotated(&r, &toks[t].q, HEADS, t)).collect();
                cache.reserve(c1 - c0).unwrap();
                cache.write(0, &k, &v);
                let shift = cache.sink_shift();
                let shift_sinks = |keys: &mut [f32], _: usize| {
                    if let Some(d) = shift {
                        r.shift(keys, HD, d, c1);
                    }
                };
                let mut out = vec![0f32; q.len()];
                cache.attend(kernels(), 0, &params(None), &q, &mut out, Some(&shift_sinks));
                cache.advance(c1 - c0);
                last = out[out.len() - HEADS * HD..].to_vec();
            }
            if sinks == 0 {
                assert_close(&last, &one, 2e-5, &format!("{spec}, chunks of {chunk}"));
                continue;
            }
            let last_c0 = (n - 1) / chunk * chunk;
            let main_len = window.min(last_c0.saturating_sub(sinks)) + (n - last_c0.max(sinks));
            let first_main = n - main_len;
            let kept: Vec<usize> = (0..sinks).chain((n - 1 - window).max(first_main)..n).collect();
            let pos: Vec<usize> = kept.iter().map(|&t| if t < sinks { t + first_main - sinks } else { t }).collect();
            let want = reference(&toks, &kept, &pos, n - 1, None);
            let tol = if spec.contains("f16") { 2e-3 } else { 2e-5 };
            assert_close(&last, &want, tol, &format!("{spec}, chunks of {chunk}"));
        }
    }
}
