//! keops-runtime: what runs a compiled KeOps kernel. It defines the kernel calling convention
//! ([`abi`]), the reductions ([`reduction`]) and host arrays ([`arrays`]). It never depends on
//! the compiler or on LLVM, so that a program can load compiled kernels without either.

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
    check_all_arguments, check_arguments, element_count, index_columns, shape_text, ArgumentError,
    ArrayData, ArrayRef, DType, DataRef, Element, HostArray, IndexArray, NpyError, OutputRef,
    ProblemSize,
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
