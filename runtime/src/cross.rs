//! Cross passes: one walk over the pairs that folds each pair both into its row (a sum over
//! the inner index, as [`run_tiles`](crate::run_tiles)) and into its column (a sum over the
//! rows). A backward pass needs both for a kernel with inputs on both axes (`dx` sums over j,
//! `dy` over i) and the two share most of their work per pair (the kernel's value, its
//! differences), so one walk costs far less than two.
//!
//! Memory stays O(N + M): the rows' accumulators, and per row group one buffer of column
//! accumulators covering one *wave* of the inner range at a time, merged into the columns in
//! group order after each wave (so results do not depend on thread timing).

use crate::abi::{Axis, Signature};
use crate::arrays::{check_arguments, ArgumentError, ArrayRef, DType, HostArray};
use crate::reduction::{Family, ReductionKind};
use crate::tiles::TileInputs;
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

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn lanes(&self) -> usize {
        self.lanes
    }

    pub fn tile(&self) -> CrossTileFn {
        self.tile
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
    size.check_compiled_dtype(sig, kernel.dtype)?;
    let (rows, inner) = size.rows_and_inner(sig.axis);
    let row_dim = sig.reduction.acc_dim();
    let columns = kernel.columns;
    let lanes = kernel.lanes;
    let inputs = TileInputs::new(sig, arrays, inner, lanes);
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
            let args = inputs.args();
            // SAFETY: the pointers cover the checked argument sizes (inner-indexed inputs
            // transposed and padded), `acc` holds the rows `start..end` and `cols` the
            // `columns x (hi - lo)` accumulators of the range, as the contract states.
            unsafe {
                (kernel.tile)(
                    args.as_ptr(),
                    inputs.inner_stride as i64,
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

/// Rows of a symmetric evaluation's blocks: a multiple of every vector width, and at most
/// the rows over which compiled cross code sums its columns in the element type.
pub const SYMMETRIC_BLOCK: usize = 256;

/// A `Sum` over the inner index of a kernel applied to one point cloud against itself (rows
/// and inner indices the same points, N = M), walking each unordered pair once.
///
/// `full` is the kernel (its arrays `full_arrays`); `cross` its *swapped* cross pass (arrays
/// `cross_arrays`, the same rows): row components `F(i, j)` and column components `F(j, i)`,
/// the kernel with every variable's role swapped, for the same output row width. Rows go in
/// blocks of [`SYMMETRIC_BLOCK`]: a block's pairs with itself run through `full` (every
/// ordered pair, the diagonal once), its pairs with the later blocks through `cross`, whose
/// columns are the later rows' shares. The result equals the full evaluation up to summation
/// order.
pub fn run_symmetric_tiles(
    full: &crate::TileKernel,
    full_arrays: &[ArrayRef],
    cross: &CrossTileKernel,
    cross_arrays: &[ArrayRef],
) -> Result<HostArray, ArgumentError> {
    let fsig = full.signature();
    let csig = cross.signature;
    assert!(
        fsig.reduction.kind == ReductionKind::Sum && csig.reduction.kind == ReductionKind::Sum,
        "a symmetric evaluation sums"
    );
    let size = check_arguments(fsig, full_arrays)?;
    let csize = check_arguments(csig, cross_arrays)?;
    let dtype = full.dtype();
    size.check_compiled_dtype(fsig, dtype)?;
    csize.check_compiled_dtype(csig, dtype)?;
    assert!(cross.dtype == dtype, "both kernels compiled for one dtype");
    let rows = match fsig.axis {
        Axis::I => size.n,
        Axis::J => size.m,
    };
    let width = fsig.reduction.acc_dim();
    assert!(
        size.n == size.m && csize.n == size.n && csize.m == size.m,
        "one point cloud against itself"
    );
    assert!(
        csig.reduction.acc_dim() == width && cross.columns == width && csig.axis == fsig.axis,
        "the cross pass gives each pair to both of its rows"
    );
    let full_inputs = TileInputs::new(fsig, full_arrays, rows, full.lanes());
    let cross_inputs = TileInputs::new(csig, cross_arrays, rows, cross.lanes);
    let block = SYMMETRIC_BLOCK;
    assert!(block.is_multiple_of(full.lanes()) && block.is_multiple_of(cross.lanes));
    let blocks = rows.div_ceil(block);
    let groups = (2 * rayon::current_num_threads()).min(blocks).max(1);
    let wave = 1usize << 16;

    let mut row_acc = vec![0.0f64; rows * width];
    let mut col_acc = vec![0.0f64; rows * width];
    if rows > 0 && width > 0 {
        // Blocks go to groups in turn, so that the long first blocks (they meet every later
        // row) spread over the groups.
        let mut by_group: Vec<Vec<(usize, &mut [f64])>> = (0..groups).map(|_| Vec::new()).collect();
        for (b, acc) in row_acc.chunks_mut(block * width).enumerate() {
            by_group[b % groups].push((b, acc));
        }
        let full_tile = full.tile();
        let partials: Vec<Vec<f64>> = by_group
            .into_par_iter()
            .map(|blocks| {
                let mut cols = vec![0.0f64; rows * width];
                let mut wave_cols = Vec::new();
                let full_args = full_inputs.args();
                let cross_args = cross_inputs.args();
                for (b, acc) in blocks {
                    let start = b * block;
                    let end = (start + block).min(rows);
                    // SAFETY: the TileFn contract: checked arrays, the inner-indexed ones
                    // transposed and padded for the kernel's lanes, `acc` the rows
                    // `start..end`, `start` a multiple of the lanes.
                    unsafe {
                        full_tile(
                            full_args.as_ptr(),
                            full_inputs.inner_stride as i64,
                            start as i64,
                            end as i64,
                            start as i64,
                            end as i64,
                            acc.as_mut_ptr(),
                        )
                    };
                    let mut lo = end;
                    while lo < rows {
                        let hi = (lo + wave).min(rows);
                        wave_cols.clear();
                        wave_cols.resize(width * (hi - lo), 0.0);
                        // SAFETY: the CrossTileFn contract, as above; `wave_cols` holds the
                        // `width x (hi - lo)` column sums of the range, `lo` a multiple of the
                        // lanes (block ends are).
                        unsafe {
                            (cross.tile)(
                                cross_args.as_ptr(),
                                cross_inputs.inner_stride as i64,
                                start as i64,
                                end as i64,
                                lo as i64,
                                hi as i64,
                                acc.as_mut_ptr(),
                                wave_cols.as_mut_ptr(),
                            )
                        };
                        for c in 0..width {
                            for (k, x) in wave_cols[c * (hi - lo)..(c + 1) * (hi - lo)]
                                .iter()
                                .enumerate()
                            {
                                cols[(lo + k) * width + c] += x;
                            }
                        }
                        lo = hi;
                    }
                }
                cols
            })
            .collect();
        for cols in &partials {
            for (a, x) in col_acc.iter_mut().zip(cols) {
                *a += x;
            }
        }
    }
    let total: Vec<f64> = row_acc.iter().zip(&col_acc).map(|(a, b)| a + b).collect();
    Ok(match dtype {
        DType::F64 => HostArray::from_f64(vec![rows, width], total),
        DType::F32 => {
            HostArray::from_f32(vec![rows, width], total.iter().map(|&x| x as f32).collect())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ArgSpec, Category};
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

    /// The full tile of `F = x_i y_j^2` (x = Vi(1), y = Vj(1), y transposed).
    unsafe extern "C" fn skew_tile(
        args: *const *const c_void,
        _inner_stride: i64,
        row_start: i64,
        row_end: i64,
        inner_start: i64,
        inner_end: i64,
        acc: *mut f64,
    ) {
        // SAFETY: the TileFn contract for `signature()`.
        unsafe {
            let x = *args as *const f64;
            let y = *args.add(1) as *const f64;
            for r in row_start..row_end {
                for j in inner_start..inner_end {
                    let yj = *y.add(j as usize);
                    *acc.add((r - row_start) as usize) += *x.add(r as usize) * yj * yj;
                }
            }
        }
    }

    /// Its swapped cross pass: rows `x_i y_j^2`, columns `y_j x_i^2` (the kernel with x and y
    /// exchanged).
    unsafe extern "C" fn skew_cross(
        args: *const *const c_void,
        _inner_stride: i64,
        row_start: i64,
        row_end: i64,
        inner_start: i64,
        inner_end: i64,
        acc: *mut f64,
        cols: *mut f64,
    ) {
        // SAFETY: the CrossTileFn contract for `signature()` and one column.
        unsafe {
            let x = *args as *const f64;
            let y = *args.add(1) as *const f64;
            for r in row_start..row_end {
                let xi = *x.add(r as usize);
                for j in inner_start..inner_end {
                    let yj = *y.add(j as usize);
                    *acc.add((r - row_start) as usize) += xi * yj * yj;
                    *cols.add((j - inner_start) as usize) += yj * xi * xi;
                }
            }
        }
    }

    #[test]
    fn symmetric_walk_equals_the_full_sum_for_a_kernel_that_is_not_symmetric() {
        let sig = signature();
        // SAFETY: the tile functions implement their contracts for this signature.
        let full = unsafe { crate::TileKernel::new(&sig, DType::F64, 1, skew_tile) };
        let cross = unsafe { CrossTileKernel::new(&sig, 1, DType::F64, 1, skew_cross) };
        for n in [1, 7, 256, 257, 700] {
            let x: Vec<f64> = (0..n)
                .map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0)
                .collect();
            let a = HostArray::from_f64(vec![n, 1], x.clone());
            let views = [a.view(), a.view()];
            let out = run_symmetric_tiles(&full, &views, &cross, &views)
                .unwrap()
                .to_f64();
            let s2: f64 = x.iter().map(|v| v * v).sum();
            for i in 0..n {
                assert!((out[i] - x[i] * s2).abs() < 1e-9, "n = {n}, row {i}");
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
