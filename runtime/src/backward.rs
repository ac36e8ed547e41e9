//! Running the backward pass of a whole reduction (the vjp `d/dv sum(G * out)`), once its
//! kernels exist: the saved forward, the dense passes and the selected entries, and the
//! combination of their rows (sums in f64, a scatter-add for the selected entries). The
//! compiler builds the plans (`keopsc::vjp`) and runs them through here with kernels it
//! compiles; a module built with `keopsc build --grad` stores them, and [`Kernel::vjp`]
//! runs them with the module's kernels alone, without the compiler or LLVM.
//!
//! Everything here is generic over `K`, the handle of a kernel, and runs each kernel through
//! a [`Runner`].
//!
//! [`Kernel::vjp`]: crate::Kernel::vjp

use crate::abi::{Axis, Category, Signature};
use crate::arrays::{check_arguments, shape_text, ArgumentError, DType, HostArray, ProblemSize};

/// Runs one kernel of a backward pass on its arguments in order.
pub type Runner<'r, K, E> = dyn FnMut(&K, &[&HostArray]) -> Result<HostArray, E> + 'r;

/// What the dense passes read from the forward, one row per output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved<K> {
    /// Nothing (Sum, and the reductions with selected entries only).
    None,
    /// The forward output row itself (LogSumExp, LogSumExpWeight, Max_SumShiftExp and
    /// Max_SumShiftExpWeight), computed by `K`, the forward kernel.
    Output(K),
    /// SumSoftMaxWeight's `(out, L)` with `L = m + log s`, from one pass of `K`, a
    /// Max_SumShiftExpWeight of `F` weighted by `(1, V)` whose output row is `(m, s, sw)`:
    /// `out = sw / s`.
    SoftMax(K),
}

impl<K> Saved<K> {
    /// The width of the saved rows (one per output row), if any: the forward output's own
    /// width, or `wdim + 1` for SumSoftMaxWeight's `(out, L)`.
    pub fn dim(&self, forward: &Signature) -> Option<usize> {
        match self {
            Saved::None => None,
            Saved::Output(_) => Some(forward.output_dim()),
            Saved::SoftMax(_) => Some(forward.reduction.wdim + 1),
        }
    }

    pub fn as_ref(&self) -> Saved<&K> {
        match self {
            Saved::None => Saved::None,
            Saved::Output(k) => Saved::Output(k),
            Saved::SoftMax(k) => Saved::SoftMax(k),
        }
    }
}

/// Which cotangent each selected entry receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectedCotangent {
    /// `G[r, l n + c]`: the cotangent of the value part (rank-major, as the forward output).
    Values,
    /// Max_SumShiftExp(Weight), entry of the maximum: `G_m - <G_s, s>` with `s` the saved
    /// sums, since `m` moves every shifted term `exp(F - m)`.
    ShiftedMax,
}

impl SelectedCotangent {
    pub fn name(self) -> &'static str {
        match self {
            SelectedCotangent::Values => "values",
            SelectedCotangent::ShiftedMax => "shifted-max",
        }
    }

    pub fn from_name(name: &str) -> Option<SelectedCotangent> {
        match name {
            "values" => Some(SelectedCotangent::Values),
            "shifted-max" => Some(SelectedCotangent::ShiftedMax),
            _ => None,
        }
    }
}

/// The selected-entries part of a backward pass.
#[derive(Clone, Copy, Debug)]
pub struct SelectedPass<'p, K> {
    /// A forward pass returning the selected entries' values and indices (Min_ArgMin,
    /// Max_ArgMax or KMin_ArgKMin of the value part of `F`): values `K n`, then indices `K n`.
    pub indices: &'p K,
    /// `Grad(F, v, g)` on a table of one row per selected entry: the forward's arguments (i-
    /// and j-variables gathered at the entry's i and j, parameters as they are), then `g`.
    pub kernel: &'p K,
    pub k: usize,
    /// The dimension of the reduced values.
    pub n: usize,
    pub cotangent: SelectedCotangent,
    /// The inputs whose gradients `kernel` computes, its columns concatenated in this order.
    pub outputs: &'p [usize],
}

/// A whole backward computation, borrowed from a plan.
#[derive(Clone, Debug)]
pub struct Passes<'p, K> {
    pub forward: &'p Signature,
    /// The inputs differentiated, by position: the order of the results.
    pub wrt: &'p [usize],
    pub saved: Saved<&'p K>,
    /// Each dense kernel (arguments: the forward's, `G`, then the saved rows if any) with the
    /// inputs whose gradients it concatenates.
    pub dense: Vec<(&'p K, &'p [usize])>,
    pub selected: Option<SelectedPass<'p, K>>,
}

/// Why a backward computation failed. `E`: the runner's error.
#[derive(Debug, Clone, PartialEq)]
pub enum BackwardError<E> {
    Argument(ArgumentError),
    /// The cotangent does not fit the output: the text says how.
    Cotangent(String),
    /// The saved forward rows given do not fit: the text says how.
    Saved(String),
    /// A kernel of the pass failed.
    Pass(E),
}

/// The saved forward rows of `saved`, computed on the forward's arguments (`None` when the
/// dense passes read none).
pub fn compute_saved<K, E>(
    saved: Saved<&K>,
    forward: &Signature,
    arrays: &[&HostArray],
    runner: &mut Runner<'_, K, E>,
) -> Result<Option<HostArray>, E> {
    Ok(match saved {
        Saved::None => None,
        Saved::Output(kernel) => Some(runner(kernel, arrays)?),
        Saved::SoftMax(kernel) => {
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

/// Runs a backward computation on the forward's arguments in order: one gradient per input of
/// `passes.wrt`, in that order, each in the shape of the array passed for it and the inputs'
/// dtype. `saved`: the saved forward rows when already computed (checked against
/// [`Saved::dim`]); ignored when the passes read none.
pub fn run_passes<K, E>(
    passes: &Passes<'_, K>,
    arrays: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
    runner: &mut Runner<'_, K, E>,
) -> Result<Vec<HostArray>, BackwardError<E>> {
    let forward = passes.forward;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let size = check_arguments(forward, &views).map_err(BackwardError::Argument)?;
    check_rows(forward, size, cotangent, forward.output_dim(), "cotangent")
        .map_err(BackwardError::Cotangent)?;
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
            check_rows(forward, size, given, dim, "saved forward").map_err(BackwardError::Saved)?;
            Some(in_dtype(
                HostArray::from_f64(vec![out_rows, dim], given.to_f64()),
                size.dtype,
            ))
        }
        (Some(_), None) => {
            compute_saved(passes.saved, forward, arrays, runner).map_err(BackwardError::Pass)?
        }
    };

    for &(dense, outputs) in &passes.dense {
        let mut args: Vec<&HostArray> = arrays.to_vec();
        args.push(&g);
        if let Some(saved) = &saved {
            args.push(saved);
        }
        let rows = runner(dense, &args).map_err(BackwardError::Pass)?.to_f64();
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
    if let Some(selected) = &passes.selected {
        let saved_rows = saved.as_ref().map(HostArray::to_f64);
        let mut targets: Vec<(usize, &mut Vec<f64>)> = Vec::new();
        let mut by_slot: Vec<Option<&mut Vec<f64>>> = grads.iter_mut().map(Some).collect();
        for &w in selected.outputs {
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
        )
        .map_err(BackwardError::Pass)?;
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
/// `(rows, dim)` (or `(rows,)` when `dim` is 1) and the inputs' dtype. `what` names it.
pub fn check_rows(
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
            shape_text(&array.shape)
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
fn selected_part<K, E>(
    forward: &Signature,
    selected: &SelectedPass<'_, K>,
    arrays: &[&HostArray],
    g: &[f64],
    saved: Option<&[f64]>,
    size: ProblemSize,
    runner: &mut Runner<'_, K, E>,
    targets: &mut [(usize, &mut Vec<f64>)],
) -> Result<(), E> {
    let found = runner(selected.indices, arrays)?;
    let found = found.to_f64();
    let (k, n) = (selected.k, selected.n);
    let width = 2 * k * n;
    let out_dim = forward.output_dim();
    // The neutral value of the forward's family is that of the pass finding the entries
    // (+inf for Min and KMin, -inf for Max and Max_SumShiftExp).
    let neutral = forward.reduction.kind.family().neutral();
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
                    SelectedCotangent::ShiftedMax => match saved {
                        Some(saved) => {
                            let sums = &saved[r * out_dim + 1..(r + 1) * out_dim];
                            let gs = &g[r * out_dim + 1..(r + 1) * out_dim];
                            g[r * out_dim] - gs.iter().zip(sums).map(|(a, b)| a * b).sum::<f64>()
                        }
                        // A plan without saved rows has no shifted maximum (checked when
                        // the plan is made or loaded).
                        None => continue,
                    },
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
    let rows = runner(selected.kernel, &bound)?.to_f64();
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
