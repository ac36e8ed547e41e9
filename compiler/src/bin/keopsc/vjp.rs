//! `keopsc vjp`: the gradient of a kernel's output with respect to one input or several
//! (`--wrt` repeated, one `-o` each), on `.npy` files. The same order of steps as `eval`: the
//! output paths first, then the source, then every argument and the cotangent (all problems
//! listed together), and only then the computation. `--saved` passes the forward output
//! already computed, so that the LogSumExp family's backward is one pass.

use crate::eval::{argument_problems, parse_backend, pick_kernel, PendingOutput};
use crate::inputs::{parse_files, parse_same, read_inputs, Inputs, SameData};
use crate::{fail, load, Reported};
use keops_runtime::HostArray;
use keopsc::batch::{check_batched_rows, rows_of_batch, GradientSum, RowsShape};
use keopsc::check::CheckedKernel;
use keopsc::vjp::{self as backward, VjpError, VjpManyPlan, VjpRunError};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `keopsc vjp` was asked to do.
pub struct VjpRequest<'a> {
    pub file: &'a Path,
    pub kernel: Option<&'a str>,
    /// The inputs to differentiate, each written to the output at the same position.
    pub wrt: &'a [String],
    pub args: &'a [String],
    /// `--same J=I` flags, as for `eval`.
    pub same: &'a [String],
    pub cotangent: &'a Path,
    /// The saved forward rows, already computed (the forward output for the LogSumExp family).
    pub saved: Option<&'a Path>,
    pub outputs: &'a [PathBuf],
    pub backend: Option<&'a str>,
    /// `--ranges`: KeOps's 6-tuple, six int64 `.npy` files.
    pub ranges: Option<&'a [PathBuf]>,
    pub timings: bool,
}

pub fn vjp(request: &VjpRequest) -> Result<(), Reported> {
    let started = Instant::now();
    let backend = parse_backend(request.backend)?;
    let outputs = open_outputs(request)?;
    let compiled = load(request.file)?;
    let kernel = pick_kernel(&compiled, request.kernel, request.file)?;

    let mut problems: Vec<String> = Vec::new();
    let files = parse_files(request.args, &mut problems);
    let same = parse_same(kernel, request.same, &files, &mut problems);
    let wrt = differentiated(kernel, request.wrt, &same)?;
    let asked = request.wrt.len();
    // What cannot be differentiated is known from the source alone: before reading any data.
    let plan = plan(kernel, &wrt, asked)?;

    let inputs = read_inputs(kernel, &files, &same, &mut problems);
    let cotangent_flag = format!("`--cotangent {}`", request.cotangent.display());
    let cotangent = HostArray::read_npy(request.cotangent)
        .map_err(|e| problems.push(format!("{cotangent_flag}: {e}")))
        .ok();
    if let (Some(inputs), Some(cotangent)) = (&inputs, &cotangent) {
        if let Err(e) = check_rows(&plan, inputs, cotangent, plan.forward.output_dim()) {
            problems.push(format!("{cotangent_flag}: the cotangent {e}"));
        }
    }
    let saved = request
        .saved
        .and_then(|path| read_saved(path, &plan, inputs.as_ref()?, &mut problems));
    let ranges = request
        .ranges
        .and_then(|paths| read_ranges(paths, &mut problems));
    let (Some(inputs), Some(cotangent), true) = (inputs, cotangent, problems.is_empty()) else {
        return Err(argument_problems(&problems, &kernel.name));
    };
    let run_failed = |e: VjpRunError| match e {
        VjpRunError::Cotangent(_) => fail(format!("{cotangent_flag}: {e}")),
        VjpRunError::Saved(_) => fail(format!("`--saved`: {e}")),
        e => fail(e),
    };
    let start = Instant::now();
    let grads = match &ranges {
        Some(ranges) => {
            if !inputs.layout.batch.is_empty() || !same.is_empty() {
                return Err(fail(
                    "`--ranges`: not with batch axes or `--same` (one block-sparsity pattern per call)",
                ));
            }
            if backend == keopsc::driver::Backend::Interp {
                return Err(fail(format!(
                    "`--ranges` runs on the cpu or cuda backend, not {backend}"
                )));
            }
            let bound = inputs.bound();
            backward::run_many_ranges_on(&plan, &bound, &cotangent, saved.as_ref(), ranges, backend)
                .map_err(run_failed)?
        }
        None => run_batches(&plan, &inputs, &cotangent, saved.as_ref(), backend, asked)
            .map_err(run_failed)?,
    };
    let run = start.elapsed();
    for (output, grad) in outputs.into_iter().zip(&grads) {
        output.commit(|f| grad.write_npy_to(f))?;
    }
    if request.timings {
        let on = match &ranges {
            Some(_) => "on the pairs the ranges keep".to_string(),
            None => format!("on {backend}"),
        };
        let batches = match &inputs.layout.batch {
            b if ranges.is_some() || b.is_empty() => String::new(),
            b => format!(" ({} batches {b}, in one parallel region)", b.count()),
        };
        eprintln!(
            "vjp of `{}` with respect to `{}` {on}: {:.1} ms computing{batches}, {:.1} ms in all",
            kernel.name,
            request.wrt.join("`, `"),
            run.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// One `-o` per `--wrt`, each its own file, each checked writable before any work.
fn open_outputs(request: &VjpRequest) -> Result<Vec<PendingOutput>, Reported> {
    if request.wrt.len() != request.outputs.len() {
        return Err(fail(format!(
            "`--wrt` is given {} time{} and `-o` {}: give one `-o` per `--wrt`, in the same order",
            request.wrt.len(),
            if request.wrt.len() == 1 { "" } else { "s" },
            request.outputs.len()
        )));
    }
    for (k, path) in request.outputs.iter().enumerate() {
        if request.outputs[..k].contains(path) {
            return Err(fail(format!(
                "`-o {}` is given twice: each gradient needs its own file",
                path.display()
            )));
        }
    }
    request
        .outputs
        .iter()
        .map(|path| PendingOutput::open(path, "-o"))
        .collect()
}

/// The inputs to differentiate: each one asked for, then the `--same` variables reading it
/// (their gradients add up into its own). A variable of `--same` has no data of its own: its
/// gradient is part of its i-variable's, and asking for it is an error that says so.
fn differentiated<'k>(
    kernel: &'k CheckedKernel,
    asked: &'k [String],
    same: &[SameData],
) -> Result<Vec<&'k str>, Reported> {
    let args = &kernel.signature.args;
    for name in asked {
        if let Some(s) = same.iter().find(|s| args[s.j].name == *name) {
            return Err(fail(format!(
                "`--wrt {name}`: `{name}` takes the data of `{i}` ({s}): differentiate with \
                 respect to `{i}`, whose gradient is the total derivative through `{i}` and \
                 `{name}`",
                i = args[s.i].name
            )));
        }
    }
    let mut wrt: Vec<&str> = asked.iter().map(String::as_str).collect();
    for s in same {
        if wrt.contains(&args[s.i].name.as_str()) {
            wrt.push(&args[s.j].name);
        }
    }
    Ok(wrt)
}

/// The backward plan, its error naming the `--wrt` flag at fault.
fn plan(kernel: &CheckedKernel, wrt: &[&str], asked: usize) -> Result<VjpManyPlan, Reported> {
    backward::plan_many(kernel, wrt).map_err(|e| {
        let flag = match &e {
            VjpError::UnknownInput { name, .. } | VjpError::DuplicateInput { name, .. } => {
                format!("`--wrt {name}`")
            }
            _ if asked == 1 => format!("`--wrt {}`", wrt[0]),
            _ => "`--wrt`".to_string(),
        };
        fail(format!("{flag}: {e}"))
    })
}

/// `--saved`: the forward rows already computed, checked against the inputs; ignored, with a
/// note, by a backward pass that reads none.
fn read_saved(
    path: &Path,
    plan: &VjpManyPlan,
    inputs: &Inputs,
    problems: &mut Vec<String>,
) -> Option<HostArray> {
    let flag = format!("`--saved {}`", path.display());
    let rows = HostArray::read_npy(path)
        .map_err(|e| problems.push(format!("{flag}: {e}")))
        .ok()?;
    let Some(dim) = plan.saved.dim(&plan.forward) else {
        eprintln!(
            "note: {flag} is ignored: the backward pass of {} reads no saved forward",
            plan.forward.reduction.kind
        );
        return None;
    };
    match check_rows(plan, inputs, &rows, dim) {
        Ok(()) => Some(rows),
        Err(e) => {
            problems.push(format!("{flag}: the saved forward {e}"));
            None
        }
    }
}

/// `--ranges`: KeOps's 6-tuple of int64 `.npy` files, both halves.
fn read_ranges(paths: &[PathBuf], problems: &mut Vec<String>) -> Option<keops_runtime::RangesPair> {
    let mut read = Vec::new();
    for (path, name) in paths.iter().zip(keops_runtime::RangesPair::NAMES) {
        match keops_runtime::IndexArray::read_npy(path) {
            Ok(a) => read.push(a),
            Err(e) => problems.push(format!(
                "`--ranges` {name} `{}`: {e} (an int64 array)",
                path.display()
            )),
        }
    }
    let read: [&keops_runtime::IndexArray; 6] = read.iter().collect::<Vec<_>>().try_into().ok()?;
    keops_runtime::RangesPair::from_arrays(read)
        .map_err(|e| problems.push(format!("`--ranges`: {e}")))
        .ok()
}

/// Checks rows shaped like the output (the cotangent, the saved forward) of `dim` columns:
/// the output's batch axes, then `(rows, dim)`, in the inputs' dtype.
fn check_rows(
    plan: &VjpManyPlan,
    inputs: &Inputs,
    array: &HostArray,
    dim: usize,
) -> Result<(), String> {
    let rows = RowsShape::of(&plan.forward, inputs.size, dim);
    check_batched_rows(&inputs.layout.batch, rows, array, inputs.size.dtype)
}

/// Runs the plan on every batch, in one parallel region, and sums each gradient over the batches
/// and the arguments that read its array (a broadcast input, a `--same` variable): the first
/// `asked` inputs of the plan get one gradient each, shaped like their arrays.
fn run_batches(
    plan: &VjpManyPlan,
    inputs: &Inputs,
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    backend: keopsc::driver::Backend,
    asked: usize,
) -> Result<Vec<HostArray>, VjpRunError> {
    backend.ensure_available()?;
    let bound = inputs.bound();
    let layout = &inputs.layout;
    // Without batches nor `--same`, the gradients are the plan's own: nothing to add up.
    if layout.batch.is_empty() && plan.wrt.len() == asked {
        return backward::run_many(plan, &bound, cotangent, saved, backend);
    }
    let mut sums: Vec<GradientSum> = plan.wrt[..asked]
        .iter()
        .map(|&p| GradientSum::new(&bound[p].shape))
        .collect();
    // Where each gradient of the plan goes: the asked input whose array it differentiates.
    let targets: Vec<usize> = plan
        .wrt
        .iter()
        .map(|&p| {
            plan.wrt[..asked]
                .iter()
                .position(|&a| a == inputs.sources[p])
                .expect("a `--same` variable is differentiated with its i-variable")
        })
        .collect();
    // Every batch's backward in one parallel region; their gradients added up in batch order
    // (the same sums whatever the threads did).
    let per_batch: Vec<Vec<HostArray>> = (0..layout.batch.count())
        .into_par_iter()
        .map(|k| {
            let (arrays, g, s);
            let (batch_arrays, batch_cotangent, batch_saved) = if layout.batch.is_empty() {
                (bound.clone(), cotangent, saved)
            } else {
                arrays = layout.slice(&bound, k);
                g = rows_of_batch(&layout.batch, cotangent, k);
                s = saved.map(|rows| rows_of_batch(&layout.batch, rows, k));
                (arrays.iter().collect(), &g, s.as_ref())
            };
            backward::run_many(plan, &batch_arrays, batch_cotangent, batch_saved, backend)
        })
        .collect::<Result<_, _>>()?;
    for (k, grads) in per_batch.iter().enumerate() {
        for ((grad, &p), &target) in grads.iter().zip(&plan.wrt).zip(&targets) {
            sums[target].add(layout, p, k, grad);
        }
    }
    Ok(sums
        .into_iter()
        .map(|sum| sum.finish(inputs.size.dtype))
        .collect())
}
