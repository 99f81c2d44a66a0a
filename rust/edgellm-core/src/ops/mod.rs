//! Tensor operations of the forward pass, on f32 activations.

pub mod linear;
pub mod matmul;
pub mod norm;
pub mod activation;
pub mod bandwidth;
pub(crate) mod par;
pub(crate) mod reuse;

pub use linear::Linear;
pub use norm::{HeadNorm, Norm};
