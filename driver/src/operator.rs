//! Kernels as linear operators, the compiler's part (the algorithms are the runtime's,
//! `keops_runtime::linalg`): finding the argument a kernel multiplies, compiling it so that a
//! cloud against itself walks each pair once, and refusing a kernel that is not linear in
//! its operand, which would make every result wrong without an error. `keopsc linalg` and the
//! REPL's `:power` share it.

use crate::check::CheckedKernel;
use crate::jit::{Jit, JitError};
use keops_runtime::linalg::{KernelOperator, LinearOperator};
use keops_runtime::{ArrayData, Axis, Category, DType, HostArray, Kernel};

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

/// Refuses a kernel that is not linear in `operand`: on a sample of at most 32 rows of each
/// index, `f(b1 + 2.5 b2)` must be `f(b1) + 2.5 f(b2)` (which an affine or nonlinear formula
/// fails) and output column c must not move when another column of b does. `inputs`: every
/// argument but the operand, by name.
pub fn probe_linearity(
    checked: &CheckedKernel,
    kernel: &Kernel,
    operand: &str,
    inputs: &[(String, HostArray)],
) -> Result<(), String> {
    const SAMPLE: usize = 32;
    let sample: Vec<(String, HostArray)> = inputs
        .iter()
        .map(|(name, array)| {
            let category = checked
                .signature
                .args
                .iter()
                .find(|a| &a.name == name)
                .map(|a| a.category);
            let array = match category {
                Some(Category::I | Category::J) if array.shape.first() > Some(&SAMPLE) => {
                    first_rows(array, SAMPLE)
                }
                _ => array.clone(),
            };
            (name.clone(), array)
        })
        .collect();
    let op = KernelOperator::new(kernel.clone(), operand, sample).map_err(|e| e.to_string())?;
    let (m, r) = (op.cols(), op.width());
    let wave = |phase: f64| -> Vec<f64> {
        (0..m * r)
            .map(|k| (k as f64 * 0.7548 + phase).sin())
            .collect()
    };
    let (b1, b2) = (wave(0.3), wave(1.9));
    let combined: Vec<f64> = b1.iter().zip(&b2).map(|(a, b)| a + 2.5 * b).collect();
    let run = |b: &[f64]| op.apply(b, r).map_err(|e| e.to_string());
    let (f1, f2, f12) = (run(&b1)?, run(&b2)?, run(&combined)?);
    let tol = if op.dtype() == DType::F32 { 1e-3 } else { 1e-9 };
    let scale = f1
        .iter()
        .chain(&f2)
        .fold(0.0f64, |a, &b| a.max(b.abs()))
        .max(f64::MIN_POSITIVE);
    let not_linear = f1
        .iter()
        .zip(&f2)
        .zip(&f12)
        .any(|((a, b), c)| (a + 2.5 * b - c).abs() > tol * 3.5 * scale);
    let mut moved = false;
    if r > 1 {
        let mut shifted = b1.clone();
        (0..m).for_each(|row| shifted[row * r] += 1.0);
        let g = run(&shifted)?;
        moved = (0..f1.len())
            .filter(|k| k % r != 0)
            .any(|k| (g[k] - f1[k]).abs() > tol * scale);
    }
    if not_linear || moved {
        return Err(format!(
            "kernel `{}` is not a linear operator on `{operand}`: {}; the formula must be `K(...) * {operand}` with K not depending on `{operand}`",
            checked.name,
            if not_linear {
                format!("its output is not linear in `{operand}`")
            } else {
                format!("output column c depends on other columns of `{operand}`")
            }
        ));
    }
    Ok(())
}

fn first_rows(array: &HostArray, rows: usize) -> HostArray {
    let width: usize = array.shape[1..].iter().product();
    let mut shape = array.shape.clone();
    shape[0] = rows;
    let data = match &array.data {
        ArrayData::F32(v) => ArrayData::F32(v[..rows * width].to_vec()),
        ArrayData::F64(v) => ArrayData::F64(v[..rows * width].to_vec()),
    };
    HostArray { shape, data }
}
