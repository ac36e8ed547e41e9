//! keopsc: the compiler of keops-rs. A `.kf` file goes through these stages, each a plain data
//! type that prints itself:
//!
//! `source` -> `syntax` (tokens, AST) -> `check` (CheckedKernel: dimensions, categories)
//! -> `interp` (the reference interpreter, the oracle every backend is tested against).

pub mod check;
pub mod diagnostic;
pub mod driver;
pub mod formula;
pub mod interp;
pub mod opt;
pub mod source;
pub mod syntax;
