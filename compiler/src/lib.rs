//! keopsc: the compiler of keops-rs. A `.kf` file goes through these stages, each a plain data
//! type that prints itself:
//!
//! `source` -> `syntax` (tokens, AST) -> `check` (CheckedKernel: dimensions, categories)
//! -> `interp` (the reference interpreter, the oracle every backend is tested against).

pub mod diagnostic;
pub mod source;
pub mod syntax;
pub mod check;
pub mod formula;
pub mod interp;
pub mod opt;
pub mod driver;
