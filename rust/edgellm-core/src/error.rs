//! The one error type of the core. Each variant maps to one Python exception class
//! (see `edgellm-python/src/error.rs`), so variants are kinds, not call sites.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file is malformed: corrupt header, bad offsets, wrong dtype or shape.
    #[error("{0}")]
    ModelFormat(String),
    /// config.json (or generation_config.json) is missing fields or inconsistent.
    #[error("{0}")]
    Config(String),
    #[error("unsupported architecture {found:?}; supported architectures: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    #[error("{0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    #[error("{what} of {len} tokens exceeds the model's context length of {max} tokens")]
    ContextLength { what: &'static str, len: usize, max: usize },
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    InvalidToken { id: i64, vocab_size: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The caller asked generation to stop (e.g. Ctrl-C between tokens).
    #[error("generation was cancelled")]
    Cancelled,
}

impl Error {
    pub fn format(msg: impl Into<String>) -> Self {
        Error::ModelFormat(msg.into())
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl From<edgellm_kernels::IsaError> for Error {
    fn from(e: edgellm_kernels::IsaError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}
