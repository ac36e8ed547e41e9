//! Running a [`VjpPlan`] on host arrays: the saved forward and selected-entry passes, the
//! backward kernels on any backend, and the combination of their rows (sums in f64).

use super::{SavedForward, SelectedBackward, SelectedCotangent, VjpError, VjpPlan};
use crate::check::CheckedKernel;
use crate::driver::{bind_arguments, evaluate_bound, Backend, EvalError};
use keops_runtime::{
    check_arguments, ArgumentError, Axis, Category, DType, HostArray, ProblemSize,
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
    let (rows, rows_name) = match plan.forward.axis {
        Axis::I => (size.n, "N"),
        Axis::J => (size.m, "M"),
    };
    let d = plan.forward.output_dim();
    let fits = match cotangent.shape.as_slice() {
        [r, c] => *r == rows && *c == d,
        [r] => *r == rows && d == 1,
        _ => false,
    };
    if !fits {
        let also = if d == 1 {
            format!(" or ({rows},)")
        } else {
            String::new()
        };
        return Err(VjpRunError::Cotangent(format!(
            "has shape {}; expected the output's shape ({rows}, {d}){also} ({rows_name} = {rows})",
            shape_text(&cotangent.shape)
        )));
    }
    if cotangent.dtype() != size.dtype {
        return Err(VjpRunError::Cotangent(format!(
            "is {} but the inputs are {}: all arrays must share one dtype",
            cotangent.dtype(),
            size.dtype
        )));
    }
    Ok(())
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
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
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(&plan.forward, &views)?;
    check_cotangent(plan, size, cotangent)?;
    let wrt = plan.wrt_spec();
    let out_rows = match plan.forward.axis {
        Axis::I => size.n,
        Axis::J => size.m,
    };
    let g = HostArray::from_f64(
        vec![out_rows, plan.forward.output_dim()],
        cotangent.to_f64(),
    );
    let g = in_dtype(g, size.dtype);
    let wrt_rows = match wrt.category {
        Category::I => size.n,
        Category::J => size.m,
        Category::Param => 1,
    };
    let mut grad = vec![0.0f64; wrt_rows * wrt.dim];

    // The saved forward rows, when the dense part reads them.
    let saved = match &plan.saved {
        SavedForward::None => None,
        SavedForward::Output { kernel } => Some(evaluate_bound(kernel, arrays, backend)?.0),
        SavedForward::SoftMax { kernel } => {
            let (mss, _) = evaluate_bound(kernel, arrays, backend)?;
            let wdim = plan.forward.reduction.wdim;
            let rows = mss.to_f64();
            let mut saved = Vec::with_capacity(out_rows * (wdim + 1));
            for row in rows.chunks(wdim + 2) {
                let (m, s, sw) = (row[0], row[1], &row[2..]);
                saved.extend(sw.iter().map(|x| x / s));
                saved.push(m + s.ln());
            }
            Some(in_dtype(
                HostArray::from_f64(vec![out_rows, wdim + 1], saved),
                size.dtype,
            ))
        }
    };

    if let Some(dense) = &plan.dense {
        let mut args: Vec<&HostArray> = arrays.to_vec();
        args.push(&g);
        if let Some(saved) = &saved {
            args.push(saved);
        }
        let (rows, _) = evaluate_bound(dense, &args, backend)?;
        add_rows(&mut grad, &rows.to_f64(), wrt.dim, wrt.category);
    }
    if let Some(selected) = &plan.selected {
        let saved_rows = saved.as_ref().map(HostArray::to_f64);
        selected_part(
            plan,
            selected,
            arrays,
            &g.to_f64(),
            saved_rows.as_deref(),
            size,
            backend,
            &mut grad,
        )?;
    }
    let shape = arrays[plan.wrt].shape.clone();
    Ok(in_dtype(HostArray::from_f64(shape, grad), size.dtype))
}

/// Adds the backward kernel's rows into the gradient: row by row for a variable, all rows
/// summed for a parameter (in f64).
fn add_rows(grad: &mut [f64], rows: &[f64], dim: usize, category: Category) {
    match category {
        Category::Param => {
            for row in rows.chunks(dim) {
                for (g, r) in grad.iter_mut().zip(row) {
                    *g += r;
                }
            }
        }
        _ => {
            for (g, r) in grad.iter_mut().zip(rows) {
                *g += r;
            }
        }
    }
}

/// The gradient through the selected entries: one gathered row per entry, the per-entry
/// kernel, and each result row added into the row of the variable it came from.
#[allow(clippy::too_many_arguments)]
fn selected_part(
    plan: &VjpPlan,
    selected: &SelectedBackward,
    arrays: &[&HostArray],
    g: &[f64],
    saved: Option<&[f64]>,
    size: ProblemSize,
    backend: Backend,
    grad: &mut [f64],
) -> Result<(), VjpRunError> {
    let (found, _) = evaluate_bound(&selected.indices, arrays, backend)?;
    let found = found.to_f64();
    let (k, n) = (selected.k, selected.n);
    let width = 2 * k * n;
    let out_dim = plan.forward.output_dim();
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
                let (i, j) = match plan.forward.axis {
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
    for (spec, array) in plan.forward.args.iter().zip(arrays) {
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
    let (rows, _) = evaluate_bound(&selected.kernel, &bound, backend)?;
    let rows = rows.to_f64();
    let wrt = plan.wrt_spec();
    let d = wrt.dim;
    for (e, &(i, j, _, _)) in entries.iter().enumerate() {
        let target = match wrt.category {
            Category::I => i,
            Category::J => j,
            Category::Param => 0,
        };
        for (g, r) in grad[target * d..(target + 1) * d]
            .iter_mut()
            .zip(&rows[e * d..(e + 1) * d])
        {
            *g += r;
        }
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
