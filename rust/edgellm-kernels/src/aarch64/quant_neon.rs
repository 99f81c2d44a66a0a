//! NEON dot products of quantized weight rows with quantized activations.
//!
//! Each kernel exists twice: with `sdot` (ARMv8.2 dotprod, e.g. Cortex-A55/A76,
//! Apple M, Graviton 2+) and with plain widening multiplies (`smull` + `sadalp`,
//! e.g. Cortex-A53/A72); the prompt GEMM of q4_0/q8_0 has a third form with
//! `smmla` (ARMv8.6 i8mm). The entries are generic over the level (`PLAIN`,
//! `DOTPROD`, `I8MM`), one kernel table per level (`Isa::Neon`, `Isa::Dotprod`,
//! `Isa::I8mm`), so `EDGELLM_ISA` can force each one the CPU has.
//!
//! SIMD paths: q4_0, q8_0, edgellm's low-bit q3/q2 formats (`lowbit_neon`; against q8_0) and q4_K, q5_K, q6_K, q8_K (against
//! q8_K); the other types use the scalar reference, the float types the table's
//! f32 dot. Activation quantization to q8_0 and q8_K is vectorised and
//! bit-identical to the scalar reference (`frinta` is C's `roundf`, `frintn`
//! ggml's `nearest_int`).

use super::resident_kquant_neon::{self, KQuant};
use crate::quant::{self, GgmlType};
use core::arch::aarch64::*;

/// Quantizes an activation row to `vec_dot_type(ty)`, bit-identical to
/// [`quant::quantize_act`].
pub(crate) fn quantize_act(ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    let at = quant::vec_dot_type(ty);
    let ok = ty.row_bytes(x.len()).is_some() && at.row_bytes(x.len()) == Some(dst.len());
    match at {
        // Sound: NEON is part of every aarch64 CPU this table is handed out on.
        GgmlType::Q8_0 if ok => unsafe { imp::quantize_q8_0(x, dst) },
        GgmlType::Q8K if ok => unsafe { imp::quantize_q8_k(x, dst) },
        _ => quant::quantize_act(ty, x, dst), // floats, and the length-error panic
    }
}

/// Levels of the NEON tables: plain NEON, with `sdot`, with `sdot` and `smmla`.
pub(crate) const PLAIN: u8 = 0;
pub(crate) const DOTPROD: u8 = 1;
pub(crate) const I8MM: u8 = 2;

/// `Σ dequant(w)·dequant(act)` over `n` elements (see [`crate::Kernels::vec_dot`]).
pub(crate) fn vec_dot<const L: u8>(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    quant::check_vec_dot(ty, w, act, n);
    // Sound: lengths checked; the table of level L is only handed out after
    // NEON (and, for the dotprod and i8mm levels, dotprod) was detected.
    unsafe { vec_dot_unchecked::<L>(ty, w, act, n) }
}

/// [`vec_dot`] without the length checks (the GEMV checks its rows once per
/// call instead of once per row).
///
/// # Safety
/// `quant::check_vec_dot(ty, w, act, n)` would pass, and the CPU has the
/// features of level `L`.
#[inline]
unsafe fn vec_dot_unchecked<const L: u8>(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    let nb = n / ty.block_elems();
    let dot = L >= DOTPROD;
    use GgmlType::*;
    unsafe {
        match (ty, dot) {
            (Q8_0, true) => imp::q8_0_dot(w, act, nb),
            (Q8_0, false) => imp::q8_0_neon(w, act, nb),
            (Q4_0, true) => imp::q4_0_dot(w, act, nb),
            (Q4_0, false) => imp::q4_0_neon(w, act, nb),
            (Q4K, true) => imp::q4_k_dot(w, act, nb),
            (Q4K, false) => imp::q4_k_neon(w, act, nb),
            (Q5K, true) => imp::q5_k_dot(w, act, nb),
            (Q5K, false) => imp::q5_k_neon(w, act, nb),
            (Q6K, true) => imp::q6_k_dot(w, act, nb),
            (Q6K, false) => imp::q6_k_neon(w, act, nb),
            (Q8K, true) => imp::q8_k_dot(w, act, nb),
            (Q8K, false) => imp::q8_k_neon(w, act, nb),
            (Q3G128 | Q3AG128 | Q2G128 | Q2AG128, _) => {
                super::lowbit_neon::vec_dot(ty, w, act, nb, dot)
            }
            (F32 | F16 | BF16, _) => quant::float_dot(ty, w, act, n, super::neon::KERNELS.dot_f32),
            (NF4 | F8E4M3 | F8E5M2, _) => super::nf4_fp8_neon::vec_dot(ty, w, act, nb),
            _ => quant::vec_dot_unchecked(ty, w, act, n),
        }
    }
}

/// Decode GEMV (see [`crate::Kernels::gemv_q`]): this path's `vec_dot` per row.
pub(crate) fn gemv_q<const L: u8>(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = quant::check_gemv(ty, w, act, n, out.len());
    for (r, y) in out.iter_mut().enumerate() {
        // Sound: `check_gemv` checked every row's length and the act's; the
        // table of level L is only handed out on CPUs with its features.
        *y = unsafe { vec_dot_unchecked::<L>(ty, &w[r * rb..(r + 1) * rb], act, n) };
    }
}

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` (see [`crate::Kernels::gemm_q`]).
/// q4_0, q8_0, q4_K, q5_K and q6_K: panels of 8 weight rows repacked into the
/// interleaved layout (see [`quant::qgemm`]) times tiles of up to 4 tokens.
/// Plain and dotprod: per 4-element group, each token's 4 activation bytes are
/// broadcast and dotted with 4 rows at once (`sdot`, or `smull` + pairwise
/// adds), so each i32 lane holds one row (the k-quants in
/// [`super::qgemm_kquant_neon`]). i8mm, q4_0 and q8_0: the panel is regrouped
/// into row pairs of 8-element runs and each `smmla` multiplies 2 rows by 2
/// tokens over 8 elements. All are bit-identical to the scalar `vec_dot`.
/// Other types: the NEON `vec_dot` per (row, token) pair.
pub(crate) fn gemm_q<const L: u8>(
    w: &[u8],
    qa: &quant::qgemm::QActs,
    out: &mut [f32],
    ldo: usize,
    s: &mut quant::qgemm::QGemmScratch,
) {
    if quant::qgemm::has_panel_kernel(qa.ty()) {
        quant::qgemm::gemm_q_panels(&NeonPanels::<L>, w, qa, out, ldo, s)
    } else {
        quant::qgemm::gemm_q_with(vec_dot::<L>, w, qa, out, ldo)
    }
}

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` on resident panels (see
/// [`crate::Kernels::gemm_q_resident`]): the `sdot` tile (i8mm CPUs have
/// dotprod; the resident layout is not `smmla`'s) or the plain one.
pub(crate) fn gemm_q_resident<const L: u8>(ty: GgmlType, w: &[u8], qa: &quant::qgemm::QActs, out: &mut [f32], ldo: usize) {
    quant::qgemm::gemm_q_resident_panels(&NeonPanels::<L>, ty, w, qa, out, ldo)
}

/// The NEON tile kernels (q4_0, q8_0; the k-quants') of level `L`. Only built by [`gemm_q`]
/// and [`gemm_q_resident`], which only the table of that level reaches.
struct NeonPanels<const L: u8>;

/// The weight types of the NEON resident tiles (the k-quants' in
/// [`super::resident_kquant_neon`]).
pub(crate) const RESIDENT_TYPES: &[GgmlType] = &[GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

impl<const L: u8> quant::qgemm::ResidentKernels for NeonPanels<L> {
    const TYPES: &'static [GgmlType] = RESIDENT_TYPES;

    unsafe fn resident_tile(&self, ty: GgmlType, x: &quant::qgemm::PanelTile, tokens: usize, res: &mut [[f32; 8]; 4]) {
        match ty {
            GgmlType::Q4_0 => imp::resident_tiles::<imp::ResidentQ4>(L != PLAIN, x, tokens, res),
            GgmlType::Q8_0 => imp::resident_tiles::<imp::ResidentQ8>(L != PLAIN, x, tokens, res),
            GgmlType::Q4K => resident_kquant_neon::tile(KQuant::Q4K, L != PLAIN, x, tokens, res),
            GgmlType::Q5K => resident_kquant_neon::tile(KQuant::Q5K, L != PLAIN, x, tokens, res),
            GgmlType::Q6K => resident_kquant_neon::tile(KQuant::Q6K, L != PLAIN, x, tokens, res),
            _ => unreachable!("no NEON resident tile for {}", ty.name()),
        }
    }
}

impl<const L: u8> quant::qgemm::PanelKernels for NeonPanels<L> {
    fn pack(
        &self,
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        k: usize,
        l: quant::qgemm::PanelLayout,
        out: &mut [u8],
    ) {
        quant::qgemm::pack_panel(ty, w, rb, k, out);
        if L == I8MM && !is_k_quant(ty) {
            for blk in out.chunks_exact_mut(l.stride).take(k / l.elems) {
                pair_rows(&mut blk[..32 * quant::qgemm::PANEL]);
            }
        }
    }

    unsafe fn tile(
        &self,
        ty: GgmlType,
        x: &quant::qgemm::PanelTile,
        tokens: usize,
        res: &mut [[f32; 8]; 4],
    ) {
        if is_k_quant(ty) {
            // i8mm CPUs have dotprod; the k-quant panels are not `smmla`'s.
            return super::qgemm_kquant_neon::tile(ty == GgmlType::Q6K, L != PLAIN, x, tokens, res);
        }
        match (L, tokens) {
            (I8MM, 3 | 4) => imp::panel_tile_mm::<2>(x, tokens, res),
            (I8MM, _) => imp::panel_tile_mm::<1>(x, tokens, res),
            (DOTPROD, 4) => imp::panel_tile_dot::<4>(x, res),
            (DOTPROD, 3) => imp::panel_tile_dot::<3>(x, res),
            (DOTPROD, 2) => imp::panel_tile_dot::<2>(x, res),
            (DOTPROD, _) => imp::panel_tile_dot::<1>(x, res),
            (_, 4) => imp::panel_tile_neon::<4>(x, res),
            (_, 3) => imp::panel_tile_neon::<3>(x, res),
            (_, 2) => imp::panel_tile_neon::<2>(x, res),
            (_, _) => imp::panel_tile_neon::<1>(x, res),
        }
    }
}

/// q4_K, q5_K and q6_K: the k-quants with panel tiles
/// ([`super::qgemm_kquant_neon`]).
fn is_k_quant(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// Regroups the 256 quant bytes of one packed 32-element block from the
/// interleaved layout (byte `32g + 4r + i` = element `4g + i` of row `r`) into
/// the `smmla` operand layout: for 8-element run `h` and row pair `p`, 16 bytes
/// at `64h + 16p` = elements `8h..8h + 8` of row `2p`, then of row `2p + 1`.
fn pair_rows(q: &mut [u8]) {
    let src: [u8; 256] = q[..256].try_into().expect("a block's 256 quant bytes");
    for r in 0..8 {
        for e in 0..32 {
            let (h, j) = (e / 8, e % 8);
            q[64 * h + 16 * (r / 2) + 8 * (r % 2) + j] = src[32 * (e / 4) + 4 * r + e % 4];
        }
    }
}

pub(super) mod imp {
    use super::*;
    use crate::quant::blocks::*;
    use core::arch::asm;

    /// f16 bits to f32 with the base-ARMv8 `fcvt` (no FEAT_FP16 needed).
    #[inline(always)]
    pub(in crate::aarch64) unsafe fn f16_ld(p: *const u8) -> f32 {
        let bits = (p as *const u16).read_unaligned();
        let x = f32::from_bits(bits as u32);
        let out: f32;
        asm!("fcvt {o:s}, {i:h}", o = out(vreg) out, i = in(vreg) x, options(pure, nomem, nostack));
        out
    }

    #[inline(always)]
    unsafe fn f32_ld(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }

    #[inline(always)]
    unsafe fn ld_s8(p: *const u8) -> int8x16_t {
        vld1q_s8(p as *const i8)
    }

    #[inline(always)]
    unsafe fn ld_u8(p: *const u8) -> uint8x16_t {
        vld1q_u8(p)
    }

    /// `acc += ` the 4-lane partial sums of `a · b` (16 signed bytes each). With
    /// `DOT`, one `sdot` (only call it from a `dotprod` function); else widening
    /// multiplies and pairwise accumulation (the lanes then hold other partial
    /// sums, but their total is the same).
    #[inline(always)]
    pub(in crate::aarch64) unsafe fn dot16<const DOT: bool>(
        acc: int32x4_t,
        a: int8x16_t,
        b: int8x16_t,
    ) -> int32x4_t {
        if DOT {
            let mut acc = acc;
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack)
            );
            acc
        } else {
            let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p1 = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, p0), p1)
        }
    }

    /// Σ over 32 elements given as two halves.
    #[inline(always)]
    unsafe fn dot32<const DOT: bool>(
        a0: int8x16_t,
        a1: int8x16_t,
        b0: int8x16_t,
        b1: int8x16_t,
    ) -> int32x4_t {
        dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), a0, b0), a1, b1)
    }

    /// 32 integral values (|v| ≤ 127) as 8 × i32x4, narrowed to bytes at `out`.
    #[inline(always)]
    unsafe fn pack_i8(q: [int32x4_t; 8], out: *mut u8) {
        for h in 0..2 {
            let a = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
            let b = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
            vst1q_s8(
                out.add(16 * h) as *mut i8,
                vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)),
            );
        }
    }

    /// q8_0: `d = max|x| / 127`, `q = roundf(x · (1/d))`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
        for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
            let v: [float32x4_t; 8] = core::array::from_fn(|i| vld1q_f32(xb.as_ptr().add(4 * i)));
            let mut m = vabsq_f32(v[0]);
            for vi in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vi));
            }
            let d = vmaxvq_f32(m) / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
            pack_i8(
                v.map(|vi| vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(vi, id)))),
                b.as_mut_ptr().add(Q8_0_QS),
            );
        }
    }

    /// q8_K: `iscale = -127 / max` (max the first element of largest |x|, signed),
    /// `q = min(127, nearest_int(iscale · x))`, `d = 1 / iscale`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_q8_k(x: &[f32], y: &mut [u8]) {
        let q127 = vdupq_n_f32(127.0);
        for (xb, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(292)) {
            let mut m = vdupq_n_f32(0.0);
            for j in 0..64 {
                m = vmaxq_f32(m, vabsq_f32(vld1q_f32(xb.as_ptr().add(4 * j))));
            }
            let amax = vmaxvq_f32(m);
            if amax == 0.0 {
                b.fill(0);
                continue;
            }
            let max = *xb.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
            let iscale = -127.0 / max;
            for j in 0..8 {
                let q: [int32x4_t; 8] = core::array::from_fn(|i| {
                    let t = vmulq_n_f32(vld1q_f32(xb.as_ptr().add(32 * j + 4 * i)), iscale);
                    vcvtq_s32_f32(vminq_f32(vrndnq_f32(t), q127))
                });
                pack_i8(q, b.as_mut_ptr().add(Q8K_QS + 32 * j));
            }
            for j in 0..16 {
                let sum: i32 = b[Q8K_QS + 16 * j..Q8K_QS + 16 * j + 16]
                    .iter()
                    .map(|&q| q as i8 as i32)
                    .sum();
                b[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2]
                    .copy_from_slice(&(sum as i16).to_le_bytes());
            }
            b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }

    /// Defines `$dot` (with the dotprod feature) and `$neon` (without) around one
    /// generic body `$body::<DOT>(w, a, nb)`.
    macro_rules! variants {
        ($body:ident, $dot:ident, $neon:ident) => {
            #[target_feature(enable = "neon,dotprod")]
            pub(super) unsafe fn $dot(w: &[u8], a: &[u8], nb: usize) -> f32 {
                $body::<true>(w.as_ptr(), a.as_ptr(), nb)
            }
            #[target_feature(enable = "neon")]
            pub(super) unsafe fn $neon(w: &[u8], a: &[u8], nb: usize) -> f32 {
                $body::<false>(w.as_ptr(), a.as_ptr(), nb)
            }
        };
    }

    variants!(q8_0, q8_0_dot, q8_0_neon);
    variants!(q4_0, q4_0_dot, q4_0_neon);
    variants!(q4_k, q4_k_dot, q4_k_neon);
    variants!(q5_k, q5_k_dot, q5_k_neon);
    variants!(q6_k, q6_k_dot, q6_k_neon);
    variants!(q8_k, q8_k_dot, q8_k_neon);

    /// The shared body of the 32-element formats dotted with q8_0 activations:
    /// `weights(block)` gives a block's 32 values as two signed-byte vectors; the f16
    /// scale is each block's first two bytes. Alternate blocks feed two accumulators.
    #[inline(always)]
    unsafe fn blocks32<const DOT: bool>(
        wp: *const u8,
        ap: *const u8,
        nb: usize,
        block_bytes: usize,
        weights: impl Fn(*const u8) -> (int8x16_t, int8x16_t),
    ) -> f32 {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        for i in 0..nb {
            let (wb, ab) = (wp.add(block_bytes * i), ap.add(34 * i));
            let (lo, hi) = weights(wb);
            let p = dot32::<DOT>(lo, hi, ld_s8(ab.add(2)), ld_s8(ab.add(18)));
            let d = f16_ld(wb) * f16_ld(ab);
            if i % 2 == 0 {
                acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p), d);
            } else {
                acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p), d);
            }
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }

    #[inline(always)]
    unsafe fn q8_0<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        blocks32::<DOT>(wp, ap, nb, 34, |wb| (ld_s8(wb.add(2)), ld_s8(wb.add(18))))
    }

    #[inline(always)]
    unsafe fn q4_0<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        let m4 = vdupq_n_u8(0x0F);
        let eight = vdupq_n_s8(8);
        blocks32::<DOT>(wp, ap, nb, 18, |wb| {
            let q = ld_u8(wb.add(2));
            let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
            let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), eight);
            (lo, hi)
        })
    }

    /// q4_K/q5_K scales (0..8) and mins (8..16) from the 12 packed bytes.
    #[inline(always)]
    unsafe fn k4_scales_mins(p: *const u8) -> [u8; 16] {
        let q = core::slice::from_raw_parts(p, 12);
        let mut out = [0u8; 16];
        for j in 0..8 {
            let (s, m) = crate::quant::scale_min_k4(j, q);
            out[j] = s;
            out[8 + j] = m;
        }
        out
    }

    /// `Σ_j mins[j] · (bsums[2j] + bsums[2j+1])` of a q8_K block.
    #[inline(always)]
    unsafe fn mins_dot(sm: &[u8; 16], ab: *const u8) -> i32 {
        let b0 = vld1q_s16(ab.add(Q8K_BSUMS) as *const i16);
        let b1 = vld1q_s16(ab.add(Q8K_BSUMS + 16) as *const i16);
        let pairs = vpaddq_s16(b0, b1);
        let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(sm.as_ptr().add(8))));
        let p = vmull_s16(vget_low_s16(pairs), vget_low_s16(mins));
        let p = vmlal_high_s16(p, pairs, mins);
        vaddvq_s32(p)
    }

    /// q4_K (`FIVE = false`) and q5_K.
    #[inline(always)]
    unsafe fn q45_k<const DOT: bool, const FIVE: bool>(
        wp: *const u8,
        ap: *const u8,
        nb: usize,
    ) -> f32 {
        let (bw, dmin_at, sc_at, qs_at) = if FIVE {
            (176, Q5K_DMIN, Q5K_SCALES, Q5K_QS)
        } else {
            (144, Q4K_DMIN, Q4K_SCALES, Q4K_QS)
        };
        let m4 = vdupq_n_u8(0x0F);
        let b4 = vdupq_n_u8(0x10);
        let mut sum = 0f32;
        for i in 0..nb {
            let (wb, ab) = (wp.add(bw * i), ap.add(292 * i));
            let da = f32_ld(ab);
            let sm = k4_scales_mins(wb.add(sc_at));
            let msum = mins_dot(&sm, ab);
            let (mut h0, mut h1) = (vdupq_n_u8(0), vdupq_n_u8(0));
            if FIVE {
                h0 = ld_u8(wb.add(Q5K_QH));
                h1 = ld_u8(wb.add(Q5K_QH + 16));
            }
            let mut isum = 0i32;
            for j in 0..4 {
                let q0 = ld_u8(wb.add(qs_at + 32 * j));
                let q1 = ld_u8(wb.add(qs_at + 32 * j + 16));
                let y = ab.add(Q8K_QS + 64 * j);
                let (mut l0, mut l1) = (vandq_u8(q0, m4), vandq_u8(q1, m4));
                let (mut u0, mut u1) = (vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1));
                if FIVE {
                    // Bit 0 (1) of the shifted qh: fifth bit of the low (high) nibbles.
                    l0 = vorrq_u8(l0, vandq_u8(vshlq_n_u8::<4>(h0), b4));
                    l1 = vorrq_u8(l1, vandq_u8(vshlq_n_u8::<4>(h1), b4));
                    u0 = vorrq_u8(u0, vandq_u8(vshlq_n_u8::<3>(h0), b4));
                    u1 = vorrq_u8(u1, vandq_u8(vshlq_n_u8::<3>(h1), b4));
                    h0 = vshrq_n_u8::<2>(h0);
                    h1 = vshrq_n_u8::<2>(h1);
                }
                let pl = dot32::<DOT>(
                    vreinterpretq_s8_u8(l0),
                    vreinterpretq_s8_u8(l1),
                    ld_s8(y),
                    ld_s8(y.add(16)),
                );
                let ph = dot32::<DOT>(
                    vreinterpretq_s8_u8(u0),
                    vreinterpretq_s8_u8(u1),
                    ld_s8(y.add(32)),
                    ld_s8(y.add(48)),
                );
                isum += vaddvq_s32(pl) * sm[2 * j] as i32 + vaddvq_s32(ph) * sm[2 * j + 1] as i32;
            }
            sum += f16_ld(wb) * da * isum as f32 - f16_ld(wb.add(dmin_at)) * da * msum as f32;
        }
        sum
    }

    #[inline(always)]
    unsafe fn q4_k<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        q45_k::<DOT, false>(wp, ap, nb)
    }

    #[inline(always)]
    unsafe fn q5_k<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        q45_k::<DOT, true>(wp, ap, nb)
    }

    #[inline(always)]
    unsafe fn q6_k<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        let m4 = vdupq_n_u8(0x0F);
        let m3 = vdupq_n_u8(0x03);
        let mut sum = 0f32;
        for i in 0..nb {
            let (wb, ab) = (wp.add(210 * i), ap.add(292 * i));
            let sc = wb.add(Q6K_SCALES) as *const i8;
            // The -32 offset of every 6-bit value, via the activation's 16-element sums.
            let s = vld1q_s8(sc);
            let b0 = vld1q_s16(ab.add(Q8K_BSUMS) as *const i16);
            let b1 = vld1q_s16(ab.add(Q8K_BSUMS + 16) as *const i16);
            let (s0, s1) = (vmovl_s8(vget_low_s8(s)), vmovl_high_s8(s));
            let off = vmlal_high_s16(vmull_s16(vget_low_s16(s0), vget_low_s16(b0)), s0, b0);
            let off = vmlal_high_s16(vmlal_s16(off, vget_low_s16(s1), vget_low_s16(b1)), s1, b1);
            let mut isum = -32 * vaddvq_s32(off);
            for h in 0..2 {
                let ql = wb.add(64 * h);
                let (ql0, ql1, ql2, ql3) = (
                    ld_u8(ql),
                    ld_u8(ql.add(16)),
                    ld_u8(ql.add(32)),
                    ld_u8(ql.add(48)),
                );
                let qh0 = ld_u8(wb.add(Q6K_QH + 32 * h));
                let qh1 = ld_u8(wb.add(Q6K_QH + 32 * h + 16));
                let y = ab.add(Q8K_QS + 128 * h);
                // Group s (32 elements) takes nibbles of ql[0..32] (s even) or ql[32..64],
                // low (s < 2) or high, and bits 2s..2s+2 of qh.
                let groups = [
                    (vandq_u8(ql0, m4), vandq_u8(ql1, m4), qh0, qh1),
                    (
                        vandq_u8(ql2, m4),
                        vandq_u8(ql3, m4),
                        vshrq_n_u8::<2>(qh0),
                        vshrq_n_u8::<2>(qh1),
                    ),
                    (
                        vshrq_n_u8::<4>(ql0),
                        vshrq_n_u8::<4>(ql1),
                        vshrq_n_u8::<4>(qh0),
                        vshrq_n_u8::<4>(qh1),
                    ),
                    (
                        vshrq_n_u8::<4>(ql2),
                        vshrq_n_u8::<4>(ql3),
                        vshrq_n_u8::<6>(qh0),
                        vshrq_n_u8::<6>(qh1),
                    ),
                ];
                for (g, &(lo0, lo1, hi0, hi1)) in groups.iter().enumerate() {
                    let q0 = vorrq_u8(lo0, vshlq_n_u8::<4>(vandq_u8(hi0, m3)));
                    let q1 = vorrq_u8(lo1, vshlq_n_u8::<4>(vandq_u8(hi1, m3)));
                    let p0 = dot16::<DOT>(
                        vdupq_n_s32(0),
                        vreinterpretq_s8_u8(q0),
                        ld_s8(y.add(32 * g)),
                    );
                    let p1 = dot16::<DOT>(
                        vdupq_n_s32(0),
                        vreinterpretq_s8_u8(q1),
                        ld_s8(y.add(32 * g + 16)),
                    );
                    let k = 8 * h + 2 * g;
                    isum +=
                        vaddvq_s32(p0) * *sc.add(k) as i32 + vaddvq_s32(p1) * *sc.add(k + 1) as i32;
                }
            }
            sum += f16_ld(wb.add(Q6K_D)) * f32_ld(ab) * isum as f32;
        }
        sum
    }

    #[inline(always)]
    unsafe fn q8_k<const DOT: bool>(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
        let mut sum = 0f32;
        for i in 0..nb {
            let (wb, ab) = (wp.add(292 * i), ap.add(292 * i));
            let mut acc = vdupq_n_s32(0);
            for j in 0..16 {
                acc = dot16::<DOT>(
                    acc,
                    ld_s8(wb.add(Q8K_QS + 16 * j)),
                    ld_s8(ab.add(Q8K_QS + 16 * j)),
                );
            }
            sum += f32_ld(wb) * f32_ld(ab) * vaddvq_s32(acc) as f32;
        }
        sum
    }

    use crate::quant::qgemm::PanelTile;

    /// Per 32-bit lane `i`: `acc[i] += Σ_j w[4i + j] · a[4i + j]`, exact (both
    /// variants keep each lane's 4 products in that lane).
    #[inline(always)]
    pub(in crate::aarch64) unsafe fn dot4<const DOT: bool>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        if DOT {
            dot16::<true>(acc, w, a)
        } else {
            // Products of bytes (2i, 2i + 1) summed pairwise: 8 × i16 for rows in
            // pairs of lanes (|sum| ≤ 2 · 128 · 127), then added pairwise into the row.
            let p = vpaddq_s16(
                vmull_s8(vget_low_s8(w), vget_low_s8(a)),
                vmull_high_s8(w, a),
            );
            vpadalq_s16(acc, p)
        }
    }

    /// Where a q4_0/q8_0 tile reads block `b` of its panel (see the x86
    /// `qgemm_avx2::Src`): per row-half (rows 0-3, 4-7), groups `c` and `c + 4`
    /// as one byte per quant, and the eight rows' scales.
    pub(super) trait Src {
        unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> [[int8x16_t; 2]; 2];
        unsafe fn scales(x: &PanelTile, b: usize) -> [float32x4_t; 2];
    }

    /// The per-call panels of `pack_panel`.
    pub(super) struct PerCall;
    impl Src for PerCall {
        #[inline(always)]
        unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> [[int8x16_t; 2]; 2] {
            let wb = x.panel.add(b * x.l.stride);
            let g = |g: usize| [ld_s8(wb.add(32 * g)), ld_s8(wb.add(32 * g + 16))];
            [g(c), g(c + 4)]
        }
        #[inline(always)]
        unsafe fn scales(x: &PanelTile, b: usize) -> [float32x4_t; 2] {
            let d = x.panel.add(b * x.l.stride + x.l.d);
            [vld1q_f32(d as *const f32), vld1q_f32(d.add(16) as *const f32)]
        }
    }

    /// Resident q4_0 panels: one load holds both groups' nibbles.
    pub(super) struct ResidentQ4;
    impl Src for ResidentQ4 {
        #[inline(always)]
        unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> [[int8x16_t; 2]; 2] {
            let q = x.panel.add(quant::resident::block_offsets(x.nb, 128, b).1 + 32 * c);
            let (v0, v1) = (ld_u8(q), ld_u8(q.add(16)));
            let m = vdupq_n_u8(0x0F);
            let lo = |v: uint8x16_t| vreinterpretq_s8_u8(vandq_u8(v, m));
            let hi = |v: uint8x16_t| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
            [[lo(v0), lo(v1)], [hi(v0), hi(v1)]]
        }
        #[inline(always)]
        unsafe fn scales(x: &PanelTile, b: usize) -> [float32x4_t; 2] {
            resident_scales(x.panel.add(quant::resident::block_offsets(x.nb, 128, b).0))
        }
    }

    /// Resident q8_0 panels.
    pub(super) struct ResidentQ8;
    impl Src for ResidentQ8 {
        #[inline(always)]
        unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> [[int8x16_t; 2]; 2] {
            let q = x.panel.add(quant::resident::block_offsets(x.nb, 256, b).1 + 32 * c);
            [[ld_s8(q), ld_s8(q.add(16))], [ld_s8(q.add(128)), ld_s8(q.add(144))]]
        }
        #[inline(always)]
        unsafe fn scales(x: &PanelTile, b: usize) -> [float32x4_t; 2] {
            resident_scales(x.panel.add(quant::resident::block_offsets(x.nb, 256, b).0))
        }
    }

    /// Eight f16 scales at `p` widened (exactly) with the base-ARMv8 `fcvtl`.
    #[inline(always)]
    pub(in crate::aarch64) unsafe fn resident_scales(p: *const u8) -> [float32x4_t; 2] {
        let h = vld1q_u16(p as *const u16);
        let (lo, hi): (float32x4_t, float32x4_t);
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            h = in(vreg) h,
            options(pure, nomem, nostack)
        );
        [lo, hi]
    }

    #[inline(always)]
    unsafe fn panel_tile<S: Src, const DOT: bool, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
        let mut acc = [[vdupq_n_f32(0.0); 2]; T];
        for b in 0..x.nb {
            let mut s32 = [[vdupq_n_s32(0); 2]; T];
            for c in 0..4 {
                for (g, w) in [c, c + 4].into_iter().zip(S::groups(x, b, c)) {
                    for (t, st) in s32.iter_mut().enumerate() {
                        let y = vreinterpretq_s8_s32(vld1q_dup_s32(
                            x.row(t).add(34 * b + 2 + 4 * g) as *const i32
                        ));
                        st[0] = dot4::<DOT>(st[0], w[0], y);
                        st[1] = dot4::<DOT>(st[1], w[1], y);
                    }
                }
            }
            let dw = S::scales(x, b);
            for t in 0..T {
                let da = vdupq_n_f32(*x.da.as_ptr().add(t * x.nb + b));
                let off = if x.sa.is_empty() {
                    vdupq_n_s32(0)
                } else {
                    vdupq_n_s32(*x.sa.as_ptr().add(t * x.nb + b))
                };
                for h in 0..2 {
                    // (d_w · d_a) · isum, then the running sum: the scalar order.
                    let isum = vcvtq_f32_s32(vsubq_s32(s32[t][h], off));
                    acc[t][h] = vaddq_f32(acc[t][h], vmulq_f32(vmulq_f32(dw[h], da), isum));
                }
            }
        }
        for t in 0..T {
            vst1q_f32(res[t].as_mut_ptr(), acc[t][0]);
            vst1q_f32(res[t].as_mut_ptr().add(4), acc[t][1]);
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn panel_tile_dot<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
        panel_tile::<PerCall, true, T>(x, res)
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn panel_tile_neon<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
        panel_tile::<PerCall, false, T>(x, res)
    }

    /// A resident tile of 1..=4 tokens, with `sdot` (`dot`) or without.
    #[inline(always)]
    pub(super) unsafe fn resident_tiles<S: Src>(dot: bool, x: &PanelTile, tokens: usize, res: &mut [[f32; 8]; 4]) {
        match (dot, tokens) {
            (true, 4) => resident_tile_dot::<S, 4>(x, res),
            (true, 3) => resident_tile_dot::<S, 3>(x, res),
            (true, 2) => resident_tile_dot::<S, 2>(x, res),
            (true, _) => resident_tile_dot::<S, 1>(x, res),
            (false, 4) => resident_tile_neon::<S, 4>(x, res),
            (false, 3) => resident_tile_neon::<S, 3>(x, res),
            (false, 2) => resident_tile_neon::<S, 2>(x, res),
            (false, _) => resident_tile_neon::<S, 1>(x, res),
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    unsafe fn resident_tile_dot<S: Src, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
        panel_tile::<S, true, T>(x, res)
    }

    #[target_feature(enable = "neon")]
    unsafe fn resident_tile_neon<S: Src, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
        panel_tile::<S, false, T>(x, res)
    }

    /// `acc += a · bᵀ` for `a`, `b` two 2 × 8 signed-byte matrices (rows of 8
    /// bytes): lanes `[a0·b0, a0·b1, a1·b0, a1·b1]`. Only call it where the CPU
    /// has i8mm (the `I8mm` table).
    #[inline(always)]
    unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        asm!(
            ".arch_extension i8mm",
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        );
        acc
    }

    /// The i8mm tile: `TP` token pairs (the last token repeated to fill a pair;
    /// its results are not stored) against the panel's 4 row pairs, in the
    /// `pair_rows` layout. Per block the exact integer sums of each (row, token),
    /// then `(d_w · d_a) · isum` added in the scalar order.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn panel_tile_mm<const TP: usize>(
        x: &PanelTile,
        tokens: usize,
        res: &mut [[f32; 8]; 4],
    ) {
        let tok = |i: usize| i.min(tokens - 1);
        let mut acc = [[vdupq_n_f32(0.0); TP]; 4];
        for b in 0..x.nb {
            let wb = x.panel.add(b * x.l.stride);
            let mut s32 = [[vdupq_n_s32(0); TP]; 4];
            for h in 0..4 {
                let mut a = [vdupq_n_s8(0); TP];
                for (tp, at) in a.iter_mut().enumerate() {
                    let run =
                        |t: usize| vld1_s8(x.row(tok(t)).add(34 * b + 2 + 8 * h) as *const i8);
                    *at = vcombine_s8(run(2 * tp), run(2 * tp + 1));
                }
                for (p, sp) in s32.iter_mut().enumerate() {
                    let w = ld_s8(wb.add(64 * h + 16 * p));
                    for (st, at) in sp.iter_mut().zip(&a) {
                        *st = smmla(*st, w, *at);
                    }
                }
            }
            let d = [
                vld1q_f32(wb.add(x.l.d) as *const f32),
                vld1q_f32(wb.add(x.l.d + 16) as *const f32),
            ];
            // Row pairs (0,1), (2,3), (4,5), (6,7) as lanes [r, r, r + 1, r + 1].
            let dw = [
                vzip1q_f32(d[0], d[0]),
                vzip2q_f32(d[0], d[0]),
                vzip1q_f32(d[1], d[1]),
                vzip2q_f32(d[1], d[1]),
            ];
            for tp in 0..TP {
                let (t0, t1) = (tok(2 * tp), tok(2 * tp + 1));
                let da2 = [
                    *x.da.as_ptr().add(t0 * x.nb + b),
                    *x.da.as_ptr().add(t1 * x.nb + b),
                ];
                let da = vcombine_f32(vld1_f32(da2.as_ptr()), vld1_f32(da2.as_ptr()));
                let off = if x.sa.is_empty() {
                    vdupq_n_s32(0)
                } else {
                    let sa2 = [
                        *x.sa.as_ptr().add(t0 * x.nb + b),
                        *x.sa.as_ptr().add(t1 * x.nb + b),
                    ];
                    vcombine_s32(vld1_s32(sa2.as_ptr()), vld1_s32(sa2.as_ptr()))
                };
                for p in 0..4 {
                    let isum = vcvtq_f32_s32(vsubq_s32(s32[p][tp], off));
                    acc[p][tp] = vaddq_f32(acc[p][tp], vmulq_f32(vmulq_f32(dw[p], da), isum));
                }
            }
        }
        for p in 0..4 {
            for tp in 0..TP {
                let mut v = [0f32; 4];
                vst1q_f32(v.as_mut_ptr(), acc[p][tp]);
                res[2 * tp][2 * p] = v[0];
                res[2 * tp + 1][2 * p] = v[1];
                res[2 * tp][2 * p + 1] = v[2];
                res[2 * tp + 1][2 * p + 1] = v[3];
            }
        }
    }
}
