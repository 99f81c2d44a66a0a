//! The resident layout of q6_K: eight rows' super-blocks side by side, the
//! file's bytes moved (none re-encoded).
//!
//! A row's q6_K super-block (210 bytes, 256 weights) holds 128 bytes of low
//! nibbles (`ql`), 64 bytes of high bit pairs (`qh`), sixteen i8 scales (one
//! per 16 weights) and `d` (f16). Element `128n + 32s + l` (`n < 2`, `s < 4`,
//! `l < 32`) is the low nibble of `ql[64n + 32 (s % 2) + l]` (the high nibble
//! for `s ≥ 2`) with bits `2s, 2s + 1` of `qh[32n + l]` above it, minus 32.
//! Here super-block `b` of a panel is [`BLOCK`] bytes, quants first (so that
//! their vectors stay 32-byte aligned where the block is):
//!
//! - [`QL`]: 32 vectors, vector `16n + 8c + i` holding bytes `64n + 32c + 4i
//!   .. + 4` of each row's `ql` (row `r` at `4r`);
//! - [`QH`]: 16 vectors, vector `8n + i` holding bytes `32n + 4i .. + 4` of
//!   each row's `qh`: with `QL` vectors `16n + i` and `16n + 8 + i` it gives
//!   elements `128n + 32s + 4i ..` of the eight rows for every `s`;
//! - [`SC`]: the scales, 16 bytes per pair of sub-blocks `2p, 2p + 1`: byte
//!   `2r + e` is row `r`'s scale of sub-block `2p + e`. Widened to i16 they are
//!   the pairs that meet the activation's two 16-element sums of that pair of
//!   sub-blocks (the −32 offset), and one byte shuffle gives each sub-block's
//!   scale beside every row's pair sums (rows 0-3 in the low 128-bit lane);
//! - [`D`]: the eight rows' `d` (f16, row order).

use crate::quant::blocks::{Q6K_D, Q6K_QH, Q6K_SCALES};
use crate::quant::qgemm::PANEL;

/// Bytes of a row's super-block.
const ROW_BLOCK: usize = 210;
/// Bytes of a panel's super-block: eight rows', as on disk.
pub const BLOCK: usize = PANEL * ROW_BLOCK;
/// Offset of the 32 low-nibble vectors.
pub const QL: usize = 0;
/// Offset of the 16 high-bit vectors.
pub const QH: usize = 1024;
/// Offset of the scales (8 × 16 bytes).
pub const SC: usize = 1536;
/// Offset of the rows' `d` (8 × f16).
pub const D: usize = 1664;

const _: () = assert!(D + 2 * PANEL == BLOCK);

/// Packs one panel: `src` holds 8 rows of `nb` super-blocks, `dst` as many bytes.
pub(super) fn pack_panel(src: &[u8], nb: usize, dst: &mut [u8]) {
    let rb = nb * ROW_BLOCK;
    assert!(src.len() == PANEL * rb && dst.len() == src.len(), "resident q6_K: bad panel shapes");
    for b in 0..nb {
        let o = &mut dst[b * BLOCK..(b + 1) * BLOCK];
        for r in 0..PANEL {
            let blk = &src[r * rb + b * ROW_BLOCK..][..ROW_BLOCK];
            for v in 0..32 {
                o[QL + 32 * v + 4 * r..][..4].copy_from_slice(&blk[4 * v..][..4]);
            }
            for u in 0..16 {
                o[QH + 32 * u + 4 * r..][..4].copy_from_slice(&blk[Q6K_QH + 4 * u..][..4]);
            }
            for j in 0..16 {
                o[SC + 16 * (j / 2) + 2 * r + j % 2] = blk[Q6K_SCALES + j];
            }
            o[D + 2 * r..][..2].copy_from_slice(&blk[Q6K_D..Q6K_D + 2]);
        }
    }
}

/// The inverse of [`pack_panel`]: the eight rows, byte for byte as they were.
pub(super) fn unpack_panel(src: &[u8], nb: usize, dst: &mut [u8]) {
    let rb = nb * ROW_BLOCK;
    assert!(dst.len() == PANEL * rb && src.len() == dst.len(), "resident q6_K: bad panel shapes");
    for b in 0..nb {
        let o = &src[b * BLOCK..(b + 1) * BLOCK];
        for r in 0..PANEL {
            let blk = &mut dst[r * rb + b * ROW_BLOCK..][..ROW_BLOCK];
            for v in 0..32 {
                blk[4 * v..][..4].copy_from_slice(&o[QL + 32 * v + 4 * r..][..4]);
            }
            for u in 0..16 {
                blk[Q6K_QH + 4 * u..][..4].copy_from_slice(&o[QH + 32 * u + 4 * r..][..4]);
            }
            for j in 0..16 {
                blk[Q6K_SCALES + j] = o[SC + 16 * (j / 2) + 2 * r + j % 2];
            }
            blk[Q6K_D..Q6K_D + 2].copy_from_slice(&o[D + 2 * r..][..2]);
        }
    }
}
