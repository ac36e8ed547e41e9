//! Cross passes: one walk over the pairs that folds each pair both into its row (a sum over
//! the inner index, as [`run_tiles`](crate::run_tiles)) and into its column (a sum over the
//! rows). A backward pass needs both for a kernel with inputs on both axes (`dx` sums over j,
//! `dy` over i) and the two share most of their work per pair (the kernel's value, its
//! differences), so one walk costs far less than two.
//!
//! Memory stays O(N + M): the rows' accumulators, and per row group one buffer of column
//! accumulators covering one *wave* of the inner range at a time, merged into the columns in
//! group order after each wave (so results do not depend on thread timing).

use crate::abi::{Axis, Category, Signature};
use crate::arrays::{
    check_arguments, ArgumentError, ArrayData, ArrayRef, DType, DataRef, HostArray,
};
use crate::reduction::{Family, ReductionKind};
use crate::tiles::{transpose, SendPtr};
use rayon::prelude::*;
use std::ffi::c_void;

/// The tile function of a cross pass: [`TileFn`](crate::TileFn)'s contract for the row part
/// (a `Sum` over the inner index, `acc` holding `(row_end - row_start) x row_dim` f64 rows),
/// plus `cols`: the column part, `columns x (inner_end - inner_start)` f64 accumulators,
/// component-major and relative to `inner_start`, to which every pair of the block adds its
/// column components (the last `columns` components of the formula).
pub type CrossTileFn = unsafe extern "C" fn(
    args: *const *const c_void,
    inner_stride: i64,
    row_start: i64,
    row_end: i64,
    inner_start: i64,
    inner_end: i64,
    acc: *mut f64,
    cols: *mut f64,
);

/// A compiled cross pass as the runtime sees it. `signature` describes the row part: a
/// `Sum` whose output is the row components; `columns` more components go to the columns.
#[derive(Clone, Copy, Debug)]
pub struct CrossTileKernel<'s> {
    signature: &'s Signature,
    columns: usize,
    dtype: DType,
    lanes: usize,
    tile: CrossTileFn,
}

impl<'s> CrossTileKernel<'s> {
    /// # Safety
    ///
    /// `tile` must implement the [`CrossTileFn`] contract for this signature (a `Sum`
    /// reduction) and `columns`, for `dtype` inputs read with vectors of at most `lanes`
    /// elements, and stay callable while the `CrossTileKernel` is used.
    pub unsafe fn new(
        signature: &'s Signature,
        columns: usize,
        dtype: DType,
        lanes: usize,
        tile: CrossTileFn,
    ) -> CrossTileKernel<'s> {
        CrossTileKernel {
            signature,
            columns,
            dtype,
            lanes: lanes.max(1),
            tile,
        }
    }

    pub fn signature(&self) -> &'s Signature {
        self.signature
    }

    pub fn columns(&self) -> usize {
        self.columns
    }
}

/// How a cross pass is cut: row groups (one task each, with its own column buffer), rows per
/// call of the tile function, and the inner range in waves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossSchedule {
    pub groups: usize,
    pub rows_per_call: usize,
    pub wave: usize,
}

impl CrossSchedule {
    /// A few groups per thread (so uneven groups even out), at least 16 rows each; calls of
    /// at most 256 rows (the compiled code sums a column over a call's rows in the element
    /// type before adding it in f64); waves of 64 Ki inner indices.
    pub fn choose(rows: usize, threads: usize) -> CrossSchedule {
        CrossSchedule {
            groups: (2 * threads.max(1)).min(rows.div_ceil(16)).max(1),
            rows_per_call: 256,
            wave: 1 << 16,
        }
    }
}

/// Runs a cross pass on `arrays` (in signature order, checked as by
/// [`run_tiles`](crate::run_tiles)): the rows `(rows, row_dim)` and the columns
/// `(inner, columns)`, both in the kernel's dtype (sums in f64).
pub fn run_cross_tiles(
    kernel: &CrossTileKernel,
    arrays: &[ArrayRef],
    schedule: Option<CrossSchedule>,
) -> Result<(HostArray, HostArray), ArgumentError> {
    let sig = kernel.signature;
    assert!(
        sig.reduction.kind.family() == Family::Sum && sig.reduction.kind == ReductionKind::Sum,
        "a cross pass sums"
    );
    let size = check_arguments(sig, arrays)?;
    if size.dtype != kernel.dtype {
        return Err(ArgumentError::CompiledDType {
            name: sig.args.first().map(|a| a.name.clone()).unwrap_or_default(),
            found: size.dtype,
            expected: kernel.dtype,
        });
    }
    let (rows, inner, inner_category) = match sig.axis {
        Axis::I => (size.n, size.m, Category::J),
        Axis::J => (size.m, size.n, Category::I),
    };
    let row_dim = sig.reduction.acc_dim();
    let columns = kernel.columns;
    let lanes = kernel.lanes;
    let inner_stride = inner.div_ceil(lanes) * lanes + lanes;
    let transposed: Vec<Option<ArrayData>> = sig
        .args
        .iter()
        .zip(arrays)
        .map(|(spec, array)| {
            (spec.category == inner_category)
                .then(|| transpose(array.data, inner, spec.dim, inner_stride))
        })
        .collect();
    let pointers: Vec<SendPtr> = arrays
        .iter()
        .zip(&transposed)
        .map(|(array, t)| {
            SendPtr(match t {
                Some(ArrayData::F32(v)) => v.as_ptr().cast(),
                Some(ArrayData::F64(v)) => v.as_ptr().cast(),
                None => match array.data {
                    DataRef::F32(v) => v.as_ptr().cast(),
                    DataRef::F64(v) => v.as_ptr().cast(),
                },
            })
        })
        .collect();
    let schedule =
        schedule.unwrap_or_else(|| CrossSchedule::choose(rows, rayon::current_num_threads()));
    let groups = schedule.groups.max(1);
    let per_call = schedule.rows_per_call.max(1);
    // Waves on multiples of the vector width keep the loads aligned.
    let wave = schedule.wave.div_ceil(lanes).max(1) * lanes;
    let group_rows = rows.div_ceil(groups).max(1);

    let mut row_acc = vec![0.0f64; rows * row_dim];
    let mut col_acc = vec![0.0f64; inner * columns];
    let call =
        |acc: &mut [f64], cols: &mut [f64], start: usize, end: usize, lo: usize, hi: usize| {
            let args: Vec<*const c_void> = pointers.iter().map(|p| p.0).collect();
            // SAFETY: the pointers cover the checked argument sizes (inner-indexed inputs
            // transposed and padded), `acc` holds the rows `start..end` and `cols` the
            // `columns x (hi - lo)` accumulators of the range, as the contract states.
            unsafe {
                (kernel.tile)(
                    args.as_ptr(),
                    inner_stride as i64,
                    start as i64,
                    end as i64,
                    lo as i64,
                    hi as i64,
                    acc.as_mut_ptr(),
                    cols.as_mut_ptr(),
                )
            }
        };
    if rows > 0 && inner > 0 && row_dim + columns > 0 {
        let mut lo = 0;
        while lo < inner {
            let hi = (lo + wave).min(inner);
            let width = hi - lo;
            let partials: Vec<Vec<f64>> = row_acc
                .par_chunks_mut((group_rows * row_dim).max(1))
                .enumerate()
                .map(|(g, acc)| {
                    let start = g * group_rows;
                    let end = (start + group_rows).min(rows);
                    let mut cols = vec![0.0f64; columns * width];
                    let mut r = start;
                    while r < end {
                        let stop = (r + per_call).min(end);
                        let block = &mut acc[(r - start) * row_dim..(stop - start) * row_dim];
                        call(block, &mut cols, r, stop, lo, hi);
                        r = stop;
                    }
                    cols
                })
                .collect();
            for cols in &partials {
                for c in 0..columns {
                    for (k, x) in cols[c * width..(c + 1) * width].iter().enumerate() {
                        col_acc[(lo + k) * columns + c] += x;
                    }
                }
            }
            lo = hi;
        }
    }
    let array = |shape: Vec<usize>, data: Vec<f64>| match kernel.dtype {
        DType::F64 => HostArray::from_f64(shape, data),
        DType::F32 => HostArray::from_f32(shape, data.iter().map(|&x| x as f32).collect()),
    };
    Ok((
        array(vec![rows, row_dim], row_acc),
        array(vec![inner, columns], col_acc),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ArgSpec;
    use crate::reduction::Reduction;

    /// Rows: `sum_j x_i y_j`; columns: `sum_i (x_i + y_j)` and `sum_i x_i`. Written in Rust
    /// against the contract: y arrives transposed, columns relative to `inner_start`.
    unsafe extern "C" fn product_tile(
        args: *const *const c_void,
        _inner_stride: i64,
        row_start: i64,
        row_end: i64,
        inner_start: i64,
        inner_end: i64,
        acc: *mut f64,
        cols: *mut f64,
    ) {
        let width = (inner_end - inner_start) as usize;
        // SAFETY: the CrossTileFn contract for the signature of `signature()` below.
        unsafe {
            let x = *args as *const f64;
            let y = *args.add(1) as *const f64;
            for r in row_start..row_end {
                let xi = *x.add(r as usize);
                for j in inner_start..inner_end {
                    let yj = *y.add(j as usize);
                    *acc.add((r - row_start) as usize) += xi * yj;
                    let k = (j - inner_start) as usize;
                    *cols.add(k) += xi + yj;
                    *cols.add(width + k) += xi;
                }
            }
        }
    }

    fn signature() -> Signature {
        Signature {
            name: "cross".into(),
            args: vec![
                ArgSpec {
                    name: "x".into(),
                    category: Category::I,
                    dim: 1,
                },
                ArgSpec {
                    name: "y".into(),
                    category: Category::J,
                    dim: 1,
                },
            ],
            axis: Axis::I,
            reduction: Reduction::new(ReductionKind::Sum, 1),
        }
    }

    #[test]
    fn rows_and_columns_match_direct_sums_for_every_cut() {
        let sig = signature();
        // SAFETY: product_tile implements the contract for this signature and 2 columns.
        let kernel = unsafe { CrossTileKernel::new(&sig, 2, DType::F64, 1, product_tile) };
        for (n, m) in [(1, 1), (7, 3), (100, 37), (513, 1000)] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..m).map(|j| (j as f64 * 0.11).cos()).collect();
            let xa = HostArray::from_f64(vec![n, 1], x.clone());
            let ya = HostArray::from_f64(vec![m, 1], y.clone());
            let views = [xa.view(), ya.view()];
            for schedule in [
                None,
                Some(CrossSchedule {
                    groups: 3,
                    rows_per_call: 5,
                    wave: 16,
                }),
                Some(CrossSchedule {
                    groups: 1,
                    rows_per_call: 1000,
                    wave: 1,
                }),
            ] {
                let (r, c) = run_cross_tiles(&kernel, &views, schedule).unwrap();
                assert_eq!(r.shape, vec![n, 1]);
                assert_eq!(c.shape, vec![m, 2]);
                let (r, c) = (r.to_f64(), c.to_f64());
                let sx: f64 = x.iter().sum();
                let sy: f64 = y.iter().sum();
                for i in 0..n {
                    assert!((r[i] - x[i] * sy).abs() < 1e-9, "row {i} {schedule:?}");
                }
                for j in 0..m {
                    assert!((c[2 * j] - (sx + n as f64 * y[j])).abs() < 1e-9);
                    assert!((c[2 * j + 1] - sx).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn wrong_arrays_never_reach_the_tile_function() {
        let sig = signature();
        // SAFETY: as above.
        let kernel = unsafe { CrossTileKernel::new(&sig, 2, DType::F64, 1, product_tile) };
        let xa = HostArray::from_f64(vec![3, 2], vec![0.0; 6]);
        let ya = HostArray::from_f64(vec![4, 1], vec![0.0; 4]);
        assert!(run_cross_tiles(&kernel, &[xa.view(), ya.view()], None).is_err());
        let xf = HostArray::from_f32(vec![3, 1], vec![0.0; 3]);
        let yf = HostArray::from_f32(vec![4, 1], vec![0.0; 4]);
        assert!(run_cross_tiles(&kernel, &[xf.view(), yf.view()], None).is_err());
    }
}
