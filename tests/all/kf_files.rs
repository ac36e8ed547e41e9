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
