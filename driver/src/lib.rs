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
//!
//! # Start here
//!
//! Compile a `.kf` kernel at run time into the runtime's `Kernel` ([`jit::Jit`]: dtypes,
//! gradients, a cloud against itself; code kept in the process's cache) and call it, or
//! evaluate a checked kernel on any backend, the f64 interpreter included
//! ([`driver::evaluate()`]):
//!
//! ```
//! use keops_driver::driver::{self, Backend};
//! use keops_driver::jit::Jit;
//! use keops_driver::source::SourceFile;
//! use keops_runtime::{ArrayRef, DType, HostArray};
//!
//! let text = "kernel k {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(Exp(-Square(x - y)), 0)\n}\n";
//! let kernel = Jit::new().dtypes(&[DType::F64]).compile(text, None)?;
//! let (x, y) = (vec![0.0, 1.0], vec![0.0, 0.5, 2.0]);
//! let out = kernel.call(&[ArrayRef::f64(&[2, 1], &x), ArrayRef::f64(&[3, 1], &y)])?;
//!
//! // The same kernel on the reference interpreter.
//! let file = driver::compile(SourceFile::new("k.kf", text)).map_err(|_| "does not compile")?;
//! let (x, y) = (HostArray::from_f64(vec![2, 1], x), HostArray::from_f64(vec![3, 1], y));
//! let want = driver::evaluate(&file.kernels[0], &[&x, &y], Backend::Interp)?.output;
//! for (a, b) in out.to_f64().iter().zip(want.to_f64()) {
//!     assert!((a - b).abs() < 1e-12);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
