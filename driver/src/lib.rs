//! keops-driver: the pipeline of keops-rs as a library, what the CLI, the Python extension and
//! Rust programs call. `driver` runs the stages (front end, middle end, code generation) on a
//! `.kf` text or a checked kernel and evaluates on arrays (interpreter, JIT, GPU);
//! `jit` compiles kernels at run time into the runtime's `Kernel` (with options: dtypes,
//! gradients, a cloud against itself), through `jit_cache`, the compiled code kept per process; `artifact` writes modules and the on-disk
//! compile cache; `batch` evaluates a kernel over batch dimensions; `operator` is a kernel as
//! a linear operator; `vjp` plans and runs backward passes.
//!
//! The layers beneath are re-exported under the names they have always had
//! (`keops_driver::check`, `::opt`, `::codegen`, ...). See `README.md` for what this crate may
//! import.

pub mod artifact;
pub mod batch;
pub mod driver;
pub mod jit;
pub mod jit_cache;
pub mod operator;
pub mod vjp;
mod vjp_run;

pub use keops_codegen as codegen;
pub use keops_front::{check, diagnostic, formula, interp, isolate, source, syntax};
pub use keops_middle::{opt, schedule, symmetric, target};
