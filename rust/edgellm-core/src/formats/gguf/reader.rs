//! The GGUF container (versions 2 and 3, little-endian): header, metadata
//! key/values and tensor infos, validated against the file before anything is
//! used. Every count, length, offset, dimension and the alignment are checked
//! with checked arithmetic and against the file's size; nothing is allocated from
//! an unchecked count (vectors grow as items are read, and every item consumes
//! bytes of the file, so a count can never outrun the file). Metadata values are
//! kept as byte ranges of the memory map and decoded (with type checks) on use.

use crate::error::{Error, Result};
use edgellm_kernels::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting limit of arrays of arrays (each level costs 12 bytes of file, so
/// without a limit a small file could exhaust the stack).
const MAX_ARRAY_DEPTH: usize = 8;
/// Longest key or tensor name accepted (ggml itself allows 63-byte names).
const MAX_NAME: usize = 4096;

/// Metadata value types, with the ids of the GGUF specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl VType {
    fn from_id(id: u32) -> Option<VType> {
        use VType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use VType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }

    /// Bytes of one value of a fixed-size type.
    fn fixed_size(self) -> Option<usize> {
        use VType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            Str | Array => None,
        }
    }

    /// The fewest bytes one value of this type can take in a file.
    fn min_size(self) -> usize {
        match self {
            VType::Str => 8,            // length
            VType::Array => 12,         // element type + count
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

/// One metadata value; strings and arrays are byte ranges of the file.
#[derive(Clone, Debug)]
pub enum Meta {
    Uint(VType, u64),
    Int(VType, i64),
    Float(VType, f64),
    Bool(bool),
    /// The string's bytes (not yet checked to be UTF-8).
    Str(Range<usize>),
    /// `count` values of type `elem`, encoded in `data`.
    Array { elem: VType, count: usize, data: Range<usize> },
}

impl Meta {
    pub fn type_name(&self) -> String {
        match self {
            Meta::Uint(t, _) | Meta::Int(t, _) | Meta::Float(t, _) => t.name().to_string(),
            Meta::Bool(_) => "bool".into(),
            Meta::Str(_) => "string".into(),
            Meta::Array { elem, .. } => format!("array of {}", elem.name()),
        }
    }
}

/// A tensor's description: ggml dimension order (`dims[0]` is the row length).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// The shape in row-major (HF/numpy) order: ggml's dimensions reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed, validated GGUF file over its memory map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub map: Arc<Mmap>,
    keys: Vec<(String, Meta)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
}

/// Names of ggml type ids this build does not load, for error messages.
fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "q4_2 (removed from ggml)",
        5 => "q4_3 (removed from ggml)",
        16 => "iq2_xxs",
        17 => "iq2_xs",
        18 => "iq3_xxs",
        19 => "iq1_s",
        21 => "iq3_s",
        22 => "iq2_s",
        23 => "iq4_xs",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        29 => "iq1_m",
        34 => "tq1_0",
        35 => "tq2_0",
        39 => "mxfp4",
        _ => return None,
    })
}

/// A cursor over the file's bytes whose every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(format!("{}: invalid GGUF file: {msg}", self.path.display()))
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<Range<usize>> {
        if n > self.remaining() {
            return Err(self.err(format_args!(
                "{} needs {n} bytes at offset {} but the file ends after {} more (truncated?)",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let r = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[r]);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    /// A count or length that must fit in memory at all (the callers then check
    /// it against the bytes left).
    fn len(&mut self, what: &dyn Fn() -> String) -> Result<usize> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| self.err(format_args!("{} is {v}, too large for this machine", what())))
    }

    /// A length-prefixed string's byte range (contents unchecked).
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<Range<usize>> {
        let n = self.len(&|| format!("length of {}", what()))?;
        if n > self.remaining() {
            return Err(self.err(format_args!(
                "{} has length {n} but only {} bytes of the file remain",
                what(),
                self.remaining()
            )));
        }
        self.take(n, what)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    fn name(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let r = self.string(what)?;
        if r.len() > MAX_NAME {
            return Err(self.err(format_args!("{} is {} bytes long (at most {MAX_NAME} allowed)", what(), r.len())));
        }
        std::str::from_utf8(&self.buf[r])
            .map(str::to_string)
            .map_err(|_| self.err(format_args!("{} is not valid UTF-8", what())))
    }

    fn vtype(&mut self, what: &dyn Fn() -> String) -> Result<VType> {
        let id = self.u32(what)?;
        VType::from_id(id).ok_or_else(|| self.err(format_args!("{} has unknown value type id {id}", what())))
    }

    /// Reads one value of type `t` (`key` names it in errors).
    fn value(&mut self, t: VType, key: &str, depth: usize) -> Result<Meta> {
        let what = || format!("metadata {key:?}");
        Ok(match t {
            VType::U8 => Meta::Uint(t, self.bytes::<1>(&what)?[0] as u64),
            VType::I8 => Meta::Int(t, self.bytes::<1>(&what)?[0] as i8 as i64),
            VType::U16 => Meta::Uint(t, u16::from_le_bytes(self.bytes::<2>(&what)?) as u64),
            VType::I16 => Meta::Int(t, i16::from_le_bytes(self.bytes::<2>(&what)?) as i64),
            VType::U32 => Meta::Uint(t, self.u32(&what)? as u64),
            VType::I32 => Meta::Int(t, i32::from_le_bytes(self.bytes::<4>(&what)?) as i64),
            VType::U64 => Meta::Uint(t, self.u64(&what)?),
            VType::I64 => Meta::Int(t, i64::from_le_bytes(self.bytes::<8>(&what)?)),
            VType::F32 => Meta::Float(t, f32::from_le_bytes(self.bytes::<4>(&what)?) as f64),
            VType::F64 => Meta::Float(t, f64::from_le_bytes(self.bytes::<8>(&what)?)),
            VType::Bool => match self.bytes::<1>(&what)?[0] {
                0 => Meta::Bool(false),
                1 => Meta::Bool(true),
                b => return Err(self.err(format_args!("metadata {key:?}: bool value must be 0 or 1, found {b}"))),
            },
            VType::Str => Meta::Str(self.string(&what)?),
            VType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format_args!("metadata {key:?}: arrays nested more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem = self.vtype(&|| format!("metadata {key:?} array element type"))?;
                let count = self.len(&|| format!("metadata {key:?} array count"))?;
                // Every element takes at least min_size bytes: a count the rest of
                // the file cannot hold is rejected before any work.
                let least = count.checked_mul(elem.min_size());
                if least.map_or(true, |b| b > self.remaining()) {
                    return Err(self.err(format_args!(
                        "metadata {key:?}: array of {count} {} values cannot fit in the {} bytes left in the file",
                        elem.name(),
                        self.remaining()
                    )));
                }
                let start = self.pos;
                match elem.fixed_size() {
                    Some(size) => {
                        // Checked above: count * size <= remaining.
                        self.take(count * size, &what)?;
                    }
                    None => {
                        for _ in 0..count {
                            self.value(elem, key, depth + 1)?;
                        }
                    }
                }
                Meta::Array { elem, count, data: start..self.pos }
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the
        // file is not truncated by another process while the model is loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    pub fn parse(path: &Path, map: Arc<Mmap>) -> Result<GgufFile> {
        let buf: &[u8] = &map[..];
        let mut c = Cursor { buf, pos: 0, path };
        if buf.len() < 4 || &buf[..4] != MAGIC {
            let head = &buf[..buf.len().min(4)];
            return Err(c.err(format_args!("bad magic {head:02x?} (expected \"GGUF\"): not a GGUF file")));
        }
        c.pos = 4;
        let version = c.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(c.err("GGUF version 1 is not supported (only versions 2 and 3; re-convert the model)"))
            }
            v if (2..=3).contains(&v.swap_bytes()) => {
                return Err(c.err(format_args!(
                    "version field reads {v}: this is a big-endian GGUF file, which is not supported"
                )))
            }
            v => return Err(c.err(format_args!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let n_tensors = c.len(&|| "tensor count".into())?;
        let n_kv = c.len(&|| "metadata count".into())?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor
        // info at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
        let rem = c.remaining();
        if n_kv.checked_mul(13).map_or(true, |b| b > rem) {
            return Err(c.err(format_args!("metadata count {n_kv} is impossible for a file with {rem} bytes left")));
        }
        if n_tensors.checked_mul(24).map_or(true, |b| b > rem) {
            return Err(c.err(format_args!("tensor count {n_tensors} is impossible for a file with {rem} bytes left")));
        }

        let mut keys: Vec<(String, Meta)> = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.name(&|| format!("metadata key #{i}"))?;
            let t = c.vtype(&|| format!("metadata {key:?} type"))?;
            let v = c.value(t, &key, 0)?;
            if index.insert(key.clone(), keys.len()).is_some() {
                return Err(c.err(format_args!("duplicate metadata key {key:?}")));
            }
            keys.push((key, v));
        }

        let alignment = match keys.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Meta::Uint(_, a))) => {
                let a = *a;
                if a == 0 || !a.is_power_of_two() || a > (1 << 30) {
                    return Err(c.err(format_args!(
                        "general.alignment is {a}; it must be a power of two between 1 and 2^30"
                    )));
                }
                a as usize
            }
            Some((_, v)) => {
                return Err(c.err(format_args!("general.alignment must be an unsigned integer, found {}", v.type_name())))
            }
        };

        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut rel_offsets = Vec::new();
        for i in 0..n_tensors {
            let name = c.name(&|| format!("name of tensor #{i}"))?;
            if name.is_empty() {
                return Err(c.err(format_args!("tensor #{i} has an empty name")));
            }
            let n_dims = c.u32(&|| format!("tensor {name:?} dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format_args!("tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::new();
            for d in 0..n_dims {
                let v = c.u64(&|| format!("tensor {name:?} dimension {d}"))?;
                match usize::try_from(v) {
                    Ok(v) if v > 0 && v <= i64::MAX as usize => dims.push(v),
                    _ => return Err(c.err(format_args!("tensor {name:?} has dimension {d} of size {v}"))),
                }
            }
            let type_id = c.u32(&|| format!("tensor {name:?} type"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| match ggml_type_name(type_id) {
                Some(n) => c.err(format_args!("tensor {name:?} has type {n} (id {type_id}), which this build cannot load")),
                None => c.err(format_args!("tensor {name:?} has unknown type id {type_id}")),
            })?;
            let offset = c.u64(&|| format!("tensor {name:?} offset"))?;
            let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let size = numel.and_then(|n| {
                let rows = n / dims[0];
                ty.row_bytes(dims[0]).and_then(|rb| rb.checked_mul(rows))
            });
            let size = match (numel, size) {
                (None, _) => {
                    return Err(c.err(format_args!("tensor {name:?}: dimensions {dims:?} overflow when multiplied out")))
                }
                (Some(_), None) if dims[0] % ty.block_elems() != 0 => {
                    return Err(c.err(format_args!(
                        "tensor {name:?}: rows of {} elements are not a whole number of {} blocks of {}",
                        dims[0],
                        ty.name(),
                        ty.block_elems()
                    )))
                }
                (Some(_), None) => {
                    return Err(c.err(format_args!("tensor {name:?}: byte size of dimensions {dims:?} overflows")))
                }
                (Some(_), Some(s)) => s,
            };
            if offset % alignment as u64 != 0 {
                return Err(c.err(format_args!(
                    "tensor {name:?} has offset {offset}, which is not a multiple of the alignment {alignment}"
                )));
            }
            if names.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.err(format_args!("duplicate tensor name {name:?}")));
            }
            rel_offsets.push(offset);
            tensors.push(TensorInfo { name, dims, ty, start: 0, size });
        }

        // The data section starts at the next multiple of the alignment.
        let len = buf.len();
        let data_start = c.pos.checked_next_multiple_of(alignment).filter(|&s| s <= len || tensors.is_empty());
        let data_start = data_start.ok_or_else(|| {
            c.err(format_args!("tensor data should start at offset {} but the file is only {len} bytes (truncated?)", c.pos))
        })?;
        for (t, &off) in tensors.iter_mut().zip(&rel_offsets) {
            let start = usize::try_from(off).ok().and_then(|o| data_start.checked_add(o));
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => t.start = s,
                _ => {
                    return Err(c.err(format_args!(
                        "tensor {:?}: {} bytes at data offset {off} run past the end of the file ({len} bytes; truncated?)",
                        t.name, t.size
                    )))
                }
            }
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].start, tensors[i].size));
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if b.start < a.start + a.size {
                return Err(c.err(format_args!(
                    "tensors {:?} (bytes {}..{}) and {:?} (bytes {}..{}) overlap",
                    a.name,
                    a.start,
                    a.start + a.size,
                    b.name,
                    b.start,
                    b.start + b.size
                )));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), version, map, keys, index, tensors, alignment })
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(format!("{}: {msg}", self.path.display()))
    }

    pub fn get(&self, key: &str) -> Option<&Meta> {
        self.index.get(key).map(|&i| &self.keys[i].1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn bad_type(&self, key: &str, want: &str, v: &Meta) -> Error {
        self.err(format_args!("metadata {key:?} must be {want}, found {}", v.type_name()))
    }

    /// An integer value (any integer type) that must be non-negative.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Meta::Uint(_, v)) => Ok(Some(*v)),
            Some(Meta::Int(_, v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(Meta::Int(_, v)) => Err(self.err(format_args!("metadata {key:?} must be non-negative, found {v}"))),
            Some(v) => Err(self.bad_type(key, "an integer", v)),
        }
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.u64(key)? {
            None => Ok(None),
            Some(v) => usize::try_from(v).map(Some).map_err(|_| self.err(format_args!("metadata {key:?} is too large: {v}"))),
        }
    }

    /// A token id: an integer that fits u32.
    pub fn id(&self, key: &str) -> Result<Option<u32>> {
        match self.u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v).map(Some).map_err(|_| self.err(format_args!("metadata {key:?} is not a token id: {v}"))),
        }
    }

    /// A number (float or integer), which must be finite.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Meta::Float(_, v)) => *v,
            Some(Meta::Uint(_, v)) => *v as f64,
            Some(Meta::Int(_, v)) => *v as f64,
            Some(v) => return Err(self.bad_type(key, "a number", v)),
        };
        if !v.is_finite() {
            return Err(self.err(format_args!("metadata {key:?} must be finite, found {v}")));
        }
        Ok(Some(v))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Meta::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad_type(key, "a bool", v)),
        }
    }

    fn utf8<'a>(&'a self, key: &str, r: &Range<usize>) -> Result<&'a str> {
        std::str::from_utf8(&self.map[r.clone()]).map_err(|_| self.err(format_args!("metadata {key:?} is not valid UTF-8")))
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Meta::Str(r)) => self.utf8(key, r).map(Some),
            Some(v) => Err(self.bad_type(key, "a string", v)),
        }
    }

    fn array(&self, key: &str, want: &[VType], desc: &str) -> Result<Option<(VType, usize, &[u8])>> {
        match self.get(key) {
            None => Ok(None),
            Some(Meta::Array { elem, count, data }) if want.contains(elem) => Ok(Some((*elem, *count, &self.map[data.clone()]))),
            Some(v) => Err(self.bad_type(key, desc, v)),
        }
    }

    /// An array of strings.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some((_, count, data)) = self.array(key, &[VType::Str], "an array of strings")? else {
            return Ok(None);
        };
        // The parser checked every length; re-walk the (in-bounds) encoding.
        let mut out = Vec::new();
        let mut at = 0usize;
        for i in 0..count {
            let n = data
                .get(at..at + 8)
                .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
                .ok_or_else(|| self.err(format_args!("metadata {key:?}: element {i} is corrupt")))?;
            let s = data.get(at + 8..at + 8 + n).ok_or_else(|| self.err(format_args!("metadata {key:?}: element {i} is corrupt")))?;
            out.push(
                std::str::from_utf8(s).map_err(|_| self.err(format_args!("metadata {key:?}: element {i} is not valid UTF-8")))?,
            );
            at += 8 + n;
        }
        Ok(Some(out))
    }

    /// An array of float32 (exactly: GGUF stores token scores and factors so).
    pub fn f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some((_, _, data)) = self.array(key, &[VType::F32], "an array of float32")? else {
            return Ok(None);
        };
        Ok(Some(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }

    /// An array of 32-bit integers (int32, or uint32 values that fit).
    pub fn i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some((elem, _, data)) = self.array(key, &[VType::I32, VType::U32], "an array of int32")? else {
            return Ok(None);
        };
        data.chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                match elem {
                    VType::I32 => Ok(i32::from_le_bytes(b)),
                    _ => i32::try_from(u32::from_le_bytes(b))
                        .map_err(|_| self.err(format_args!("metadata {key:?} holds a value too large for int32"))),
                }
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of bools.
    pub fn bool_array(&self, key: &str) -> Result<Option<Vec<bool>>> {
        let Some((_, _, data)) = self.array(key, &[VType::Bool], "an array of bool")? else {
            return Ok(None);
        };
        data.iter()
            .map(|&b| match b {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(self.err(format_args!("metadata {key:?} holds a bool that is neither 0 nor 1"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Bytes of a tensor's data.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start..t.start + t.size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small valid v3 file: two metadata values and one 32 x 2 f32 tensor.
    fn sample() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(2u64.to_le_bytes()); // kvs
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "a.list");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "x");
        s(&mut b, "yz");
        s(&mut b, "t");
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(vec![0u8; 32 * 2 * 4]);
        b
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        let dir = std::env::temp_dir().join(format!("edgellm-gguf-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::write(&dir, bytes).unwrap();
        let r = GgufFile::open(&dir);
        let _ = std::fs::remove_file(&dir);
        r
    }

    #[test]
    fn sample_parses() {
        let f = parse(&sample()).unwrap();
        assert_eq!(f.str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(f.str_array("a.list").unwrap(), Some(vec!["x", "yz"]));
        assert_eq!(f.tensors[0].shape(), vec![2, 32]);
        assert!(f.f32_array("a.list").is_err());
        assert!(f.usize("general.architecture").is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample();
        for cut in 0..b.len() - 1 {
            assert!(matches!(parse(&b[..cut]), Err(Error::ModelFormat(_))), "cut {cut}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn corrupted_files_never_panic(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
            let mut b = sample();
            for (pos, v) in edits {
                let n = b.len();
                b[pos % n] = v;
            }
            let _ = parse(&b);
        }
    }
}
