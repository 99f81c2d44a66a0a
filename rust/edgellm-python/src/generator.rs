//! A running generation, exposed as a Python iterator. Each step runs with the
//! GIL released; between steps Python can deliver Ctrl-C.

use crate::error::IntoPy;
use edgellm_core::Generator;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Mutex;

#[pyclass(name = "Generator", module = "edgellm._core")]
pub struct PyGenerator {
    inner: Mutex<Generator>,
    /// Yield text pieces (true) or token ids (false).
    text: bool,
}

impl PyGenerator {
    pub fn new(gen: Generator, text: bool) -> Self {
        PyGenerator { inner: Mutex::new(gen), text }
    }

    fn step(&self, py: Python<'_>) -> PyResult<Option<edgellm_core::generate::Step>> {
        py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.step()
        })
        .py_err()
    }

    fn with<R>(&self, f: impl FnOnce(&Generator) -> R) -> R {
        f(&self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[pymethods]
impl PyGenerator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next piece: text (str prompts) or a token id (id prompts).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            match self.step(py)? {
                None => return Ok(None),
                Some(s) if self.text => {
                    if !s.text.is_empty() {
                        return Ok(Some(s.text.into_pyobject(py)?.into_any().unbind()));
                    }
                }
                Some(s) => {
                    if let Some(t) = s.token {
                        return Ok(Some(t.into_pyobject(py)?.into_any().unbind()));
                    }
                }
            }
            py.check_signals()?;
        }
    }

    /// Runs to the end; returns (text, token ids). Ctrl-C raises KeyboardInterrupt
    /// between tokens and leaves the model usable.
    fn run(&self, py: Python<'_>) -> PyResult<(String, Vec<u32>)> {
        let mut text = String::new();
        let mut ids = Vec::new();
        while let Some(s) = self.step(py)? {
            text.push_str(&s.text);
            ids.extend(s.token);
            py.check_signals()?;
        }
        Ok((text, ids))
    }

    /// Why generation stopped: "eos", "length", "stop", "context_length", or None.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.with(|g| g.finish_reason().map(|r| r.as_str()))
    }

    /// Token ids generated so far.
    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.with(|g| g.generated().to_vec())
    }

    /// Timing and counts of this generation.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (s, kv_bytes) = self.with(|g| (g.stats().clone(), g.kv_cache_bytes()));
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("prefill_seconds", s.prefill_seconds)?;
        d.set_item("prompt_tokens_per_second", s.prompt_tokens_per_second())?;
        d.set_item("time_to_first_token", s.time_to_first_token)?;
        d.set_item("decode_seconds", s.decode_seconds)?;
        d.set_item("decode_tokens_per_second", s.decode_tokens_per_second())?;
        d.set_item("kv_cache_bytes", kv_bytes)?;
        Ok(d)
    }
}
