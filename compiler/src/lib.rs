//! keopsc: the compiler of keops-rs. A `.kf` file goes through these stages, each a plain data
//! type that prints itself (`keopsc explain` shows them all):
//!
//! `source` -> `syntax` (tokens, AST with spans) -> `check` (`CheckedKernel`: dimensions,
//! categories, the reduction) -> `opt` (the e-graph middle end: derivatives expanded, formula
//! simplified and extracted by a hoisting-aware cost) -> `interp` (the f64 reference interpreter,
//! the oracle every backend and every rewrite is tested against).
//!
//! `driver` runs the pipeline; `compiler/src/README.md` records the design decisions.

pub mod artifact;
pub mod batch;
pub mod bench;
pub mod check;
pub mod codegen;
pub mod diagnostic;
pub mod driver;
pub mod formula;
pub mod interp;
pub mod isolate;
pub mod jit_cache;
pub mod operator;
pub mod opt;
pub mod repl;
pub mod schedule;
pub mod source;
pub mod symmetric;
pub mod syntax;
pub mod target;
pub mod vjp;
