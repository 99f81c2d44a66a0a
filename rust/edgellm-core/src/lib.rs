//! edgellm inference core: model formats, transformer forward pass, tokenizer glue,
//! sampling and the generation loop. No Python here; `edgellm-python` binds it.

pub mod attention;
pub mod error;
pub mod formats;
pub mod generate;
pub mod info;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod pool;
pub mod rng;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use generate::{FinishReason, GenerationOptions, GenerationStats, Generator};
pub use model::{LoadOptions, Model};
pub use sampling::SamplerConfig;
pub use tokenizer::Tokenizer;
