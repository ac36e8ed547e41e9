//! The pipeline end to end, for the CLI, the REPL, the Python extension and Rust programs:
//! source text to checked kernels, compiled code, and a kernel evaluated on named host arrays
//! by a chosen backend. Its parts, each importing only those below it:
//!
//! - [`backend`]: where a kernel runs, and the error of running or compiling it;
//! - [`pipeline`]: source to checked kernels, checked kernels to host code or PTX, `explain`;
//! - [`evaluate`](mod@evaluate): a kernel on arrays, one entry whose options say the backend
//!   (interpreter, JIT code, a GPU kernel), the pairs (all, block-sparse, symmetric) and where
//!   code comes from (the process's [`JitCache`](crate::jit_cache::JitCache), or anew);
//! - [`kernels`]: checked kernels as the runtime's `Kernel` (with symmetric passes, gradients).
//!
//! Their items are re-exported here, so `driver::compile`, `driver::evaluate` and the others
//! are the entry points callers name. Modules of this crate import the parts themselves.

pub mod backend;
pub mod evaluate;
pub mod kernels;
pub mod pipeline;

pub use backend::*;
pub use evaluate::*;
pub use kernels::*;
pub use pipeline::*;

/// Gradients of whole reductions: `d/dwrt sum(G * kernel(inputs))`, see [`crate::vjp`].
pub use crate::vjp::{vjp, vjp_many, VjpRunError};
