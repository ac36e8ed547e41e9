//! The x86-64 CPU target: LLVM's names of the CPU and its features, the vector width that sets
//! the lanes of the generated loops, and the psABI feature levels (`x86-64-v2` ... `v4`) a
//! module may be built for and checked against when it is loaded.

use super::Scalar;
use crate::codegen::CodegenError;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

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
    /// A psABI level (`x86-64-v3`, ...), for code that runs on any CPU of that level.
    pub fn level(name: &str) -> Option<CpuTarget> {
        initialize();
        let (required_features, vector_bits) = level_features(name)?;
        Some(CpuTarget {
            triple: TargetMachine::get_default_triple()
                .as_str()
                .to_string_lossy()
                .into_owned(),
            cpu: name.to_string(),
            features: String::new(),
            vector_bits,
            required_features,
        })
    }

    /// The highest level this machine satisfies.
    pub fn host_level() -> CpuTarget {
        let best = LEVELS
            .iter()
            .rev()
            .find(|l| {
                level_features(l)
                    .is_some_and(|(f, _)| f.iter().all(|x| keops_runtime::module::cpu_has(x)))
            })
            .unwrap_or(&"x86-64");
        CpuTarget::level(best).expect("a known level")
    }

    /// Exactly this machine's CPU: the fastest code, for this machine only.
    pub fn host() -> CpuTarget {
        initialize();
        let features = TargetMachine::get_host_cpu_features().to_string();
        let has = |f: &str| features.split(',').any(|x| x == f);
        let vector_bits = if has("+avx512f") {
            512
        } else if has("+avx") {
            256
        } else {
            128
        };
        CpuTarget {
            triple: TargetMachine::get_default_triple()
                .as_str()
                .to_string_lossy()
                .into_owned(),
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features,
            vector_bits,
            required_features: CpuTarget::host_level().required_features,
        }
    }

    /// SIMD lanes of the element type.
    pub fn lanes(&self, scalar: Scalar) -> u32 {
        match scalar {
            Scalar::F32 => self.vector_bits / 32,
            Scalar::F64 => self.vector_bits / 64,
        }
    }

    pub(crate) fn machine(&self, reloc: RelocMode) -> Result<TargetMachine, CodegenError> {
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple).map_err(|e| CodegenError::Internal {
            stage: "target",
            message: e.to_string(),
        })?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                OptimizationLevel::Aggressive,
                reloc,
                CodeModel::Default,
            )
            .ok_or_else(|| CodegenError::Internal {
                stage: "target",
                message: format!("LLVM has no target machine for {}", self.cpu),
            })
    }
}

fn initialize() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        Target::initialize_native(&InitializationConfig::default())
            .expect("LLVM supports the host it runs on");
    });
}
