//! keops-front: the front end of keops-rs. A `.kf` text goes through these stages, each a plain
//! data type that prints itself:
//!
//! `source` -> `syntax` (tokens, AST with spans) -> `check` (`CheckedKernel`: dimensions,
//! categories, the reduction, over `formula`, the one formula IR) -> `interp` (the f64
//! reference interpreter, the oracle every backend and every rewrite is tested against).
//!
//! Diagnostics (`diagnostic`) carry spans into the source and are rendered once, at the edge.
//! `isolate` runs a stage on a stack of the library's own, with panics caught. See `README.md`
//! for what this crate may import.

pub mod check;
pub mod diagnostic;
pub mod formula;
pub mod interp;
pub mod isolate;
pub mod source;
pub mod syntax;
