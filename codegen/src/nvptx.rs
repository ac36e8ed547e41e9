//! GPU code: the 1-D kernel of a reduction as NVPTX (PTX text for `sm_80`, which the driver
//! also JIT-compiles for Hopper), in the calling convention and schedule that
//! [`keops_runtime::gpu`] documents and emulates. The formula is emitted by the same
//! [`Emitter`] as the CPU loops, one lane wide, and the reduction by the same
//! [`LaneAccumulators`], so the tie, infinity and NaN rules are the CPU's.
//!
//! ```text
//! per thread:          row = block_index * block + thread (the last row past the end)
//!                      constants, parameter-only and row-only parts; f64 accumulator := init
//! for each inner tile [jt, jt + block):
//!   thread t:          inner-only parts of index jt + t -> shared memory;  barrier
//!                      tile accumulator := init
//!   for t in tile:     the pair part, reading the tile from shared memory; fold
//!                      merge the tile accumulator into the f64 accumulator;  barrier
//! write the f64 accumulator row (threads of a row below `rows`)
//! ```
//!
//! `ptxas` (from the `nvidia-cuda-nvcc-cu12` wheel that `scripts/python.sh venv` installs into
//! `.venv/`) assembles the PTX and reports registers and spills: [`find_ptxas`], [`assemble`].

use super::formula::{Emitter, Value};
use super::jit::{elem_bytes, CodegenError};
use super::loops::LoopCode;
use super::math::MathLib;
use super::reduce::LaneAccumulators;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, InitializationConfig, Target, TargetTriple};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, OptimizationLevel};
use keops_front::formula::{Formula, Op};
use keops_middle::schedule::{Level, Schedule};
use keops_middle::target::gpu::{self, GpuTarget};
use keops_runtime::gpu::{GpuLaunch1D, GpuRangesTable, InnerSplit};
use keops_runtime::{Category, DType, Signature};
use std::fmt;
use std::path::{Path, PathBuf};

pub use keops_middle::target::gpu::{NVPTX_TRIPLE, PTX_ARCH};
pub use keops_runtime::gpu::{GPU_RANGES_SYMBOL, GPU_TILE_SYMBOL};

/// Which of the two kernels of `keops_runtime::gpu`'s calling conventions is emitted: they
/// share the thread code and differ in where a block finds its rows and inner ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuEntry {
    /// `keops_gpu_tile_1d`: rows from the grid's first dimension, the inner range cut into
    /// parts along its second.
    Tiles,
    /// `keops_gpu_tile_ranges`: rows and inner ranges from a work list (block-sparse).
    Ranges,
}

impl GpuEntry {
    pub fn symbol(self) -> &'static str {
        match self {
            GpuEntry::Tiles => GPU_TILE_SYMBOL,
            GpuEntry::Ranges => GPU_RANGES_SYMBOL,
        }
    }

    /// Parameters after the arguments: `rows, inner, chunk, acc` or `blocks, ranges, acc`.
    fn fixed_params(self) -> usize {
        match self {
            GpuEntry::Tiles => 4,
            GpuEntry::Ranges => 3,
        }
    }
}

fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

fn internal(stage: &'static str) -> impl Fn(String) -> CodegenError {
    move |message| CodegenError::Internal { stage, message }
}

/// Where each node of a formula is computed in the 1-D kernel, and the block size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSchedule {
    /// Levels of the nodes and which ones wider code reads (the CPU's split, one lane wide).
    pub levels: Schedule,
    /// For inner-level nodes the pair code reads: their first row in the shared tile.
    pub staged: Vec<Option<usize>>,
    /// Numbers staged per inner index.
    pub staged_dim: usize,
    pub launch: GpuLaunch1D,
}

impl GpuSchedule {
    /// The schedule with the largest block whose shared tile fits ([`GpuTarget::largest_block`]).
    pub fn new(
        formula: &Formula,
        signature: &Signature,
        dtype: DType,
        target: &GpuTarget,
    ) -> Result<GpuSchedule, CodegenError> {
        GpuSchedule::with_block(formula, signature, dtype, target, None)
    }

    /// The schedule with `block` threads per block (whole warps, no larger than the largest
    /// that fits), or the largest that fits when `None`.
    pub fn with_block(
        formula: &Formula,
        signature: &Signature,
        dtype: DType,
        target: &GpuTarget,
        block: Option<u32>,
    ) -> Result<GpuSchedule, CodegenError> {
        let bytes = elem_bytes(dtype);
        let levels = Schedule::new(formula, signature, 1, bytes);
        let mut staged = vec![None; formula.len()];
        let mut staged_dim = 0;
        for (k, slot) in staged.iter_mut().enumerate() {
            if levels.levels[k] == Level::Inner && levels.needed_wide[k] {
                *slot = Some(staged_dim);
                staged_dim += formula.info[k].dim;
            }
        }
        let per_index = staged_dim * bytes;
        let Some(largest) = target.largest_block(per_index) else {
            return Err(CodegenError::Unsupported {
                kernel: signature.name.clone(),
                reason: format!(
                    "the GPU kernel stages {staged_dim} numbers per inner index, more than a warp's tile of {} KiB of shared memory holds",
                    gpu::MAX_STATIC_SHARED_BYTES >> 10
                ),
            });
        };
        let block = block.map_or(largest, |b| {
            (b / gpu::WARP * gpu::WARP).clamp(gpu::WARP, largest)
        });
        Ok(GpuSchedule {
            levels,
            staged,
            staged_dim,
            launch: GpuLaunch1D {
                block,
                shared_bytes: block * per_index as u32,
            },
        })
    }

    /// Bytes of shared tile per thread (per inner index of a tile).
    pub fn shared_bytes_per_thread(&self) -> usize {
        self.launch.shared_bytes as usize / self.launch.block.max(1) as usize
    }
}

impl fmt::Display for GpuSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "1-D: {} threads per block, one output row each; inner tiles of {} indices, {} numbers staged per index in {} bytes of shared memory",
            self.launch.block, self.launch.block, self.staged_dim, self.launch.shared_bytes
        )
    }
}

/// A kernel compiled to PTX, with what launching it needs.
#[derive(Clone, Debug)]
pub struct PtxKernel {
    pub signature: Signature,
    pub dtype: DType,
    pub symbol: String,
    pub schedule: GpuSchedule,
    pub ptx: String,
    /// Registers per thread `ptxas` gave the code for each architecture tuned for, when it
    /// ran ([`compile_ptx_tuned`]).
    pub registers: Vec<PtxasReport>,
}

/// Compiles one kernel's 1-D GPU code to PTX text, with the largest block whose shared tile
/// fits.
pub fn compile_ptx(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
) -> Result<PtxKernel, CodegenError> {
    let schedule = GpuSchedule::new(formula, signature, dtype, target)?;
    compile_ptx_with_schedule(formula, signature, dtype, target, schedule)
}

/// [`compile_ptx`], then, when `ptxas` is found, the block size from occupancy: ptxas reports
/// the registers of the code for each architecture the target is tuned for, and when a smaller
/// block keeps clearly more warps resident ([`GpuTarget::block_for_occupancy`]) the kernel is
/// compiled again for it (the registers of this code do not depend on the block below 256
/// threads: ptxas may use 255 either way). Without ptxas the kernel is [`compile_ptx`]'s.
pub fn compile_ptx_tuned(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
) -> Result<PtxKernel, CodegenError> {
    compile_entry_tuned(formula, signature, dtype, target, GpuEntry::Tiles)
}

/// [`compile_ptx_tuned`] for either kernel: the block-sparse one is tuned on its own registers.
pub fn compile_entry_tuned(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
    entry: GpuEntry,
) -> Result<PtxKernel, CodegenError> {
    let schedule = GpuSchedule::new(formula, signature, dtype, target)?;
    let mut kernel =
        compile_entry_with_schedule(formula, signature, dtype, target, schedule, entry)?;
    let Some(ptxas) = cached_ptxas() else {
        return Ok(kernel);
    };
    let reports = |kernel: &PtxKernel| -> Result<Vec<PtxasReport>, CodegenError> {
        target
            .tuned_for
            .iter()
            .map(|arch| {
                assemble(ptxas, &kernel.ptx, arch.name).map_err(|messages| {
                    internal("ptxas")(format!(
                        "ptxas rejects the PTX of `{}` for {}: {messages}",
                        signature.name, arch.name
                    ))
                })
            })
            .collect()
    };
    kernel.registers = reports(&kernel)?;
    let registers = kernel
        .registers
        .iter()
        .map(|r| r.registers)
        .max()
        .unwrap_or(0);
    let block = target.block_for_occupancy(
        kernel.schedule.launch.block,
        registers,
        kernel.schedule.shared_bytes_per_thread(),
    );
    if block != kernel.schedule.launch.block {
        let schedule = GpuSchedule::with_block(formula, signature, dtype, target, Some(block))?;
        kernel = compile_entry_with_schedule(formula, signature, dtype, target, schedule, entry)?;
        kernel.registers = reports(&kernel)?;
    }
    Ok(kernel)
}

/// [`find_ptxas`], looked for once per process.
fn cached_ptxas() -> Option<&'static Path> {
    static PTXAS: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PTXAS.get_or_init(find_ptxas).as_deref()
}

/// Compiles one kernel's 1-D GPU code with a given schedule (a block chosen elsewhere, from the
/// registers the driver reports).
pub fn compile_ptx_with_schedule(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
    schedule: GpuSchedule,
) -> Result<PtxKernel, CodegenError> {
    compile_entry_with_schedule(formula, signature, dtype, target, schedule, GpuEntry::Tiles)
}

/// [`compile_ptx_with_schedule`] for either kernel.
pub fn compile_entry_with_schedule(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
    schedule: GpuSchedule,
    entry: GpuEntry,
) -> Result<PtxKernel, CodegenError> {
    let context = Context::create();
    let module = context.create_module(&signature.name);
    let builder = context.create_builder();
    let math = MathLib::new(&context).with_fast_exp(target.fast_exp);
    let em = Emitter {
        context: &context,
        module: &module,
        builder: &builder,
        math: &math,
        scalar: dtype,
    };
    let wide = Emitter {
        scalar: DType::F64,
        ..em
    };
    GpuTileEmitter {
        em: &em,
        wide: &wide,
        formula,
        signature,
        schedule: &schedule,
        entry,
        dialect: &NVPTX,
        twin: false,
    }
    .emit(entry.symbol());
    let ptx = emit_ptx(&module, target)?;
    Ok(PtxKernel {
        signature: signature.clone(),
        dtype,
        symbol: entry.symbol().to_string(),
        schedule,
        ptx,
        registers: Vec::new(),
    })
}

/// Verifies, optimises and prints a module as PTX.
fn emit_ptx(module: &Module, target: &GpuTarget) -> Result<String, CodegenError> {
    let machine = super::machine::gpu_machine(target)?;
    // f32 subnormals flushed to zero, as the CPU code's (lang-spec/backends.md, "Subnormal
    // numbers"): NVPTX then emits the `.ftz` forms of f32 arithmetic, which run at full speed.
    // PTX has no f64 flushing; f64 subnormals cost nothing extra on a GPU.
    let ftz = module
        .get_context()
        .create_string_attribute("denormal-fp-math-f32", "preserve-sign,preserve-sign");
    for function in module.get_functions() {
        if function.count_basic_blocks() > 0 {
            function.add_attribute(AttributeLoc::Function, ftz);
        }
    }
    module.set_triple(&TargetTriple::create(NVPTX_TRIPLE));
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module
        .verify()
        .map_err(|e| internal("LLVM verification")(e.to_string()))?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| internal("LLVM optimisation")(e.to_string()))?;
    let ptx = machine
        .write_to_memory_buffer(module, FileType::Assembly)
        .map_err(|e| internal("PTX")(e.to_string()))?;
    Ok(String::from_utf8_lossy(ptx.as_slice()).into_owned())
}

/// What a GPU target names its own way: address spaces, special registers, the barrier, the
/// calling convention of a kernel and the annotation that bounds its block size. The emitter
/// reads them from here, so that another GPU target is another table, not a copy of the
/// emitter. The host twin ([`HostTwin`]) replaces the registers and the barrier by parameters
/// and a call, and the address spaces by the host's.
pub struct GpuDialect {
    /// The buffers the host passes.
    pub global_space: u16,
    /// The block's shared tile.
    pub shared_space: u16,
    /// Intrinsics that read the thread's index in its block, and the block's x and y indices.
    pub thread_index: &'static str,
    pub block_index_x: &'static str,
    pub block_index_y: &'static str,
    /// The intrinsic that waits for every thread of the block.
    pub barrier: &'static str,
    /// The calling convention of an entry point the host launches.
    pub kernel_calling_convention: u32,
    /// The named metadata, and its key, that bound the block size.
    pub annotations: &'static str,
    pub block_size_key: &'static str,
}

/// NVIDIA's: CUDA's address spaces, PTX's special registers, `bar.sync 0`, `PTX_Kernel`, and
/// `.maxntid` through `nvvm.annotations`.
pub const NVPTX: GpuDialect = GpuDialect {
    global_space: 1,
    shared_space: 3,
    thread_index: "llvm.nvvm.read.ptx.sreg.tid.x",
    block_index_x: "llvm.nvvm.read.ptx.sreg.ctaid.x",
    block_index_y: "llvm.nvvm.read.ptx.sreg.ctaid.y",
    barrier: "llvm.nvvm.barrier0",
    kernel_calling_convention: 71,
    annotations: "nvvm.annotations",
    block_size_key: "maxntidx",
};

impl<'ctx> LoopCode<'ctx> for GpuTileEmitter<'_, '_, 'ctx> {
    fn em(&self) -> &Emitter<'_, 'ctx> {
        self.em
    }
}

struct GpuTileEmitter<'e, 'a, 'ctx> {
    em: &'e Emitter<'a, 'ctx>,
    wide: &'e Emitter<'a, 'ctx>,
    formula: &'e Formula,
    signature: &'e Signature,
    schedule: &'e GpuSchedule,
    entry: GpuEntry,
    dialect: &'static GpuDialect,
    /// Emit the host twin ([`HostTwin`]) instead of the NVPTX kernel.
    twin: bool,
}

/// The stack slots the tile loop works in (allocated in the entry block).
struct TileLoopState<'l, 'ctx> {
    tile_counter: PointerValue<'ctx>,
    pair_counter: PointerValue<'ctx>,
    lane_counter: PointerValue<'ctx>,
    acc_row: PointerValue<'ctx>,
    tile_acc: &'l LaneAccumulators<'ctx>,
}

/// The kernel function and its parameters.
struct KernelParams<'ctx> {
    function: FunctionValue<'ctx>,
    /// The arguments' buffers.
    args: Vec<PointerValue<'ctx>>,
    /// The rows' accumulators (the entry's last own parameter).
    acc_out: PointerValue<'ctx>,
    /// How many parameters the entry has after the arguments.
    fixed: usize,
    /// A null pointer of the buffers' address space.
    null: PointerValue<'ctx>,
}

impl<'ctx> KernelParams<'ctx> {
    /// The entry's own parameter `k` (after the arguments).
    fn param(&self, k: usize) -> inkwell::values::BasicValueEnum<'ctx> {
        let at = (self.args.len() + k) as u32;
        self.function.get_nth_param(at).expect("declared")
    }
}

/// Where a thread runs, and its block's shared tile (none when nothing is staged).
struct ThreadPlace<'ctx> {
    thread: IntValue<'ctx>,
    block_index: IntValue<'ctx>,
    part: IntValue<'ctx>,
    shared: Option<PointerValue<'ctx>>,
}

/// Values of the nodes computed so far, one lane wide.
type NodeValues<'ctx> = Vec<Option<Vec<Value<'ctx>>>>;

impl<'ctx> GpuTileEmitter<'_, '_, 'ctx> {
    /// An i64 of a work list (the block-sparse kernel's `blocks` and `ranges`).
    fn load_i64(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>) -> IntValue<'ctx> {
        let i64t = self.em.context.i64_type();
        // SAFETY (of the generated code): the work list holds the entries read (the calling
        // convention of `keops_runtime::gpu`).
        let at = unsafe {
            built(
                self.em
                    .builder
                    .build_in_bounds_gep(i64t, base, &[index], "entry"),
            )
        };
        let v = built(self.em.builder.build_load(i64t, at, "entry")).into_int_value();
        v.as_instruction()
            .expect("a load")
            .set_alignment(8)
            .expect("valid alignment");
        v
    }

    fn special_register(&self, name: &str) -> IntValue<'ctx> {
        let em = self.em;
        let function = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(em.module, &[]))
            .unwrap_or_else(|| panic!("LLVM 19 has the intrinsic {name}"));
        let v = built(em.builder.build_call(function, &[], "sreg"))
            .try_as_basic_value()
            .basic()
            .expect("a special register has a value")
            .into_int_value();
        built(
            em.builder
                .build_int_z_extend(v, em.context.i64_type(), "sreg"),
        )
    }

    fn barrier(&self) {
        let em = self.em;
        if self.twin {
            let function = em.module.get_function(TWIN_BARRIER).unwrap_or_else(|| {
                em.module.add_function(
                    TWIN_BARRIER,
                    em.context.void_type().fn_type(&[], false),
                    None,
                )
            });
            built(em.builder.build_call(function, &[], ""));
            return;
        }
        let barrier = self.dialect.barrier;
        let function = Intrinsic::find(barrier)
            .and_then(|i| i.get_declaration(em.module, &[]))
            .unwrap_or_else(|| panic!("LLVM 19 has the intrinsic {barrier}"));
        built(em.builder.build_call(function, &[], ""));
    }

    /// The static shared tile: `staged_dim x block` numbers, component-major, so that a
    /// thread's stores and the block's reads of one index (a broadcast) are free of conflicts.
    fn shared_tile(&self, twin_tile: PointerValue<'ctx>) -> Option<PointerValue<'ctx>> {
        let sched = self.schedule;
        if sched.staged_dim == 0 {
            return None;
        }
        if self.twin {
            return Some(twin_tile);
        }
        let len = sched.staged_dim * sched.launch.block as usize;
        let ty = self.em.float_type().array_type(len as u32);
        let tile = self.em.module.add_global(
            ty,
            Some(AddressSpace::from(self.dialect.shared_space)),
            "keops_inner_tile",
        );
        tile.set_linkage(Linkage::Internal);
        tile.set_initializer(&ty.get_undef());
        tile.set_alignment(16);
        Some(tile.as_pointer_value())
    }

    fn emit(&self, name: &str) -> FunctionValue<'ctx> {
        let em = self.em;
        let ctx = em.context;
        let kernel = self.declare(name);
        let function = kernel.function;
        em.builder
            .position_at_end(ctx.append_basic_block(function, "entry"));
        let red = self.signature.reduction;
        let acc_dim = red.acc_dim();
        let f64t = ctx.f64_type();
        let i64t = ctx.i64_type();
        // Stack slots first, in the entry block, so that LLVM promotes them to registers.
        let acc_row = built(em.builder.build_array_alloca(
            f64t,
            self.i64(acc_dim.max(1) as i64),
            "acc_row",
        ));
        let tile_acc = LaneAccumulators::allocate(em, red, 1);
        let counters: Vec<PointerValue<'ctx>> = (0..4)
            .map(|_| built(em.builder.build_alloca(i64t, "counter")))
            .collect();
        let loop_state = TileLoopState {
            tile_counter: counters[0],
            pair_counter: counters[1],
            lane_counter: counters[2],
            acc_row,
            tile_acc: &tile_acc,
        };
        let range_counter = counters[3];
        let place = self.place(&kernel);
        // The block's rows (and, for the 1-D kernel, its part of the inner range).
        let block = self.schedule.launch.block as i64;
        let (first_row, end_row, output_row) = match self.entry {
            GpuEntry::Tiles => {
                let rows = kernel.param(0).into_int_value();
                let first = self.mul(place.block_index, self.i64(block));
                let part_rows = self.mul(place.part, rows);
                (first, rows, part_rows)
            }
            GpuEntry::Ranges => {
                let blocks = kernel.param(0).into_pointer_value();
                let entry = self.mul(place.block_index, self.i64(4));
                let first = self.load_i64(blocks, entry);
                let end = self.load_i64(blocks, self.add(entry, self.i64(1)));
                (first, end, self.i64(0))
            }
        };
        let row = self.add(first_row, place.thread);
        let active = self.less(row, end_row);
        // Threads past the block's last row compute that row: they reach every barrier and
        // their loads stay in bounds (a block has one row at least).
        let last = built(em.builder.build_int_sub(end_row, self.i64(1), "last"));
        let computed_row =
            built(em.builder.build_select(active, row, last, "row")).into_int_value();
        self.init_row_accumulator(acc_row);

        let mut values: NodeValues<'ctx> = vec![None; self.formula.len()];
        self.emit_level(Level::Call, &mut values, &kernel.args, None);
        self.emit_level(Level::Row, &mut values, &kernel.args, Some(computed_row));
        self.emit_inner_ranges(&kernel, &place, &loop_state, range_counter, &values);

        self.emit_if(function, active, || {
            let first = self.mul(self.add(output_row, row), self.i64(acc_dim as i64));
            for k in 0..acc_dim {
                let from = unsafe {
                    built(em.builder.build_in_bounds_gep(
                        f64t,
                        acc_row,
                        &[self.i64(k as i64)],
                        "slot",
                    ))
                };
                let x = built(em.builder.build_load(f64t, from, "acc"));
                let to = unsafe {
                    built(em.builder.build_in_bounds_gep(
                        f64t,
                        kernel.acc_out,
                        &[self.add(first, self.i64(k as i64))],
                        "out",
                    ))
                };
                built(em.builder.build_store(to, x));
            }
        });
        built(em.builder.build_return(None));
        function
    }

    /// The kernel function and its parameters: the arguments' buffers, then the entry's own
    /// (rows, inner, chunk, acc for the 1-D kernel; blocks, ranges, acc for the block-sparse
    /// one), then for the host twin the special registers and the shared tile.
    fn declare(&self, name: &str) -> KernelParams<'ctx> {
        let em = self.em;
        let ctx = em.context;
        let space = if self.twin {
            0
        } else {
            self.dialect.global_space
        };
        let global = ctx.ptr_type(AddressSpace::from(space));
        let i64t = ctx.i64_type();
        let n_args = self.formula.vars.len();
        let mut params: Vec<BasicMetadataTypeEnum> = (0..n_args).map(|_| global.into()).collect();
        match self.entry {
            // rows, inner, chunk, acc.
            GpuEntry::Tiles => params.extend([
                BasicMetadataTypeEnum::from(i64t),
                i64t.into(),
                i64t.into(),
                global.into(),
            ]),
            // blocks, ranges, acc.
            GpuEntry::Ranges => params.extend([
                BasicMetadataTypeEnum::from(global),
                global.into(),
                global.into(),
            ]),
        }
        let fixed = self.entry.fixed_params();
        if self.twin {
            // The special registers (thread, block x, block y) and the shared tile, as
            // parameters.
            params.extend([
                BasicMetadataTypeEnum::from(i64t),
                i64t.into(),
                i64t.into(),
                global.into(),
            ]);
        }
        let function = em
            .module
            .add_function(name, ctx.void_type().fn_type(&params, false), None);
        if !self.twin {
            function.set_call_conventions(self.dialect.kernel_calling_convention);
            self.annotate_block_size(function);
        }
        // The buffers are distinct (the calling convention): loads may use the read-only path.
        let noalias = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
        for k in (0..n_args).chain([n_args + fixed - 1]) {
            function.add_attribute(AttributeLoc::Param(k as u32), noalias);
        }
        let param = |k: usize| function.get_nth_param(k as u32).expect("declared above");
        KernelParams {
            function,
            args: (0..n_args).map(|k| param(k).into_pointer_value()).collect(),
            acc_out: param(n_args + fixed - 1).into_pointer_value(),
            fixed,
            null: global.const_null(),
        }
    }

    /// Where the thread runs: its index in the block, the block's index (x) and part of the
    /// inner range (y), and the block's shared tile; from the special registers, or the host
    /// twin's parameters.
    fn place(&self, kernel: &KernelParams<'ctx>) -> ThreadPlace<'ctx> {
        let extra = |k: usize| kernel.param(kernel.fixed + k);
        if self.twin {
            return ThreadPlace {
                thread: extra(0).into_int_value(),
                block_index: extra(1).into_int_value(),
                part: extra(2).into_int_value(),
                shared: self.shared_tile(extra(3).into_pointer_value()),
            };
        }
        ThreadPlace {
            thread: self.special_register(self.dialect.thread_index),
            block_index: self.special_register(self.dialect.block_index_x),
            part: self.special_register(self.dialect.block_index_y),
            shared: self.shared_tile(kernel.null),
        }
    }

    /// The row's f64 accumulator, set to the reduction's initial value.
    fn init_row_accumulator(&self, acc_row: PointerValue<'ctx>) {
        let em = self.em;
        let f64t = em.context.f64_type();
        let red = self.signature.reduction;
        let mut initial = vec![0.0f64; red.acc_dim()];
        red.init(&mut initial);
        for (k, &x) in initial.iter().enumerate() {
            let slot = unsafe {
                built(
                    em.builder
                        .build_in_bounds_gep(f64t, acc_row, &[self.i64(k as i64)], "slot"),
                )
            };
            built(em.builder.build_store(slot, f64t.const_float(x)));
        }
    }

    /// The inner indices the block goes over, tile by tile: its part of the whole range
    /// (the 1-D kernel), or each range of its row cluster (the block-sparse kernel).
    fn emit_inner_ranges(
        &self,
        kernel: &KernelParams<'ctx>,
        place: &ThreadPlace<'ctx>,
        loop_state: &TileLoopState<'_, 'ctx>,
        range_counter: PointerValue<'ctx>,
        values: &NodeValues<'ctx>,
    ) {
        let function = kernel.function;
        let staging = (place.thread, place.shared);
        match self.entry {
            GpuEntry::Tiles => {
                // This block's part of the inner range (the whole range in the 1-D schedule).
                let inner = kernel.param(1).into_int_value();
                let chunk = kernel.param(2).into_int_value();
                let lo = self.min(self.mul(place.part, chunk), inner);
                let hi = self.min(self.add(lo, chunk), inner);
                self.emit_tiles(
                    function,
                    loop_state,
                    values,
                    &kernel.args,
                    staging,
                    (lo, hi),
                );
            }
            GpuEntry::Ranges => {
                let blocks = kernel.param(0).into_pointer_value();
                let ranges = kernel.param(1).into_pointer_value();
                let entry = self.mul(place.block_index, self.i64(4));
                let from = self.load_i64(blocks, self.add(entry, self.i64(2)));
                let to = self.load_i64(blocks, self.add(entry, self.i64(3)));
                self.emit_loop_to(function, range_counter, (from, to), 1, |k| {
                    let at = self.mul(k, self.i64(2));
                    let lo = self.load_i64(ranges, at);
                    let hi = self.load_i64(ranges, self.add(at, self.i64(1)));
                    self.emit_tiles(
                        function,
                        loop_state,
                        values,
                        &kernel.args,
                        staging,
                        (lo, hi),
                    );
                });
            }
        }
    }

    /// The tiles of the inner range `[lo, hi)`: each staged through shared memory by the
    /// block's threads, folded from the initial value and merged into the f64 accumulators.
    fn emit_tiles(
        &self,
        function: FunctionValue<'ctx>,
        state: &TileLoopState<'_, 'ctx>,
        values: &NodeValues<'ctx>,
        args: &[PointerValue<'ctx>],
        (thread, shared): (IntValue<'ctx>, Option<PointerValue<'ctx>>),
        (lo, hi): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let em = self.em;
        let block = self.schedule.launch.block as i64;
        self.emit_loop_to(function, state.tile_counter, (lo, hi), block, |start| {
            if let Some(shared) = shared {
                let index = self.add(start, thread);
                self.emit_if(function, self.less(index, hi), || {
                    let mut own = values.clone();
                    self.emit_level(Level::Inner, &mut own, args, Some(index));
                    self.stage(&own, shared, thread);
                });
                self.barrier();
            }
            let count = self.min(
                self.i64(block),
                built(em.builder.build_int_sub(hi, start, "left")),
            );
            state.tile_acc.init(em, self.wide, state.acc_row);
            self.emit_loop_to(function, state.pair_counter, (self.i64(0), count), 1, |t| {
                let mut pair = values.clone();
                if let Some(shared) = shared {
                    self.unstage(&mut pair, shared, t);
                }
                self.emit_level(Level::Pair, &mut pair, args, None);
                let root = usize::from(self.formula.root());
                let value = pair[root].as_deref().expect("the root is computed");
                let index = built(em.builder.build_signed_int_to_float(
                    t,
                    em.float_type(),
                    "index",
                ));
                let index = em.from_scalar(index);
                state.tile_acc.fold(
                    em,
                    self.wide,
                    function,
                    value,
                    index,
                    None,
                    (state.acc_row, start),
                );
            });
            state.tile_acc.merge_lanes_into(
                em,
                self.wide,
                function,
                state.acc_row,
                start,
                state.lane_counter,
            );
            if shared.is_some() {
                self.barrier();
            }
        });
    }

    /// `.maxntid block, 1, 1`: ptxas may then give each thread up to `65536 / block` registers.
    fn annotate_block_size(&self, function: FunctionValue<'ctx>) {
        let ctx = self.em.context;
        let i32t = ctx.i32_type();
        let node = ctx.metadata_node(&[
            BasicMetadataValueEnum::PointerValue(function.as_global_value().as_pointer_value()),
            ctx.metadata_string(self.dialect.block_size_key).into(),
            i32t.const_int(self.schedule.launch.block as u64, false)
                .into(),
        ]);
        self.em
            .module
            .add_global_metadata(self.dialect.annotations, &node)
            .expect("the annotations take metadata nodes");
    }

    /// Thread `thread`'s staged values into the shared tile.
    fn stage(&self, values: &NodeValues<'ctx>, shared: PointerValue<'ctx>, thread: IntValue<'ctx>) {
        let block = self.schedule.launch.block as i64;
        for (k, slot) in self.schedule.staged.iter().enumerate() {
            if let Some(slot) = slot {
                let v = values[k].as_ref().expect("computed at the inner level");
                for (c, &x) in v.iter().enumerate() {
                    let at = self.add(thread, self.i64((slot + c) as i64 * block));
                    self.store(shared, at, x);
                }
            }
        }
    }

    /// The staged values of the tile's index `t`, read from shared memory.
    fn unstage(
        &self,
        values: &mut NodeValues<'ctx>,
        shared: PointerValue<'ctx>,
        t: IntValue<'ctx>,
    ) {
        let block = self.schedule.launch.block as i64;
        for (k, slot) in self.schedule.staged.iter().enumerate() {
            if let Some(slot) = slot {
                let dim = self.formula.info[k].dim;
                values[k] = Some(
                    (0..dim)
                        .map(|c| {
                            let at = self.add(t, self.i64((slot + c) as i64 * block));
                            self.load(shared, at, 1)
                        })
                        .collect(),
                );
            }
        }
    }

    /// Computes the nodes of one level; `at` is the row (row level) or the inner index (inner
    /// level) whose variables are read.
    fn emit_level(
        &self,
        level: Level,
        values: &mut NodeValues<'ctx>,
        args: &[PointerValue<'ctx>],
        at: Option<IntValue<'ctx>>,
    ) {
        let levels = &self.schedule.levels.levels;
        for (k, node) in self.formula.nodes.as_ref().iter().enumerate() {
            if levels[k] != level || values[k].is_some() {
                continue;
            }
            let dim = self.formula.info[k].dim;
            let v: Vec<Value<'ctx>> = if let Op::Var(var) = node.op {
                let base = args[var as usize];
                let first = match self.formula.vars[var as usize].category {
                    Category::Param => self.i64(0),
                    Category::I | Category::J => {
                        let index = at.expect("row and inner code know their index");
                        self.mul(index, self.i64(dim as i64))
                    }
                };
                (0..dim)
                    .map(|c| self.load(base, self.add(first, self.i64(c as i64)), 1))
                    .collect()
            } else {
                let operands: Vec<&[Value<'ctx>]> = node
                    .children
                    .iter()
                    .map(|&c| {
                        let c = usize::from(c);
                        values[c].as_deref().unwrap_or_else(|| {
                            panic!("operand {c} of node {k} is computed before it")
                        })
                    })
                    .collect();
                self.em.emit(&node.op, &operands, dim, 1)
            };
            values[k] = Some(v);
        }
    }
}

/// `ptxas`: on PATH, or in the `nvidia-cuda-nvcc-cu12` wheel of the workspace's `.venv/` or of
/// the `python3` on PATH.
pub fn find_ptxas() -> Option<PathBuf> {
    let runs = |p: &Path| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(Path::new("ptxas")) {
        return Some(PathBuf::from("ptxas"));
    }
    let venv_python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    for python in [venv_python, PathBuf::from("python3")] {
        let Ok(out) = std::process::Command::new(&python)
            .args([
                "-c",
                "import nvidia.cuda_nvcc, os; print(os.path.join(list(nvidia.cuda_nvcc.__path__)[0], 'bin', 'ptxas'))",
            ])
            .output()
        else {
            continue;
        };
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && runs(&path) {
            return Some(path);
        }
    }
    None
}

/// What `ptxas -v` says about one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    pub arch: String,
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_bytes: u32,
    pub shared_bytes: u32,
}

impl fmt::Display for PtxasReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} registers, {} bytes spill stores, {} bytes spill loads, {} bytes stack, {} bytes shared",
            self.arch,
            self.registers,
            self.spill_store_bytes,
            self.spill_load_bytes,
            self.stack_bytes,
            self.shared_bytes
        )
    }
}

impl PtxasReport {
    /// Reads the report of the entry point from `ptxas -v`'s messages.
    pub fn parse(arch: &str, messages: &str) -> PtxasReport {
        let number_before = |line: &str, unit: &str| -> Option<u32> {
            let at = line.find(unit)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        let mut report = PtxasReport {
            arch: arch.to_string(),
            ..PtxasReport::default()
        };
        for line in messages.lines() {
            if let Some(n) = number_before(line, " bytes stack frame") {
                report.stack_bytes = n;
            }
            if let Some(n) = number_before(line, " bytes spill stores") {
                report.spill_store_bytes = n;
            }
            if let Some(n) = number_before(line, " bytes spill loads") {
                report.spill_load_bytes = n;
            }
            if let Some(n) = number_before(line, " registers") {
                report.registers = n;
            }
            if let Some(n) = number_before(line, " bytes smem") {
                report.shared_bytes = n;
            }
        }
        report
    }
}

/// Assembles PTX with `ptxas -arch=<arch> -v` and returns its report, or its error messages.
pub fn assemble(ptxas: &Path, ptx: &str, arch: &str) -> Result<PtxasReport, String> {
    let dir = std::env::temp_dir().join(format!(
        "keopsc-ptxas-{}-{}",
        std::process::id(),
        NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source = dir.join("kernel.ptx");
    let result = (|| {
        std::fs::write(&source, ptx).map_err(|e| format!("{}: {e}", source.display()))?;
        let out = std::process::Command::new(ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg(&source)
            .arg("-o")
            .arg(dir.join("kernel.cubin"))
            .output()
            .map_err(|e| format!("{}: {e}", ptxas.display()))?;
        let messages = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(PtxasReport::parse(arch, &messages))
        } else {
            Err(messages)
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The GPU code of one kernel as text, for `keopsc explain --ptx` and the REPL's `:ptx`: its
/// schedule, the PTX, and what ptxas reports for `sm_80` and `sm_90` (or why it did not run).
pub fn explain_ptx(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &GpuTarget,
) -> Result<String, CodegenError> {
    let (kernel, rejected) = match compile_ptx_tuned(formula, signature, dtype, target) {
        Ok(kernel) => (kernel, None),
        Err(CodegenError::Internal {
            stage: "ptxas",
            message,
        }) => (
            compile_ptx(formula, signature, dtype, target)?,
            Some(message),
        ),
        Err(e) => return Err(e),
    };
    let mut text = format!(
        "-- gpu schedule ({dtype}, {target}) --\n{}\n-- ptx ({}) --\n{}",
        kernel.schedule, target.ptx_arch, kernel.ptx
    );
    text += "-- ptxas --\n";
    if let Some(message) = rejected {
        text += &format!("{message}\n");
    } else if kernel.registers.is_empty() {
        text +=
            "ptxas not found (scripts/python.sh venv installs nvidia-cuda-nvcc-cu12 into .venv)\n";
    }
    let launch = kernel.schedule.launch;
    for report in &kernel.registers {
        text += &format!("{report}\n");
        if let Some(arch) = gpu::GpuArch::by_name(&report.arch) {
            let o = arch.occupancy(launch.block, report.registers, launch.shared_bytes);
            text += &format!(
                "{}: {} blocks of {} threads per multiprocessor, {} warps ({:.0}% occupancy, bounded by {:?})\n",
                arch.name,
                o.blocks_per_sm,
                launch.block,
                o.warps_per_sm,
                100.0 * o.fraction(arch),
                o.limit
            );
        }
    }
    Ok(text)
}

/// The barrier the host twin calls where the kernel has `bar.sync`.
const TWIN_BARRIER: &str = "keops_twin_barrier";

thread_local! {
    /// The barrier of the block the current OS thread runs a GPU thread of.
    static TWIN_BLOCK_BARRIER: std::cell::Cell<*const std::sync::Barrier> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

extern "C" fn twin_barrier() {
    TWIN_BLOCK_BARRIER.with(|b| {
        let barrier = b.get();
        assert!(!barrier.is_null(), "a host twin runs inside HostTwin::run");
        // SAFETY: set by `HostTwin::run` to a barrier that outlives the kernel call.
        unsafe { &*barrier }.wait();
    });
}

/// The 1-D kernel's own code compiled for the host CPU, the GPU's special registers and shared
/// tile made parameters and its barrier a `std::sync::Barrier`: [`HostTwin::run`] runs each
/// block's GPU threads as OS threads, so the generated index arithmetic, staging, folds and
/// final write are tested on machines without a GPU (the PTX differs only by address spaces,
/// intrinsics and LLVM's NVPTX lowering, which `ptxas` checks).
pub struct HostTwin {
    engine: std::mem::ManuallyDrop<inkwell::execution_engine::ExecutionEngine<'static>>,
    context: std::mem::ManuallyDrop<Box<Context>>,
    address: usize,
    pub schedule: GpuSchedule,
    pub dtype: DType,
    pub entry: GpuEntry,
    n_args: usize,
}

impl Drop for HostTwin {
    fn drop(&mut self) {
        // SAFETY: the engine borrows the context; it goes first, and neither is used again.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.engine);
            std::mem::ManuallyDrop::drop(&mut self.context);
        }
    }
}

impl HostTwin {
    /// Compiles the 1-D kernel's twin with `block` threads per block (the kernel's own when
    /// `None`).
    pub fn compile(
        formula: &Formula,
        signature: &Signature,
        dtype: DType,
        block: Option<u32>,
    ) -> Result<HostTwin, CodegenError> {
        HostTwin::compile_entry(formula, signature, dtype, block, GpuEntry::Tiles)
    }

    /// [`HostTwin::compile`] for either kernel.
    pub fn compile_entry(
        formula: &Formula,
        signature: &Signature,
        dtype: DType,
        block: Option<u32>,
        entry: GpuEntry,
    ) -> Result<HostTwin, CodegenError> {
        if signature.args.len() > MAX_TWIN_ARGS {
            return Err(CodegenError::Unsupported {
                kernel: signature.name.clone(),
                reason: format!(
                    "the host twin of a GPU kernel takes at most {MAX_TWIN_ARGS} arguments, not {}",
                    signature.args.len()
                ),
            });
        }
        let mut schedule = GpuSchedule::new(formula, signature, dtype, &GpuTarget::default())?;
        if let Some(block) = block {
            // Any block, even one no GPU would take: the twin checks the index arithmetic.
            schedule.launch = GpuLaunch1D {
                block,
                shared_bytes: block * (schedule.staged_dim * elem_bytes(dtype)) as u32,
            };
        }
        let context = Box::new(Context::create());
        // SAFETY: the context is boxed (its address is stable) and outlives the engine, which
        // `Drop` releases first.
        let context_ref: &'static Context = unsafe { &*(context.as_ref() as *const Context) };
        let module = context_ref.create_module("host_twin");
        let builder = context_ref.create_builder();
        let math = MathLib::new(context_ref);
        let em = Emitter {
            context: context_ref,
            module: &module,
            builder: &builder,
            math: &math,
            scalar: dtype,
        };
        let wide = Emitter {
            scalar: DType::F64,
            ..em
        };
        GpuTileEmitter {
            em: &em,
            wide: &wide,
            formula,
            signature,
            schedule: &schedule,
            entry,
            dialect: &NVPTX,
            twin: true,
        }
        .emit(entry.symbol());
        module
            .verify()
            .map_err(|e| internal("LLVM verification")(e.to_string()))?;
        Target::initialize_native(&InitializationConfig::default())
            .map_err(|e| internal("host target")(e.to_string()))?;
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Default)
            .map_err(|e| internal("JIT")(e.to_string()))?;
        if let Some(barrier) = module.get_function(TWIN_BARRIER) {
            engine.add_global_mapping(&barrier, twin_barrier as *const () as usize);
        }
        let address = engine
            .get_function_address(entry.symbol())
            .map_err(|e| internal("JIT")(e.to_string()))?;
        Ok(HostTwin {
            engine: std::mem::ManuallyDrop::new(engine),
            context: std::mem::ManuallyDrop::new(context),
            address,
            schedule,
            dtype,
            entry,
            n_args: signature.args.len(),
        })
    }

    /// Runs the kernel on host buffers as a GPU would: every block in turn, its threads at
    /// once. `args`: the arguments in signature order, row-major in the twin's dtype (as
    /// bytes' addresses); returns the `rows x acc_dim` f64 accumulators.
    ///
    /// # Safety
    ///
    /// `args[k]` must hold argument `k` for `rows` and `inner` (the calling convention of
    /// [`keops_runtime::gpu`]) in the twin's dtype.
    pub unsafe fn run(
        &self,
        args: &[*const u8],
        rows: usize,
        inner: usize,
        acc_dim: usize,
    ) -> Vec<f64> {
        // SAFETY: the caller's contract.
        unsafe { self.run_split(args, rows, inner, acc_dim, InnerSplit::whole(inner)) }
    }

    /// [`HostTwin::run`] with the inner range cut by `split` (the 2-D schedule): every block
    /// `(b, y)` of the grid in turn; returns the `parts x rows x acc_dim` partial accumulators
    /// the kernel writes (`keops_runtime::gpu::merge_parts` merges them).
    ///
    /// # Safety
    ///
    /// As [`HostTwin::run`].
    pub unsafe fn run_split(
        &self,
        args: &[*const u8],
        rows: usize,
        inner: usize,
        acc_dim: usize,
        split: InnerSplit,
    ) -> Vec<f64> {
        assert_eq!(self.entry, GpuEntry::Tiles, "the 1-D kernel's twin");
        assert_eq!(args.len(), self.n_args, "one pointer per argument");
        let mut acc = vec![f64::NAN; split.parts * rows * acc_dim];
        let fixed = [rows as u64, inner as u64, split.chunk as u64];
        for part in 0..split.parts {
            for block_index in 0..self.schedule.launch.grid(rows) {
                // SAFETY: the caller's contract; `acc` holds `parts x rows x acc_dim`.
                unsafe { self.run_block(args, &fixed, acc.as_mut_ptr(), block_index, part) };
            }
        }
        acc
    }

    /// Runs the block-sparse kernel's twin over the work list `table` as a GPU would; returns
    /// the `rows x acc_dim` accumulators, started from the reduction's initial value.
    ///
    /// # Safety
    ///
    /// As [`HostTwin::run`], `table` made for these `rows` and the arguments' inner size.
    pub unsafe fn run_ranges(
        &self,
        args: &[*const u8],
        reduction: &keops_runtime::Reduction,
        rows: usize,
        table: &GpuRangesTable,
    ) -> Vec<f64> {
        assert_eq!(
            self.entry,
            GpuEntry::Ranges,
            "the block-sparse kernel's twin"
        );
        assert_eq!(args.len(), self.n_args, "one pointer per argument");
        let block = self.schedule.launch.block as usize;
        assert!(
            (0..table.block_count()).all(|b| {
                let (first, end, _, _) = table.block(b);
                end - first <= block
            }),
            "a work list made for blocks of at most {block} rows"
        );
        let mut acc = table.initial_accumulators(reduction, rows);
        let fixed = [table.blocks.as_ptr() as u64, table.inner.as_ptr() as u64];
        for block_index in 0..table.block_count() {
            // SAFETY: the caller's contract; the table outlives the calls.
            unsafe { self.run_block(args, &fixed, acc.as_mut_ptr(), block_index, 0) };
        }
        acc
    }

    /// Block `(block_index, part)` of a launch: its threads as OS threads, sharing a tile and
    /// a barrier; `fixed` are the parameters between the arguments and `acc`.
    ///
    /// # Safety
    ///
    /// The twin's calling convention: `args` and `fixed` as its entry takes them, `acc`
    /// large enough for every row the block writes.
    unsafe fn run_block(
        &self,
        args: &[*const u8],
        fixed: &[u64],
        acc: *mut f64,
        block_index: usize,
        part: usize,
    ) {
        let block = self.schedule.launch.block as usize;
        let elem = elem_bytes(self.dtype);
        let mut shared = vec![0u8; (self.schedule.staged_dim * block * elem).max(8)];
        let shared_ptr = shared.as_mut_ptr() as usize;
        let acc_ptr = acc as usize;
        let address = self.address;
        let barrier = std::sync::Barrier::new(block);
        std::thread::scope(|scope| {
            for thread in 0..block {
                let barrier = &barrier;
                let mut call: Vec<u64> = args.iter().map(|&p| p as u64).collect();
                call.extend(fixed);
                call.extend([
                    acc_ptr as u64,
                    thread as u64,
                    block_index as u64,
                    part as u64,
                    shared_ptr as u64,
                ]);
                scope.spawn(move || {
                    TWIN_BLOCK_BARRIER.with(|b| b.set(barrier));
                    // SAFETY: the twin takes `n_args + fixed + 5` 64-bit integer-class
                    // parameters (pointers and i64), passed here in order; the buffers are the
                    // caller's (see `run_block`), the block's shared tile and `acc`.
                    unsafe { call_with_u64s(address, &call) };
                    TWIN_BLOCK_BARRIER.with(|b| b.set(std::ptr::null()));
                });
            }
        });
    }
}

/// Arguments of a kernel the host twin runs: [`call_with_u64s`] calls up to 16 parameters.
const MAX_TWIN_ARGS: usize = 8;

/// Calls `extern "C" fn(u64, ...)` at `address` with `args` (pointers and i64 alike are
/// integer-class on x86-64 and AArch64).
///
/// # Safety
///
/// `address` must be such a function of exactly `args.len()` parameters.
unsafe fn call_with_u64s(address: usize, args: &[u64]) {
    macro_rules! call {
        ($($i:literal),*) => {{
            let f: unsafe extern "C" fn($(call!(@ty $i)),*) = unsafe { std::mem::transmute(address) };
            unsafe { f($(args[$i]),*) }
        }};
        (@ty $i:literal) => { u64 };
    }
    match args.len() {
        8 => call!(0, 1, 2, 3, 4, 5, 6, 7),
        9 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8),
        10 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        11 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
        12 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
        13 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12),
        14 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        15 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14),
        16 => call!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        n => unreachable!("HostTwin::compile refuses kernels of more than {MAX_TWIN_ARGS} arguments ({n} parameters)"),
    }
}
