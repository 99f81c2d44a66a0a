//! Array operations on numpy arrays: `matmul` (2-D float32 `A @ B` on edgellm's
//! packed GEMM and thread pool).

use crate::error::to_py;
use edgellm_core::model::parse_isa;
use edgellm_core::ops::matmul::matmul_f32_into;
use edgellm_core::Error;
use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// `a @ b` for C-contiguous 2-D float32 arrays, with the GIL released.
#[pyfunction]
#[pyo3(signature = (a, b, threads=None, isa=None))]
pub fn matmul<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f32>,
    b: PyReadonlyArray2<'py, f32>,
    threads: Option<usize>,
    isa: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let ([n, k], [k2, m]) = (shape2(a.shape()), shape2(b.shape()));
    if k != k2 {
        return Err(to_py(Error::arg(format!("matmul: a is {n} × {k} but b is {k2} × {m} (inner sizes differ)"))));
    }
    let isa = parse_isa(isa.as_deref()).map_err(to_py)?;
    let sa = a.as_slice().map_err(|_| not_contiguous("a"))?;
    let sb = b.as_slice().map_err(|_| not_contiguous("b"))?;
    // numpy's own allocation (it reuses freed memory, where a large Rust one
    // came back as fresh pages to fault in on every call), made by
    // `numpy.empty` so that a product too large for memory is its MemoryError.
    let arr = py
        .import("numpy")?
        .call_method1("empty", ((n, m), "float32"))?
        .cast_into::<PyArray2<f32>>()?;
    let mut rw = arr.readwrite();
    let out = rw.as_slice_mut().map_err(|_| not_contiguous("the output"))?;
    // `empty` leaves the values unset: `matmul_f32_into` writes them all.
    py.detach(|| matmul_f32_into(sa, n, k, sb, m, out, threads, isa)).map_err(to_py)?;
    drop(rw);
    Ok(arr.into_any())
}

fn not_contiguous(name: &str) -> PyErr {
    to_py(Error::arg(format!("matmul: {name} must be a C-contiguous float32 array")))
}

fn shape2(s: &[usize]) -> [usize; 2] {
    [s[0], s[1]]
}

/// Sustained memory read bandwidth in GB/s (see `edgellm.bench.bandwidth_probe`),
/// with the GIL released.
#[pyfunction]
#[pyo3(signature = (mib=1024, reps=5, threads=None))]
pub fn read_bandwidth(py: Python<'_>, mib: usize, reps: usize, threads: Option<usize>) -> PyResult<f64> {
    py.detach(|| edgellm_core::ops::bandwidth::read_bandwidth(mib, reps, threads)).map_err(to_py)
}
