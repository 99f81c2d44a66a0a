//! Weight tensors: a dtype, a shape and bytes that are either borrowed from a
//! memory-mapped file or owned (when the file's bytes are not aligned for the dtype).

use crate::error::{Error, Result};
use edgellm_kernels::quant::{dequantize_row, GgmlType};
use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// A GGML block-quantized type (never F32/F16/BF16).
    Quant(GgmlType),
}

impl DType {
    /// The GGML type of the same layout.
    pub fn ggml(self) -> GgmlType {
        match self {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
            DType::Quant(t) => t,
        }
    }

    pub fn from_ggml(t: GgmlType) -> DType {
        match t {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            q => DType::Quant(q),
        }
    }

    /// Alignment the bytes need for typed access (quantized blocks are read
    /// byte-wise and need none).
    pub fn align(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Quant(_) => 1,
        }
    }

    /// Bytes of `n` consecutive elements, if `n` is whole blocks and fits usize.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        self.ggml().row_bytes(n)
    }

    pub fn name(self) -> &'static str {
        self.ggml().name()
    }
}

/// Where a tensor's bytes live.
#[derive(Clone)]
enum Bytes {
    Mapped { map: Arc<Mmap>, start: usize, len: usize },
    /// u64-backed so any element type up to 8 bytes is aligned; `offset` lets
    /// row slices share the buffer.
    Owned { words: Arc<Vec<u64>>, offset: usize, len: usize },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            // SAFETY: `words` holds at least `offset + len` initialised bytes.
            Bytes::Owned { words, offset, len } => unsafe {
                std::slice::from_raw_parts((words.as_ptr() as *const u8).add(*offset), *len)
            },
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Bytes,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype.name(), self.shape)
    }
}

fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

impl Tensor {
    /// A tensor over `map[start..start+len]`; copied out if misaligned for `dtype`.
    pub fn from_mapped(map: Arc<Mmap>, start: usize, len: usize, dtype: DType, shape: Vec<usize>) -> Result<Self> {
        let want = Self::expected_bytes(dtype, &shape)?;
        let end = start.checked_add(len).filter(|&e| e <= map.len());
        if want != len || end.is_none() {
            return Err(Error::format(format!(
                "tensor of shape {shape:?} and dtype {} needs {want} bytes but the file gives {len} bytes at offset {start} (file is {} bytes)",
                dtype.name(),
                map.len()
            )));
        }
        let aligned = (map.as_ptr() as usize + start) % dtype.align() == 0;
        let bytes = if aligned {
            Bytes::Mapped { map, start, len }
        } else {
            Self::owned_bytes(&map[start..start + len])
        };
        Ok(Tensor { dtype, shape, bytes })
    }

    /// Bytes a tensor of `shape` needs: rows of the last dimension must be whole
    /// blocks for quantized types. Every product is checked.
    pub fn expected_bytes(dtype: DType, shape: &[usize]) -> Result<usize> {
        let overflow = || Error::format(format!("tensor shape {shape:?} overflows"));
        let numel = checked_numel(shape).ok_or_else(overflow)?;
        let cols = shape.last().copied().unwrap_or(1);
        if numel == 0 {
            return Ok(0);
        }
        let row = dtype.bytes_for(cols).ok_or_else(|| {
            Error::format(format!(
                "tensor rows of {cols} elements are not a whole number of {} blocks of {}",
                dtype.name(),
                dtype.ggml().block_elems()
            ))
        })?;
        (numel / cols).checked_mul(row).ok_or_else(overflow)
    }

    /// A tensor over owned bytes (e.g. weights quantized or re-ordered at load).
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: Vec<usize>) -> Result<Self> {
        let want = Self::expected_bytes(dtype, &shape)?;
        if want != bytes.len() {
            return Err(Error::format(format!(
                "{} bytes given for a {} tensor of shape {shape:?}, which needs {want}",
                bytes.len(),
                dtype.name()
            )));
        }
        Ok(Tensor { dtype, shape, bytes: Self::owned_bytes(bytes) })
    }

    fn owned_bytes(src: &[u8]) -> Bytes {
        let mut words = vec![0u64; src.len().div_ceil(8)];
        // SAFETY: the destination has at least src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), words.as_mut_ptr() as *mut u8, src.len()) };
        Bytes::Owned { words: Arc::new(words), offset: 0, len: src.len() }
    }

    pub fn from_f32(data: &[f32], shape: Vec<usize>) -> Result<Self> {
        if checked_numel(&shape) != Some(data.len()) {
            return Err(Error::arg(format!("{} values do not fill shape {shape:?}", data.len())));
        }
        // SAFETY: f32 has no padding; reinterpreting as bytes is sound.
        let src = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4) };
        Ok(Tensor { dtype: DType::F32, shape, bytes: Self::owned_bytes(src) })
    }

    /// Rows `r0..r1` of a 2-D tensor as a view sharing these bytes (no copy):
    /// fused projections (`qkv_proj`, `gate_up_proj`) are split this way.
    pub fn rows(&self, r0: usize, r1: usize) -> Result<Tensor> {
        let (rows, cols) = match self.shape[..] {
            [r, c] => (r, c),
            _ => return Err(Error::format(format!("cannot take rows of a tensor of shape {:?}", self.shape))),
        };
        if r0 > r1 || r1 > rows {
            return Err(Error::format(format!("rows {r0}..{r1} out of range for shape {:?}", self.shape)));
        }
        let row_bytes = self.dtype.bytes_for(cols).expect("validated at construction");
        let (start, len) = (r0 * row_bytes, (r1 - r0) * row_bytes);
        let bytes = match &self.bytes {
            Bytes::Mapped { map, start: s, .. } => Bytes::Mapped { map: map.clone(), start: s + start, len },
            Bytes::Owned { words, offset, .. } => Bytes::Owned { words: words.clone(), offset: offset + start, len },
        };
        Ok(Tensor { dtype: self.dtype, shape: vec![r1 - r0, cols], bytes })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.bytes.as_slice().len()
    }

    /// The raw bytes (quantized blocks, or little-endian elements).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Whether the bytes are a view of a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }

    /// Drops this process's copies of a mapped tensor's pages (the page cache
    /// keeps the file): for weights a repacked copy now serves, so that they are
    /// not resident twice. A later read faults them back in from the file.
    /// Owned tensors are left as they are.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Bytes::Mapped { map, start, len } = &self.bytes {
            // SAFETY: the mapping is read-only and never written through, so
            // dropping its pages loses nothing: they are read again from the file.
            // A failure only means the pages stay.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *start, *len) };
        }
    }

    /// [`Self::release_pages`] for the whole 2 MiB stretches of the map inside
    /// bytes `start..start + len` of the tensor (clamped to it), so that the
    /// pages of the bytes around the range, which may still be read, stay.
    pub fn release_range(&self, start: usize, len: usize) {
        #[cfg(unix)]
        if let Bytes::Mapped { map, start: at, len: total } = &self.bytes {
            // Whole 2 MiB stretches from the map's start (which the kernel
            // aligns so for a large file): a file's page cache may be mapped in
            // 2 MiB folios (ext4 on recent kernels), which a DontNeed on part of
            // one leaves mapped; and a multiple of every base page size.
            let page = 2 << 20;
            let (s, e) = (at + start.min(*total), at + start.saturating_add(len).min(*total));
            let (s, e) = (s.next_multiple_of(page), e / page * page);
            if e > s {
                // SAFETY: as in `release_pages`; the range is whole pages of the map.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s) };
            }
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// Bytes of one row of a 2-D tensor.
    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(*self.shape.last().unwrap_or(&1)).unwrap_or(0)
    }

    fn typed<T>(&self, dtype: DType) -> &[T] {
        assert_eq!(self.dtype, dtype, "tensor dtype mismatch");
        let b = self.bytes.as_slice();
        // SAFETY: construction guarantees alignment for the dtype and the exact length;
        // f32/f16/bf16 accept every bit pattern.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / std::mem::size_of::<T>()) }
    }
    pub fn as_f32(&self) -> &[f32] {
        self.typed(DType::F32)
    }
    pub fn as_f16(&self) -> &[f16] {
        self.typed(DType::F16)
    }
    pub fn as_bf16(&self) -> &[bf16] {
        self.typed(DType::BF16)
    }

    /// Row `r` of a 2-D tensor widened (or dequantized) to f32 into `out`.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let cols = out.len();
        let range = r * cols..(r + 1) * cols;
        match self.dtype {
            DType::F32 => out.copy_from_slice(&self.as_f32()[range]),
            DType::F16 => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&self.as_f16()[range], out),
            DType::BF16 => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&self.as_bf16()[range], out),
            DType::Quant(t) => {
                let rb = self.row_bytes();
                dequantize_row(t, &self.as_bytes()[r * rb..(r + 1) * rb], out)
                    .expect("quantized tensor types are checked when a model is loaded");
            }
        }
    }

    /// All values widened to f32 (for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        if !out.is_empty() {
            self.row_to_f32(0, &mut out);
        }
        out
    }
}
