//! KIVI (Liu et al., 2024): asymmetric 2- or 4-bit KV cache. Keys are quantized
//! per channel over groups of `G` tokens (key outliers sit in fixed channels),
//! values per token over groups of `G` channels. New tokens wait in an f16 tail
//! (the paper's full-precision residual) and the oldest `G` are quantized
//! together once more than `R` are waiting, so the `R` newest tokens are always
//! exact up to f16.
//!
//! Group `g` (physical index; groups before `g0` are dropped but not yet
//! compacted), KV head `h`, with `B = bits`:
//! - key codes `[g][h][token][⌈hd·B/8⌉ bytes]` (a token's channels packed
//!   together, so decoding writes whole rows), key (scale, min) as f16 pairs
//!   `[g][h][channel]`;
//! - value codes `[g][h][token][⌈hd·B/8⌉ bytes]`, value (scale, min) pairs
//!   `[g][h][token][channel group]`.
//!
//! Attention reads it one key block at a time through [`KvTiles`], so decoding
//! never expands the cache.

use super::store::Store;
use crate::attention::flash::KvTiles;
use crate::ops::reuse::{reserve_for, Reused, Slot};
use half::f16;

pub(crate) struct KiviStore {
    heads: usize,
    hd: usize,
    bits: usize,
    group: usize,
    /// Channels per value quantization group.
    vgroup: usize,
    residual: usize,
    /// Live groups start at physical group `g0`; `skip` tokens of the first are dropped.
    g0: usize,
    ngroups: usize,
    skip: usize,
    kcodes: Vec<u8>,
    kparams: Vec<f16>,
    vcodes: Vec<u8>,
    vparams: Vec<f16>,
    /// f16 keys and values of the newest tokens, `[token][kv_head][head_dim]`.
    tail_k: Vec<f16>,
    tail_v: Vec<f16>,
}

/// Largest magnitude stored (f16's); larger values saturate instead of becoming ∞.
const F16_MAX: f32 = 65504.0;

fn to_f16(x: f32) -> f16 {
    f16::from_f32(x.clamp(-F16_MAX, F16_MAX))
}

/// Capacity grows by 1/64 (at least two groups' worth): memory stays within
/// ~2% of the data, the point of a quantized cache, for a few more reallocations
/// (each byte is copied about 64 times over the cache's growth, a few percent of
/// the attention's own reads).
fn grow<T>(v: &mut Vec<T>, add: usize) {
    if v.capacity() - v.len() < add {
        v.reserve_exact((2 * add).max(v.len() / 64));
    }
}

/// `(scale, min)` of an asymmetric `bits` grid over `xs`, both rounded to f16,
/// and the codes (`0..2^bits`) against the rounded pair.
fn quantize(xs: impl Iterator<Item = f32> + Clone, levels: f32, codes: &mut impl FnMut(usize, u8)) -> (f16, f16) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for x in xs.clone() {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let min = to_f16(lo);
    let scale = to_f16((hi - min.to_f32()) / levels);
    let (m, s) = (min.to_f32(), scale.to_f32());
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for (i, x) in xs.enumerate() {
        codes(i, ((x - m) * inv).round().clamp(0.0, levels) as u8);
    }
    (scale, min)
}

impl KiviStore {
    pub fn new(heads: usize, hd: usize, bits: u8, group: usize, residual: usize) -> Self {
        assert!(bits == 2 || bits == 4, "KIVI stores 2 or 4 bits");
        assert!(group > 0 && group % 8 == 0, "KIVI groups are a multiple of 8 tokens");
        KiviStore {
            heads,
            hd,
            bits: bits as usize,
            group,
            vgroup: group.min(hd),
            residual,
            g0: 0,
            ngroups: 0,
            skip: 0,
            kcodes: Vec::new(),
            kparams: Vec::new(),
            vcodes: Vec::new(),
            vparams: Vec::new(),
            tail_k: Vec::new(),
            tail_v: Vec::new(),
        }
    }

    fn levels(&self) -> f32 {
        ((1 << self.bits) - 1) as f32
    }
    fn vrow_bytes(&self) -> usize {
        (self.hd * self.bits).div_ceil(8)
    }
    fn nvg(&self) -> usize {
        self.hd.div_ceil(self.vgroup)
    }
    fn tail_len(&self) -> usize {
        self.tail_k.len() / (self.heads * self.hd)
    }
    /// Live quantized tokens.
    fn qlen(&self) -> usize {
        self.ngroups * self.group - self.skip
    }

    /// Quantizes the oldest `G` tail tokens into a new group.
    fn flush_group(&mut self) {
        let (heads, hd, g, bits) = (self.heads, self.hd, self.group, self.bits);
        let (vrb, nvg, levels) = (self.vrow_bytes(), self.nvg(), self.levels());
        grow(&mut self.kcodes, heads * g * vrb);
        grow(&mut self.kparams, heads * hd * 2);
        grow(&mut self.vcodes, heads * g * vrb);
        grow(&mut self.vparams, heads * g * nvg * 2);
        let per = 8 / bits;
        for h in 0..heads {
            // Keys: per channel, over the group's tokens; code of token t, channel
            // c at row t, position c.
            let base = self.kcodes.len();
            self.kcodes.resize(base + g * vrb, 0);
            for c in 0..hd {
                let tk = &self.tail_k;
                let xs = (0..g).map(|t| tk[(t * heads + h) * hd + c].to_f32());
                let out = &mut self.kcodes[base..];
                let (s, m) = quantize(xs, levels, &mut |t, q| out[t * vrb + c / per] |= q << ((c % per) * bits));
                self.kparams.extend([s, m]);
            }
        }
        for h in 0..heads {
            // Values: per token, over groups of channels.
            for t in 0..g {
                let base = self.vcodes.len();
                self.vcodes.resize(base + vrb, 0);
                let row = &self.tail_v[(t * heads + h) * hd..][..hd];
                for cg in 0..nvg {
                    let (c0, c1) = (cg * self.vgroup, ((cg + 1) * self.vgroup).min(hd));
                    let out = &mut self.vcodes[base..];
                    let (s, m) = quantize(row[c0..c1].iter().map(|x| x.to_f32()), levels, &mut |i, q| {
                        let i = c0 + i;
                        out[i / per] |= q << ((i % per) * bits)
                    });
                    self.vparams.extend([s, m]);
                }
            }
        }
        self.ngroups += 1;
        self.tail_k.drain(..g * heads * hd);
        self.tail_v.drain(..g * heads * hd);
    }

    /// Drops physically the groups before `g0` once they outnumber the live ones.
    fn compact(&mut self) {
        if self.g0 == 0 || self.g0 < self.ngroups.max(4) {
            return;
        }
        let (heads, hd, g) = (self.heads, self.hd, self.group);
        let g0 = self.g0;
        self.kcodes.drain(..g0 * heads * g * self.vrow_bytes());
        self.kparams.drain(..g0 * heads * hd * 2);
        self.vcodes.drain(..g0 * heads * g * self.vrow_bytes());
        self.vparams.drain(..g0 * heads * g * self.nvg() * 2);
        self.g0 = 0;
    }

    /// Decodes rows `r0..r1` of head `h`: keys or values.
    fn decode(&self, keys: bool, h: usize, r0: usize, r1: usize, out: &mut [f32]) {
        match self.bits {
            2 => self.decode_bits::<2>(keys, h, r0, r1, out),
            _ => self.decode_bits::<4>(keys, h, r0, r1, out),
        }
    }

    /// [`decode`](Self::decode) for a fixed width, so code extraction is shifts and
    /// masks on whole rows.
    fn decode_bits<const BITS: usize>(&self, keys: bool, h: usize, r0: usize, r1: usize, out: &mut [f32]) {
        let (heads, hd, g) = (self.heads, self.hd, self.group);
        let vrb = self.vrow_bytes();
        let qlen = self.qlen();
        let mut r = r0;
        // Per-channel key scales and minimums of the current group, as f32 (this
        // thread's buffers, kept from call to call: a decode step decodes
        // blocks of every layer and head).
        let mut params = Reused::take(&KEY_PARAMS);
        let (ks, km) = &mut *params;
        while r < r1.min(qlen) {
            let idx = self.skip + r;
            let (gi, t0) = (self.g0 + idx / g, idx % g);
            let t1 = (t0 + (r1.min(qlen) - r)).min(g);
            let o = &mut out[(r - r0) * hd..(r - r0 + t1 - t0) * hd];
            let rows = (gi * heads + h) * g;
            if keys {
                let p = &self.kparams[(gi * heads + h) * hd * 2..][..hd * 2];
                ks.clear();
                km.clear();
                ks.extend(p.chunks_exact(2).map(|sm| sm[0].to_f32()));
                km.extend(p.chunks_exact(2).map(|sm| sm[1].to_f32()));
                for (t, orow) in (t0..t1).zip(o.chunks_exact_mut(hd)) {
                    let codes = &self.kcodes[(rows + t) * vrb..][..vrb];
                    unpack_affine::<BITS>(codes, ks, km, orow);
                }
            } else {
                let nvg = self.nvg();
                for (t, orow) in (t0..t1).zip(o.chunks_exact_mut(hd)) {
                    let row = rows + t;
                    let codes = &self.vcodes[row * vrb..][..vrb];
                    for cg in 0..nvg {
                        let pi = (row * nvg + cg) * 2;
                        let (s, m) = (self.vparams[pi].to_f32(), self.vparams[pi + 1].to_f32());
                        let (c0, c1) = (cg * self.vgroup, ((cg + 1) * self.vgroup).min(hd));
                        // Channel groups are multiples of 8, so they start on a byte.
                        unpack_scalar::<BITS>(&codes[c0 * BITS / 8..], s, m, &mut orow[c0..c1]);
                    }
                }
            }
            r += t1 - t0;
        }
        // f16 tail.
        let tail = if keys { &self.tail_k } else { &self.tail_v };
        for r in r.max(qlen)..r1 {
            let src = &tail[((r - qlen) * heads + h) * hd..][..hd];
            for (o, x) in out[(r - r0) * hd..][..hd].iter_mut().zip(src) {
                *o = x.to_f32();
            }
        }
    }
}

thread_local! {
    static KEY_PARAMS: Slot<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new(None) };
}

/// The codes of every byte as floats: `CODES2[b] = [b & 3, (b >> 2) & 3, ...]`
/// (4 codes), `CODES4[b] = [b & 15, b >> 4]`. A byte then expands with one table
/// load and a multiply-add per lane, which the compiler vectorises on any x86-64
/// or aarch64 baseline.
static CODES2: [[f32; 4]; 256] = {
    let mut t = [[0f32; 4]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 4 {
            t[b][j] = ((b >> (2 * j)) & 3) as f32;
            j += 1;
        }
        b += 1;
    }
    t
};
static CODES4: [[f32; 2]; 256] = {
    let mut t = [[0f32; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [(b & 15) as f32, (b >> 4) as f32];
        b += 1;
    }
    t
};

/// `out[c] = min[c] + scale[c] · code(c)` for the `BITS`-bit codes packed in `codes`.
#[inline]
fn unpack_affine<const BITS: usize>(codes: &[u8], scale: &[f32], min: &[f32], out: &mut [f32]) {
    if BITS == 2 {
        affine_rows::<4>(codes, scale, min, out, &CODES2);
    } else {
        affine_rows::<2>(codes, scale, min, out, &CODES4);
    }
}

#[inline(always)]
fn affine_rows<const P: usize>(codes: &[u8], scale: &[f32], min: &[f32], out: &mut [f32], table: &[[f32; P]; 256]) {
    let full = out.len() / P;
    let (body, rest) = out.split_at_mut(full * P);
    for (((o, s), m), &byte) in body
        .chunks_exact_mut(P)
        .zip(scale.chunks_exact(P))
        .zip(min.chunks_exact(P))
        .zip(&codes[..full])
    {
        let (o, s, m): (&mut [f32; P], &[f32; P], &[f32; P]) =
            (o.try_into().unwrap(), s.try_into().unwrap(), m.try_into().unwrap());
        let q = &table[byte as usize];
        for j in 0..P {
            o[j] = m[j] + s[j] * q[j];
        }
    }
    if !rest.is_empty() {
        let v = scale_add::<P>(&table[codes[full] as usize], &scale[full * P..], &min[full * P..]);
        rest.copy_from_slice(&v[..rest.len()]);
    }
}

/// `out[c] = min + scale · code(c)`.
#[inline]
fn unpack_scalar<const BITS: usize>(codes: &[u8], scale: f32, min: f32, out: &mut [f32]) {
    if BITS == 2 {
        expand::<4>(codes, out, |_, byte| CODES2[byte as usize].map(|q| min + scale * q));
    } else {
        expand::<2>(codes, out, |_, byte| CODES4[byte as usize].map(|q| min + scale * q));
    }
}

/// `m[j] + s[j] · q[j]` for the first `P` channels (fewer at the end of a row).
#[inline(always)]
fn scale_add<const P: usize>(q: &[f32; P], s: &[f32], m: &[f32]) -> [f32; P] {
    match (s.first_chunk::<P>(), m.first_chunk::<P>()) {
        (Some(s), Some(m)) => std::array::from_fn(|j| m[j] + s[j] * q[j]),
        _ => std::array::from_fn(|j| if j < s.len() { m[j] + s[j] * q[j] } else { 0.0 }),
    }
}

/// Writes `out` `P` values per byte of `codes`: `f(first channel, byte)`; a
/// final partial byte is expanded whole and cut.
#[inline(always)]
fn expand<const P: usize>(codes: &[u8], out: &mut [f32], f: impl Fn(usize, u8) -> [f32; P]) {
    let full = out.len() / P;
    let (body, rest) = out.split_at_mut(full * P);
    for (i, (o, &byte)) in body.chunks_exact_mut(P).zip(&codes[..full]).enumerate() {
        o.copy_from_slice(&f(i * P, byte));
    }
    if !rest.is_empty() {
        let v = f(full * P, codes[full]);
        rest.copy_from_slice(&v[..rest.len()]);
    }
}

impl KvTiles for KiviStore {
    fn keys(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]) {
        self.decode(true, head, r0, r1, out)
    }
    fn values(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]) {
        self.decode(false, head, r0, r1, out)
    }
    fn reserve_thread(&self) {
        let mut params = Reused::take(&KEY_PARAMS);
        let (ks, km) = &mut *params;
        for v in [ks, km] {
            reserve_for(v, self.hd);
        }
    }
}

impl Store for KiviStore {
    fn len(&self) -> usize {
        self.qlen() + self.tail_len()
    }

    fn append(&mut self, k: &[f32], v: &[f32]) {
        assert_eq!(k.len(), v.len(), "values and keys differ in shape");
        assert_eq!(k.len() % (self.heads * self.hd), 0, "keys are not [n × kv_heads × head_dim]");
        if self.tail_k.capacity() == 0 {
            // Tokens are flushed one append at a time, so the tail never holds
            // more than residual + 1 tokens (or a group).
            let rows = (self.residual + 1).max(self.group) * self.heads * self.hd;
            self.tail_k.reserve_exact(rows);
            self.tail_v.reserve_exact(rows);
        }
        let row = self.heads * self.hd;
        for (kt, vt) in k.chunks_exact(row).zip(v.chunks_exact(row)) {
            self.tail_k.extend(kt.iter().map(|x| to_f16(*x)));
            self.tail_v.extend(vt.iter().map(|x| to_f16(*x)));
            while self.tail_len() > self.residual && self.tail_len() >= self.group {
                self.flush_group();
            }
        }
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len());
        let from_q = n.min(self.qlen());
        self.skip += from_q;
        let whole = self.skip / self.group;
        self.g0 += whole;
        self.ngroups -= whole;
        self.skip -= whole * self.group;
        if self.ngroups == 0 {
            self.skip = 0;
        }
        let from_tail = n - from_q;
        if from_tail > 0 {
            self.tail_k.drain(..from_tail * self.heads * self.hd);
            self.tail_v.drain(..from_tail * self.heads * self.hd);
        }
        self.compact();
    }

    fn retain(&mut self, _keep: &[bool]) {
        unreachable!("KvConfig rejects H2O with KIVI: its key groups cannot lose single tokens")
    }

    fn clear(&mut self) {
        self.g0 = 0;
        self.ngroups = 0;
        self.skip = 0;
        self.kcodes.clear();
        self.kparams.clear();
        self.vcodes.clear();
        self.vparams.clear();
        self.tail_k.clear();
        self.tail_v.clear();
    }

    fn bytes(&self) -> usize {
        self.kcodes.capacity()
            + self.vcodes.capacity()
            + 2 * (self.kparams.capacity() + self.vparams.capacity() + self.tail_k.capacity() + self.tail_v.capacity())
    }

    fn strided(&self) -> Option<(&[f32], &[f32], usize)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.next_f64() as f32 * 4.0 - 2.0).collect()
    }

    fn all(s: &KiviStore, keys: bool, h: usize) -> Vec<f32> {
        let mut out = vec![0f32; s.len() * s.hd];
        if keys {
            s.keys(h, 0, s.len(), &mut out);
        } else {
            s.values(h, 0, s.len(), &mut out);
        }
        out
    }

    /// Rows of head `h` of `[n][heads][hd]` data.
    fn head_rows(x: &[f32], heads: usize, hd: usize, h: usize) -> Vec<f32> {
        x.chunks_exact(heads * hd).flat_map(|t| t[h * hd..(h + 1) * hd].to_vec()).collect()
    }

    #[test]
    fn residual_covering_everything_is_f16() {
        let (heads, hd) = (2, 16);
        let x = random(100 * heads * hd, 1);
        let mut s = KiviStore::new(heads, hd, 2, 32, 100);
        s.append(&x, &x);
        assert_eq!(s.ngroups, 0);
        for h in 0..heads {
            let want: Vec<f32> = head_rows(&x, heads, hd, h).iter().map(|v| f16::from_f32(*v).to_f32()).collect();
            assert_eq!(all(&s, true, h), want);
            assert_eq!(all(&s, false, h), want);
        }
    }

    #[test]
    fn error_within_half_a_step_and_tiles_agree() {
        for (bits, group, residual, hd) in [(2, 32, 8, 16), (4, 16, 0, 24), (2, 8, 3, 40), (4, 32, 128, 64), (2, 8, 0, 6), (4, 8, 0, 10)] {
            let heads = 3;
            let n = 301;
            let x = random(n * heads * hd, bits as u64 * 7 + hd as u64);
            let mut s = KiviStore::new(heads, hd, bits, group, residual);
            // Uneven appends.
            let mut t = 0;
            for step in [1, 7, 100, 3, 190] {
                let rows = &x[t * heads * hd..(t + step) * heads * hd];
                s.append(rows, rows);
                t += step;
            }
            assert_eq!(s.len(), n);
            assert!(s.tail_len() <= residual.max(group - 1), "tail {}", s.tail_len());
            let levels = ((1 << bits) - 1) as f32;
            for h in 0..heads {
                let want = head_rows(&x, heads, hd, h);
                let (k, v) = (all(&s, true, h), all(&s, false, h));
                // Each value is within half a grid step (4 / levels for data in [-2, 2])
                // plus f16 rounding of scale and min.
                let tol = 0.5 * 4.0 / levels * 1.01 + 4e-3;
                for (i, w) in want.iter().enumerate() {
                    assert!((k[i] - w).abs() <= tol, "bits {bits} key {i}: {} vs {w}", k[i]);
                    assert!((v[i] - w).abs() <= tol, "bits {bits} value {i}: {} vs {w}", v[i]);
                }
                // Any sub-range decodes the same rows.
                for (r0, r1) in [(0, 1), (5, 70), (n - 3, n), (31, 33)] {
                    let mut out = vec![0f32; (r1 - r0) * hd];
                    s.keys(h, r0, r1, &mut out);
                    assert_eq!(out, k[r0 * hd..r1 * hd]);
                    s.values(h, r0, r1, &mut out);
                    assert_eq!(out, v[r0 * hd..r1 * hd]);
                }
            }
        }
    }

    #[test]
    fn drop_front_keeps_the_newest_and_frees_groups() {
        let (heads, hd) = (1, 8);
        let x = random(2000 * hd, 3);
        let mut s = KiviStore::new(heads, hd, 2, 16, 32);
        let mut full = KiviStore::new(heads, hd, 2, 16, 32);
        let mut first = 0;
        for t in 0..2000 {
            let row = &x[t * hd..(t + 1) * hd];
            s.append(row, row);
            full.append(row, row);
            if s.len() > 100 {
                s.drop_front(1);
                first += 1;
            }
        }
        assert_eq!(s.len(), 100);
        // Same quantization as the undropped store, shifted.
        let (a, b) = (all(&s, true, 0), all(&full, true, 0));
        assert_eq!(a, b[first * hd..]);
        assert!(s.bytes() < full.bytes() / 4, "{} vs {}", s.bytes(), full.bytes());
        s.drop_front(1000);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn constant_and_zero_groups_have_no_nan() {
        let (heads, hd) = (1, 8);
        let mut s = KiviStore::new(heads, hd, 2, 8, 0);
        let z = vec![0f32; 8 * hd];
        let c = vec![3.5f32; 8 * hd];
        s.append(&z, &c);
        assert_eq!(all(&s, true, 0), z);
        assert_eq!(all(&s, false, 0), c);
        let big = vec![1e9f32; 8 * hd];
        s.append(&big, &big);
        assert!(all(&s, true, 0).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn two_bit_memory_is_about_three_bits_per_value() {
        let (heads, hd) = (4, 64);
        let x = random(4096 * heads * hd, 9);
        let f16_bytes = 2 * 4096 * heads * hd * 2;
        // 2 bits + f16 (scale, min) per channel of 32 keys and per 32 values of a
        // token = 3 bits, plus the f16 residual; larger groups or a smaller
        // residual go below 0.2 of the f16 cache.
        for (group, residual, most) in [(32, 128, 0.218), (64, 128, 0.19), (32, 32, 0.20)] {
            let mut s = KiviStore::new(heads, hd, 2, group, residual);
            for t in x.chunks(256 * heads * hd) {
                s.append(t, t);
            }
            let ratio = s.bytes() as f64 / f16_bytes as f64;
            assert!(ratio < most, "group {group} residual {residual}: {ratio}");
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// `cargo test --release -p edgellm-core --lib kivi::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn decode_throughput() {
        let (heads, hd, n) = (4, 64, 4096);
        let x: Vec<f32> = (0..n * heads * hd).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        for bits in [2u8, 4] {
            let mut s = KiviStore::new(heads, hd, bits, 32, 128);
            s.append(&x, &x);
            let mut out = vec![0f32; 64 * hd];
            for keys in [true, false] {
                let t = std::time::Instant::now();
                let reps = 20;
                for _ in 0..reps {
                    for h in 0..heads {
                        for b in (0..n).step_by(64) {
                            s.decode(keys, h, b, (b + 64).min(n), &mut out);
                        }
                    }
                }
                let ns = t.elapsed().as_nanos() as f64 / (reps * heads * n * hd) as f64;
                println!("kivi{bits} {}: {ns:.3} ns per value", if keys { "keys" } else { "values" });
            }
        }
    }
}
