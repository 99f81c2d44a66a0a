//! Array operations on numpy arrays: `matmul` (2-D float32 `A @ B` on edgellm's
//! packed GEMM and thread pool).

use crate::error::to_py;
use edgellm_core::model::parse_isa;
use edgellm_core::ops::matmul::matmul_f32_in;
use edgellm_core::Error;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
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
    // A Rust allocation (mimalloc, the extension's allocator) handed to numpy
    // without a copy: mimalloc gives a freed product's pages to the next one,
    // where a `numpy.empty` array past glibc's 32 MiB mapping threshold came
    // as fresh pages to fault in on every call (n = 4096, 2 threads: 333
    // GFLOP/s against 346 into reused memory). A product too large for memory
    // is a MemoryError, not an abort or the OOM killer: mimalloc maps without
    // reserving (a 4 TiB request succeeds), so the system allocator is asked
    // first, as numpy would be.
    let len = n.checked_mul(m).filter(|&l| system_would_allocate(l.saturating_mul(4))).ok_or_else(|| too_large(n, m))?;
    let mut out: Vec<f32> = Vec::new();
    out.try_reserve_exact(len).map_err(|_| too_large(n, m))?;
    let out = py.detach(|| matmul_f32_in(out, sa, n, k, sb, m, threads, isa)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out).reshape([n, m])?.into_any())
}

/// Whether the system allocator grants `bytes` (asked, then freed untouched,
/// from 1 GiB up; below, no system refuses for want of memory alone).
fn system_would_allocate(bytes: usize) -> bool {
    use std::alloc::{GlobalAlloc, Layout, System};
    if bytes < 1 << 30 {
        return true;
    }
    let Ok(layout) = Layout::from_size_align(bytes, 64) else { return false };
    // SAFETY: a non-zero layout; the block is freed at once, never touched.
    let p = unsafe { System.alloc(layout) };
    if p.is_null() {
        return false;
    }
    // SAFETY: allocated just above with this layout.
    unsafe { System.dealloc(p, layout) };
    true
}

fn too_large(n: usize, m: usize) -> PyErr {
    pyo3::exceptions::PyMemoryError::new_err(format!("matmul: no memory for the {n} × {m} float32 product"))
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
