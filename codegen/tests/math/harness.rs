//! The math library's test harness: each function JIT-compiled (MCJIT, host CPU attributes
//! set) as a kernel applied lane-wise over arrays, through LLVM's `default<O3>` pipeline for the
//! host first, as generated code would be, so that the library is tested after inlining and
//! instruction combining.

use inkwell::context::Context;
use inkwell::targets::RelocMode;
use inkwell::types::BasicTypeEnum;
use inkwell::values::BasicValue;
use inkwell::{AddressSpace, OptimizationLevel};
use keops_codegen::math::{Exp2, MathFn, MathLib};
use keops_runtime::DType;

/// Test/diagnostic harness: JIT-compiles (MCJIT, host CPU attributes set) a function that
/// applies `f` lane-wise over arrays using vectors of `width` lanes (width 1 = scalar type),
/// runs it on `args` (each a Vec of equal length, values rounded to the element type first)
/// and returns the results as f64.
///
/// The module goes through LLVM's `default<O3>` pipeline for the host first, as generated
/// code would, so the library is tested after inlining and instruction combining.
pub fn evaluate_on_host(
    f: MathFn,
    scalar: DType,
    width: u32,
    args: &[Vec<f64>],
) -> Result<Vec<f64>, String> {
    evaluate_on_host_with(f, scalar, width, args, Exp2::Polynomial)
}

/// [`evaluate_on_host`] with f32 `exp`'s power of two computed as `exp2` says
/// ([`Exp2::HostExp2`] checks the GPU's fast `exp` path on the host).
pub fn evaluate_on_host_with(
    f: MathFn,
    scalar: DType,
    width: u32,
    args: &[Vec<f64>],
    exp2: Exp2,
) -> Result<Vec<f64>, String> {
    evaluate_compiled(f, scalar, width, args, exp2, false)
}

/// [`evaluate_on_host`] as flushing CPU code computes: the library built
/// [`MathLib::with_flushing`], called with the MXCSR's FTZ and DAZ bits set (the window of
/// `codegen::cpu::flush`), so that subnormal operands read as zeros and subnormal results are
/// flushed.
pub fn evaluate_on_host_flushing(
    f: MathFn,
    scalar: DType,
    width: u32,
    args: &[Vec<f64>],
) -> Result<Vec<f64>, String> {
    evaluate_compiled(f, scalar, width, args, Exp2::Polynomial, true)
}

fn evaluate_compiled(
    f: MathFn,
    scalar: DType,
    width: u32,
    args: &[Vec<f64>],
    exp2: Exp2,
    flushes: bool,
) -> Result<Vec<f64>, String> {
    if args.len() != f.arity() {
        return Err(format!(
            "{} takes {} argument(s), got {}",
            f.name(),
            f.arity(),
            args.len()
        ));
    }
    let len = args[0].len();
    if args.iter().any(|a| a.len() != len) {
        return Err("argument arrays differ in length".into());
    }
    if width == 0 {
        return Err("width must be at least 1".into());
    }
    let target = keops_codegen::host_cpu();
    let context = Context::create();
    let module = context.create_module("keops_math_harness");
    let builder = context.create_builder();
    let element: BasicTypeEnum = match scalar {
        DType::F32 => context.f32_type().into(),
        DType::F64 => context.f64_type().into(),
    };
    let ty: BasicTypeEnum = match (width, element) {
        (1, e) => e,
        (n, BasicTypeEnum::FloatType(e)) => e.vec_type(n).into(),
        _ => unreachable!("the element is a float type"),
    };
    let element_bytes = scalar.bits() / 8;

    // void kernel(ptr out, ptr a, ptr b): out[0..width] = f(a[0..width], b[0..width]).
    let ptr = context.ptr_type(AddressSpace::default());
    let kernel = module.add_function(
        "kernel",
        context
            .void_type()
            .fn_type(&[ptr.into(), ptr.into(), ptr.into()], false),
        None,
    );
    builder.position_at_end(context.append_basic_block(kernel, "entry"));
    let param = |i: u32| {
        kernel
            .get_nth_param(i)
            .expect("three parameters")
            .into_pointer_value()
    };
    let build_err = |e: inkwell::builder::BuilderError| e.to_string();
    let mut operands = Vec::new();
    for i in 0..f.arity() {
        let value = builder
            .build_load(ty, param(i as u32 + 1), "arg")
            .map_err(build_err)?;
        value
            .as_instruction_value()
            .expect("a load is an instruction")
            .set_alignment(element_bytes)
            .map_err(|e| e.to_string())?;
        operands.push(value);
    }
    let result = MathLib::new(&context)
        .with_exp2(exp2)
        .with_flushing(flushes)
        .call(&module, &builder, f, &operands);
    builder
        .build_store(param(0), result)
        .map_err(build_err)?
        .set_alignment(element_bytes)
        .map_err(|e| e.to_string())?;
    builder.build_return(None).map_err(build_err)?;
    if flushes {
        keops_codegen::cpu::flush::wrap_in_flushing_window(&context, &module, kernel);
    }

    keops_codegen::jit::mark_for_target(&context, &module, &target, flushes);
    module.verify().map_err(|e| format!("invalid IR: {e}"))?;
    let machine = keops_codegen::machine::cpu_machine(&target, RelocMode::Default)
        .map_err(|e| e.to_string())?;
    keops_codegen::jit::optimize(&module, &machine).map_err(|e| e.to_string())?;
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| e.to_string())?;
    type Kernel = unsafe extern "C" fn(*mut u8, *const u8, *const u8);
    // SAFETY: `kernel` was defined above with exactly this signature.
    let kernel = unsafe { engine.get_function::<Kernel>("kernel") }.map_err(|e| e.to_string())?;

    // Inputs padded to whole vectors (with 1, valid for every function), one call per vector.
    let width = width as usize;
    let padded = len.div_ceil(width) * width;
    let column = |i: usize| -> Vec<f64> {
        let mut v = args.get(i).cloned().unwrap_or_default();
        v.resize(padded, 1.0);
        v
    };
    let (a, b) = (column(0), column(1));
    let out: Vec<f64> = match scalar {
        DType::F32 => {
            let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (a, b) = (narrow(&a), narrow(&b));
            let mut out = vec![0f32; padded];
            for ((o, a), b) in out
                .chunks_mut(width)
                .zip(a.chunks(width))
                .zip(b.chunks(width))
            {
                // SAFETY: each chunk holds `width` elements, what the kernel reads and writes.
                unsafe { kernel.call(o.as_mut_ptr().cast(), a.as_ptr().cast(), b.as_ptr().cast()) };
            }
            out.into_iter().map(f64::from).collect()
        }
        DType::F64 => {
            let mut out = vec![0f64; padded];
            for ((o, a), b) in out
                .chunks_mut(width)
                .zip(a.chunks(width))
                .zip(b.chunks(width))
            {
                // SAFETY: as above.
                unsafe { kernel.call(o.as_mut_ptr().cast(), a.as_ptr().cast(), b.as_ptr().cast()) };
            }
            out
        }
    };
    Ok(out[..len].to_vec())
}
