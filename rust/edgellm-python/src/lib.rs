//! `edgellm._core`: the Python face of edgellm-core. Thin by design: argument
//! conversion, GIL release around compute, and error mapping (see `error.rs`).

mod calibrate;
mod error;
mod generator;
mod model;
mod ops;

use pyo3::prelude::*;

/// The engine's own allocations (activations, packed operands, per-call
/// scratch) go through mimalloc, which keeps freed pages for reuse. With
/// glibc's malloc, the calling thread's heap was trimmed and grown again on
/// every call: 740 fresh pages (page faults) per 512³ `matmul`, half its time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::PyModel>()?;
    m.add_class::<generator::PyGenerator>()?;
    calibrate::register(m)?;
    m.add_function(wrap_pyfunction!(ops::matmul, m)?)?;
    m.add_function(wrap_pyfunction!(ops::read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(supported_isas, m)?)?;
    m.add_function(wrap_pyfunction!(active_isa, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// Kernel paths this CPU can run (values accepted by `EDGELLM_ISA` and `isa=`).
#[pyfunction]
fn supported_isas() -> Vec<&'static str> {
    edgellm_core::model::supported_isas()
}

/// The kernel path used by default in this process.
#[pyfunction]
fn active_isa() -> PyResult<&'static str> {
    edgellm_core::model::default_isa().map_err(error::to_py)
}
