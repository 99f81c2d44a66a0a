//! Bit-exact agreement with llama.cpp's `gguf` Python package, on the fixtures
//! `scripts/make_quant_fixtures.py` writes to `tests/data/`:
//!
//! - `quant_<type>.bin` → `quant_<type>_dequant.f32` for every type the package
//!   dequantizes;
//! - `quant_<type>_input.f32` → `quant_<type>_quant.bin` for every type it quantizes.

use edgellm_kernels::quant::{dequantize_row, quantize_row, GgmlType};
use std::path::PathBuf;

fn data(name: &str) -> Option<Vec<u8>> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    std::fs::read(p).ok()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Types the gguf package can dequantize (it has no q8_1 / q8_K).
const DEQUANT: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
];

/// Types the gguf package can quantize (bit-exact ports of ggml's reference code).
const QUANT: [GgmlType; 7] =
    [GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

#[test]
fn dequantize_matches_gguf_package_bit_for_bit() {
    for ty in DEQUANT {
        let raw = data(&format!("quant_{}.bin", ty.name())).expect("fixture missing: run scripts/make_quant_fixtures.py");
        let want = f32s(&data(&format!("quant_{}_dequant.f32", ty.name())).unwrap());
        assert_eq!(ty.row_bytes(want.len()), Some(raw.len()), "{}: fixture sizes", ty.name());
        let mut got = vec![0f32; want.len()];
        dequantize_row(ty, &raw, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{} element {i} (block {}): got {g:e} ({:#010x}), gguf {w:e} ({:#010x})",
                ty.name(),
                i / ty.block_elems(),
                g.to_bits(),
                w.to_bits()
            );
        }
    }
}

#[test]
fn quantize_matches_gguf_package_bit_for_bit() {
    for ty in QUANT {
        let x = f32s(&data(&format!("quant_{}_input.f32", ty.name())).expect("fixture missing"));
        let want = data(&format!("quant_{}_quant.bin", ty.name())).unwrap();
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &x, &mut got).unwrap();
        let bb = ty.block_bytes();
        for (blk, (g, w)) in got.chunks(bb).zip(want.chunks(bb)).enumerate() {
            assert_eq!(g, w, "{} block {blk}: input {:?}", ty.name(), &x[blk * ty.block_elems()..][..ty.block_elems()]);
        }
    }
}
