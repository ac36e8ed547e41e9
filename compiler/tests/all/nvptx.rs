//! The operator emitter and the math library do not assume the CPU: a GPU kernel applying every
//! element-wise operator, in f32 and f64, compiles for NVPTX into PTX with no calls to outside
//! functions, and assembles with `ptxas` (`scripts/python.sh venv` installs it: the
//! nvidia-cuda-nvcc-cu12 wheel; found there or on PATH), which these tests require. The tests
//! that run kernels on a GPU (feature `cuda`) are ignored unless asked for (`-- --ignored` on a
//! machine with one), so that the test runner reports them as not run.

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use inkwell::{AddressSpace, OptimizationLevel};
use keops_runtime::DType;
use keopsc::codegen::formula::Emitter;
use keopsc::codegen::math::MathLib;
use keopsc::formula::Op;
use std::path::PathBuf;

/// ptxas, which the tests of this file assemble every kernel with: `scripts/python.sh venv`
/// (run by `./x setup` and `./x test`) installs it. Without it they fail, saying so, rather than
/// pass without assembling anything.
fn required_ptxas(what: &str) -> PathBuf {
    find_ptxas().unwrap_or_else(|| {
        panic!(
            "{what} needs ptxas, which was not found: `scripts/python.sh venv` installs it \
             (nvidia-cuda-nvcc-cu12 in .venv)"
        )
    })
}

/// PTX of one kernel: `out[tid] = sum over operators of op(in[tid], ...)`.
fn ptx(scalar: DType) -> String {
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

#[test]
fn every_elementwise_operator_compiles_to_ptx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let assembler = required_ptxas("assembling the element-wise operators");
    for scalar in [DType::F32, DType::F64] {
        let text = ptx(scalar);
        assert!(text.contains(".entry elementwise"), "{text}");
        assert!(
            !text.contains(".extern"),
            "PTX calls an outside function:\n{text}"
        );
        {
            let ptxas = &assembler;
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

// ---- The 1-D reduction kernels (`keopsc::codegen::nvptx`) ----

use keops_runtime::gpu::{
    emulate_1d, emulate_2d, emulate_ranges, merge_parts, GpuLaunch1D, GpuRangesTable, InnerSplit,
};
use keops_runtime::{Axis, Category, ProblemSize};
use keopsc::codegen::nvptx::{
    assemble, compile_entry_tuned, compile_ptx, compile_ptx_tuned, find_ptxas, GpuEntry,
    GpuSchedule, HostTwin, PtxasReport,
};
use keopsc::opt::{optimize, OptBudget, OptimizedKernel};
use keopsc::source::SourceFile;
use keopsc::target::GpuTarget;

fn optimized(text: &str) -> Vec<OptimizedKernel> {
    let compiled = match keopsc::driver::compile(SourceFile::new("<nvptx test>", text)) {
        Ok(c) => c,
        Err((source, diagnostics)) => panic!(
            "does not compile:\n{text}\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        ),
    };
    compiled
        .kernels
        .iter()
        .map(|k| optimize(k, &OptBudget::default()).expect("optimises"))
        .collect()
}

/// A kernel of every reduction kind, on both axes, with formulas that read row, inner,
/// parameter and pair parts.
fn every_reduction() -> String {
    let decls = "x = Vi(3)\n y = Vj(3)\n u = Vi(1)\n v = Vj(2)\n s = Pm(1)\n";
    let reductions = [
        "Sum_Reduction(Exp(-SqDist(x, y) * s) * v, AXIS)",
        "Max_Reduction(x * y + Elem(v, 0), AXIS)",
        "Min_Reduction(x * y - u, AXIS)",
        "ArgMax_Reduction(Scalprod(x, y), AXIS)",
        "ArgMin_Reduction(SqDist(x, y) * s, AXIS)",
        "Max_ArgMax_Reduction(x - y, AXIS)",
        "Min_ArgMin_Reduction(Round(SqDist(x, y) * 4, 0), AXIS)",
        "LogSumExp_Reduction(-SqDist(x, y) * s + Elem(v, 1), AXIS)",
        "LogSumExpWeight_Reduction(-SqDist(x, y), Exp(v), AXIS)",
        "Max_SumShiftExp_Reduction(Scalprod(x, y) * s, AXIS)",
        "Max_SumShiftExpWeight_Reduction(Scalprod(x, y), v, AXIS)",
        "SumSoftMaxWeight_Reduction(-SqDist(x, y) + u, v * u, AXIS)",
        "KMin_Reduction(Round(SqDist(x, y) * 3, 0), 3, AXIS)",
        "ArgKMin_Reduction(Round(SqDist(x, y) * 3, 0), 4, AXIS)",
        "KMin_ArgKMin_Reduction(Round(x - y, 1), 2, AXIS)",
    ];
    let mut text = String::new();
    for (k, r) in reductions.iter().enumerate() {
        for axis in [0, 1] {
            let r = r.replace("AXIS", &axis.to_string());
            text += &format!("kernel k{k}_axis{axis} {{\n {decls} {r}\n}}\n");
        }
    }
    text
}

/// Assembles `ptx` for sm_80 and sm_90, failing with ptxas's messages.
fn assembled(ptxas: &std::path::Path, name: &str, ptx: &str) -> Vec<PtxasReport> {
    ["sm_80", "sm_90"]
        .iter()
        .map(|arch| {
            assemble(ptxas, ptx, arch).unwrap_or_else(|messages| {
                panic!("ptxas -arch={arch} rejects {name}:\n{messages}\n{ptx}")
            })
        })
        .collect()
}

#[test]
fn every_reduction_kind_on_both_axes_compiles_to_a_ptx_kernel_that_ptxas_assembles() {
    let ptxas = required_ptxas("assembling the reduction kernels");
    for kernel in optimized(&every_reduction()) {
        for dtype in [DType::F32, DType::F64] {
            let name = format!("{} {dtype}", kernel.name);
            let compiled = compile_ptx(
                &kernel.formula,
                &kernel.signature,
                dtype,
                &GpuTarget::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ptx = &compiled.ptx;
            assert!(ptx.contains(".entry keops_gpu_tile_1d"), "{name}:\n{ptx}");
            assert!(!ptx.contains(".extern"), "{name} calls outside:\n{ptx}");
            assert!(ptx.contains(".maxntid 256, 1, 1"), "{name}:\n{ptx}");
            assert!(ptx.contains("bar.sync"), "{name} stages no tile:\n{ptx}");
            for report in assembled(&ptxas, &name, ptx) {
                eprintln!("{name}: {report}");
                assert!(report.registers > 0, "{name}: {report}");
            }
        }
    }
}

/// The reference workloads' kernels: assembled for both architectures, with no spills.
#[test]
fn workload_kernels_assemble_without_spills() {
    let ptxas = required_ptxas("the register and spill report of W1-W5");
    // W2L (dimensions 256 and 1024): the GPU kernels unroll every component, and spill there;
    // the CPU's Gram products have no GPU counterpart yet.
    for workload in keopsc::bench::WORKLOADS.iter().filter(|w| w.id != "W2L") {
        for &dim in workload.dims {
            let text = workload.source.replace("{D}", &dim.to_string());
            let kernel = &optimized(&text)[0];
            for dtype in [DType::F32, DType::F64] {
                let name = format!("{} D={dim} {dtype}", workload.id);
                let compiled = compile_ptx(
                    &kernel.formula,
                    &kernel.signature,
                    dtype,
                    &GpuTarget::default(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                for report in assembled(&ptxas, &name, &compiled.ptx) {
                    eprintln!("{name}: {}; {report}", compiled.schedule);
                    assert_eq!(
                        (report.spill_store_bytes, report.spill_load_bytes),
                        (0, 0),
                        "{name} spills: {report}"
                    );
                }
            }
        }
    }
}

#[test]
fn ptxas_reports_are_read_from_its_messages() {
    let messages = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'keops_gpu_tile_1d' for 'sm_90'\n\
        ptxas info    : Function properties for keops_gpu_tile_1d\n    \
        16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
        ptxas info    : Used 40 registers, 3072 bytes smem, 380 bytes cmem[0]\n";
    let report = PtxasReport::parse("sm_90", messages);
    assert_eq!(
        report,
        PtxasReport {
            arch: "sm_90".to_string(),
            registers: 40,
            spill_store_bytes: 8,
            spill_load_bytes: 4,
            stack_bytes: 16,
            shared_bytes: 3072,
        }
    );
}

/// With ptxas, the block comes from the registers it reports: the tuned kernel's block is the
/// target's choice for them, and both architectures' reports come with it.
#[test]
fn the_tuned_block_is_the_occupancy_choice_for_the_registers_ptxas_reports() {
    let ptxas = required_ptxas("the block size from occupancy");
    let target = GpuTarget::default();
    let text = "kernel w1 { x = Vi(3) y = Vj(3) b = Vj(1) g = Pm(1) Sum_Reduction(Exp(-g * SqDist(x, y)) * b, 0) }\n\
        kernel wide { x = Vi(24) y = Vj(24) b = Vj(24) Max_SumShiftExpWeight_Reduction(Scalprod(x, y), b * Exp(x - y), 0) }";
    let mut moved = 0;
    for kernel in optimized(text) {
        for dtype in [DType::F32, DType::F64] {
            let name = format!("{} {dtype}", kernel.name);
            let plain = compile_ptx(&kernel.formula, &kernel.signature, dtype, &target).unwrap();
            let registers = assembled(&ptxas, &name, &plain.ptx)
                .iter()
                .map(|r| r.registers)
                .max()
                .unwrap();
            let launch = plain.schedule.launch;
            let per_thread = plain.schedule.shared_bytes_per_thread();
            let block = target.block_for_occupancy(launch.block, registers, per_thread);
            let tuned = compile_ptx_tuned(&kernel.formula, &kernel.signature, dtype, &target)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                tuned.registers.len(),
                2,
                "{name}: one report per architecture"
            );
            assert_eq!(
                tuned.schedule.launch.block, block,
                "{name}: {registers} registers"
            );
            assert!(
                tuned.ptx.contains(&format!(".maxntid {block}, 1, 1")),
                "{name}"
            );
            moved += usize::from(block != launch.block);
            eprintln!(
                "{name}: {registers} registers, block {} -> {block}",
                launch.block
            );
        }
    }
    // The wide f32 kernel's 168 registers leave one block of 256 threads per multiprocessor
    // (8 warps) against two of 192 (12).
    assert!(moved >= 1, "some kernel changes block");
}

/// f32 `exp` on the GPU goes through the special-function unit (`ex2.approx`); f64 keeps the
/// polynomial, and so does a target that asks for it.
/// f32 arithmetic flushes subnormals on the GPU as on the CPU (lang-spec/backends.md,
/// "Subnormal numbers"): every f32 add, multiply and FMA of the PTX is its `.ftz` form; f64
/// has none.
#[test]
fn f32_arithmetic_on_the_gpu_flushes_subnormals() {
    let kernel = &optimized(
        "kernel g { x = Vi(3) y = Vj(3) b = Vj(1) Sum_Reduction(Exp(-SqDist(x, y)) * b, 0) }",
    )[0];
    let ptx = |dtype| {
        compile_ptx(
            &kernel.formula,
            &kernel.signature,
            dtype,
            &GpuTarget::default(),
        )
        .unwrap()
        .ptx
    };
    let f32_code = ptx(DType::F32);
    for op in ["add", "sub", "mul", "fma.rn"] {
        let plain = format!("{op}.f32");
        let plain_rn = format!("{op}.rn.f32");
        assert!(
            !f32_code.contains(&format!("\t{plain} "))
                && !f32_code.contains(&format!("\t{plain_rn} ")),
            "f32 {op} without .ftz:\n{f32_code}"
        );
    }
    assert!(f32_code.contains("fma.rn.ftz.f32"), "{f32_code}");
    assert!(!ptx(DType::F64).contains(".ftz.f64"));
}

#[test]
fn f32_exp_on_the_gpu_uses_ex2_approx() {
    let kernel = &optimized(
        "kernel g { x = Vi(3) y = Vj(3) b = Vj(1) Sum_Reduction(Exp(-SqDist(x, y)) * b, 0) }",
    )[0];
    let fast = GpuTarget::default();
    let exact = GpuTarget {
        fast_exp: false,
        ..GpuTarget::default()
    };
    let ptx = |dtype, target: &GpuTarget| {
        compile_ptx(&kernel.formula, &kernel.signature, dtype, target)
            .unwrap()
            .ptx
    };
    assert!(ptx(DType::F32, &fast).contains("ex2.approx.ftz.f32"));
    assert!(!ptx(DType::F64, &fast).contains("ex2.approx"));
    let polynomial = ptx(DType::F32, &exact);
    assert!(!polynomial.contains("ex2.approx"));
    let fmas = |text: &str| text.matches("fma.rn.ftz.f32").count();
    assert!(
        fmas(&ptx(DType::F32, &fast)) + 5 <= fmas(&polynomial),
        "the polynomial's FMAs are gone"
    );
}

#[test]
fn a_kernel_staging_too_much_per_inner_index_is_refused_with_its_reason() {
    let kernel = &optimized("kernel big { x = Vi(400) y = Vj(400) Sum_Reduction(x * y, 0) }")[0];
    let err = GpuSchedule::new(
        &kernel.formula,
        &kernel.signature,
        DType::F64,
        &GpuTarget::default(),
    )
    .expect_err("400 f64 per index leave no room for a warp");
    assert!(err.to_string().contains("shared memory"), "{err}");
    // f32 with D = 64: the block shrinks to fit 48 KiB.
    let kernel = &optimized("kernel w { x = Vi(64) y = Vj(64) Sum_Reduction(x * y, 0) }")[0];
    let schedule = GpuSchedule::new(
        &kernel.formula,
        &kernel.signature,
        DType::F32,
        &GpuTarget::default(),
    )
    .unwrap();
    assert_eq!(schedule.launch.block, 192);
    assert!(schedule.launch.shared_bytes <= 48 << 10);
}

/// Random inputs for the variables of [`every_reduction`]: row-major, in f64.
fn inputs(kernel: &OptimizedKernel, n: usize, m: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    kernel
        .signature
        .args
        .iter()
        .map(|a| {
            let rows = match a.category {
                Category::I => n,
                Category::J => m,
                Category::Param => 1,
            };
            let mut v: Vec<f64> = (0..rows * a.dim).map(|_| next()).collect();
            if a.category == Category::Param {
                v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
            }
            v
        })
        .collect()
}

/// The emulated 1-D schedule (blocks, threads, shared tiles, per-thread folds in the element
/// type and f64 merges, the final write) against the interpreter, for every reduction on both
/// axes, at sizes that leave partial blocks and tiles, with the kernel's block and with a
/// small one that makes many blocks and tiles.
#[test]
fn the_emulated_1d_schedule_matches_the_interpreter_for_every_reduction() {
    for kernel in optimized(&every_reduction()) {
        let sig = &kernel.signature;
        let red = sig.reduction;
        for (n, m) in [(1, 1), (37, 301), (300, 45)] {
            let args = inputs(&kernel, n, m, (n * 1000 + m) as u64);
            let refs: Vec<&[f64]> = args.iter().map(|a| &a[..]).collect();
            let size = ProblemSize {
                n,
                m,
                dtype: DType::F64,
            };
            let want = keopsc::interp::evaluate(&kernel.formula, &red, sig.axis, &refs, size)
                .expect("the interpreter runs it");
            let (rows, inner) = match sig.axis {
                Axis::I => (n, m),
                Axis::J => (m, n),
            };
            let evaluator = keopsc::interp::PointEvaluator::new(&kernel.formula).unwrap();
            for dtype in [DType::F32, DType::F64] {
                let schedule =
                    GpuSchedule::new(&kernel.formula, sig, dtype, &GpuTarget::default()).unwrap();
                let small = GpuLaunch1D {
                    block: 32,
                    ..schedule.launch
                };
                let splits = |launch: GpuLaunch1D| {
                    [
                        None,
                        Some(InnerSplit::with_parts(inner, 3, launch.block as usize)),
                    ]
                };
                let runs = [schedule.launch, small]
                    .into_iter()
                    .flat_map(|l| splits(l).map(move |s| (l, s)));
                for (launch, split) in runs {
                    let pair = pair_values(&kernel, &evaluator, &refs);
                    let acc = match (split, dtype) {
                        (None, DType::F32) => emulate_1d::<f32>(&red, launch, rows, inner, pair),
                        (None, DType::F64) => emulate_1d::<f64>(&red, launch, rows, inner, pair),
                        (Some(split), DType::F32) => merge_parts(
                            &red,
                            &emulate_2d::<f32>(&red, launch, split, rows, inner, pair),
                            split.parts,
                            rows,
                        ),
                        (Some(split), DType::F64) => merge_parts(
                            &red,
                            &emulate_2d::<f64>(&red, launch, split, rows, inner, pair),
                            split.parts,
                            rows,
                        ),
                    };
                    let what = format!(
                        "{} {dtype} N={n} M={m} block {} split {split:?}",
                        kernel.name, launch.block
                    );
                    assert_finalized_close(&red, &acc, rows, &want, dtype, &what);
                }
            }
        }
    }
}

/// The kernel's own generated code, compiled for the host with its GPU threads as OS threads
/// ([`HostTwin`]), against the interpreter: every reduction on both axes, f32 and f64, with
/// blocks of 32 threads so that sizes leave several blocks and tiles, partial ones included.
#[test]
fn the_generated_1d_kernel_run_on_the_host_matches_the_interpreter_for_every_reduction() {
    for kernel in optimized(&every_reduction()) {
        let sig = &kernel.signature;
        let red = sig.reduction;
        for dtype in [DType::F32, DType::F64] {
            let twin = HostTwin::compile(&kernel.formula, sig, dtype, Some(32))
                .unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
            for (n, m) in [(1, 1), (37, 70), (70, 37)] {
                let args = inputs(&kernel, n, m, (7 * n + m) as u64);
                // The interpreter sees the values the kernel reads (rounded to f32 for f32).
                let args: Vec<Vec<f64>> = match dtype {
                    DType::F32 => args
                        .iter()
                        .map(|a| a.iter().map(|&x| f64::from(x as f32)).collect())
                        .collect(),
                    DType::F64 => args,
                };
                let refs: Vec<&[f64]> = args.iter().map(|a| &a[..]).collect();
                let size = ProblemSize { n, m, dtype };
                let want = keopsc::interp::evaluate(&kernel.formula, &red, sig.axis, &refs, size)
                    .expect("the interpreter runs it");
                let narrow: Vec<Vec<f32>> = args
                    .iter()
                    .map(|a| a.iter().map(|&x| x as f32).collect())
                    .collect();
                let pointers: Vec<*const u8> = match dtype {
                    DType::F32 => narrow.iter().map(|a| a.as_ptr().cast()).collect(),
                    DType::F64 => args.iter().map(|a| a.as_ptr().cast()).collect(),
                };
                let (rows, inner) = match sig.axis {
                    Axis::I => (n, m),
                    Axis::J => (m, n),
                };
                // The 1-D schedule, then the inner range in parts of whole tiles (the 2-D one).
                for split in [None, Some(InnerSplit::with_parts(inner, 2, 32))] {
                    // SAFETY: one row-major buffer per argument, in the twin's dtype, for n
                    // and m.
                    let acc = match split {
                        None => unsafe { twin.run(&pointers, rows, inner, red.acc_dim()) },
                        Some(split) => {
                            let partial = unsafe {
                                twin.run_split(&pointers, rows, inner, red.acc_dim(), split)
                            };
                            merge_parts(&red, &partial, split.parts, rows)
                        }
                    };
                    let what = format!("{} {dtype} N={n} M={m} split {split:?}", kernel.name);
                    assert_finalized_close(&red, &acc, rows, &want, dtype, &what);
                }
            }
        }
    }
}

/// Finalizes `rows` accumulators of `red` and checks them against the interpreter's output
/// `want`: equal, both NaN, or within 2e-4 (f32) or 1e-11 (f64) relative to 1 + |want|.
fn assert_finalized_close(
    red: &keops_runtime::Reduction,
    acc: &[f64],
    rows: usize,
    want: &[f64],
    dtype: DType,
    what: &str,
) {
    let mut got = vec![0.0; rows * red.output_dim()];
    for (a, o) in acc
        .chunks(red.acc_dim())
        .zip(got.chunks_mut(red.output_dim().max(1)))
    {
        red.finalize(a, o);
    }
    let tol = match dtype {
        DType::F32 => 2e-4,
        DType::F64 => 1e-11,
    };
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let close = g == w || (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
        assert!(close, "{what}: output {k}: {g} against {w}");
    }
}

/// The emulators' pair function: the interpreter's value of the kernel's formula at output
/// row `row` and reduced index `t`, on the arguments `args` (row-major, f64).
fn pair_values<'a>(
    kernel: &'a OptimizedKernel,
    evaluator: &'a keopsc::interp::PointEvaluator<'a>,
    args: &'a [&'a [f64]],
) -> impl Fn(usize, usize, &mut [f64]) + 'a {
    move |row, t, out| {
        let (i, j) = match kernel.signature.axis {
            Axis::I => (row, t),
            Axis::J => (t, row),
        };
        let mut scratch = evaluator.scratch();
        let value = evaluator.eval(&mut scratch, |v| {
            let dim = kernel.formula.vars[v].dim;
            let at = match kernel.formula.vars[v].category {
                Category::I => i,
                Category::J => j,
                Category::Param => 0,
            };
            &args[v][at * dim..(at + 1) * dim]
        });
        out.copy_from_slice(value);
    }
}

/// A block-sparsity pattern over `rows` output rows (at least 8) and `inner` indices (at
/// least 6) with what the kernels must handle: a cluster longer than a block with two ranges,
/// an empty cluster, a cluster visiting no range, rows in no cluster, an empty range, and
/// ranges that end where the next starts.
fn test_ranges(rows: usize, inner: usize) -> keops_runtime::Ranges {
    // The first cluster is half the rows: several blocks of 32 threads for the host twin
    // (rows >= 75), and of the GPU's largest block, 256, for the CUDA test (rows >= 777).
    let (a, b, c) = (rows / 2, 5 * rows / 8, 3 * rows / 4);
    keops_runtime::Ranges {
        rows: vec![(0, a), (a, a), (a, b), (c, rows)],
        slices: vec![2, 3, 3, 6],
        inner: vec![
            (0, inner / 3),
            (inner / 2, inner),
            (1, 2),
            (2, 3),
            (3, 3),
            (3, inner),
        ],
    }
}

/// `args` (row-major, f64) as arrays of `dtype` for `kernel`'s signature.
fn host_arrays(
    kernel: &OptimizedKernel,
    args: &[Vec<f64>],
    dtype: DType,
) -> Vec<keops_runtime::HostArray> {
    args.iter()
        .zip(&kernel.signature.args)
        .map(|(a, spec)| {
            let shape = vec![a.len() / spec.dim, spec.dim];
            match dtype {
                DType::F32 => {
                    keops_runtime::HostArray::from_f32(shape, a.iter().map(|&x| x as f32).collect())
                }
                DType::F64 => keops_runtime::HostArray::from_f64(shape, a.clone()),
            }
        })
        .collect()
}

/// The block-sparse kernel's generated code run on the host ([`HostTwin::run_ranges`]) and
/// its emulator ([`emulate_ranges`]) against the CPU's block-sparse evaluation, for every
/// reduction on both axes, f32 and f64, blocks of 32 threads.
#[test]
fn the_generated_ranges_kernel_run_on_the_host_matches_the_cpu_for_every_reduction() {
    let compiled = keopsc::driver::compile(SourceFile::new("<ranges test>", every_reduction()))
        .unwrap_or_else(|_| panic!("the test kernels compile"));
    let kernels = optimized(&every_reduction());
    for (checked, kernel) in compiled.kernels.iter().zip(&kernels) {
        let sig = &kernel.signature;
        let red = sig.reduction;
        for dtype in [DType::F32, DType::F64] {
            let twin =
                HostTwin::compile_entry(&kernel.formula, sig, dtype, Some(32), GpuEntry::Ranges)
                    .unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
            for (n, m) in [(75, 41), (41, 75)] {
                let (rows, inner) = match sig.axis {
                    Axis::I => (n, m),
                    Axis::J => (m, n),
                };
                let ranges = test_ranges(rows, inner);
                let arrays = host_arrays(kernel, &inputs(kernel, n, m, (5 * n + m) as u64), dtype);
                let refs: Vec<&keops_runtime::HostArray> = arrays.iter().collect();
                let cpu = keopsc::driver::EvalOptions::on(keopsc::driver::Backend::Cpu);
                let want = keopsc::driver::evaluate(checked, &refs, cpu.ranges(&ranges))
                    .unwrap_or_else(|e| panic!("{}: {e}", kernel.name))
                    .output
                    .to_f64();
                let table = GpuRangesTable::new(&ranges, 32);
                let pointers: Vec<*const u8> = arrays
                    .iter()
                    .map(|a| match &a.data {
                        keops_runtime::ArrayData::F32(v) => v.as_ptr().cast(),
                        keops_runtime::ArrayData::F64(v) => v.as_ptr().cast(),
                    })
                    .collect();
                // SAFETY: one row-major buffer per argument, in the twin's dtype, for n and m;
                // the table is made for these ranges, checked by the CPU's run above.
                let twin_acc = unsafe { twin.run_ranges(&pointers, &red, rows, &table) };
                let values: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
                let evaluator = keopsc::interp::PointEvaluator::new(&kernel.formula).unwrap();
                let values: Vec<&[f64]> = values.iter().map(|v| &v[..]).collect();
                let pair = pair_values(kernel, &evaluator, &values);
                let launch = twin.schedule.launch;
                let emulated = match dtype {
                    DType::F32 => emulate_ranges::<f32>(&red, launch, &table, rows, pair),
                    DType::F64 => emulate_ranges::<f64>(&red, launch, &table, rows, pair),
                };
                for (source, acc) in [("twin", twin_acc), ("emulator", emulated)] {
                    let what = format!("{} {dtype} N={n} M={m} ({source})", kernel.name);
                    assert_finalized_close(&red, &acc, rows, &want, dtype, &what);
                }
            }
        }
    }
}

/// The block-sparse kernel's PTX: one entry point, no outside calls, assembled by ptxas.
#[test]
fn the_ranges_kernel_compiles_to_ptx_that_ptxas_assembles() {
    let ptxas = required_ptxas("assembling the block-sparse kernels");
    for kernel in optimized(&every_reduction()) {
        for dtype in [DType::F32, DType::F64] {
            let name = format!("{} {dtype} (ranges)", kernel.name);
            let compiled = compile_entry_tuned(
                &kernel.formula,
                &kernel.signature,
                dtype,
                &GpuTarget::default(),
                GpuEntry::Ranges,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ptx = &compiled.ptx;
            assert_eq!(compiled.symbol, "keops_gpu_tile_ranges");
            assert!(
                ptx.contains(".entry keops_gpu_tile_ranges"),
                "{name}:\n{ptx}"
            );
            assert!(!ptx.contains(".entry keops_gpu_tile_1d"), "{name}:\n{ptx}");
            assert!(!ptx.contains(".extern"), "{name} calls outside:\n{ptx}");
            for report in assembled(&ptxas, &name, ptx) {
                assert!(report.registers > 0, "{name}: {report}");
            }
        }
    }
}

/// `--backend cuda` (built with the `cuda` feature), on a GPU: every reduction on both axes
/// against the interpreter.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "runs on a CUDA GPU: cargo test -p keopsc --features cuda -- --ignored, on a machine with one"]
fn the_cuda_backend_matches_the_interpreter() {
    use keopsc::driver::{evaluate, Backend};
    let compiled = keopsc::driver::compile(SourceFile::new("<cuda test>", every_reduction()))
        .unwrap_or_else(|_| panic!("the test kernels compile"));
    let kernels = optimized(&every_reduction());
    for (checked, kernel) in compiled.kernels.iter().zip(&kernels) {
        for dtype in [DType::F32, DType::F64] {
            for (n, m) in [(1, 1), (300, 1001)] {
                let args = inputs(kernel, n, m, (n + 3 * m) as u64);
                let arrays: Vec<keops_runtime::HostArray> = args
                    .iter()
                    .zip(&checked.signature.args)
                    .map(|(a, spec)| {
                        let shape = vec![a.len() / spec.dim, spec.dim];
                        match dtype {
                            DType::F32 => keops_runtime::HostArray::from_f32(
                                shape,
                                a.iter().map(|&x| x as f32).collect(),
                            ),
                            DType::F64 => keops_runtime::HostArray::from_f64(shape, a.clone()),
                        }
                    })
                    .collect();
                let refs: Vec<&keops_runtime::HostArray> = arrays.iter().collect();
                let got = evaluate(checked, &refs, Backend::Cuda)
                    .unwrap_or_else(|e| panic!("{}: {e}", checked.name))
                    .output;
                let want = evaluate(checked, &refs, Backend::Interp).unwrap().output;
                let (got, want) = (got.to_f64(), want.to_f64());
                let tol = match dtype {
                    DType::F32 => 2e-4,
                    DType::F64 => 1e-11,
                };
                let what = format!("{} {dtype} N={n} M={m}", checked.name);
                assert_eq!(got.len(), want.len(), "{what}");
                for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let close = g == w || (g - w).abs() <= tol * (1.0 + w.abs());
                    assert!(close, "{what}: output {k}: {g} against {w}");
                }
            }
        }
    }
}

/// `evaluate` with ranges on `Backend::Cuda` (built with the `cuda` feature), on a GPU: every
/// reduction on both axes against the CPU's block-sparse evaluation.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "runs on a CUDA GPU: cargo test -p keopsc --features cuda -- --ignored, on a machine with one"]
fn the_cuda_ranges_kernel_matches_the_cpu() {
    use keopsc::driver::{evaluate, Backend, EvalOptions};
    let compiled = keopsc::driver::compile(SourceFile::new("<cuda test>", every_reduction()))
        .unwrap_or_else(|_| panic!("the test kernels compile"));
    let kernels = optimized(&every_reduction());
    for (checked, kernel) in compiled.kernels.iter().zip(&kernels) {
        for dtype in [DType::F32, DType::F64] {
            let (n, m) = (1000, 777);
            let (rows, inner) = match kernel.signature.axis {
                Axis::I => (n, m),
                Axis::J => (m, n),
            };
            let ranges = test_ranges(rows, inner);
            let arrays = host_arrays(kernel, &inputs(kernel, n, m, 11), dtype);
            let refs: Vec<&keops_runtime::HostArray> = arrays.iter().collect();
            let got = evaluate(
                checked,
                &refs,
                EvalOptions::on(Backend::Cuda).ranges(&ranges),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", checked.name))
            .output;
            let want = evaluate(
                checked,
                &refs,
                EvalOptions::on(Backend::Cpu).ranges(&ranges),
            )
            .unwrap()
            .output;
            let (got, want) = (got.to_f64(), want.to_f64());
            let tol = match dtype {
                DType::F32 => 2e-4,
                DType::F64 => 1e-11,
            };
            let what = format!("{} {dtype} ranges", checked.name);
            assert_eq!(got.len(), want.len(), "{what}");
            for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let close = g == w || (g - w).abs() <= tol * (1.0 + w.abs());
                assert!(close, "{what}: output {k}: {g} against {w}");
            }
        }
    }
}
