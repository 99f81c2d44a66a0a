//! A loaded model: configuration, weights, tokenizer and the thread pool that runs it.

pub mod capture;
pub mod config;
pub mod rope;
mod transformer;
pub mod weights;

pub use transformer::LogitsRows;

use crate::error::{Error, Result};
use crate::formats::hf_config::{self, GenerationDefaults};
use crate::formats::TensorStore;
use crate::kv_cache::{KvCache, KvConfig};
use crate::pool::Pool;
use std::sync::atomic::{AtomicUsize, Ordering};
use crate::tensor::DType;
use crate::tokenizer::Tokenizer;
use config::ModelConfig;
use edgellm_kernels::{Isa, Kernels};
use rope::Rope;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use transformer::{Transformer, Workspace};
use weights::Weights;

/// Passes of up to this many tokens hand their buffers to the next pass.
const KEEP_WORKSPACE_TOKENS: usize = 16;

/// Called as `(done, total)` while a long load step (quantization) advances.
pub type Progress = std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Options of [`Model::load`].
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Worker threads (default: the machine's available parallelism).
    pub threads: Option<usize>,
    /// Longest sequence (prompt + generated) to allow; default `max_position_embeddings`.
    pub max_context: Option<usize>,
    /// Force a kernel path (default: `EDGELLM_ISA`, else the best the CPU has).
    pub isa: Option<Isa>,
    /// Quantize the weight matrices at load (in-situ), e.g. q8_0, q4_0, q4_K.
    pub quant: Option<edgellm_kernels::quant::GgmlType>,
    /// Progress of in-situ quantization, one call per weight matrix.
    pub progress: Option<Progress>,
    /// The KV-cache policy of every generation and evaluation (default: full f32).
    pub kv_cache: KvConfig,
    /// Which weights to repack at load into the kernels' resident panels.
    pub repack: Repack,
}

/// Which weights [`Model::load`] repacks into resident panels, where the kernel
/// table has them: q4_0/q8_0 (and q4_K/q5_K/q6_K on x86) into
/// `edgellm_kernels::quant::resident` (each dot the scalar reference's bits:
/// q4_0/q8_0 results unchanged, q4_K decode no longer summed in another order
/// than prompts), f32/f16/bf16 into `edgellm_kernels::panels` (summed
/// in the packed GEMM's order at every prompt length, so a token's outputs do
/// not depend on the batch; decode differs from the row layout's by summation
/// order). Measured on a 2-core Zen 4, TinyLlama, two models alternating in one
/// process, median tok/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repack {
    /// Where it costs no memory: q4_0, q8_0, q4_K, q5_K, q6_K and float weights
    /// mapped from the file. q4_0 decode +14% AVX-512, +5% AVX2; q8_0 +10%, +9%; Q4_K_M
    /// files (their q4_K) +10-19% decode, +9% pp512 AVX2 (2-core Zen 3); Q5_K_M
    /// (their q5_K) decode +13-15% on one thread, +5-9% on two, pp512 -2..+3%;
    /// Q6_K decode +20% on one thread, +13% on two, pp512 unchanged, and Q4_K_M
    /// (its q6_K tensors) decode ~+3%, pp512 +3%; F16 decode
    /// +10%, 4-token prompts +50%, 16-token +70%, 512-token +2%. Loading copies
    /// the weights once into fresh memory (2.2 GB of F16: 0.7-3 s on this VM,
    /// most of it the kernel zeroing new pages). Weights quantized at load are
    /// held in memory, where a repacked copy would double them.
    #[default]
    Auto,
    /// Every weight with a resident layout, mapped or not; on aarch64 (the NEON
    /// kernels on both layouts are tested under qemu, not timed on hardware)
    /// the only way in.
    All,
    /// None: the file's row layout throughout.
    Off,
}

impl Repack {
    /// Parses `auto`, `all` or `off`.
    pub fn parse(name: &str) -> Result<Repack> {
        match name {
            "auto" => Ok(Repack::Auto),
            "all" => Ok(Repack::All),
            "off" => Ok(Repack::Off),
            other => Err(Error::arg(format!("repack must be auto, all or off, not {other:?}"))),
        }
    }

    /// Whether `t` (of its type, mapped or in memory) is repacked.
    pub fn applies_to(self, t: &crate::tensor::Tensor) -> bool {
        use edgellm_kernels::quant::GgmlType;
        match self {
            // Measured on x86-64 only: the NEON tiles are tested under qemu, whose
            // speed says nothing, so there they are opt-in (`All`).
            Repack::Auto => {
                cfg!(target_arch = "x86_64")
                    && matches!(
                        t.dtype(),
                        DType::Quant(GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
                            | DType::F32
                            | DType::F16
                            | DType::BF16
                    )
                    && t.is_mapped()
            }
            Repack::All => true,
            Repack::Off => false,
        }
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("max_context", &self.max_context)
            .field("isa", &self.isa)
            .field("quant", &self.quant)
            .field("progress", &self.progress.is_some())
            .field("kv_cache", &self.kv_cache)
            .field("repack", &self.repack)
            .finish()
    }
}

/// Parses a `quant=` option: a GGML type name (`q8_0`, `q4_K`, `q6_k`, ...) or
/// one of edgellm's own block types (`nf4`, `fp8_e4m3`, `fp8_e5m2`).
pub fn parse_quant(name: &str) -> Result<edgellm_kernels::quant::GgmlType> {
    use edgellm_kernels::quant::GgmlType::*;
    const CHOICES: [edgellm_kernels::quant::GgmlType; 16] =
        [F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2K, Q3K, Q4K, Q5K, Q6K, IQ4NL, NF4, F8E4M3, F8E5M2];
    let want = name.trim().to_ascii_lowercase();
    CHOICES.into_iter().find(|t| t.name().to_ascii_lowercase() == want).ok_or_else(|| {
        Error::arg(format!(
            "unknown quantization {name:?}; choose one of: {}",
            CHOICES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        ))
    })
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Option<Tokenizer>,
    pub generation_defaults: GenerationDefaults,
    pub path: PathBuf,
    files: Vec<PathBuf>,
    file_bytes: u64,
    max_context: usize,
    kv_config: KvConfig,
    /// Bytes of the KV cache of the latest generation or evaluation step.
    last_kv_bytes: AtomicUsize,
    ropes: Vec<Rope>,
    kernels: &'static Kernels,
    pool: Arc<Pool>,
    /// Buffers of finished short passes, taken by the next ones (one per pass
    /// running at the same time), so that decode steps do not allocate.
    workspaces: Mutex<Vec<Workspace>>,
}

impl Model {
    /// Loads an HF checkpoint directory (config.json + safetensors + tokenizer files).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")));
        }
        if crate::formats::gguf::is_gguf(path) {
            return Self::load_gguf(path, opts);
        }
        if !path.is_dir() {
            return Err(Error::format(format!(
                "{} is not a model directory (expected an HF checkpoint directory with config.json, or a .gguf file)",
                path.display()
            )));
        }
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::format(format!("{} has no config.json", path.display())));
        }
        let config = hf_config::parse_model_config(&hf_config::read_json(&cfg_path)?)?;
        let gen_path = path.join("generation_config.json");
        let generation_defaults = if gen_path.is_file() {
            hf_config::parse_generation_config(&hf_config::read_json(&gen_path)?)?
        } else {
            GenerationDefaults::default()
        };
        let store = TensorStore::open_dir(path)?;
        let weights = Weights::from_hf(&store, &config)?;
        let tokenizer = Tokenizer::from_dir(path)?;
        // transformers rounds Gemma's sqrt(hidden) embedding scale to the weights' dtype.
        Self::assemble(path, config, weights, tokenizer, generation_defaults, &store, opts, &[DType::BF16, DType::F16])
    }

    /// Loads a GGUF file: its metadata, tensors and vocabulary are translated to
    /// an HF config, HF tensor names and a tokenizer (see `formats::gguf`), then
    /// bound exactly as an HF checkpoint.
    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
        use crate::formats::gguf;
        let g = gguf::open(path)?;
        let as_format = |e: Error| match e {
            Error::Config(m) => Error::format(format!("{}: invalid GGUF metadata: {}", path.display(), m.trim_start_matches("config.json: "))),
            Error::ModelFormat(m) => {
                // Name the GGUF tensor behind an HF name in the message.
                let hint = g.names.iter().find(|(hf, _)| m.contains(&format!("{hf:?}"))).map(|(_, n)| format!(" (GGUF tensor {n:?})"));
                Error::format(format!("{}: {m}{}", path.display(), hint.unwrap_or_default()))
            }
            e => e,
        };
        let mut config = hf_config::parse_model_config(&g.config).map_err(as_format)?;
        config.rope_interleaved = g.interleaved_qk;
        let weights = Weights::from_hf(&g.store, &config).map_err(as_format)?;
        // Gemma's embedding scale, rounded like the HF path for bf16 weights.
        Self::assemble(path, config, weights, g.tokenizer, g.generation, &g.store, opts, &[DType::BF16])
    }

    /// The steps every format shares once its weights are bound: quantization at
    /// load (on the model's own pool, so `threads` is honoured), Gemma's embedding
    /// scale rounded for embeddings of a dtype in `round_embed_scale`, and the
    /// tokenizer/vocabulary check.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        path: &Path,
        mut config: ModelConfig,
        mut weights: Weights,
        tokenizer: Option<Tokenizer>,
        generation_defaults: GenerationDefaults,
        store: &TensorStore,
        opts: &LoadOptions,
        round_embed_scale: &[DType],
    ) -> Result<Model> {
        let kernels = match opts.isa {
            Some(isa) => Kernels::for_isa(isa)?,
            None => edgellm_kernels::kernels()?,
        };
        let pool = Pool::shared(opts.threads)?;
        if let Some(ty) = opts.quant {
            let tied = config.tie_word_embeddings;
            pool.install(|| weights.quantize(ty, tied, opts.progress.as_deref()))?;
        }
        if opts.repack != Repack::Off {
            pool.install(|| weights.make_resident(kernels, |t| opts.repack.applies_to(t)));
        }
        if config.norm_kind == config::NormKind::RmsOffset && round_embed_scale.contains(&weights.embed.dtype()) {
            config.embed_scale = match weights.embed.dtype() {
                DType::BF16 => half::bf16::from_f32(config.embed_scale).to_f32(),
                DType::F16 => half::f16::from_f32(config.embed_scale).to_f32(),
                DType::F32 | DType::Quant(_) => config.embed_scale,
            };
        }
        if let Some(t) = &tokenizer {
            if t.vocab_size() > config.vocab_size {
                return Err(Error::Tokenizer(format!(
                    "{}: tokenizer has {} tokens but the model's vocabulary has only {}",
                    path.display(),
                    t.vocab_size(),
                    config.vocab_size
                )));
            }
        }
        let max_context = match opts.max_context {
            Some(0) => return Err(Error::arg("max_context must be at least 1")),
            Some(m) => m,
            None => default_context(&config),
        };
        Ok(Model {
            ropes: config.ropes.iter().map(|r| Rope::new(r).with_interleaved_pairs(config.rope_interleaved)).collect(),
            config,
            weights,
            tokenizer,
            generation_defaults,
            path: path.to_path_buf(),
            files: store.files().to_vec(),
            file_bytes: store.file_bytes(),
            max_context,
            kv_config: opts.kv_cache.clone(),
            last_kv_bytes: AtomicUsize::new(0),
            kernels,
            pool,
            workspaces: Mutex::new(Vec::new()),
        })
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    /// The dtype of the (first layer's) projection weights.
    pub fn weight_dtype(&self) -> DType {
        self.weights.layers.first().map_or(self.weights.embed.dtype(), |l| l.q.weight.dtype())
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer(format!("{} has no tokenizer.json", self.path.display())))
    }

    /// A fresh cache following the model's KV policy.
    pub fn new_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache::with_config(&self.kv_config, self.kernels, c.num_layers, c.num_kv_heads, c.head_dim, self.max_context)
    }

    pub fn kv_config(&self) -> &KvConfig {
        &self.kv_config
    }

    /// Bytes held by the KV cache of the most recent generation or evaluation
    /// (as of its latest step); 0 before any.
    pub fn kv_cache_bytes(&self) -> usize {
        self.last_kv_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn note_kv_bytes(&self, cache: &KvCache) {
        self.last_kv_bytes.store(cache.bytes(), Ordering::Relaxed);
    }

    /// The context bound on a sequence: `None` when the KV policy (sliding
    /// window, StreamingLLM) lets generation run past the context length.
    pub fn context_bound(&self) -> Option<usize> {
        (!self.kv_config.unbounded()).then_some(self.max_context)
    }

    /// Runs `f` with this model's thread pool current (see [`crate::pool`]).
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        self.pool.install(f)
    }

    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&t) => Err(Error::InvalidToken { id: t as i64, vocab_size: vocab }),
            None => Ok(()),
        }
    }

    /// Appends `tokens` to the sequence in `cache` and returns the requested logits
    /// (`[rows × vocab]`). Fails before any work if an id is out of range or the
    /// cache would pass the context length.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitsRows) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_into(tokens, cache, rows, &mut logits)?;
        Ok(logits)
    }

    /// [`forward`](Self::forward) into `logits` (its contents replaced): a decode
    /// step that reuses its caller's logits buffer allocates nothing once warm
    /// (unless the KV cache grows its storage, a block of positions at a time).
    pub fn forward_into(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitsRows, logits: &mut Vec<f32>) -> Result<()> {
        let rope_len = cache.seen() + tokens.len();
        self.forward_part_into(tokens, cache, rows, rope_len, logits)
    }

    /// [`forward`](Self::forward) for one chunk of a longer logical pass of
    /// `rope_len` positions: length-dependent rotary scaling (dynamic NTK, longrope)
    /// is chosen for the whole pass, as if it ran at once.
    pub fn forward_part(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitsRows, rope_len: usize) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_part_into(tokens, cache, rows, rope_len, &mut logits)?;
        Ok(logits)
    }

    /// [`forward_part`](Self::forward_part) into `logits` (contents replaced).
    pub fn forward_part_into(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitsRows,
        rope_len: usize,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::arg("forward needs at least one token"));
        }
        self.check_tokens(tokens)?;
        cache.reserve(tokens.len())?;
        let rope_len = cache.rope_len(tokens.len(), rope_len);
        let t = Transformer { cfg: &self.config, w: &self.weights, ropes: &self.ropes, k: self.kernels };
        let mut ws = self.workspaces.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        self.install(|| t.forward(tokens, cache, rows, rope_len, &mut ws, logits));
        // Prompt-sized buffers are not kept: only short passes (decode,
        // speculative verification) come back for more of the same size.
        if tokens.len() <= KEEP_WORKSPACE_TOKENS {
            self.workspaces.lock().unwrap_or_else(|e| e.into_inner()).push(ws);
        }
        self.note_kv_bytes(cache);
        Ok(())
    }

    /// Whether growing a cached sequence from `from` to `to` positions crosses a
    /// longrope switch point. transformers then recomputes the whole sequence with
    /// the long factors (Phi-3's `prepare_inputs_for_generation`), so cached keys
    /// rotated with the short factors are not reused.
    pub fn crosses_rope_switch(&self, from: usize, to: usize) -> bool {
        self.ropes.iter().any(|r| r.switch_point().is_some_and(|p| from <= p && to > p))
    }

    /// Logits of every position of a fresh sequence, `[len × vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if self.context_bound().is_some_and(|m| tokens.len() > m) {
            return Err(Error::ContextLength { what: "input", len: tokens.len(), max: self.max_context });
        }
        let mut cache = self.new_cache();
        self.forward(tokens, &mut cache, LogitsRows::All)
    }

    /// Teacher-forced negative log-likelihood of `tokens`, evaluated over
    /// consecutive non-overlapping windows of at most `window` tokens (default:
    /// the context length). Returns (total NLL in nats, predicted tokens).
    ///
    /// `decode` feeds each window one token per step through the KV policy, the
    /// way eviction and quantization policies are evaluated in their papers
    /// (and the way generation sees them); otherwise windows run in chunks of
    /// 128 tokens. With a sliding-window or StreamingLLM policy the window may be
    /// longer than the context.
    pub fn nll(
        &self,
        tokens: &[u32],
        window: Option<usize>,
        decode: bool,
        cancel: &mut dyn FnMut() -> bool,
    ) -> Result<(f64, usize)> {
        let window = match (window, self.context_bound()) {
            (Some(w), Some(m)) if w > m => {
                return Err(Error::ContextLength { what: "perplexity window", len: w, max: m });
            }
            (Some(w), _) => w,
            (None, _) => self.max_context,
        };
        if window < 2 {
            return Err(Error::arg("perplexity window must be at least 2 tokens"));
        }
        self.check_tokens(tokens)?;
        let (mut total, mut count) = (0.0f64, 0usize);
        // Bounds the logits buffer to CHUNK × vocab.
        let chunk = if decode { 1 } else { 128 };
        let vocab = self.config.vocab_size;
        for win in tokens.chunks(window) {
            let mut cache = self.new_cache();
            for (ci, part) in win.chunks(chunk).enumerate() {
                if ci % 64 == 0 && cancel() {
                    return Err(Error::Cancelled);
                }
                let logits = self.forward_part(part, &mut cache, LogitsRows::All, win.len())?;
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    let next = ci * chunk + j + 1;
                    if next < win.len() {
                        total += crate::sampling::neg_log_softmax(row, win[next] as usize);
                        count += 1;
                    }
                }
            }
        }
        Ok((total, count))
    }
}

/// The context a model runs by default: its trained length, extended by the
/// factor for dynamic NTK scaling (whose purpose is running past it).
fn default_context(c: &ModelConfig) -> usize {
    match c.ropes[0].scaling {
        config::RopeScaling::Dynamic { factor, .. } if factor > 1.0 => {
            (c.max_position_embeddings as f64 * factor) as usize
        }
        _ => c.max_position_embeddings,
    }
}

/// Names of the kernel paths this CPU can run.
pub fn supported_isas() -> Vec<&'static str> {
    Isa::supported().into_iter().map(Isa::name).collect()
}

/// The kernel path used when none is forced (honours `EDGELLM_ISA`).
pub fn default_isa() -> Result<&'static str> {
    Ok(edgellm_kernels::kernels()?.isa.name())
}

/// Parses an `isa=` option (`None` or "auto": the default path).
pub fn parse_isa(name: Option<&str>) -> Result<Option<Isa>> {
    match name {
        None => Ok(None),
        Some(s) => Ok(Isa::parse(s)?),
    }
}
