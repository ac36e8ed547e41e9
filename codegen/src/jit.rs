//! Host code: the LLVM module of one kernel, optimised and JIT-compiled for this CPU, owned as
//! a plain handle (the LLVM context lives as long as the code).

use super::cpu::{flush, TileEmitter};
use super::formula::Emitter;
use super::math::MathLib;
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, RelocMode, TargetMachine};
use inkwell::OptimizationLevel;
use keops_front::formula::Formula;
use keops_middle::schedule::Schedule;
use keops_runtime::{CrossTileFn, CrossTileKernel, DType, Signature, TileFn, TileKernel};
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

pub use keops_middle::target::{elem_bytes, CpuTarget};

/// Code generation failed: an invariant of the compiler broke, or LLVM refused the host.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    #[error("internal error in code generation ({stage}): {message}")]
    Internal {
        stage: &'static str,
        message: String,
    },
    /// A kernel beyond what the generated code supports; the interpreter still runs it.
    #[error(
        "the CPU backend cannot compile kernel `{kernel}`: {reason} (`--backend interp` runs it)"
    )]
    Unsupported { kernel: String, reason: String },
}

/// Stack the per-lane accumulators of one tile may take: the tile runs on worker threads with
/// 2 MiB stacks, beside its inner-tile buffer (at most 256 KiB); it also bounds the code that
/// copies lane lists at merges, which grows with K.
const LANE_ACCUMULATOR_BYTES: usize = 256 << 10;

fn internal(stage: &'static str) -> impl Fn(String) -> CodegenError {
    move |message| CodegenError::Internal { stage, message }
}

/// Time spent in each code generation stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodegenTimings {
    pub emit: Duration,
    pub optimize: Duration,
    pub machine_code: Duration,
}

impl CodegenTimings {
    /// The faster of two measurements, stage by stage.
    pub fn fastest(&self, other: &CodegenTimings) -> CodegenTimings {
        CodegenTimings {
            emit: self.emit.min(other.emit),
            optimize: self.optimize.min(other.optimize),
            machine_code: self.machine_code.min(other.machine_code),
        }
    }
}

impl std::fmt::Display for CodegenTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "LLVM IR {:.3} ms, LLVM optimisation {:.3} ms, machine code {:.3} ms",
            ms(self.emit),
            ms(self.optimize),
            ms(self.machine_code)
        )
    }
}

/// The tile function's symbol in JIT-compiled code.
pub const TILE_SYMBOL: &str = "keops_tile";

/// One tile function to put in a module.
pub struct TileSpec<'a> {
    pub formula: &'a Formula,
    pub signature: &'a Signature,
    pub dtype: DType,
    pub symbol: String,
    /// The last `columns` components of the formula are summed over the rows (a cross tile
    /// function, [`keops_runtime::CrossTileFn`]); 0 for an ordinary tile function.
    pub columns: usize,
}

impl TileSpec<'_> {
    pub fn schedule(&self, target: &CpuTarget) -> Schedule {
        let scalar = self.dtype;
        Schedule::cpu(
            self.formula,
            self.signature,
            target.lanes(scalar),
            elem_bytes(scalar),
            self.columns,
        )
        .with_columns(self.columns, elem_bytes(scalar))
    }
}

/// Builds an LLVM module holding the tile functions of `specs` (not optimised yet).
pub fn build_module<'ctx>(
    context: &'ctx Context,
    name: &str,
    specs: &[TileSpec],
    target: &CpuTarget,
) -> Result<Module<'ctx>, CodegenError> {
    let module = context.create_module(name);
    let builder = context.create_builder();
    let math = MathLib::new(context).with_flushing(flush::flushes(&target.triple));
    for spec in specs {
        let scalar = spec.dtype;
        let red = &spec.signature.reduction;
        let schedule = spec.schedule(target);
        let lane_bytes =
            super::reduce::lane_slots(red) * target.lanes(scalar) as usize * elem_bytes(scalar);
        // A wide product has no per-lane accumulator per component.
        if lane_bytes > LANE_ACCUMULATOR_BYTES && schedule.wide.is_none() {
            return Err(CodegenError::Unsupported {
                kernel: spec.signature.name.clone(),
                reason: format!(
                    "its accumulator ({} numbers per output row, K = {}) needs {} KiB per SIMD lane set, more than the {} KiB a tile may use",
                    red.acc_dim(),
                    red.k,
                    lane_bytes / 1024,
                    LANE_ACCUMULATOR_BYTES / 1024
                ),
            });
        }
        let em = Emitter {
            context,
            module: &module,
            builder: &builder,
            math: &math,
            scalar,
        };
        let wide = Emitter {
            scalar: DType::F64,
            ..em
        };
        let tile = TileEmitter::new(&em, &wide, spec.formula, spec.signature, &schedule)
            .with_columns(spec.columns)
            .emit(&spec.symbol);
        if flush::flushes(&target.triple) {
            flush::wrap_in_flushing_window(context, &module, tile);
        }
    }
    mark_for_target(context, &module, target, flush::flushes(&target.triple));
    module
        .verify()
        .map_err(|e| internal("LLVM verification")(e.to_string()))?;
    Ok(module)
}

/// Names `target`'s CPU and features on every function `module` defines, and its triple on the
/// module; with `flushes`, tells LLVM that subnormals are flushed where the code runs.
pub fn mark_for_target(context: &Context, module: &Module, target: &CpuTarget, flushes: bool) {
    // Subnormals are flushed where the code runs (the flushing window): LLVM's constant
    // folding must read them the same way.
    let denormals =
        context.create_string_attribute("denormal-fp-math", "preserve-sign,preserve-sign");
    // MCJIT compiles for a generic x86-64 unless each function names the CPU: without these,
    // vector FMAs become libm calls.
    let cpu = context.create_string_attribute("target-cpu", &target.cpu);
    let features = context.create_string_attribute("target-features", &target.features);
    for function in module.get_functions() {
        if function.count_basic_blocks() > 0 {
            function.add_attribute(AttributeLoc::Function, cpu);
            function.add_attribute(AttributeLoc::Function, features);
            if flushes {
                function.add_attribute(AttributeLoc::Function, denormals);
            }
        }
    }
    module.set_triple(&inkwell::targets::TargetTriple::create(&target.triple));
}

pub fn optimize(module: &Module, machine: &TargetMachine) -> Result<(), CodegenError> {
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module
        .run_passes("default<O3>", machine, PassBuilderOptions::create())
        .map_err(|e| internal("LLVM optimisation")(e.to_string()))
}

impl<'a> TileSpec<'a> {
    /// The one tile function of a kernel compiled on its own (JIT, or shown as text).
    pub fn single(formula: &'a Formula, signature: &'a Signature, dtype: DType) -> TileSpec<'a> {
        TileSpec {
            formula,
            signature,
            dtype,
            symbol: TILE_SYMBOL.to_string(),
            columns: 0,
        }
    }
}

/// The LLVM IR of a kernel as emitted, before LLVM's optimisations, for `target`: what the
/// code generator itself decides, and what `tests/kf/codegen` snapshots.
pub fn emit_unoptimized_ir(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &CpuTarget,
) -> Result<String, CodegenError> {
    let spec = TileSpec::single(formula, signature, dtype);
    let context = Context::create();
    let module = build_module(&context, &signature.name, &[spec], target)?;
    Ok(module.print_to_string().to_string())
}

/// The optimised LLVM IR and the host assembly of a kernel, for inspection.
pub fn emit_text(
    formula: &Formula,
    signature: &Signature,
    dtype: DType,
    target: &CpuTarget,
) -> Result<(String, String), CodegenError> {
    let spec = TileSpec::single(formula, signature, dtype);
    let context = Context::create();
    let module = build_module(&context, &signature.name, &[spec], target)?;
    let machine = super::machine::cpu_machine(target, RelocMode::Default)?;
    optimize(&module, &machine)?;
    let asm = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| internal("assembly")(e.to_string()))?;
    Ok((
        module.print_to_string().to_string(),
        String::from_utf8_lossy(asm.as_slice()).into_owned(),
    ))
}

/// Compiles tile functions to a relocatable object file (position-independent code, for a
/// shared library).
pub fn emit_object(
    name: &str,
    specs: &[TileSpec],
    target: &CpuTarget,
) -> Result<Vec<u8>, CodegenError> {
    let context = Context::create();
    let module = build_module(&context, name, specs, target)?;
    let machine = super::machine::cpu_machine(target, RelocMode::PIC)?;
    optimize(&module, &machine)?;
    let object = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| internal("object code")(e.to_string()))?;
    Ok(object.as_slice().to_vec())
}

/// A kernel compiled to machine code in this process.
pub struct JitKernel {
    // Dropped before the context it borrows (fields drop in declaration order, and both are
    // ManuallyDrop so that `Drop` states it).
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: ManuallyDrop<Box<Context>>,
    tile: TileFn,
    pub signature: Signature,
    pub dtype: DType,
    pub schedule: Schedule,
    pub timings: CodegenTimings,
}

impl Drop for JitKernel {
    fn drop(&mut self) {
        // SAFETY: the engine borrows the context; it goes first, and neither is used again.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            ManuallyDrop::drop(&mut self.context);
        }
    }
}

// SAFETY: after construction the engine and context are never touched (only dropped); the
// tile function is plain machine code that reads its arguments, safe to call from any thread.
unsafe impl Send for JitKernel {}
unsafe impl Sync for JitKernel {}

/// JIT-compiled CPU code behind the runtime's executor boundary.
impl keops_runtime::Executor for JitKernel {
    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn reduce(
        &self,
        arrays: &[keops_runtime::ArrayRef],
    ) -> Result<keops_runtime::HostArray, keops_runtime::ExecError> {
        Ok(keops_runtime::run_tiles(&self.tile_kernel(), arrays, None)?)
    }
}

impl JitKernel {
    pub fn compile(
        formula: &Formula,
        signature: &Signature,
        dtype: DType,
        target: &CpuTarget,
    ) -> Result<JitKernel, CodegenError> {
        let spec = TileSpec::single(formula, signature, dtype);
        let compiled = Compiled::new(&spec, target)?;
        // SAFETY: the symbol was defined with the TileFn signature by `TileEmitter::emit`.
        let tile: TileFn = unsafe { std::mem::transmute::<usize, TileFn>(compiled.address) };
        Ok(JitKernel {
            engine: compiled.engine,
            context: compiled.context,
            tile,
            signature: signature.clone(),
            dtype,
            schedule: compiled.schedule,
            timings: compiled.timings,
        })
    }

    pub fn tile_kernel(&self) -> TileKernel<'_> {
        // SAFETY: `tile` was emitted for this signature, dtype and width, and lives as long as
        // `self`, which owns its engine.
        unsafe {
            TileKernel::new(
                &self.signature,
                self.dtype,
                self.schedule.lanes as usize,
                self.tile,
            )
        }
    }
}

/// A JIT-compiled module of one tile function, before its address is given a type.
struct Compiled {
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: ManuallyDrop<Box<Context>>,
    address: usize,
    schedule: Schedule,
    timings: CodegenTimings,
}

impl Compiled {
    fn new(spec: &TileSpec, target: &CpuTarget) -> Result<Compiled, CodegenError> {
        let schedule = spec.schedule(target);
        let context = Box::new(Context::create());
        // SAFETY: the context is boxed (its address is stable) and outlives the engine and the
        // module: the owner drops the engine first (see `Drop for JitKernel`).
        let context_ref: &'static Context = unsafe { &*(context.as_ref() as *const Context) };
        let mut timings = CodegenTimings::default();
        let start = Instant::now();
        let module = build_module(
            context_ref,
            &spec.signature.name,
            std::slice::from_ref(spec),
            target,
        )?;
        timings.emit = start.elapsed();
        let start = Instant::now();
        let machine = super::machine::cpu_machine(target, RelocMode::Default)?;
        optimize(&module, &machine)?;
        timings.optimize = start.elapsed();
        let start = Instant::now();
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| internal("JIT")(e.to_string()))?;
        let address = engine
            .get_function_address(&spec.symbol)
            .map_err(|e| internal("JIT")(e.to_string()))?;
        timings.machine_code = start.elapsed();
        Ok(Compiled {
            engine: ManuallyDrop::new(engine),
            context: ManuallyDrop::new(context),
            address,
            schedule,
            timings,
        })
    }
}

/// A cross pass compiled to machine code in this process: the row part's signature (a
/// `Sum`), and the formula's last `columns` components summed over the rows.
pub struct JitCrossKernel {
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: ManuallyDrop<Box<Context>>,
    tile: CrossTileFn,
    pub signature: Signature,
    pub columns: usize,
    pub dtype: DType,
    pub schedule: Schedule,
    pub timings: CodegenTimings,
}

impl Drop for JitCrossKernel {
    fn drop(&mut self) {
        // SAFETY: as for `JitKernel`: the engine goes before the context it borrows.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            ManuallyDrop::drop(&mut self.context);
        }
    }
}

// SAFETY: as for `JitKernel`.
unsafe impl Send for JitCrossKernel {}
unsafe impl Sync for JitCrossKernel {}

impl JitCrossKernel {
    /// `signature`: the row part (a `Sum` of the formula's first components); the formula's
    /// other `columns` components are summed over the rows.
    pub fn compile(
        formula: &Formula,
        signature: &Signature,
        columns: usize,
        dtype: DType,
        target: &CpuTarget,
    ) -> Result<JitCrossKernel, CodegenError> {
        if columns == 0 {
            return Err(internal("cross pass")(format!(
                "kernel `{}`: a cross pass needs columns",
                signature.name
            )));
        }
        let spec = TileSpec {
            columns,
            ..TileSpec::single(formula, signature, dtype)
        };
        let compiled = Compiled::new(&spec, target)?;
        // SAFETY: with `columns > 0` the symbol was defined with the CrossTileFn signature.
        let tile: CrossTileFn =
            unsafe { std::mem::transmute::<usize, CrossTileFn>(compiled.address) };
        Ok(JitCrossKernel {
            engine: compiled.engine,
            context: compiled.context,
            tile,
            signature: signature.clone(),
            columns,
            dtype,
            schedule: compiled.schedule,
            timings: compiled.timings,
        })
    }

    pub fn tile_kernel(&self) -> CrossTileKernel<'_> {
        // SAFETY: `tile` was emitted for this signature, column count, dtype and width, and
        // lives as long as `self`, which owns its engine.
        unsafe {
            CrossTileKernel::new(
                &self.signature,
                self.columns,
                self.dtype,
                self.schedule.lanes as usize,
                self.tile,
            )
        }
    }
}
