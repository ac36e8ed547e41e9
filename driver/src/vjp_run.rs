//! Running a [`VjpPlan`] on host arrays: the backward kernels on any backend, through the
//! runtime's [`keops_runtime::backward`], which finds the saved forward and the selected
//! entries and combines the kernels' rows (sums in f64); modules built with `--grad` run the
//! same code with their stored kernels.

use crate::check::CheckedKernel;
use crate::driver::backend::{Backend, EvalError};
use crate::driver::evaluate::{bind_arguments, evaluate, EvalOptions};
use crate::jit_cache::JitCache;
use crate::vjp::{CrossPass, SavedForward, SelectedBackward, VjpError, VjpManyPlan, VjpPlan};
use keops_runtime::backward::{self as combine, BackwardError, Passes};
use keops_runtime::{ArgumentError, HostArray, ProblemSize, Signature};

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
    let plan = crate::vjp::plan(kernel, wrt)?;
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
    combine::check_rows(forward, size, cotangent, forward.output_dim(), "cotangent")
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
            combine::check_rows(forward, size, rows, dim, "saved forward")
                .map_err(VjpRunError::Saved)?;
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
    let passes = Passes {
        forward: &plan.forward,
        wrt: &wrt,
        saved: plan.saved.as_saved(),
        dense: plan.dense.iter().map(|k| (k, &wrt[..])).collect(),
        selected: plan.selected.as_ref().map(SelectedBackward::as_pass),
    };
    let mut runner = backend_runner(backend);
    let mut grads = run_passes(&passes, arrays, cotangent, saved, &mut runner)?;
    Ok(grads.remove(0))
}

/// The gradients of `sum(G * kernel(inputs))` with respect to each of `wrt` on named arrays,
/// in that order, from one [`plan_many`](crate::vjp::plan_many) (two dense passes at most).
pub fn vjp_many(
    kernel: &CheckedKernel,
    wrt: &[&str],
    inputs: &[(String, HostArray)],
    cotangent: &HostArray,
    backend: Backend,
) -> Result<Vec<HostArray>, VjpRunError> {
    let plan = crate::vjp::plan_many(kernel, wrt)?;
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
    match (&plan.cross, backend) {
        (Some(cross), Backend::Cpu) => {
            let mut crossed = CrossRunner {
                plan,
                cross,
                pending: None,
                other: &mut runner,
            };
            run_many_with(plan, arrays, cotangent, saved, &mut |kernel, args| {
                crossed.run(kernel, args)
            })
        }
        _ => run_many_with(plan, arrays, cotangent, saved, &mut runner),
    }
}

/// [`run_many`] over the pairs `ranges` keeps (block-sparse, KeOps's 6-tuple; CPU): each pass
/// reads the half of `ranges` for its axis (the forward's for inputs indexed like the output,
/// the other for those indexed like the reduced index), the saved forward and the search of
/// selected entries the forward's half; the selected entries' own kernel runs on them alone.
/// The gradients are those of the block-sparse forward.
pub fn run_many_ranges(
    plan: &VjpManyPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    ranges: &keops_runtime::RangesPair,
) -> Result<Vec<HostArray>, VjpRunError> {
    run_many_ranges_on(plan, arrays, cotangent, saved, ranges, Backend::Cpu)
}

/// [`run_many_ranges`] on `backend`: `cpu`, or `cuda`, where every pass runs as the
/// block-sparse GPU kernel (`driver::evaluate` with `Pairs::Ranges`). The interpreter has no
/// block-sparse evaluation.
pub fn run_many_ranges_on(
    plan: &VjpManyPlan,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    ranges: &keops_runtime::RangesPair,
    backend: Backend,
) -> Result<Vec<HostArray>, VjpRunError> {
    if backend == Backend::Interp {
        return Err(EvalError::Ranges(
            "the gradients of block-sparse reductions run on the cpu or cuda backend, not interp"
                .into(),
        )
        .into());
    }
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = keops_runtime::check_arguments(&plan.forward, &views)?;
    ranges
        .check(size.n, size.m)
        .map_err(|e| EvalError::Ranges(format!("ranges: {e}")))?;
    let entries = plan.selected.as_ref().map(|s| &s.kernel);
    run_many_with(plan, arrays, cotangent, saved, &mut |kernel, args| {
        let options = EvalOptions::on(backend);
        if entries.is_some_and(|k| std::ptr::eq(k, kernel)) {
            return Ok(evaluate(kernel, args, options)?.output);
        }
        let half = ranges.for_axis(kernel.signature.axis);
        Ok(evaluate(kernel, args, options.ranges(half))?.output)
    })
}

/// Runs a plan's two dense passes as its cross pass: asked for either dense kernel (both take
/// the same arguments), it runs the cross pass once and gives each its part; other kernels go
/// to `other`.
struct CrossRunner<'p, 'r> {
    plan: &'p VjpManyPlan,
    cross: &'p CrossPass,
    /// The part of the pass not asked for yet: (dense pass index, its rows).
    pending: Option<(usize, HostArray)>,
    other: &'r mut PassRunner<'r>,
}

impl CrossRunner<'_, '_> {
    fn run(&mut self, kernel: &CheckedKernel, args: &[&HostArray]) -> Result<HostArray, EvalError> {
        let pass = self
            .plan
            .dense
            .iter()
            .position(|p| std::ptr::eq(&p.kernel, kernel));
        let Some(pass) = pass else {
            return (self.other)(kernel, args);
        };
        if let Some((waiting, _)) = &self.pending {
            if *waiting == pass {
                return Ok(self.pending.take().expect("checked above").1);
            }
        }
        let (rows, columns) = run_cross_pass(&self.cross.kernel, self.cross.columns, args)?;
        if pass == self.cross.rows_pass {
            self.pending = Some((self.cross.columns_pass, columns));
            Ok(rows)
        } else {
            self.pending = Some((self.cross.rows_pass, rows));
            Ok(columns)
        }
    }
}

/// Runs a cross pass on the CPU with its code from the process-wide [`JitCache`]: `kernel`'s
/// rows (its first components summed over the inner index) and columns (its last `columns`
/// components summed over the rows).
fn run_cross_pass(
    kernel: &CheckedKernel,
    columns: usize,
    arrays: &[&HostArray],
) -> Result<(HostArray, HostArray), EvalError> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = keops_runtime::check_arguments(&kernel.signature, &views)?;
    let (compiled, _) = JitCache::global().get_cross(kernel, columns, size.dtype)?;
    Ok(keops_runtime::run_cross_tiles(
        &compiled.tile_kernel(),
        &views,
        None,
    )?)
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
        saved: plan.saved.as_saved(),
        dense: plan
            .dense
            .iter()
            .map(|p| (&p.kernel, p.outputs.as_slice()))
            .collect(),
        selected: plan.selected.as_ref().map(SelectedBackward::as_pass),
    };
    run_passes(&passes, arrays, cotangent, saved, runner)
}

/// The default runner: on the CPU backend, each backward kernel is compiled once per process
/// (the [`JitCache`](crate::jit_cache::JitCache)), not at every call.
fn backend_runner(
    backend: Backend,
) -> impl FnMut(&CheckedKernel, &[&HostArray]) -> Result<HostArray, EvalError> {
    move |kernel, arrays| Ok(evaluate(kernel, arrays, backend)?.output)
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
    Ok(combine::compute_saved(
        saved.as_saved(),
        forward,
        arrays,
        &mut runner,
    )?)
}

/// Runs the passes with the runtime's combination, its errors as the compiler's.
fn run_passes(
    passes: &Passes<'_, CheckedKernel>,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    runner: &mut PassRunner,
) -> Result<Vec<HostArray>, VjpRunError> {
    combine::run_passes(passes, arrays, cotangent, saved, runner).map_err(|e| match e {
        BackwardError::Argument(e) => VjpRunError::Argument(e),
        BackwardError::Cotangent(text) => VjpRunError::Cotangent(text),
        BackwardError::Saved(text) => VjpRunError::Saved(text),
        BackwardError::Pass(e) => VjpRunError::Eval(e),
    })
}
