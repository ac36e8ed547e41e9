//! keopsc: the compiler of keops-rs. A `.kf` file goes through these stages, each a plain data
//! type that prints itself (`keopsc explain` shows them all):
//!
//! `source` -> `syntax` (tokens, AST with spans) -> `check` (`CheckedKernel`: dimensions,
//! categories, the reduction) -> `opt` (the e-graph middle end: derivatives expanded, formula
//! simplified and extracted by a hoisting-aware cost) -> `interp` (the f64 reference interpreter,
//! the oracle every backend and every rewrite is tested against).
//!
//! `driver` runs the pipeline; `compiler/src/README.md` records the design decisions.

pub mod bench;
pub mod repl;

// The library beneath, re-exported under the names it has always had (`keopsc::driver`,
// `keopsc::check`, ...).
pub use keops_driver::{
    artifact, batch, check, codegen, diagnostic, driver, formula, interp, isolate, jit, jit_cache,
    operator, opt, schedule, source, symmetric, syntax, target, vjp,
};
