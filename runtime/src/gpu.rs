//! The GPU kernels' calling convention and their 1-D schedule, as plain data, with an emulator
//! that runs the schedule's exact index arithmetic on the CPU. The compiler emits the kernels
//! (`keopsc::codegen::nvptx`, PTX for `sm_80`, which the driver also JIT-compiles for later
//! GPUs); this module says how to launch one and what it computes, so that machines without
//! a GPU can test the schedule against the interpreter.
//!
//! # The kernel (`GpuTileFn`)
//!
//! As KeOps's `GpuConv1D`: one thread per output row, the reduced (inner) index walked in tiles
//! of `block` indices staged through shared memory; and, with the grid's second dimension, as
//! its `GpuConv2D`: the inner range split into parts, one per block row, whose partial results
//! the caller merges (for few output rows, or long reductions, which would leave most of the
//! GPU idle).
//!
//! ```text
//! .entry keops_gpu_tile_1d(
//!     .param .u64 arg_0, ..., .param .u64 arg_{n-1},   // global pointers, in signature order
//!     .param .u64 rows, .param .u64 inner,             // i64: output rows, inner size
//!     .param .u64 chunk,                               // i64: inner indices per part
//!     .param .u64 acc)                                  // global pointer, f64
//! ```
//!
//! - **Launch.** `blockDim = (block, 1, 1)` exactly (the kernel's tile size is compiled in,
//!   see [`GpuLaunch1D`]), `gridDim = (ceil(rows / block), parts, 1)` with
//!   `parts = ceil(inner / chunk)` ([`InnerSplit`]; `parts = 1`, `chunk >= inner` is the 1-D
//!   schedule), no dynamic shared memory (the tile is a static `.shared` array of
//!   [`GpuLaunch1D::shared_bytes`]). Not launched when `rows == 0`.
//! - **Inputs read.** `arg_k` points at argument `k` of the signature, row-major (`rows x dim`
//!   for row-indexed arguments, `inner x dim` for inner-indexed ones, `dim` numbers for
//!   parameters) in the kernel's dtype, naturally aligned: the layout of the caller's arrays,
//!   so device buffers of other frameworks are read in place. Nothing behind them is written.
//! - **Output written.** `acc` holds `parts x rows x acc_dim` f64 numbers: for each part, the
//!   reduction's accumulator layout ([`Reduction::acc_dim`]) with absolute indices, of the
//!   pairs of that part's inner range `[y chunk, min((y + 1) chunk, inner))`; thread `t` of block
//!   `(b, y)` writes row `b * block + t` of part `y` when it is below `rows`, the whole row, and
//!   nothing else. The caller merges the parts in order ([`merge_parts`]: the reduction's merge,
//!   ties to the smaller index) and finalizes the rows ([`Reduction::finalize`]), as the CPU's
//!   tiles do. `acc` must not overlap the inputs.
//! - **Schedule.** A thread computes its row's parts of the formula once, then for each tile
//!   `[jt, jt + block)` of its part's inner range: thread `t` computes the inner-only parts of
//!   index `jt + t` (when in the range) into shared memory; after a barrier, every thread folds
//!   the tile's indices in increasing order into accumulators of the element type started from
//!   the reduction's initial value (indices relative to `jt`), then merges them into its f64
//!   accumulator row (indices made absolute) with the reduction's merge, ties to the smaller
//!   index; a second barrier guards the shared tile. Threads past the last row fold the last
//!   row (their loads stay in bounds and they reach every barrier) and write nothing.
//!
//! [`emulate_2d`] (and [`emulate_1d`], one part) runs exactly this on the CPU.
//!
//! # The block-sparse kernel
//!
//! For KeOps's `ranges` ([`Ranges`]), as its `GpuConv1D_ranges`: the same thread code, but a
//! block's rows and inner ranges come from a work list ([`GpuRangesTable`]) instead of the
//! grid's shape, so only the kept pairs are visited.
//!
//! ```text
//! .entry keops_gpu_tile_ranges(
//!     .param .u64 arg_0, ..., .param .u64 arg_{n-1},   // as above
//!     .param .u64 blocks,                              // global pointer, i64: 4 per block
//!     .param .u64 ranges,                              // global pointer, i64: 2 per range
//!     .param .u64 acc)                                  // global pointer, f64
//! ```
//!
//! - **Launch.** `blockDim = (block, 1, 1)` (the kernel's compiled block), `gridDim =
//!   (table.block_count(), 1, 1)`; not launched when the table has no block.
//! - **Work list.** Block `b` reads `blocks[4b .. 4b + 4]`: rows `[first, end)` (at most
//!   `block` of them, within one cluster) and the entries `[from, to)` of `ranges`, each an inner
//!   range `[start, end)`.
//! - **Output written.** `acc` holds `rows x acc_dim` f64 numbers that the caller set to the
//!   reduction's initial value ([`GpuRangesTable::initial_accumulators`]); thread `t` of block
//!   `b` writes row `first + t` when it is below `end`, and nothing else: rows in no block keep
//!   the initial value.
//! - **Schedule.** As the 1-D kernel's, the block's ranges walked in order, each in tiles of
//!   `block` indices starting at the range's start (index slots made absolute); every thread of
//!   a block reads the same entry, so all reach the same barriers. Threads past `end` compute
//!   row `end - 1`.
//!
//! [`emulate_ranges`] runs exactly this on the CPU.

use crate::ranges::Ranges;
use crate::reduction::Reduction;
use num_traits::Float;

/// The 1-D kernel's entry point.
pub const GPU_TILE_SYMBOL: &str = "keops_gpu_tile_1d";
/// The block-sparse kernel's entry point.
pub const GPU_RANGES_SYMBOL: &str = "keops_gpu_tile_ranges";

/// A kernel's GPU code for one dtype, as a module stores it (`keopsc build --gpu`): the PTX
/// text of its 1-D kernel or of its block-sparse one, the entry point (which says which:
/// [`GPU_TILE_SYMBOL`] or [`GPU_RANGES_SYMBOL`]) and the launch shape it was compiled for. Loading
/// it needs the CUDA driver (`keops_runtime::cuda`, feature `cuda`); holding it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuCode {
    pub dtype: crate::arrays::DType,
    pub ptx: std::sync::Arc<str>,
    pub symbol: String,
    pub launch: GpuLaunch1D,
    /// The oldest GPU architecture the PTX targets (`sm_80`); the driver JIT-compiles it for
    /// later ones.
    pub arch: String,
}

/// The launch shape of a 1-D kernel: its compiled block size and static shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLaunch1D {
    /// Threads per block, and inner indices per shared tile.
    pub block: u32,
    /// Bytes of the static shared tile (numbers staged per inner index x block x element).
    pub shared_bytes: u32,
}

impl GpuLaunch1D {
    /// Blocks for `rows` output rows (0 when there are none: nothing to launch).
    pub fn grid(&self, rows: usize) -> usize {
        rows.div_ceil(self.block as usize)
    }

    /// The tiles of the inner range, `[start, end)` each, in the order every thread walks them.
    pub fn tiles(&self, inner: usize) -> impl Iterator<Item = (usize, usize)> {
        let block = self.block as usize;
        (0..inner)
            .step_by(block)
            .map(move |start| (start, (start + block).min(inner)))
    }
}

/// How the inner range is cut into parts along the grid's second dimension: `parts` ranges
/// of `chunk` indices (the last one shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerSplit {
    pub chunk: usize,
    pub parts: usize,
}

impl InnerSplit {
    /// One part: the 1-D schedule.
    pub fn whole(inner: usize) -> InnerSplit {
        InnerSplit {
            chunk: inner.max(1),
            parts: 1,
        }
    }

    /// About `parts` parts of whole tiles of `block` indices.
    pub fn with_parts(inner: usize, parts: usize, block: usize) -> InnerSplit {
        let block = block.max(1);
        let tiles = inner.div_ceil(block).max(1);
        let per_part = tiles.div_ceil(parts.clamp(1, tiles));
        let chunk = per_part * block;
        InnerSplit {
            chunk,
            parts: inner.div_ceil(chunk).max(1),
        }
    }

    /// The split for `rows` output rows and an inner range of `inner` on a GPU of
    /// `multiprocessors` streaming multiprocessors: one part while the rows alone give every
    /// multiprocessor two blocks; otherwise enough parts for about four blocks each, every
    /// part at least four tiles long, and the partial accumulators at most 2^26 numbers.
    pub fn choose(
        rows: usize,
        inner: usize,
        block: usize,
        acc_dim: usize,
        multiprocessors: usize,
    ) -> InnerSplit {
        let block = block.max(1);
        let row_blocks = rows.div_ceil(block).max(1);
        let target = 4 * multiprocessors.max(1);
        if 2 * row_blocks >= target {
            return InnerSplit::whole(inner);
        }
        let by_occupancy = target.div_ceil(row_blocks);
        let by_length = inner / (4 * block);
        let by_memory = (1usize << 26) / (rows * acc_dim.max(1)).max(1);
        let parts = by_occupancy.min(by_length).min(by_memory);
        if parts <= 1 {
            InnerSplit::whole(inner)
        } else {
            InnerSplit::with_parts(inner, parts, block)
        }
    }

    /// The inner range `[start, end)` of part `part`.
    pub fn range(&self, part: usize, inner: usize) -> (usize, usize) {
        let start = (part * self.chunk).min(inner);
        (start, (start + self.chunk).min(inner))
    }
}

/// The work list of the block-sparse kernel (`keops_gpu_tile_ranges`): each row cluster of a
/// [`Ranges`] cut into blocks of at most `block` rows, every block with its cluster's slice of
/// inner ranges. Clusters that visit no range get no block (their rows keep the initial
/// value, as the CPU's do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuRangesTable {
    /// Four numbers per block: its first row, its end row, and the first and end entries of
    /// `inner` it visits.
    pub blocks: Vec<i64>,
    /// Two numbers per inner range, `[start, end)`, the ranges' own order.
    pub inner: Vec<i64>,
}

impl GpuRangesTable {
    /// The table of `ranges` (checked: [`Ranges::check`]) for blocks of `block` threads.
    pub fn new(ranges: &Ranges, block: usize) -> GpuRangesTable {
        let block = block.max(1);
        let mut blocks = Vec::new();
        let mut from = 0;
        for (&(row_start, row_end), &to) in ranges.rows.iter().zip(&ranges.slices) {
            if to > from {
                for first in (row_start..row_end).step_by(block) {
                    let end = (first + block).min(row_end);
                    blocks.extend([first, end, from, to].map(|v| v as i64));
                }
            }
            from = to;
        }
        let inner = ranges
            .inner
            .iter()
            .flat_map(|&(start, end)| [start as i64, end as i64])
            .collect();
        GpuRangesTable { blocks, inner }
    }

    /// Blocks of the launch (its grid).
    pub fn block_count(&self) -> usize {
        self.blocks.len() / 4
    }

    /// Block `b`: `(first row, end row, first range, end range)`.
    pub fn block(&self, b: usize) -> (usize, usize, usize, usize) {
        let e = &self.blocks[4 * b..4 * b + 4];
        (e[0] as usize, e[1] as usize, e[2] as usize, e[3] as usize)
    }

    /// Inner range `k`, `[start, end)`.
    pub fn range(&self, k: usize) -> (usize, usize) {
        (self.inner[2 * k] as usize, self.inner[2 * k + 1] as usize)
    }

    /// The accumulators the caller hands the kernel: every row at the reduction's initial
    /// value (`rows x acc_dim`).
    pub fn initial_accumulators(&self, reduction: &Reduction, rows: usize) -> Vec<f64> {
        let acc_dim = reduction.acc_dim();
        let mut acc = vec![0.0f64; rows * acc_dim];
        if acc_dim > 0 {
            for row in acc.chunks_mut(acc_dim) {
                reduction.init(row);
            }
        }
        acc
    }
}

/// The rows' accumulators from the parts' (`parts x rows x acc_dim`, part after part): each
/// row's parts merged in order with the reduction's merge (ties to the smaller index, since
/// later parts hold later indices).
pub fn merge_parts(reduction: &Reduction, partial: &[f64], parts: usize, rows: usize) -> Vec<f64> {
    let acc_dim = reduction.acc_dim();
    let size = rows * acc_dim;
    assert_eq!(
        partial.len(),
        parts * size,
        "parts x rows x acc_dim accumulators"
    );
    let mut acc = partial[..size].to_vec();
    for part in 1..parts {
        let from = &partial[part * size..(part + 1) * size];
        for (row, other) in acc
            .chunks_mut(acc_dim.max(1))
            .zip(from.chunks(acc_dim.max(1)))
        {
            reduction.merge(row, other);
        }
    }
    acc
}

/// Runs the 1-D schedule of [`GpuLaunch1D`] on the CPU: every block, every thread, every tile,
/// the per-thread fold in the element type `T` and the merge into f64 accumulators, and the
/// final write, as the kernel does them. `pair(row, inner_index, value)` writes the formula's
/// value (`F` then `V`, [`Reduction::formula_dim`] numbers) for one pair. Returns the `acc`
/// buffer the kernel would write (`rows x acc_dim`, f64).
///
/// The kernel seeds its tile accumulators of the K-smallest and LogSumExp families from the
/// row's f64 accumulator (a cheaper fold, the same result up to rounding: seeded entries never
/// come back through the merge, and sums are rescaled to the same maximum); the emulator
/// starts them from the initial value, which is what the merge's rules make equivalent.
pub fn emulate_1d<T: Float>(
    reduction: &Reduction,
    launch: GpuLaunch1D,
    rows: usize,
    inner: usize,
    pair: impl FnMut(usize, usize, &mut [f64]),
) -> Vec<f64> {
    emulate_2d::<T>(
        reduction,
        launch,
        InnerSplit::whole(inner),
        rows,
        inner,
        pair,
    )
}

/// [`emulate_1d`] with the inner range cut by `split`: every block `(b, y)` of the grid folds
/// part `y`'s range into its own accumulators. Returns the `parts x rows x acc_dim` buffer the
/// kernel would write (merge it with [`merge_parts`]).
pub fn emulate_2d<T: Float>(
    reduction: &Reduction,
    launch: GpuLaunch1D,
    split: InnerSplit,
    rows: usize,
    inner: usize,
    mut pair: impl FnMut(usize, usize, &mut [f64]),
) -> Vec<f64> {
    let acc_dim = reduction.acc_dim();
    let block = launch.block as usize;
    let mut acc_out = vec![f64::NAN; split.parts * rows * acc_dim];
    let mut scratch = PairScratch::<T>::new(reduction);
    for (part, block_index) in
        (0..split.parts).flat_map(|y| (0..launch.grid(rows)).map(move |b| (y, b)))
    {
        let (lo, hi) = split.range(part, inner);
        for thread in 0..block {
            let row = block_index * block + thread;
            // Threads past the last row compute the last row and write nothing.
            let computed_row = row.min(rows - 1);
            let mut acc = vec![0.0f64; acc_dim];
            reduction.init(&mut acc);
            fold_tiles(
                reduction,
                launch,
                computed_row,
                (lo, hi),
                &mut pair,
                &mut scratch,
                &mut acc,
            );
            if row < rows {
                let first = (part * rows + row) * acc_dim;
                acc_out[first..first + acc_dim].copy_from_slice(&acc);
            }
        }
    }
    acc_out
}

/// Runs the block-sparse kernel (`keops_gpu_tile_ranges`, see the module's documentation) on
/// the CPU: every block of `table`, every thread, each inner range of the block's slice in
/// order with the tiles of [`emulate_1d`] inside it. Returns the `rows x acc_dim` buffer the
/// kernel leaves (its rows start from the reduction's initial value, as the caller uploads
/// them: rows in no block keep it).
pub fn emulate_ranges<T: Float>(
    reduction: &Reduction,
    launch: GpuLaunch1D,
    table: &GpuRangesTable,
    rows: usize,
    mut pair: impl FnMut(usize, usize, &mut [f64]),
) -> Vec<f64> {
    let mut acc_out = table.initial_accumulators(reduction, rows);
    let acc_dim = reduction.acc_dim();
    let mut scratch = PairScratch::<T>::new(reduction);
    for b in 0..table.block_count() {
        let (row_start, row_end, slice_start, slice_end) = table.block(b);
        for thread in 0..launch.block as usize {
            let row = row_start + thread;
            let computed_row = row.min(row_end - 1);
            let mut acc = vec![0.0f64; acc_dim];
            reduction.init(&mut acc);
            for k in slice_start..slice_end {
                fold_tiles(
                    reduction,
                    launch,
                    computed_row,
                    table.range(k),
                    &mut pair,
                    &mut scratch,
                    &mut acc,
                );
            }
            if row < row_end {
                acc_out[row * acc_dim..(row + 1) * acc_dim].copy_from_slice(&acc);
            }
        }
    }
    acc_out
}

/// One pair's value, in f64 as `pair` writes it and in the element type the kernel folds.
struct PairScratch<T> {
    value: Vec<f64>,
    value_t: Vec<T>,
}

impl<T: Float> PairScratch<T> {
    fn new(reduction: &Reduction) -> PairScratch<T> {
        PairScratch {
            value: vec![0.0; reduction.formula_dim()],
            value_t: vec![T::zero(); reduction.formula_dim()],
        }
    }
}

/// One thread's walk over the inner range `[lo, hi)`: tiles of `launch.block` indices, each
/// folded in the element type from the initial value (indices relative to the tile) and
/// merged into the f64 accumulators `acc` (indices made absolute).
fn fold_tiles<T: Float>(
    reduction: &Reduction,
    launch: GpuLaunch1D,
    row: usize,
    (lo, hi): (usize, usize),
    pair: &mut impl FnMut(usize, usize, &mut [f64]),
    scratch: &mut PairScratch<T>,
    acc: &mut [f64],
) {
    let acc_dim = reduction.acc_dim();
    for (start, end) in launch.tiles(hi - lo).map(|(s, e)| (s + lo, e + lo)) {
        let mut tile_acc = vec![T::zero(); acc_dim];
        reduction.init(&mut tile_acc);
        for t in 0..end - start {
            pair(row, start + t, &mut scratch.value);
            for (x, &v) in scratch.value_t.iter_mut().zip(&scratch.value) {
                *x = T::from(v).unwrap_or_else(T::nan);
            }
            reduction.fold(&mut tile_acc, &scratch.value_t, t);
        }
        let tile_acc: Vec<f64> = tile_acc
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let x = x.to_f64().unwrap_or(f64::NAN);
                if reduction.is_index_slot(k) {
                    x + start as f64
                } else {
                    x
                }
            })
            .collect();
        reduction.merge(acc, &tile_acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduction::ReductionKind;

    #[test]
    fn tiles_cover_the_inner_range_once_in_order() {
        let launch = GpuLaunch1D {
            block: 32,
            shared_bytes: 0,
        };
        let tiles: Vec<_> = launch.tiles(70).collect();
        assert_eq!(tiles, vec![(0, 32), (32, 64), (64, 70)]);
        assert_eq!(launch.tiles(0).count(), 0);
        assert_eq!(launch.grid(0), 0);
        assert_eq!(launch.grid(33), 2);
    }

    #[test]
    fn splits_cover_the_inner_range_in_whole_tiles() {
        let split = InnerSplit::with_parts(1000, 3, 32);
        assert_eq!(split.chunk % 32, 0);
        let ranges: Vec<_> = (0..split.parts).map(|p| split.range(p, 1000)).collect();
        assert_eq!(ranges.first().map(|r| r.0), Some(0));
        assert_eq!(ranges.last().map(|r| r.1), Some(1000));
        assert!(ranges
            .windows(2)
            .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
        assert_eq!(InnerSplit::with_parts(10, 5, 32).parts, 1);
        assert_eq!(InnerSplit::whole(0).range(0, 0), (0, 0));
        // Many rows: one part. Few rows and a long range: parts of at least four tiles.
        assert_eq!(
            InnerSplit::choose(1_000_000, 1_000_000, 256, 1, 132).parts,
            1
        );
        let few = InnerSplit::choose(100, 1_000_000, 256, 1, 132);
        assert!(few.parts > 100 && few.chunk >= 4 * 256, "{few:?}");
        assert_eq!(InnerSplit::choose(100, 2000, 256, 1, 132).parts, 1);
    }

    #[test]
    fn split_argmin_keeps_the_first_index_across_parts() {
        let red = Reduction::new(ReductionKind::ArgMin, 1);
        let launch = GpuLaunch1D {
            block: 4,
            shared_bytes: 0,
        };
        // The minimum 0 at j = 4 and 13: parts of 8 indices put them in different parts.
        let split = InnerSplit::with_parts(17, 3, 4);
        assert_eq!(split.parts, 3);
        let partial = emulate_2d::<f32>(&red, launch, split, 2, 17, |_, j, v| {
            v[0] = if j == 4 || j == 13 {
                0.0
            } else {
                1.0 + j as f64
            };
        });
        let acc = merge_parts(&red, &partial, split.parts, 2);
        assert_eq!(acc, vec![0.0, 4.0, 0.0, 4.0]);
    }

    #[test]
    fn ranges_tables_cut_clusters_into_blocks_and_skip_empty_ones() {
        let ranges = Ranges {
            rows: vec![(0, 5), (5, 5), (7, 9), (9, 12)],
            slices: vec![2, 3, 3, 4],
            inner: vec![(0, 3), (6, 8), (2, 2), (1, 9)],
        };
        let table = GpuRangesTable::new(&ranges, 4);
        // Cluster 0 (5 rows) in two blocks; the empty cluster and the one without ranges
        // none; the last one in one.
        assert_eq!(table.block_count(), 3);
        assert_eq!(table.block(0), (0, 4, 0, 2));
        assert_eq!(table.block(1), (4, 5, 0, 2));
        assert_eq!(table.block(2), (9, 12, 3, 4));
        assert_eq!(table.range(1), (6, 8));
    }

    #[test]
    fn emulated_ranges_visit_the_kept_pairs_and_keep_the_first_index() {
        // Rows 0..7 in clusters; row r's value at j is |j - 2r| (ties of the minimum at equal
        // distance on both sides: the smaller index must win).
        let ranges = Ranges {
            rows: vec![(0, 3), (3, 4), (5, 7)],
            slices: vec![2, 2, 4],
            inner: vec![(0, 2), (3, 9), (4, 6), (10, 17)],
        };
        let value = |r: usize, j: usize| (j as f64 - 2.0 * r as f64).abs();
        let launch = GpuLaunch1D {
            block: 2,
            shared_bytes: 0,
        };
        let table = GpuRangesTable::new(&ranges, 2);
        let kinds = [
            Reduction::new(ReductionKind::Sum, 1),
            Reduction::new(ReductionKind::ArgMin, 1),
        ];
        for red in kinds {
            let acc = emulate_ranges::<f32>(&red, launch, &table, 8, |r, j, v| v[0] = value(r, j));
            let acc_dim = red.acc_dim();
            for r in 0..8 {
                let mut expected = vec![0.0; acc_dim];
                red.init(&mut expected);
                for (c, &(a, b)) in ranges.rows.iter().enumerate() {
                    let from = if c == 0 { 0 } else { ranges.slices[c - 1] };
                    if (a..b).contains(&r) {
                        for &(s, e) in &ranges.inner[from..ranges.slices[c]] {
                            for j in s..e {
                                let mut one = vec![0.0; acc_dim];
                                red.init(&mut one);
                                red.fold(&mut one, &[value(r, j)], 0);
                                if red.is_index_slot(1) {
                                    one[1] += j as f64;
                                }
                                red.merge(&mut expected, &one);
                            }
                        }
                    }
                }
                assert_eq!(
                    &acc[r * acc_dim..(r + 1) * acc_dim],
                    &expected[..],
                    "{red:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn emulated_argmin_keeps_the_first_index_across_tiles() {
        let red = Reduction::new(ReductionKind::ArgMin, 1);
        let launch = GpuLaunch1D {
            block: 4,
            shared_bytes: 0,
        };
        // Row r: the values (j - 5)^2 rounded down to even, minimum 0 at j = 4 and 5 (tie: 4).
        let acc = emulate_1d::<f32>(&red, launch, 3, 11, |_, j, v| {
            let d = j as f64 - 5.0;
            v[0] = (d * d / 2.0).floor() * 2.0;
        });
        for r in 0..3 {
            assert_eq!(&acc[r * 2..r * 2 + 2], &[0.0, 4.0]);
        }
    }
}
