//! The resident layouts of q4_K and q5_K: eight rows' super-blocks side by
//! side, the file's bytes moved and their 6-bit scales re-encoded in as many
//! bytes.
//!
//! A row's q4_K super-block (144 bytes, 256 weights) holds `d` and `dmin`
//! (f16), twelve bytes of packed 6-bit scales and mins for its eight 32-weight
//! sub-blocks, and 128 bytes of nibbles; q5_K's (176 bytes) adds 32 bytes of
//! fifth bits. Read row by row, unpacking those twelve bytes and broadcasting
//! each scale took about a third of the vector work of a decode step. Here
//! super-block `b` of a panel is [`BLOCK`] bytes (q4_K) or [`BLOCK5`] (q5_K):
//!
//! - [`D`], [`DMIN`]: the eight rows' `d`, then their `dmin` (f16, row order);
//! - [`LSC`], [`LM`], [`HI`]: the 64 scales and 64 mins, 32 bytes each. Byte
//!   `p = 16 (r / 4) + 4 (s % 4) + r % 4` describes row `r`, sub-blocks `s`
//!   and `s + 4` (`s < 4`): `LSC[p]` holds the low four bits of scale `s`
//!   (low nibble) and of scale `s + 4` (high nibble), `LM[p]` the same for the
//!   mins, and `HI[p]` the top two bits of scale `s`, scale `s + 4`, min `s`
//!   and min `s + 4` (bits 0-1, 2-3, 4-5, 6-7). The kernels decode all 128
//!   values with a dozen vector operations, already in the 128-bit lanes
//!   their products use (rows 0-3 low, 4-7 high), so one byte shuffle then
//!   puts sub-block `s`'s value of each row beside that row's sums;
//! - [`QS`]: 32 quant vectors, vector `v` holding bytes `4v .. 4v + 4` of each
//!   row's nibbles (row `r` at `4r`): its low nibbles are elements
//!   `64 (v / 8) + 4 (v % 8) ..` of the rows (sub-block `2 (v / 8)`), its high
//!   nibbles the 32 elements after those (sub-block `2 (v / 8) + 1`);
//! - q5_K only, [`QH`]: 8 vectors of fifth bits, vector `u` holding bytes
//!   `4u .. 4u + 4` of each row's `qh` (row `r` at `4r`): bit `2j` of a byte
//!   is the fifth bit of the low nibble at the same place of quant vector
//!   `8j + u`, bit `2j + 1` that of its high nibble.
//!
//! Super-blocks follow one another, so a panel is one sequential stream.

use crate::quant::blocks::{Q4K_DMIN, Q4K_QS, Q4K_SCALES, Q5K_DMIN, Q5K_QH, Q5K_QS, Q5K_SCALES};
use crate::quant::qgemm::PANEL;
use crate::quant::scale_min_k4;

/// Bytes of a panel's q4_K super-block: eight rows' (144 each), as on disk.
pub const BLOCK: usize = PANEL * 144;
/// Bytes of a panel's q5_K super-block: eight rows' (176 each).
pub const BLOCK5: usize = PANEL * 176;
/// Offset of the rows' `d` (8 × f16).
pub const D: usize = 0;
/// Offset of the rows' `dmin` (8 × f16).
pub const DMIN: usize = 16;
/// Offset of the scales' low bits.
pub const LSC: usize = 32;
/// Offset of the mins' low bits.
pub const LM: usize = 64;
/// Offset of the scales' and mins' top bits.
pub const HI: usize = 96;
/// Offset of the 32 quant vectors.
pub const QS: usize = 128;
/// Offset of q5_K's 8 vectors of fifth bits.
pub const QH: usize = QS + 1024;

/// Where a row's super-block keeps its fields: its size and the offsets of
/// `dmin`, the scales, the nibbles and (q5_K) the fifth bits.
#[derive(Clone, Copy)]
struct RowBlock {
    size: usize,
    dmin: usize,
    scales: usize,
    qs: usize,
    qh: Option<usize>,
}

const ROW_Q4K: RowBlock = RowBlock { size: 144, dmin: Q4K_DMIN, scales: Q4K_SCALES, qs: Q4K_QS, qh: None };
const ROW_Q5K: RowBlock = RowBlock { size: 176, dmin: Q5K_DMIN, scales: Q5K_SCALES, qs: Q5K_QS, qh: Some(Q5K_QH) };

fn row_block(five: bool) -> RowBlock {
    if five {
        ROW_Q5K
    } else {
        ROW_Q4K
    }
}

/// The byte of [`LSC`], [`LM`] and [`HI`] that holds row `r`'s sub-block `s`,
/// and the half (`s / 4`) it is in.
fn slot(r: usize, s: usize) -> (usize, usize) {
    (16 * (r / 4) + 4 * (s % 4) + r % 4, s / 4)
}

/// Packs one panel: `src` holds 8 rows of `nb` super-blocks (q5_K when `five`,
/// else q4_K), `dst` as many bytes.
pub(super) fn pack_panel(src: &[u8], nb: usize, five: bool, dst: &mut [u8]) {
    let rbk = row_block(five);
    let (rb, pbk) = (nb * rbk.size, PANEL * rbk.size);
    assert!(src.len() == PANEL * rb && dst.len() == src.len(), "resident q4_K/q5_K: bad panel shapes");
    for b in 0..nb {
        let o = &mut dst[b * pbk..(b + 1) * pbk];
        o[LSC..QS].fill(0);
        for r in 0..PANEL {
            let blk = &src[r * rb + b * rbk.size..][..rbk.size];
            o[D + 2 * r..][..2].copy_from_slice(&blk[..2]);
            o[DMIN + 2 * r..][..2].copy_from_slice(&blk[rbk.dmin..rbk.dmin + 2]);
            let scales = &blk[rbk.scales..rbk.scales + 12];
            for s in 0..8 {
                let (sc, m) = scale_min_k4(s, scales);
                let (p, h) = slot(r, s);
                o[LSC + p] |= (sc & 0x0F) << (4 * h);
                o[LM + p] |= (m & 0x0F) << (4 * h);
                o[HI + p] |= ((sc >> 4) << (2 * h)) | ((m >> 4) << (4 + 2 * h));
            }
            for v in 0..32 {
                o[QS + 32 * v + 4 * r..][..4].copy_from_slice(&blk[rbk.qs + 4 * v..][..4]);
            }
            if let Some(qh) = rbk.qh {
                for u in 0..8 {
                    o[QH + 32 * u + 4 * r..][..4].copy_from_slice(&blk[qh + 4 * u..][..4]);
                }
            }
        }
    }
}

/// The inverse of [`pack_panel`]: the eight rows, byte for byte as they were.
pub(super) fn unpack_panel(src: &[u8], nb: usize, five: bool, dst: &mut [u8]) {
    let rbk = row_block(five);
    let (rb, pbk) = (nb * rbk.size, PANEL * rbk.size);
    assert!(dst.len() == PANEL * rb && src.len() == dst.len(), "resident q4_K/q5_K: bad panel shapes");
    for b in 0..nb {
        let o = &src[b * pbk..(b + 1) * pbk];
        for r in 0..PANEL {
            let blk = &mut dst[r * rb + b * rbk.size..][..rbk.size];
            blk[..2].copy_from_slice(&o[D + 2 * r..][..2]);
            blk[rbk.dmin..rbk.dmin + 2].copy_from_slice(&o[DMIN + 2 * r..][..2]);
            let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
            for s in 0..8 {
                let (p, h) = slot(r, s);
                sc[s] = ((o[LSC + p] >> (4 * h)) & 0x0F) | (((o[HI + p] >> (2 * h)) & 3) << 4);
                m[s] = ((o[LM + p] >> (4 * h)) & 0x0F) | (((o[HI + p] >> (4 + 2 * h)) & 3) << 4);
            }
            blk[rbk.scales..rbk.scales + 12].copy_from_slice(&pack_scales_mins(&sc, &m));
            for v in 0..32 {
                blk[rbk.qs + 4 * v..][..4].copy_from_slice(&o[QS + 32 * v + 4 * r..][..4]);
            }
            if let Some(qh) = rbk.qh {
                for u in 0..8 {
                    blk[qh + 4 * u..][..4].copy_from_slice(&o[QH + 32 * u + 4 * r..][..4]);
                }
            }
        }
    }
}

/// The twelve bytes of eight 6-bit scales and mins, as `scale_min_k4` reads them.
fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bytes_round_trip_through_scale_min_k4() {
        let mut s = 0x9E37_79B9u32;
        for _ in 0..200 {
            let mut q = [0u8; 12];
            for v in q.iter_mut() {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = (s >> 24) as u8;
            }
            let (sc, m): (Vec<u8>, Vec<u8>) = (0..8).map(|j| scale_min_k4(j, &q)).unzip();
            assert_eq!(pack_scales_mins(&sc.try_into().unwrap(), &m.try_into().unwrap()), q);
        }
    }

    #[test]
    fn slots_cover_the_32_bytes_once_per_half() {
        let mut seen = [[false; 32]; 2];
        for r in 0..8 {
            for s in 0..8 {
                let (p, h) = slot(r, s);
                assert!(!seen[h][p], "row {r} sub-block {s}");
                seen[h][p] = true;
                // Rows 0-3 in the low 128-bit lane, 4-7 in the high one.
                assert_eq!(p / 16, r / 4);
            }
        }
        assert!(seen.iter().flatten().all(|&v| v));
    }
}
