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
pub fn elem_bytes(scalar: Scalar) -> usize {
    match scalar {
        Scalar::F32 => 4,
        Scalar::F64 => 8,
    }
}

/// The element type generated code computes in (f32 or f64), with the facts of its binary
/// format that the math library and the code generators read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    F32,
    F64,
}

impl Scalar {
    pub fn name(self) -> &'static str {
        match self {
            Scalar::F32 => "f32",
            Scalar::F64 => "f64",
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Scalar::F32 => 32,
            Scalar::F64 => 64,
        }
    }

    /// Explicit (stored) mantissa bits.
    pub fn mantissa_bits(self) -> u32 {
        match self {
            Scalar::F32 => 23,
            Scalar::F64 => 52,
        }
    }

    pub fn exponent_bias(self) -> i64 {
        match self {
            Scalar::F32 => 127,
            Scalar::F64 => 1023,
        }
    }

    /// Bit pattern of `v` rounded to this type, as a (sign-extended) integer constant.
    pub fn bits_of(self, v: f64) -> i64 {
        match self {
            Scalar::F32 => i64::from((v as f32).to_bits()),
            Scalar::F64 => v.to_bits() as i64,
        }
    }

    /// Splits `hi + lo` (an f64 double-double) into a head exactly representable in this type
    /// and the rest: both parts are exact for `F64`, and `hi + lo` is good to ~2^-48 for `F32`.
    pub fn split(self, hi: f64, lo: f64) -> (f64, f64) {
        match self {
            Scalar::F32 => {
                let head = f64::from(hi as f32);
                (head, (hi - head) + lo)
            }
            Scalar::F64 => (hi, lo),
        }
    }
}
