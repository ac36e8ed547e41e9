//! The stages from source text to code: a file parsed, checked and its derivatives expanded
//! ([`compile`]); a checked kernel optimised at a target's prices and compiled to host code
//! ([`compile_cpu`], [`compile_cpu_cross`]) or PTX ([`compile_gpu`], loaded by `load_gpu` with the `cuda` feature);
//! and every stage kept for `keopsc explain` and the REPL ([`explain`]).

use super::backend::EvalError;
use crate::check::{check_file, CheckedKernel};
use crate::codegen::{CodegenError, JitCrossKernel, JitKernel};
use crate::diagnostic::Diagnostic;
use crate::opt;
use crate::source::SourceFile;
use crate::syntax::{ast, parse};
use crate::target::{GpuTarget, Target};
use keops_runtime::{DType, Reduction, ReductionKind};
use std::fmt;

/// A parsed and checked file.
pub struct CompiledFile {
    pub source: SourceFile,
    pub ast: ast::File,
    pub kernels: Vec<CheckedKernel>,
}

impl CompiledFile {
    pub fn kernel(&self, name: &str) -> Option<&CheckedKernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
}

/// Parses, checks and expands derivatives; any diagnostic (syntax or semantic) fails the whole
/// file, and all of them are returned. Runs on the compiler's own stack
/// ([`crate::isolate`]), so it is safe to call from any thread with deep input; a broken
/// invariant comes back as an internal diagnostic.
pub fn compile(source: SourceFile) -> Result<CompiledFile, (SourceFile, Vec<Diagnostic>)> {
    let kept = source.clone();
    crate::isolate::on_compiler_stack(move || compile_here(source))
        .unwrap_or_else(|panic| Err((kept, vec![Diagnostic::internal("the front end", panic)])))
}

/// [`compile`] for a syntax tree built by a program rather than parsed (a LazyTensor's or a
/// Genred's, by the Python package): checked and its derivatives expanded exactly as a parsed
/// file's. `source` is the text the tree prints as, which its spans point into.
pub fn compile_tree(
    source: SourceFile,
    ast: ast::File,
) -> Result<CompiledFile, (SourceFile, Vec<Diagnostic>)> {
    let kept = source.clone();
    crate::isolate::on_compiler_stack(move || check_and_expand(source, ast, Vec::new()))
        .unwrap_or_else(|panic| Err((kept, vec![Diagnostic::internal("the front end", panic)])))
}

fn compile_here(source: SourceFile) -> Result<CompiledFile, (SourceFile, Vec<Diagnostic>)> {
    let (ast, diagnostics) = parse(&source.text);
    check_and_expand(source, ast, diagnostics)
}

/// The front end after parsing: the checker, then the derivatives expanded; `diagnostics`
/// holds the parser's, reported with the checker's.
fn check_and_expand(
    source: SourceFile,
    ast: ast::File,
    mut diagnostics: Vec<Diagnostic>,
) -> Result<CompiledFile, (SourceFile, Vec<Diagnostic>)> {
    let (mut kernels, check_diagnostics) = check_file(&ast);
    diagnostics.extend(check_diagnostics);
    // Derivatives are part of the formula's meaning: expand them now, so that a missing rule is
    // a compile error and every backend receives a formula without `Grad`/`Diff`.
    for kernel in &mut kernels {
        match opt::expand_derivatives(&kernel.formula) {
            Ok(formula) => kernel.formula = formula,
            Err(d) => diagnostics.push(d),
        }
    }
    if diagnostics.is_empty() && ast.kernels.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                "the file defines no kernel",
                0..0,
                "expected `kernel NAME { ... }`",
            )
            .with_help("a .kf file holds one or more `kernel NAME { ... }` blocks"),
        );
    }
    if diagnostics.is_empty() {
        Ok(CompiledFile {
            source,
            ast,
            kernels,
        })
    } else {
        Err((source, diagnostics))
    }
}

/// `kernel`'s GPU code for `dtype` loaded on the first GPU. When ptxas was not found at
/// compile time, the block size comes from the registers the driver's own compilation uses:
/// if another block keeps clearly more warps resident, the kernel is compiled and loaded again
/// for it.
#[cfg(feature = "cuda")]
pub fn load_gpu(
    kernel: &CheckedKernel,
    dtype: DType,
) -> Result<keops_runtime::cuda::CudaKernel, EvalError> {
    load_gpu_entry(kernel, dtype, crate::codegen::nvptx::GpuEntry::Tiles)
}

/// [`load_gpu`] for either GPU kernel (the block-sparse one for ranges).
#[cfg(feature = "cuda")]
pub fn load_gpu_entry(
    kernel: &CheckedKernel,
    dtype: DType,
    entry: crate::codegen::nvptx::GpuEntry,
) -> Result<keops_runtime::cuda::CudaKernel, EvalError> {
    use keops_runtime::cuda::{CudaDevice, CudaKernel};
    let device = CudaDevice::new(0)?;
    let load = |compiled: &crate::codegen::nvptx::PtxKernel| {
        CudaKernel::load(
            &device,
            &compiled.ptx,
            &compiled.symbol,
            compiled.signature.clone(),
            dtype,
            compiled.schedule.launch,
        )
    };
    let (target, budget) = gpu_target();
    let optimized = optimized(kernel, &budget)?;
    let compiled = compile_gpu_optimized(&optimized, dtype, &target, entry)?;
    let loaded = load(&compiled)?;
    if !compiled.registers.is_empty() {
        return Ok(loaded);
    }
    let launch = compiled.schedule.launch;
    let block = target.block_for_occupancy(
        launch.block,
        loaded.registers()?,
        compiled.schedule.shared_bytes_per_thread(),
    );
    if block == launch.block {
        return Ok(loaded);
    }
    // The same optimised formula, another block size.
    let retuned = generated(|| {
        let formula = &optimized.formula;
        let schedule = crate::codegen::nvptx::GpuSchedule::with_block(
            formula,
            &kernel.signature,
            dtype,
            &target,
            Some(block),
        )?;
        crate::codegen::nvptx::compile_entry_with_schedule(
            formula,
            &kernel.signature,
            dtype,
            &target,
            schedule,
            entry,
        )
    })?;
    Ok(load(&retuned)?)
}

/// Optimises `kernel`, a `Sum` over its inner index whose formula's last `columns` components
/// are to be summed over its rows instead (a cross pass, `keops_runtime::cross`), and
/// compiles it to host machine code for `dtype`.
pub fn compile_cpu_cross(
    kernel: &CheckedKernel,
    columns: usize,
    dtype: DType,
) -> Result<JitCrossKernel, EvalError> {
    on_one_stack(|| {
        let optimized = optimized(kernel, &opt::OptBudget::default())?;
        compile_cpu_cross_optimized(&optimized, columns, dtype)
    })
}

/// [`compile_cpu_cross`] of a kernel already optimised (once for every dtype).
pub fn compile_cpu_cross_optimized(
    optimized: &opt::OptimizedKernel,
    columns: usize,
    dtype: DType,
) -> Result<JitCrossKernel, EvalError> {
    let red = optimized.signature.reduction;
    if red.kind != ReductionKind::Sum || columns == 0 || columns > red.fdim {
        return Err(EvalError::Codegen(CodegenError::Internal {
            stage: "cross pass",
            message: format!(
                "kernel `{}` ({}) cannot send {columns} of its components to the columns",
                optimized.name, red.kind
            ),
        }));
    }
    let mut rows = optimized.signature.clone();
    rows.reduction = Reduction::new(ReductionKind::Sum, red.fdim - columns);
    generated(|| {
        JitCrossKernel::compile(
            &optimized.formula,
            &rows,
            columns,
            dtype,
            &crate::codegen::host_cpu(),
        )
    })
}

/// Optimises a checked kernel and compiles it to host machine code for `dtype`.
pub fn compile_cpu(kernel: &CheckedKernel, dtype: DType) -> Result<JitKernel, EvalError> {
    on_one_stack(|| compile_cpu_optimized(&optimized(kernel, &opt::OptBudget::default())?, dtype))
}

/// [`compile_cpu`] of a kernel already optimised at the CPU's prices (once for every dtype).
pub fn compile_cpu_optimized(
    optimized: &opt::OptimizedKernel,
    dtype: DType,
) -> Result<JitKernel, EvalError> {
    generated(|| {
        JitKernel::compile(
            &optimized.formula,
            &optimized.signature,
            dtype,
            &crate::codegen::host_cpu(),
        )
    })
}

/// `kernel` through the middle end within `budget` (and at its prices), on the compiler's own
/// stack. Derivatives were expanded when the kernel was checked: nothing here can fail on the
/// user's formula, and an error is a broken invariant (an internal error).
pub fn optimized(
    kernel: &CheckedKernel,
    budget: &opt::OptBudget,
) -> Result<opt::OptimizedKernel, EvalError> {
    on_stack("the optimiser", || {
        opt::optimize(kernel, budget).map_err(|d| {
            EvalError::Codegen(CodegenError::Internal {
                stage: d.internal.unwrap_or("optimiser"),
                message: d.message,
            })
        })
    })
}

/// Runs stages on one compiler stack (the stages' own calls of [`crate::isolate`] then run in
/// place): optimisation and code generation on one thread, not one thread each.
pub(crate) fn on_one_stack<T: Send>(
    stages: impl FnOnce() -> Result<T, EvalError> + Send,
) -> Result<T, EvalError> {
    on_stack("the optimiser or code generation", stages)
}

/// Runs code generation on the compiler's own stack.
fn generated<T: Send>(
    generate: impl FnOnce() -> Result<T, CodegenError> + Send,
) -> Result<T, EvalError> {
    on_stack("code generation", || Ok(generate()?))
}

/// Runs `work` on the compiler's own stack ([`crate::isolate`]): a panic (a broken invariant)
/// becomes an internal error of `stage`.
fn on_stack<T: Send>(
    stage: &'static str,
    work: impl FnOnce() -> Result<T, EvalError> + Send,
) -> Result<T, EvalError> {
    crate::isolate::on_compiler_stack(work).unwrap_or_else(|panic| {
        Err(EvalError::Codegen(CodegenError::Internal {
            stage,
            message: panic,
        }))
    })
}

/// The GPU target kernels are compiled for, with the optimiser's budget at its prices.
pub fn gpu_target() -> (GpuTarget, opt::OptBudget) {
    let target = GpuTarget::default();
    let budget = opt::OptBudget::for_target(&Target::Gpu(target));
    (target, budget)
}

/// Optimises a checked kernel at the GPU's prices and compiles its 1-D GPU kernel to PTX for
/// `dtype`, its block size from occupancy when `ptxas` is found
/// ([`crate::codegen::nvptx::compile_ptx_tuned`]).
pub fn compile_gpu(
    kernel: &CheckedKernel,
    dtype: DType,
) -> Result<crate::codegen::nvptx::PtxKernel, EvalError> {
    compile_gpu_entry(kernel, dtype, crate::codegen::nvptx::GpuEntry::Tiles)
}

/// [`compile_gpu`] for either GPU kernel.
pub fn compile_gpu_entry(
    kernel: &CheckedKernel,
    dtype: DType,
    entry: crate::codegen::nvptx::GpuEntry,
) -> Result<crate::codegen::nvptx::PtxKernel, EvalError> {
    let (target, budget) = gpu_target();
    on_one_stack(|| compile_gpu_optimized(&optimized(kernel, &budget)?, dtype, &target, entry))
}

/// The PTX of a kernel optimised at the GPU's prices, for `entry`, its block size from
/// occupancy when `ptxas` is found.
fn compile_gpu_optimized(
    optimized: &opt::OptimizedKernel,
    dtype: DType,
    target: &GpuTarget,
    entry: crate::codegen::nvptx::GpuEntry,
) -> Result<crate::codegen::nvptx::PtxKernel, EvalError> {
    generated(|| {
        crate::codegen::nvptx::compile_entry_tuned(
            &optimized.formula,
            &optimized.signature,
            dtype,
            target,
            entry,
        )
    })
}

/// What `keopsc explain --ptx` and the REPL's `:ptx` show: the kernel optimised at the GPU's
/// prices, its GPU schedule, PTX and ptxas's report ([`crate::codegen::nvptx::explain_ptx`]).
pub fn explain_gpu(kernel: &CheckedKernel, dtype: DType) -> Result<String, EvalError> {
    let (target, budget) = gpu_target();
    on_one_stack(|| {
        let optimized = optimized(kernel, &budget)?;
        let formula = &optimized.formula;
        let text = crate::codegen::nvptx::explain_ptx(formula, &kernel.signature, dtype, &target)?;
        Ok(format!("-- formula (gpu prices) --\n{formula}\n{text}"))
    })
}

/// The CPU code of one kernel, as text: its schedule, optimised LLVM IR and host assembly.
pub struct CpuCode {
    pub schedule_text: String,
    pub llvm_ir: String,
    pub assembly: String,
    pub target_cpu: String,
}

pub fn cpu_code(optimized: &opt::OptimizedKernel, dtype: DType) -> Result<CpuCode, CodegenError> {
    let target = crate::codegen::host_cpu();
    let schedule = crate::schedule::Schedule::cpu(
        &optimized.formula,
        &optimized.signature,
        target.lanes(dtype),
        crate::target::elem_bytes(dtype),
        0,
    );
    let schedule_text = crate::schedule::ScheduledFormula {
        formula: &optimized.formula,
        schedule: &schedule,
    }
    .to_string();
    let (llvm_ir, assembly) =
        crate::codegen::jit::emit_text(&optimized.formula, &optimized.signature, dtype, &target)?;
    Ok(CpuCode {
        schedule_text,
        llvm_ir,
        assembly,
        target_cpu: target.cpu,
    })
}

/// Time spent generating host code for every kernel of `explained` in `dtype` (the stages
/// after simplification), summed over the kernels.
pub fn codegen_timings(
    explained: &[KernelExplanation],
    dtype: DType,
) -> Result<crate::codegen::jit::CodegenTimings, CodegenError> {
    let target = crate::codegen::host_cpu();
    let mut total = crate::codegen::jit::CodegenTimings::default();
    for k in explained {
        let jit = JitKernel::compile(&k.optimized.formula, &k.optimized.signature, dtype, &target)?;
        total.emit += jit.timings.emit;
        total.optimize += jit.timings.optimize;
        total.machine_code += jit.timings.machine_code;
    }
    Ok(total)
}

/// Every stage of one kernel, for `keopsc explain` and the REPL.
pub struct KernelExplanation {
    pub ast: ast::KernelDef,
    /// As checked: derivatives not expanded yet.
    pub checked: CheckedKernel,
    pub optimized: opt::OptimizedKernel,
}

impl fmt::Display for KernelExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "-- ast --\n{}", self.ast)?;
        writeln!(f, "-- checked --\n{}", self.checked)?;
        let o = &self.optimized;
        if let Some(report) = &o.differentiation {
            writeln!(f, "-- derivatives expanded ({report}) --")?;
            writeln!(f, "{}\n", o.expanded.to_text(o.expanded.root()))?;
        }
        writeln!(f, "-- simplified ({}) --", o.simplification)?;
        write!(f, "{o}")
    }
}

/// Time spent in each stage, for `explain --timings`.
#[derive(Clone, Debug, Default)]
pub struct StageTimings {
    pub parse: std::time::Duration,
    pub check: std::time::Duration,
    pub differentiate: std::time::Duration,
    pub simplify: std::time::Duration,
}

impl StageTimings {
    /// The faster of two measurements, stage by stage.
    pub fn fastest(&self, other: &StageTimings) -> StageTimings {
        StageTimings {
            parse: self.parse.min(other.parse),
            check: self.check.min(other.check),
            differentiate: self.differentiate.min(other.differentiate),
            simplify: self.simplify.min(other.simplify),
        }
    }
}

impl fmt::Display for StageTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "parse {:.3} ms, check {:.3} ms, differentiate {:.3} ms, simplify {:.3} ms",
            ms(self.parse),
            ms(self.check),
            ms(self.differentiate),
            ms(self.simplify)
        )
    }
}

/// Runs every stage on a file and keeps each stage's output (on the compiler's own stack, as
/// [`compile`]).
pub fn explain(
    source: SourceFile,
    budget: &opt::OptBudget,
) -> Result<(Vec<KernelExplanation>, StageTimings), (SourceFile, Vec<Diagnostic>)> {
    let kept = source.clone();
    crate::isolate::on_compiler_stack(move || explain_here(source, budget))
        .unwrap_or_else(|panic| Err((kept, vec![Diagnostic::internal("the middle end", panic)])))
}

fn explain_here(
    source: SourceFile,
    budget: &opt::OptBudget,
) -> Result<(Vec<KernelExplanation>, StageTimings), (SourceFile, Vec<Diagnostic>)> {
    let mut timings = StageTimings::default();
    let start = std::time::Instant::now();
    let (ast, mut diagnostics) = parse(&source.text);
    timings.parse = start.elapsed();
    let start = std::time::Instant::now();
    let (kernels, check_diagnostics) = check_file(&ast);
    timings.check = start.elapsed();
    diagnostics.extend(check_diagnostics);
    let mut explained = Vec::new();
    for checked in kernels {
        match opt::optimize(&checked, budget) {
            Ok(optimized) => {
                if let Some(r) = &optimized.differentiation {
                    timings.differentiate += r.time;
                }
                timings.simplify += optimized.simplification.time;
                let ast = ast
                    .kernels
                    .iter()
                    .find(|k| k.name.name == checked.name)
                    .expect("a checked kernel comes from the AST")
                    .clone();
                explained.push(KernelExplanation {
                    ast,
                    checked,
                    optimized,
                });
            }
            Err(d) => diagnostics.push(d),
        }
    }
    if diagnostics.is_empty() {
        Ok((explained, timings))
    } else {
        Err((source, diagnostics))
    }
}
