//! Checked kernels compiled in this process as the runtime's [`Kernel`], the type modules
//! loaded from disk also give: plain ([`jit_kernel`]), with a symmetric pass
//! ([`jit_kernel_symmetric`]) or with stored gradients ([`jit_kernel_with_gradients`]).

use super::backend::EvalError;
use super::pipeline::{
    compile_cpu_cross_optimized, compile_cpu_optimized, on_one_stack, optimized,
};
use crate::check::CheckedKernel;
use crate::codegen::{CodegenError, JitCrossKernel, JitKernel};
use crate::opt::OptBudget;
use keops_runtime::{DType, Kernel};

/// Compiles a checked kernel in this process (no cache, no linker) for each of `dtypes`, as
/// the runtime's [`Kernel`], the type modules loaded from disk also give.
pub fn jit_kernel(kernel: &CheckedKernel, dtypes: &[DType]) -> Result<Kernel, EvalError> {
    // Optimised once, compiled for each dtype, on one compiler stack.
    let compiled: Vec<JitKernel> = on_one_stack(|| {
        let optimized = optimized(kernel, &OptBudget::default())?;
        dtypes
            .iter()
            .map(|&d| compile_cpu_optimized(&optimized, d))
            .collect()
    })?;
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
    let compiled: Vec<JitCrossKernel> = on_one_stack(|| {
        let cross = optimized(&plan.cross, &OptBudget::default())?;
        dtypes
            .iter()
            .map(|&d| compile_cpu_cross_optimized(&cross, plan.columns, d))
            .collect()
    })?;
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
