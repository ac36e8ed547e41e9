//! Checked kernels compiled anew in this process as the runtime's [`Kernel`], the type
//! modules loaded from disk also give: plain ([`jit_kernel`]) or the pass over unordered pairs
//! ([`jit_symmetric`]), for those who time or own a compilation (the benchmarks). Programs
//! use [`Jit`](crate::jit::Jit), which takes code from the process's cache and has the options
//! (gradients, a cloud against itself); both assemble the runtime's types with
//! `runtime_kernel` and `symmetric_pass`.

use super::backend::EvalError;
use super::pipeline::{
    compile_cpu_cross_optimized, compile_cpu_optimized, on_one_stack, optimized,
};
use crate::check::CheckedKernel;
use crate::codegen::{JitCrossKernel, JitKernel};
use crate::opt::OptBudget;
use crate::symmetric::SymmetricPlan;
use keops_runtime::{DType, Kernel, Signature, SymmetricPass};
use std::sync::Arc;

/// Compiles a checked kernel in this process (anew: no cache, no linker) for each of
/// `dtypes`, as the runtime's [`Kernel`].
pub fn jit_kernel(kernel: &CheckedKernel, dtypes: &[DType]) -> Result<Kernel, EvalError> {
    // Optimised once, compiled for each dtype, on one compiler stack.
    let compiled: Vec<Arc<JitKernel>> = on_one_stack(|| {
        let optimized = optimized(kernel, &OptBudget::default())?;
        dtypes
            .iter()
            .map(|&d| Ok(Arc::new(compile_cpu_optimized(&optimized, d)?)))
            .collect()
    })?;
    Ok(runtime_kernel(&kernel.signature, compiled))
}

/// The symmetric pass of `kernel` ([`crate::symmetric`]) compiled anew in this process for
/// each of `dtypes`, where each `(j, i)` of `same` (argument positions) says that the
/// j-variable `j` will hold the data of the i-variable `i`. A kernel carrying it
/// ([`Kernel::with_symmetric`]) walks each unordered pair once when its inputs pair up so
/// ([`Kernel::call_symmetric`], and the linear operators built on it). A kernel that cannot be
/// evaluated so (not a `Sum`, no pair), or whose halves share too little for it to pay
/// ([`crate::symmetric::plan_if_it_pays`]), is refused with the reason
/// ([`EvalError::NotSymmetric`]): the caller then evaluates it in full.
pub fn jit_symmetric(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
    dtypes: &[DType],
) -> Result<SymmetricPass, EvalError> {
    let plan = crate::symmetric::plan_if_it_pays(kernel, same)?;
    let compiled: Vec<Arc<JitCrossKernel>> = on_one_stack(|| {
        let cross = optimized(&plan.cross, &OptBudget::default())?;
        dtypes
            .iter()
            .map(|&d| {
                Ok(Arc::new(compile_cpu_cross_optimized(
                    &cross,
                    plan.columns,
                    d,
                )?))
            })
            .collect()
    })?;
    Ok(symmetric_pass(plan, same, compiled))
}

/// The runtime's [`Kernel`] of `signature` over its tile functions, one per dtype.
pub(crate) fn runtime_kernel(signature: &Signature, compiled: Vec<Arc<JitKernel>>) -> Kernel {
    let entries = compiled
        .iter()
        .map(|j| {
            let t = j.tile_kernel();
            (t.dtype(), t.tile(), t.lanes())
        })
        .collect();
    let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(compiled);
    // SAFETY: the callers compiled the tile functions for this signature; they live as long
    // as `owner`, which holds their JIT engines.
    unsafe { Kernel::from_parts(signature.clone(), entries, owner) }
}

/// The runtime's [`SymmetricPass`] of `plan` over its cross tile functions (compiled from
/// `plan.cross` with `plan.columns` columns), one per dtype.
pub(crate) fn symmetric_pass(
    plan: SymmetricPlan,
    same: &[(usize, usize)],
    compiled: Vec<Arc<JitCrossKernel>>,
) -> SymmetricPass {
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
    let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::new(compiled);
    // SAFETY: each cross tile function was compiled from the plan's `Concat(F, F swapped)` for
    // this row signature and `plan.columns` columns (the callers' contract), and lives as
    // long as `owner`.
    unsafe { SymmetricPass::from_parts(signature, plan.sources, same.to_vec(), entries, owner) }
}
