//! Running a [`VjpPlan`] on host arrays: the saved forward and selected-entry passes, the
//! backward kernels on any backend, and the combination of their rows (sums in f64).

use super::{SavedForward, SelectedBackward, SelectedCotangent, VjpError, VjpManyPlan, VjpPlan};
use crate::check::CheckedKernel;
use crate::driver::{bind_arguments, evaluate_cached, Backend, EvalError};
use keops_runtime::{
    check_arguments, ArgumentError, Axis, Category, DType, HostArray, ProblemSize, Signature,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VjpRunError {
    #[error(transparent)]
    Plan(#[from] VjpError),
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    /// The cotangent does not fit the output: the message says how.
    #[error("the cotangent {0}")]
    Cotangent(String),
    /// The saved forward rows passed in do not fit: the message says how.
    #[error("the saved forward {0}")]
    Saved(String),
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// `d/dwrt sum(G * kernel(inputs))` on named arrays: the gradient has the shape and dtype of
/// the array passed for `wrt`.
pub fn vjp(
    kernel: &CheckedKernel,
    wrt: &str,
    inputs: &[(String, HostArray)],
    cotangent: &HostArray,
    backend: Backend,
) -> Result<HostArray, VjpRunError> {
    let plan = super::plan(kernel, wrt)?;
    let arrays = bind_arguments(kernel, inputs)?;
    run_plan(&plan, &arrays, cotangent, backend)
}

/// Checks a cotangent against the output of a kernel of signature `plan.forward` on a problem
/// of `size`: shape `(rows, Dout)` (or `(rows,)` when `Dout` is 1) and the inputs' dtype.
pub fn check_cotangent(
    plan: &VjpPlan,
    size: ProblemSize,
    cotangent: &HostArray,
) -> Result<(), VjpRunError> {
    check_output_rows(&plan.forward, size, cotangent)
}

/// [`check_cotangent`] for a kernel of signature `forward`.
pub fn check_output_rows(
    forward: &Signature,
    size: ProblemSize,
    cotangent: &HostArray,
) -> Result<(), VjpRunError> {
    check_rows(forward, size, cotangent, forward.output_dim(), "cotangent")
        .map_err(VjpRunError::Cotangent)
}

/// Checks saved forward rows passed in (see [`saved_rows`]) against a plan's `saved` for a
/// kernel of signature `forward` on a problem of `size`: shape `(rows, SavedForward::dim)` and
/// the inputs' dtype. `Ok(false)` when the plan reads no saved rows (they would be ignored).
pub fn check_saved_rows(
    saved: &SavedForward,
    forward: &Signature,
    size: ProblemSize,
    rows: &HostArray,
) -> Result<bool, VjpRunError> {
    match saved.dim(forward) {
        None => Ok(false),
        Some(dim) => {
            check_rows(forward, size, rows, dim, "saved forward").map_err(VjpRunError::Saved)?;
            Ok(true)
        }
    }
}

/// Runs a plan on the forward's arguments in order.
pub fn run_plan(
    plan: &VjpPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    backend: Backend,
) -> Result<HostArray, VjpRunError> {
    run_plan_with_saved(plan, arrays, cotangent, None, backend)
}

/// [`run_plan`] with the saved forward rows already computed (see [`saved_rows`]): for the
/// LogSumExp family, the forward output itself, so that the backward is one pass. `None`
/// computes them; a plan that reads none ignores them.
pub fn run_plan_with_saved(
    plan: &VjpPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    backend: Backend,
) -> Result<HostArray, VjpRunError> {
    let wrt = [plan.wrt];
    let outputs = wrt;
    let passes = Passes {
        forward: &plan.forward,
        wrt: &wrt,
        saved: &plan.saved,
        dense: plan.dense.iter().map(|k| (k, outputs.as_slice())).collect(),
        selected: plan.selected.as_ref(),
    };
    let mut runner = backend_runner(backend);
    let mut grads = run_passes(&passes, arrays, cotangent, saved, &mut runner)?;
    Ok(grads.remove(0))
}

/// The gradients of `sum(G * kernel(inputs))` with respect to each of `wrt` on named arrays,
/// in that order, from one [`plan_many`](super::plan_many) (two dense passes at most).
pub fn vjp_many(
    kernel: &CheckedKernel,
    wrt: &[&str],
    inputs: &[(String, HostArray)],
    cotangent: &HostArray,
    backend: Backend,
) -> Result<Vec<HostArray>, VjpRunError> {
    let plan = super::plan_many(kernel, wrt)?;
    let arrays = bind_arguments(kernel, inputs)?;
    run_many(&plan, &arrays, cotangent, None, backend)
}

/// Runs a plan for several inputs on the forward's arguments in order: one gradient per input
/// of `plan.wrt`, in that order. `saved`: the saved forward rows when already computed (see
/// [`saved_rows`]); ignored by a plan that reads none (Sum, Min, ...).
pub fn run_many(
    plan: &VjpManyPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    backend: Backend,
) -> Result<Vec<HostArray>, VjpRunError> {
    let mut runner = backend_runner(backend);
    run_many_with(plan, arrays, cotangent, saved, &mut runner)
}

/// Evaluates one kernel of a backward pass on its arguments in order.
pub type PassRunner<'r> =
    dyn FnMut(&CheckedKernel, &[&HostArray]) -> Result<HostArray, EvalError> + 'r;

/// [`run_many`] with the kernels evaluated by `runner` (e.g. kernels compiled once and run
/// many times, as `keopsc bench` does).
pub fn run_many_with(
    plan: &VjpManyPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    runner: &mut PassRunner,
) -> Result<Vec<HostArray>, VjpRunError> {
    let passes = Passes {
        forward: &plan.forward,
        wrt: &plan.wrt,
        saved: &plan.saved,
        dense: plan
            .dense
            .iter()
            .map(|p| (&p.kernel, p.outputs.as_slice()))
            .collect(),
        selected: plan.selected.as_ref(),
    };
    run_passes(&passes, arrays, cotangent, saved, runner)
}

/// The default runner: on the CPU backend, each backward kernel is compiled once per process
/// (the [`JitCache`](crate::jit_cache::JitCache)), not at every call.
fn backend_runner(
    backend: Backend,
) -> impl FnMut(&CheckedKernel, &[&HostArray]) -> Result<HostArray, EvalError> {
    move |kernel, arrays| evaluate_cached(kernel, arrays, backend)
}

/// The rows a dense backward pass reads from the forward ([`SavedForward`]), computed on the
/// forward's arguments: `None` when it reads none (Sum, Min, ...). For the LogSumExp family
/// these are the forward output; for SumSoftMaxWeight, `(out, L)` (its first columns are the
/// forward output), so a caller that needs the forward too can take it from here.
pub fn saved_rows(
    saved: &SavedForward,
    forward: &Signature,
    arrays: &[&HostArray],
    backend: Backend,
) -> Result<Option<HostArray>, VjpRunError> {
    let mut runner = backend_runner(backend);
    compute_saved(saved, forward, arrays, &mut runner)
}

fn compute_saved(
    saved: &SavedForward,
    forward: &Signature,
    arrays: &[&HostArray],
    runner: &mut PassRunner,
) -> Result<Option<HostArray>, VjpRunError> {
    Ok(match saved {
        SavedForward::None => None,
        SavedForward::Output { kernel } => Some(runner(kernel, arrays)?),
        SavedForward::SoftMax { kernel } => {
            let mss = runner(kernel, arrays)?;
            let dtype = mss.dtype();
            let wdim = forward.reduction.wdim;
            let rows = mss.to_f64();
            let out_rows = rows.len() / (wdim + 2);
            let mut saved = Vec::with_capacity(out_rows * (wdim + 1));
            for row in rows.chunks(wdim + 2) {
                let (m, s, sw) = (row[0], row[1], &row[2..]);
                saved.extend(sw.iter().map(|x| x / s));
                saved.push(m + s.ln());
            }
            Some(in_dtype(
                HostArray::from_f64(vec![out_rows, wdim + 1], saved),
                dtype,
            ))
        }
    })
}

/// A backward computation, borrowed from a [`VjpPlan`] or a [`VjpManyPlan`].
struct Passes<'p> {
    forward: &'p Signature,
    /// The inputs differentiated, by position: the order of the results.
    wrt: &'p [usize],
    saved: &'p SavedForward,
    /// Each dense kernel with the inputs whose gradients it concatenates.
    dense: Vec<(&'p CheckedKernel, &'p [usize])>,
    selected: Option<&'p SelectedBackward>,
}

fn run_passes(
    passes: &Passes,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    runner: &mut PassRunner,
) -> Result<Vec<HostArray>, VjpRunError> {
    let forward = passes.forward;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(forward, &views)?;
    check_rows(forward, size, cotangent, forward.output_dim(), "cotangent")
        .map_err(VjpRunError::Cotangent)?;
    let out_rows = match forward.axis {
        Axis::I => size.n,
        Axis::J => size.m,
    };
    let g = HostArray::from_f64(vec![out_rows, forward.output_dim()], cotangent.to_f64());
    let g = in_dtype(g, size.dtype);
    let rows_of = |category: Category| match category {
        Category::I => size.n,
        Category::J => size.m,
        Category::Param => 1,
    };
    let mut grads: Vec<Vec<f64>> = passes
        .wrt
        .iter()
        .map(|&w| {
            let spec = &forward.args[w];
            vec![0.0f64; rows_of(spec.category) * spec.dim]
        })
        .collect();
    let slot = |w: usize| {
        passes
            .wrt
            .iter()
            .position(|&x| x == w)
            .expect("every output of a pass is an input differentiated")
    };

    // The saved forward rows, when the dense part reads them: given, or computed here.
    let saved = match (passes.saved.dim(forward), saved) {
        (None, _) => None,
        (Some(dim), Some(given)) => {
            check_rows(forward, size, given, dim, "saved forward").map_err(VjpRunError::Saved)?;
            Some(in_dtype(
                HostArray::from_f64(vec![out_rows, dim], given.to_f64()),
                size.dtype,
            ))
        }
        (Some(_), None) => compute_saved(passes.saved, forward, arrays, runner)?,
    };

    for &(dense, outputs) in &passes.dense {
        let mut args: Vec<&HostArray> = arrays.to_vec();
        args.push(&g);
        if let Some(saved) = &saved {
            args.push(saved);
        }
        let rows = runner(dense, &args)?.to_f64();
        let width: usize = outputs.iter().map(|&w| forward.args[w].dim).sum();
        let mut offset = 0;
        for &w in outputs {
            let spec = &forward.args[w];
            add_rows(
                &mut grads[slot(w)],
                &rows,
                width,
                offset,
                spec.dim,
                spec.category,
            );
            offset += spec.dim;
        }
    }
    if let Some(selected) = passes.selected {
        let saved_rows = saved.as_ref().map(HostArray::to_f64);
        let mut targets: Vec<(usize, &mut Vec<f64>)> = Vec::new();
        let mut by_slot: Vec<Option<&mut Vec<f64>>> = grads.iter_mut().map(Some).collect();
        for &w in &selected.outputs {
            let grad = by_slot[slot(w)].take().expect("distinct inputs");
            targets.push((w, grad));
        }
        selected_part(
            forward,
            selected,
            arrays,
            &g.to_f64(),
            saved_rows.as_deref(),
            size,
            runner,
            &mut targets,
        )?;
    }
    Ok(passes
        .wrt
        .iter()
        .zip(grads)
        .map(|(&w, grad)| {
            in_dtype(
                HostArray::from_f64(arrays[w].shape.clone(), grad),
                size.dtype,
            )
        })
        .collect())
}

/// Checks an array of rows of the forward's output (the cotangent, the saved forward): shape
/// `(rows, dim)` (or `(rows,)` when `dim` is 1) and the inputs' dtype.
fn check_rows(
    forward: &Signature,
    size: ProblemSize,
    array: &HostArray,
    dim: usize,
    what: &str,
) -> Result<(), String> {
    let (rows, rows_name) = match forward.axis {
        Axis::I => (size.n, "N"),
        Axis::J => (size.m, "M"),
    };
    let fits = match array.shape.as_slice() {
        [r, c] => *r == rows && *c == dim,
        [r] => *r == rows && dim == 1,
        _ => false,
    };
    if !fits {
        let also = if dim == 1 {
            format!(" or ({rows},)")
        } else {
            String::new()
        };
        let expected = if what == "cotangent" {
            "the output's shape"
        } else {
            "shape"
        };
        return Err(format!(
            "has shape {}; expected {expected} ({rows}, {dim}){also} ({rows_name} = {rows})",
            keops_runtime::shape_text(&array.shape)
        ));
    }
    if array.dtype() != size.dtype {
        return Err(format!(
            "is {} but the inputs are {}: all arrays must share one dtype",
            array.dtype(),
            size.dtype
        ));
    }
    Ok(())
}

/// Adds columns `offset..offset + dim` of the backward kernel's rows (`width` wide) into the
/// gradient: row by row for a variable, all rows summed for a parameter (in f64).
fn add_rows(
    grad: &mut [f64],
    rows: &[f64],
    width: usize,
    offset: usize,
    dim: usize,
    category: Category,
) {
    for (r, row) in rows.chunks(width).enumerate() {
        let target = match category {
            Category::Param => 0,
            _ => r,
        };
        for (g, x) in grad[target * dim..(target + 1) * dim]
            .iter_mut()
            .zip(&row[offset..offset + dim])
        {
            *g += x;
        }
    }
}

/// The gradient through the selected entries: one gathered row per entry, the per-entry
/// kernel, and each result row's columns added into the row of each input it came from.
#[allow(clippy::too_many_arguments)]
fn selected_part(
    forward: &Signature,
    selected: &SelectedBackward,
    arrays: &[&HostArray],
    g: &[f64],
    saved: Option<&[f64]>,
    size: ProblemSize,
    runner: &mut PassRunner,
    targets: &mut [(usize, &mut Vec<f64>)],
) -> Result<(), VjpRunError> {
    let found = runner(&selected.indices, arrays)?;
    let found = found.to_f64();
    let (k, n) = (selected.k, selected.n);
    let width = 2 * k * n;
    let out_dim = forward.output_dim();
    let neutral = selected.indices.signature.reduction.kind.family().neutral();
    // One entry per (output row r, rank l, component c) that selected something.
    let mut entries: Vec<(usize, usize, usize, f64)> = Vec::new(); // (i, j, c, cotangent)
    for (r, row) in found.chunks(width).enumerate() {
        for l in 0..k {
            for c in 0..n {
                let value = row[l * n + c];
                // An output still at the neutral value (+-inf) selected nothing: no entry was
                // strictly better than it, so no gradient flows.
                if value == neutral || value.is_nan() {
                    continue;
                }
                let inner = row[k * n + l * n + c] as usize;
                let cot = match selected.cotangent {
                    SelectedCotangent::Values => g[r * out_dim + l * n + c],
                    SelectedCotangent::ShiftedMax => {
                        let saved = saved.expect("Max_SumShiftExp saves its output");
                        let sums = &saved[r * out_dim + 1..(r + 1) * out_dim];
                        let gs = &g[r * out_dim + 1..(r + 1) * out_dim];
                        g[r * out_dim] - gs.iter().zip(sums).map(|(a, b)| a * b).sum::<f64>()
                    }
                };
                if cot == 0.0 {
                    continue;
                }
                let (i, j) = match forward.axis {
                    Axis::I => (r, inner),
                    Axis::J => (inner, r),
                };
                entries.push((i, j, c, cot));
            }
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    // The gathered table: each i- or j-variable's row of each entry; parameters as they are.
    let mut table: Vec<HostArray> = Vec::with_capacity(arrays.len() + 1);
    for (spec, array) in forward.args.iter().zip(arrays) {
        let data = array.to_f64();
        let d = spec.dim;
        let gathered = match spec.category {
            Category::Param => {
                table.push((*array).clone());
                continue;
            }
            Category::I => entries
                .iter()
                .flat_map(|&(i, _, _, _)| data[i * d..(i + 1) * d].iter().copied())
                .collect(),
            Category::J => entries
                .iter()
                .flat_map(|&(_, j, _, _)| data[j * d..(j + 1) * d].iter().copied())
                .collect(),
        };
        table.push(in_dtype(
            HostArray::from_f64(vec![entries.len(), d], gathered),
            size.dtype,
        ));
    }
    let mut gsel = vec![0.0; entries.len() * n];
    for (e, &(_, _, c, cot)) in entries.iter().enumerate() {
        gsel[e * n + c] = cot;
    }
    table.push(in_dtype(
        HostArray::from_f64(vec![entries.len(), n], gsel),
        size.dtype,
    ));
    let bound: Vec<&HostArray> = table.iter().collect();
    let rows = runner(&selected.kernel, &bound)?.to_f64();
    let total: usize = targets.iter().map(|(w, _)| forward.args[*w].dim).sum();
    let mut offset = 0;
    for (w, grad) in targets.iter_mut() {
        let spec = &forward.args[*w];
        let d = spec.dim;
        for (e, &(i, j, _, _)) in entries.iter().enumerate() {
            let target = match spec.category {
                Category::I => i,
                Category::J => j,
                Category::Param => 0,
            };
            let row = &rows[e * total + offset..e * total + offset + d];
            for (g, r) in grad[target * d..(target + 1) * d].iter_mut().zip(row) {
                *g += r;
            }
        }
        offset += d;
    }
    Ok(())
}

/// An f64 array converted to `dtype` (exact for f64, rounded for f32).
fn in_dtype(array: HostArray, dtype: DType) -> HostArray {
    match dtype {
        DType::F64 => array,
        DType::F32 => {
            let data = array.to_f64().into_iter().map(|x| x as f32).collect();
            HostArray::from_f32(array.shape, data)
        }
    }
}
