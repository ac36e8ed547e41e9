//! The pipeline end to end, for the CLI, the REPL and tests: source text to checked kernels,
//! and a kernel evaluated on named host arrays by a chosen backend.

use crate::check::{check_file, CheckedKernel};
use crate::codegen::{CodegenError, JitCrossKernel, JitKernel};
use crate::diagnostic::Diagnostic;
use crate::interp::{self, InterpError};
use crate::opt;
use crate::source::SourceFile;
use crate::syntax::{ast, parse};
use crate::target::{GpuTarget, Target};
use keops_runtime::module::bind_all_named;
use keops_runtime::Executor;
use keops_runtime::{
    check_all_arguments, check_arguments, run_tiles, ArgumentError, Axis, DType, HostArray, Kernel,
    NpyError, ProblemSize, Reduction, ReductionKind,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

fn compile_here(source: SourceFile) -> Result<CompiledFile, (SourceFile, Vec<Diagnostic>)> {
    let (ast, mut diagnostics) = parse(&source.text);
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

/// Where a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The f64 reference interpreter.
    Interp,
    /// Compiled, vectorised CPU code.
    Cpu,
    /// Compiled PTX on an NVIDIA GPU.
    Cuda,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "interp" => Some(Backend::Interp),
            "cpu" => Some(Backend::Cpu),
            "cuda" => Some(Backend::Cuda),
            _ => None,
        }
    }

    /// The backends this build can run.
    pub fn available() -> Vec<Backend> {
        let mut backends = vec![Backend::Cpu, Backend::Interp];
        // Built with the CUDA runtime: whether a driver and a GPU are present is found when
        // the backend runs (an error that says so).
        if cfg!(feature = "cuda") {
            backends.push(Backend::Cuda);
        }
        backends
    }

    /// The fastest backend this build and machine can run.
    pub fn fastest() -> Backend {
        Backend::Cpu
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Interp => "interp",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error("the `{0}` backend is not available in this build (available: {1})")]
    BackendUnavailable(Backend, String),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    NotSymmetric(#[from] crate::symmetric::NotSymmetric),
    /// A block-sparse evaluation failed (its ranges, or its arrays): the message says how.
    #[error("{0}")]
    Ranges(String),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] keops_runtime::cuda::CudaError),
    /// An executor's error this build has no variant for: the runtime may be built with more
    /// back ends than this crate (features unify across a workspace build).
    #[error(transparent)]
    Exec(keops_runtime::ExecError),
}

/// Matches `--arg name=...` inputs to the kernel's arguments: by name, or by position for
/// inline `Vi(pos, dim)` variables (named by their position). Every error names the argument.
pub fn bind_arguments<'a>(
    kernel: &CheckedKernel,
    inputs: &'a [(String, HostArray)],
) -> Result<Vec<&'a HostArray>, ArgumentError> {
    let named: Vec<(&str, &HostArray)> = inputs.iter().map(|(n, a)| (n.as_str(), a)).collect();
    keops_runtime::module::bind_named(&kernel.signature, &named)
}

/// Evaluates a kernel on named arrays. The output has the inputs' dtype: shape `(N, Dout)` for
/// axis 0, `(M, Dout)` for axis 1.
pub fn evaluate(
    kernel: &CheckedKernel,
    inputs: &[(String, HostArray)],
    backend: Backend,
) -> Result<HostArray, EvalError> {
    let arrays = bind_arguments(kernel, inputs)?;
    Ok(evaluate_bound(kernel, &arrays, backend)?.0)
}

/// Where the time of one evaluation went, and the size of the problem it solved.
#[derive(Clone, Copy, Debug)]
pub struct EvalTimings {
    pub size: ProblemSize,
    /// Optimising and compiling to machine code (zero for the interpreter).
    pub compile: Duration,
    /// The reduction itself.
    pub run: Duration,
}

impl EvalTimings {
    /// (i, j) pairs per second of run time.
    pub fn pairs_per_second(&self) -> f64 {
        (self.size.n as f64 * self.size.m as f64) / self.run.as_secs_f64().max(1e-9)
    }
}

/// Evaluates a kernel on arrays given in argument order, timing compilation and the run apart.
pub fn evaluate_bound(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    backend: Backend,
) -> Result<(HostArray, EvalTimings), EvalError> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(&kernel.signature, &views)?;
    let mut timings = EvalTimings {
        size,
        compile: Duration::ZERO,
        run: Duration::ZERO,
    };
    if backend != Backend::Interp {
        let start = Instant::now();
        let executor = executor(kernel, size.dtype, backend)?;
        timings.compile = start.elapsed();
        let start = Instant::now();
        let out = executor.reduce(&views)?;
        timings.run = start.elapsed();
        return Ok((out, timings));
    }
    let start = Instant::now();
    let data: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
    let views: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    let sig = &kernel.signature;
    let out = interp::evaluate(&kernel.formula, &sig.reduction, sig.axis, &views, size)?;
    let rows = match sig.axis {
        Axis::I => size.n,
        Axis::J => size.m,
    };
    let shape = vec![rows, sig.output_dim()];
    let out = match size.dtype {
        DType::F64 => HostArray::from_f64(shape, out),
        DType::F32 => HostArray::from_f32(shape, out.into_iter().map(|x| x as f32).collect()),
    };
    timings.run = start.elapsed();
    Ok((out, timings))
}

/// `kernel` compiled for `dtype` on `backend` (CPU or CUDA), behind the runtime's executor
/// boundary. The interpreter is no executor: it is the oracle, run by [`evaluate_bound`].
pub fn executor(
    kernel: &CheckedKernel,
    dtype: DType,
    backend: Backend,
) -> Result<Box<dyn Executor>, EvalError> {
    match backend {
        Backend::Cpu => Ok(Box::new(compile_cpu(kernel, dtype)?)),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Ok(Box::new(load_gpu(kernel, dtype)?)),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => unavailable(backend),
        Backend::Interp => unavailable(backend),
    }
}

/// No executor for `backend` in this build: the error names those there are.
fn unavailable<T>(backend: Backend) -> Result<T, EvalError> {
    let available: Vec<String> = Backend::available()
        .iter()
        .filter(|&&b| b != Backend::Interp)
        .map(|b| b.to_string())
        .collect();
    Err(EvalError::BackendUnavailable(backend, available.join(", ")))
}

impl From<keops_runtime::ExecError> for EvalError {
    fn from(e: keops_runtime::ExecError) -> EvalError {
        match e {
            keops_runtime::ExecError::Argument(a) => EvalError::Argument(a),
            #[cfg(feature = "cuda")]
            keops_runtime::ExecError::Cuda(c) => EvalError::Cuda(c),
            #[allow(unreachable_patterns)]
            other => EvalError::Exec(other),
        }
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
    let compiled = compile_gpu_entry(kernel, dtype, entry)?;
    let loaded = load(&compiled)?;
    if !compiled.registers.is_empty() {
        return Ok(loaded);
    }
    let (target, budget) = gpu_target();
    let launch = compiled.schedule.launch;
    let block = target.block_for_occupancy(
        launch.block,
        loaded.registers()?,
        compiled.schedule.shared_bytes_per_thread(),
    );
    if block == launch.block {
        return Ok(loaded);
    }
    let retuned = optimized_for_then(kernel, &budget, |formula| {
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

/// [`evaluate_bound`] for arrays where each `(j, i)` of `same` (argument positions) says that
/// the j-variable `j` holds the data of the i-variable `i`: on the CPU, a `Sum` whose two
/// halves share enough to pay ([`crate::symmetric::plan_if_it_pays`]) walks each unordered
/// pair once ([`evaluate_symmetric`]); otherwise, and when the arrays do not hold the same
/// data after all, the full evaluation. The results agree up to summation order.
pub fn evaluate_same(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    same: &[(usize, usize)],
    backend: Backend,
) -> Result<(HostArray, EvalTimings), EvalError> {
    let shared = |&(j, i): &(usize, usize)| {
        arrays.get(j).zip(arrays.get(i)).is_some_and(|(a, b)| {
            a.shape.first() == b.shape.first() && a.len() == b.len() && a.to_f64() == b.to_f64()
        })
    };
    if backend != Backend::Cpu || !same.iter().all(shared) {
        return evaluate_bound(kernel, arrays, backend);
    }
    match crate::symmetric::plan_if_it_pays(kernel, same) {
        Ok(plan) => evaluate_symmetric(kernel, arrays, &plan),
        Err(_) => evaluate_bound(kernel, arrays, backend),
    }
}

/// Evaluates `kernel` on the CPU over the pairs `ranges` keeps (block-sparse, KeOps's
/// `ranges`; `keops_runtime::ranges`), its code from the process-wide
/// [`JitCache`](crate::jit_cache::JitCache).
pub fn evaluate_ranges(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    ranges: &keops_runtime::Ranges,
) -> Result<(HostArray, EvalTimings), String> {
    evaluate_ranges_on(kernel, arrays, ranges, Backend::Cpu)
}

/// [`evaluate_ranges`] on `backend`: `cpu`, or `cuda` (the block-sparse GPU kernel,
/// `keops_runtime::gpu`). The interpreter has no block-sparse evaluation.
pub fn evaluate_ranges_on(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    ranges: &keops_runtime::Ranges,
    backend: Backend,
) -> Result<(HostArray, EvalTimings), String> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(&kernel.signature, &views).map_err(|e| e.to_string())?;
    match backend {
        Backend::Cpu => {}
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let start = Instant::now();
            let (gpu, _) = crate::jit_cache::JitCache::global()
                .get_gpu_ranges(kernel, size.dtype)
                .map_err(|e| e.to_string())?;
            let compile = start.elapsed();
            let start = Instant::now();
            let out = gpu.run_ranges(&views, ranges).map_err(|e| e.to_string())?;
            return Ok((
                out,
                EvalTimings {
                    size,
                    compile,
                    run: start.elapsed(),
                },
            ));
        }
        Backend::Interp => {
            return Err("block-sparse reductions run on the cpu or cuda backend, not interp".into())
        }
        #[allow(unreachable_patterns)]
        other => return unavailable(other).map_err(|e| e.to_string()),
    }
    let start = Instant::now();
    let (compiled, _) = crate::jit_cache::JitCache::global()
        .get(kernel, size.dtype)
        .map_err(|e| e.to_string())?;
    let compile = start.elapsed();
    let start = Instant::now();
    let out = keops_runtime::run_tiles_ranges(&compiled.tile_kernel(), &views, ranges)
        .map_err(|e| e.to_string())?;
    Ok((
        out,
        EvalTimings {
            size,
            compile,
            run: start.elapsed(),
        },
    ))
}

/// Runs `plan` (the kernel's pass over unordered pairs, whether it pays or not) on the CPU:
/// the arrays must hold the same data where the plan pairs them.
pub fn evaluate_symmetric(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    plan: &crate::symmetric::SymmetricPlan,
) -> Result<(HostArray, EvalTimings), EvalError> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(&kernel.signature, &views)?;
    let mut timings = EvalTimings {
        size,
        compile: Duration::ZERO,
        run: Duration::ZERO,
    };
    let start = Instant::now();
    let table = crate::jit_cache::JitCache::global();
    let (full, _) = table.get(kernel, size.dtype)?;
    let (cross, _) = table.get_cross(&plan.cross, plan.columns, size.dtype)?;
    timings.compile = start.elapsed();
    let cross_views: Vec<_> = plan.sources.iter().map(|&k| views[k]).collect();
    let start = Instant::now();
    let out = keops_runtime::run_symmetric_tiles(
        &full.tile_kernel(),
        &views,
        &cross.tile_kernel(),
        &cross_views,
    )?;
    timings.run = start.elapsed();
    Ok((out, timings))
}

/// [`evaluate_bound`] without the timings, with the CPU's (and the GPU's) code taken from the
/// process-wide [`JitCache`](crate::jit_cache::JitCache): a kernel run again is not compiled
/// (or loaded) again. What the vjp runs by default.
pub fn evaluate_cached(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    backend: Backend,
) -> Result<HostArray, EvalError> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    #[cfg(feature = "cuda")]
    if backend == Backend::Cuda {
        let size = check_arguments(&kernel.signature, &views)?;
        let (loaded, _) = crate::jit_cache::JitCache::global().get_gpu(kernel, size.dtype)?;
        return Ok(loaded.run(&views)?);
    }
    if backend != Backend::Cpu {
        return Ok(evaluate_bound(kernel, arrays, backend)?.0);
    }
    let size = check_arguments(&kernel.signature, &views)?;
    let (compiled, _) = crate::jit_cache::JitCache::global().get(kernel, size.dtype)?;
    Ok(run_tiles(&compiled.tile_kernel(), &views, None)?)
}

/// Optimises `kernel`, a `Sum` over its inner index whose formula's last `columns` components
/// are to be summed over its rows instead (a cross pass, `keops_runtime::cross`), and
/// compiles it to host machine code for `dtype`.
pub fn compile_cpu_cross(
    kernel: &CheckedKernel,
    columns: usize,
    dtype: DType,
) -> Result<JitCrossKernel, EvalError> {
    let red = kernel.signature.reduction;
    if red.kind != ReductionKind::Sum || columns == 0 || columns > red.fdim {
        return Err(EvalError::Codegen(CodegenError::Internal {
            stage: "cross pass",
            message: format!(
                "kernel `{}` ({}) cannot send {columns} of its components to the columns",
                kernel.name, red.kind
            ),
        }));
    }
    let mut rows = kernel.signature.clone();
    rows.reduction = Reduction::new(ReductionKind::Sum, red.fdim - columns);
    optimized_then(kernel, |formula| {
        JitCrossKernel::compile(formula, &rows, columns, dtype, &crate::codegen::host_cpu())
    })
}

/// Runs a cross pass on the CPU with its code from the process-wide
/// [`JitCache`](crate::jit_cache::JitCache): `kernel`'s rows (its first components summed
/// over the inner index) and columns (its last `columns` components summed over the rows).
pub fn evaluate_cross_cached(
    kernel: &CheckedKernel,
    columns: usize,
    arrays: &[&HostArray],
) -> Result<(HostArray, HostArray), EvalError> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(&kernel.signature, &views)?;
    let (compiled, _) =
        crate::jit_cache::JitCache::global().get_cross(kernel, columns, size.dtype)?;
    Ok(keops_runtime::run_cross_tiles(
        &compiled.tile_kernel(),
        &views,
        None,
    )?)
}

/// Reads the `.npy` files passed for a kernel's arguments (`(name, path)` pairs, in any order)
/// and checks them against its signature. Every problem is reported, not only the first: each
/// unknown, duplicate or missing name, each unreadable file, each wrong shape or dtype. On
/// success, the arrays in argument order.
pub fn read_arguments(
    kernel: &CheckedKernel,
    files: &[(String, PathBuf)],
) -> Result<Vec<HostArray>, Vec<ArgumentError>> {
    let named: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let (bound, mut errors) = bind_all_named(&kernel.signature, &named);
    let arrays: Vec<Option<HostArray>> = bound
        .iter()
        .zip(&kernel.signature.args)
        .map(|(path, spec)| {
            let path = (*path)?;
            HostArray::read_npy(path)
                .map_err(|error| {
                    errors.push(ArgumentError::File {
                        name: spec.name.clone(),
                        error: NpyError::Io(format!("`{}`: {error}", path.display())),
                    })
                })
                .ok()
        })
        .collect();
    let views: Vec<Option<_>> = arrays
        .iter()
        .map(|a| a.as_ref().map(|a| a.view()))
        .collect();
    if let Err(shape_errors) = check_all_arguments(&kernel.signature, &views) {
        errors.extend(shape_errors);
    }
    if errors.is_empty() {
        Ok(arrays.into_iter().flatten().collect())
    } else {
        Err(errors)
    }
}

/// Optimises a checked kernel and compiles it to host machine code for `dtype`.
pub fn compile_cpu(kernel: &CheckedKernel, dtype: DType) -> Result<JitKernel, EvalError> {
    // Derivatives were expanded when the kernel was compiled: nothing here can fail on the
    // user's formula.
    optimized_then(kernel, |formula| {
        JitKernel::compile(
            formula,
            &kernel.signature,
            dtype,
            &crate::codegen::host_cpu(),
        )
    })
}

/// Optimises `kernel` at the CPU's prices and hands its formula to `compile`, on the
/// compiler's own stack: a panic (a broken invariant) becomes an internal error.
fn optimized_then<T: Send>(
    kernel: &CheckedKernel,
    compile: impl FnOnce(&crate::formula::Formula) -> Result<T, CodegenError> + Send,
) -> Result<T, EvalError> {
    optimized_for_then(kernel, &opt::OptBudget::default(), compile)
}

/// [`optimized_then`] within `budget` (and at its prices).
fn optimized_for_then<T: Send>(
    kernel: &CheckedKernel,
    budget: &opt::OptBudget,
    compile: impl FnOnce(&crate::formula::Formula) -> Result<T, CodegenError> + Send,
) -> Result<T, EvalError> {
    crate::isolate::on_compiler_stack(|| {
        let optimized = opt::optimize(kernel, budget).map_err(|d| CodegenError::Internal {
            stage: d.internal.unwrap_or("optimiser"),
            message: d.message,
        })?;
        Ok(compile(&optimized.formula)?)
    })
    .unwrap_or_else(|panic| {
        Err(EvalError::Codegen(CodegenError::Internal {
            stage: "the optimiser or code generation",
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
    optimized_for_then(kernel, &budget, |formula| {
        crate::codegen::nvptx::compile_entry_tuned(
            formula,
            &kernel.signature,
            dtype,
            &target,
            entry,
        )
    })
}

/// What `keopsc explain --ptx` and the REPL's `:ptx` show: the kernel optimised at the GPU's
/// prices, its GPU schedule, PTX and ptxas's report ([`crate::codegen::nvptx::explain_ptx`]).
pub fn explain_gpu(kernel: &CheckedKernel, dtype: DType) -> Result<String, EvalError> {
    let (target, budget) = gpu_target();
    optimized_for_then(kernel, &budget, |formula| {
        let text = crate::codegen::nvptx::explain_ptx(formula, &kernel.signature, dtype, &target)?;
        Ok(format!("-- formula (gpu prices) --\n{formula}\n{text}"))
    })
}

/// Compiles a checked kernel in this process (no cache, no linker) for each of `dtypes`, as
/// the runtime's [`Kernel`], the type modules loaded from disk also give.
pub fn jit_kernel(kernel: &CheckedKernel, dtypes: &[DType]) -> Result<Kernel, EvalError> {
    let compiled: Vec<JitKernel> = dtypes
        .iter()
        .map(|&d| compile_cpu(kernel, d))
        .collect::<Result<_, _>>()?;
    let entries = compiled
        .iter()
        .map(|j| {
            let t = j.tile_kernel();
            (t.dtype(), t.tile(), t.lanes())
        })
        .collect();
    let owner: std::sync::Arc<dyn std::any::Any + Send + Sync> = std::sync::Arc::new(compiled);
    // SAFETY: the tile functions were compiled for this signature and live as long as
    // `owner`, which holds their JIT engines.
    Ok(unsafe { Kernel::from_parts(kernel.signature.clone(), entries, owner) })
}

/// The symmetric pass of `kernel` ([`crate::symmetric`]) compiled in this process for each of
/// `dtypes`, where each `(j, i)` of `same` (argument positions) says that the j-variable `j`
/// will hold the data of the i-variable `i`. A kernel carrying it
/// ([`Kernel::with_symmetric`]) walks each unordered pair once when its inputs pair up so
/// ([`Kernel::call_symmetric`], and the linear operators built on it). A kernel that cannot be
/// evaluated so (not a `Sum`, no pair), or whose halves share too little for it to pay
/// ([`crate::symmetric::plan_if_it_pays`]), is refused with the reason
/// ([`EvalError::NotSymmetric`]): the caller then evaluates it in full.
pub fn jit_symmetric(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
    dtypes: &[DType],
) -> Result<keops_runtime::SymmetricPass, EvalError> {
    let plan = crate::symmetric::plan_if_it_pays(kernel, same)?;
    let compiled: Vec<JitCrossKernel> = dtypes
        .iter()
        .map(|&d| compile_cpu_cross(&plan.cross, plan.columns, d))
        .collect::<Result<_, _>>()?;
    let entries = compiled
        .iter()
        .map(|c| {
            let t = c.tile_kernel();
            (t.dtype(), t.tile(), t.lanes())
        })
        .collect();
    let signature = compiled
        .first()
        .map_or_else(|| plan.cross.signature.clone(), |c| c.signature.clone());
    let owner: std::sync::Arc<dyn std::any::Any + Send + Sync> = std::sync::Arc::new(compiled);
    // SAFETY: each cross tile function was compiled from the plan's `Concat(F, F swapped)` for
    // this row signature and `plan.columns` columns, and lives as long as `owner`.
    Ok(unsafe {
        keops_runtime::SymmetricPass::from_parts(
            signature,
            plan.sources,
            same.to_vec(),
            entries,
            owner,
        )
    })
}

/// [`jit_kernel`] carrying its symmetric pass ([`jit_symmetric`]).
pub fn jit_kernel_symmetric(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
    dtypes: &[DType],
) -> Result<Kernel, EvalError> {
    let full = jit_kernel(kernel, dtypes)?;
    let pass = jit_symmetric(kernel, same, dtypes)?;
    full.with_symmetric(pass).map_err(|message| {
        EvalError::Codegen(CodegenError::Internal {
            stage: "symmetric pass",
            message,
        })
    })
}

/// [`jit_kernel`] with the kernel's gradients (`Kernel::vjp`): the backward kernels of each
/// input and of all inputs at once compiled as well, as `keopsc build --grad` stores them in a
/// module. A reduction that returns indices only has none (its `vjp` says so).
pub fn jit_kernel_with_gradients(
    kernel: &CheckedKernel,
    dtypes: &[DType],
) -> Result<Kernel, crate::vjp::VjpRunError> {
    let forward = jit_kernel(kernel, dtypes)?;
    let stored = crate::artifact::gradients::collect_kernels(std::slice::from_ref(kernel))?;
    let backward: Vec<Kernel> = stored
        .kernels
        .iter()
        .map(|k| jit_kernel(k, dtypes))
        .collect::<Result<_, _>>()?;
    let described = stored.gradients.into_iter().next().unwrap_or_default();
    forward
        .with_gradients(&described, &backward)
        .map_err(|message| {
            crate::vjp::VjpError::Internal {
                kernel: kernel.name.clone(),
                message,
            }
            .into()
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
    let scalar = crate::codegen::jit::scalar_of(dtype);
    let schedule = crate::schedule::Schedule::cpu(
        &optimized.formula,
        &optimized.signature,
        target.lanes(scalar),
        crate::codegen::jit::elem_bytes(scalar),
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

/// Gradients of whole reductions: `d/dwrt sum(G * kernel(inputs))`, see [`crate::vjp`].
pub use crate::vjp::{vjp, vjp_many, VjpRunError};
