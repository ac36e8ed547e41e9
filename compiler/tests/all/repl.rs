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
    ":ptx nosuch",
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

/// Outside a kernel: session variables declared as KeOps aliases, and bare formulas that become
/// kernels named f1, f2, ... over the variables they name (a snapshot, reviewed).
const BARE_SESSION: &[&str] = &[
    "x = Vi(3)",
    "y = Vj(3)   # the j points",
    "b = Vj(1)",
    "Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)",
    "Exp(-SqDist(x,",
    "    y))",
    "z = Vq(3)",
    "w = Exp(x)",
    "LogSumExp_Reduction(q, 0)",
    "b = Pm(1)",
    "Sum_Reduction(b * x, 0)",
    ":list",
    ":simplified f1",
    ":checked f3",
];

#[test]
fn bare_formulas_over_session_variables() {
    insta::assert_snapshot!(transcript(BARE_SESSION));
}

/// KeOps's positional aliases: every session variable is an argument of a bare formula, so that
/// positions stay 0, 1, 2 even when the formula names only some of them.
#[test]
fn positional_session_variables_keep_their_positions() {
    let mut repl = Repl::new();
    let mut out = String::new();
    for line in [
        "x = Vi(0, 3)",
        "y = Vj(1, 3)",
        "b = Vj(2, 1)",
        "Sum_Reduction(SqDist(x, y), 0)",
    ] {
        repl.handle_line(line, &mut out);
    }
    assert!(
        out.contains("defined kernel f1(x = Vi(3), y = Vj(3), b = Vj(1))"),
        "{out}"
    );
}

#[test]
fn load_defines_every_kernel_of_a_file() {
    let mut repl = Repl::new();
    let mut out = String::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.kf");
    std::fs::write(
        &path,
        "kernel one {\n x = Vi(1)\n Sum_Reduction(x, 0)\n}\nkernel two {\n y = Vj(2)\n Max_Reduction(y, 1)\n}\n",
    )
    .unwrap();
    repl.handle_line(&format!(":load {}", path.display()), &mut out);
    assert!(out.contains("defined kernel one(x = Vi(1))"), "{out}");
    assert!(out.contains("defined kernel two(y = Vj(2))"), "{out}");
    assert_eq!(repl.kernel_names(), vec!["one", "two"]);
    out.clear();
    repl.handle_line(":load /nonexistent/file.kf", &mut out);
    assert!(
        out.starts_with("error: cannot read `/nonexistent/file.kf`"),
        "{out}"
    );
    // A file with an error: its diagnostics point into the file, by name.
    let bad = dir.path().join("bad.kf");
    std::fs::write(
        &bad,
        "kernel bad {\n x = Vi(1)\n Sum_Reduction(Exq(x), 0)\n}\n",
    )
    .unwrap();
    out.clear();
    repl.handle_line(&format!(":load {}", bad.display()), &mut out);
    assert!(out.contains("bad.kf:3:"), "{out}");
    assert_eq!(repl.kernel_names(), vec!["one", "two"]);
}

#[test]
fn eval_writes_its_output_with_dash_o() {
    let mut repl = Repl::new();
    let mut out = String::new();
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    keops_runtime::HostArray::from_f64(vec![2, 1], vec![1.0, 2.0])
        .write_npy(&x)
        .unwrap();
    for line in ["x = Vi(1)", "y = Vj(1)", "Sum_Reduction(x * y, 0)"] {
        repl.handle_line(line, &mut out);
    }
    let result = dir.path().join("out.npy");
    out.clear();
    repl.handle_line(
        &format!(
            ":eval f1 x={} y={} -o {}",
            x.display(),
            x.display(),
            result.display()
        ),
        &mut out,
    );
    assert!(out.contains("wrote "), "{out}");
    // x_i * (1 + 2), from the interpreter's arithmetic by hand.
    let written = keops_runtime::HostArray::read_npy(&result).unwrap();
    assert_eq!(written.shape, vec![2, 1]);
    assert_eq!(written.to_f64(), vec![3.0, 6.0]);
    // A path that cannot be written is an error before any work, and nothing is written.
    out.clear();
    repl.handle_line(":eval f1 3 -o /nonexistent/dir/out.npy", &mut out);
    assert!(
        out.starts_with("error: output `/nonexistent/dir/out.npy`"),
        "{out}"
    );
    out.clear();
    repl.handle_line(":eval f1 3 -o", &mut out);
    assert!(out.starts_with("error: `-o` needs a file"), "{out}");
}

/// `:vjp`: the backward plan of a whole reduction (several inputs together) and each kernel it
/// runs, checked and simplified; the errors (unknown, repeated input, arg-only reduction).
#[test]
fn vjp_shows_the_backward_plan_and_its_kernels() {
    insta::assert_snapshot!(transcript(&[
        "kernel lse {",
        "    x = Vi(2)",
        "    y = Vj(2)",
        "    s = Pm(1)",
        "    LogSumExp_Reduction(-SqDist(x, y) * s, 0)",
        "}",
        ":vjp s y x",
        "kernel near { x = Vi(1)",
        "  y = Vj(1)",
        "  Min_Reduction(Square(x - y), 0) }",
        ":vjp near y",
        ":vjp lse q",
        ":vjp lse x x",
        ":vjp lse",
        "kernel knn { x = Vi(2)",
        "  y = Vj(2)",
        "  ArgKMin_Reduction(SqDist(x, y), 2, 0) }",
        ":vjp knn x",
    ]));
}

#[test]
fn vjp_with_llvm_shows_each_backward_kernel_code() {
    let text = transcript(&[
        "kernel g { x = Vi(3)",
        "  y = Vj(3)",
        "  Sum_Reduction(Exp(-SqDist(x, y)), 0) }",
        ":vjp x y --llvm f64",
    ]);
    assert_eq!(text.matches("-- llvm (optimised) --").count(), 2, "{text}");
    assert!(text.contains("double"), "{text}");
    assert!(!text.contains("error"), "{text}");
}

#[test]
fn ptx_shows_the_gpu_kernel_of_a_defined_kernel() {
    let mut repl = Repl::new();
    let mut out = String::new();
    repl.handle_line(
        "kernel g { x = Vi(3) y = Vj(3) Sum_Reduction(Exp(-SqDist(x, y)), 0) }",
        &mut out,
    );
    out.clear();
    repl.handle_line(":ptx g f64", &mut out);
    assert!(out.contains("-- gpu schedule (float64, nvptx64"), "{out}");
    assert!(out.contains("-- formula (gpu prices) --"), "{out}");
    assert!(out.contains(".entry keops_gpu_tile_1d"), "{out}");
    assert!(out.contains("-- ptxas --"), "{out}");
    out.clear();
    repl.handle_line(":ptx g f16", &mut out);
    assert!(out.starts_with("error: "), "{out}");
}

/// `:power` applies a kernel as a linear operator repeatedly: on random data, normalised
/// row-stochastic over one cloud (each pair once), every step keeps a constant vector constant;
/// on files, the result against the dense product; a kernel not linear in the operand, or
/// an operand of the wrong category, is refused.
#[test]
fn power_applies_a_kernel_as_an_operator_repeatedly() {
    let dir = tempfile::tempdir().expect("temp dir");
    use keops_runtime::HostArray;
    let mut repl = Repl::new();
    let mut run = |line: &str| -> String {
        let mut out = String::new();
        repl.handle_line(line, &mut out);
        out
    };
    run("kernel heat { x = Vi(3) y = Vj(3) t = Vj(1) Sum_Reduction(Exp(-SqDist(x, y) * 20) * t, 0) }");
    let out = run(":power 3 500 --same y=x --normalize row");
    assert!(out.contains("each unordered pair once"), "{out}");
    assert!(out.contains("3 products in"), "{out}");
    // Files: x and the starting vector; y = x; P = D^-1 K applied twice, against dense.
    let n = 40;
    let x: Vec<f64> = (0..n * 3)
        .map(|k| ((k * 7919) % 97) as f64 / 97.0)
        .collect();
    let t: Vec<f64> = (0..n).map(|k| (k as f64 * 0.3).sin()).collect();
    let xp = dir.path().join("x.npy");
    let tp = dir.path().join("t.npy");
    let op = dir.path().join("out.npy");
    HostArray::from_f64(vec![n, 3], x.clone())
        .write_npy(&xp)
        .unwrap();
    HostArray::from_f64(vec![n, 1], t.clone())
        .write_npy(&tp)
        .unwrap();
    let out = run(&format!(
        ":power 2 x={} t={} --same y=x --normalize row -o {}",
        xp.display(),
        tp.display(),
        op.display()
    ));
    assert!(out.contains("wrote"), "{out}");
    let k: Vec<f64> = (0..n * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let d2: f64 = (0..3).map(|c| (x[i * 3 + c] - x[j * 3 + c]).powi(2)).sum();
            (-d2 * 20.0).exp()
        })
        .collect();
    let step = |v: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let row = &k[i * n..(i + 1) * n];
                row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() / row.iter().sum::<f64>()
            })
            .collect()
    };
    let want = step(&step(&t));
    let got = HostArray::read_npy(&op).unwrap().to_f64();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    let out = run(":power 2 100 --operand x");
    assert!(out.contains("the operand must be a Vj variable"), "{out}");
    run("kernel square { x = Vi(1) y = Vj(1) b = Vj(1) Sum_Reduction(Exp(-SqDist(x, y)) * b * b, 0) }");
    let out = run(":power square 2 100 --operand b");
    assert!(out.contains("is not a linear operator on `b`"), "{out}");
}
