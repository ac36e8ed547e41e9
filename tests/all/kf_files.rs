//! Tests as files: `tests/kf/pass/*.kf` and `examples/kf/*.kf` snapshot every stage (as
//! `keopsc explain` prints it);
//! `tests/kf/fail/*.kf` snapshot the rendered diagnostics (no colour), and every line marked
//! `# ~ error: TEXT` must carry a diagnostic whose message contains TEXT.

use keopsc::diagnostic::render_all;
use keopsc::driver;
use keopsc::opt::OptBudget;
use keopsc::source::SourceFile;
use std::fmt::Write;

fn source(path: &std::path::Path) -> SourceFile {
    let text = std::fs::read_to_string(path).expect("test file readable");
    let name = format!("{}", path.file_name().unwrap().to_string_lossy());
    SourceFile::new(name, text)
}

/// Every stage of a file that compiles: AST, checked formula, expanded derivatives,
/// simplified formula with its cost and hoisted parts (`keopsc explain` without timings).
fn explain_all(src: &SourceFile) -> String {
    // No time limit: the node and iteration limits are deterministic, a clock is not.
    let budget = OptBudget {
        time_limit: std::time::Duration::from_secs(60),
        ..OptBudget::default()
    };
    let (kernels, _) = match driver::explain(src.clone(), &budget) {
        Ok(k) => k,
        Err((s, d)) => panic!("{} should compile:\n{}", s.name, render_all(&d, &s, false)),
    };
    let mut out = String::new();
    for k in &kernels {
        writeln!(out, "== kernel {} ==\n{k}", k.checked.name).unwrap();
    }
    out
}

#[test]
fn pass_files_snapshot_every_stage() {
    insta::glob!("../kf/pass", "*.kf", |path| {
        insta::assert_snapshot!(explain_all(&source(path)));
    });
}

#[test]
fn examples_snapshot_every_stage() {
    insta::glob!("../../examples/kf", "*.kf", |path| {
        insta::assert_snapshot!(explain_all(&source(path)));
    });
}

#[test]
fn fail_files_snapshot_diagnostics() {
    insta::glob!("../kf/fail", "*.kf", |path| {
        let src = source(path);
        let diagnostics = match driver::compile(src.clone()) {
            Ok(_) => panic!("{} should not compile", src.name),
            Err((_, d)) => d,
        };
        // Every `# ~ error: TEXT` annotation is matched by a diagnostic on that line.
        for (line_no, line) in src.text.lines().enumerate() {
            if let Some((_, expected)) = line.split_once("# ~ error: ") {
                let found = diagnostics.iter().any(|d| {
                    src.line_col(d.primary_span().start).0 == line_no + 1
                        && d.message.contains(expected.trim())
                });
                assert!(
                    found,
                    "{}:{}: no diagnostic containing `{}` on this line; got:\n{}",
                    src.name,
                    line_no + 1,
                    expected.trim(),
                    render_all(&diagnostics, &src, false)
                );
            }
        }
        insta::assert_snapshot!(render_all(&diagnostics, &src, false));
    });
}

/// `tests/kf/codegen/*.kf`: the CPU schedule and the LLVM IR as the code generator emits it
/// (before LLVM's optimisations), for the target and dtype the file names in its
/// `# target: LEVEL` and `# dtype: f32|f64` lines, so that a code generation change shows up
/// as a reviewed diff. The IR does not depend on the machine the test runs on.
#[test]
fn codegen_files_snapshot_schedule_and_ir() {
    use keopsc::codegen::jit;
    insta::glob!("../kf/codegen", "*.kf", |path| {
        let src = source(path);
        let directive = |key: &str| {
            src.text
                .lines()
                .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("{}: no `{key}` line", src.name))
        };
        let target =
            keopsc::codegen::cpu_level(&directive("# target:")).expect("a known x86-64 level");
        let dtype = match directive("# dtype:").as_str() {
            "f32" => keops_runtime::DType::F32,
            "f64" => keops_runtime::DType::F64,
            other => panic!("{}: unknown dtype `{other}`", src.name),
        };
        let (kernels, _) = driver::explain(src.clone(), &OptBudget::default())
            .unwrap_or_else(|(s, d)| panic!("{}:\n{}", s.name, render_all(&d, &s, false)));
        let mut out = String::new();
        for k in &kernels {
            let o = &k.optimized;
            // The schedule the emitter uses for this tile function (Gram products included).
            let schedule = jit::TileSpec::single(&o.formula, &o.signature, dtype).schedule(&target);
            let scheduled = keopsc::schedule::ScheduledFormula {
                formula: &o.formula,
                schedule: &schedule,
            };
            let ir = jit::emit_unoptimized_ir(&o.formula, &o.signature, dtype, &target)
                .expect("code generation");
            // The module's target triple names the machine the test runs on; the code does not
            // depend on it.
            let ir: String = ir
                .lines()
                .filter(|l| !l.starts_with("target triple"))
                .map(|l| format!("{l}\n"))
                .collect();
            writeln!(
                out,
                "== kernel {} ({}, {dtype}) ==\n-- schedule --\n{scheduled}\n-- llvm (as emitted) --\n{ir}",
                k.checked.name, target.cpu
            )
            .unwrap();
        }
        insta::assert_snapshot!(out);
    });
}

/// The tile function the code generator emits has exactly the runtime's `TileFn` type:
/// `void (ptr args, i64 inner_stride, i64 row_start, i64 row_end, i64 inner_start,
/// i64 inner_end, ptr acc)`.
#[test]
fn emitted_tile_function_has_the_runtime_type() {
    use keopsc::codegen::jit;
    let src = SourceFile::new(
        "t.kf",
        "kernel t { x = Vi(2)\n y = Vj(2)\n Sum_Reduction(SqDist(x, y), 0) }",
    );
    let (kernels, _) = driver::explain(src, &OptBudget::default()).ok().unwrap();
    let o = &kernels[0].optimized;
    for dtype in [keops_runtime::DType::F32, keops_runtime::DType::F64] {
        let ir = jit::emit_unoptimized_ir(
            &o.formula,
            &o.signature,
            dtype,
            &keopsc::codegen::host_cpu(),
        )
        .unwrap();
        let define = ir
            .lines()
            .find(|l| l.starts_with("define") && l.contains(&format!("@{}(", jit::TILE_SYMBOL)))
            .expect("the tile function is defined");
        let (ret, rest) = define["define ".len()..].split_once(" @").unwrap();
        let params = &rest[rest.find('(').unwrap() + 1..rest.rfind(')').unwrap()];
        // Each parameter: its type, then attributes and its name.
        let types: Vec<&str> = params
            .split(',')
            .map(|p| p.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ret.split_whitespace().last(), Some("void"), "{define}");
        assert_eq!(
            types,
            ["ptr", "i64", "i64", "i64", "i64", "i64", "ptr"],
            "{define}"
        );
    }
    // And the runtime's type, spelled out: a change to either side fails here.
    let _: keops_runtime::TileFn = dummy_tile
        as unsafe extern "C" fn(*const *const std::ffi::c_void, i64, i64, i64, i64, i64, *mut f64);
}

unsafe extern "C" fn dummy_tile(
    _: *const *const std::ffi::c_void,
    _: i64,
    _: i64,
    _: i64,
    _: i64,
    _: i64,
    _: *mut f64,
) {
}
