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
//!
//! # Start here
//!
//! Parse and check a file (the driver's `compile` also expands derivatives), print a kernel's
//! signature, and evaluate it on the reference interpreter:
//!
//! ```
//! use keops_front::{check::check_file, syntax::parse};
//!
//! let (file, diagnostics) = parse("kernel k {\n x = Vi(2)\n y = Vj(2)\n Sum_Reduction(x * y, 0)\n}\n");
//! assert!(diagnostics.is_empty());
//! let (kernels, diagnostics) = check_file(&file);
//! assert!(diagnostics.is_empty());
//! assert_eq!(
//!     kernels[0].signature.to_string(),
//!     "kernel k(x = Vi(2), y = Vj(2)) -> (N, 2) by Sum_Reduction over j"
//! );
//! ```
//!
//! A kernel known only at run time is built node by node ([`syntax::build::KernelBuilder`])
//! rather than written as text.

pub mod check;
pub mod diagnostic;
pub mod formula;
pub mod interp;
pub mod isolate;
pub mod source;
pub mod syntax;
