//! Library entry points on hostile input: deep and huge formulas are handled on the compiler's
//! own stack (whatever the caller's), a limit is reported as a diagnostic, and a broken
//! invariant is an internal error that names its stage and never points at the user's source.

use keopsc::diagnostic::{render_all, Diagnostic};
use keopsc::driver;
use keopsc::source::SourceFile;

/// Runs `work` on a thread with a small stack, as a Python interpreter's or a worker's.
fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(work)
        .expect("thread starts")
        .join()
        .expect("no panic")
}

fn nested(depth: usize) -> String {
    format!(
        "kernel k {{ x = Vi(1)\n y = Vj(1)\n Sum_Reduction({}x{} + y, 0) }}",
        "Exp(".repeat(depth),
        ")".repeat(depth)
    )
}

#[test]
fn deep_formulas_compile_from_a_small_stack() {
    let compiled = on_small_stack(|| driver::compile(SourceFile::new("deep.kf", nested(20_000))));
    let compiled = compiled.unwrap_or_else(|(s, d)| panic!("{}", render_all(&d, &s, false)));
    assert_eq!(compiled.kernels.len(), 1);
    // A long flat chain is a left-deep tree, as deep as it is long.
    let chain = format!(
        "kernel k {{ x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x{}, 0) }}",
        " + y".repeat(100_000)
    );
    let compiled = on_small_stack(move || driver::compile(SourceFile::new("long.kf", chain)));
    assert!(compiled.is_ok());
}

#[test]
fn nesting_past_the_limit_is_a_diagnostic() {
    let depth = keopsc::syntax::parse::MAX_NESTING + 1;
    let result =
        on_small_stack(move || driver::compile(SourceFile::new("deeper.kf", nested(depth))));
    let Err((source, diagnostics)) = result else {
        panic!("compiles")
    };
    assert_eq!(diagnostics.len(), 1);
    assert!(
        diagnostics[0].message.contains("nests more than"),
        "{diagnostics:?}"
    );
    // It points at the bracket that went too deep.
    let at = diagnostics[0].primary_span().start;
    assert_eq!(source.line_col(at).0, 3);
    // Unary signs nest too.
    let signs = format!(
        "kernel k {{ x = Vi(1)\n Sum_Reduction({}x, 0) }}",
        "-".repeat(keopsc::syntax::parse::MAX_NESTING + 1)
    );
    let result = on_small_stack(move || driver::compile(SourceFile::new("signs.kf", signs)));
    assert!(matches!(result, Err((_, d)) if d[0].message.contains("nests more than")));
}

#[test]
fn internal_errors_name_their_stage_and_do_not_point_at_the_source() {
    let d = Diagnostic::internal("simplification", "ran past its limit");
    let source = SourceFile::new("k.kf", "kernel k { x = Vi(1)\n Sum_Reduction(x, 0) }");
    let text = render_all(std::slice::from_ref(&d), &source, false);
    assert!(
        text.starts_with("error: internal error in simplification: ran past its limit"),
        "{text}"
    );
    assert!(text.contains("not a problem with the input"), "{text}");
    assert!(
        !text.contains("Sum_Reduction"),
        "an internal error quotes no source: {text}"
    );
    assert_eq!(
        d.to_string(),
        "error: internal error in simplification: ran past its limit"
    );
}

/// The optimised formula and the generated code depend on the source, options and target
/// alone: `keopsc explain --llvm` gives the same bytes in separate processes (hash seeds
/// differ), one of them on a machine kept busy by other threads.
#[test]
fn explain_is_byte_identical_on_an_idle_and_a_loaded_machine() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/kf/pass/gradients.kf");
    let explain = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keopsc"))
            .args(["explain", file, "--llvm", "--dtype", "f64"])
            .output()
            .expect("keopsc runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let idle = explain();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let loaded = explain();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(
        idle == loaded,
        "explain differs between runs:\n--- idle ---\n{}\n--- loaded ---\n{}",
        String::from_utf8_lossy(&idle),
        String::from_utf8_lossy(&loaded)
    );
    assert!(String::from_utf8_lossy(&idle).contains("-- llvm (optimised) --"));
}

/// The compile cache prints the syntax tree for its key: that too runs on the compiler's stack.
#[test]
fn the_compile_cache_takes_deep_formulas_from_a_small_stack() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().to_path_buf();
    let depth = 20_000;
    let source = format!(
        "kernel k {{ x = Vi(1)\n y = Vj(1)\n Sum_Reduction({}x{} * y, 0) }}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let outcome = on_small_stack(move || {
        keopsc::artifact::cache::CompileCache::open(path)
            .kernel(&source, None)
            .map(|(kernel, _)| kernel.signature().to_string())
            .map_err(|e| e.to_string())
    });
    let signature = outcome.expect("compiles through the cache");
    assert!(signature.contains("Sum_Reduction"), "{signature}");
}
