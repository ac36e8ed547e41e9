//! keops-runtime: what runs a compiled KeOps kernel, with neither the compiler nor LLVM.
//!
//! # Start here
//!
//! A program loads a module that `keopsc build` wrote ([`Module::load`]), takes a kernel from
//! it ([`Module::kernel`]: a [`Kernel`], cheap to clone, `Send + Sync`) and calls it on its
//! arrays ([`Kernel::call`], [`Kernel::call_named`], [`Kernel::call_into`]; gradients with
//! [`Kernel::vjp`] when the module was built with `--grad`; a kernel as a matrix with
//! [`linalg::KernelOperator`]). Every shape, dtype and length is checked against the kernel's
//! signature; an [`ArgumentError`] names the argument.
//!
//! ```no_run
//! use keops_runtime::{ArrayRef, Module};
//!
//! // kernel gauss_conv { x = Vi(3)  y = Vj(3)  b = Vj(1)  s = Pm(1) ... } (examples/kf/gauss.kf)
//! let module = Module::load("gauss.kmod")?;
//! let kernel = module.kernel("gauss_conv")?;
//! let (n, m) = (1000, 2000);
//! let (x, y, b) = (vec![0.0f32; n * 3], vec![0.0f32; m * 3], vec![1.0f32; m]);
//! let out = kernel.call(&[
//!     ArrayRef::f32(&[n, 3], &x),
//!     ArrayRef::f32(&[m, 3], &y),
//!     ArrayRef::f32(&[m, 1], &b),
//!     ArrayRef::f32(&[1], &[0.25]),
//! ])?;
//! assert_eq!(out.shape, vec![n, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This example needs a module on disk, so it is not run here; the same program runs, with the
//! module built first, among the doc tests of the repository's test crate (from
//! `lang-spec/modules.md`). Kernels compiled at run time come as the same [`Kernel`] from
//! `keops_driver::jit::Jit`.
//!
//! The modules below that a program calls: [`module`] ([`Module`], [`Kernel`]), [`arrays`]
//! ([`HostArray`], [`ArrayRef`], [`DType`]), [`linalg`] (solvers and eigensolvers on
//! kernels), [`ranges`] (block-sparse reductions), `cuda` (with the feature `cuda`). The others are
//! the machinery the compiler's crates share with it: the calling convention ([`abi`]), the
//! reductions ([`reduction`]), the tile schedulers ([`tiles`], [`cross`], [`symmetric`],
//! [`gpu`]), the combination of backward passes ([`backward`], [`gradient`]), the executor
//! boundary ([`executor`]) and the manifest's format ([`manifest`]).

pub mod abi;
pub mod arrays;
pub mod backward;
pub mod cross;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod executor;
pub mod gpu;
pub mod gradient;
pub mod linalg;
pub mod manifest;
pub mod module;
pub mod ranges;
pub mod reduction;
pub mod symmetric;
pub mod tiles;

pub use abi::{ArgSpec, Axis, Category, Signature};
pub use arrays::{
    check_all_arguments, check_arguments, element_count, index_columns, quoted_names, shape_text,
    ArgumentError, ArrayData, ArrayRef, DType, DataRef, Element, HostArray, IndexArray, NpyError,
    OutputRef, ProblemSize,
};
pub use cross::{
    run_cross_tiles, run_symmetric_tiles, CrossSchedule, CrossTileFn, CrossTileKernel,
    SYMMETRIC_BLOCK,
};
pub use executor::{DeviceError, ExecError, Executor};
pub use gradient::GradientError;
pub use manifest::Manifest;
pub use module::{Kernel, LoadError, Module};
pub use ndarray;
pub use ranges::{run_tiles_ranges, Ranges, RangesError, RangesPair, RangesRunError};
pub use reduction::{
    BackwardShape, Family, Order, Reduction, ReductionArgs, ReductionKind, ReductionOutput,
    SummedVector,
};
pub use symmetric::SymmetricPass;
pub use tiles::{run_tiles, run_tiles_batched, run_tiles_into, TileFn, TileKernel, TileSchedule};
