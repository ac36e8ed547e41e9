//! The REPL: a scripted session through its logic (the transcript is a snapshot, reviewed:
//! every stage of a kernel, errors that do not end the session), and the `keopsc repl` binary
//! with piped standard input, including the generated code.

use keopsc::repl::{Repl, Step};
use std::io::Write;
use std::process::{Command, Stdio};

const SESSION: &[&str] = &[
    ":ast",
    "kernel gauss {",
    "    x = Vi(3)",
    "    y = Vj(3)   # the j points",
    "    b = Vj(1)",
    "    s = Pm(1)",
    "    Sum_Reduction(Exp(-SqDist(x, y) / (2 * s * s)) * b, 0)",
    "}",
    ":list",
    ":ast",
    ":checked gauss",
    ":simplified",
    ":grad x",
    ":grad gauss q",
    "kernel knn { x = Vi(2)",
    "  y = Vj(2)",
    "  ArgKMin_Reduction(SqDist(x, y), 2, 0) }",
    ":simplified",
    ":simplified knn",
    "kernel broken {",
    "    x = Vi(3)",
    "    Sum_Reduction(Exq(x) + SqDist(x, Vj(2)), 0)",
    "}",
    ":ptx knn",
    ":nope",
    ":list",
    ":quit",
    ":list",
];

/// The session as a transcript: each input line after a prompt, then what it printed.
fn transcript(lines: &[&str]) -> String {
    let mut repl = Repl::new();
    // No clock may cut the optimiser short: the snapshot is the same on any machine.
    repl.budget.time_limit = std::time::Duration::from_secs(60);
    let mut text = String::new();
    for line in lines {
        let prompt = if repl.is_pending() { "... " } else { "kf> " };
        text.push_str(&format!("{prompt}{line}\n"));
        let mut out = String::new();
        let step = repl.handle_line(line, &mut out);
        text.push_str(&out);
        if step == Step::Quit {
            break;
        }
    }
    text
}

#[test]
fn a_scripted_session_shows_every_stage() {
    insta::assert_snapshot!(transcript(SESSION));
}

#[test]
fn evaluation_reports_the_output_and_its_timing() {
    let mut repl = Repl::new();
    let mut out = String::new();
    for line in [
        "kernel k {",
        " x = Vi(2)",
        " y = Vj(2)",
        " Sum_Reduction(SqDist(x, y), 1)",
        "}",
    ] {
        repl.handle_line(line, &mut out);
    }
    out.clear();
    repl.handle_line(":eval 10 7 f64", &mut out);
    assert!(out.starts_with("output [7, 1] float64 in "), "{out}");
    assert!(out.contains("N = 10, M = 7"), "{out}");
    out.clear();
    repl.handle_line(":eval k x=/nonexistent.npy", &mut out);
    assert!(out.starts_with("error: argument `x`"), "{out}");
}

/// Runs `keopsc repl` with `input` on its standard input; returns its standard output.
fn piped_session(input: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keopsc"))
        .arg("repl")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keopsc starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("written");
    let output = child.wait_with_output().expect("keopsc ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_binary_reads_piped_input_and_shows_generated_code() {
    let input = "kernel g {\n x = Vi(3)\n y = Vj(3)\n Sum_Reduction(Exp(-SqDist(x, y)), 0)\n}\n:llvm\n:asm g f64\n:eval 20\n:quit\n";
    let out = piped_session(input);
    assert!(
        out.contains("defined kernel g(x = Vi(3), y = Vj(3))"),
        "{out}"
    );
    assert!(out.contains("define void @keops_tile"), "{out}");
    assert!(out.contains("-- assembly ("), "{out}");
    // The polynomial exp inlined: fused multiply-adds (on hosts that have them), and no call
    // to a libm exp.
    if keops_runtime::module::cpu_has("fma") {
        assert!(out.contains("vfmadd"), "{out}");
    }
    assert!(!out.contains("call\texp") && !out.contains("@exp"), "{out}");
    assert!(out.contains("output [20, 1] float32"), "{out}");
}

/// The same kind of session through the binary's standard input (no prompts when piped): its
/// output is a snapshot too. Stages whose result could depend on the optimiser's clock (large
/// gradients) are left to the library session above.
#[test]
fn a_session_piped_to_the_binary() {
    let lines = [
        "kernel gauss {",
        "    x = Vi(3)",
        "    y = Vj(3)",
        "    b = Vj(1)",
        "    Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)",
        "}",
        ":checked",
        ":simplified gauss",
        ":grad nope",
        "kernel broken { x = Vi(2)",
        "  Sum_Reduction(Sqrt(x, x), 0) }",
        ":help",
        ":quit",
        ":list",
    ];
    let input = lines.join("\n") + "\n";
    insta::assert_snapshot!(piped_session(&input));
}
