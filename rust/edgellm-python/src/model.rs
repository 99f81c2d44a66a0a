//! `edgellm._core.Model`: a loaded model shared by every generation started from it.

use crate::error::{to_py, IntoPy};
use crate::generator::PyGenerator;
use edgellm_core::info;
use edgellm_core::kv_cache::KvConfig;
use edgellm_core::model::{parse_isa, parse_quant, LoadOptions, Repack};
use edgellm_core::{Error, GenerationOptions, Generator, Model};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;

#[pyclass(name = "Model", module = "edgellm._core", frozen)]
pub struct PyModel {
    pub(crate) inner: Arc<Model>,
}

/// Token ids from Python ints, rejecting negatives and values past u32.
fn to_ids(ids: Vec<i64>, vocab: usize) -> PyResult<Vec<u32>> {
    ids.into_iter()
        .map(|i| u32::try_from(i).map_err(|_| to_py(Error::InvalidToken { id: i, vocab_size: vocab })))
        .collect()
}

impl PyModel {
    fn tokenizer(&self) -> PyResult<&edgellm_core::Tokenizer> {
        self.inner.tokenizer().py_err()
    }
}

#[pymethods]
impl PyModel {
    #[staticmethod]
    /// `progress`, if given, is called as `progress(done, total)` (with the GIL)
    /// while the weights are quantized.
    /// `kv_cache` is the KV policy as JSON (see `edgellm.load`).
    #[pyo3(signature = (path, threads=None, max_context=None, isa=None, quant=None, progress=None, kv_cache=None, repack=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<usize>,
        max_context: Option<usize>,
        isa: Option<String>,
        quant: Option<String>,
        progress: Option<Py<PyAny>>,
        kv_cache: Option<String>,
        repack: Option<String>,
    ) -> PyResult<Self> {
        let progress: Option<edgellm_core::model::Progress> = progress.map(|cb| {
            let f = move |done: usize, total: usize| {
                // A failing progress callback must not abort the load: report and go on.
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (done, total)) {
                        e.print(py);
                    }
                })
            };
            std::sync::Arc::new(f) as edgellm_core::model::Progress
        });
        let opts = LoadOptions {
            threads,
            max_context,
            isa: parse_isa(isa.as_deref()).py_err()?,
            quant: quant.as_deref().map(parse_quant).transpose().py_err()?,
            progress,
            kv_cache: match kv_cache {
                Some(json) => KvConfig::from_json(&json).py_err()?,
                None => KvConfig::default(),
            },
            repack: repack.as_deref().map(Repack::parse).transpose().py_err()?.unwrap_or_default(),
        };
        let model = py.detach(|| Model::load(&path, &opts)).py_err()?;
        Ok(PyModel { inner: Arc::new(model) })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.config.vocab_size
    }
    #[getter]
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    /// The KV policy, e.g. `streaming(sinks=4, window=1024) + kivi2(group=32, residual=128)`.
    #[getter]
    fn kv_cache(&self) -> String {
        self.inner.kv_config().describe()
    }
    /// Bytes of the KV cache of the most recent generation or evaluation.
    fn kv_cache_bytes(&self) -> usize {
        self.inner.kv_cache_bytes()
    }
    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }
    #[getter]
    fn isa(&self) -> &'static str {
        self.inner.isa().name()
    }
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer.is_some()
    }
    #[getter]
    fn has_chat_template(&self) -> bool {
        self.inner.tokenizer.as_ref().is_some_and(|t| t.chat_template().is_some())
    }

    // --- tokenizer -------------------------------------------------------
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let tok = self.tokenizer()?;
        py.detach(|| tok.encode(text, add_special_tokens)).py_err()
    }
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let tok = self.tokenizer()?;
        let ids = to_ids(ids, tok.vocab_size())?;
        tok.decode(&ids, skip_special_tokens).py_err()
    }
    fn token_to_id(&self, token: &str) -> PyResult<Option<u32>> {
        Ok(self.tokenizer()?.token_to_id(token))
    }
    fn id_to_token(&self, id: u32) -> PyResult<Option<String>> {
        Ok(self.tokenizer()?.id_to_token(id))
    }
    #[getter]
    fn tokenizer_vocab_size(&self) -> PyResult<usize> {
        Ok(self.tokenizer()?.vocab_size())
    }
    /// The tokenizer's BOS (as transformers' tokenizer reports it); config.json's
    /// only for a model without a tokenizer.
    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        match &self.inner.tokenizer {
            Some(t) => t.bos_id(),
            None => self.inner.config.bos_token_id,
        }
    }
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        let d = &self.inner.generation_defaults.eos_token_ids;
        if !d.is_empty() {
            return d.clone();
        }
        let c = &self.inner.config.eos_token_ids;
        if !c.is_empty() {
            return c.clone();
        }
        self.inner.tokenizer.as_ref().and_then(|t| t.eos_id()).into_iter().collect()
    }

    /// Renders a chat (messages as a JSON string) with the model's chat template.
    #[pyo3(signature = (messages_json, add_generation_prompt=true, extra_json=None))]
    fn apply_chat_template(&self, messages_json: &str, add_generation_prompt: bool, extra_json: Option<&str>) -> PyResult<String> {
        let tok = self.tokenizer()?;
        let tmpl = tok
            .chat_template()
            .ok_or_else(|| to_py(Error::ChatTemplate("this model's tokenizer_config.json has no chat_template".into())))?;
        let messages: serde_json::Value =
            serde_json::from_str(messages_json).map_err(|e| to_py(Error::ChatTemplate(format!("messages: {e}"))))?;
        let extra = match extra_json {
            Some(s) => match serde_json::from_str(s) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(to_py(Error::ChatTemplate("extra template variables must be a JSON object".into()))),
            },
            None => Default::default(),
        };
        tmpl.render(&messages, add_generation_prompt, tok.special_strings(), &extra).py_err()
    }

    // --- compute -----------------------------------------------------------
    /// Full-sequence logits of a fresh sequence, float32 `(len, vocab)`.
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyAny>> {
        let vocab = self.inner.config.vocab_size;
        let ids = to_ids(ids, vocab)?;
        if ids.is_empty() {
            return Err(to_py(Error::arg("logits needs at least one token id")));
        }
        let n = ids.len();
        let m = self.inner.clone();
        let out = py.detach(move || m.logits(&ids)).py_err()?;
        Ok(PyArray1::from_vec(py, out).reshape([n, vocab])?.into_any())
    }

    /// Teacher-forced (total NLL in nats, predicted tokens) over windows.
    /// `decode=True` feeds one token per step through the KV policy.
    #[pyo3(signature = (ids, window=None, decode=false))]
    fn nll(&self, py: Python<'_>, ids: Vec<i64>, window: Option<usize>, decode: bool) -> PyResult<(f64, usize)> {
        let ids = to_ids(ids, self.inner.config.vocab_size)?;
        let m = self.inner.clone();
        // Check for Ctrl-C between chunks: the callback briefly takes the GIL.
        let mut cancel = || Python::attach(|py| py.check_signals().is_err());
        let r = py.detach(move || m.nll(&ids, window, decode, &mut cancel));
        match r {
            Err(Error::Cancelled) => {
                py.check_signals()?;
                Err(to_py(Error::Cancelled))
            }
            other => other.py_err(),
        }
    }

    /// Starts a generation from token ids. `text=True` makes the iterator yield
    /// text pieces; otherwise it yields token ids.
    #[pyo3(signature = (ids, text, max_new_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
        repetition_penalty=None, presence_penalty=None, frequency_penalty=None, seed=None, stop=None,
        stop_token_ids=None, ignore_eos=false))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        ids: Vec<i64>,
        text: bool,
        max_new_tokens: Option<usize>,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repetition_penalty: Option<f32>,
        presence_penalty: Option<f32>,
        frequency_penalty: Option<f32>,
        seed: Option<u64>,
        stop: Option<Vec<String>>,
        stop_token_ids: Option<Vec<i64>>,
        ignore_eos: bool,
    ) -> PyResult<PyGenerator> {
        let vocab = self.inner.config.vocab_size;
        let opts = GenerationOptions {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop: stop.unwrap_or_default(),
            stop_token_ids: to_ids(stop_token_ids.unwrap_or_default(), vocab)?,
            ignore_eos,
        };
        let gen = Generator::new(self.inner.clone(), to_ids(ids, vocab)?, &opts, text).py_err()?;
        Ok(PyGenerator::new(gen, text))
    }

    // --- description ---------------------------------------------------------
    /// Architecture, sizes and memory accounting.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner;
        let c = &m.config;
        let d = PyDict::new(py);
        d.set_item("architecture", c.architecture.hf_name())?;
        d.set_item("path", m.path.to_string_lossy().to_string())?;
        d.set_item("dtype", m.weight_dtype().name())?;
        d.set_item("file_bytes", m.file_bytes())?;
        d.set_item("repacked_bytes", info::repacked_bytes(m))?;
        d.set_item("files", m.files().iter().map(|f| f.to_string_lossy().to_string()).collect::<Vec<_>>())?;
        let p = info::param_counts(m);
        let params = PyDict::new(py);
        params.set_item("embedding", p.embedding)?;
        params.set_item("attention", p.attention)?;
        params.set_item("ffn", p.ffn)?;
        params.set_item("norms", p.norms)?;
        params.set_item("head", p.head)?;
        params.set_item("total", p.total())?;
        d.set_item("parameters", params)?;
        d.set_item("kv_bytes_per_token", info::kv_bytes_per_token(m))?;
        let by_dtype = PyDict::new(py);
        for (k, v) in info::weight_bytes_by_dtype(m) {
            by_dtype.set_item(k, v)?;
        }
        d.set_item("weight_bytes", by_dtype)?;
        d.set_item("memory_at_max_context", self.memory(py, None, 1)?)?;
        d.set_item("kv_dtype", "f32")?;
        d.set_item("kv_cache", m.kv_config().describe())?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("hidden_size", c.hidden_size)?;
        d.set_item("intermediate_size", c.intermediate_size)?;
        d.set_item("num_layers", c.num_layers)?;
        d.set_item("num_heads", c.num_heads)?;
        d.set_item("num_kv_heads", c.num_kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("max_position_embeddings", c.max_position_embeddings)?;
        d.set_item("max_context", m.max_context())?;
        d.set_item("tie_word_embeddings", c.tie_word_embeddings)?;
        d.set_item("rope_theta", c.ropes[0].theta)?;
        d.set_item("rope_scaling", format!("{:?}", c.ropes[0].scaling))?;
        d.set_item("sliding_windows", c.layer_windows.clone())?;
        d.set_item("threads", m.threads())?;
        d.set_item("isa", m.isa().name())?;
        Ok(d)
    }

    /// Bytes needed for `batch` sequences of `context` tokens (default: the model's
    /// context): weights, KV cache, activations and their total.
    #[pyo3(signature = (context=None, batch=1))]
    fn memory<'py>(&self, py: Python<'py>, context: Option<usize>, batch: usize) -> PyResult<Bound<'py, PyDict>> {
        let ctx = context.unwrap_or(self.inner.max_context());
        let e = info::memory_estimate(&self.inner, ctx, batch);
        let d = PyDict::new(py);
        d.set_item("context", ctx)?;
        d.set_item("batch", batch)?;
        d.set_item("weights", e.weights)?;
        d.set_item("kv_cache", e.kv_cache)?;
        d.set_item("activations", e.activations)?;
        d.set_item("total", e.total())?;
        Ok(d)
    }

    /// generation_config.json values (None where unset).
    fn generation_defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let g = &self.inner.generation_defaults;
        let d = PyDict::new(py);
        d.set_item("do_sample", g.do_sample)?;
        d.set_item("temperature", g.temperature)?;
        d.set_item("top_k", g.top_k)?;
        d.set_item("top_p", g.top_p)?;
        d.set_item("min_p", g.min_p)?;
        d.set_item("repetition_penalty", g.repetition_penalty)?;
        d.set_item("max_new_tokens", g.max_new_tokens)?;
        d.set_item("max_length", g.max_length)?;
        d.set_item("eos_token_id", g.eos_token_ids.clone())?;
        Ok(d)
    }
}
