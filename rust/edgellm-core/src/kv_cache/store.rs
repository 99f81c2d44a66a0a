//! Storage of one layer's keys and values (the quantizer axis of a KV policy).
//!
//! Every store keeps tokens in time order and exposes them to the attention
//! kernel either as f32 rows in place ([`Store::slices`]) or one decoded block at a
//! time ([`KvTiles`]). Per-token formats (f32, f16, int8) live in [`RowStore`];
//! KIVI, whose keys share scales across tokens, in `kivi.rs`.

use crate::attention::flash::KvTiles;
use edgellm_kernels::Kernels;
use half::f16;

/// Rows a store grows by, at least (capacity is a multiple of it).
pub(crate) const GROW_BLOCK: usize = 64;

pub(crate) trait Store: KvTiles + Send {
    /// Tokens held.
    fn len(&self) -> usize;
    /// Appends `n` tokens' keys and values, each `[n × kv_heads × head_dim]`.
    fn append(&mut self, k: &[f32], v: &[f32]);
    /// Forgets the `n` oldest tokens.
    fn drop_front(&mut self, n: usize);
    /// Keeps the tokens whose flag is set (`keep.len() == len()`), in order.
    /// Only per-token formats support it (the config rejects the others).
    fn retain(&mut self, keep: &[bool]);
    fn clear(&mut self);
    /// Bytes allocated.
    fn bytes(&self) -> usize;
    /// f32 keys and values, if stored that way: one buffer each, KV head `h`'s
    /// rows from `h · stride` (the third value).
    fn strided(&self) -> Option<(&[f32], &[f32], usize)>;
}

/// A per-row encoding of `head_dim` floats.
pub(crate) trait Codec: Send + Sync + 'static {
    type Unit: Copy + Default + Send + Sync;
    /// Whether rows carry a scale.
    const SCALED: bool;
    /// Encodes `x` into `out`, returning the row's scale.
    fn encode(x: &[f32], out: &mut [Self::Unit]) -> f32;
    fn decode(k: &Kernels, u: &[Self::Unit], scale: f32, out: &mut [f32]);
    fn as_f32(_u: &[Self::Unit]) -> Option<&[f32]> {
        None
    }
}

pub(crate) struct F32Codec;
pub(crate) struct F16Codec;
pub(crate) struct Int8Codec;

impl Codec for F32Codec {
    type Unit = f32;
    const SCALED: bool = false;
    fn encode(x: &[f32], out: &mut [f32]) -> f32 {
        out.copy_from_slice(x);
        1.0
    }
    fn decode(_: &Kernels, u: &[f32], _: f32, out: &mut [f32]) {
        out.copy_from_slice(u);
    }
    fn as_f32(u: &[f32]) -> Option<&[f32]> {
        Some(u)
    }
}

impl Codec for F16Codec {
    type Unit = f16;
    const SCALED: bool = false;
    fn encode(x: &[f32], out: &mut [f16]) -> f32 {
        for (o, v) in out.iter_mut().zip(x) {
            *o = f16::from_f32(*v);
        }
        1.0
    }
    fn decode(k: &Kernels, u: &[f16], _: f32, out: &mut [f32]) {
        (k.f16_to_f32)(u, out);
    }
}

impl Codec for Int8Codec {
    type Unit = i8;
    const SCALED: bool = true;
    /// Symmetric: `x ≈ scale · q`, `scale = max|x| / 127`.
    fn encode(x: &[f32], out: &mut [i8]) -> f32 {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            out.fill(0);
            return 0.0;
        }
        let inv = 127.0 / amax;
        for (o, v) in out.iter_mut().zip(x) {
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        amax / 127.0
    }
    fn decode(_: &Kernels, u: &[i8], scale: f32, out: &mut [f32]) {
        for (o, q) in out.iter_mut().zip(u) {
            *o = *q as f32 * scale;
        }
    }
}

/// Rows `[kv_head][slot][head_dim]` of one codec. Live tokens occupy slots
/// `start..start+len` of every head; dropping old tokens only moves `start`, and
/// the rows are moved back to slot 0 when the buffer's end is reached, with
/// enough slack that this costs O(1) amortised per token.
pub(crate) struct RowStore<C: Codec> {
    k: &'static Kernels,
    heads: usize,
    hd: usize,
    /// Most rows ever needed (the context length for a growing cache).
    limit: usize,
    cap: usize,
    start: usize,
    len: usize,
    keys: Vec<C::Unit>,
    values: Vec<C::Unit>,
    /// `[kv_head][slot]` scales, if the codec has them.
    kscale: Vec<f32>,
    vscale: Vec<f32>,
}

impl<C: Codec> RowStore<C> {
    pub fn new(k: &'static Kernels, heads: usize, hd: usize, limit: usize) -> Self {
        RowStore {
            k,
            heads,
            hd,
            limit,
            cap: 0,
            start: 0,
            len: 0,
            keys: Vec::new(),
            values: Vec::new(),
            kscale: Vec::new(),
            vscale: Vec::new(),
        }
    }

    /// Makes room for `n` more rows after the live ones.
    fn make_room(&mut self, n: usize) {
        if self.start + self.len + n <= self.cap {
            return;
        }
        let need = self.len + n;
        let slack = (need / 8).max(64);
        let new_cap = if self.start > 0 && need + slack <= self.cap {
            self.cap
        } else {
            (need + slack).max(self.cap + self.cap / 4).next_multiple_of(GROW_BLOCK).min(self.limit).max(need)
        };
        let (hd, heads, old_cap, start, len) = (self.hd, self.heads, self.cap, self.start, self.len);
        let relayout = |buf: &mut Vec<C::Unit>, w: usize| {
            if new_cap == old_cap {
                for h in 0..heads {
                    buf.copy_within((h * old_cap + start) * w..(h * old_cap + start + len) * w, h * old_cap * w);
                }
            } else {
                let mut grown = vec![C::Unit::default(); heads * new_cap * w];
                for h in 0..heads {
                    grown[h * new_cap * w..][..len * w].copy_from_slice(&buf[(h * old_cap + start) * w..][..len * w]);
                }
                *buf = grown;
            }
        };
        relayout(&mut self.keys, hd);
        relayout(&mut self.values, hd);
        if C::SCALED {
            for buf in [&mut self.kscale, &mut self.vscale] {
                if new_cap == old_cap {
                    for h in 0..heads {
                        buf.copy_within(h * old_cap + start..h * old_cap + start + len, h * old_cap);
                    }
                } else {
                    let mut grown = vec![0f32; heads * new_cap];
                    for h in 0..heads {
                        grown[h * new_cap..][..len].copy_from_slice(&buf[h * old_cap + start..][..len]);
                    }
                    *buf = grown;
                }
            }
        }
        self.cap = new_cap;
        self.start = 0;
    }

    fn decode_rows(&self, keys: bool, head: usize, r0: usize, r1: usize, out: &mut [f32]) {
        let hd = self.hd;
        let (buf, scales) = if keys { (&self.keys, &self.kscale) } else { (&self.values, &self.vscale) };
        let base = head * self.cap + self.start;
        for (i, o) in (r0..r1).zip(out.chunks_exact_mut(hd)) {
            let slot = base + i;
            let scale = if C::SCALED { scales[slot] } else { 1.0 };
            C::decode(self.k, &buf[slot * hd..(slot + 1) * hd], scale, o);
        }
    }
}

impl<C: Codec> KvTiles for RowStore<C> {
    fn keys(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]) {
        self.decode_rows(true, head, r0, r1, out)
    }
    fn values(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]) {
        self.decode_rows(false, head, r0, r1, out)
    }
}

impl<C: Codec> Store for RowStore<C> {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, k: &[f32], v: &[f32]) {
        let (hd, heads) = (self.hd, self.heads);
        let n = k.len() / (heads * hd);
        assert_eq!(k.len(), n * heads * hd, "keys are not [n × kv_heads × head_dim]");
        assert_eq!(v.len(), k.len(), "values and keys differ in shape");
        self.make_room(n);
        for t in 0..n {
            for h in 0..heads {
                let src = (t * heads + h) * hd;
                let slot = h * self.cap + self.start + self.len + t;
                let ks = C::encode(&k[src..src + hd], &mut self.keys[slot * hd..(slot + 1) * hd]);
                let vs = C::encode(&v[src..src + hd], &mut self.values[slot * hd..(slot + 1) * hd]);
                if C::SCALED {
                    self.kscale[slot] = ks;
                    self.vscale[slot] = vs;
                }
            }
        }
        self.len += n;
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.start += n;
        self.len -= n;
        if self.len == 0 {
            self.start = 0;
        }
    }

    fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len, "one keep flag per token");
        let (hd, cap, start) = (self.hd, self.cap, self.start);
        let mut kept = 0;
        for h in 0..self.heads {
            kept = 0;
            for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
                let (from, to) = (h * cap + start + i, h * cap + start + kept);
                if from != to {
                    self.keys.copy_within(from * hd..(from + 1) * hd, to * hd);
                    self.values.copy_within(from * hd..(from + 1) * hd, to * hd);
                    if C::SCALED {
                        self.kscale[to] = self.kscale[from];
                        self.vscale[to] = self.vscale[from];
                    }
                }
                kept += 1;
            }
        }
        self.len = kept;
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    fn bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * std::mem::size_of::<C::Unit>()
            + (self.kscale.capacity() + self.vscale.capacity()) * 4
    }

    fn strided(&self) -> Option<(&[f32], &[f32], usize)> {
        let (hd, cap, start) = (self.hd, self.cap, self.start);
        // From head 0's first row to the last head's last.
        let range = start * hd..((self.heads.max(1) - 1) * cap + start + self.len) * hd;
        Some((C::as_f32(&self.keys[range.clone()])?, C::as_f32(&self.values[range])?, cap * hd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernels() -> &'static Kernels {
        edgellm_kernels::kernels().unwrap()
    }

    /// Distinct, exactly representable values for token `t` (f16 keeps them).
    fn rows(t0: usize, n: usize, heads: usize, hd: usize) -> Vec<f32> {
        (0..n * heads * hd).map(|i| ((t0 * heads * hd + i) % 2000) as f32 * 0.25 - 100.0).collect()
    }

    fn decoded<S: Store>(s: &S, heads: usize, hd: usize) -> Vec<Vec<f32>> {
        (0..heads)
            .map(|h| {
                let mut out = vec![0f32; s.len() * hd];
                s.keys(h, 0, s.len(), &mut out);
                out
            })
            .collect()
    }

    fn expected(tokens: &[usize], heads: usize, hd: usize) -> Vec<Vec<f32>> {
        (0..heads)
            .map(|h| tokens.iter().flat_map(|&t| rows(t, 1, heads, hd)[h * hd..(h + 1) * hd].to_vec()).collect())
            .collect()
    }

    fn exercise<C: Codec>() {
        let (heads, hd) = (3, 8);
        let mut s = RowStore::<C>::new(kernels(), heads, hd, usize::MAX);
        let mut live: Vec<usize> = Vec::new();
        let mut t = 0;
        // Appends, window drops and H2O-style retains, across several relayouts.
        for round in 0..40 {
            let n = [1, 3, 70, 1, 200][round % 5];
            let k = rows(t, n, heads, hd);
            s.append(&k, &k);
            live.extend(t..t + n);
            t += n;
            if round % 3 == 0 {
                let d = live.len() / 3;
                s.drop_front(d);
                live.drain(..d);
            } else if round % 3 == 1 {
                let keep: Vec<bool> = (0..live.len()).map(|i| i % 4 != 1).collect();
                s.retain(&keep);
                live = live.iter().zip(&keep).filter(|(_, k)| **k).map(|(t, _)| *t).collect();
            }
            assert_eq!(s.len(), live.len());
            let got = decoded(&s, heads, hd);
            let want = expected(&live, heads, hd);
            if C::SCALED {
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - w).abs() <= 400.0 / 127.0 * 0.51 + 1e-4, "{g} vs {w}");
                }
            } else {
                assert_eq!(got, want, "round {round}");
            }
        }
        // Memory stays near the live length after the window drops.
        s.drop_front(s.len() - 10);
        s.append(&rows(t, 1, heads, hd), &rows(t, 1, heads, hd));
        assert_eq!(s.len(), 11);
    }

    #[test]
    fn f32_f16_int8_rows_survive_drops_and_retains() {
        exercise::<F32Codec>();
        exercise::<F16Codec>();
        exercise::<Int8Codec>();
    }

    #[test]
    fn f32_strided_rows_are_the_rows() {
        let mut s = RowStore::<F32Codec>::new(kernels(), 2, 4, 100);
        s.append(&rows(0, 5, 2, 4), &rows(0, 5, 2, 4));
        s.drop_front(2);
        let (k, v, stride) = s.strided().unwrap();
        let want = expected(&[2, 3, 4], 2, 4);
        for h in 0..2 {
            assert_eq!(&k[h * stride..][..3 * 4], want[h].as_slice());
            assert_eq!(&v[h * stride..][..3 * 4], want[h].as_slice());
        }
        assert_eq!(k.len(), stride + 3 * 4, "the view ends at the last head's last row");
        let mut q = RowStore::<Int8Codec>::new(kernels(), 2, 4, 100);
        q.append(&rows(0, 5, 2, 4), &rows(0, 5, 2, 4));
        assert!(q.strided().is_none());
    }

    #[test]
    fn window_memory_is_bounded() {
        let (heads, hd) = (2, 16);
        let mut s = RowStore::<F32Codec>::new(kernels(), heads, hd, usize::MAX);
        for t in 0..20_000 {
            s.append(&rows(t, 1, heads, hd), &rows(t, 1, heads, hd));
            if s.len() > 1000 {
                s.drop_front(1);
            }
        }
        // 1000 rows + growth slack (< 50%), never the 20k seen.
        assert!(s.bytes() <= 2 * heads * 1500 * hd * 4, "{}", s.bytes());
    }

    #[test]
    fn int8_zero_and_constant_rows() {
        let mut q = [0i8; 4];
        assert_eq!(Int8Codec::encode(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        let s = Int8Codec::encode(&[2.0; 4], &mut q);
        let mut out = [0f32; 4];
        Int8Codec::decode(kernels(), &q, s, &mut out);
        assert_eq!(out, [2.0; 4]);
    }
}
