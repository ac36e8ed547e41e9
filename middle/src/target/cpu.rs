//! The x86-64 CPU target: LLVM's names of the CPU and its features, the vector width that sets
//! the lanes of the generated loops, and the psABI feature levels (`x86-64-v2` ... `v4`) a
//! module may be built for and checked against when it is loaded. LLVM fills them in
//! (`codegen::machine`: the host CPU's name and features, the default triple).

use keops_runtime::DType;

/// The CPU code is generated for: LLVM's names of the CPU and features, its vector width, and
/// the features a machine needs to run the code (checked when a module is loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuTarget {
    pub triple: String,
    pub cpu: String,
    pub features: String,
    pub vector_bits: u32,
    pub required_features: Vec<String>,
}

pub use keops_runtime::module::{level_features, LEVELS};

impl CpuTarget {
    /// SIMD lanes of the element type.
    pub fn lanes(&self, dtype: DType) -> u32 {
        self.vector_bits / dtype.bits()
    }
}
