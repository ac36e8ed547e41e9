//! The `keopsc` binary end to end: every bad input of the contract gets a clear message, a
//! non-zero exit and no panic; good input gives the right array.

use keops_runtime::{HostArray, IndexArray};
use std::path::{Path, PathBuf};
use std::process::Command;

const GAUSS: &str = "\
kernel gauss_conv {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    s = Pm(1)
    let g = Exp(-SqDist(x, y) / (2 * s * s))
    Sum_Reduction(g * b, 0)
}
";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keopsc(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_keopsc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("keopsc runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "keopsc panicked:\n{}",
        run.stderr
    );
    run
}

/// A temporary folder with the example kernel and its f64 arrays (N = 4, M = 5).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = Fixture { dir };
        f.write("gauss.kf", GAUSS);
        let x: Vec<f64> = (0..12).map(|k| k as f64 * 0.1).collect();
        let y: Vec<f64> = (0..15).map(|k| 1.0 - k as f64 * 0.05).collect();
        let b: Vec<f64> = (0..5).map(|k| k as f64 + 1.0).collect();
        f.npy("x.npy", HostArray::from_f64(vec![4, 3], x));
        f.npy("y.npy", HostArray::from_f64(vec![5, 3], y));
        f.npy("b.npy", HostArray::from_f64(vec![5, 1], b));
        f.npy("s.npy", HostArray::from_f64(vec![1], vec![0.7]));
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write");
    }

    fn npy(&self, name: &str, array: HostArray) {
        array.write_npy(&self.path(name)).expect("write npy");
    }

    /// Args for `eval FILE` with the given `--arg`s and output.
    fn eval_args(&self, kf: &str, args: &[(&str, &str)]) -> Vec<String> {
        let mut v = vec!["eval".to_string(), self.p(kf)];
        for (name, file) in args {
            v.push("--arg".into());
            v.push(format!("{name}={}", self.p(file)));
        }
        v.extend(["-o".to_string(), self.p("out.npy")]);
        v
    }

    fn run_eval(&self, kf: &str, args: &[(&str, &str)], extra: &[&str]) -> Run {
        let mut v = self.eval_args(kf, args);
        v.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        keopsc(&refs)
    }
}

const ALL_ARGS: [(&str, &str); 4] = [
    ("x", "x.npy"),
    ("y", "y.npy"),
    ("b", "b.npy"),
    ("s", "s.npy"),
];

fn assert_fails_with(run: &Run, needles: &[&str]) {
    assert_ne!(run.code, 0, "should fail; stderr:\n{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks `{needle}`:\n{}",
            run.stderr
        );
    }
}

#[test]
fn eval_computes_the_gaussian_convolution() {
    let f = Fixture::new();
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
    assert_eq!(out.shape, vec![4, 1]);
    let x: Vec<f64> = (0..12).map(|k| k as f64 * 0.1).collect();
    let y: Vec<f64> = (0..15).map(|k| 1.0 - k as f64 * 0.05).collect();
    let b: Vec<f64> = (0..5).map(|k| k as f64 + 1.0).collect();
    let values = out.to_f64();
    for i in 0..4 {
        let mut expected = 0.0;
        for j in 0..5 {
            let d2: f64 = (0..3).map(|c| (x[i * 3 + c] - y[j * 3 + c]).powi(2)).sum();
            expected += (-d2 / (2.0 * 0.49)).exp() * b[j];
        }
        assert!(
            (values[i] - expected).abs() < 1e-12 * expected.abs(),
            "row {i}"
        );
    }
}

#[test]
fn float32_in_float32_out_and_axis_1() {
    let f = Fixture::new();
    f.write(
        "t.kf",
        "kernel t { x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x * y, 1) }",
    );
    f.npy("a.npy", HostArray::from_f32(vec![3], vec![1.0, 2.0, 3.0]));
    f.npy("c.npy", HostArray::from_f32(vec![2, 1], vec![10.0, 20.0]));
    let run = f.run_eval(
        "t.kf",
        &[("x", "a.npy"), ("y", "c.npy")],
        &["--backend", "interp"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
    assert_eq!(out, HostArray::from_f32(vec![2, 1], vec![60.0, 120.0]));
}

#[test]
fn inline_positional_variables_are_passed_by_position() {
    let f = Fixture::new();
    f.write(
        "pos.kf",
        "kernel p { Sum_Reduction(Vi(0, 1) * Vj(1, 1), 0) }",
    );
    f.npy("a.npy", HostArray::from_f64(vec![2, 1], vec![1.0, 2.0]));
    f.npy(
        "c.npy",
        HostArray::from_f64(vec![3, 1], vec![1.0, 10.0, 100.0]),
    );
    let run = f.run_eval("pos.kf", &[("0", "a.npy"), ("1", "c.npy")], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
    assert_eq!(out, HostArray::from_f64(vec![2, 1], vec![111.0, 222.0]));
}

#[test]
fn check_prints_signatures() {
    let f = Fixture::new();
    let run = keopsc(&["check", &f.p("gauss.kf")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "kernel gauss_conv(x = Vi(3), y = Vj(3), b = Vj(1), s = Pm(1)) -> (N, 1) by Sum_Reduction over j"
    );
}

/// Each source error: non-zero exit, a message, and `file:line:col` of the offending place.
#[test]
fn source_errors_point_at_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "syntax",
            "kernel k {\n x = Vi(3)\n Sum_Reduction(Exp(x, 0)\n}",
            "syntax error",
        ),
        (
            "unknown_op",
            "kernel k {\n x = Vi(3)\n Sum_Reduction(Exq(x), 0)\n}",
            "did you mean `Exp`?",
        ),
        (
            "unknown_var",
            "kernel k {\n x = Vi(3)\n Sum_Reduction(Exp(xx), 0)\n}",
            "unknown variable `xx`",
        ),
        (
            "dims",
            "kernel k {\n x = Vi(3)\n y = Vj(2)\n Sum_Reduction(x + y, 0)\n}",
            "dimension mismatch",
        ),
        (
            "arity",
            "kernel k {\n x = Vi(3)\n Sum_Reduction(Exp(x, x), 0)\n}",
            "`Exp` takes 1 argument",
        ),
        (
            "no_reduction",
            "kernel k {\n x = Vi(3)\n}",
            "has no reduction",
        ),
        (
            "duplicate",
            "kernel k {\n x = Vi(3)\n x = Vj(3)\n Sum_Reduction(x, 0)\n}",
            "declared twice",
        ),
        (
            "not_reduction",
            "kernel k {\n x = Vi(3)\n Exp(x)\n}",
            "must be a reduction",
        ),
    ];
    let f = Fixture::new();
    for (name, text, message) in cases {
        let file = format!("{name}.kf");
        f.write(&file, text);
        let run = keopsc(&["check", &f.p(&file)]);
        assert_fails_with(&run, &[message]);
        // ariadne's location header: `[ path:line:col ]`
        let location = run.stderr.lines().find_map(|l| {
            l.split(&format!("{file}:"))
                .nth(1)
                .map(|r| r.trim_end_matches(" ]").to_string())
        });
        let parsed = location.as_deref().and_then(|loc| {
            let (line, col) = loc.split_once(':')?;
            Some((
                line.trim().parse::<usize>().ok()?,
                col.trim().parse::<usize>().ok()?,
            ))
        });
        assert!(
            parsed.is_some(),
            "{name}: no line:column in\n{}",
            run.stderr
        );
        // eval reports the same, before touching any data
        let run = f.run_eval(&file, &[], &[]);
        assert_fails_with(&run, &[message]);
    }
}

#[test]
fn several_errors_are_all_reported() {
    let f = Fixture::new();
    f.write(
        "many.kf",
        "kernel a {\n x = Vi(3)\n let u = Exq(x)\n Sum_Reduction(u + zz, 0)\n}\nkernel b {\n y = Vj(2)\n Sum_Reduction(y, 3)\n}",
    );
    let run = keopsc(&["check", &f.p("many.kf")]);
    assert_fails_with(
        &run,
        &[
            "unknown operator `Exq`",
            "unknown variable `zz`",
            "axis must be 0 or 1",
            "3 errors",
        ],
    );
}

#[test]
fn data_errors_name_the_argument() {
    let f = Fixture::new();
    f.npy("x32.npy", HostArray::from_f32(vec![4, 3], vec![0.0; 12]));
    f.npy("x2.npy", HostArray::from_f64(vec![4, 2], vec![0.0; 8]));
    f.npy("y6.npy", HostArray::from_f64(vec![6, 3], vec![0.0; 18]));
    std::fs::write(
        f.path("int.npy"),
        npy_bytes("<i8", false, &[4, 3], &[0u8; 96]),
    )
    .unwrap();
    std::fs::write(f.path("garbage.npy"), b"not an npy file").unwrap();
    let with = |name: &'static str, file: &'static str| -> Vec<(&'static str, &'static str)> {
        ALL_ARGS
            .iter()
            .map(|&(n, p)| if n == name { (n, file) } else { (n, p) })
            .collect()
    };
    // (the --arg pairs, what stderr must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            with("x", "x32.npy"),
            vec!["`y`", "float64", "`x`", "float32"],
        ),
        (
            with("x", "x2.npy"),
            vec!["argument `x`", "(4, 2)", "(N, 3)"],
        ),
        (with("y", "y6.npy"), vec!["`b`", "6 rows against 5"]),
        (
            with("x", "int.npy"),
            vec!["argument `x`", "<i8", "float32 or float64"],
        ),
        (
            with("x", "garbage.npy"),
            vec!["argument `x`", "not a valid .npy file"],
        ),
        (
            with("x", "missing.npy"),
            vec!["argument `x`", "missing.npy"],
        ),
        (ALL_ARGS[..3].to_vec(), vec!["missing argument `s`"]),
        (
            ALL_ARGS.iter().copied().chain([("z", "s.npy")]).collect(),
            vec!["unknown argument `z`", "`x`, `y`, `b`, `s`"],
        ),
        (
            ALL_ARGS.iter().copied().chain([("x", "x.npy")]).collect(),
            vec!["argument `x` is given twice"],
        ),
    ];
    for (args, needles) in cases {
        let run = f.run_eval("gauss.kf", &args, &[]);
        assert_fails_with(&run, &needles);
    }
}

#[test]
fn cli_usage_errors() {
    let f = Fixture::new();
    assert_fails_with(
        &keopsc(&["check", &f.p("nope.kf")]),
        &["cannot read", "nope.kf"],
    );
    assert_fails_with(
        &f.run_eval("gauss.kf", &ALL_ARGS, &["--kernel", "other"]),
        &["no kernel `other`"],
    );
    assert_fails_with(
        &f.run_eval("gauss.kf", &ALL_ARGS, &["--backend", "tpu"]),
        &["unknown backend `tpu`"],
    );
    f.write(
        "two.kf",
        &format!("{GAUSS}\n{}", GAUSS.replace("gauss_conv", "other")),
    );
    assert_fails_with(
        &f.run_eval("two.kf", &ALL_ARGS, &[]),
        &["defines 2 kernels", "--kernel"],
    );
    let bad_arg = keopsc(&["eval", &f.p("gauss.kf"), "--arg", "x", "-o", &f.p("o.npy")]);
    assert_fails_with(&bad_arg, &["expected NAME=FILE.npy"]);
    let mut args = f.eval_args("gauss.kf", &ALL_ARGS);
    let n = args.len();
    args[n - 1] = Path::new("/nonexistent-dir/out.npy").display().to_string();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_with(&keopsc(&refs), &["output", "nonexistent-dir"]);
}

#[test]
fn nan_in_data_propagates() {
    let f = Fixture::new();
    let mut b: Vec<f64> = (0..5).map(|k| k as f64).collect();
    b[2] = f64::NAN;
    f.npy("bnan.npy", HostArray::from_f64(vec![5, 1], b));
    let args: Vec<(&str, &str)> = ALL_ARGS
        .iter()
        .map(|&(n, p)| if n == "b" { (n, "bnan.npy") } else { (n, p) })
        .collect();
    let run = f.run_eval("gauss.kf", &args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
    assert!(out.to_f64().iter().all(|v| v.is_nan()));
}

/// A `.npy` file with any dtype and order, written by hand (the crate writes only C order).
fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let order = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

/// `Sum_Reduction(Grad(F, x, e), 0)` and `Sum_Reduction(Grad(F, y, e), 1)` through the binary,
/// against the closed-form gradients of the Gaussian kernel.
#[test]
fn eval_reductions_of_gradients() {
    let f = Fixture::new();
    f.write(
        "grad.kf",
        "kernel gx {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n e = Vi(1)\n Sum_Reduction(Grad(Exp(-SqDist(x, y)) * b, x, e), 0)\n}\n\
         kernel gy {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n e = Vi(1)\n Sum_Reduction(Grad(Exp(-SqDist(x, y)) * b, y, e), 1)\n}\n",
    );
    let e: Vec<f64> = vec![0.5, -1.0, 2.0, 1.5];
    f.npy("e.npy", HostArray::from_f64(vec![4, 1], e.clone()));
    let x: Vec<f64> = (0..12).map(|k| k as f64 * 0.1).collect();
    let y: Vec<f64> = (0..15).map(|k| 1.0 - k as f64 * 0.05).collect();
    let b: Vec<f64> = (0..5).map(|k| k as f64 + 1.0).collect();
    let args = [
        ("x", "x.npy"),
        ("y", "y.npy"),
        ("b", "b.npy"),
        ("e", "e.npy"),
    ];
    // d/dx_i exp(-|x_i - y_j|^2) b_j e_i = -2 (x_i - y_j) exp(..) b_j e_i
    let term = |i: usize, j: usize, c: usize| {
        let d2: f64 = (0..3).map(|k| (x[i * 3 + k] - y[j * 3 + k]).powi(2)).sum();
        -2.0 * (x[i * 3 + c] - y[j * 3 + c]) * (-d2).exp() * b[j] * e[i]
    };
    for (kernel, rows, inner, sign) in [("gx", 4, 5, 1.0), ("gy", 5, 4, -1.0)] {
        let run = f.run_eval(
            "grad.kf",
            &args,
            &["--kernel", kernel, "--backend", "interp"],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
        assert_eq!(out.shape, vec![rows, 3], "{kernel}");
        let got = out.to_f64();
        for r in 0..rows {
            for c in 0..3 {
                let want: f64 = (0..inner)
                    .map(|t| {
                        if kernel == "gx" {
                            term(r, t, c)
                        } else {
                            sign * term(t, r, c)
                        }
                    })
                    .sum();
                let g = got[r * 3 + c];
                assert!(
                    (g - want).abs() < 1e-12 * (1.0 + want.abs()),
                    "{kernel}[{r}, {c}]: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn explain_shows_every_stage() {
    let f = Fixture::new();
    let run = keopsc(&["explain", &f.p("gauss.kf"), "--timings"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for section in [
        "-- ast --",
        "-- checked --",
        "-- simplified",
        "cost:",
        "hoisted per call:",
        "timings:",
    ] {
        assert!(
            run.stdout.contains(section),
            "explain lacks `{section}`:\n{}",
            run.stdout
        );
    }
    assert_fails_with(
        &keopsc(&["explain", &f.p("gauss.kf"), "--kernel", "nope"]),
        &["no kernel `nope`"],
    );
    // The GPU code: optimised at the GPU's prices, its schedule, the PTX with ex2.approx for
    // f32 exp, and ptxas's report with the occupancy it gives (where ptxas is installed).
    let run = keopsc(&["explain", &f.p("gauss.kf"), "--ptx"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for section in [
        "-- formula (gpu prices) --",
        "-- gpu schedule (float32, nvptx64-nvidia-cuda sm_80",
        "ex2.approx.ftz.f32",
        "-- ptxas --",
    ] {
        assert!(
            run.stdout.contains(section),
            "lacks `{section}`:\n{}",
            run.stdout
        );
    }
    if keopsc::codegen::nvptx::find_ptxas().is_some() {
        assert!(
            run.stdout.contains("% occupancy, bounded by"),
            "{}",
            run.stdout
        );
    }
}

/// A long generated formula (a sum of thousands of terms is a left-deep tree) and deeply
/// nested parentheses compile: the front end's recursion has the stack it needs.
#[test]
fn deep_formulas_compile() {
    let f = Fixture::new();
    let terms = vec!["x * y"; 3000].join(" + ");
    let nested = format!("{}x{}", "(".repeat(1000), ")".repeat(1000));
    f.write(
        "deep.kf",
        &format!(
            "kernel deep {{\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction({terms} + {nested}, 0)\n}}\n"
        ),
    );
    let run = keopsc(&["check", &f.p("deep.kf")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("kernel deep(x = Vi(1), y = Vj(1)) -> (N, 1)"),
        "{}",
        run.stdout
    );
}

#[test]
fn build_writes_a_module_and_reports_bad_input() {
    let f = Fixture::new();
    let out = f.p("g.kmod");
    let run = keopsc(&[
        "build",
        &f.p("gauss.kf"),
        "-o",
        &out,
        "--target",
        "x86-64-v2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("x86-64-v2") && run.stdout.contains("gauss_conv"),
        "{}",
        run.stdout
    );
    let module = keops_runtime::Module::load(&out).expect("loads");
    assert_eq!(module.manifest().target.cpu, "x86-64-v2");
    // Both dtypes by default; one when asked.
    assert_eq!(
        module.kernel("gauss_conv").expect("present").dtypes().len(),
        2
    );
    let run = keopsc(&["build", &f.p("gauss.kf"), "-o", &out, "--dtype", "f64"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let module = keops_runtime::Module::load(&out).expect("loads");
    assert_eq!(
        module.kernel("gauss_conv").expect("present").dtypes(),
        vec![keops_runtime::DType::F64]
    );

    assert_fails_with(
        &keopsc(&["build", &f.p("gauss.kf"), "--target", "pentium"]),
        &["unknown target `pentium`", "x86-64-v3"],
    );
    assert_fails_with(
        &keopsc(&["build", &f.p("gauss.kf"), "--dtype", "f16"]),
        &["unknown dtype `f16`"],
    );
    assert_fails_with(&keopsc(&["build", &f.p("missing.kf")]), &["missing.kf"]);
    f.write(
        "bad.kf",
        "kernel k {\n x = Vi(3)\n Sum_Reduction(Exq(x), 0)\n}\n",
    );
    assert_fails_with(
        &keopsc(&["build", &f.p("bad.kf")]),
        &["bad.kf:3:", "did you mean `Exp`"],
    );
}

#[test]
fn bench_rejects_unknown_workloads_and_dtypes() {
    assert_fails_with(
        &keopsc(&["bench", "--workload", "W9"]),
        &["unknown workload `W9`"],
    );
    assert_fails_with(
        &keopsc(&["bench", "--dtype", "f16"]),
        &["unknown dtype `f16`"],
    );
    assert_fails_with(
        &keopsc(&["bench", "--backend", "interp"]),
        &["choose cpu or cuda"],
    );
    // This test binary is built without the `cuda` feature: the backend is not in the build.
    assert_fails_with(
        &keopsc(&["bench", "--backend", "cuda", "--workload", "W1"]),
        &["`cuda` backend is not available in this build"],
    );
    let run = keopsc(&[
        "bench",
        "--workload",
        "W4",
        "--size",
        "300",
        "--repeat",
        "1",
        "--dtype",
        "f64",
        "--no-c",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("ArgKMin K=10") && run.stdout.contains("pairs/s"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.starts_with("machine: "), "{}", run.stdout);
    // The bandwidth sweep: one row per g, each against g = 1.
    let sweep = keopsc(&[
        "bench",
        "--workload",
        "W1g",
        "--size",
        "300",
        "--repeat",
        "1",
        "--dtype",
        "f32",
        "--no-c",
    ]);
    assert_eq!(sweep.code, 0, "{}", sweep.stderr);
    for g in ["1", "30", "100", "500", "5000"] {
        assert!(
            sweep.stdout.contains(&format!("W1, g = {g} ")),
            "g = {g}:\n{}",
            sweep.stdout
        );
    }
    assert_eq!(
        sweep.stdout.matches("the time of g = 1").count(),
        5,
        "{}",
        sweep.stdout
    );
    // The cliffs: each kernel's adversarial data against uniform data.
    let cliffs = keopsc(&[
        "bench",
        "--workload",
        "C1",
        "--size",
        "300",
        "--repeat",
        "1",
        "--dtype",
        "f64",
        "--no-c",
    ]);
    assert_eq!(cliffs.code, 0, "{}", cliffs.stderr);
    for title in [
        "LSE, max grows each j",
        "ArgKMin, all j enter",
        "Log of tiny products",
    ] {
        assert!(
            cliffs.stdout.lines().any(|l| l.starts_with("C1")
                && l.contains(title)
                && l.contains("the time on uniform data")),
            "{title}:\n{}",
            cliffs.stdout
        );
    }
}

/// With the C programs, the table has the machine's bound under the machine's line, and W1's
/// row its share of it (with gcc; without, the line says why it is missing).
#[test]
fn bench_prints_the_bound_and_each_bounded_workloads_share() {
    let run = keopsc(&[
        "bench",
        "--workload",
        "W1",
        "--size",
        "300",
        "--repeat",
        "1",
        "--dtype",
        "f32",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("machine: "), "{}", run.stdout);
    assert!(lines[1].starts_with("bound: "), "{}", run.stdout);
    let gcc = std::process::Command::new("gcc").arg("--version").output();
    if gcc.is_ok_and(|o| o.status.success()) {
        assert!(
            lines[1].contains("f32 lane-ops/s") && lines[1].contains("W1 D=3: 13"),
            "{}",
            lines[1]
        );
        let w1 = lines
            .iter()
            .find(|l| l.starts_with("W1 "))
            .expect("a W1 row");
        assert!(w1.contains("% of the bound "), "{w1}");
    } else {
        assert!(
            lines[1].starts_with("bound: not measured ("),
            "{}",
            lines[1]
        );
    }
}

#[test]
fn kernels_beyond_the_cpu_backend_are_refused_with_a_way_out() {
    let f = Fixture::new();
    // K = 16 lists of 606 components in every SIMD lane: over 256 KiB of accumulators per
    // tile even with 2 f64 lanes.
    f.write(
        "huge.kf",
        "kernel huge {\n x = Vi(3)\n y = Vj(3)\n ArgKMin_Reduction(Concat(Concat(x, y), Zero(600)), 16, 0)\n}\n",
    );
    let args = [("x", "x.npy"), ("y", "y.npy")];
    assert_fails_with(
        &f.run_eval("huge.kf", &args, &[]),
        &["cannot compile kernel `huge`", "--backend interp"],
    );
    let run = f.run_eval("huge.kf", &args, &["--backend", "interp"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// The files left in the fixture's folder (temporary outputs included).
fn files_in(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(f.dir.path())
        .expect("listable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An output path that cannot be written is refused before anything else runs: the source is
/// not even parsed (its syntax error is not reported), no argument is read, and no file is
/// left behind.
#[test]
fn a_bad_output_path_fails_before_any_work() {
    let f = Fixture::new();
    f.write(
        "broken.kf",
        "kernel k {\n x = Vi(3)\n Sum_Reduction(Exp(x, 0)\n}",
    );
    let before = files_in(&f);
    let missing_dir = f.path("no-such-dir").join("out.npy");
    for (flag, path) in [
        ("-o", missing_dir.clone()),
        ("-o", f.dir.path().to_path_buf()),
        ("--indices-out", missing_dir.clone()),
    ] {
        let mut args = vec![
            "eval".to_string(),
            f.p("broken.kf"),
            "--arg".into(),
            "x=absent.npy".into(),
        ];
        if flag == "-o" {
            args.extend(["-o".into(), path.display().to_string()]);
        } else {
            args.extend(["-o".into(), f.p("out.npy")]);
            args.extend([flag.into(), path.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = keopsc(&refs);
        assert_fails_with(&run, &[&format!("`{flag} {}`", path.display())]);
        assert!(
            !run.stderr.contains("syntax error") && !run.stderr.contains("absent.npy"),
            "work was done before the output was checked:\n{}",
            run.stderr
        );
        assert!(!missing_dir.exists());
        assert_eq!(files_in(&f), before, "files left behind");
    }
}

/// A run that fails after the output was opened (here: an argument is missing) keeps what the
/// output path held, and leaves no temporary file.
#[test]
fn a_failed_run_keeps_the_previous_output() {
    let f = Fixture::new();
    f.write("out.npy", "previous contents");
    let before = files_in(&f);
    let run = f.run_eval("gauss.kf", &ALL_ARGS[..3], &[]);
    assert_fails_with(&run, &["missing argument `s`"]);
    assert_eq!(
        std::fs::read_to_string(f.path("out.npy")).unwrap(),
        "previous contents"
    );
    assert_eq!(files_in(&f), before);
    // A successful run replaces it.
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        HostArray::read_npy(&f.path("out.npy")).unwrap().shape,
        vec![4, 1]
    );
    assert_eq!(files_in(&f), before);
}

/// Every problem with the arguments is listed in one run, each naming its argument.
#[test]
fn all_argument_errors_are_reported_at_once() {
    let f = Fixture::new();
    f.npy("x2.npy", HostArray::from_f64(vec![4, 2], vec![0.0; 8]));
    f.npy("b32.npy", HostArray::from_f32(vec![5, 1], vec![0.0; 5]));
    std::fs::write(
        f.path("int.npy"),
        npy_bytes("<i8", false, &[4, 3], &[0u8; 96]),
    )
    .unwrap();
    let args = [
        ("x", "x2.npy"),
        ("y", "int.npy"),
        ("b", "b32.npy"),
        ("z", "s.npy"),
        ("b", "b.npy"),
    ];
    let mut extra = vec!["--arg", "oops"];
    extra.extend(["--index-dtype", "int64"]);
    let run = f.run_eval("gauss.kf", &args, &extra);
    assert_fails_with(
        &run,
        &[
            "`--arg oops`: expected NAME=FILE.npy",
            "unknown argument `z`",
            "argument `b` is given twice",
            "missing argument `s`",
            "argument `y`",
            "<i8",
            "argument `x` (Vi(3)) has shape (4, 2)",
            "argument `b` is float32 but `x` is float64",
            "7 problems",
            "nothing was computed",
        ],
    );
    assert!(!f.path("out.npy").exists());
    // Unknown index dtypes are refused before anything runs.
    assert_fails_with(
        &f.run_eval("gauss.kf", &ALL_ARGS, &["--index-dtype", "int32"]),
        &["`--index-dtype int32`"],
    );
}

/// A 0-d array (numpy's `np.array(0.7)`, shape `()`) is a `Pm(1)`.
#[test]
fn a_zero_d_array_is_a_scalar_parameter() {
    let f = Fixture::new();
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = HostArray::read_npy(&f.path("out.npy")).unwrap();
    f.npy("s0.npy", HostArray::from_f64(vec![], vec![0.7]));
    assert_eq!(
        HostArray::read_npy(&f.path("s0.npy")).unwrap().shape,
        Vec::<usize>::new()
    );
    let args = [
        ("x", "x.npy"),
        ("y", "y.npy"),
        ("b", "b.npy"),
        ("s", "s0.npy"),
    ];
    for backend in ["cpu", "interp"] {
        let run = f.run_eval("gauss.kf", &args, &["--backend", backend]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
        assert_eq!(out.shape, expected.shape);
        for (a, b) in out.to_f64().iter().zip(expected.to_f64()) {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "{backend}: {a} vs {b}");
        }
    }
    // A 0-d array is no vector: `x` (Vi(3)) refuses it.
    let args = [
        ("x", "s0.npy"),
        ("y", "y.npy"),
        ("b", "b.npy"),
        ("s", "s.npy"),
    ];
    assert_fails_with(
        &f.run_eval("gauss.kf", &args, &[]),
        &["argument `x` (Vi(3)) has shape ()"],
    );
}

/// Arrays saved in Fortran order (numpy's `asfortranarray`, or a transpose) are copied into C
/// order: the result equals the C-order run exactly.
#[test]
fn fortran_order_inputs_give_the_c_order_result() {
    let f = Fixture::new();
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = HostArray::read_npy(&f.path("out.npy")).unwrap();
    // x (4, 3) and y (5, 3) column by column.
    let fortran = |rows: usize, values: &dyn Fn(usize) -> f64| -> Vec<u8> {
        let mut bytes = Vec::new();
        for c in 0..3 {
            for r in 0..rows {
                bytes.extend(values(r * 3 + c).to_le_bytes());
            }
        }
        npy_bytes("<f8", true, &[rows, 3], &bytes)
    };
    std::fs::write(f.path("xf.npy"), fortran(4, &|k| k as f64 * 0.1)).unwrap();
    std::fs::write(f.path("yf.npy"), fortran(5, &|k| 1.0 - k as f64 * 0.05)).unwrap();
    let xf = HostArray::read_npy(&f.path("xf.npy")).unwrap();
    assert_eq!(xf, HostArray::read_npy(&f.path("x.npy")).unwrap());
    let args = [
        ("x", "xf.npy"),
        ("y", "yf.npy"),
        ("b", "b.npy"),
        ("s", "s.npy"),
    ];
    let run = f.run_eval("gauss.kf", &args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(HostArray::read_npy(&f.path("out.npy")).unwrap(), expected);
}

const NEAREST: &str = "\
kernel kmin_argkmin { x = Vi(2)\n y = Vj(2)\n KMin_ArgKMin_Reduction(SqDist(x, y), 3, 0) }
kernel min_argmin { x = Vi(2)\n y = Vj(2)\n Min_ArgMin_Reduction(SqDist(x, y), 0) }
kernel max_argmax { x = Vi(2)\n y = Vj(2)\n Max_ArgMax_Reduction(x - y, 1) }
kernel argkmin { x = Vi(2)\n y = Vj(2)\n ArgKMin_Reduction(SqDist(x, y), 3, 0) }
kernel sum { x = Vi(2)\n y = Vj(2)\n Sum_Reduction(SqDist(x, y), 0) }
";

/// Indices apart from values: `--indices-out` writes the index columns of the contract's
/// layout as int64 (or as floats with `--index-dtype float`), `-o` the value columns; an
/// arg-only reduction with `--index-dtype int64` writes int64 to `-o`. The default layout is
/// unchanged.
#[test]
fn indices_can_be_written_apart_as_int64() {
    let f = Fixture::new();
    f.write("nearest.kf", NEAREST);
    let mut rng = 1u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let p: Vec<f64> = (0..14).map(|_| next()).collect();
    let q: Vec<f64> = (0..22).map(|_| next()).collect();
    f.npy("p.npy", HostArray::from_f64(vec![7, 2], p.clone()));
    f.npy("q.npy", HostArray::from_f64(vec![11, 2], q.clone()));
    let args = [("x", "p.npy"), ("y", "q.npy")];
    let d2 =
        |i: usize, j: usize| -> f64 { (0..2).map(|c| (p[i * 2 + c] - q[j * 2 + c]).powi(2)).sum() };
    for (kernel, rows, index_cols) in [
        ("kmin_argkmin", 7, 3..6),
        ("min_argmin", 7, 1..2),
        ("max_argmax", 11, 2..4),
    ] {
        let run = f.run_eval("nearest.kf", &args, &["--kernel", kernel]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let packed = HostArray::read_npy(&f.path("out.npy")).unwrap();
        let width = packed.shape[1];
        let packed = packed.to_f64();
        let run = f.run_eval(
            "nearest.kf",
            &args,
            &["--kernel", kernel, "--indices-out", &f.p("idx.npy")],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let values = HostArray::read_npy(&f.path("out.npy")).unwrap();
        let indices = IndexArray::read_npy(&f.path("idx.npy")).unwrap();
        assert_eq!(
            values.shape,
            vec![rows, width - index_cols.len()],
            "{kernel}"
        );
        assert_eq!(indices.shape, vec![rows, index_cols.len()], "{kernel}");
        let values = values.to_f64();
        for r in 0..rows {
            let row = &packed[r * width..][..width];
            let (vw, iw) = (width - index_cols.len(), index_cols.len());
            let want_values: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|(c, _)| !index_cols.contains(c))
                .map(|(_, &v)| v)
                .collect();
            assert_eq!(
                &values[r * vw..][..vw],
                want_values.as_slice(),
                "{kernel} row {r}"
            );
            let want_indices: Vec<i64> =
                row[index_cols.clone()].iter().map(|&v| v as i64).collect();
            assert_eq!(
                &indices.data[r * iw..][..iw],
                want_indices.as_slice(),
                "{kernel} row {r}"
            );
        }
        // --index-dtype float keeps the indices as floats, still apart.
        let run = f.run_eval(
            "nearest.kf",
            &args,
            &[
                "--kernel",
                kernel,
                "--indices-out",
                &f.p("idxf.npy"),
                "--index-dtype",
                "float",
            ],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let floats = HostArray::read_npy(&f.path("idxf.npy")).unwrap();
        let as_int: Vec<i64> = floats.to_f64().iter().map(|&v| v as i64).collect();
        assert_eq!(as_int, indices.data);
        // One array cannot hold float values and int64 indices.
        assert_fails_with(
            &f.run_eval(
                "nearest.kf",
                &args,
                &["--kernel", kernel, "--index-dtype", "int64"],
            ),
            &["`--index-dtype int64`", "--indices-out"],
        );
    }
    // The indices are the right ones: K-min's, against a brute-force sort.
    let indices = {
        let run = f.run_eval(
            "nearest.kf",
            &args,
            &["--kernel", "kmin_argkmin", "--indices-out", &f.p("idx.npy")],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        IndexArray::read_npy(&f.path("idx.npy")).unwrap()
    };
    for i in 0..7 {
        let mut order: Vec<usize> = (0..11).collect();
        order.sort_by(|&a, &b| d2(i, a).total_cmp(&d2(i, b)).then(a.cmp(&b)));
        let want: Vec<i64> = order[..3].iter().map(|&j| j as i64).collect();
        assert_eq!(&indices.data[i * 3..][..3], want.as_slice(), "row {i}");
    }
    // Arg-only reductions: int64 straight into -o, the same numbers as the float layout.
    let run = f.run_eval("nearest.kf", &args, &["--kernel", "argkmin"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let floats = HostArray::read_npy(&f.path("out.npy")).unwrap();
    let run = f.run_eval(
        "nearest.kf",
        &args,
        &["--kernel", "argkmin", "--index-dtype", "int64"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ints = IndexArray::read_npy(&f.path("out.npy")).unwrap();
    assert_eq!(ints.shape, vec![7, 3]);
    assert_eq!(ints.data, indices.data);
    assert_eq!(floats.to_indices(), ints);
    assert_fails_with(
        &f.run_eval(
            "nearest.kf",
            &args,
            &["--kernel", "argkmin", "--indices-out", &f.p("i.npy")],
        ),
        &["`--indices-out`", "indices only"],
    );
    // Reductions without indices: nothing to write apart.
    assert_fails_with(
        &f.run_eval(
            "nearest.kf",
            &args,
            &["--kernel", "sum", "--indices-out", &f.p("i.npy")],
        ),
        &["`--indices-out`", "returns no indices"],
    );
    assert!(!f.path("i.npy").exists());
}

#[test]
fn timings_report_each_step_and_pairs_per_second() {
    let f = Fixture::new();
    for flag in ["--timings", "-v"] {
        let run = f.run_eval("gauss.kf", &ALL_ARGS, &[flag]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        for needle in [
            "N = 4, M = 5",
            "front end",
            "read",
            "compile",
            "run",
            "pairs/s",
            "write",
        ] {
            assert!(
                run.stderr.contains(needle),
                "{flag}: no `{needle}` in\n{}",
                run.stderr
            );
        }
        assert!(run.stdout.is_empty(), "timings go to stderr");
    }
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &[]);
    assert!(!run.stderr.contains("pairs/s"), "quiet without --timings");
}

/// An output path that is a link is written at the link's target (the link stays), and one
/// that is not a regular file (`/dev/null`) is written directly.
#[test]
fn outputs_through_links_and_devices() {
    let f = Fixture::new();
    std::os::unix::fs::symlink(f.path("target.npy"), f.path("link.npy")).unwrap();
    f.write("target.npy", "old");
    let mut args = f.eval_args("gauss.kf", &ALL_ARGS);
    let n = args.len();
    args[n - 1] = f.p("link.npy");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = keopsc(&refs);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let link = std::fs::symlink_metadata(f.path("link.npy")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        HostArray::read_npy(&f.path("target.npy")).unwrap().shape,
        vec![4, 1]
    );
    args[n - 1] = "/dev/null".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = keopsc(&refs);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// `keopsc vjp ... --wrt VAR`: args for the Gaussian kernel with the given cotangent file.
fn run_vjp(f: &Fixture, kf: &str, wrt: &str, cotangent: &str, extra: &[&str]) -> Run {
    let mut v = f.eval_args(kf, &ALL_ARGS);
    v[0] = "vjp".into();
    v.extend([
        "--wrt".to_string(),
        wrt.to_string(),
        "--cotangent".to_string(),
        f.p(cotangent),
    ]);
    v.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    keopsc(&refs)
}

#[test]
fn vjp_writes_the_gradient_shaped_like_its_input() {
    let f = Fixture::new();
    f.npy(
        "g.npy",
        HostArray::from_f64(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]),
    );
    f.npy(
        "g1.npy",
        HostArray::from_f64(vec![4], vec![1.0, -2.0, 0.5, 3.0]),
    );
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let kernel = &compiled.kernels[0];
    let inputs: Vec<(String, HostArray)> = ALL_ARGS
        .iter()
        .map(|(n, file)| (n.to_string(), HostArray::read_npy(&f.path(file)).unwrap()))
        .collect();
    let g = HostArray::read_npy(&f.path("g.npy")).unwrap();
    for (wrt, shape) in [
        ("x", vec![4, 3]),
        ("y", vec![5, 3]),
        ("b", vec![5, 1]),
        ("s", vec![1]),
    ] {
        for (cotangent, backend) in [("g.npy", "cpu"), ("g1.npy", "interp")] {
            let run = run_vjp(&f, "gauss.kf", wrt, cotangent, &["--backend", backend]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
            assert_eq!(out.shape, shape, "d{wrt}");
            let expected =
                keopsc::vjp::vjp(kernel, wrt, &inputs, &g, keopsc::driver::Backend::Interp)
                    .unwrap();
            for (a, b) in out.to_f64().iter().zip(expected.to_f64()) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "d{wrt}: {a} {b}");
            }
        }
    }
}

#[test]
fn vjp_errors_name_the_argument() {
    let f = Fixture::new();
    f.npy("g.npy", HostArray::from_f64(vec![4, 1], vec![1.0; 4]));
    f.npy("g_rows.npy", HostArray::from_f64(vec![5, 1], vec![1.0; 5]));
    f.npy("g_f32.npy", HostArray::from_f32(vec![4, 1], vec![1.0; 4]));
    let run = run_vjp(&f, "gauss.kf", "z", "g.npy", &[]);
    assert_fails_with(&run, &["`--wrt z`", "no input `z`", "`x`, `y`, `b`, `s`"]);
    let run = run_vjp(&f, "gauss.kf", "x", "g_rows.npy", &[]);
    assert_fails_with(&run, &["--cotangent", "(5, 1)", "(4, 1)"]);
    let run = run_vjp(&f, "gauss.kf", "x", "g_f32.npy", &[]);
    assert_fails_with(&run, &["--cotangent", "float32"]);
    let run = run_vjp(&f, "gauss.kf", "x", "missing.npy", &[]);
    assert_fails_with(&run, &["--cotangent", "missing.npy"]);
    // The same argument checks as eval, listed together with the cotangent's.
    let mut v = f.eval_args("gauss.kf", &ALL_ARGS[..3]);
    v[0] = "vjp".into();
    v.extend(["--wrt", "x", "--cotangent"].map(String::from));
    v.push(f.p("g_rows.npy"));
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_fails_with(&keopsc(&refs), &["missing argument `s`"]);
    f.write(
        "argmin.kf",
        "kernel k {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n s = Pm(1)\n ArgMin_Reduction(SqDist(x, y) * s + b, 0)\n}\n",
    );
    let run = run_vjp(&f, "argmin.kf", "x", "g.npy", &[]);
    assert_fails_with(&run, &["ArgMin_Reduction", "indices only"]);
    assert!(!f.path("out.npy").exists(), "nothing written on failure");
}

/// `--wrt` repeated with one `-o` each: every gradient written, equal to the library's
/// one-input gradients; mismatched counts, repeated outputs and repeated inputs are refused
/// before anything is written.
#[test]
fn vjp_with_several_inputs_writes_one_file_each() {
    let f = Fixture::new();
    f.npy(
        "g.npy",
        HostArray::from_f64(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]),
    );
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let kernel = &compiled.kernels[0];
    let inputs: Vec<(String, HostArray)> = ALL_ARGS
        .iter()
        .map(|(n, file)| (n.to_string(), HostArray::read_npy(&f.path(file)).unwrap()))
        .collect();
    let g = HostArray::read_npy(&f.path("g.npy")).unwrap();
    let wrt = ["s", "y", "x", "b"];
    let mut extra: Vec<String> = Vec::new();
    for name in &wrt[1..] {
        extra.extend(["--wrt".to_string(), name.to_string()]);
        extra.extend(["-o".to_string(), f.p(&format!("d{name}.npy"))]);
    }
    // run_vjp passes `--wrt s` and `-o out.npy` first.
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let run = run_vjp(&f, "gauss.kf", "s", "g.npy", &refs);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in wrt {
        let file = if name == "s" {
            "out.npy".to_string()
        } else {
            format!("d{name}.npy")
        };
        let got = HostArray::read_npy(&f.path(&file)).unwrap();
        let expected =
            keopsc::vjp::vjp(kernel, name, &inputs, &g, keopsc::driver::Backend::Interp).unwrap();
        assert_eq!(got.shape, expected.shape, "d{name}");
        for (a, b) in got.to_f64().iter().zip(expected.to_f64()) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "d{name}: {a} {b}");
        }
    }
    for name in ["dx.npy", "dy.npy", "db.npy", "out.npy"] {
        std::fs::remove_file(f.path(name)).unwrap();
    }
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &["--wrt", "y"]);
    assert_fails_with(&run, &["`--wrt` is given 2 times and `-o` 1"]);
    let out = f.p("out.npy");
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &["--wrt", "y", "-o", &out]);
    assert_fails_with(&run, &["out.npy` is given twice"]);
    let dy = f.p("dy.npy");
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &["--wrt", "x", "-o", &dy]);
    assert_fails_with(&run, &["`--wrt x`", "asked for twice"]);
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &["--wrt", "q", "-o", &dy]);
    assert_fails_with(&run, &["`--wrt q`", "no input `q`"]);
    assert!(!f.path("out.npy").exists() && !f.path("dy.npy").exists());
}

/// `--saved OUT.npy`: the forward output passed in is what the LogSumExp backward reads (a
/// shifted one shifts the weights), the same gradient as without it when it is the output;
/// saved rows of the wrong shape name `--saved`; a reduction that reads none notes that the
/// file is ignored.
#[test]
fn vjp_reads_the_saved_forward_given() {
    let f = Fixture::new();
    f.write(
        "lse.kf",
        "kernel k {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n s = Pm(1)\n LogSumExp_Reduction(-SqDist(x, y) * s + b, 0)\n}\n",
    );
    f.npy(
        "g.npy",
        HostArray::from_f64(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]),
    );
    let mut eval = f.eval_args("lse.kf", &ALL_ARGS);
    let n = eval.len();
    eval[n - 1] = f.p("lse.npy");
    let refs: Vec<&str> = eval.iter().map(String::as_str).collect();
    assert_eq!(keopsc(&refs).code, 0);
    let forward = HostArray::read_npy(&f.path("lse.npy")).unwrap();
    let shifted: Vec<f64> = forward.to_f64().iter().map(|l| l + 1.0).collect();
    f.npy("shifted.npy", HostArray::from_f64(vec![4, 1], shifted));
    f.npy("rows.npy", HostArray::from_f64(vec![5, 1], vec![0.0; 5]));

    let gradient = |extra: &[&str]| {
        let run = run_vjp(&f, "lse.kf", "y", "g.npy", extra);
        assert_eq!(run.code, 0, "{}", run.stderr);
        HostArray::read_npy(&f.path("out.npy")).unwrap().to_f64()
    };
    let computed = gradient(&[]);
    let saved = gradient(&["--saved", &f.p("lse.npy")]);
    let shifted = gradient(&["--saved", &f.p("shifted.npy")]);
    for ((a, b), c) in computed.iter().zip(&saved).zip(&shifted) {
        assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} {b}");
        // The weights exp(F - L) with L + 1: every term divided by e.
        let e = std::f64::consts::E;
        assert!((a / e - c).abs() <= 1e-12 * a.abs().max(1.0), "{a} {c}");
    }
    assert!(computed.iter().any(|&a| a.abs() > 1e-3), "{computed:?}");

    std::fs::remove_file(f.path("out.npy")).unwrap();
    let run = run_vjp(&f, "lse.kf", "y", "g.npy", &["--saved", &f.p("rows.npy")]);
    assert_fails_with(&run, &["`--saved", "(5, 1)", "(4, 1)"]);
    let run = run_vjp(
        &f,
        "lse.kf",
        "y",
        "g.npy",
        &["--saved", &f.p("nothing.npy")],
    );
    assert_fails_with(&run, &["`--saved", "nothing.npy"]);
    assert!(!f.path("out.npy").exists());
    let run = run_vjp(&f, "gauss.kf", "y", "g.npy", &["--saved", &f.p("rows.npy")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("is ignored"), "{}", run.stderr);
}

/// `keopsc build --grad`: the gradients each kernel stores are listed, the module loads with
/// them and computes the library's gradient; a kernel returning indices only is noted and left
/// without any.
#[test]
fn build_with_grad_stores_every_kernels_gradients() {
    let f = Fixture::new();
    f.write(
        "two.kf",
        &format!(
            "{GAUSS}\nkernel nearest {{\n x = Vi(3)\n y = Vj(3)\n ArgMin_Reduction(SqDist(x, y), 0)\n}}\n"
        ),
    );
    let out = f.p("two.kmod");
    let run = keopsc(&["build", &f.p("two.kf"), "-o", &out, "--grad"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("gradients: dx; dy; db; ds; dx, dy, db, ds"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("`nearest` returns indices only"),
        "{}",
        run.stderr
    );
    let module = keops_runtime::Module::load(&out).unwrap();
    let kernel = module.kernel("gauss_conv").unwrap();
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let inputs: Vec<(String, HostArray)> = ALL_ARGS
        .iter()
        .map(|(n, file)| (n.to_string(), HostArray::read_npy(&f.path(file)).unwrap()))
        .collect();
    let refs: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
    let g = HostArray::from_f64(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]);
    let got = kernel.vjp(&["y"], &refs, &g, None).unwrap();
    let want = keopsc::vjp::vjp(
        &compiled.kernels[0],
        "y",
        &inputs,
        &g,
        keopsc::driver::Backend::Interp,
    )
    .unwrap();
    for (a, b) in got[0].to_f64().iter().zip(want.to_f64()) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} {b}");
    }
    assert!(module
        .kernel("nearest")
        .unwrap()
        .stored_gradients()
        .is_empty());
}

/// Numbers in [-1, 1) from a fixed linear congruential sequence.
fn numbers(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            2.0 * ((state >> 11) as f64 / (1u64 << 53) as f64) - 1.0
        })
        .collect()
}

/// An f64 array of `shape` filled from `numbers(seed, ..)`.
fn random(shape: &[usize], seed: u64) -> HostArray {
    HostArray::from_f64(shape.to_vec(), numbers(seed, shape.iter().product()))
}

/// Batch `k` of `array`, whose batches have shape `core`.
fn batch_of(array: &HostArray, k: usize, core: &[usize]) -> HostArray {
    let n: usize = core.iter().product();
    HostArray::from_f64(core.to_vec(), array.to_f64()[k * n..(k + 1) * n].to_vec())
}

/// Runs `keopsc` and expects it to succeed.
fn succeeds(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = keopsc(&refs);
    assert_eq!(run.code, 0, "keopsc {args:?}:\n{}", run.stderr);
    run
}

/// `KEY=FILE` pairs as `--arg` flags with the fixture's paths, then `extra`.
fn flags(f: &Fixture, args: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    for (name, file) in args {
        v.push("--arg".to_string());
        v.push(format!("{name}={}", f.p(file)));
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A run with `--backend cuda` wrote `out.npy` close to the CPU's `want`, or failed saying
/// why it cannot run here (a build without `cuda`, a machine without the driver), never
/// with a panic.
fn assert_cuda_matches_or_says_why(f: &Fixture, run: &Run, want: &[f64]) {
    if run.code == 0 {
        let gpu = HostArray::read_npy(&f.path("out.npy")).unwrap().to_f64();
        assert_close(&gpu, want, 1e-12, "cuda against cpu");
    } else {
        assert!(
            run.stderr.contains("not available in this build")
                || run.stderr.contains("no CUDA driver"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

fn assert_close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * b.abs().max(1.0),
            "{what}[{k}]: {a} against {b}"
        );
    }
}

/// `--same y=x`: the same output as passing x's file for y; `vjp --wrt x` is the total
/// derivative, the sum of the gradients through x and through y computed apart, and what
/// finite differences of the self-kernel give.
#[test]
fn same_gives_a_j_variable_the_data_of_an_i_variable() {
    let f = Fixture::new();
    f.npy(
        "b4.npy",
        HostArray::from_f64(vec![4, 1], vec![1.0, -0.5, 2.0, 0.25]),
    );
    f.npy("g.npy", random(&[4, 1], 7));
    let others = [("x", "x.npy"), ("b", "b4.npy"), ("s", "s.npy")];
    let both = [
        ("x", "x.npy"),
        ("y", "x.npy"),
        ("b", "b4.npy"),
        ("s", "s.npy"),
    ];
    let eval = |args: &[(&str, &str)], extra: &[&str], out: &str| {
        let mut v = vec!["eval".to_string(), f.p("gauss.kf")];
        v.extend(flags(&f, args, extra));
        v.extend(["-o".to_string(), f.p(out)]);
        succeeds(&v);
        HostArray::read_npy(&f.path(out)).unwrap()
    };
    let full = eval(&both, &[], "full.npy");
    for backend in ["cpu", "interp"] {
        let same = eval(
            &others,
            &["--same", "y=x", "--backend", backend],
            "same.npy",
        );
        assert_eq!(same.shape, vec![4, 1]);
        assert_close(&same.to_f64(), &full.to_f64(), 1e-14, backend);
    }

    let vjp = |args: &[(&str, &str)], extra: &[&str]| {
        let mut v = vec!["vjp".to_string(), f.p("gauss.kf")];
        v.extend(flags(&f, args, extra));
        v.extend(["--cotangent".to_string(), f.p("g.npy")]);
        succeeds(&v);
    };
    vjp(
        &both,
        &[
            "--wrt",
            "x",
            "--wrt",
            "y",
            "-o",
            &f.p("dx.npy"),
            "-o",
            &f.p("dy.npy"),
        ],
    );
    vjp(
        &others,
        &[
            "--same",
            "y=x",
            "--wrt",
            "s",
            "--wrt",
            "x",
            "-o",
            &f.p("ds_same.npy"),
            "-o",
            &f.p("total.npy"),
        ],
    );
    let read = |name: &str| HostArray::read_npy(&f.path(name)).unwrap();
    let total = read("total.npy");
    assert_eq!(total.shape, vec![4, 3]);
    let sum: Vec<f64> = read("dx.npy")
        .to_f64()
        .iter()
        .zip(read("dy.npy").to_f64())
        .map(|(a, b)| a + b)
        .collect();
    assert_close(&total.to_f64(), &sum, 1e-12, "dx + dy");
    vjp(&both, &["--wrt", "s", "-o", &f.p("ds.npy")]);
    assert_close(
        &read("ds_same.npy").to_f64(),
        &read("ds.npy").to_f64(),
        1e-12,
        "ds",
    );

    // Central differences of the self-kernel in x's data (y moves with it).
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let kernel = &compiled.kernels[0];
    let g = read("g.npy").to_f64();
    let x = read("x.npy").to_f64();
    let objective = |x: Vec<f64>| {
        let x = HostArray::from_f64(vec![4, 3], x);
        let inputs = vec![
            ("x".to_string(), x.clone()),
            ("y".to_string(), x),
            ("b".to_string(), read("b4.npy")),
            ("s".to_string(), read("s.npy")),
        ];
        let out = keopsc::driver::evaluate(kernel, &inputs, keopsc::driver::Backend::Interp)
            .unwrap()
            .output
            .to_f64();
        out.iter().zip(&g).map(|(o, g)| o * g).sum::<f64>()
    };
    let h = 1e-6;
    let differences: Vec<f64> = (0..x.len())
        .map(|e| {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[e] += h;
            down[e] -= h;
            (objective(up) - objective(down)) / (2.0 * h)
        })
        .collect();
    assert_close(&total.to_f64(), &differences, 1e-6, "finite differences");
    assert!(total.to_f64().iter().any(|d| d.abs() > 1e-2), "{total:?}");
}

/// Every misuse of `--same` is an error naming the flag, and nothing is written.
#[test]
fn same_errors_name_the_flag() {
    let f = Fixture::new();
    let with = |same: &[&str], args: &[(&str, &str)]| {
        let mut v = vec!["eval".to_string(), f.p("gauss.kf")];
        for s in same {
            v.extend(["--same".to_string(), s.to_string()]);
        }
        v.extend(flags(&f, args, &["-o", &f.p("out.npy")]));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        keopsc(&refs)
    };
    let others = [("x", "x.npy"), ("b", "b.npy"), ("s", "s.npy")];
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["x=x"],
            &["`--same x=x`", "`x` is Vi(3), not a j-variable"],
        ),
        (&["x=y"], &["`--same x=y`", "did you mean `--same y=x`?"]),
        (
            &["y=s"],
            &["`--same y=s`", "`s` is Pm(1), not an i-variable"],
        ),
        (
            &["b=x"],
            &[
                "`--same b=x`",
                "`b` is Vj(1) but `x` is Vi(3)",
                "dimensions differ",
            ],
        ),
        (
            &["z=x"],
            &["`--same z=x`", "no argument `z`", "`x`, `y`, `b`, `s`"],
        ),
        (&["y=w"], &["`--same y=w`", "no argument `w`"]),
        (&["y"], &["`--same y`", "expected J=I"]),
        (
            &["y=x", "y=x"],
            &["`y` already takes the data of `x` (`--same y=x`)"],
        ),
    ];
    for (same, needles) in cases {
        assert_fails_with(&with(same, &others), needles);
    }
    assert_fails_with(
        &with(&["y=x"], &ALL_ARGS),
        &["`--same y=x`", "`y` is also given with `--arg y="],
    );
    // vjp: y has no data of its own to differentiate.
    f.npy("g.npy", random(&[4, 1], 3));
    let mut v = vec![
        "vjp".to_string(),
        f.p("gauss.kf"),
        "--same".into(),
        "y=x".into(),
    ];
    v.extend(flags(
        &f,
        &others,
        &[
            "--wrt",
            "y",
            "--cotangent",
            &f.p("g.npy"),
            "-o",
            &f.p("out.npy"),
        ],
    ));
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_fails_with(
        &keopsc(&refs),
        &[
            "`--wrt y`",
            "takes the data of `x`",
            "differentiate with respect to `x`",
        ],
    );
    assert!(!f.path("out.npy").exists(), "nothing written on failure");
}

/// Batch axes: `(B, N, D)` arrays give the outputs of each batch's 2-D run, stacked; axes of
/// size 1 and unbatched arrays broadcast; two batch axes work.
#[test]
fn batches_equal_one_run_per_batch() {
    let f = Fixture::new();
    f.npy("xb.npy", random(&[2, 4, 3], 11));
    f.npy("yb.npy", random(&[2, 5, 3], 12));
    f.npy("bb.npy", random(&[2, 5, 1], 13));
    f.npy("sb.npy", HostArray::from_f64(vec![2, 1], vec![0.7, 1.3]));
    let eval = |args: &[(&str, &str)], extra: &[&str]| {
        let mut v = vec!["eval".to_string(), f.p("gauss.kf")];
        v.extend(flags(&f, args, extra));
        v.extend(["-o".to_string(), f.p("out.npy")]);
        succeeds(&v);
        HostArray::read_npy(&f.path("out.npy")).unwrap()
    };
    let batched = [
        ("x", "xb.npy"),
        ("y", "yb.npy"),
        ("b", "bb.npy"),
        ("s", "sb.npy"),
    ];
    let read = |name: &str| HostArray::read_npy(&f.path(name)).unwrap();
    let mut per_batch = Vec::new();
    for k in 0..2 {
        f.npy("xk.npy", batch_of(&read("xb.npy"), k, &[4, 3]));
        f.npy("yk.npy", batch_of(&read("yb.npy"), k, &[5, 3]));
        f.npy("bk.npy", batch_of(&read("bb.npy"), k, &[5, 1]));
        f.npy("sk.npy", batch_of(&read("sb.npy"), k, &[1]));
        let one = [
            ("x", "xk.npy"),
            ("y", "yk.npy"),
            ("b", "bk.npy"),
            ("s", "sk.npy"),
        ];
        per_batch.extend(eval(&one, &[]).to_f64());
    }
    for backend in ["cpu", "interp"] {
        let out = eval(&batched, &["--backend", backend]);
        assert_eq!(out.shape, vec![2, 4, 1], "{backend}");
        assert_close(&out.to_f64(), &per_batch, 1e-13, backend);
    }

    // x: (2, 1, 4, 3); y: (3, 5, 3); b and s unbatched: out (2, 3, 4, 1).
    f.npy("x2.npy", random(&[2, 1, 4, 3], 21));
    f.npy("y3.npy", random(&[3, 5, 3], 22));
    let out = eval(
        &[
            ("x", "x2.npy"),
            ("y", "y3.npy"),
            ("b", "b.npy"),
            ("s", "s.npy"),
        ],
        &[],
    );
    assert_eq!(out.shape, vec![2, 3, 4, 1]);
    let mut expected = Vec::new();
    for a in 0..2 {
        for c in 0..3 {
            f.npy("xk.npy", batch_of(&read("x2.npy"), a, &[4, 3]));
            f.npy("yk.npy", batch_of(&read("y3.npy"), c, &[5, 3]));
            let one = [
                ("x", "xk.npy"),
                ("y", "yk.npy"),
                ("b", "b.npy"),
                ("s", "s.npy"),
            ];
            expected.extend(eval(&one, &[]).to_f64());
        }
    }
    assert_close(&out.to_f64(), &expected, 1e-13, "two batch axes");

    // A self-kernel with batches: y reads x's batches.
    f.npy("b4.npy", random(&[2, 4, 1], 23));
    let out = eval(
        &[("x", "xb.npy"), ("b", "b4.npy"), ("s", "s.npy")],
        &["--same", "y=x"],
    );
    let full = eval(
        &[
            ("x", "xb.npy"),
            ("y", "xb.npy"),
            ("b", "b4.npy"),
            ("s", "s.npy"),
        ],
        &[],
    );
    assert_eq!(out.shape, vec![2, 4, 1]);
    assert_close(&out.to_f64(), &full.to_f64(), 1e-14, "--same with batches");
}

/// Batched arg-reductions: the indices of each batch, apart as int64 or in the default layout.
#[test]
fn batched_indices_are_those_of_each_batch() {
    let f = Fixture::new();
    f.write("nearest.kf", NEAREST);
    f.npy("x.npy", random(&[3, 6, 2], 31));
    f.npy("y.npy", random(&[3, 7, 2], 32));
    let run = |kernel: &str, x: &str, y: &str, extra: &[&str]| {
        let mut v = vec!["eval".to_string(), f.p("nearest.kf"), "--kernel".into()];
        v.push(kernel.to_string());
        v.extend(flags(&f, &[("x", x), ("y", y)], extra));
        succeeds(&v);
    };
    let apart = ["-o", &f.p("v.npy"), "--indices-out", &f.p("i.npy")];
    run("min_argmin", "x.npy", "y.npy", &apart);
    let values = HostArray::read_npy(&f.path("v.npy")).unwrap();
    let indices = IndexArray::read_npy(&f.path("i.npy")).unwrap();
    assert_eq!(
        (values.shape.clone(), indices.shape.clone()),
        (vec![3, 6, 1], vec![3, 6, 1])
    );
    run(
        "argkmin",
        "x.npy",
        "y.npy",
        &["-o", &f.p("k.npy"), "--index-dtype", "int64"],
    );
    let kmin = IndexArray::read_npy(&f.path("k.npy")).unwrap();
    assert_eq!(kmin.shape, vec![3, 6, 3]);
    for k in 0..3 {
        let read = |name: &str| HostArray::read_npy(&f.path(name)).unwrap();
        f.npy("xk.npy", batch_of(&read("x.npy"), k, &[6, 2]));
        f.npy("yk.npy", batch_of(&read("y.npy"), k, &[7, 2]));
        let apart = ["-o", &f.p("vk.npy"), "--indices-out", &f.p("ik.npy")];
        run("min_argmin", "xk.npy", "yk.npy", &apart);
        assert_eq!(read("vk.npy").to_f64(), values.to_f64()[k * 6..(k + 1) * 6]);
        let ik = IndexArray::read_npy(&f.path("ik.npy")).unwrap();
        assert_eq!(ik.data, indices.data[k * 6..(k + 1) * 6]);
        run(
            "argkmin",
            "xk.npy",
            "yk.npy",
            &["-o", &f.p("kk.npy"), "--index-dtype", "int64"],
        );
        let kk = IndexArray::read_npy(&f.path("kk.npy")).unwrap();
        assert_eq!(kk.data, kmin.data[k * 18..(k + 1) * 18]);
    }
}

/// Batched gradients: each has the shape of the array passed; a batched input gets each
/// batch's gradient, a broadcast one the sum over the batches; a cotangent `(B, N)` does for
/// `(B, N, 1)`; `--same` adds the gradients through both variables in each batch.
#[test]
fn batched_vjp_sums_broadcast_gradients() {
    let f = Fixture::new();
    f.npy("xb.npy", random(&[2, 4, 3], 41));
    f.npy("bb.npy", random(&[2, 5, 1], 42));
    f.npy("sb.npy", HostArray::from_f64(vec![2, 1], vec![0.8, 1.2]));
    f.npy("g.npy", random(&[2, 4, 1], 43));
    let g = HostArray::read_npy(&f.path("g.npy")).unwrap();
    f.npy("g_flat.npy", HostArray::from_f64(vec![2, 4], g.to_f64()));
    let read = |name: &str| HostArray::read_npy(&f.path(name)).unwrap();
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let kernel = &compiled.kernels[0];
    let wrt = ["x", "y", "b", "s"];
    let outputs = ["dx.npy", "dy.npy", "db.npy", "ds.npy"];

    // y (the fixture's (5, 3)) is broadcast to both batches.
    let mut expected: Vec<Vec<f64>> = vec![vec![], vec![0.0; 15], vec![], vec![]];
    for k in 0..2 {
        let inputs = vec![
            ("x".to_string(), batch_of(&read("xb.npy"), k, &[4, 3])),
            ("y".to_string(), read("y.npy")),
            ("b".to_string(), batch_of(&read("bb.npy"), k, &[5, 1])),
            ("s".to_string(), batch_of(&read("sb.npy"), k, &[1])),
        ];
        let grads = keopsc::vjp::vjp_many(
            kernel,
            &wrt,
            &inputs,
            &batch_of(&g, k, &[4, 1]),
            keopsc::driver::Backend::Interp,
        )
        .unwrap();
        expected[0].extend(grads[0].to_f64());
        for (sum, d) in expected[1].iter_mut().zip(grads[1].to_f64()) {
            *sum += d;
        }
        expected[2].extend(grads[2].to_f64());
        expected[3].extend(grads[3].to_f64());
    }
    for cotangent in ["g.npy", "g_flat.npy"] {
        let mut v = vec!["vjp".to_string(), f.p("gauss.kf")];
        v.extend(flags(
            &f,
            &[
                ("x", "xb.npy"),
                ("y", "y.npy"),
                ("b", "bb.npy"),
                ("s", "sb.npy"),
            ],
            &["--cotangent", &f.p(cotangent)],
        ));
        for (w, o) in wrt.iter().zip(outputs) {
            v.extend(["--wrt".to_string(), w.to_string(), "-o".into(), f.p(o)]);
        }
        succeeds(&v);
        let shapes = [vec![2, 4, 3], vec![5, 3], vec![2, 5, 1], vec![2, 1]];
        for ((o, shape), want) in outputs.iter().zip(shapes).zip(&expected) {
            let got = read(o);
            assert_eq!(got.shape, shape, "{o}");
            assert_close(&got.to_f64(), want, 1e-12, o);
        }
    }

    // --same with batches: the total derivative of each batch.
    f.npy("b4.npy", random(&[4, 1], 44));
    let mut v = vec![
        "vjp".to_string(),
        f.p("gauss.kf"),
        "--same".into(),
        "y=x".into(),
    ];
    v.extend(flags(
        &f,
        &[("x", "xb.npy"), ("b", "b4.npy"), ("s", "s.npy")],
        &["--wrt", "x", "--wrt", "b", "--cotangent", &f.p("g.npy")],
    ));
    v.extend(["-o".to_string(), f.p("dx.npy"), "-o".into(), f.p("db.npy")]);
    succeeds(&v);
    let (mut total, mut db) = (Vec::new(), vec![0.0; 4]);
    for k in 0..2 {
        let x = batch_of(&read("xb.npy"), k, &[4, 3]);
        let inputs = vec![
            ("x".to_string(), x.clone()),
            ("y".to_string(), x),
            ("b".to_string(), read("b4.npy")),
            ("s".to_string(), read("s.npy")),
        ];
        let grads = keopsc::vjp::vjp_many(
            kernel,
            &["x", "y", "b"],
            &inputs,
            &batch_of(&g, k, &[4, 1]),
            keopsc::driver::Backend::Interp,
        )
        .unwrap();
        total.extend(
            grads[0]
                .to_f64()
                .iter()
                .zip(grads[1].to_f64())
                .map(|(a, b)| a + b),
        );
        for (sum, d) in db.iter_mut().zip(grads[2].to_f64()) {
            *sum += d;
        }
    }
    assert_eq!(read("dx.npy").shape, vec![2, 4, 3]);
    assert_close(&read("dx.npy").to_f64(), &total, 1e-12, "total dx");
    assert_eq!(read("db.npy").shape, vec![4, 1]);
    assert_close(&read("db.npy").to_f64(), &db, 1e-12, "db");
}

/// Batch axes that do not broadcast, a core that does not fit after its batch axes, and a
/// cotangent without the output's batch axes are argument errors naming the arrays.
#[test]
fn batch_errors_name_the_arguments_and_their_shapes() {
    let f = Fixture::new();
    f.npy("x2.npy", random(&[2, 4, 3], 51));
    f.npy("y3.npy", random(&[3, 5, 3], 52));
    f.npy("x_bad.npy", random(&[2, 4, 2], 53));
    let run = f.run_eval(
        "gauss.kf",
        &[
            ("x", "x2.npy"),
            ("y", "y3.npy"),
            ("b", "b.npy"),
            ("s", "s.npy"),
        ],
        &[],
    );
    assert_fails_with(
        &run,
        &[
            "batch axes do not broadcast",
            "`y` has shape (3, 5, 3) (batch axes (3,))",
            "`x` has shape (2, 4, 3) (batch axes (2,))",
        ],
    );
    let run = f.run_eval(
        "gauss.kf",
        &[
            ("x", "x_bad.npy"),
            ("y", "y3.npy"),
            ("b", "b.npy"),
            ("s", "s.npy"),
        ],
        &[],
    );
    assert_fails_with(
        &run,
        &["`x` (Vi(3)) has shape (2, 4, 2); expected (N, 3) after its batch axes (2,)"],
    );
    for (g, shape) in [("g3.npy", vec![3, 4, 1]), ("g.npy", vec![4, 1])] {
        f.npy(g, random(&shape, 54));
        let mut v = vec!["vjp".to_string(), f.p("gauss.kf")];
        v.extend(flags(
            &f,
            &[
                ("x", "x2.npy"),
                ("y", "y.npy"),
                ("b", "b.npy"),
                ("s", "s.npy"),
            ],
            &["--wrt", "x", "--cotangent", &f.p(g), "-o", &f.p("out.npy")],
        ));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        let shown = keops_runtime::shape_text(&shape);
        assert_fails_with(
            &keopsc(&refs),
            &[
                "--cotangent",
                &shown,
                "expected (2, 4, 1)",
                "batch axes (2,)",
            ],
        );
    }
    assert!(!f.path("out.npy").exists(), "nothing written on failure");
}

/// `--saved` with batches: the batched forward output passed in gives the gradient computed
/// without it; rows without the batch axes name `--saved`. In float32 the gradients keep the
/// dtype and the broadcast input's sum agrees with float64's.
#[test]
fn batched_vjp_reads_batched_saved_rows_and_keeps_float32() {
    let f = Fixture::new();
    f.write(
        "lse.kf",
        "kernel k {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n s = Pm(1)\n LogSumExp_Reduction(-SqDist(x, y) * s + b, 0)\n}\n",
    );
    f.npy("xb.npy", random(&[2, 4, 3], 61));
    f.npy("g.npy", random(&[2, 4, 1], 62));
    let args = [
        ("x", "xb.npy"),
        ("y", "y.npy"),
        ("b", "b.npy"),
        ("s", "s.npy"),
    ];
    let mut v = vec!["eval".to_string(), f.p("lse.kf")];
    v.extend(flags(&f, &args, &["-o", &f.p("lse.npy")]));
    succeeds(&v);
    let read = |name: &str| HostArray::read_npy(&f.path(name)).unwrap();
    assert_eq!(read("lse.npy").shape, vec![2, 4, 1]);
    let vjp = |args: &[(&str, &str)], g: &str, extra: &[&str]| {
        let mut v = vec!["vjp".to_string(), f.p("lse.kf")];
        v.extend(flags(
            &f,
            args,
            &["--wrt", "y", "--cotangent", &f.p(g), "-o", &f.p("dy.npy")],
        ));
        v.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        keopsc(&refs)
    };
    assert_eq!(vjp(&args, "g.npy", &[]).code, 0);
    let computed = read("dy.npy");
    assert_eq!(computed.shape, vec![5, 3]);
    let run = vjp(&args, "g.npy", &["--saved", &f.p("lse.npy")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_close(&read("dy.npy").to_f64(), &computed.to_f64(), 1e-12, "saved");
    f.npy("rows.npy", batch_of(&read("lse.npy"), 0, &[4, 1]));
    let run = vjp(&args, "g.npy", &["--saved", &f.p("rows.npy")]);
    assert_fails_with(
        &run,
        &["`--saved", "has shape (4, 1)", "expected (2, 4, 1)"],
    );

    let to_f32 = |name: &str, to: &str| {
        let a = read(name);
        let data = a.to_f64().iter().map(|&v| v as f32).collect();
        f.npy(to, HostArray::from_f32(a.shape.clone(), data));
    };
    for (from, to) in [
        ("xb.npy", "xb32.npy"),
        ("y.npy", "y32.npy"),
        ("b.npy", "b32.npy"),
        ("s.npy", "s32.npy"),
        ("g.npy", "g32.npy"),
    ] {
        to_f32(from, to);
    }
    let args32 = [
        ("x", "xb32.npy"),
        ("y", "y32.npy"),
        ("b", "b32.npy"),
        ("s", "s32.npy"),
    ];
    let run = vjp(&args32, "g32.npy", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dy = read("dy.npy");
    assert_eq!(
        (dy.shape.clone(), dy.dtype()),
        (vec![5, 3], keops_runtime::DType::F32)
    );
    assert_close(&dy.to_f64(), &computed.to_f64(), 1e-4, "float32");
}

/// `keopsc eval --ranges`: a block-sparse reduction gives the dense result restricted to the
/// kept blocks; malformed ranges and ranges of the wrong dtype are errors naming the array.
#[test]
fn eval_with_ranges_keeps_only_the_kept_blocks() {
    let f = Fixture::new();
    let ints = |name: &str, shape: Vec<usize>, data: Vec<i64>| {
        IndexArray { shape, data }
            .write_npy(&f.path(name))
            .expect("write npy");
    };
    // Rows 0..2 see y 1..3; rows 2..4 see y 0..1 and 4..5.
    ints("r.npy", vec![2, 2], vec![0, 2, 2, 4]);
    ints("s_.npy", vec![2], vec![1, 3]);
    ints("j.npy", vec![3, 2], vec![1, 3, 0, 1, 4, 5]);
    let ranges = [f.p("r.npy"), f.p("s_.npy"), f.p("j.npy")];
    let mut extra = vec!["--ranges"];
    extra.extend(ranges.iter().map(String::as_str));
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &extra);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = HostArray::read_npy(&f.path("out.npy")).unwrap().to_f64();
    let x: Vec<f64> = (0..12).map(|k| k as f64 * 0.1).collect();
    let y: Vec<f64> = (0..15).map(|k| 1.0 - k as f64 * 0.05).collect();
    let kept = |i: usize, j: usize| {
        if i < 2 {
            (1..3).contains(&j)
        } else {
            j == 0 || j == 4
        }
    };
    for i in 0..4 {
        let want: f64 = (0..5)
            .filter(|&j| kept(i, j))
            .map(|j| {
                let d2: f64 = (0..3).map(|c| (x[i * 3 + c] - y[j * 3 + c]).powi(2)).sum();
                (-d2 / (2.0 * 0.7 * 0.7)).exp() * (j as f64 + 1.0)
            })
            .sum();
        assert!(
            (got[i] - want).abs() < 1e-12,
            "row {i}: {} against {want}",
            got[i]
        );
    }
    // The interpreter has no block-sparse evaluation; the GPU runs it, or says why not here
    // (a build without `cuda`, a machine without the driver).
    let on = |backend: &str| {
        let mut extra = extra.clone();
        extra.extend(["--backend", backend]);
        f.run_eval("gauss.kf", &ALL_ARGS, &extra)
    };
    let run = on("interp");
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("cpu or cuda backend"), "{}", run.stderr);
    assert_cuda_matches_or_says_why(&f, &on("cuda"), &got);
    // Out of bounds: named.
    ints("j.npy", vec![3, 2], vec![1, 3, 0, 1, 4, 6]);
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &extra);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("redranges_j[2]"), "{}", run.stderr);
    // Floats instead of int64.
    f.npy("j.npy", HostArray::from_f64(vec![3, 2], vec![1.0; 6]));
    let run = f.run_eval("gauss.kf", &ALL_ARGS, &extra);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("redranges_j") && run.stderr.contains("int64"),
        "{}",
        run.stderr
    );
}

/// `keopsc vjp --ranges` (KeOps's 6-tuple): the gradients of the block-sparse reduction, that
/// is those of `vjp::run_many_ranges`; with a pattern keeping every pair, the dense ones;
/// halves that disagree and unreadable arrays are errors naming the array.
#[test]
fn vjp_with_ranges_differentiates_the_block_sparse_reduction() {
    let f = Fixture::new();
    let ints = |name: &str, shape: Vec<usize>, data: Vec<i64>| {
        IndexArray { shape, data }
            .write_npy(&f.path(name))
            .expect("write npy");
    };
    f.npy(
        "g.npy",
        HostArray::from_f64(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]),
    );
    // Rows 0..2 see y 1..3; rows 2..4 see y 0..1 and 4..5; and the same pattern over i.
    ints("ri.npy", vec![2, 2], vec![0, 2, 2, 4]);
    ints("si.npy", vec![2], vec![1, 3]);
    ints("rj_.npy", vec![3, 2], vec![1, 3, 0, 1, 4, 5]);
    ints("rj.npy", vec![3, 2], vec![0, 1, 1, 3, 4, 5]);
    ints("sj.npy", vec![3], vec![1, 2, 3]);
    ints("ri_.npy", vec![3, 2], vec![2, 4, 0, 2, 2, 4]);
    let six = ["ri.npy", "si.npy", "rj_.npy", "rj.npy", "sj.npy", "ri_.npy"].map(|n| f.p(n));
    let compiled = keopsc::driver::compile(keopsc::source::SourceFile::new("g", GAUSS)).unwrap();
    let kernel = &compiled.kernels[0];
    let inputs: Vec<HostArray> = ALL_ARGS
        .iter()
        .map(|(_, file)| HostArray::read_npy(&f.path(file)).unwrap())
        .collect();
    let refs: Vec<&HostArray> = inputs.iter().collect();
    let g = HostArray::read_npy(&f.path("g.npy")).unwrap();
    let ranges = keops_runtime::RangesPair::from_arrays(
        six.clone()
            .map(|p| IndexArray::read_npy(std::path::Path::new(&p)).unwrap())
            .each_ref(),
    )
    .unwrap();
    for wrt in ["x", "y", "s"] {
        let mut extra = vec!["--ranges"];
        extra.extend(six.iter().map(String::as_str));
        let run = run_vjp(&f, "gauss.kf", wrt, "g.npy", &extra);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let out = HostArray::read_npy(&f.path("out.npy")).unwrap();
        let plan = keopsc::vjp::plan_many(kernel, &[wrt]).unwrap();
        let want = keopsc::vjp::run_many_ranges(&plan, &refs, &g, None, &ranges).unwrap();
        assert_eq!(out.to_f64(), want[0].to_f64(), "d{wrt}");
        // Every pass as the block-sparse GPU kernel, or the reason why not here; never the
        // interpreter, which has no block-sparse evaluation.
        let on = |backend: &str| {
            let mut extra = extra.clone();
            extra.extend(["--backend", backend]);
            run_vjp(&f, "gauss.kf", wrt, "g.npy", &extra)
        };
        assert_fails_with(&on("interp"), &["cpu or cuda backend"]);
        assert_cuda_matches_or_says_why(&f, &on("cuda"), &want[0].to_f64());
        let dense = keopsc::vjp::vjp(
            kernel,
            wrt,
            &ALL_ARGS
                .iter()
                .map(|(n, file)| (n.to_string(), HostArray::read_npy(&f.path(file)).unwrap()))
                .collect::<Vec<_>>(),
            &g,
            keopsc::driver::Backend::Cpu,
        )
        .unwrap();
        assert_ne!(
            out.to_f64(),
            dense.to_f64(),
            "d{wrt}: the ranges leave pairs out"
        );
    }
    // Halves that describe other pairs.
    ints("bad.npy", vec![3], vec![1, 2, 2]);
    let mut extra = vec!["--ranges"];
    let bad = [&six[0], &six[1], &six[2], &six[3], &f.p("bad.npy"), &six[5]];
    extra.extend(bad.iter().map(|s| s.as_str()));
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &extra);
    assert_fails_with(&run, &["the two halves must describe the same pairs"]);
    let mut extra = vec!["--ranges"];
    let missing = f.p("missing.npy");
    let bad = [&six[0], &six[1], &six[2], &missing, &six[4], &six[5]];
    extra.extend(bad.iter().map(|s| s.as_str()));
    let run = run_vjp(&f, "gauss.kf", "x", "g.npy", &extra);
    assert_fails_with(&run, &["ranges_j", "missing.npy"]);
}
