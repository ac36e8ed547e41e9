//! Targets: everything that differs between the machines code is generated for, in one place.
//! A [`Target`] is the x86-64 CPU ([`cpu`]: vector lanes, feature levels) or an NVIDIA GPU
//! ([`gpu`]: PTX architecture, per-architecture resources, block sizes from shared memory and
//! occupancy); each carries its operator prices ([`prices`]) for the optimiser. The code
//! generators beneath (`codegen::cpu`, `codegen::nvptx`) share the formula emitter and the
//! math library, and read what differs from here.

pub mod cpu;
pub mod gpu;
pub mod prices;

pub use cpu::{level_features, CpuTarget, LEVELS};
pub use gpu::{GpuArch, GpuTarget, Occupancy, NVPTX_TRIPLE};
pub use prices::OpPrices;

use keops_runtime::DType;
use std::fmt;

/// A machine code is generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu(CpuTarget),
    Gpu(GpuTarget),
}

impl Target {
    /// The operator prices the optimiser extracts with for this target.
    pub fn prices(&self) -> &'static OpPrices {
        match self {
            Target::Cpu(_) => &prices::CPU,
            Target::Gpu(_) => &prices::GPU,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cpu(cpu) => write!(
                f,
                "{} {} ({}-bit vectors)",
                cpu.triple, cpu.cpu, cpu.vector_bits
            ),
            Target::Gpu(gpu) => gpu.fmt(f),
        }
    }
}

/// Bytes of one element.
pub fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
    }
}
