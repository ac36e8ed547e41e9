//! Batch axes: arrays that carry leading axes beyond the kernel's own, `(B..., N, D)` for a
//! `Vi`, `(B..., M, D)` for a `Vj`, `(B..., D)` for a `Pm`. Axes of size 1, and arrays with
//! fewer batch axes (or none), broadcast as in numpy (aligned on the right). The output gets
//! the broadcast batch axes in front of its own: `(B..., rows, Dout)`.
//!
//! On the CPU every batch runs in one parallel region, the kernel compiled once for all of
//! them (`keops_runtime::run_tiles_batched`: many small problems keep every core busy, one
//! per thread); a GPU's code, compiled once, runs them one after another, and the interpreter
//! takes each 2-D problem sliced out of the arrays (all in `driver::evaluate`). This module
//! holds the shape analysis ([`BatchLayout`]), the slicing, the stacking of the outputs and
//! the reduction of a broadcast input's gradient over the batches it was broadcast to
//! ([`GradientSum`]); `keopsc eval`/`vjp` use it, and so can any other front end.

use keops_runtime::{
    check_all_arguments, element_count, shape_text, ArgSpec, ArgumentError, ArrayData, ArrayRef,
    Axis, Category, DataRef, HostArray, ProblemSize, Signature,
};
use std::fmt;

/// The batch axes of a call: empty when no array has any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchShape(pub Vec<usize>);

impl BatchShape {
    /// How many batches: the product of the axes (1 for no axes).
    pub fn count(&self) -> usize {
        self.0.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self` followed by `core`: the shape of a whole array whose batches have shape `core`.
    pub fn then(&self, core: &[usize]) -> Vec<usize> {
        self.0.iter().chain(core).copied().collect()
    }
}

impl fmt::Display for BatchShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shape_text(&self.0))
    }
}

/// How one array splits into batch axes and the shape the kernel reads per batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgumentLayout {
    /// The leading axes, empty for an unbatched array.
    pub batch: BatchShape,
    /// The shape of one batch: `(N, D)`, `(N,)`, `(D,)`, `(1, D)` or `()`, as without batches.
    pub core: Vec<usize>,
}

impl ArgumentLayout {
    /// Splits the shape of the array passed for `spec`. A `Vi`/`Vj` reads its last two axes
    /// (`(N,)` alone for dimension 1 stays unbatched), a `Pm` its last one; a `Pm` of shape
    /// `(1, D)` is the unbatched 2-D form of the contract, not a batch axis of size 1 (both
    /// broadcast the same way; this keeps such a call's output without batch axes). A shape
    /// that does not fit is split all the same: the check of the core reports it.
    pub fn of(spec: &ArgSpec, shape: &[usize]) -> ArgumentLayout {
        let core_rank = match spec.category {
            Category::I | Category::J => 2,
            Category::Param if matches!(shape, [1, d] if *d == spec.dim) => 2,
            Category::Param => 1,
        };
        let split = shape.len().saturating_sub(core_rank);
        ArgumentLayout {
            batch: BatchShape(shape[..split].to_vec()),
            core: shape[split..].to_vec(),
        }
    }

    /// Numbers in one batch.
    pub fn core_len(&self) -> usize {
        self.core.iter().product()
    }

    /// Where batch `index` (a multi-index over the call's batch axes) starts, in batches:
    /// this array's axes are aligned on the right of the call's, and an axis of size 1 is
    /// broadcast (always position 0).
    fn offset(&self, index: &[usize]) -> usize {
        let own = &self.batch.0;
        let skip = index.len() - own.len();
        let mut offset = 0;
        for (&size, &i) in own.iter().zip(&index[skip..]) {
            offset = offset * size + if size == 1 { 0 } else { i };
        }
        offset
    }
}

/// Whether any of a call's arrays (in argument order) carries batch axes
/// ([`ArgumentLayout::of`]).
pub fn has_batch_axes(sig: &Signature, arrays: &[ArrayRef]) -> bool {
    arrays
        .iter()
        .zip(&sig.args)
        .any(|(a, spec)| !ArgumentLayout::of(spec, a.shape).batch.is_empty())
}

/// Batch axes that cannot be broadcast together, or core shapes that do not fit the kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error(
        "the batch axes do not broadcast: argument `{name}` has shape {} (batch axes {batch}) \
         but `{first}` has shape {} (batch axes {first_batch}); each batch axis must be equal or 1",
        shape_text(shape),
        shape_text(first_shape)
    )]
    Broadcast {
        name: String,
        shape: Vec<usize>,
        batch: BatchShape,
        first: String,
        first_shape: Vec<usize>,
        first_batch: BatchShape,
    },
    #[error("the batch axes broadcast to {0}, more batches than this machine can address")]
    TooMany(BatchShape),
    #[error(transparent)]
    Argument(#[from] ArgumentError),
}

/// The batch structure of one call: the broadcast batch axes, and how each argument's array
/// splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    pub batch: BatchShape,
    /// One per argument of the signature, in order.
    pub args: Vec<ArgumentLayout>,
}

impl BatchLayout {
    /// The multi-index of batch number `k` (row-major over the batch axes).
    pub fn index(&self, k: usize) -> Vec<usize> {
        let mut index = vec![0; self.batch.0.len()];
        let mut rest = k;
        for (slot, &size) in index.iter_mut().zip(&self.batch.0).rev() {
            *slot = rest % size;
            rest /= size;
        }
        index
    }

    /// Where argument `arg`'s data for batch `k` starts, in numbers.
    pub fn start(&self, arg: usize, k: usize) -> usize {
        let layout = &self.args[arg];
        layout.offset(&self.index(k)) * layout.core_len()
    }

    /// Views of batch `k` of `arrays` (in argument order), each of its core shape: no copy.
    pub fn views<'a>(&'a self, arrays: &[&'a HostArray], k: usize) -> Vec<ArrayRef<'a>> {
        let whole: Vec<ArrayRef<'a>> = arrays.iter().map(|a| a.view()).collect();
        self.batch_views(&whole, k)
    }

    /// [`BatchLayout::views`] of arrays given as views (a caller's own buffers).
    pub fn batch_views<'a>(&'a self, arrays: &[ArrayRef<'a>], k: usize) -> Vec<ArrayRef<'a>> {
        arrays
            .iter()
            .enumerate()
            .map(|(arg, array)| {
                let range = self.start(arg, k)..self.start(arg, k) + self.args[arg].core_len();
                ArrayRef {
                    shape: &self.args[arg].core,
                    data: match array.data {
                        DataRef::F32(v) => DataRef::F32(&v[range]),
                        DataRef::F64(v) => DataRef::F64(&v[range]),
                    },
                }
            })
            .collect()
    }

    /// Batch `k` of arrays given as views, copied out.
    pub fn slice_views(&self, arrays: &[ArrayRef], k: usize) -> Vec<HostArray> {
        self.batch_views(arrays, k).iter().map(owned).collect()
    }

    /// Batch `k` of `arrays` copied out, for the interfaces that take whole arrays.
    pub fn slice(&self, arrays: &[&HostArray], k: usize) -> Vec<HostArray> {
        self.views(arrays, k).iter().map(owned).collect()
    }
}

/// A view copied into an array of its own.
fn owned(view: &ArrayRef) -> HostArray {
    match view.data {
        DataRef::F32(v) => HostArray::from_f32(view.shape.to_vec(), v.to_vec()),
        DataRef::F64(v) => HostArray::from_f64(view.shape.to_vec(), v.to_vec()),
    }
}

/// Checks a call's arrays (in argument order; `None` for an argument already reported
/// missing or unreadable) and finds its batch structure: each array split into batch axes
/// and core ([`ArgumentLayout::of`]), the batch axes broadcast together, and the cores
/// checked as without batches (dtype, shapes, rows agreeing within each category). Every
/// problem is listed. On success, the layout and the size of one batch.
pub fn check_batched_arguments(
    sig: &Signature,
    arrays: &[Option<ArrayRef>],
) -> Result<(BatchLayout, ProblemSize), Vec<BatchError>> {
    if arrays.len() != sig.args.len() {
        return Err(vec![keops_runtime::arrays::argument_count_error(
            sig,
            arrays.len(),
        )
        .into()]);
    }
    let args: Vec<ArgumentLayout> = sig
        .args
        .iter()
        .zip(arrays)
        .map(|(spec, array)| match array {
            Some(array) => ArgumentLayout::of(spec, array.shape),
            None => ArgumentLayout {
                batch: BatchShape::default(),
                core: Vec::new(),
            },
        })
        .collect();
    // Every shape is checked against its data first, its size computed without overflow:
    // nothing below slices or sizes from a shape its data does not fill.
    let lengths: Vec<BatchError> = sig
        .args
        .iter()
        .zip(arrays)
        .filter_map(|(spec, array)| {
            let array = array.as_ref()?;
            (element_count(array.shape) != Some(array.data.len())).then(|| {
                BatchError::Argument(ArgumentError::DataLength {
                    name: spec.name.clone(),
                    len: array.data.len(),
                    shape: array.shape.to_vec(),
                })
            })
        })
        .collect();
    if !lengths.is_empty() {
        return Err(lengths);
    }
    let mut errors = Vec::new();
    let batch = broadcast(sig, arrays, &args, &mut errors);
    if element_count(&batch.0).is_none() {
        errors.push(BatchError::TooMany(batch.clone()));
        return Err(errors);
    }
    // The cores are checked on the first batch's data; a batch axis of size 0 leaves none, so
    // a zero-filled core stands in (its values are never read).
    let fillers: Vec<Option<HostArray>> = arrays
        .iter()
        .zip(&args)
        .map(|(array, layout)| match array {
            Some(a) if a.data.len() < layout.core_len() => Some(match a.dtype() {
                keops_runtime::DType::F32 => {
                    HostArray::from_f32(layout.core.clone(), vec![0.0; layout.core_len()])
                }
                keops_runtime::DType::F64 => {
                    HostArray::from_f64(layout.core.clone(), vec![0.0; layout.core_len()])
                }
            }),
            _ => None,
        })
        .collect();
    let cores: Vec<Option<ArrayRef>> = arrays
        .iter()
        .zip(&args)
        .zip(&fillers)
        .map(|((array, layout), filler)| {
            let array = array.as_ref()?;
            if let Some(filler) = filler {
                return Some(filler.view());
            }
            let n = layout.core_len();
            Some(ArrayRef {
                shape: &layout.core,
                data: match array.data {
                    DataRef::F32(v) => DataRef::F32(&v[..n]),
                    DataRef::F64(v) => DataRef::F64(&v[..n]),
                },
            })
        })
        .collect();
    let size = match check_all_arguments(sig, &cores) {
        Ok(size) => Some(size),
        Err(core_errors) => {
            errors.extend(
                core_errors
                    .into_iter()
                    .map(|e| BatchError::Argument(with_whole_shape(e, sig, arrays, &args))),
            );
            None
        }
    };
    match size {
        Some(size) if errors.is_empty() => Ok((BatchLayout { batch, args }, size)),
        _ => Err(errors),
    }
}

/// The batch axes of every array broadcast together (numpy's rule, aligned on the right);
/// each argument that conflicts with an earlier one is reported against the first array that
/// set the axis.
fn broadcast(
    sig: &Signature,
    arrays: &[Option<ArrayRef>],
    args: &[ArgumentLayout],
    errors: &mut Vec<BatchError>,
) -> BatchShape {
    let rank = args.iter().map(|a| a.batch.0.len()).max().unwrap_or(0);
    // Each axis from the right: its size and the argument that set it.
    let mut axes: Vec<(usize, Option<usize>)> = vec![(1, None); rank];
    for (k, layout) in args.iter().enumerate() {
        let own = &layout.batch.0;
        let mut conflict = None;
        for (from_right, &size) in own.iter().rev().enumerate() {
            let slot = &mut axes[rank - 1 - from_right];
            match *slot {
                _ if size == 1 => {}
                (1, _) => *slot = (size, Some(k)),
                (set, Some(first)) if set != size => conflict = conflict.or(Some(first)),
                _ => {}
            }
        }
        let Some(first) = conflict else { continue };
        if let (Some(array), Some(first_array)) = (arrays[k], arrays[first]) {
            errors.push(BatchError::Broadcast {
                name: sig.args[k].name.clone(),
                shape: array.shape.to_vec(),
                batch: layout.batch.clone(),
                first: sig.args[first].name.clone(),
                first_shape: first_array.shape.to_vec(),
                first_batch: args[first].batch.clone(),
            });
        }
    }
    BatchShape(axes.into_iter().map(|(size, _)| size).collect())
}

/// A core's shape error restated with the whole array's shape when it has batch axes.
fn with_whole_shape(
    error: ArgumentError,
    sig: &Signature,
    arrays: &[Option<ArrayRef>],
    args: &[ArgumentLayout],
) -> ArgumentError {
    match error {
        ArgumentError::Shape {
            name,
            spec,
            shape,
            expected,
        } => {
            let at = sig.args.iter().position(|a| a.name == name);
            match at.and_then(|k| Some((arrays[k]?, &args[k]))) {
                Some((array, layout)) if !layout.batch.is_empty() => ArgumentError::Shape {
                    name,
                    spec,
                    shape: array.shape.to_vec(),
                    expected: format!("{expected} after its batch axes {}", layout.batch),
                },
                _ => ArgumentError::Shape {
                    name,
                    spec,
                    shape,
                    expected,
                },
            }
        }
        other => other,
    }
}

/// The rows of one output per batch: `rows` rows of `dim` numbers on the kernel's axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowsShape {
    pub rows: usize,
    /// `N` or `M`.
    pub rows_name: &'static str,
    pub dim: usize,
}

impl RowsShape {
    pub fn of(forward: &Signature, size: ProblemSize, dim: usize) -> RowsShape {
        let (rows, rows_name) = match forward.axis {
            Axis::I => (size.n, "N"),
            Axis::J => (size.m, "M"),
        };
        RowsShape {
            rows,
            rows_name,
            dim,
        }
    }
}

/// Checks an array shaped like the output of a batched call (a cotangent, saved forward
/// rows): the call's batch axes exactly, then `(rows, dim)` (or `(rows,)` when `dim` is 1),
/// in `dtype`. The message says what it should be; the caller names the array.
pub fn check_batched_rows(
    batch: &BatchShape,
    rows: RowsShape,
    array: &HostArray,
    dtype: keops_runtime::DType,
) -> Result<(), String> {
    let b = batch.0.len();
    let shape = &array.shape;
    let fits = shape.len() >= b
        && shape[..b] == batch.0[..]
        && match &shape[b..] {
            [r, c] => *r == rows.rows && *c == rows.dim,
            [r] => *r == rows.rows && rows.dim == 1,
            _ => false,
        };
    if !fits {
        let also = if rows.dim == 1 {
            format!(" or {}", shape_text(&batch.then(&[rows.rows])))
        } else {
            String::new()
        };
        let batch_axes = if batch.is_empty() {
            String::new()
        } else {
            format!("the batch axes {batch}, then ")
        };
        return Err(format!(
            "has shape {}; expected {}{also} ({batch_axes}{} = {} rows of {})",
            shape_text(shape),
            shape_text(&batch.then(&[rows.rows, rows.dim])),
            rows.rows_name,
            rows.rows,
            rows.dim
        ));
    }
    if array.dtype() != dtype {
        return Err(format!(
            "is {} but the inputs are {dtype}: all arrays must share one dtype",
            array.dtype()
        ));
    }
    Ok(())
}

/// Batch `k` of an array shaped like a batched output (see [`check_batched_rows`]).
pub fn rows_of_batch(batch: &BatchShape, array: &HostArray, k: usize) -> HostArray {
    let core = &array.shape[batch.0.len()..];
    let n: usize = core.iter().product();
    owned(&ArrayRef {
        shape: core,
        data: match &array.data {
            ArrayData::F32(v) => DataRef::F32(&v[k * n..(k + 1) * n]),
            ArrayData::F64(v) => DataRef::F64(&v[k * n..(k + 1) * n]),
        },
    })
}

/// The outputs of every batch, in order, as one array `(batch..., their shape)`. `core`
/// is the shape of one output, used when there is no batch at all (an axis of size 0).
pub fn stack(
    batch: &BatchShape,
    outputs: Vec<HostArray>,
    core: &[usize],
    dtype: keops_runtime::DType,
) -> HostArray {
    let core = outputs.first().map_or(core.to_vec(), |o| o.shape.clone());
    let shape = batch.then(&core);
    match dtype {
        keops_runtime::DType::F32 => HostArray::from_f32(
            shape,
            outputs
                .iter()
                .flat_map(|o| match &o.data {
                    ArrayData::F32(v) => v.clone(),
                    ArrayData::F64(v) => v.iter().map(|&x| x as f32).collect(),
                })
                .collect(),
        ),
        keops_runtime::DType::F64 => {
            HostArray::from_f64(shape, outputs.iter().flat_map(HostArray::to_f64).collect())
        }
    }
}

/// The gradient of one array accumulated over the batches, in f64: a batch's gradient adds
/// into the part of the array that batch read, so an array broadcast to several batches (or
/// read by several arguments, as `--same` does) gets the sum of their gradients.
pub struct GradientSum {
    shape: Vec<usize>,
    sum: Vec<f64>,
}

impl GradientSum {
    /// A zero gradient for an array of `shape`.
    pub fn new(shape: &[usize]) -> GradientSum {
        GradientSum {
            shape: shape.to_vec(),
            sum: vec![0.0; shape.iter().product()],
        }
    }

    /// Adds `grad`, the gradient of batch `k` of argument `arg` (shaped like its core).
    pub fn add(&mut self, layout: &BatchLayout, arg: usize, k: usize, grad: &HostArray) {
        let start = layout.start(arg, k);
        for (slot, g) in self.sum[start..].iter_mut().zip(grad.to_f64()) {
            *slot += g;
        }
    }

    /// The sum, in `dtype`, shaped like the array.
    pub fn finish(self, dtype: keops_runtime::DType) -> HostArray {
        match dtype {
            keops_runtime::DType::F32 => {
                HostArray::from_f32(self.shape, self.sum.iter().map(|&x| x as f32).collect())
            }
            keops_runtime::DType::F64 => HostArray::from_f64(self.shape, self.sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keops_runtime::{DType, Reduction, ReductionKind};

    fn signature() -> Signature {
        let arg = |name: &str, category, dim| ArgSpec {
            name: name.into(),
            category,
            dim,
        };
        Signature {
            name: "k".into(),
            args: vec![
                arg("x", Category::I, 2),
                arg("y", Category::J, 2),
                arg("b", Category::J, 1),
                arg("s", Category::Param, 1),
            ],
            reduction: Reduction::new(ReductionKind::Sum, 1),
            axis: Axis::I,
        }
    }

    fn zeros(shape: &[usize]) -> HostArray {
        HostArray::from_f64(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    fn check(shapes: &[&[usize]]) -> Result<(BatchLayout, ProblemSize), Vec<String>> {
        let arrays: Vec<HostArray> = shapes.iter().map(|s| zeros(s)).collect();
        let views: Vec<Option<ArrayRef>> = arrays.iter().map(|a| Some(a.view())).collect();
        check_batched_arguments(&signature(), &views)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn arrays_split_into_batch_axes_and_core() {
        let sig = signature();
        let split = |arg: usize, shape: &[usize]| {
            let l = ArgumentLayout::of(&sig.args[arg], shape);
            (l.batch.0, l.core)
        };
        assert_eq!(split(0, &[4, 2]), (vec![], vec![4, 2]));
        assert_eq!(split(0, &[3, 4, 2]), (vec![3], vec![4, 2]));
        assert_eq!(split(0, &[2, 3, 4, 2]), (vec![2, 3], vec![4, 2]));
        // A dimension-1 variable as (M,) is unbatched.
        assert_eq!(split(2, &[5]), (vec![], vec![5]));
        assert_eq!(split(2, &[3, 5, 1]), (vec![3], vec![5, 1]));
        // Parameters: (D,), (1, D) and () unbatched; (B, D) batched.
        assert_eq!(split(3, &[1]), (vec![], vec![1]));
        assert_eq!(split(3, &[1, 1]), (vec![], vec![1, 1]));
        assert_eq!(split(3, &[]), (vec![], vec![]));
        assert_eq!(split(3, &[3, 1]), (vec![3], vec![1]));
        assert_eq!(split(3, &[2, 3, 1]), (vec![2, 3], vec![1]));
    }

    #[test]
    fn batch_axes_broadcast_as_numpy() {
        let (layout, size) = check(&[&[4, 2], &[5, 2], &[5, 1], &[1]]).unwrap();
        assert!(layout.batch.is_empty());
        assert_eq!(layout.batch.count(), 1);
        assert_eq!((size.n, size.m), (4, 5));

        let (layout, _) = check(&[&[3, 4, 2], &[1, 5, 2], &[5], &[3, 1]]).unwrap();
        assert_eq!(layout.batch, BatchShape(vec![3]));

        let (layout, size) = check(&[&[2, 1, 4, 2], &[3, 5, 2], &[2, 3, 5, 1], &[1]]).unwrap();
        assert_eq!(layout.batch, BatchShape(vec![2, 3]));
        assert_eq!(layout.batch.to_string(), "(2, 3)");
        assert_eq!((size.n, size.m), (4, 5));
        // Batch 4 is (1, 1): x's axis of size 1 is broadcast, y has no first axis.
        assert_eq!(layout.index(4), vec![1, 1]);
        assert_eq!(layout.start(0, 4), 8);
        assert_eq!(layout.start(1, 4), 10);
        assert_eq!(layout.start(2, 4), 4 * 5);
        assert_eq!(layout.start(3, 4), 0);
    }

    #[test]
    fn mismatched_batch_axes_name_both_arguments() {
        let errors = check(&[&[2, 4, 2], &[3, 5, 2], &[5, 1], &[1]]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("`y` has shape (3, 5, 2) (batch axes (3,))")
                && errors[0].contains("`x` has shape (2, 4, 2) (batch axes (2,))"),
            "{}",
            errors[0]
        );
        // A core that does not fit is reported with the whole shape and its batch axes.
        let errors = check(&[&[2, 4, 3], &[2, 5, 2], &[5, 1], &[1]]).unwrap_err();
        assert!(
            errors[0].contains(
                "`x` (Vi(2)) has shape (2, 4, 3); expected (N, 2) after its batch axes (2,)"
            ),
            "{errors:#?}"
        );
        // Rows still agree within a category.
        let errors = check(&[&[2, 4, 2], &[2, 5, 2], &[2, 6, 1], &[1]]).unwrap_err();
        assert!(
            errors[0].contains("`y` and `b` disagree") && errors[0].contains("5 rows against 6"),
            "{errors:#?}"
        );
    }

    #[test]
    fn slices_and_gradients_follow_the_broadcast() {
        let x = HostArray::from_f64(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let y = HostArray::from_f64(vec![3, 1, 2], vec![5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        let b = zeros(&[1]);
        let s = HostArray::from_f64(vec![3, 1], vec![0.5, 1.5, 2.5]);
        let arrays = [&x, &y, &b, &s];
        let views: Vec<Option<ArrayRef>> = arrays.iter().map(|a| Some(a.view())).collect();
        let (layout, _) = check_batched_arguments(&signature(), &views).unwrap();
        assert_eq!(layout.batch, BatchShape(vec![3]));
        let second = layout.slice(&arrays, 1);
        assert_eq!(
            second[0],
            HostArray::from_f64(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(second[1], HostArray::from_f64(vec![1, 2], vec![7.0, 8.0]));
        assert_eq!(second[3], HostArray::from_f64(vec![1], vec![1.5]));
        // x was broadcast to the three batches: its gradient sums theirs.
        let mut dx = GradientSum::new(&x.shape);
        for k in 0..3 {
            let g = HostArray::from_f64(vec![2, 2], vec![k as f64; 4]);
            dx.add(&layout, 0, k, &g);
        }
        assert_eq!(
            dx.finish(DType::F32),
            HostArray::from_f32(vec![1, 2, 2], vec![3.0; 4])
        );
        // s was not: each batch has its own entry.
        let mut ds = GradientSum::new(&s.shape);
        for k in 0..3 {
            ds.add(
                &layout,
                3,
                k,
                &HostArray::from_f64(vec![1], vec![k as f64 + 1.0]),
            );
        }
        assert_eq!(ds.finish(DType::F64).to_f64(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn batched_rows_are_checked_and_sliced() {
        let batch = BatchShape(vec![2]);
        let rows = RowsShape {
            rows: 3,
            rows_name: "N",
            dim: 1,
        };
        let g = HostArray::from_f64(vec![2, 3, 1], (0..6).map(f64::from).collect());
        check_batched_rows(&batch, rows, &g, DType::F64).unwrap();
        let flat = HostArray::from_f64(vec![2, 3], (0..6).map(f64::from).collect());
        check_batched_rows(&batch, rows, &flat, DType::F64).unwrap();
        assert_eq!(rows_of_batch(&batch, &g, 1).to_f64(), vec![3.0, 4.0, 5.0]);
        let wrong = zeros(&[3, 3, 1]);
        let message = check_batched_rows(&batch, rows, &wrong, DType::F64).unwrap_err();
        assert!(
            message.contains("has shape (3, 3, 1); expected (2, 3, 1)"),
            "{message}"
        );
        let message = check_batched_rows(&batch, rows, &g, DType::F32).unwrap_err();
        assert!(message.contains("float64"), "{message}");
        let stacked = stack(
            &batch,
            vec![rows_of_batch(&batch, &g, 0), rows_of_batch(&batch, &g, 1)],
            &[3, 1],
            DType::F64,
        );
        assert_eq!(stacked, g);
        let empty = stack(&BatchShape(vec![0]), vec![], &[3, 1], DType::F32);
        assert_eq!(empty.shape, vec![0, 3, 1]);
    }
}
