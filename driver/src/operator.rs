//! Kernels as linear operators, the compiler's part (the algorithms, and the probe that refuses
//! a kernel not linear in its operand, are the runtime's, `keops_runtime::linalg`): finding the
//! argument a kernel multiplies, and compiling it so that a cloud against itself walks each
//! pair once. `keopsc linalg` and the REPL's `:power` share it.

use crate::check::CheckedKernel;
use crate::jit::{Jit, JitError};
use keops_runtime::{Axis, Category, DType, Kernel};

/// The operand of `kernel` when the caller did not name one: the one argument of the reduced
/// index with the output's dimension that `given` says is not given.
pub fn find_operand(
    kernel: &CheckedKernel,
    given: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let sig = &kernel.signature;
    let reduced = match sig.axis {
        Axis::I => Category::J,
        Axis::J => Category::I,
    };
    let candidates: Vec<&str> = sig
        .args
        .iter()
        .filter(|a| a.category == reduced && a.dim == sig.output_dim() && !given(&a.name))
        .map(|a| a.name.as_str())
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(format!(
            "name the argument the operator multiplies (a {reduced} variable of the output's dimension {} not given{})",
            sig.output_dim(),
            if candidates.is_empty() {
                String::new()
            } else {
                format!("; candidates: {}", candidates.join(", "))
            }
        )),
    }
}

/// `kernel` compiled for `dtype` (through the process's cache), carrying its symmetric pass
/// when `same` pairs arguments and the kernel can have one (then products on one cloud walk
/// each pair once).
pub fn compile_operator_kernel(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
    dtype: DType,
) -> Result<Kernel, JitError> {
    let args = &kernel.signature.args;
    same.iter()
        .fold(Jit::new().dtypes(&[dtype]), |jit, &(j, i)| {
            jit.same(&args[j].name, &args[i].name)
        })
        .compile_checked(kernel)
}
