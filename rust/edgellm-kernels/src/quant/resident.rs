//! Resident panels: q4_0, q8_0, q4_K, q5_K and q6_K weights repacked once, at
//! load, into interleaved 8-row layouts the SIMD kernels read, so that neither
//! decode nor prefill repacks them per call (see [`super::qgemm`] for the
//! per-call panels).
//!
//! The per-call panels widen every quant to a byte and every scale to f32, twice
//! the bytes of a q4_0 row: fine for prompts, where a panel is read by hundreds of
//! tokens from cache, but decode streams every weight from memory once per token.
//! The resident layouts keep the file's size (144 bytes per q4_0 block of 8 rows,
//! 272 for q8_0, 1152 per q4_K super-block of 8 rows, 1408 for q5_K, 1680 for
//! q6_K) and its values (nibbles, f16 scales), and only move them. q4_K's and
//! q5_K's are described in [`q45_k`], q6_K's in [`q6_k`]; q4_0's and q8_0's:
//!
//! - a panel holds rows `8p .. 8p + 8`, the same bytes as those rows on disk,
//!   as groups of four blocks (the last group may hold fewer, `r`);
//! - a group holds first its blocks' scales, 8 × f16 each (row order), then per
//!   block the quants, 32-byte vectors of 4 bytes from each row: vector `v` holds
//!   bytes `4v .. 4v + 4` of each row's quants (`qs`). For q4_0 (4 vectors) the
//!   low nibbles of vector `v` are elements `4v ..` and the high nibbles
//!   elements `16 + 4v ..`; for q8_0 (8 vectors) element `4v + i`.
//!
//! So a panel is read as one sequential stream (scales beside their quants: a
//! separate scale table was a second stream, and decode from memory fell to
//! 11-15 GB/s on one core against 18 for the row layout), and with four scales
//! filling a cache line every quant vector stays 32-byte aligned.
//!
//! The kernels ([`crate::Kernels::gemm_q_resident`]) compute, per weight row and
//! token, block by block, the exact integer dot and `sum + (d_w · d_a) · isum`
//! (q4_K, q5_K: `- (dmin_w · d_a) · msum` too, as one step; q6_K's −32 offset
//! is part of `isum`): bit-identical to the scalar [`super::vec_dot`] on the row
//! the panel was packed from, whatever the tiling or the token count, so decode
//! and prefill agree bit for bit.

use super::qgemm::{check_gemm_q_rows, QActs, PANEL};
use super::GgmlType;

pub mod q45_k;
pub mod q6_k;

/// Weight rows per resident panel.
pub const ROWS: usize = PANEL;

/// Signature of [`crate::Kernels::gemm_q_resident`]: `out[t * ldo + r] =
/// vec_dot(ty, w_r, act_t, k)` for every row `r` of the resident panels `w` (of
/// `ty`, rows of `acts.k()` elements) and every activation row `t` (quantized
/// for `ty`, or for another k-quant: q8_K rows carry no per-type tables).
pub type GemmResidentFn = fn(ty: GgmlType, w: &[u8], acts: &QActs, out: &mut [f32], ldo: usize);

/// Whether weights of `ty` have a resident layout (which tables have kernels
/// for it: [`crate::Kernels::resident_gemm`]).
pub fn has_layout(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// Bytes of one block's quants in a panel (8 rows).
pub(crate) fn quant_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0 => 128,
        GgmlType::Q8_0 => 256,
        _ => panic!("no resident layout for {}", ty.name()),
    }
}

/// Bytes of one panel (8 rows of `k` elements of `ty`), if `ty` has a resident
/// layout and `k` is whole blocks (super-blocks for q4_K): the same as 8 rows
/// on disk.
pub fn panel_bytes(ty: GgmlType, k: usize) -> Option<usize> {
    if !has_layout(ty) {
        return None;
    }
    ty.row_bytes(k)?.checked_mul(PANEL)
}

/// Repacks `w` (whole rows of `k` elements of `ty`, a multiple of 8 of them) into
/// `out` (as many bytes) in the resident layout. Panics on a shape mismatch or a
/// type without one.
pub fn pack(ty: GgmlType, w: &[u8], k: usize, out: &mut [u8]) {
    let pb = panel_bytes(ty, k).unwrap_or_else(|| panic!("resident::pack: no layout for {} rows of {k}", ty.name()));
    assert!(
        pb > 0 && w.len() % pb == 0 && out.len() == w.len(),
        "resident::pack: {} bytes are not whole panels of 8 rows of {k} (out {})",
        w.len(),
        out.len()
    );
    for (src, dst) in w.chunks_exact(pb).zip(out.chunks_exact_mut(pb)) {
        pack_panel(ty, src, k, dst);
    }
}

/// Blocks per group of a panel (their scales fill one cache line).
pub(crate) const GROUP: usize = 4;

/// Offsets in a panel of `nb` blocks of the scales and of the quants of block
/// `b` (`qb` quant bytes per block).
#[inline(always)]
pub(crate) fn block_offsets(nb: usize, qb: usize, b: usize) -> (usize, usize) {
    let (g, j) = (b / GROUP, b % GROUP);
    let base = g * GROUP * (16 + qb);
    let r = (nb - g * GROUP).min(GROUP);
    (base + 16 * j, base + 16 * r + qb * j)
}

/// One panel: 8 rows (`src`) into `dst`.
fn pack_panel(ty: GgmlType, src: &[u8], k: usize, dst: &mut [u8]) {
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => return q45_k::pack_panel(src, k / 256, ty == GgmlType::Q5K, dst),
        GgmlType::Q6K => return q6_k::pack_panel(src, k / 256, dst),
        _ => {}
    }
    let (bb, nb, qb) = (ty.block_bytes(), k / 32, quant_bytes(ty));
    let rb = nb * bb;
    for b in 0..nb {
        let (so, qo) = block_offsets(nb, qb, b);
        for r in 0..PANEL {
            let blk = &src[r * rb + b * bb..][..bb];
            dst[so + 2 * r..][..2].copy_from_slice(&blk[..2]);
            for v in 0..(bb - 2) / 4 {
                dst[qo + 32 * v + 4 * r..][..4].copy_from_slice(&blk[2 + 4 * v..][..4]);
            }
        }
    }
}

/// The inverse of [`pack`]: resident panels back to rows.
pub fn unpack(ty: GgmlType, packed: &[u8], k: usize, out: &mut [u8]) {
    let pb = panel_bytes(ty, k).unwrap_or_else(|| panic!("resident::unpack: no layout for {} rows of {k}", ty.name()));
    assert!(pb > 0 && packed.len() % pb == 0 && out.len() == packed.len(), "resident::unpack: bad shapes");
    for (src, dst) in packed.chunks_exact(pb).zip(out.chunks_exact_mut(pb)) {
        unpack_panel(ty, src, k, dst);
    }
}

/// One panel back to its 8 rows.
fn unpack_panel(ty: GgmlType, src: &[u8], k: usize, dst: &mut [u8]) {
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => return q45_k::unpack_panel(src, k / 256, ty == GgmlType::Q5K, dst),
        GgmlType::Q6K => return q6_k::unpack_panel(src, k / 256, dst),
        _ => {}
    }
    let (bb, nb, qb) = (ty.block_bytes(), k / 32, quant_bytes(ty));
    let rb = nb * bb;
    for b in 0..nb {
        let (so, qo) = block_offsets(nb, qb, b);
        for r in 0..PANEL {
            let blk = &mut dst[r * rb + b * bb..][..bb];
            blk[..2].copy_from_slice(&src[so + 2 * r..][..2]);
            for v in 0..(bb - 2) / 4 {
                blk[2 + 4 * v..][..4].copy_from_slice(&src[qo + 32 * v + 4 * r..][..4]);
            }
        }
    }
}

/// Checks a resident GEMM's operands; returns (panels, tokens). Panics on a
/// mismatch.
pub(crate) fn check(ty: GgmlType, w: &[u8], acts: &QActs, out: &[f32], ldo: usize) -> (usize, usize) {
    let k = acts.k();
    let q8k = |t: GgmlType| super::vec_dot_type(t) == GgmlType::Q8K;
    assert!(
        acts.ty() == ty || (q8k(ty) && q8k(acts.ty())),
        "gemm_q_resident: activations for {} do not serve {} weights",
        acts.ty().name(),
        ty.name()
    );
    let pb = panel_bytes(ty, k).unwrap_or_else(|| panic!("gemm_q_resident: no resident layout for {}", ty.name()));
    assert!(
        pb > 0 && w.len() % pb == 0,
        "gemm_q_resident: {} bytes are not whole panels of {} rows of {k}",
        w.len(),
        ty.name()
    );
    let panels = w.len() / pb;
    check_gemm_q_rows(panels * PANEL, acts, out, ldo);
    (panels, acts.rows())
}

/// Reference: each panel unpacked to rows, then the scalar `vec_dot` of every
/// (row, token) pair; the SIMD kernels must match it bit for bit.
pub fn gemm_q_resident(ty: GgmlType, w: &[u8], acts: &QActs, out: &mut [f32], ldo: usize) {
    let (panels, n) = check(ty, w, acts, out, ldo);
    let k = acts.k();
    let pb = panel_bytes(ty, k).unwrap();
    let mut rows = vec![0u8; pb];
    let ab = acts.bytes().len() / n.max(1);
    for p in 0..panels {
        unpack(ty, &w[p * pb..(p + 1) * pb], k, &mut rows);
        for t in 0..n {
            let a = &acts.bytes()[t * ab..(t + 1) * ab];
            for (r, row) in rows.chunks_exact(pb / PANEL).enumerate() {
                out[t * ldo + p * PANEL + r] = super::vec_dot(ty, row, a, k);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::quantize_row;

    /// `n` rows of `k` values quantized to `ty`, from a seeded xorshift.
    pub(crate) fn rows(ty: GgmlType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; n * rb];
        let mut s = seed | 1;
        for r in 0..n {
            let x: Vec<f32> = (0..k)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            quantize_row(ty, &x, &mut w[r * rb..(r + 1) * rb]).unwrap();
        }
        w
    }

    #[test]
    fn pack_moves_every_byte_and_unpack_restores_it() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            for (n, k) in [(8, 32), (16, 96), (24, 256)] {
                let w = rows(ty, n, k, 7 + n as u64);
                let mut p = vec![0xAA; w.len()];
                pack(ty, &w, k, &mut p);
                assert_ne!(p, w);
                let nb = k / 32;
                // Row 5, block nb - 1: its scale and its first four quant bytes.
                let (rb, pb) = (ty.row_bytes(k).unwrap(), panel_bytes(ty, k).unwrap());
                let blk = &w[5 * rb + (nb - 1) * ty.block_bytes()..];
                let (so, qo) = block_offsets(nb, quant_bytes(ty), nb - 1);
                assert_eq!(&p[so + 10..][..2], &blk[..2]);
                assert_eq!(&p[qo + 20..][..4], &blk[2..6]);
                assert_eq!(qo + quant_bytes(ty), pb, "the last block ends the panel");
                let mut back = vec![0u8; w.len()];
                unpack(ty, &p, k, &mut back);
                assert_eq!(back, w, "{} {n}×{k}", ty.name());
                assert_eq!(p.len() % pb, 0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "whole panels")]
    fn pack_rejects_row_counts_that_are_not_panels() {
        let w = rows(GgmlType::Q4_0, 7, 64, 1);
        let mut p = vec![0u8; w.len()];
        pack(GgmlType::Q4_0, &w, 64, &mut p);
    }
}
