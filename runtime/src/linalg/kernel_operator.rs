//! A compiled kernel seen as a linear operator on one of its arguments.

use super::operator::check_operand;
use super::{LinalgError, LinearOperator};
use crate::abi::{Axis, Category, Signature};
use crate::arrays::{check_arguments, ArgumentError, ArrayData, ArrayRef, DType, HostArray};
use crate::module::Kernel;
use crate::reduction::ReductionKind;
use rayon::prelude::*;

/// A kernel `Sum_Reduction(F, axis)` whose formula is linear in one argument, the *operand*
/// `b` (`F = K(x_i, y_j) * b_j`), seen as the matrix `K` acting on `b`; every other argument is
/// fixed when the operator is made. The operand is indexed by the reduced index (a j-variable
/// for axis 0, an i-variable for axis 1) and its dimension `R` is the output's: output column
/// `c` is `K` times operand column `c`. A product of `ncols` columns takes `ceil(ncols / R)`
/// passes of the kernel, the last one padded with zeros: compile the kernel with `R` equal to
/// the number of right-hand sides to do them all in one pass.
///
/// The runtime cannot see the formula: [`KernelOperator::new`] probes linearity on a sample of
/// the points (at most [`LINEARITY_SAMPLE`] rows of each index: `f(b1 + 2.5 b2) = f(b1) + 2.5
/// f(b2)`, and output column `c` unmoved when another column of `b` moves), so that an affine or
/// nonlinear formula (`b * b + 1`) is refused there rather than found out by an algorithm
/// (conjugate gradients then report a matrix that is not positive definite).
/// [`KernelOperator::assuming_linear`] skips the probe. Products are computed in the dtype the
/// inputs were given in (accumulated in f64 by the kernel) and returned in f64.
pub struct KernelOperator {
    kernel: Kernel,
    dtype: DType,
    /// The fixed inputs in argument order; `None` at the operand.
    inputs: Vec<Option<HostArray>>,
    operand: usize,
    width: usize,
    rows: usize,
    cols: usize,
    /// Whether products walk each unordered pair once (the kernel carries a symmetric pass
    /// and the fixed inputs pair up as it needs).
    pairs_once: bool,
}

impl std::fmt::Debug for KernelOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KernelOperator({} x {} on `{}` of width {}, {}{})",
            self.rows,
            self.cols,
            self.operand_name(),
            self.width,
            self.dtype,
            if self.pairs_once {
                ", each unordered pair once"
            } else {
                ""
            }
        )
    }
}

impl KernelOperator {
    /// The operator of `kernel` on its argument `operand`, every other argument given in
    /// `inputs` by name. Says what is wrong when the kernel cannot be one (its reduction, the
    /// operand's category or dimension) or an input does not fit its signature.
    pub fn new(
        kernel: Kernel,
        operand: &str,
        inputs: Vec<(String, HostArray)>,
    ) -> Result<KernelOperator, LinalgError> {
        // Every input checked in full first, so that the sample is cut from data that fits.
        let operator = KernelOperator::assuming_linear(kernel, operand, inputs)?;
        // The probe's sample: the first rows of each i- and j-variable, parameters whole.
        let sig = operator.kernel.signature();
        let sample: Vec<(String, HostArray)> = operator
            .inputs
            .iter()
            .zip(&sig.args)
            .filter_map(|(slot, spec)| {
                let array = slot.as_ref()?;
                Some(match spec.category {
                    Category::Param => (spec.name.clone(), array.clone()),
                    _ => (spec.name.clone(), first_rows(array, LINEARITY_SAMPLE)),
                })
            })
            .collect();
        KernelOperator::assuming_linear(operator.kernel.clone(), operand, sample)?
            .probe_linearity()?;
        Ok(operator)
    }

    /// [`KernelOperator::new`] without the linearity probe: for a kernel known to be linear in
    /// `operand` (its formula `K(...) * b` read by the caller). An operator that is not gives
    /// wrong products without an error.
    pub fn assuming_linear(
        kernel: Kernel,
        operand: &str,
        inputs: Vec<(String, HostArray)>,
    ) -> Result<KernelOperator, LinalgError> {
        let sig = kernel.signature().clone();
        let operand_index = linear_operand(&sig, operand)?;
        let width = sig.args[operand_index].dim;
        let slots = fixed_inputs(&sig, operand_index, inputs)?;
        let (reduced, output_category) = match sig.axis {
            Axis::I => (Category::J, Category::I),
            Axis::J => (Category::I, Category::J),
        };
        let rows_of = |category: Category| {
            slots
                .iter()
                .zip(&sig.args)
                .find(|(s, a)| s.is_some() && a.category == category)
                .and_then(|(s, _)| s.as_ref().and_then(|s| s.shape.first().copied()))
        };
        let Some(cols) = rows_of(reduced) else {
            return Err(LinalgError::Parameter(format!(
                "no argument but the operand `{operand}` is a {reduced} variable, so nothing gives the operator's number of columns"
            )));
        };
        let rows = rows_of(output_category).unwrap_or(1);
        let dtype = slots
            .iter()
            .flatten()
            .map(|a| a.dtype())
            .next()
            .unwrap_or(DType::F64);
        // Check every input now, with a zero operand in its place, so that `apply` cannot fail
        // on them.
        let zero = zeros(dtype, vec![cols, width]);
        let views: Vec<ArrayRef> = slots
            .iter()
            .map(|s| s.as_ref().unwrap_or(&zero).view())
            .collect();
        check_arguments(&sig, &views)?;
        let pairs_once = kernel
            .symmetric()
            .is_some_and(|pass| pass.holds(&views) && pass.dtypes().contains(&dtype));
        if !kernel.dtypes().contains(&dtype) {
            return Err(ArgumentError::CompiledDType {
                name: sig.args.first().map(|a| a.name.clone()).unwrap_or_default(),
                found: dtype,
                expected: kernel.dtypes().first().copied().unwrap_or(DType::F32),
            }
            .into());
        }
        Ok(KernelOperator {
            kernel,
            dtype,
            inputs: slots,
            operand: operand_index,
            width,
            rows,
            cols,
            pairs_once,
        })
    }

    /// Whether its products walk each unordered pair once: the kernel carries a symmetric
    /// pass (`keops_driver::jit::Jit::same`, a module built with `--same`) and the
    /// inputs hold the same data where it needs (`y` is `x`). About half the work of a full
    /// product for a Gaussian; the results agree up to summation order.
    pub fn pairs_once(&self) -> bool {
        self.pairs_once
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn operand_name(&self) -> &str {
        &self.kernel.signature().args[self.operand].name
    }

    /// The operand's dimension: the columns one pass of the kernel multiplies.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The dtype the products are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// One pass: the kernel on `operand` (`cols x width`, in the operator's dtype).
    fn pass(&self, operand: &HostArray) -> Result<Vec<f64>, LinalgError> {
        let views: Vec<ArrayRef> = self
            .inputs
            .iter()
            .map(|s| s.as_ref().unwrap_or(operand).view())
            .collect();
        let out = if self.pairs_once {
            self.kernel.call_symmetric(&views)?
        } else {
            self.kernel.call(&views)?
        };
        Ok(out.to_f64())
    }
}

/// The position of the argument `operand` of a kernel with signature `sig`, once checked that
/// the kernel can be linear in it: a Sum over the operand's index, the operand as wide as the
/// output.
fn linear_operand(sig: &Signature, operand: &str) -> Result<usize, LinalgError> {
    let not_linear = |reason: String| LinalgError::NotLinear {
        kernel: sig.name.clone(),
        operand: operand.to_string(),
        reason,
    };
    if sig.reduction.kind != ReductionKind::Sum {
        return Err(not_linear(format!(
            "its reduction is {}; only Sum is linear",
            sig.reduction.kind.name()
        )));
    }
    let Some(operand_index) = sig.args.iter().position(|a| a.name == operand) else {
        return Err(ArgumentError::Unknown {
            name: operand.to_string(),
            expected: argument_names(sig),
        }
        .into());
    };
    let spec = &sig.args[operand_index];
    let reduced = match sig.axis {
        Axis::I => Category::J,
        Axis::J => Category::I,
    };
    if spec.category != reduced {
        return Err(not_linear(format!(
            "it is a {} variable, but the reduction runs over {} (the operand must be a {} variable)",
            spec.category,
            if reduced == Category::J { "j" } else { "i" },
            reduced
        )));
    }
    if spec.dim != sig.output_dim() {
        return Err(not_linear(format!(
            "it has dimension {} but the output {}: output column c must be K times operand column c",
            spec.dim,
            sig.output_dim()
        )));
    }
    Ok(operand_index)
}

/// The inputs given by name, in argument order (`None` at the operand): each argument but the
/// operand exactly once.
fn fixed_inputs(
    sig: &Signature,
    operand_index: usize,
    inputs: Vec<(String, HostArray)>,
) -> Result<Vec<Option<HostArray>>, LinalgError> {
    let mut slots: Vec<Option<HostArray>> = vec![None; sig.args.len()];
    for (name, array) in inputs {
        let Some(k) = sig.args.iter().position(|a| a.name == name) else {
            return Err(ArgumentError::Unknown {
                name,
                expected: argument_names(sig),
            }
            .into());
        };
        if k == operand_index {
            return Err(LinalgError::Parameter(format!(
                "`{name}` is the operand, the vector the operator multiplies: it is not given with the other inputs"
            )));
        }
        if slots[k].is_some() {
            return Err(ArgumentError::Duplicate { name }.into());
        }
        slots[k] = Some(array);
    }
    for (k, (slot, spec)) in slots.iter().zip(&sig.args).enumerate() {
        if slot.is_none() && k != operand_index {
            return Err(ArgumentError::Missing {
                name: spec.name.clone(),
                spec: format!("{}({})", spec.category, spec.dim),
            }
            .into());
        }
    }
    Ok(slots)
}

/// "`x`, `y`, `b`": the arguments, for messages.
fn argument_names(sig: &Signature) -> String {
    crate::arrays::quoted_names(sig.args.iter().map(|a| &a.name))
}

/// Rows of each index the linearity probe of [`KernelOperator::new`] samples.
pub const LINEARITY_SAMPLE: usize = 32;

impl KernelOperator {
    /// Refuses an operator that is not linear in its operand: `f(b1 + 2.5 b2)` must be
    /// `f(b1) + 2.5 f(b2)` (which an affine or nonlinear formula fails) and output column c
    /// must not move when another column of b does (to the dtype's precision).
    fn probe_linearity(&self) -> Result<(), LinalgError> {
        let (m, r) = (self.cols, self.width);
        let wave = |phase: f64| -> Vec<f64> {
            (0..m * r)
                .map(|k| (k as f64 * 0.7548 + phase).sin())
                .collect()
        };
        let (b1, b2) = (wave(0.3), wave(1.9));
        let combined: Vec<f64> = b1.iter().zip(&b2).map(|(a, b)| a + 2.5 * b).collect();
        let (f1, f2, f12) = (
            self.apply(&b1, r)?,
            self.apply(&b2, r)?,
            self.apply(&combined, r)?,
        );
        let tol = if self.dtype == DType::F32 { 1e-3 } else { 1e-9 };
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
            let g = self.apply(&shifted, r)?;
            moved = (0..f1.len())
                .filter(|k| k % r != 0)
                .any(|k| (g[k] - f1[k]).abs() > tol * scale);
        }
        if !(not_linear || moved) {
            return Ok(());
        }
        let operand = self.operand_name().to_string();
        Err(LinalgError::NotLinear {
            kernel: self.kernel.signature().name.clone(),
            reason: if not_linear {
                format!("its output is not linear in `{operand}`; the formula must be `K(...) * {operand}` with K not depending on `{operand}`")
            } else {
                format!("output column c depends on other columns of `{operand}`; the formula must be `K(...) * {operand}` with K not depending on `{operand}`")
            },
            operand,
        })
    }
}

/// The first `rows` rows of `array` (all of it when it has no more).
fn first_rows(array: &HostArray, rows: usize) -> HostArray {
    let Some(&have) = array.shape.first() else {
        return array.clone();
    };
    if have <= rows {
        return array.clone();
    }
    let width: usize = array.shape[1..].iter().product();
    let mut shape = array.shape.clone();
    shape[0] = rows;
    let data = match &array.data {
        ArrayData::F32(v) => ArrayData::F32(v[..rows * width].to_vec()),
        ArrayData::F64(v) => ArrayData::F64(v[..rows * width].to_vec()),
    };
    HostArray { shape, data }
}

fn zeros(dtype: DType, shape: Vec<usize>) -> HostArray {
    let len = shape.iter().product();
    match dtype {
        DType::F32 => HostArray::from_f32(shape, vec![0.0; len]),
        DType::F64 => HostArray::from_f64(shape, vec![0.0; len]),
    }
}

/// Row `i` of a `(rows, dim)` (or `(rows,)`) array, as a `(1, dim)` array.
fn row_of(array: &HostArray, i: usize) -> HostArray {
    let dim = array.shape.get(1).copied().unwrap_or(1);
    let range = i * dim..(i + 1) * dim;
    match &array.data {
        ArrayData::F32(v) => HostArray::from_f32(vec![1, dim], v[range].to_vec()),
        ArrayData::F64(v) => HostArray::from_f64(vec![1, dim], v[range].to_vec()),
    }
}

impl LinearOperator for KernelOperator {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        check_operand(self, x, ncols)?;
        let (r, m) = (self.width, self.cols);
        let mut out = vec![0.0; self.rows * ncols];
        for first in (0..ncols).step_by(r) {
            let taken = r.min(ncols - first);
            let block: Vec<f64> = (0..m * r)
                .map(|k| {
                    let (row, c) = (k / r, k % r);
                    if c < taken {
                        x[row * ncols + first + c]
                    } else {
                        0.0
                    }
                })
                .collect();
            let operand = match self.dtype {
                DType::F64 => HostArray::from_f64(vec![m, r], block),
                DType::F32 => {
                    HostArray::from_f32(vec![m, r], block.into_iter().map(|v| v as f32).collect())
                }
            };
            let product = self.pass(&operand)?;
            for (row, values) in product.chunks(r).enumerate() {
                out[row * ncols + first..row * ncols + first + taken]
                    .copy_from_slice(&values[..taken]);
            }
        }
        Ok(out)
    }

    /// `K(x_i, y_i)`, by one kernel call per point on that point alone (the pairs `(i, i)`
    /// only): exact for any formula, O(N) work.
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        let n = self.rows.min(self.cols);
        let sig = self.kernel.signature();
        let ones = match self.dtype {
            DType::F64 => HostArray::from_f64(vec![1, self.width], vec![1.0; self.width]),
            DType::F32 => HostArray::from_f32(vec![1, self.width], vec![1.0; self.width]),
        };
        (0..n)
            .into_par_iter()
            .map(|i| {
                let point: Vec<HostArray> = self
                    .inputs
                    .iter()
                    .zip(&sig.args)
                    .map(|(slot, spec)| match (slot, spec.category) {
                        (None, _) => ones.clone(),
                        (Some(a), Category::Param) => a.clone(),
                        (Some(a), _) => row_of(a, i),
                    })
                    .collect();
                let views: Vec<ArrayRef> = point.iter().map(|a| a.view()).collect();
                Ok(self.kernel.call(&views)?.to_f64()[0])
            })
            .collect()
    }
}
