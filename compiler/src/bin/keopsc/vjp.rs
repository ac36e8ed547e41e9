//! `keopsc vjp`: the gradient of a kernel's output with respect to one input or several
//! (`--wrt` repeated, one `-o` each), on `.npy` files. The same order of steps as `eval`: the
//! output paths first, then the source, then every argument and the cotangent (all problems
//! listed together), and only then the computation. `--saved` passes the forward output
//! already computed, so that the LogSumExp family's backward is one pass.

use crate::eval::{argument_problems, parse_backend, pick_kernel, PendingOutput};
use crate::inputs::{parse_files, parse_same, read_inputs, Inputs};
use crate::{fail, load, Reported};
use keops_runtime::HostArray;
use keopsc::batch::{check_batched_rows, rows_of_batch, GradientSum, RowsShape};
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
    let outputs = request
        .outputs
        .iter()
        .map(|path| PendingOutput::open(path, "-o"))
        .collect::<Result<Vec<_>, _>>()?;
    let compiled = load(request.file)?;
    let kernel = pick_kernel(&compiled, request.kernel, request.file)?;
    let args = &kernel.signature.args;

    let mut problems: Vec<String> = Vec::new();
    let files = parse_files(request.args, &mut problems);
    let same = parse_same(kernel, request.same, &files, &mut problems);
    // A variable of `--same` has no data of its own: its gradient is part of its i-variable's.
    for name in request.wrt {
        if let Some(s) = same.iter().find(|s| args[s.j].name == *name) {
            return Err(fail(format!(
                "`--wrt {name}`: `{name}` takes the data of `{i}` ({s}): differentiate with \
                 respect to `{i}`, whose gradient is the total derivative through `{i}` and \
                 `{name}`",
                i = args[s.i].name
            )));
        }
    }
    // Each input asked for, then the `--same` variables reading it: their gradients add up.
    let mut wrt: Vec<&str> = request.wrt.iter().map(String::as_str).collect();
    for s in &same {
        if wrt.contains(&args[s.i].name.as_str()) {
            wrt.push(&args[s.j].name);
        }
    }
    let asked = request.wrt.len();
    // What cannot be differentiated is known from the source alone: before reading any data.
    let plan = backward::plan_many(kernel, &wrt).map_err(|e| {
        let flag = match &e {
            VjpError::UnknownInput { name, .. } | VjpError::DuplicateInput { name, .. } => {
                format!("`--wrt {name}`")
            }
            _ if asked == 1 => format!("`--wrt {}`", wrt[0]),
            _ => "`--wrt`".to_string(),
        };
        fail(format!("{flag}: {e}"))
    })?;

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
    let saved = request.saved.and_then(|path| {
        let flag = format!("`--saved {}`", path.display());
        let rows = HostArray::read_npy(path)
            .map_err(|e| problems.push(format!("{flag}: {e}")))
            .ok()?;
        let inputs = inputs.as_ref()?;
        let Some(dim) = plan.saved.dim(&plan.forward) else {
            eprintln!(
                "note: {flag} is ignored: the backward pass of {} reads no saved forward",
                plan.forward.reduction.kind
            );
            return None;
        };
        match check_rows(&plan, inputs, &rows, dim) {
            Ok(()) => Some(rows),
            Err(e) => {
                problems.push(format!("{flag}: the saved forward {e}"));
                None
            }
        }
    });
    let ranges = request.ranges.and_then(|paths| {
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
        let read: [&keops_runtime::IndexArray; 6] =
            read.iter().collect::<Vec<_>>().try_into().ok()?;
        keops_runtime::RangesPair::from_arrays(read)
            .map_err(|e| problems.push(format!("`--ranges`: {e}")))
            .ok()
    });
    let (Some(inputs), Some(cotangent), true) = (inputs, cotangent, problems.is_empty()) else {
        return Err(argument_problems(&problems, &kernel.name));
    };
    if let Some(ranges) = &ranges {
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
        let start = Instant::now();
        let bound = inputs.bound();
        let grads = backward::run_many_ranges_on(
            &plan,
            &bound,
            &cotangent,
            saved.as_ref(),
            ranges,
            backend,
        )
        .map_err(|e| match e {
            VjpRunError::Cotangent(_) => fail(format!("{cotangent_flag}: {e}")),
            VjpRunError::Saved(_) => fail(format!("`--saved`: {e}")),
            e => fail(e),
        })?;
        for (output, grad) in outputs.into_iter().zip(&grads) {
            output.commit(|f| grad.write_npy_to(f))?;
        }
        if request.timings {
            eprintln!(
                "vjp of `{}` with respect to `{}` on the pairs the ranges keep: {:.1} ms computing, {:.1} ms in all",
                kernel.name,
                request.wrt.join("`, `"),
                start.elapsed().as_secs_f64() * 1e3,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        return Ok(());
    }

    let start = Instant::now();
    let grads = run_batches(&plan, &inputs, &cotangent, saved.as_ref(), backend, asked).map_err(
        |e| match e {
            VjpRunError::Cotangent(_) => fail(format!("{cotangent_flag}: {e}")),
            VjpRunError::Saved(_) => fail(format!("`--saved`: {e}")),
            e => fail(e),
        },
    )?;
    let run = start.elapsed();
    for (output, grad) in outputs.into_iter().zip(&grads) {
        output.commit(|f| grad.write_npy_to(f))?;
    }
    if request.timings {
        let batches = inputs.layout.batch.count();
        eprintln!(
            "vjp of `{}` with respect to `{}` on {backend}: {:.1} ms computing{}, {:.1} ms in all",
            kernel.name,
            request.wrt.join("`, `"),
            run.as_secs_f64() * 1e3,
            if inputs.layout.batch.is_empty() {
                String::new()
            } else {
                format!(
                    " ({batches} batches {}, in one parallel region)",
                    inputs.layout.batch
                )
            },
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
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
