//! The NVPTX target: what LLVM needs to generate PTX (triple, architecture, features), the
//! resources of the GPUs that run it (a table per architecture, from the CUDA programming
//! guide's "compute capabilities" table), and the block-size policy that follows from them:
//! the largest block whose shared tile fits, then, once the registers of the code are known
//! (from `ptxas`, or from the driver after loading), the block that keeps the most warps
//! resident on a multiprocessor.

use std::fmt;

/// LLVM's triple for CUDA devices.
pub const NVPTX_TRIPLE: &str = "nvptx64-nvidia-cuda";
/// The architecture PTX is generated for: Ampere's, which later drivers JIT-compile for Hopper
/// and after.
pub const PTX_ARCH: &str = "sm_80";
/// Threads per block at most: KeOps uses 192; 256 keeps 8 warps per block and leaves ptxas up
/// to 255 registers per thread (65536 / 256).
pub const MAX_BLOCK: u32 = 256;
/// Threads of a warp: a block is a whole number of them.
pub const WARP: u32 = 32;
/// Static shared memory a kernel may declare without opting in (48 KiB on every GPU since
/// Kepler).
pub const MAX_STATIC_SHARED_BYTES: u32 = 48 << 10;

/// What one GPU architecture offers a kernel per streaming multiprocessor (SM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuArch {
    pub name: &'static str,
    /// 32-bit registers of an SM.
    pub registers_per_sm: u32,
    /// Registers are given to warps in units of this many.
    pub register_unit: u32,
    pub max_registers_per_thread: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    /// Shared memory of an SM that blocks may use (the largest carve-out).
    pub shared_per_sm: u32,
    /// Shared memory the system keeps per resident block.
    pub shared_reserved_per_block: u32,
}

/// Ampere (A100).
pub const SM_80: GpuArch = GpuArch {
    name: "sm_80",
    registers_per_sm: 65536,
    register_unit: 256,
    max_registers_per_thread: 255,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    shared_per_sm: 164 << 10,
    shared_reserved_per_block: 1 << 10,
};

/// Hopper (H100, H200).
pub const SM_90: GpuArch = GpuArch {
    name: "sm_90",
    registers_per_sm: 65536,
    register_unit: 256,
    max_registers_per_thread: 255,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    shared_per_sm: 228 << 10,
    shared_reserved_per_block: 1 << 10,
};

/// The architectures the PTX is checked and tuned for (`ptxas` assembles it for each).
pub const ARCHS: [GpuArch; 2] = [SM_80, SM_90];

/// What bounds the blocks resident on an SM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OccupancyLimit {
    Registers,
    SharedMemory,
    Threads,
    Blocks,
}

/// How many blocks of a kernel an SM holds at once, and why no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks_per_sm: u32,
    pub warps_per_sm: u32,
    pub limit: OccupancyLimit,
}

impl Occupancy {
    /// Resident warps over the most an SM can hold.
    pub fn fraction(&self, arch: &GpuArch) -> f64 {
        f64::from(self.warps_per_sm) / f64::from(arch.max_threads_per_sm / WARP)
    }
}

impl GpuArch {
    pub fn by_name(name: &str) -> Option<&'static GpuArch> {
        ARCHS.iter().find(|a| a.name == name)
    }

    /// The occupancy of blocks of `block` threads using `registers` registers per thread and
    /// `shared_bytes` of shared memory per block (the CUDA occupancy calculator's rules:
    /// registers given per warp in whole units, shared memory per block plus what the system
    /// reserves).
    pub fn occupancy(&self, block: u32, registers: u32, shared_bytes: u32) -> Occupancy {
        let warps = block.div_ceil(WARP).max(1);
        let per_warp = (registers.max(1) * WARP).div_ceil(self.register_unit) * self.register_unit;
        let by_registers = (self.registers_per_sm / per_warp) / warps;
        let by_shared = if shared_bytes == 0 {
            u32::MAX
        } else {
            self.shared_per_sm / (shared_bytes + self.shared_reserved_per_block)
        };
        let by_threads = self.max_threads_per_sm / (warps * WARP);
        let candidates = [
            (by_registers, OccupancyLimit::Registers),
            (by_shared, OccupancyLimit::SharedMemory),
            (by_threads, OccupancyLimit::Threads),
            (self.max_blocks_per_sm, OccupancyLimit::Blocks),
        ];
        let (blocks, limit) = candidates
            .into_iter()
            .min_by_key(|&(n, _)| n)
            .expect("four candidates");
        Occupancy {
            blocks_per_sm: blocks,
            warps_per_sm: blocks * warps,
            limit,
        }
    }
}

/// The GPU code is generated for: PTX for [`PTX_ARCH`], its block size tuned for the
/// architectures of [`ARCHS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuTarget {
    pub ptx_arch: &'static str,
    pub tuned_for: &'static [GpuArch],
    /// `exp` in f32 through the special-function unit's `ex2.approx` (a few ULP, see
    /// `codegen::math`) instead of the polynomial the CPU uses (1 ULP).
    pub fast_exp: bool,
}

impl Default for GpuTarget {
    fn default() -> GpuTarget {
        GpuTarget {
            ptx_arch: PTX_ARCH,
            tuned_for: &ARCHS,
            fast_exp: true,
        }
    }
}

impl fmt::Display for GpuTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tuned: Vec<&str> = self.tuned_for.iter().map(|a| a.name).collect();
        write!(
            f,
            "{NVPTX_TRIPLE} {} (blocks tuned for {}), f32 exp {}",
            self.ptx_arch,
            tuned.join(", "),
            if self.fast_exp {
                "through ex2.approx"
            } else {
                "by polynomial"
            }
        )
    }
}

impl GpuTarget {
    /// The largest block of whole warps whose shared tile of `per_index_bytes` per inner index
    /// fits the static shared memory; `None` when not even a warp's does.
    pub fn largest_block(&self, per_index_bytes: usize) -> Option<u32> {
        let block = (MAX_STATIC_SHARED_BYTES as usize)
            .checked_div(per_index_bytes)
            .map_or(MAX_BLOCK as usize, |b| b.min(MAX_BLOCK as usize)) as u32
            / WARP
            * WARP;
        (block > 0).then_some(block)
    }

    /// The block (whole warps, at most `largest`) for code using `registers` per thread and
    /// `per_index_bytes` of shared tile per thread: the largest whose resident warps, summed
    /// over the architectures tuned for, are within an eighth of the most any block reaches
    /// (a larger block stages and synchronises less per pair, which is worth a few warps).
    pub fn block_for_occupancy(&self, largest: u32, registers: u32, per_index_bytes: usize) -> u32 {
        let resident = |block: u32| -> u32 {
            let shared = (block as usize * per_index_bytes).min(u32::MAX as usize) as u32;
            self.tuned_for
                .iter()
                .map(|arch| arch.occupancy(block, registers, shared).warps_per_sm)
                .sum()
        };
        let blocks = (1..=largest / WARP).map(|w| w * WARP);
        let best = blocks.clone().map(resident).max().unwrap_or(0);
        blocks
            .rev()
            .find(|&block| resident(block) * 8 >= best * 7)
            .unwrap_or(WARP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures of NVIDIA's occupancy calculator for compute capability 9.0.
    #[test]
    fn occupancy_follows_the_calculators_rules() {
        // 32 registers, 256 threads, no shared memory: 8 blocks fill the 64 warps.
        let o = SM_90.occupancy(256, 32, 0);
        assert_eq!((o.blocks_per_sm, o.warps_per_sm), (8, 64));
        // 40 registers: 1280 per warp, 51 warps fit, 6 blocks of 8 warps.
        let o = SM_90.occupancy(256, 40, 0);
        assert_eq!((o.blocks_per_sm, o.limit), (6, OccupancyLimit::Registers));
        // ... while blocks of 96 threads fit 17 times (51 warps).
        assert_eq!(SM_90.occupancy(96, 40, 0).warps_per_sm, 51);
        // 48 KiB tiles: 228 KiB hold 4 blocks with their reserved KiB (sm_80: 3).
        let o = SM_90.occupancy(256, 32, 48 << 10);
        assert_eq!(
            (o.blocks_per_sm, o.limit),
            (4, OccupancyLimit::SharedMemory)
        );
        assert_eq!(SM_80.occupancy(256, 32, 48 << 10).blocks_per_sm, 3);
        // One warp per block: at most 32 blocks.
        let o = SM_90.occupancy(32, 16, 0);
        assert_eq!((o.warps_per_sm, o.limit), (32, OccupancyLimit::Blocks));
        assert!((SM_90.occupancy(256, 255, 0).fraction(&SM_90) - 0.125).abs() < 1e-12);
    }

    #[test]
    fn the_block_keeps_the_most_warps_resident() {
        let target = GpuTarget::default();
        // Few registers: the largest block.
        assert_eq!(target.block_for_occupancy(256, 32, 12), 256);
        // 40 registers: 96-thread blocks would keep 51 warps, 256-thread ones keep 48.
        assert_eq!(target.block_for_occupancy(256, 40, 0), 256);
        // 72 registers: 28 warps fit, 24 in blocks of 256, all 28 in blocks of 224.
        assert_eq!(SM_90.occupancy(256, 72, 0).warps_per_sm, 24);
        assert_eq!(target.block_for_occupancy(256, 72, 0), 224);
        // The largest block the shared memory allows bounds the choice.
        assert_eq!(target.largest_block(1 << 10), Some(32));
        assert_eq!(target.largest_block(2 << 10), None);
        assert_eq!(target.largest_block(0), Some(256));
        assert!(target.block_for_occupancy(64, 200, 24) <= 64);
    }
}
