//! LLVM's side of the targets (`keops_middle::target` holds the plain data): the CPU this process
//! runs on as LLVM names it, the psABI levels with LLVM's default triple, and the target
//! machines that turn IR into x86-64 or PTX code.

use super::CodegenError;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use keops_middle::target::{level_features, CpuTarget, GpuTarget, LEVELS, NVPTX_TRIPLE};

/// A psABI level (`x86-64-v3`, ...), for code that runs on any CPU of that level.
pub fn cpu_level(name: &str) -> Option<CpuTarget> {
    initialize_native();
    let (required_features, vector_bits) = level_features(name)?;
    Some(CpuTarget {
        triple: default_triple(),
        cpu: name.to_string(),
        features: String::new(),
        vector_bits,
        required_features,
    })
}

/// The highest level this machine satisfies.
pub fn host_cpu_level() -> CpuTarget {
    let best = LEVELS
        .iter()
        .rev()
        .find(|l| {
            level_features(l)
                .is_some_and(|(f, _)| f.iter().all(|x| keops_runtime::module::cpu_has(x)))
        })
        .unwrap_or(&"x86-64");
    cpu_level(best).expect("a known level")
}

/// Exactly this machine's CPU: the fastest code, for this machine only.
pub fn host_cpu() -> CpuTarget {
    initialize_native();
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
        triple: default_triple(),
        cpu: TargetMachine::get_host_cpu_name().to_string(),
        features,
        vector_bits,
        required_features: host_cpu_level().required_features,
    }
}

/// LLVM's target machine for `target`'s CPU code.
pub fn cpu_machine(target: &CpuTarget, reloc: RelocMode) -> Result<TargetMachine, CodegenError> {
    machine(
        "target",
        &target.triple,
        &target.cpu,
        &target.features,
        reloc,
    )
}

/// LLVM's target machine for the PTX.
pub(crate) fn gpu_machine(target: &GpuTarget) -> Result<TargetMachine, CodegenError> {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| Target::initialize_nvptx(&InitializationConfig::default()));
    machine(
        "NVPTX target",
        NVPTX_TRIPLE,
        target.ptx_arch,
        "",
        RelocMode::Default,
    )
}

fn machine(
    stage: &'static str,
    triple: &str,
    cpu: &str,
    features: &str,
    reloc: RelocMode,
) -> Result<TargetMachine, CodegenError> {
    let internal = |message: String| CodegenError::Internal { stage, message };
    let triple = TargetTriple::create(triple);
    Target::from_triple(&triple)
        .map_err(|e| internal(e.to_string()))?
        .create_target_machine(
            &triple,
            cpu,
            features,
            OptimizationLevel::Aggressive,
            reloc,
            CodeModel::Default,
        )
        .ok_or_else(|| internal(format!("LLVM has no target machine for {cpu}")))
}

/// The version of the LLVM this library generates code with (recorded in modules).
pub fn llvm_version() -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    format!("{major}.{minor}.{patch}")
}

fn default_triple() -> String {
    TargetMachine::get_default_triple()
        .as_str()
        .to_string_lossy()
        .into_owned()
}

fn initialize_native() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        Target::initialize_native(&InitializationConfig::default())
            .expect("LLVM supports the host it runs on");
    });
}
