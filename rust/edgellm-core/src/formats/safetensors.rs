//! Memory-mapped safetensors checkpoints, single-file or sharded
//! (`model.safetensors.index.json`). The header is validated by the `safetensors`
//! crate (sizes with checked arithmetic, contiguous non-overlapping offsets,
//! byte ranges that match dtype × shape); dtypes and names are checked here.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use edgellm_kernels::quant::GgmlType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Every tensor of a checkpoint by name, plus the files they came from.
pub struct TensorStore {
    tensors: BTreeMap<String, Tensor>,
    files: Vec<PathBuf>,
    file_bytes: u64,
}

fn describe(e: SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooLarge => "header length is larger than allowed (corrupt or not a safetensors file)".into(),
        SafeTensorError::HeaderTooSmall => "file is too small to hold a safetensors header".into(),
        SafeTensorError::InvalidHeaderLength => "header length points past the end of the file (truncated?)".into(),
        SafeTensorError::InvalidHeader(e) => format!("header is not valid UTF-8: {e}"),
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("header is not valid safetensors JSON: {e}"),
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor {name:?} has data offsets that overlap, leave gaps or run backwards")
        }
        SafeTensorError::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape".into(),
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows when multiplied out".into(),
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors' byte ranges do not cover the file's data section exactly (truncated or padded file)".into()
        }
        SafeTensorError::MisalignedSlice => "a tensor's size is not a whole number of bytes".into(),
        other => other.to_string(),
    }
}

fn map_dtype(name: &str, d: Dtype) -> Result<DType> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::format(format!(
            "tensor {name:?} has dtype {other:?}; supported weight dtypes are F32, F16 and BF16"
        ))),
    }
}

/// Safetensors metadata key of edgellm's quantized checkpoints: a JSON object
/// mapping tensor names to `{"type": "<ggml type>", "shape": [rows, cols]}`. Such a
/// tensor is stored as dtype U8 holding the GGML blocks of its rows (any U8 shape
/// whose size matches), so the file stays readable by every safetensors reader.
pub const QUANT_METADATA_KEY: &str = "edgellm.quantized_tensors";

/// Block types a quantized safetensors tensor may hold (the weight types the
/// kernels run), including edgellm's own formats, which GGUF cannot hold.
const STORABLE_QUANT: [GgmlType; 18] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    // edgellm-only block types (no GGUF id).
    GgmlType::Q3G128,
    GgmlType::Q3AG128,
    GgmlType::Q2G128,
    GgmlType::Q2AG128,
    GgmlType::NF4,
    GgmlType::F8E4M3,
    GgmlType::F8E5M2,
];

/// The quantized-tensor descriptions of a file's metadata (empty without the key).
/// Anything malformed is a format error; sizes are checked when the tensors are built.
fn parse_quant_metadata(meta: &Option<std::collections::HashMap<String, String>>) -> Result<BTreeMap<String, (GgmlType, Vec<usize>)>> {
    let mut out = BTreeMap::new();
    let Some(text) = meta.as_ref().and_then(|m| m.get(QUANT_METADATA_KEY)) else {
        return Ok(out);
    };
    let bad = |why: String| Error::format(format!("metadata {QUANT_METADATA_KEY:?}: {why}"));
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    for (name, desc) in obj {
        let ty_name = desc.get("type").and_then(|t| t.as_str()).ok_or_else(|| bad(format!("{name:?} has no \"type\" string")))?;
        let ty = STORABLE_QUANT.into_iter().find(|t| t.name().eq_ignore_ascii_case(ty_name)).ok_or_else(|| {
            bad(format!(
                "{name:?} has type {ty_name:?}; quantized tensors may be {}",
                STORABLE_QUANT.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let dims = desc.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad(format!("{name:?} has no \"shape\" array")))?;
        if dims.is_empty() || dims.len() > 4 {
            return Err(bad(format!("{name:?} has a shape of {} dimensions (1 to 4 allowed)", dims.len())));
        }
        let shape = dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad(format!("{name:?} has a shape that is not a list of non-negative integers")))?;
        out.insert(name.clone(), (ty, shape));
    }
    Ok(out)
}

impl TensorStore {
    /// Opens the safetensors weights of a checkpoint directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let files = if index.is_file() {
            Self::shards_from_index(&index)?
        } else if single.is_file() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::format(format!(
                    "no {SINGLE_FILE} or {INDEX_FILE} in {} (PyTorch .bin checkpoints are not supported; re-save with safe_serialization=True)",
                    dir.display()
                )));
            }
            found
        };
        let mut store = TensorStore { tensors: BTreeMap::new(), files: Vec::new(), file_bytes: 0 };
        for f in &files {
            store.add_file(f)?;
        }
        Ok(store)
    }

    /// A store over tensors that were read by another loader (GGUF), with the
    /// files they came from and those files' total size.
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>, files: Vec<PathBuf>, file_bytes: u64) -> Self {
        TensorStore { tensors, files, file_bytes }
    }

    fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
        let bytes = std::fs::read(index).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(format!("{}: invalid JSON: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(format!("{}: missing \"weight_map\" object", index.display())))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| Error::format(format!("{}: shard for {name:?} is not a string", index.display())))?;
            // Shards must be plain file names inside the checkpoint directory.
            if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
                return Err(Error::format(format!("{}: shard name {file:?} is not a plain file name", index.display())));
            }
            shards.insert(file.to_string());
        }
        if shards.is_empty() {
            return Err(Error::format(format!("{}: weight_map is empty", index.display())));
        }
        Ok(shards.into_iter().map(|s| dir.join(s)).collect())
    }

    /// Maps one safetensors file and registers its tensors.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the
        // file is not truncated by another process while the model is loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let map = Arc::new(map);
        let (header_len, meta) = SafeTensors::read_metadata(&map[..])
            .map_err(|e| Error::format(format!("{}: {}", path.display(), describe(e))))?;
        let data_start = 8 + header_len; // read_metadata checked this fits the file
        let in_file = |e: Error| Error::format(format!("{}: {e}", path.display()));
        let mut quantized = parse_quant_metadata(meta.metadata()).map_err(in_file)?;
        for (name, info) in meta.tensors() {
            let (dtype, shape) = match (info.dtype, quantized.remove(&name)) {
                (Dtype::U8, Some((ty, shape))) => (DType::Quant(ty), shape),
                (Dtype::U8, None) => {
                    return Err(in_file(Error::format(format!(
                        "tensor {name:?} has dtype U8, which holds quantized blocks only when the metadata key \
                         {QUANT_METADATA_KEY:?} describes it; supported weight dtypes are F32, F16 and BF16"
                    ))))
                }
                (d, None) => (map_dtype(&name, d).map_err(in_file)?, info.shape.clone()),
                (d, Some(_)) => {
                    return Err(in_file(Error::format(format!(
                        "tensor {name:?} is described as quantized in {QUANT_METADATA_KEY:?} but has dtype {d:?}, not U8"
                    ))))
                }
            };
            let (s, e) = info.data_offsets;
            let tensor = Tensor::from_mapped(map.clone(), data_start + s, e - s, dtype, shape)
                .map_err(|e| Error::format(format!("{}: tensor {name:?}: {e}", path.display())))?;
            if self.tensors.insert(name.clone(), tensor).is_some() {
                return Err(Error::format(format!("tensor {name:?} appears in more than one file ({})", path.display())));
            }
        }
        if let Some(name) = quantized.keys().next() {
            return Err(in_file(Error::format(format!(
                "{QUANT_METADATA_KEY:?} describes tensor {name:?}, which the file does not hold"
            ))));
        }
        self.file_bytes += map.len() as u64;
        self.files.push(path.to_path_buf());
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensor `name`, checked to have exactly `shape`.
    pub fn require(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name).ok_or_else(|| Error::format(format!("missing tensor {name:?} in checkpoint")))?;
        if t.shape() != shape {
            return Err(Error::format(format!(
                "tensor {name:?} has shape {:?}, expected {shape:?} from config.json",
                t.shape()
            )));
        }
        Ok(t.clone())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test file's directory, removed when dropped (a mapped file stays
    /// readable after its name is gone).
    struct TempFile(PathBuf);

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// A safetensors file of one U8 tensor of `bytes` bytes with `metadata` (raw JSON
    /// string values) in a fresh directory.
    fn write(tag: &str, bytes: usize, metadata: Option<&str>, dtype: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("edgellm-stq-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = metadata.map(|m| format!("\"__metadata__\":{{\"{QUANT_METADATA_KEY}\":{}}},", serde_json::Value::String(m.into()))).unwrap_or_default();
        let elems = if dtype == "F32" { bytes / 4 } else { bytes };
        let header = format!("{{{meta}\"w\":{{\"dtype\":\"{dtype}\",\"shape\":[{elems}],\"data_offsets\":[0,{bytes}]}}}}");
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend((0..bytes).map(|i| (i * 37 % 251) as u8));
        let path = dir.join("model.safetensors");
        std::fs::write(&path, file).unwrap();
        TempFile(path)
    }

    fn open(path: &Path) -> Result<TensorStore> {
        let mut s = TensorStore { tensors: BTreeMap::new(), files: Vec::new(), file_bytes: 0 };
        s.add_file(path)?;
        Ok(s)
    }

    #[test]
    fn quantized_u8_tensor_loads_with_its_block_type_and_shape() {
        // 2 rows of 64 q4_0 values: 2 × 2 blocks × 18 bytes.
        let p = write("ok", 72, Some(r#"{"w": {"type": "q4_0", "shape": [2, 64]}}"#), "U8");
        let s = open(&p).unwrap();
        let t = s.get("w").unwrap();
        assert_eq!(t.dtype(), DType::Quant(GgmlType::Q4_0));
        assert_eq!(t.shape(), &[2, 64]);
        assert_eq!(t.nbytes(), 72);
        let mut row = vec![0f32; 64];
        t.row_to_f32(1, &mut row); // dequantizes without panicking
    }

    #[test]
    fn low_bit_group_tensors_load_with_their_type() {
        // 2 rows of 256 q3a_g128 values: 2 × 2 blocks × 52 bytes; 1 × 128 q2_g128: 34.
        for (tag, ty, bytes, shape) in [("q3a", GgmlType::Q3AG128, 208, "[2, 256]"), ("q2", GgmlType::Q2G128, 34, "[1, 128]")] {
            let meta = format!(r#"{{"w": {{"type": "{}", "shape": {shape}}}}}"#, ty.name());
            let s = open(&write(tag, bytes, Some(&meta), "U8")).unwrap();
            let t = s.get("w").unwrap();
            assert_eq!(t.dtype(), DType::Quant(ty));
            assert_eq!(t.nbytes(), bytes);
            let mut row = vec![0f32; t.shape()[1]];
            t.row_to_f32(0, &mut row);
        }
        // Rows must be whole groups of 128.
        let bad = write("q2bad", 34, Some(r#"{"w": {"type": "q2_g128", "shape": [2, 64]}}"#), "U8");
        assert!(matches!(open(&bad), Err(Error::ModelFormat(_))));
    }

    #[test]
    fn hostile_quant_metadata_is_a_format_error() {
        let cases: [(&str, usize, Option<&str>, &str); 12] = [
            ("nometa", 72, None, "U8"),
            ("badjson", 72, Some("{not json"), "U8"),
            ("notobj", 72, Some("[1, 2]"), "U8"),
            ("notype", 72, Some(r#"{"w": {"shape": [2, 64]}}"#), "U8"),
            ("badtype", 72, Some(r#"{"w": {"type": "f32", "shape": [2, 64]}}"#), "U8"),
            ("wrongsize", 72, Some(r#"{"w": {"type": "q4_0", "shape": [3, 64]}}"#), "U8"),
            ("partialblock", 72, Some(r#"{"w": {"type": "q4_0", "shape": [2, 60]}}"#), "U8"),
            ("overflow", 72, Some(r#"{"w": {"type": "q8_0", "shape": [18446744073709551615, 18446744073709551584]}}"#), "U8"),
            ("negative", 72, Some(r#"{"w": {"type": "q4_0", "shape": [-2, 64]}}"#), "U8"),
            ("noshape", 72, Some(r#"{"w": {"type": "q4_0", "shape": []}}"#), "U8"),
            ("ghost", 72, Some(r#"{"w": {"type": "q4_0", "shape": [2, 64]}, "x": {"type": "q4_0", "shape": [2, 64]}}"#), "U8"),
            ("notu8", 36, Some(r#"{"w": {"type": "q4_0", "shape": [1, 64]}}"#), "F32"),
        ];
        for (tag, bytes, meta, dtype) in cases {
            let p = write(tag, bytes, meta, dtype);
            match open(&p) {
                Err(Error::ModelFormat(m)) => assert!(!m.is_empty(), "{tag}"),
                Err(e) => panic!("{tag}: wrong error kind {e:?}"),
                Ok(_) => panic!("{tag}: loaded"),
            }
        }
    }
}
