//! Tiled execution of a compiled kernel. Compiled code (JIT or loaded from a module) exports one
//! C-ABI function, the *tile function*, that folds the pairs of a block of output rows against a
//! range of the reduced (inner) index into f64 accumulators. Everything around it lives here, in
//! plain Rust: the layout of the inputs, the split of the work over threads, the merge of partial
//! accumulators and the final output. The compiler never schedules, and this crate never needs
//! LLVM.
//!
//! Memory is O(N + M): per call, one transposed copy of the inner-indexed inputs and the output;
//! accumulators exist only for the blocks of rows being computed (and, when the rows alone
//! cannot keep the threads busy, one per inner chunk of those blocks).

use crate::abi::{Axis, Category, Signature};
use crate::arrays::{
    check_arguments, ArgumentError, ArrayData, ArrayRef, DType, DataRef, HostArray, OutputRef,
    ProblemSize,
};
use rayon::prelude::*;
use std::ffi::c_void;

/// The tile function: `tile(args, inner_stride, row_start, row_end, inner_start, inner_end,
/// acc)`. This is the whole contract between compiled code and this crate; the code generator
/// emits exactly this type (a test compares the emitted LLVM declaration with it).
///
/// - **Inputs read.** `args[k]` points at argument `k` of the signature: row-indexed arguments
///   and parameters as given (row-major, `rows x dim`, naturally aligned for the element
///   type); inner-indexed arguments transposed (`dim x inner_stride`, component-major,
///   zero-padded past the inner size by at least one vector of `lanes` elements, so that a
///   vector load starting at any inner index below the inner size stays inside the buffer).
///   Nothing behind `args` is written.
/// - **Output written.** The pairs `[row_start, row_end) x [inner_start, inner_end)` are folded
///   into `acc`, which holds `(row_end - row_start) x acc_dim` f64 accumulators in the
///   reduction's layout ([`Reduction::acc_dim`](crate::Reduction::acc_dim)), initialised by the
///   caller; indices in it are absolute. Only those rows are read and written (8-byte aligned).
/// - **Ranges.** `0 <= row_start <= row_end <= rows` and `0 <= inner_start <= inner_end <=
///   inner`, with `inner_start` a multiple of `lanes`.
/// - **Concurrency.** The function keeps no state: any number of threads may call it at once
///   on disjoint `acc` blocks.
/// - **Stack.** It uses a fixed amount of stack (its accumulators and, for long K-lists, one
///   f64 accumulator row), far below the 2 MiB of a rayon worker.
///
/// Indices are 64-bit throughout, so N and M up to 2^53 index correctly.
pub type TileFn = unsafe extern "C" fn(
    args: *const *const c_void,
    inner_stride: i64,
    row_start: i64,
    row_end: i64,
    inner_start: i64,
    inner_end: i64,
    acc: *mut f64,
);

/// A compiled kernel as the runtime sees it: its signature, the dtype it computes in, the SIMD
/// width its inner loop uses (the padding the transposed inputs need), and its tile function.
/// Built only by [`TileKernel::new`], whose caller vouches for the tile function.
#[derive(Clone, Copy, Debug)]
pub struct TileKernel<'s> {
    signature: &'s Signature,
    dtype: DType,
    lanes: usize,
    tile: TileFn,
}

impl<'s> TileKernel<'s> {
    /// # Safety
    ///
    /// `tile` must implement the [`TileFn`] contract for this signature (argument order,
    /// categories and dimensions, the reduction's accumulator layout), for `dtype` inputs,
    /// reading inner-indexed inputs with vectors of at most `lanes` elements (`lanes >= 1`),
    /// and must stay callable for as long as the `TileKernel` is used.
    pub unsafe fn new(
        signature: &'s Signature,
        dtype: DType,
        lanes: usize,
        tile: TileFn,
    ) -> TileKernel<'s> {
        TileKernel {
            signature,
            dtype,
            lanes: lanes.max(1),
            tile,
        }
    }

    pub fn signature(&self) -> &'s Signature {
        self.signature
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn lanes(&self) -> usize {
        self.lanes
    }

    pub fn tile(&self) -> TileFn {
        self.tile
    }
}

/// How the work of one call is cut: rows in blocks, and the inner range in chunks when there
/// are too few row blocks for the threads. Results differ between schedules only by the rounding
/// of a reordered sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileSchedule {
    pub row_block: usize,
    pub inner_chunks: usize,
}

impl TileSchedule {
    /// Enough blocks for every thread (several each, so uneven blocks even out), large enough
    /// blocks to amortise a call; and inner chunks when the rows are few.
    pub fn choose(rows: usize, inner: usize, threads: usize) -> TileSchedule {
        let threads = threads.max(1);
        let wanted_tasks = 4 * threads;
        let row_block = rows.div_ceil(wanted_tasks).clamp(1, 256);
        let row_blocks = rows.div_ceil(row_block).max(1);
        // Split the inner range only when it is long enough for each chunk to amortise its
        // merge, and only as much as needed to reach the wanted task count.
        let inner_chunks = if row_blocks >= wanted_tasks || inner < 8192 {
            1
        } else {
            wanted_tasks.div_ceil(row_blocks).min(inner / 4096).max(1)
        };
        TileSchedule {
            row_block,
            inner_chunks,
        }
    }
}

/// Runs a tiled kernel on `arrays` (in signature order) and returns the output, `(rows,
/// output_dim)` in the kernel's dtype. The arrays are checked against the signature first
/// ([`check_arguments`]): the tile function only ever sees buffers that fit its contract.
pub fn run_tiles(
    kernel: &TileKernel,
    arrays: &[ArrayRef],
    schedule: Option<TileSchedule>,
) -> Result<HostArray, ArgumentError> {
    let size = check_arguments(kernel.signature, arrays)?;
    run_into_new(kernel, arrays, size, schedule, true)
}

/// [`run_checked`] into a new output array.
fn run_into_new(
    kernel: &TileKernel,
    arrays: &[ArrayRef],
    size: ProblemSize,
    schedule: Option<TileSchedule>,
    parallel: bool,
) -> Result<HostArray, ArgumentError> {
    let mut out = output_for(kernel, size);
    let target = match &mut out.data {
        ArrayData::F32(v) => OutputRef::F32(v),
        ArrayData::F64(v) => OutputRef::F64(v),
    };
    run_checked(kernel, arrays, size, schedule, target, parallel)?;
    Ok(out)
}

/// A zero output of the kernel's shape for a problem of `size`, in its dtype.
fn output_for(kernel: &TileKernel, size: ProblemSize) -> HostArray {
    let rows = match kernel.signature.axis {
        Axis::I => size.n,
        Axis::J => size.m,
    };
    let shape = vec![rows, kernel.signature.output_dim()];
    let len = shape[0] * shape[1];
    match kernel.dtype {
        DType::F32 => HostArray::from_f32(shape, vec![0.0; len]),
        DType::F64 => HostArray::from_f64(shape, vec![0.0; len]),
    }
}

/// Runs a tiled kernel on many problems in one parallel region (a batch: `problems[k]` the
/// arrays of problem `k`, in signature order, each checked as by [`run_tiles`] before any
/// runs) and returns their outputs in order. With at least as many problems as threads, each
/// problem runs on one thread in blocks of up to 256 rows and its inner range whole: a batch of
/// small problems keeps every core busy without paying for each problem's own split over the
/// threads, which costs more than the problem itself at a few hundred points. With fewer
/// problems, each is split as [`run_tiles`] splits it.
pub fn run_tiles_batched(
    kernel: &TileKernel,
    problems: &[Vec<ArrayRef>],
) -> Result<Vec<HostArray>, ArgumentError> {
    // Every problem checked before any runs; each check's size is its run's.
    let sizes = problems
        .iter()
        .map(|arrays| check_arguments(kernel.signature, arrays))
        .collect::<Result<Vec<_>, _>>()?;
    if problems.len() < rayon::current_num_threads() {
        return problems
            .iter()
            .zip(&sizes)
            .map(|(arrays, &size)| run_into_new(kernel, arrays, size, None, true))
            .collect();
    }
    let one_thread = TileSchedule {
        row_block: 256,
        inner_chunks: 1,
    };
    problems
        .par_iter()
        .zip(&sizes)
        .map(|(arrays, &size)| run_into_new(kernel, arrays, size, Some(one_thread), false))
        .collect()
}

/// Runs a tiled kernel on `arrays` (in signature order, checked as by [`run_tiles`]) and
/// writes the output (row-major, `rows x output_dim`, the kernel's dtype) into `out`.
pub fn run_tiles_into(
    kernel: &TileKernel,
    arrays: &[ArrayRef],
    schedule: Option<TileSchedule>,
    out: OutputRef,
) -> Result<(), ArgumentError> {
    let size = check_arguments(kernel.signature, arrays)?;
    run_checked(kernel, arrays, size, schedule, out, true)
}

/// `size` is what [`check_arguments`] found for these very `arrays`. `parallel`: the row
/// blocks (and inner chunks) spread over the threads; otherwise they run on the calling
/// thread, one after another (a batch's problems, each on a thread of its own).
fn run_checked(
    kernel: &TileKernel,
    arrays: &[ArrayRef],
    size: ProblemSize,
    schedule: Option<TileSchedule>,
    out: OutputRef,
    parallel: bool,
) -> Result<(), ArgumentError> {
    let sig = kernel.signature;
    size.check_compiled_dtype(sig, kernel.dtype)?;
    let (rows, inner) = size.rows_and_inner(sig.axis);
    let expected = rows * sig.output_dim();
    if out.len() != expected || out.dtype() != kernel.dtype {
        return Err(ArgumentError::Output {
            len: out.len(),
            expected,
            dtype: kernel.dtype,
        });
    }
    let lanes = kernel.lanes.max(1);
    let inputs = TileInputs::new(sig, arrays, inner, lanes);

    let red = &sig.reduction;
    let acc_dim = red.acc_dim();
    let schedule =
        schedule.unwrap_or_else(|| TileSchedule::choose(rows, inner, rayon::current_num_threads()));
    let call = |acc: &mut [f64], row_start: usize, row_end: usize, lo: usize, hi: usize| {
        let args = inputs.args();
        // SAFETY: the pointers cover the checked argument sizes (transposed inputs padded as
        // the tile function requires), `acc` holds `row_end - row_start` accumulator rows, and
        // the tile function only reads inputs and writes those rows.
        unsafe {
            (kernel.tile)(
                args.as_ptr(),
                inputs.inner_stride as i64,
                row_start as i64,
                row_end as i64,
                lo as i64,
                hi as i64,
                acc.as_mut_ptr(),
            )
        }
    };
    let block = schedule.row_block.max(1);
    let chunks = schedule.inner_chunks.max(1);
    // Chunk boundaries on multiples of the vector width keep the loads aligned.
    let chunk_len = inner.div_ceil(chunks).div_ceil(lanes).max(1) * lanes;
    // One block of rows: its accumulators live only while the block runs, so memory stays
    // O(threads x block) beyond the inputs and the output.
    let accumulate = |start: usize, end: usize| -> Vec<f64> {
        let mut acc = vec![0.0f64; (end - start) * acc_dim];
        for row in acc.chunks_mut(acc_dim.max(1)) {
            red.init(row);
        }
        if inner == 0 || acc_dim == 0 {
            return acc;
        }
        if chunks == 1 {
            call(&mut acc, start, end, 0, inner);
            return acc;
        }
        let partials: Vec<Vec<f64>> = (1..chunks)
            .into_par_iter()
            .map(|c| {
                let mut partial = acc.clone();
                let lo = (c * chunk_len).min(inner);
                let hi = ((c + 1) * chunk_len).min(inner);
                if lo < hi {
                    call(&mut partial, start, end, lo, hi);
                }
                partial
            })
            .collect();
        call(&mut acc, start, end, 0, chunk_len.min(inner));
        // In inner order, so that ties still keep the first index. A chunk past the end left
        // its partial at the initial value, which merges as the identity.
        for partial in &partials {
            for (a, p) in acc.chunks_mut(acc_dim).zip(partial.chunks(acc_dim)) {
                red.merge(a, p);
            }
        }
        acc
    };
    let out_dim = red.output_dim();
    if rows == 0 || out_dim == 0 {
        return Ok(());
    }
    match out {
        OutputRef::F64(o) => run_blocks(
            o,
            out_dim,
            acc_dim,
            block,
            parallel,
            &accumulate,
            |a, row, _| red.finalize(a, row),
        ),
        OutputRef::F32(o) => run_blocks(
            o,
            out_dim,
            acc_dim,
            block,
            parallel,
            &accumulate,
            |a, row, wide| {
                red.finalize(a, wide);
                for (o, &x) in row.iter_mut().zip(wide.iter()) {
                    *o = x as f32;
                }
            },
        ),
    }
    Ok(())
}

/// Splits the output into blocks of rows over the threads; each block accumulates, then
/// writes its rows with `finalize(accumulator row, output row, f64 scratch row)`.
fn run_blocks<T: Send>(
    out: &mut [T],
    out_dim: usize,
    acc_dim: usize,
    block: usize,
    parallel: bool,
    accumulate: &(impl Fn(usize, usize) -> Vec<f64> + Sync),
    finalize: impl Fn(&[f64], &mut [T], &mut [f64]) + Sync,
) {
    let one_block = |(b, out_block): (usize, &mut [T])| {
        let start = b * block;
        let acc = accumulate(start, start + out_block.len() / out_dim);
        let mut scratch = vec![0.0f64; out_dim];
        for (r, row) in out_block.chunks_mut(out_dim).enumerate() {
            finalize(&acc[r * acc_dim..(r + 1) * acc_dim], row, &mut scratch);
        }
    };
    if parallel {
        out.par_chunks_mut(block * out_dim)
            .enumerate()
            .for_each(one_block);
    } else {
        out.chunks_mut(block * out_dim)
            .enumerate()
            .for_each(one_block);
    }
}

/// `rows x dim` row-major to `dim x stride` component-major, zero-padded.
fn transpose(data: DataRef, rows: usize, dim: usize, stride: usize) -> ArrayData {
    fn go<T: Copy + Default + Send + Sync>(
        v: &[T],
        rows: usize,
        dim: usize,
        stride: usize,
    ) -> Vec<T> {
        let mut out = vec![T::default(); dim * stride];
        if dim == 0 {
            return out;
        }
        out.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(c, column)| {
                for (r, slot) in column[..rows].iter_mut().enumerate() {
                    *slot = v[r * dim + c];
                }
            });
        out
    }
    match data {
        DataRef::F32(v) => ArrayData::F32(go(v, rows, dim, stride)),
        DataRef::F64(v) => ArrayData::F64(go(v, rows, dim, stride)),
    }
}

/// The inputs of one kernel as its tile function reads them: inner-indexed arguments
/// transposed and padded for `lanes`, the others as given.
pub(crate) struct TileInputs {
    _transposed: Vec<Option<ArrayData>>,
    pointers: Vec<SendPtr>,
    pub(crate) inner_stride: usize,
}

impl TileInputs {
    /// One vector of padding past the rounded-up size: a vector load that starts at any
    /// index below `inner` stays inside the buffer.
    pub(crate) fn new(
        sig: &Signature,
        arrays: &[ArrayRef],
        inner: usize,
        lanes: usize,
    ) -> TileInputs {
        let inner_category = match sig.axis {
            Axis::I => Category::J,
            Axis::J => Category::I,
        };
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
        let pointers = arrays
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
        TileInputs {
            _transposed: transposed,
            pointers,
            inner_stride,
        }
    }

    pub(crate) fn args(&self) -> Vec<*const c_void> {
        self.pointers.iter().map(|p| p.0).collect()
    }
}

/// The argument pointers are only read through, by the tile function, while the arrays they
/// point into are borrowed by [`run_tiles`].
#[derive(Clone, Copy)]
struct SendPtr(*const c_void);
// SAFETY: see above; the data behind the pointers is immutable for the whole call.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_splits_inner_only_when_rows_are_few() {
        let s = TileSchedule::choose(1_000_000, 1_000_000, 2);
        assert_eq!(s.inner_chunks, 1);
        let s = TileSchedule::choose(3, 1_000_000, 8);
        assert!(s.inner_chunks > 1, "{s:?}");
        let s = TileSchedule::choose(3, 100, 8);
        assert_eq!(s.inner_chunks, 1);
    }

    use crate::abi::{ArgSpec, Axis, Category, Signature};
    use crate::reduction::{Reduction, ReductionKind};

    /// `F = x_i + y_j` with `x = Vi(1)`, `y = Vj(1)`, reduced over j by `kind`: a tile function
    /// written in Rust against the [`TileFn`] contract (y arrives transposed, acc rows hold the
    /// reduction's accumulators, indices absolute), folding one pair at a time through the
    /// runtime's own reduction.
    unsafe extern "C" fn plus_tile<const KIND: usize>(
        args: *const *const c_void,
        inner_stride: i64,
        row_start: i64,
        row_end: i64,
        inner_start: i64,
        inner_end: i64,
        acc: *mut f64,
    ) {
        let red = test_reduction(KIND);
        let acc_dim = red.acc_dim();
        // SAFETY: the TileFn contract: args[0] holds the rows of x, args[1] y transposed
        // (inner_stride numbers), acc the block's accumulator rows.
        let (x, y, acc) = unsafe {
            let x = *args as *const f64;
            let y = *args.add(1) as *const f64;
            let rows = (row_end - row_start) as usize;
            (
                std::slice::from_raw_parts(x, row_end as usize),
                std::slice::from_raw_parts(y, inner_stride as usize),
                std::slice::from_raw_parts_mut(acc, rows * acc_dim),
            )
        };
        for (r, row) in (row_start..row_end).enumerate() {
            for j in inner_start..inner_end {
                let value = x[row as usize] + y[j as usize];
                red.fold(
                    &mut acc[r * acc_dim..(r + 1) * acc_dim],
                    &[value],
                    j as usize,
                );
            }
        }
    }

    fn test_reduction(kind: usize) -> Reduction {
        match ReductionKind::ALL[kind] {
            k @ (ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin) => {
                Reduction::with_k(k, 3, 1)
            }
            k => Reduction::new(k, 1),
        }
    }

    fn signature(kind: usize) -> Signature {
        Signature {
            name: "plus".into(),
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
            reduction: test_reduction(kind),
            axis: Axis::I,
        }
    }

    /// The scheduler (row blocks, inner chunks and their merges, threads) gives what one plain
    /// fold over every pair gives, for reductions whose tile function is written in Rust: the
    /// runtime is tested without any compiler.
    #[test]
    fn scheduler_with_rust_tile_functions_matches_a_plain_fold() {
        fn check<const KIND: usize>() {
            let sig = signature(KIND);
            let red = sig.reduction;
            let (n, m) = (7usize, 9001usize);
            let x: Vec<f64> = (0..n).map(|i| (i % 3) as f64 - 1.0).collect();
            // Small integers: many ties, so the merge order of chunks matters.
            let mut y: Vec<f64> = (0..m).map(|j| ((j * 7919) % 13) as f64 - 6.0).collect();
            y[4100] = f64::INFINITY;
            y[8000] = f64::INFINITY;
            let mut want = Vec::new();
            for &xi in &x {
                let mut acc = vec![0.0; red.acc_dim()];
                red.init(&mut acc);
                for (j, &yj) in y.iter().enumerate() {
                    red.fold(&mut acc, &[xi + yj], j);
                }
                let mut out = vec![0.0; red.output_dim()];
                red.finalize(&acc, &mut out);
                want.extend(out);
            }
            let (xs, ys) = ([n, 1], [m, 1]);
            let arrays = [ArrayRef::f64(&xs, &x), ArrayRef::f64(&ys, &y)];
            // SAFETY: plus_tile implements the contract for this signature, f64, one lane.
            let kernel = unsafe { TileKernel::new(&sig, DType::F64, 1, plus_tile::<KIND>) };
            for schedule in [
                None,
                Some(TileSchedule {
                    row_block: 1,
                    inner_chunks: 1,
                }),
                Some(TileSchedule {
                    row_block: 3,
                    inner_chunks: 5,
                }),
                Some(TileSchedule {
                    row_block: 100,
                    inner_chunks: 64,
                }),
            ] {
                let got = run_tiles(&kernel, &arrays, schedule).expect("runs");
                let ArrayData::F64(got) = got.data else {
                    unreachable!()
                };
                let same = got.iter().zip(&want).all(|(g, w)| {
                    g == w || (g - w).abs() <= 1e-12 * w.abs() || (g.is_nan() && w.is_nan())
                });
                assert!(same, "{} with {schedule:?}: {got:?} != {want:?}", red.kind);
            }
        }
        check::<0>();
        check::<1>();
        check::<2>();
        check::<3>();
        check::<4>();
        check::<5>();
        check::<6>();
        check::<7>();
        check::<9>();
        check::<12>();
        check::<13>();
        check::<14>();
    }

    /// Arrays that do not fit the signature never reach the tile function.
    #[test]
    fn arrays_are_checked_before_the_tile_function_runs() {
        unsafe extern "C" fn never(
            _: *const *const c_void,
            _: i64,
            _: i64,
            _: i64,
            _: i64,
            _: i64,
            _: *mut f64,
        ) {
            panic!("the tile function ran on unchecked arrays");
        }
        let sig = signature(0);
        // SAFETY: never called.
        let kernel = unsafe { TileKernel::new(&sig, DType::F64, 1, never) };
        let x = [1.0, 2.0];
        let y = [1.0, 2.0, 3.0];
        let short = [1.0];
        let (s2, s3, s1) = ([2usize, 1], [3usize, 1], [3usize, 1]);
        // a shape that claims more data than the slice holds
        let lying = [ArrayRef::f64(&s2, &x), ArrayRef::f64(&s1, &short)];
        assert!(matches!(
            run_tiles(&kernel, &lying, None),
            Err(ArgumentError::DataLength { .. })
        ));
        // too few arrays
        assert!(run_tiles(&kernel, &[ArrayRef::f64(&s2, &x)], None).is_err());
        // the wrong dtype for the compiled code
        let xf = [1.0f32, 2.0];
        let yf = [1.0f32, 2.0, 3.0];
        let f32s = [ArrayRef::f32(&s2, &xf), ArrayRef::f32(&s3, &yf)];
        assert!(matches!(
            run_tiles(&kernel, &f32s, None),
            Err(ArgumentError::CompiledDType { .. })
        ));
        let _ = y;
    }

    #[test]
    fn transpose_pads_with_zeros() {
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ArrayData::F32(t) = transpose(DataRef::F32(&data), 3, 2, 5) else {
            unreachable!()
        };
        assert_eq!(t, vec![1.0, 3.0, 5.0, 0.0, 0.0, 2.0, 4.0, 6.0, 0.0, 0.0]);
    }
}
