//! `edgellm._core.Calibrator`: layer-by-layer capture of the inputs of every linear
//! layer for post-training quantization (see `edgellm_core::model::capture`).
//! Compute runs with the GIL released.

use crate::error::{to_py, IntoPy};
use crate::model::PyModel;
use edgellm_core::model::capture::Calibrator;
use edgellm_core::Error;
use edgellm_kernels::quant::minifloat::{self, Fp8};
use edgellm_kernels::quant::{dequantize_row, quantize_row, GgmlType};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Mutex;

#[pyclass(name = "Calibrator", module = "edgellm._core", frozen)]
pub struct PyCalibrator {
    inner: Mutex<Calibrator>,
}

fn matrix<'py>(py: Python<'py>, v: Vec<f32>, cols: usize) -> PyResult<Bound<'py, PyAny>> {
    let rows = v.len().checked_div(cols).unwrap_or(0);
    Ok(PyArray1::from_vec(py, v).reshape([rows, cols])?.into_any())
}

fn contiguous<'a, E>(name: &str, s: Result<&'a [f32], E>) -> PyResult<&'a [f32]> {
    s.map_err(|_| to_py(Error::arg(format!("{name} must be a C-contiguous float32 array"))))
}

impl PyCalibrator {
    fn lock(&self) -> std::sync::MutexGuard<'_, Calibrator> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyCalibrator {
    /// Embeds `sequences` (lists of token ids; each an independent sequence from
    /// position 0) ready to capture the first layer's inputs.
    #[new]
    fn new(py: Python<'_>, model: &PyModel, sequences: Vec<Vec<i64>>) -> PyResult<Self> {
        let m = model.inner.clone();
        let vocab = m.config.vocab_size;
        let seqs = sequences
            .into_iter()
            .map(|s| {
                s.into_iter()
                    .map(|i| u32::try_from(i).map_err(|_| to_py(Error::InvalidToken { id: i, vocab_size: vocab })))
                    .collect::<PyResult<Vec<u32>>>()
            })
            .collect::<PyResult<Vec<_>>>()?;
        let cal = py.detach(move || Calibrator::new(m, &seqs)).py_err()?;
        Ok(PyCalibrator { inner: Mutex::new(cal) })
    }

    #[getter]
    fn layer(&self) -> usize {
        self.lock().layer()
    }
    #[getter]
    fn num_layers(&self) -> usize {
        self.lock().num_layers()
    }
    #[getter]
    fn tokens(&self) -> usize {
        self.lock().tokens()
    }
    #[getter]
    fn norm_kind(&self) -> &'static str {
        self.lock().norm_kind()
    }
    #[getter]
    fn block_kind(&self) -> &'static str {
        self.lock().block_kind()
    }
    /// Names of the current layer's linear layers (gate only in gated MLPs).
    fn linear_names(&self) -> Vec<&'static str> {
        let mut c = self.lock();
        edgellm_core::model::capture::LINEAR_NAMES.into_iter().filter(|n| c.linear(n).is_ok()).collect()
    }

    /// Inputs of the current layer's projections with its current weights:
    /// `{"attn_in", "o_in", "mlp_in", "down_in"}`, float32 `(tokens, features)`.
    fn capture<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (inputs, (h, qd, f)) = py
            .detach(|| {
                let cal = self.lock();
                let c = &cal.model().config;
                let dims = (c.hidden_size, c.q_dim(), c.intermediate_size);
                cal.capture().map(|i| (i, dims))
            })
            .py_err()?;
        let d = PyDict::new(py);
        d.set_item("attn_in", matrix(py, inputs.attn_in, h)?)?;
        d.set_item("o_in", matrix(py, inputs.o_in, qd)?)?;
        d.set_item("mlp_in", matrix(py, inputs.mlp_in, h)?)?;
        d.set_item("down_in", matrix(py, inputs.down_in, f)?)?;
        Ok(d)
    }

    /// Runs the current layer with its current weights; its outputs feed the next layer.
    fn advance(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.lock().advance()).py_err()
    }

    /// Logits of every calibration token once all layers were advanced through.
    fn logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (v, vocab) = py.detach(|| {
            let cal = self.lock();
            cal.logits().map(|l| (l, cal.model().config.vocab_size))
        }).py_err()?;
        matrix(py, v, vocab)
    }

    /// The current layer's projection `name` ("q", "k", "v", "o", "gate", "up",
    /// "down"): (float32 weight `(out, in)`, bias or None).
    fn linear<'py>(&self, py: Python<'py>, name: &str) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let (w, shape, b) = self.lock().linear(name).py_err()?;
        Ok((matrix(py, w, shape[1])?, b.map(|b| PyArray1::from_vec(py, b).into_any())))
    }

    /// Replaces the current layer's projection `name` (same shape) and, if given,
    /// its bias, for the following captures and the advance.
    #[pyo3(signature = (name, weight, bias=None))]
    fn set_linear(
        &self,
        py: Python<'_>,
        name: &str,
        weight: PyReadonlyArray2<'_, f32>,
        bias: Option<PyReadonlyArray1<'_, f32>>,
    ) -> PyResult<()> {
        let w = contiguous("weight", weight.as_slice())?.to_vec();
        let b = match &bias {
            Some(b) => Some(contiguous("bias", b.as_slice())?.to_vec()),
            None => None,
        };
        py.detach(|| self.lock().set_linear(name, &w, b.as_deref())).py_err()
    }

    /// The current layer's norm `name` ("attn_norm", "mlp_norm", "post_attn_norm",
    /// "post_mlp_norm"): (weight, bias or None), as stored.
    fn norm<'py>(&self, py: Python<'py>, name: &str) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let (w, b) = self.lock().norm(name).py_err()?;
        Ok((PyArray1::from_vec(py, w).into_any(), b.map(|b| PyArray1::from_vec(py, b).into_any())))
    }

    #[pyo3(signature = (name, weight, bias=None))]
    fn set_norm(&self, name: &str, weight: PyReadonlyArray1<'_, f32>, bias: Option<PyReadonlyArray1<'_, f32>>) -> PyResult<()> {
        let w = contiguous("weight", weight.as_slice())?;
        let b = match &bias {
            Some(b) => Some(contiguous("bias", b.as_slice())?),
            None => None,
        };
        if weight.ndim() != 1 {
            return Err(to_py(Error::arg("norm weight must be 1-D")));
        }
        self.lock().set_norm(name, w, b).py_err()
    }
}

fn fp8_format(name: &str) -> PyResult<Fp8> {
    match name.to_ascii_lowercase().as_str() {
        "e4m3" | "e4m3fn" | "float8_e4m3fn" => Ok(Fp8::E4M3),
        "e5m2" | "float8_e5m2" => Ok(Fp8::E5M2),
        _ => Err(to_py(Error::arg(format!("unknown FP8 format {name:?}; choose e4m3 or e5m2")))),
    }
}

/// FP8 codes (uint8) of float32 values, rounded to nearest even; `saturate` clamps
/// magnitudes past the format's largest finite value instead of overflowing.
#[pyfunction]
#[pyo3(signature = (values, format, saturate=false))]
pub fn fp8_encode<'py>(py: Python<'py>, values: PyReadonlyArray1<'py, f32>, format: &str, saturate: bool) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let f = fp8_format(format)?;
    let v = contiguous("values", values.as_slice())?.to_vec();
    let out: Vec<u8> = py.detach(|| v.iter().map(|&x| if saturate { f.encode_saturating(x) } else { f.encode(x) }).collect());
    Ok(PyArray1::from_vec(py, out))
}

/// float32 values of FP8 codes.
#[pyfunction]
pub fn fp8_decode<'py>(py: Python<'py>, codes: PyReadonlyArray1<'py, u8>, format: &str) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let f = fp8_format(format)?;
    let c = codes.as_slice().map_err(|_| to_py(Error::arg("codes must be a C-contiguous uint8 array")))?.to_vec();
    Ok(PyArray1::from_vec(py, c.iter().map(|&b| f.decode(b)).collect()))
}

/// Indices (0..16) of the nearest NF4 code-book values.
#[pyfunction]
pub fn nf4_encode<'py>(py: Python<'py>, values: PyReadonlyArray1<'py, f32>) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let v = contiguous("values", values.as_slice())?.to_vec();
    let out: Vec<u8> = py.detach(|| v.iter().map(|&x| minifloat::nf4_encode(x)).collect());
    Ok(PyArray1::from_vec(py, out))
}

/// The 16 NF4 code-book values.
#[pyfunction]
pub fn nf4_values() -> Vec<f32> {
    minifloat::NF4_VALUES.to_vec()
}

/// The block type named `name` for [`quantize_blocks`] / [`dequantize_blocks`].
fn block_type(name: &str) -> PyResult<GgmlType> {
    GgmlType::from_name(name.trim()).filter(|t| t.is_quantized()).ok_or_else(|| {
        to_py(Error::arg(format!("unknown block type {name:?} (e.g. q8_0, q4_K, nf4, fp8_e4m3, fp8_e5m2)")))
    })
}

/// The rows of a float32 matrix quantized to `type` blocks with the engine's
/// reference quantizer (what in-situ `quant=` stores): uint8 `(rows, row_bytes)`.
#[pyfunction]
#[pyo3(name = "quantize_blocks", signature = (values, r#type))]
pub fn quantize_blocks<'py>(py: Python<'py>, values: PyReadonlyArray2<'py, f32>, r#type: &str) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let ty = block_type(r#type)?;
    let (rows, cols) = (values.shape()[0], values.shape()[1]);
    let rb = ty.row_bytes(cols).filter(|&b| b > 0).ok_or_else(|| {
        to_py(Error::arg(format!("rows of {cols} values are not whole {} blocks of {}", ty.name(), ty.block_elems())))
    })?;
    let v = contiguous("values", values.as_slice())?.to_vec();
    let out = py.detach(|| {
        let mut out = vec![0u8; rows * rb];
        for (x, q) in v.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
            quantize_row(ty, x, q).expect("lengths checked");
        }
        out
    });
    PyArray1::from_vec(py, out).reshape([rows, rb])
}

/// float32 `(rows, cols)` of uint8 rows of `type` blocks (`(rows, row_bytes)`).
#[pyfunction]
#[pyo3(name = "dequantize_blocks", signature = (blocks, r#type, cols))]
pub fn dequantize_blocks<'py>(py: Python<'py>, blocks: PyReadonlyArray2<'py, u8>, r#type: &str, cols: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let ty = block_type(r#type)?;
    let (rows, rb) = (blocks.shape()[0], blocks.shape()[1]);
    if ty.row_bytes(cols) != Some(rb) || cols == 0 {
        return Err(to_py(Error::arg(format!("rows of {rb} bytes are not {cols} values of {} blocks", ty.name()))));
    }
    let b = blocks.as_slice().map_err(|_| to_py(Error::arg("blocks must be a C-contiguous uint8 array")))?.to_vec();
    let out = py.detach(|| {
        let mut out = vec![0f32; rows * cols];
        for (q, y) in b.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
            dequantize_row(ty, q, y).expect("lengths checked");
        }
        out
    });
    PyArray1::from_vec(py, out).reshape([rows, cols])
}

pub fn register(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_blocks, m)?)?;
    m.add_class::<PyCalibrator>()?;
    m.add_function(wrap_pyfunction!(fp8_encode, m)?)?;
    m.add_function(wrap_pyfunction!(fp8_decode, m)?)?;
    m.add_function(wrap_pyfunction!(nf4_encode, m)?)?;
    m.add_function(wrap_pyfunction!(nf4_values, m)?)?;
    Ok(())
}
