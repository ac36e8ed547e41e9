//! A kernel evaluated on host arrays by a chosen backend: bound by name ([`evaluate`]) or in
//! argument order ([`evaluate_bound`], timed), over symmetric pairs ([`evaluate_same`]),
//! block-sparse ranges ([`evaluate_ranges`]) or cross passes, with compiled code from the
//! process-wide [`JitCache`](crate::jit_cache::JitCache) where a kernel runs again.

use super::backend::{unavailable, Backend, EvalError};
use super::pipeline::compile_cpu;
#[cfg(feature = "cuda")]
use super::pipeline::load_gpu;
use crate::check::CheckedKernel;
use crate::interp;
use keops_runtime::module::bind_all_named;
use keops_runtime::Executor;
use keops_runtime::{
    check_all_arguments, check_arguments, run_tiles, ArgumentError, Axis, DType, HostArray,
    NpyError, ProblemSize,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
