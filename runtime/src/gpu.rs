//! The GPU kernels' calling convention and their 1-D schedule, as plain data, with an emulator
//! that runs the schedule's exact index arithmetic on the CPU. The compiler emits the kernels
//! (`keopsc::codegen::nvptx`, PTX for `sm_80`, which the driver also JIT-compiles for later
//! GPUs); this module says how to launch one and what it computes, so that machines without
//! a GPU can test the schedule against the interpreter.
//!
//! # The 1-D kernel (`GpuTileFn`)
//!
//! As KeOps's `GpuConv1D`: one thread per output row, the reduced (inner) index walked in tiles
//! of `block` indices staged through shared memory.
//!
//! ```text
//! .entry keops_gpu_tile_1d(
//!     .param .u64 arg_0, ..., .param .u64 arg_{n-1},   // global pointers, in signature order
//!     .param .u64 rows, .param .u64 inner,             // i64: output rows, inner size
//!     .param .u64 acc)                                  // global pointer, f64
//! ```
//!
//! - **Launch.** `blockDim = (block, 1, 1)` exactly (the kernel's tile size is compiled in,
//!   see [`GpuLaunch1D`]), `gridDim = (ceil(rows / block), 1, 1)`, no dynamic shared memory
//!   (the tile is a static `.shared` array of [`GpuLaunch1D::shared_bytes`]). Not launched
//!   when `rows == 0`.
//! - **Inputs read.** `arg_k` points at argument `k` of the signature, row-major (`rows x dim`
//!   for row-indexed arguments, `inner x dim` for inner-indexed ones, `dim` numbers for
//!   parameters) in the kernel's dtype, naturally aligned: the layout of the caller's arrays,
//!   so device buffers of other frameworks are read in place. Nothing behind them is written.
//! - **Output written.** `acc` holds `rows x acc_dim` f64 numbers, the reduction's accumulator
//!   layout ([`Reduction::acc_dim`]) with absolute indices; thread `t` of block `b` writes row
//!   `b * block + t` when it is below `rows`, the whole row, and nothing else. The caller
//!   finalizes the rows ([`Reduction::finalize`]), as the CPU's tiles do. `acc` must not
//!   overlap the inputs.
//! - **Schedule.** A thread computes its row's parts of the formula once, then for each tile
//!   `[jt, jt + block)` of the inner range: thread `t` computes the inner-only parts of index
//!   `jt + t` (when below `inner`) into shared memory; after a barrier, every thread folds the
//!   tile's indices in increasing order into accumulators of the element type started from
//!   the reduction's initial value (indices relative to `jt`), then merges them into its f64
//!   accumulator row (indices made absolute) with the reduction's merge, ties to the smaller
//!   index; a second barrier guards the shared tile. Threads past the last row fold the last
//!   row (their loads stay in bounds and they reach every barrier) and write nothing.
//!
//! [`emulate_1d`] runs exactly this on the CPU.

use crate::reduction::Reduction;
use num_traits::Float;

/// A kernel's GPU code for one dtype, as a module stores it (`keopsc build --gpu`): the PTX
/// text of its 1-D kernel, the entry point and the launch shape it was compiled for. Loading
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
    mut pair: impl FnMut(usize, usize, &mut [f64]),
) -> Vec<f64> {
    let acc_dim = reduction.acc_dim();
    let block = launch.block as usize;
    let mut acc_out = vec![f64::NAN; rows * acc_dim];
    let mut value = vec![0.0f64; reduction.formula_dim()];
    let mut value_t = vec![T::zero(); reduction.formula_dim()];
    for block_index in 0..launch.grid(rows) {
        for thread in 0..block {
            let row = block_index * block + thread;
            // Threads past the last row compute the last row and write nothing.
            let computed_row = row.min(rows - 1);
            let mut acc = vec![0.0f64; acc_dim];
            reduction.init(&mut acc);
            for (start, end) in launch.tiles(inner) {
                let mut tile_acc = vec![T::zero(); acc_dim];
                reduction.init(&mut tile_acc);
                for t in 0..end - start {
                    pair(computed_row, start + t, &mut value);
                    for (x, &v) in value_t.iter_mut().zip(&value) {
                        *x = T::from(v).unwrap_or_else(T::nan);
                    }
                    reduction.fold(&mut tile_acc, &value_t, t);
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
                reduction.merge(&mut acc, &tile_acc);
            }
            if row < rows {
                acc_out[row * acc_dim..(row + 1) * acc_dim].copy_from_slice(&acc);
            }
        }
    }
    acc_out
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
