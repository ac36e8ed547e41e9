//! The operator emitter and the math library do not assume the CPU: a GPU kernel applying every
//! element-wise operator, in f32 and f64, compiles for NVPTX into PTX with no calls to outside
//! functions. Where `ptxas` is installed (`pip install nvidia-cuda-nvcc-cu12`; found on PATH or
//! in that wheel), the PTX must also assemble; otherwise that step is skipped, visibly.

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use inkwell::{AddressSpace, OptimizationLevel};
use keopsc::codegen::formula::Emitter;
use keopsc::codegen::math::{MathLib, Scalar};
use keopsc::formula::Op;
use std::path::PathBuf;

/// PTX of one kernel: `out[tid] = sum over operators of op(in[tid], ...)`.
fn ptx(scalar: Scalar) -> String {
    Target::initialize_nvptx(&InitializationConfig::default());
    let context = Context::create();
    let module = context.create_module("elementwise");
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    module.set_triple(&triple);
    let builder = context.create_builder();
    let math = MathLib::new(&context);
    let em = Emitter {
        context: &context,
        module: &module,
        builder: &builder,
        math: &math,
        scalar,
    };
    let ptr = context.ptr_type(AddressSpace::default());
    let function = module.add_function(
        "elementwise",
        context
            .void_type()
            .fn_type(&[ptr.into(), ptr.into()], false),
        None,
    );
    // PTX_Kernel: an entry point the host can launch.
    function.set_call_conventions(71);
    builder.position_at_end(context.append_basic_block(function, "entry"));
    let tid = Intrinsic::find("llvm.nvvm.read.ptx.sreg.tid.x")
        .and_then(|i| i.get_declaration(&module, &[]))
        .expect("the NVPTX thread index intrinsic");
    let tid = builder
        .build_call(tid, &[], "tid")
        .unwrap()
        .try_as_basic_value()
        .basic()
        .unwrap()
        .into_int_value();
    let index = builder
        .build_int_z_extend(tid, context.i64_type(), "index")
        .unwrap();
    let (input, output) = (
        function.get_nth_param(0).unwrap().into_pointer_value(),
        function.get_nth_param(1).unwrap().into_pointer_value(),
    );
    let at = |base| unsafe {
        builder
            .build_in_bounds_gep(em.float_type(), base, &[index], "at")
            .unwrap()
    };
    let x = builder
        .build_load(em.vector_type(1), at(input), "x")
        .unwrap()
        .into_vector_value();
    let unary = [
        Op::Neg,
        Op::Exp,
        Op::Log,
        Op::Sqrt,
        Op::Rsqrt,
        Op::Square,
        Op::Inv,
        Op::Abs,
        Op::Sign,
        Op::Step,
        Op::ReLU,
        Op::Sin,
        Op::Cos,
        Op::Asin,
        Op::Acos,
        Op::Atan,
        Op::Floor,
        Op::XLogX,
        Op::SinXDivX,
        Op::Round(2),
        Op::Pow(-3),
        Op::ClampInt(-1, 2),
    ];
    let binary = [
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Powf,
        Op::Atan2,
        Op::Equal,
        Op::NotEqual,
        Op::LessThan,
        Op::LessOrEqual,
    ];
    let ternary = [Op::Clamp, Op::IfElse, Op::Mod];
    let mut terms = Vec::new();
    for op in &unary {
        terms.extend(em.emit(op, &[&[x]], 1, 1));
    }
    for op in &binary {
        terms.extend(em.emit(op, &[&[x], &[x]], 1, 1));
    }
    for op in &ternary {
        terms.extend(em.emit(op, &[&[x], &[x], &[x]], 1, 1));
    }
    let total = em.sum(&terms);
    builder.build_store(at(output), total).unwrap();
    builder.build_return(None).unwrap();
    module.verify().expect("valid LLVM IR");
    let machine = Target::from_triple(&triple)
        .expect("LLVM has the NVPTX target")
        .create_target_machine(
            &triple,
            "sm_80",
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .expect("an sm_80 target machine");
    let ptx = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .expect("PTX");
    String::from_utf8_lossy(ptx.as_slice()).into_owned()
}

fn ptxas() -> Option<PathBuf> {
    if let Ok(out) = std::process::Command::new("ptxas")
        .arg("--version")
        .output()
    {
        if out.status.success() {
            return Some(PathBuf::from("ptxas"));
        }
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import nvidia.cuda_nvcc, os; print(os.path.join(list(nvidia.cuda_nvcc.__path__)[0], 'bin', 'ptxas'))"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.exists().then_some(path)
}

#[test]
fn every_elementwise_operator_compiles_to_ptx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let assembler = ptxas();
    if assembler.is_none() {
        eprintln!("SKIPPED (assembly only): ptxas not found; pip install nvidia-cuda-nvcc-cu12 to check the PTX with it");
    }
    for scalar in [Scalar::F32, Scalar::F64] {
        let text = ptx(scalar);
        assert!(text.contains(".entry elementwise"), "{text}");
        assert!(
            !text.contains(".extern"),
            "PTX calls an outside function:\n{text}"
        );
        if let Some(ptxas) = &assembler {
            let file = dir.path().join(format!("{scalar:?}.ptx"));
            std::fs::write(&file, &text).expect("written");
            let out = std::process::Command::new(ptxas)
                .args(["-arch=sm_80"])
                .arg(&file)
                .arg("-o")
                .arg(dir.path().join("k.cubin"))
                .output()
                .expect("ptxas runs");
            assert!(
                out.status.success(),
                "ptxas rejects the {scalar:?} PTX:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
