//! A kernel evaluated on host arrays, through one entry: [`evaluate`]. Its [`EvalOptions`] say
//! where it runs ([`Backend`]: the interpreter, compiled CPU code, a GPU kernel), over which
//! pairs ([`Pairs`]: all of them, block-sparse ranges, or one point cloud against itself), and
//! whether its code comes from the process-wide [`JitCache`] or is compiled anew
//! ([`CodeSource`]); the arguments are given in signature order or by name ([`Arguments`]), and
//! arrays with leading batch axes ([`crate::batch`]) are evaluated batch by batch. [`executor`] hands out the compiled code itself,
//! for callers that run one kernel many times.

use super::backend::{unavailable, Backend, EvalError};
use super::pipeline::compile_cpu;
#[cfg(feature = "cuda")]
use super::pipeline::load_gpu;
use crate::batch::{check_batched_arguments, has_batch_axes, stack, RowsShape};
use crate::check::CheckedKernel;
use crate::interp;
use crate::jit_cache::JitCache;
use crate::symmetric::SymmetricPlan;
use keops_runtime::module::bind_all_named;
use keops_runtime::{
    check_all_arguments, check_arguments, run_tiles_batched, ArgumentError, ArrayRef, Axis, DType,
    Executor, HostArray, NpyError, ProblemSize, Ranges,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which pairs `(i, j)` a reduction goes over.
#[derive(Clone, Copy, Debug, Default)]
pub enum Pairs<'a> {
    /// Every pair.
    #[default]
    All,
    /// The pairs block-sparse ranges keep (KeOps's `ranges`, `keops_runtime::ranges`): on the
    /// CPU or the GPU, not the interpreter.
    Ranges(&'a Ranges),
    /// Every pair, where each `(j, i)` (argument positions) says that the j-variable `j`
    /// holds the data of the i-variable `i`: on the CPU, a `Sum` whose two halves share
    /// enough to pay ([`crate::symmetric::plan_if_it_pays`]) walks each unordered pair once;
    /// otherwise, and when the arrays do not hold the same data after all, every pair. The
    /// results agree up to summation order.
    Same(&'a [(usize, usize)]),
    /// Each unordered pair once, by this plan, whether it pays or not (the CPU only): the
    /// arrays must hold the same data where the plan pairs them.
    Symmetric(&'a SymmetricPlan),
}

/// Where compiled code comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CodeSource {
    /// The process-wide [`JitCache`]: a kernel run again is not compiled (or loaded) again.
    #[default]
    Cached,
    /// Compiled anew for this evaluation, so that its timings hold the whole compilation.
    Anew,
}

/// How [`evaluate`] runs a kernel. `Backend::Cpu.into()` (or [`EvalOptions::on`]) is every
/// pair on that backend, unbatched, with cached code.
#[derive(Clone, Copy, Debug)]
pub struct EvalOptions<'a> {
    pub backend: Backend,
    pub pairs: Pairs<'a>,
    pub code: CodeSource,
}

impl<'a> EvalOptions<'a> {
    pub fn on(backend: Backend) -> EvalOptions<'a> {
        EvalOptions {
            backend,
            pairs: Pairs::All,
            code: CodeSource::Cached,
        }
    }

    pub fn pairs(self, pairs: Pairs<'a>) -> EvalOptions<'a> {
        EvalOptions { pairs, ..self }
    }

    pub fn ranges(self, ranges: &'a Ranges) -> EvalOptions<'a> {
        self.pairs(Pairs::Ranges(ranges))
    }

    pub fn compiled_anew(self) -> EvalOptions<'a> {
        EvalOptions {
            code: CodeSource::Anew,
            ..self
        }
    }
}

impl From<Backend> for EvalOptions<'_> {
    fn from(backend: Backend) -> Self {
        EvalOptions::on(backend)
    }
}

/// The arguments of an evaluation: arrays in signature order (`[&HostArray]`), or named
/// arrays (`[(String, HostArray)]`) matched to the kernel's arguments by [`bind_arguments`].
pub trait Arguments {
    fn bind<'s>(&'s self, kernel: &CheckedKernel) -> Result<Vec<&'s HostArray>, ArgumentError>;
}

impl Arguments for [&HostArray] {
    fn bind<'s>(&'s self, _: &CheckedKernel) -> Result<Vec<&'s HostArray>, ArgumentError> {
        Ok(self.to_vec())
    }
}

impl Arguments for [(String, HostArray)] {
    fn bind<'s>(&'s self, kernel: &CheckedKernel) -> Result<Vec<&'s HostArray>, ArgumentError> {
        bind_arguments(kernel, self)
    }
}

impl<T> Arguments for Vec<T>
where
    [T]: Arguments,
{
    fn bind<'s>(&'s self, kernel: &CheckedKernel) -> Result<Vec<&'s HostArray>, ArgumentError> {
        self.as_slice().bind(kernel)
    }
}

impl<T, const N: usize> Arguments for [T; N]
where
    [T]: Arguments,
{
    fn bind<'s>(&'s self, kernel: &CheckedKernel) -> Result<Vec<&'s HostArray>, ArgumentError> {
        self.as_slice().bind(kernel)
    }
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

/// Where the time of one evaluation went, and the size of the problem it solved.
#[derive(Clone, Copy, Debug)]
pub struct EvalTimings {
    /// One batch's size, when there are batches.
    pub size: ProblemSize,
    /// Optimising and compiling to machine code, or finding it in the cache (zero for the
    /// interpreter).
    pub compile: Duration,
    /// The reduction itself.
    pub run: Duration,
}

impl EvalTimings {
    fn of(size: ProblemSize) -> EvalTimings {
        EvalTimings {
            size,
            compile: Duration::ZERO,
            run: Duration::ZERO,
        }
    }

    /// (i, j) pairs per second of run time.
    pub fn pairs_per_second(&self) -> f64 {
        (self.size.n as f64 * self.size.m as f64) / self.run.as_secs_f64().max(1e-9)
    }
}

/// What an evaluation returns: its output, in the inputs' dtype, `(batch..., rows, Dout)`
/// with `rows` N for axis 0 and M for axis 1, and where its time went.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub output: HostArray,
    pub timings: EvalTimings,
}

/// Evaluates `kernel` on `arguments` as `options` say (see the module's documentation).
/// Arguments are checked against the signature first, every error naming its argument.
pub fn evaluate<'a, A: Arguments + ?Sized>(
    kernel: &CheckedKernel,
    arguments: &A,
    options: impl Into<EvalOptions<'a>>,
) -> Result<Evaluation, EvalError> {
    let options = options.into();
    let arrays = arguments.bind(kernel)?;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    if has_batch_axes(&kernel.signature, &views) {
        return evaluate_batches(kernel, &arrays, &options);
    }
    let size = check_arguments(&kernel.signature, &views)?;
    match (options.backend, options.pairs) {
        (Backend::Interp, Pairs::Ranges(_)) => Err(EvalError::Ranges(
            "block-sparse reductions run on the cpu or cuda backend, not interp".into(),
        )),
        (Backend::Cpu, Pairs::Symmetric(plan)) => run_symmetric(kernel, &views, size, plan),
        (backend, Pairs::Symmetric(_)) => Err(EvalError::NotSupported(format!(
            "the symmetric pass runs on the cpu backend, not {backend}"
        ))),
        (Backend::Interp, _) => interpret(kernel, &arrays, size),
        (Backend::Cpu, Pairs::Same(same)) if holds_same_data(&arrays, same) => {
            match crate::symmetric::plan_if_it_pays(kernel, same) {
                Ok(plan) => run_symmetric(kernel, &views, size, &plan),
                Err(_) => run_all(kernel, &views, size, &options),
            }
        }
        (_, Pairs::Ranges(ranges)) => run_ranges(kernel, &views, size, ranges, options.backend),
        (_, Pairs::All | Pairs::Same(_)) => run_all(kernel, &views, size, &options),
    }
}

/// Whether each `(j, i)` of `same` pairs two arrays with the same rows.
fn holds_same_data(arrays: &[&HostArray], same: &[(usize, usize)]) -> bool {
    same.iter().all(|&(j, i)| {
        arrays.get(j).zip(arrays.get(i)).is_some_and(|(a, b)| {
            a.shape.first() == b.shape.first() && a.len() == b.len() && a.to_f64() == b.to_f64()
        })
    })
}

/// The f64 interpreter, the oracle: every pair, its output rounded to the inputs' dtype.
fn interpret(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    size: ProblemSize,
) -> Result<Evaluation, EvalError> {
    let mut timings = EvalTimings::of(size);
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
    let output = match size.dtype {
        DType::F64 => HostArray::from_f64(shape, out),
        DType::F32 => HostArray::from_f32(shape, out.into_iter().map(|x| x as f32).collect()),
    };
    timings.run = start.elapsed();
    Ok(Evaluation { output, timings })
}

/// Every pair on the CPU or the GPU, behind the runtime's executor boundary.
fn run_all(
    kernel: &CheckedKernel,
    views: &[ArrayRef],
    size: ProblemSize,
    options: &EvalOptions,
) -> Result<Evaluation, EvalError> {
    let mut timings = EvalTimings::of(size);
    let start = Instant::now();
    let executor = executor_for(kernel, size.dtype, options)?;
    timings.compile = start.elapsed();
    let start = Instant::now();
    let output = executor.reduce(views)?;
    timings.run = start.elapsed();
    Ok(Evaluation { output, timings })
}

/// `kernel` compiled for `dtype` on `backend` (CPU or CUDA), anew, behind the runtime's
/// executor boundary. The interpreter is no executor: it is the oracle, run by [`evaluate`].
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

/// [`executor`] anew or from the process-wide [`JitCache`], as `options.code` says.
fn executor_for(
    kernel: &CheckedKernel,
    dtype: DType,
    options: &EvalOptions,
) -> Result<std::sync::Arc<dyn Executor>, EvalError> {
    match options.code {
        CodeSource::Anew => Ok(std::sync::Arc::from(executor(
            kernel,
            dtype,
            options.backend,
        )?)),
        CodeSource::Cached => cached_executor(kernel, dtype, options.backend),
    }
}

/// [`executor`] from the process-wide [`JitCache`].
fn cached_executor(
    kernel: &CheckedKernel,
    dtype: DType,
    backend: Backend,
) -> Result<std::sync::Arc<dyn Executor>, EvalError> {
    match backend {
        Backend::Cpu => Ok(JitCache::global().get(kernel, dtype)?.0),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Ok(JitCache::global().get_gpu(kernel, dtype)?.0),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => unavailable(backend),
        Backend::Interp => unavailable(backend),
    }
}

/// The pairs `ranges` keeps, on the CPU or the GPU (its block-sparse kernel), code cached.
fn run_ranges(
    kernel: &CheckedKernel,
    views: &[ArrayRef],
    size: ProblemSize,
    ranges: &Ranges,
    backend: Backend,
) -> Result<Evaluation, EvalError> {
    let mut timings = EvalTimings::of(size);
    let start = Instant::now();
    let output = match backend {
        Backend::Cpu => {
            let (compiled, _) = JitCache::global().get(kernel, size.dtype)?;
            timings.compile = start.elapsed();
            let start = Instant::now();
            let out = keops_runtime::run_tiles_ranges(&compiled.tile_kernel(), views, ranges)?;
            timings.run = start.elapsed();
            out
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let (gpu, _) = JitCache::global().get_gpu_ranges(kernel, size.dtype)?;
            timings.compile = start.elapsed();
            let start = Instant::now();
            let out = gpu.run_ranges(views, ranges)?;
            timings.run = start.elapsed();
            out
        }
        other => return unavailable(other),
    };
    Ok(Evaluation { output, timings })
}

/// Each unordered pair once by `plan` on the CPU, code cached.
fn run_symmetric(
    kernel: &CheckedKernel,
    views: &[ArrayRef],
    size: ProblemSize,
    plan: &SymmetricPlan,
) -> Result<Evaluation, EvalError> {
    let mut timings = EvalTimings::of(size);
    let start = Instant::now();
    let table = JitCache::global();
    let (full, _) = table.get(kernel, size.dtype)?;
    let (cross, _) = table.get_cross(&plan.cross, plan.columns, size.dtype)?;
    timings.compile = start.elapsed();
    let cross_views: Vec<_> = plan.sources.iter().map(|&k| views[k]).collect();
    let start = Instant::now();
    let output = keops_runtime::run_symmetric_tiles(
        &full.tile_kernel(),
        views,
        &cross.tile_kernel(),
        &cross_views,
    )?;
    timings.run = start.elapsed();
    Ok(Evaluation { output, timings })
}

/// Every batch of `arrays` (leading axes, [`crate::batch`]), outputs stacked:
/// `(batch..., rows, Dout)`. On the CPU the kernel is compiled once and every batch runs in
/// one parallel region (`run_tiles_batched`); a GPU's code is compiled (or found) once and runs
/// the batches one after another; the interpreter evaluates each batch apart (`size` is one
/// batch's).
/// Batches go over every pair: ranges and symmetric plans are for unbatched arrays.
fn evaluate_batches(
    kernel: &CheckedKernel,
    arrays: &[&HostArray],
    options: &EvalOptions,
) -> Result<Evaluation, EvalError> {
    if let Pairs::Ranges(_) | Pairs::Symmetric(_) = options.pairs {
        return Err(EvalError::NotSupported(
            "block-sparse ranges and symmetric plans apply to arrays without batch axes".into(),
        ));
    }
    let views: Vec<Option<ArrayRef>> = arrays.iter().map(|a| Some(a.view())).collect();
    let (layout, size) = check_batched_arguments(&kernel.signature, &views)
        .map_err(|mut errors| EvalError::from(errors.remove(0)))?;
    options.backend.ensure_available()?;
    let mut timings = EvalTimings::of(size);
    let count = layout.batch.count();
    let mut outputs = Vec::with_capacity(count);
    if options.backend == Backend::Cpu && count > 0 {
        let start = Instant::now();
        let compiled = match options.code {
            CodeSource::Anew => std::sync::Arc::new(compile_cpu(kernel, size.dtype)?),
            CodeSource::Cached => JitCache::global().get(kernel, size.dtype)?.0,
        };
        timings.compile = start.elapsed();
        let tiles = compiled.tile_kernel();
        let start = Instant::now();
        let problems: Vec<Vec<ArrayRef>> = (0..count).map(|k| layout.views(arrays, k)).collect();
        outputs = run_tiles_batched(&tiles, &problems)?;
        timings.run = start.elapsed();
    } else if options.backend == Backend::Interp {
        for k in 0..count {
            let batch = layout.slice(arrays, k);
            let bound: Vec<&HostArray> = batch.iter().collect();
            let done = interpret(kernel, &bound, size)?;
            timings.run += done.timings.run;
            outputs.push(done.output);
        }
    } else if count > 0 {
        // A device: its code compiled (or found) once, then the batches one after another.
        let start = Instant::now();
        let executor = executor_for(kernel, size.dtype, options)?;
        timings.compile = start.elapsed();
        let start = Instant::now();
        for k in 0..count {
            outputs.push(executor.reduce(&layout.views(arrays, k))?);
        }
        timings.run = start.elapsed();
    }
    let rows = RowsShape::of(&kernel.signature, size, kernel.signature.output_dim());
    let output = stack(&layout.batch, outputs, &[rows.rows, rows.dim], size.dtype);
    Ok(Evaluation { output, timings })
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
