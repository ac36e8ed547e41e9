//! Code generation: the optimised formula to LLVM IR, then machine code. `formula` turns
//! operators into LLVM values for any element type and width, `math` holds the vectorizable
//! math functions it calls, `reduce` the reductions' lane accumulators, `cpu` the tile loop
//! nest (and `nvptx` the GPU's, both on the control code of `loops`), `jit` the host compilation, and `machine` LLVM's view of the targets. LLVM never leaves this module: what comes out is
//! owned (a JIT handle, text).

pub mod cpu;
pub mod formula;
pub mod jit;
mod loops;
pub mod machine;
pub mod math;
pub mod nvptx;
pub mod reduce;

pub use jit::{CodegenError, CpuTarget, JitCrossKernel, JitKernel};
pub use machine::{cpu_level, host_cpu, host_cpu_level};
