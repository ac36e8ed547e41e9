//! Subnormal numbers flushed to zero in compiled CPU code: each entry point is a window that
//! sets the x86 MXCSR's FTZ (results below the smallest normal number become a signed zero) and
//! DAZ (subnormal operands read as a signed zero) bits, calls the tile function, and restores
//! the caller's MXCSR. Every thread that runs compiled code (the caller's, rayon's workers, a
//! module's host program) gets the window, and none keeps it: the floating-point state a caller
//! sees after a call is the one it had before.
//!
//! Why: on Intel cores every operation that reads or writes a subnormal takes a microcode
//! assist of about a hundred cycles, so a kernel whose exponentials underflow (small
//! bandwidths) would run several times slower than the same kernel on other data. KeOps's GPU
//! code, compiled with fast math, flushes f32 subnormals too. The semantics are stated in
//! lang-spec/backends.md ("Subnormal numbers").

use super::built;
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::values::{BasicMetadataValueEnum, FunctionValue};

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) bits.
pub const FTZ_DAZ: u32 = 0x8040;

/// The suffix of a tile function's body once its name is taken by the flushing window.
pub const BODY_SUFFIX: &str = ".body";

/// Whether code for `triple` gets the window (x86-64: the MXCSR exists).
pub fn flushes(triple: &str) -> bool {
    triple.starts_with("x86_64")
}

/// Renames `body` (a tile function) to `{name}.body`, internal and never inlined, and defines
/// `name` with its type: MXCSR saved, FTZ and DAZ set, `body` called with the same arguments,
/// MXCSR restored. The body's own code cannot move out of the window: it is a call.
pub fn wrap_in_flushing_window<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    body: FunctionValue<'ctx>,
) -> FunctionValue<'ctx> {
    let name = body.get_name().to_string_lossy().into_owned();
    body.as_global_value()
        .set_name(&format!("{name}{BODY_SUFFIX}"));
    body.set_linkage(Linkage::Internal);
    let noinline = context.create_enum_attribute(
        inkwell::attributes::Attribute::get_named_enum_kind_id("noinline"),
        0,
    );
    body.add_attribute(AttributeLoc::Function, noinline);

    let entry = module.add_function(&name, body.get_type(), None);
    let builder = context.create_builder();
    builder.position_at_end(context.append_basic_block(entry, "entry"));
    let i32t = context.i32_type();
    let mxcsr = |intrinsic: &str| {
        Intrinsic::find(intrinsic)
            .and_then(|i| i.get_declaration(module, &[]))
            .unwrap_or_else(|| panic!("LLVM 19 has the intrinsic {intrinsic}"))
    };
    let (store, load) = (mxcsr("llvm.x86.sse.stmxcsr"), mxcsr("llvm.x86.sse.ldmxcsr"));
    let saved = built(builder.build_alloca(i32t, "saved_mxcsr"));
    let flushing = built(builder.build_alloca(i32t, "flushing_mxcsr"));
    built(builder.build_call(store, &[saved.into()], ""));
    let old = built(builder.build_load(i32t, saved, "old")).into_int_value();
    let new = built(builder.build_or(old, i32t.const_int(u64::from(FTZ_DAZ), false), "ftz_daz"));
    built(builder.build_store(flushing, new));
    built(builder.build_call(load, &[flushing.into()], ""));
    let args: Vec<BasicMetadataValueEnum> = entry.get_param_iter().map(|p| p.into()).collect();
    built(builder.build_call(body, &args, ""));
    built(builder.build_call(load, &[saved.into()], ""));
    built(builder.build_return(None));
    entry
}
