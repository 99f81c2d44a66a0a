//! Quantized GEMM for prefill: many activation rows (tokens) against a block of
//! quantized weight rows, in integer arithmetic.
//!
//! The activation rows are quantized once ([`crate::Kernels::quantize_act`]); the
//! [`crate::Kernels::gemm_q`] entry then computes `out[t * ldo + r] =
//! vec_dot(w_r, act_t)` for every weight row `r` and token `t`. The reference
//! ([`gemm_q`]) is literally that double loop over the scalar [`super::vec_dot`].
//!
//! The SIMD kernels repack each panel of [`PANEL`] weight rows once per call into
//! an *interleaved* layout (`pack_panel`): for every group of 4 consecutive
//! elements, the 4 quant values of each of the 8 rows side by side (32 bytes),
//! unpacked to one byte per value, plus per-row block scales as f32 / i16 tables.
//! One 4-byte group of a token's activations, broadcast, then multiplies all 8
//! rows at once (`maddubs` on x86, `sdot`-style on aarch64), so vector lanes hold
//! rows, every block's integer sum lands in its row's lane, and the f32 scaling
//! and accumulation of 8 rows costs one vector operation. The packed panel stays
//! in cache while every token streams past it.
//!
//! Accumulation order: per (row, token), block by block,
//! `sum = sum + (d_w · d_a) · isum` (k-quants: `sum + ((d·d_a)·isum −
//! (dmin·d_a)·msum)`) with the same exact integer `isum` as the scalar
//! [`super::vec_dot`] — so the interleaved kernels are **bit-identical** to the
//! scalar reference, whatever the tiling or thread count.

use super::blocks::*;
use super::{f16_at, scale_min_k4, vec_dot_type, GgmlType};

/// Signature of [`crate::Kernels::gemm_q`].
pub type GemmQFn =
    fn(w: &[u8], acts: &QActs, out: &mut [f32], ldo: usize, scratch: &mut QGemmScratch);

/// Activation rows quantized for weights of one type (rows of
/// `quantize_act(ty, ..)`), with the per-block values the interleaved kernels
/// need computed once for every weight row they meet.
pub struct QActs {
    ty: GgmlType,
    k: usize,
    n: usize,
    bytes: Vec<u8>,
    /// q4_0/q8_0: the activation scale of every (row, block), as f32.
    pub(crate) da: Vec<f32>,
    /// q4_0: `8 · Σ a` of every (row, block).
    pub(crate) sa: Vec<i32>,
    /// q8_0 on x86-64: `128 · Σ a` of every (row, block), for kernels that flip
    /// the weights' sign bits (`w + 128`) to multiply bytes unsigned × signed
    /// without saturation (`vpdpbusd`).
    pub(crate) sa128: Vec<i32>,
}

impl Default for QActs {
    /// No rows, to [`refill`](QActs::refill).
    fn default() -> Self {
        QActs { ty: GgmlType::Q8_0, k: 0, n: 0, bytes: Vec::new(), da: Vec::new(), sa: Vec::new(), sa128: Vec::new() }
    }
}

impl QActs {
    /// Wraps `bytes`, whole rows of `k` elements from `quantize_act(ty, ..)`, for
    /// products with weights of type `ty`. Panics on a length mismatch.
    pub fn new(ty: GgmlType, k: usize, bytes: Vec<u8>) -> QActs {
        let mut a = QActs { ty, k, bytes, ..QActs::default() };
        a.index();
        a
    }

    /// Replaces the rows with `rows` rows of `k` elements for weights of type
    /// `ty`, written by `quantize` into `rows × act_row_bytes(ty, k)` bytes:
    /// the buffers are reused, so once they are large enough nothing is
    /// allocated. Panics if `k` is not whole blocks of `ty`.
    pub fn refill(&mut self, ty: GgmlType, k: usize, rows: usize, quantize: impl FnOnce(&mut [u8])) {
        let ab = super::act_row_bytes(ty, k)
            .unwrap_or_else(|| panic!("QActs: {k} elements are not whole {} blocks", ty.name()));
        (self.ty, self.k) = (ty, k);
        self.bytes.clear();
        self.bytes.resize(rows * ab, 0);
        quantize(&mut self.bytes);
        self.index();
    }

    /// Counts the rows and computes the per-block tables of `bytes`.
    fn index(&mut self) {
        let (ty, k) = (self.ty, self.k);
        let ab = super::act_row_bytes(ty, k)
            .unwrap_or_else(|| panic!("QActs: {k} elements are not whole {} blocks", ty.name()));
        let bytes = &self.bytes;
        assert!(
            ab > 0 && bytes.len() % ab == 0,
            "QActs: {} bytes are not whole activation rows of {k}",
            bytes.len()
        );
        self.n = bytes.len() / ab;
        self.da.clear();
        self.sa.clear();
        self.sa128.clear();
        if matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0) {
            self.da.extend(bytes.chunks_exact(34).map(|blk| f16_at(blk, 0)));
        }
        let block_sums = |scale: i32, out: &mut Vec<i32>| {
            out.extend(bytes.chunks_exact(34).map(|blk| scale * blk[2..34].iter().map(|&v| v as i8 as i32).sum::<i32>()))
        };
        match ty {
            GgmlType::Q4_0 => block_sums(8, &mut self.sa),
            // Only the x86 VNNI tiles read it.
            GgmlType::Q8_0 if cfg!(target_arch = "x86_64") => block_sums(128, &mut self.sa128),
            _ => {}
        }
    }

    /// The weight type these activations are quantized for.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Elements per row.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        self.n
    }
    /// The quantized rows.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Weight rows per interleaved panel (vector lanes of the SIMD kernels).
pub const PANEL: usize = 8;

/// Reusable buffers of one thread for [`crate::Kernels::gemm_q`].
#[derive(Default)]
pub struct QGemmScratch {
    /// Packed weight panels.
    pub(crate) w: Vec<u8>,
    /// Scratch of [`zip_panels`].
    pub(crate) zip: Vec<u8>,
}

/// Tokens per register tile of the interleaved kernels.
pub(crate) const TILE_TOKENS: usize = 4;

/// The results of a tile of two panels: lanes `0..PANEL` of each token's row
/// for the first panel, `PANEL..` for the second.
pub(crate) type PairResults = [[f32; 2 * PANEL]; TILE_TOKENS];

/// `$f::<T>(args)` (or `$f::<G.., T>(args)`) for a tile's token count
/// `$tokens` (1 ..= [`TILE_TOKENS`]): the SIMD tiles are monomorphised per
/// token count.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_macros))]
macro_rules! by_tokens {
    // A function with leading generic arguments of its own: `f::<A, B>`.
    ($f:ident::<$($g:tt),+>, $tokens:expr, $($arg:expr),*) => {
        match $tokens {
            4 => $f::<$($g),+, 4>($($arg),*),
            3 => $f::<$($g),+, 3>($($arg),*),
            2 => $f::<$($g),+, 2>($($arg),*),
            _ => $f::<$($g),+, 1>($($arg),*),
        }
    };
    ($f:ident, $tokens:expr, $($arg:expr),*) => {
        match $tokens {
            4 => $f::<4>($($arg),*),
            3 => $f::<3>($($arg),*),
            2 => $f::<2>($($arg),*),
            _ => $f::<1>($($arg),*),
        }
    };
}
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_imports))]
pub(crate) use by_tokens;

/// One register tile of the interleaved kernels: a packed panel and up to
/// [`TILE_TOKENS`] consecutive activation rows.
pub(crate) struct PanelTile<'a> {
    /// The packed panel: `nb` blocks of `l.stride` bytes.
    pub panel: *const u8,
    pub nb: usize,
    pub l: PanelLayout,
    /// The first activation row (`ab` bytes per row).
    pub acts: *const u8,
    pub ab: usize,
    /// q4_0/q8_0: activation scales from the first row on (`nb` per row).
    pub da: &'a [f32],
    /// q4_0: `8 · Σ a` per block from the first row on; empty otherwise.
    pub sa: &'a [i32],
    /// q8_0 on x86-64: `128 · Σ a` per block from the first row on; empty
    /// otherwise.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub sa128: &'a [i32],
}

impl PanelTile<'_> {
    /// A tile of a panel's weights alone (no activations), for the code that
    /// reads blocks out of a panel with the tiles' own accessors (widening).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn weights(panel: *const u8, nb: usize, l: PanelLayout) -> PanelTile<'static> {
        PanelTile { panel, nb, l, acts: core::ptr::null(), ab: 0, da: &[], sa: &[], sa128: &[] }
    }

    /// Super-block `b` of the tile's first `T` activation rows (q8_K blocks,
    /// for the k-quant tiles).
    #[inline(always)]
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
    pub(crate) unsafe fn q8k_blocks<const T: usize>(&self, b: usize) -> [*const u8; T] {
        core::array::from_fn(|t| self.row(t).add(Q8K_BYTES * b))
    }

    /// Activation row `t` of the tile.
    #[inline(always)]
    pub(crate) unsafe fn row(&self, t: usize) -> *const u8 {
        self.acts.add(t * self.ab)
    }
}

/// The instruction-set specific half of the interleaved GEMM; [`gemm_q_panels`]
/// is the other (packing every panel once, streaming token tiles past it).
pub(crate) trait PanelKernels {
    /// Packs up to [`PANEL`] weight rows of `ty` (`rb` bytes, `k` elements each)
    /// into `out` in the layout `l` (which is `panel_layout(ty)`).
    fn pack(&self, ty: GgmlType, w: &[u8], rb: usize, k: usize, l: PanelLayout, out: &mut [u8]) {
        let _ = l;
        pack_panel(ty, w, rb, k, out)
    }
    /// `res[i][r] = vec_dot(row r of the panel, activation row i of the tile)`
    /// for `i < tokens` (1 ..= [`TILE_TOKENS`]).
    ///
    /// # Safety
    /// The tile's panel holds `nb` packed blocks of `ty`, its activations
    /// `tokens` whole rows (with their `da`/`sa` entries), and the CPU runs the
    /// implementation's instructions.
    unsafe fn tile(
        &self,
        ty: GgmlType,
        tile: &PanelTile,
        tokens: usize,
        res: &mut [[f32; PANEL]; TILE_TOKENS],
    );

    /// Whether [`Self::tile_pair`] runs `ty`: tables whose vectors hold 16
    /// lanes take two panels per instruction.
    fn pairs(&self, _ty: GgmlType) -> bool {
        false
    }

    /// [`Self::tile`] on two panels at once, zipped at `tile.panel`
    /// ([`zip_panels`]): lanes `0..PANEL` of `res[i]` are the rows of the
    /// first panel, lanes `PANEL..` those of the second, each bit-identical to
    /// what [`Self::tile`] gives for that panel alone. Only called where
    /// [`Self::pairs`].
    ///
    /// # Safety
    /// As [`Self::tile`], for both panels, zipped.
    unsafe fn tile_pair(&self, ty: GgmlType, _tile: &PanelTile, _tokens: usize, _res: &mut PairResults) {
        unreachable!("no paired {} tiles", ty.name())
    }
}

/// `kern`'s tile of two panels of `ty` ([`PanelKernels::tile_pair`]) as
/// [`tiles_over_panels`] takes it.
///
/// # Safety
/// Only to be called as `tiles_over_panels` calls it: on two panels of `ty`
/// that `tile_pair` can read, and where `kern.pairs(ty)`.
unsafe fn pair_tile<K: PanelKernels>(
    kern: &K,
    ty: GgmlType,
) -> impl Fn(&PanelTile, *const u8, usize, &mut PairResults) + '_ {
    // SAFETY: the caller's contract above (the panels zipped at `x.panel`).
    move |x, _second, c, res| unsafe { kern.tile_pair(ty, x, c, res) }
}

/// [`pair_tile`] for [`gemm_q_resident_panels`]: on widened panels the
/// per-call paired tile, else the resident one
/// ([`ResidentKernels::resident_tile_pair`]).
///
/// # Safety
/// As [`pair_tile`], where `kern.pairs(ty)` (widened) or
/// `kern.resident_pairs(ty)` (not).
unsafe fn resident_pair_tile<K: ResidentKernels>(
    kern: &K,
    ty: GgmlType,
    widened: bool,
) -> impl Fn(&PanelTile, *const u8, usize, &mut PairResults) + '_ {
    // SAFETY: the caller's contract above.
    move |x, second, c, res| unsafe {
        match widened {
            true => kern.tile_pair(ty, x, c, res),
            false => kern.resident_tile_pair(ty, x, second, c, res),
        }
    }
}

/// `gemm_q` through the interleaved kernels of `kern` (for types with a
/// [`panel_layout`]): every panel of [`PANEL`] weight rows packed once per call,
/// then, for blocks of tokens whose activations (~96 KiB) stay in L2, each panel
/// against tiles of [`TILE_TOKENS`] tokens.
pub(crate) fn gemm_q_panels(
    kern: &impl PanelKernels,
    w: &[u8],
    qa: &QActs,
    out: &mut [f32],
    ldo: usize,
    s: &mut QGemmScratch,
) {
    let (ty, k) = (qa.ty, qa.k);
    let l = panel_layout(ty).expect("gemm_q_panels: a type with a panel layout");
    let (rows, n) = check_gemm_q(w, qa, out, ldo);
    if rows == 0 || n == 0 {
        return;
    }
    let rb = ty.row_bytes(k).unwrap();
    let nb = k / l.elems;
    let (panels, pb) = (rows.div_ceil(PANEL), nb * l.stride);
    s.w.resize(panels * pb, 0);
    let pairs = kern.pairs(ty);
    fill_panels(&mut s.w, pb, pairs.then_some(&mut s.zip), |p, dst| {
        let (r0, r1) = (p * PANEL, ((p + 1) * PANEL).min(rows));
        kern.pack(ty, &w[r0 * rb..r1 * rb], rb, k, l, dst)
    });
    let panel = |p: usize| s.w[p * pb..(p + 1) * pb].as_ptr();
    // Sound: every panel was packed above for `nb` blocks of `ty` (pairs
    // zipped), and pairs are only asked where the table has them.
    unsafe {
        let pair = pairs.then(|| pair_tile(kern, ty));
        tiles_over_panels(panels, rows, nb, l, qa, out, ldo, panel, |x, c, res| kern.tile(ty, x, c, res), pair)
    }
}

/// The instruction-set specific half of [`gemm_q_resident_panels`].
pub(crate) trait ResidentKernels: PanelKernels {
    /// The weight types of the resident tiles (the table's
    /// [`crate::Kernels::gemm_q_resident_types`]).
    const TYPES: &'static [GgmlType];

    /// As [`PanelKernels::tile`], on a resident panel ([`super::resident`]).
    ///
    /// # Safety
    /// As [`PanelKernels::tile`]; the panel is a resident one of `nb` blocks.
    unsafe fn resident_tile(&self, ty: GgmlType, tile: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]);

    /// Whether prompts should widen resident panels of `ty` ([`Self::widen`])
    /// and run the per-call tiles on them: where the resident tile unpacks its
    /// panel again for every tile of tokens, and that costs more than one
    /// widening per panel and block of tokens.
    fn widens(&self, _ty: GgmlType) -> bool {
        false
    }

    /// Writes the resident panel at `panel` (`nb` blocks of `ty`) into `out` in
    /// the per-call layout ([`pack_panel`]'s, `nb · stride` bytes), the values
    /// unchanged: the per-call tile then gives the resident tile's bits. Only
    /// called where [`Self::widens`].
    ///
    /// # Safety
    /// `panel` is a resident panel of `nb` blocks of `ty`.
    unsafe fn widen(&self, ty: GgmlType, _panel: *const u8, _nb: usize, _out: &mut [u8]) {
        unreachable!("no widening of resident {} panels", ty.name())
    }

    /// Whether [`Self::resident_tile_pair`] runs `ty` (on panels not widened).
    fn resident_pairs(&self, _ty: GgmlType) -> bool {
        false
    }

    /// As [`PanelKernels::tile_pair`], on two resident panels. Only called
    /// where [`Self::resident_pairs`].
    ///
    /// # Safety
    /// As [`Self::resident_tile`], for both panels.
    unsafe fn resident_tile_pair(&self, ty: GgmlType, _x: &PanelTile, _second: *const u8, _tokens: usize, _res: &mut PairResults) {
        unreachable!("no paired resident {} tiles", ty.name())
    }
}

/// Tokens from which the resident prompt GEMM widens panels where the table
/// `widens` them: two tiles or more share each widened panel.
pub const WIDEN_MIN_TOKENS: usize = 2 * TILE_TOKENS;

/// `gemm_q` on resident panels (see [`crate::Kernels::gemm_q_resident`]): the
/// token and panel loops of [`gemm_q_panels`], without the packing, or, for
/// prompts where the table widens panels, with every panel widened once, as
/// `gemm_q_panels` packs them (widening each once per block of tokens, 13
/// times for a 512-token prompt at k = 2048, cost q6_K prompts 5-8%).
pub(crate) fn gemm_q_resident_panels<K: ResidentKernels>(kern: &K, ty: GgmlType, w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize) {
    let (panels, n) = super::resident::check(ty, w, qa, out, ldo);
    assert!(K::TYPES.contains(&ty), "gemm_q_resident: this table has no resident {} kernel", ty.name());
    if panels == 0 || n == 0 {
        return;
    }
    let pb = w.len() / panels;
    let l = panel_layout(ty).expect("types with a resident layout have a panel layout");
    let nb = qa.k / l.elems;
    let widened = n >= WIDEN_MIN_TOKENS && kern.widens(ty);
    let wb = nb * l.stride;
    let mut wide = vec![0u8; if widened { panels * wb } else { 0 }];
    // Zipped as gemm_q_panels lays out packed panels.
    let mut zip = Vec::new();
    fill_panels(&mut wide, wb, kern.pairs(ty).then_some(&mut zip), |p, dst| {
        // Sound: `check` found whole resident panels; `dst` holds nb blocks.
        unsafe { kern.widen(ty, w[p * pb..].as_ptr(), nb, dst) }
    });
    let panel = |p: usize| if widened { wide[p * wb..].as_ptr() } else { w[p * pb..].as_ptr() };
    // Sound: `check` found `panels` whole resident panels of `ty` rows of `k`,
    // and widened ones are per-call panels of the same blocks, which the
    // paired tiles read too.
    unsafe {
        let pairs = if widened { kern.pairs(ty) } else { kern.resident_pairs(ty) };
        let pair = pairs.then(|| resident_pair_tile(kern, ty, widened));
        tiles_over_panels(
            panels,
            panels * PANEL,
            nb,
            l,
            qa,
            out,
            ldo,
            panel,
            |x, c, res| match widened {
                true => kern.tile(ty, x, c, res),
                false => kern.resident_tile(ty, x, c, res),
            },
            pair,
        )
    }
}

/// For blocks of tokens whose activations (~96 KiB) stay in L2, each panel
/// `panel(p)` (asked once per block of tokens) against tiles of up to
/// [`TILE_TOKENS`] tokens through `tile`, the results written to rows `8p..`
/// (of `rows`) of `out`; panels two at a time through `pair` where given (an
/// odd last one through `tile`).
///
/// # Safety
/// `panel(p)` for `p < panels` points at a panel `tile` and `pair` can read
/// (`nb` blocks of `qa`'s type), still valid after the next `panel` call, and
/// `qa`, `out` and `ldo` passed the `gemm_q` checks.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_over_panels(
    panels: usize,
    rows: usize,
    nb: usize,
    l: PanelLayout,
    qa: &QActs,
    out: &mut [f32],
    ldo: usize,
    mut panel: impl FnMut(usize) -> *const u8,
    tile: impl Fn(&PanelTile, usize, &mut [[f32; PANEL]; TILE_TOKENS]),
    pair: Option<impl Fn(&PanelTile, *const u8, usize, &mut PairResults)>,
) {
    let n = qa.n;
    let ab = vec_dot_type(qa.ty).row_bytes(qa.k).unwrap();
    let per_row = |v: usize, t: usize| if v == 0 { 0 } else { t * nb };
    assert!([qa.da.len(), qa.sa.len(), qa.sa128.len()].into_iter().all(|v| v == per_row(v, n)));
    let nt = ((96 * 1024) / ab).clamp(TILE_TOKENS, 1024) / TILE_TOKENS * TILE_TOKENS;
    let tile_at = |at: *const u8, t: usize| PanelTile {
        panel: at,
        nb,
        l,
        acts: qa.bytes[t * ab..].as_ptr(),
        ab,
        da: &qa.da[per_row(qa.da.len(), t)..],
        sa: &qa.sa[per_row(qa.sa.len(), t)..],
        sa128: &qa.sa128[per_row(qa.sa128.len(), t)..],
    };
    let mut res = [[0f32; PANEL]; TILE_TOKENS];
    let mut res2 = [[0f32; 2 * PANEL]; TILE_TOKENS];
    for t0 in (0..n).step_by(nt) {
        let t1 = (t0 + nt).min(n);
        let mut p = 0;
        while p < panels {
            let r0 = p * PANEL;
            // Once per panel and block of tokens (it may widen the panel).
            let at = panel(p);
            let (second, step) = match pair {
                Some(_) if p + 1 < panels => (panel(p + 1), 2),
                _ => (core::ptr::null(), 1),
            };
            let nr = (step * PANEL).min(rows - r0);
            let mut t = t0;
            while t < t1 {
                let c = TILE_TOKENS.min(t1 - t);
                let x = tile_at(at, t);
                match &pair {
                    Some(pair) if step == 2 => {
                        pair(&x, second, c, &mut res2);
                        store(&res2[..c], out, (t * ldo + r0, ldo), nr);
                    }
                    _ => {
                        tile(&x, c, &mut res);
                        store(&res[..c], out, (t * ldo + r0, ldo), nr);
                    }
                }
                t += c;
            }
            p += step;
        }
    }
}

/// The first `nr` values of each tile row of `res` into `out`, row `i` at
/// `at + i · ldo`.
fn store<const W: usize>(res: &[[f32; W]], out: &mut [f32], (at, ldo): (usize, usize), nr: usize) {
    for (i, r) in res.iter().enumerate() {
        out[at + i * ldo..][..nr].copy_from_slice(&r[..nr]);
    }
}

/// Checks the operands of a `gemm_q` call; returns (weight rows, tokens).
/// Panics on a length mismatch.
pub fn check_gemm_q(w: &[u8], acts: &QActs, out: &[f32], ldo: usize) -> (usize, usize) {
    let (ty, k) = (acts.ty, acts.k);
    let rb = ty.row_bytes(k).expect("checked by QActs::new");
    assert!(rb > 0, "gemm_q: k must be positive");
    assert!(
        w.len() % rb == 0,
        "gemm_q: {} weight bytes are not whole {} rows of {k}",
        w.len(),
        ty.name()
    );
    let rows = w.len() / rb;
    check_gemm_q_rows(rows, acts, out, ldo);
    (rows, acts.n)
}

/// Checks that `out` (row stride `ldo`) holds `rows` outputs for every token of
/// `acts`. Panics otherwise.
pub(crate) fn check_gemm_q_rows(rows: usize, acts: &QActs, out: &[f32], ldo: usize) {
    let n = acts.n;
    assert!(
        ldo >= rows,
        "gemm_q: ldo {ldo} smaller than the {rows} weight rows"
    );
    assert!(
        n == 0 || (n - 1).checked_mul(ldo).and_then(|v| v.checked_add(rows)).is_some_and(|need| out.len() >= need),
        "gemm_q: output too small"
    );
}

/// Reference: `out[t * ldo + r] = vec_dot(ty, w_r, act_t, k)` for every weight
/// row `r` of `w` and activation row `t` of `acts` (from `quantize_act(ty, ..)`).
pub fn gemm_q(w: &[u8], acts: &QActs, out: &mut [f32], ldo: usize, _scratch: &mut QGemmScratch) {
    gemm_q_with(super::vec_dot, w, acts, out, ldo)
}

/// `gemm_q` as a double loop over a `vec_dot`: the reference, and the fallback of
/// the SIMD tables for types without an interleaved kernel.
pub(crate) fn gemm_q_with(
    dot: fn(GgmlType, &[u8], &[u8], usize) -> f32,
    w: &[u8],
    acts: &QActs,
    out: &mut [f32],
    ldo: usize,
) {
    let (rows, n) = check_gemm_q(w, acts, out, ldo);
    let (ty, k) = (acts.ty, acts.k);
    let rb = ty.row_bytes(k).unwrap();
    let ab = vec_dot_type(ty).row_bytes(k).unwrap();
    for t in 0..n {
        let a = &acts.bytes[t * ab..(t + 1) * ab];
        for r in 0..rows {
            out[t * ldo + r] = dot(ty, &w[r * rb..(r + 1) * rb], a, k);
        }
    }
}

/// Whether `isa`'s `gemm_q` has an interleaved (panel) kernel for `ty` (every
/// SIMD table: q4_0, q8_0, q4_K, q5_K, q6_K). Without one, the SIMD tables loop
/// their `vec_dot` over (row, token) pairs: correct, but for prompts slower than
/// dequantizing the weights into the f32 GEMM.
pub fn has_fast_path(isa: crate::Isa, ty: GgmlType) -> bool {
    isa != crate::Isa::Scalar && has_panel_kernel(ty)
}

/// Whether `isa`'s `gemm_q` is bit-identical to the scalar `vec_dot` for `ty`:
/// always on the scalar path (it is that loop), and wherever the interleaved
/// kernels run ([`has_fast_path`]). Elsewhere the table's `vec_dot` is looped,
/// which differs from the scalar one in the f32 summation order.
pub fn bit_exact(isa: crate::Isa, ty: GgmlType) -> bool {
    isa == crate::Isa::Scalar || has_fast_path(isa, ty)
}

/// The types with an interleaved kernel (`pack_panel` layout) on the SIMD paths.
pub fn has_panel_kernel(ty: GgmlType) -> bool {
    panel_layout(ty).is_some()
}

/// Byte layout of one block (super-block for k-quants) of a packed panel. Every
/// table starts 32-byte aligned relative to the block start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PanelLayout {
    /// Bytes per packed block.
    pub stride: usize,
    /// Elements per block.
    pub elems: usize,
    /// Offset of `PANEL` f32 scales `d` (for q4_0/q8_0, `d` of the block).
    pub d: usize,
    /// Offset of `PANEL` f32 `dmin` (q4_K).
    pub dmin: usize,
    /// Offset of the i16 scale table: per sub-block, 16 × i16 with lanes `2r` and
    /// `2r + 1` = the sub-block scale of row `r` (q4_K: 8 sub-blocks, q6_K: 16).
    pub sc: usize,
    /// Offset of a second i16 table: q4_K mins (per sub-block, lanes `2r, 2r+1` =
    /// min of row `r`); q6_K scale pairs (per pair `p` of 16-element sub-blocks,
    /// lanes `2r` = scale `2p` of row `r`, `2r + 1` = scale `2p + 1`).
    pub sc2: usize,
}

/// Fills each `pb`-byte panel of `buf` by `fill(p, panel)`, zipping each pair
/// ([`zip_panels`], through `zip`) as soon as both are filled, while in cache.
fn fill_panels(buf: &mut [u8], pb: usize, mut zip: Option<&mut Vec<u8>>, mut fill: impl FnMut(usize, &mut [u8])) {
    for p in 0..buf.len() / pb.max(1) {
        fill(p, &mut buf[p * pb..(p + 1) * pb]);
        if let (Some(tmp), 1) = (zip.as_deref_mut(), p % 2) {
            zip_panels(&mut buf[(p - 1) * pb..(p + 1) * pb], tmp);
        }
    }
}

/// Zips the two per-call panels in `two` (its halves) in place: each 32 bytes
/// of the first then the same 32 of the second, so that the paired tiles
/// ([`PanelKernels::tile_pair`]) read a 512-bit vector of both with one load
/// (two loads and an insert apart). Every table of the panel layout is in
/// 32-byte units. `tmp` is scratch (grown to `two`'s length).
pub(crate) fn zip_panels(two: &mut [u8], tmp: &mut Vec<u8>) {
    // `%`, not `is_multiple_of`: that needs Rust 1.87, the workspace says 1.80.
    assert!(two.len() % 64 == 0, "zip_panels: panels of 32-byte units");
    let half = two.len() / 2;
    tmp.clear();
    tmp.extend_from_slice(two);
    let (a, b) = tmp.split_at(half);
    for ((out, a), b) in two.chunks_exact_mut(64).zip(a.chunks_exact(32)).zip(b.chunks_exact(32)) {
        out[..32].copy_from_slice(a);
        out[32..].copy_from_slice(b);
    }
}

pub(crate) fn panel_layout(ty: GgmlType) -> Option<PanelLayout> {
    use GgmlType::*;
    let q = |elems: usize| elems * PANEL; // unpacked quant bytes of a block
    Some(match ty {
        Q4_0 | Q8_0 => PanelLayout {
            stride: q(32) + 32,
            elems: 32,
            d: q(32),
            dmin: 0,
            sc: 0,
            sc2: 0,
        },
        // quants 2048, d 32, dmin 32, scales 8 × 32, mins 8 × 32 (q5_K's
        // quants are a byte each too)
        Q4K | Q5K => PanelLayout {
            stride: q(256) + 64 + 512,
            elems: 256,
            d: q(256),
            dmin: q(256) + 32,
            sc: q(256) + 64,
            sc2: q(256) + 64 + 256,
        },
        // quants 2048, d 32, scales 16 × 32, scale pairs 8 × 32
        Q6K => PanelLayout {
            stride: q(256) + 32 + 768,
            elems: 256,
            d: q(256),
            dmin: 0,
            sc: q(256) + 32,
            sc2: q(256) + 32 + 512,
        },
        _ => return None,
    })
}

/// Packs weight rows `rows` (each `rb` bytes of `ty`, `k` elements; at most
/// [`PANEL`], missing rows packed as zeros) into `out` in the interleaved layout
/// of [`panel_layout`]`(ty)`: for block `b`, group `g` (elements `4g..4g+4` of the
/// block), row `r`: byte `b * stride + 32 g + 4 r + i` = quant `4g + i` of row `r`,
/// unpacked (q4_0 and q4_K: the unsigned nibble; q8_0: the signed byte; q5_K
/// and q6_K: the unsigned 5- or 6-bit value), followed by the scale tables. Word-at-a-time (4 quants
/// per u32 operation): the packing is a small fraction of the products.
pub(crate) fn pack_panel(ty: GgmlType, w: &[u8], rb: usize, k: usize, out: &mut [u8]) {
    let l = panel_layout(ty).expect("pack_panel: type without a panel layout");
    let nb = k / l.elems;
    let rows = if rb == 0 { 0 } else { w.len() / rb };
    assert!(
        ty.row_bytes(k) == Some(rb)
            && rows <= PANEL
            && w.len() == rows * rb
            && out.len() >= nb * l.stride,
        "pack_panel: bad shapes"
    );
    // Full panels overwrite every byte of every block (all quants, all tables).
    if rows < PANEL {
        out[..nb * l.stride].fill(0);
    }
    const NIB: u32 = 0x0F0F_0F0F;
    let bb = ty.block_bytes();
    // SAFETY: every read is inside row `r < rows` (`rb = nb · bb` bytes) of `w`, at
    // block offsets + field offsets < bb; every write is inside block `b < nb` of
    // `out` (`stride` bytes) at the layout's offsets: checked by the assert above.
    unsafe {
        let rd = |p: *const u8| (p as *const u32).read_unaligned();
        let wr = |p: *mut u8, v: u32| (p as *mut u32).write_unaligned(v);
        let wf = |p: *mut u8, v: f32| (p as *mut f32).write_unaligned(v);
        let wh = |p: *mut u8, v: i16| (p as *mut i16).write_unaligned(v);
        let f16 = |p: *const u8| half::f16::from_bits((p as *const u16).read_unaligned()).to_f32();
        // q4_K's and q5_K's tables of row `r`: d, dmin, and each sub-block's
        // 6-bit scale and min as i16 pairs.
        let k_scales = |o: *mut u8, r: usize, blk: *const u8, dmin: usize, scales: usize| {
            wf(o.add(l.d + 4 * r), f16(blk));
            wf(o.add(l.dmin + 4 * r), f16(blk.add(dmin)));
            let scales = core::slice::from_raw_parts(blk.add(scales), 12);
            for sb in 0..8 {
                let (sc, m) = scale_min_k4(sb, scales);
                for h in 0..2 {
                    wh(o.add(l.sc + 32 * sb + 4 * r + 2 * h), sc as i16);
                    wh(o.add(l.sc2 + 32 * sb + 4 * r + 2 * h), m as i16);
                }
            }
        };
        for r in 0..rows {
            for b in 0..nb {
                let blk = w.as_ptr().add(r * rb + b * bb);
                let o = out.as_mut_ptr().add(b * l.stride);
                let q = |g: usize| o.add(32 * g + 4 * r);
                match ty {
                    GgmlType::Q4_0 => {
                        for i in 0..4 {
                            let v = rd(blk.add(2 + 4 * i));
                            wr(q(i), v & NIB);
                            wr(q(i + 4), (v >> 4) & NIB);
                        }
                        wf(o.add(l.d + 4 * r), f16(blk));
                    }
                    GgmlType::Q8_0 => {
                        for g in 0..8 {
                            wr(q(g), rd(blk.add(2 + 4 * g)));
                        }
                        wf(o.add(l.d + 4 * r), f16(blk));
                    }
                    GgmlType::Q4K => {
                        // Chunk j (64 elements) = low nibbles (sub-block 2j) then high
                        // nibbles (sub-block 2j + 1) of qs[32j..32j + 32].
                        for j in 0..4 {
                            for i in 0..8 {
                                let v = rd(blk.add(Q4K_QS + 32 * j + 4 * i));
                                wr(q(16 * j + i), v & NIB);
                                wr(q(16 * j + 8 + i), (v >> 4) & NIB);
                            }
                        }
                        k_scales(o, r, blk, Q4K_DMIN, Q4K_SCALES);
                    }
                    GgmlType::Q5K => {
                        // As q4_K, each nibble with its fifth bit: bit 2j of
                        // qh[l] for the low nibble of qs[32j + l], bit 2j + 1 for
                        // the high one.
                        for j in 0..4 {
                            for i in 0..8 {
                                let v = rd(blk.add(Q5K_QS + 32 * j + 4 * i));
                                let h = rd(blk.add(Q5K_QH + 4 * i));
                                let bit = |b: usize| ((h >> b) & 0x0101_0101) << 4;
                                wr(q(16 * j + i), (v & NIB) | bit(2 * j));
                                wr(q(16 * j + 8 + i), ((v >> 4) & NIB) | bit(2 * j + 1));
                            }
                        }
                        k_scales(o, r, blk, Q5K_DMIN, Q5K_SCALES);
                    }
                    GgmlType::Q6K => {
                        // Element 128n + 32s + l: low nibble of ql[64n + 32(s % 2) + l]
                        // (high nibble for s ≥ 2), high bits (qh[32n + l] >> 2s) & 3.
                        for n in 0..2 {
                            for i in 0..8 {
                                let (l0, l1) = (
                                    rd(blk.add(64 * n + 4 * i)),
                                    rd(blk.add(64 * n + 32 + 4 * i)),
                                );
                                let h = rd(blk.add(Q6K_QH + 32 * n + 4 * i));
                                let hi = |s: usize| ((h >> (2 * s)) & 0x0303_0303) << 4;
                                wr(q(32 * n + i), (l0 & NIB) | hi(0));
                                wr(q(32 * n + 8 + i), (l1 & NIB) | hi(1));
                                wr(q(32 * n + 16 + i), ((l0 >> 4) & NIB) | hi(2));
                                wr(q(32 * n + 24 + i), ((l1 >> 4) & NIB) | hi(3));
                            }
                        }
                        wf(o.add(l.d + 4 * r), f16(blk.add(Q6K_D)));
                        let sc = |j: usize| *blk.add(Q6K_SCALES + j) as i8 as i16;
                        for j in 0..16 {
                            wh(o.add(l.sc + 32 * j + 4 * r), sc(j));
                            wh(o.add(l.sc + 32 * j + 4 * r + 2), sc(j));
                        }
                        for p in 0..8 {
                            wh(o.add(l.sc2 + 32 * p + 4 * r), sc(2 * p));
                            wh(o.add(l.sc2 + 32 * p + 4 * r + 2), sc(2 * p + 1));
                        }
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_row, GgmlType};

    /// Unpacks a packed panel's quants back to per-row element order.
    fn unpacked(ty: GgmlType, packed: &[u8], k: usize, r: usize) -> Vec<u8> {
        let l = panel_layout(ty).unwrap();
        (0..k)
            .map(|e| packed[(e / l.elems) * l.stride + 32 * ((e % l.elems) / 4) + 4 * r + e % 4])
            .collect()
    }

    #[test]
    fn pack_panel_puts_each_element_in_its_lane() {
        // 5 rows: padding lanes must be zero; 8 rows: every byte is overwritten
        // (the buffer starts as 0xAA garbage and is not cleared for full panels).
        for (ty, rows) in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K]
            .into_iter()
            .flat_map(|t| [(t, 5), (t, 8)])
        {
            let k = 512;
            let rb = ty.row_bytes(k).unwrap();
            let mut w = vec![0u8; rows * rb];
            for r in 0..rows {
                let x: Vec<f32> = (0..k)
                    .map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0 + r as f32 * 0.3)
                    .collect();
                quantize_row(ty, &x, &mut w[r * rb..(r + 1) * rb]).unwrap();
            }
            let l = panel_layout(ty).unwrap();
            let mut p = vec![0xAAu8; (k / l.elems) * l.stride];
            pack_panel(ty, &w, rb, k, &mut p);
            for r in 0..PANEL {
                let got = unpacked(ty, &p, k, r);
                if r >= rows {
                    assert!(got.iter().all(|&v| v == 0));
                    continue;
                }
                // Dequantize the packed values with the scales and compare.
                let mut want = vec![0f32; k];
                crate::quant::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut want).unwrap();
                let f = |at: usize| f32::from_le_bytes(p[at..at + 4].try_into().unwrap());
                let i16_ = |at: usize| i16::from_le_bytes(p[at..at + 2].try_into().unwrap()) as f32;
                for e in 0..k {
                    let (b, j) = (e / l.elems, e % l.elems);
                    let o = b * l.stride;
                    let v = got[e];
                    let deq = match ty {
                        GgmlType::Q4_0 => f(o + l.d + 4 * r) * (v as f32 - 8.0),
                        GgmlType::Q8_0 => f(o + l.d + 4 * r) * (v as i8 as f32),
                        GgmlType::Q4K | GgmlType::Q5K => {
                            let sb = j / 32;
                            f(o + l.d + 4 * r) * i16_(o + l.sc + 32 * sb + 4 * r) * v as f32
                                - f(o + l.dmin + 4 * r) * i16_(o + l.sc2 + 32 * sb + 4 * r)
                        }
                        GgmlType::Q6K => {
                            let sb = j / 16;
                            assert_eq!(
                                i16_(o + l.sc + 32 * sb + 4 * r),
                                i16_(o + l.sc2 + 32 * (sb / 2) + 4 * r + 2 * (sb % 2))
                            );
                            f(o + l.d + 4 * r)
                                * i16_(o + l.sc + 32 * sb + 4 * r)
                                * (v as f32 - 32.0)
                        }
                        _ => unreachable!(),
                    };
                    assert_eq!(deq, want[e], "{} row {r} element {e}", ty.name());
                }
            }
        }
    }
}
