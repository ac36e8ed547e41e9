//! The example programs end to end: modules built from examples/kf/*.kf by the compiler's
//! library (what `keopsc build` runs), loaded and run by programs that link keops-runtime
//! only; and a check that those programs indeed do not link LLVM.

use keops_runtime::{DType, HostArray, IndexArray};
use keopsc::artifact::{build, Placement};
use keopsc::driver;
use keopsc::source::SourceFile;
use std::path::{Path, PathBuf};
use std::process::Command;

fn build_example(kf: &str, dir: &Path) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kf").join(kf);
    let text = std::fs::read_to_string(&path).expect("readable");
    let source = SourceFile::new(path.display().to_string(), text);
    let compiled = driver::compile(source).unwrap_or_else(|_| panic!("{kf} compiles"));
    let out = dir.join(kf.replace(".kf", ".kmod"));
    build(
        &compiled,
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &out,
        &[],
        Placement::Replace,
    )
    .expect("builds");
    out
}

/// Runs a program that must fail; returns its stderr.
fn run_failing(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{program} {args:?} should fail");
    assert!(
        !stderr.contains("panicked"),
        "{program} panicked:\n{stderr}"
    );
    stderr
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn programs_load_and_run_modules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gauss = build_example("gauss.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_gauss-sum"),
        &[gauss.to_str().unwrap(), "2000", "3001"],
    );
    assert!(out.contains("largest relative difference"), "{out}");
    let knn = build_example("knn.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_knn"),
        &[knn.to_str().unwrap(), "1500", "2001"],
    );
    assert!(out.contains("neighbours of x[0]"), "{out}");
    let diffusion = build_example("diffusion.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_diffusion"),
        &[diffusion.to_str().unwrap(), "3000", "2"],
    );
    assert!(out.contains("step 2"), "{out}");
}

#[test]
fn module_programs_do_not_link_llvm() {
    for (_, program) in PROGRAMS {
        // `ldd` comes with the C library (Debian's libc-bin): its absence is a broken machine.
        let output = Command::new("ldd")
            .arg(program)
            .output()
            .unwrap_or_else(|e| panic!("`ldd` lists the libraries of {program}: {e}"));
        let libraries = String::from_utf8_lossy(&output.stdout);
        assert!(
            !libraries.to_lowercase().contains("llvm"),
            "{program} links LLVM:\n{libraries}"
        );
    }
}

const PROGRAMS: [(&str, &str); 7] = [
    ("gauss-sum", env!("CARGO_BIN_EXE_gauss-sum")),
    ("knn", env!("CARGO_BIN_EXE_knn")),
    ("diffusion", env!("CARGO_BIN_EXE_diffusion")),
    ("make-example-data", env!("CARGO_BIN_EXE_make-example-data")),
    ("show-npy", env!("CARGO_BIN_EXE_show-npy")),
    ("gauss-fit", env!("CARGO_BIN_EXE_gauss-fit")),
    (
        "diffusion-curvature",
        env!("CARGO_BIN_EXE_diffusion-curvature"),
    ),
];

/// gauss-fit trains through a module built with its gradients, with the runtime alone: the
/// descent recovers the bandwidth that made the target values; a module built without them
/// is refused with the command that builds one.
#[test]
fn gauss_fit_recovers_the_bandwidth_with_the_modules_gradients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kf")
        .join("gauss.kf");
    let text = std::fs::read_to_string(&path).expect("readable");
    let compiled = driver::compile(SourceFile::new("gauss.kf", text)).unwrap_or_else(|_| panic!());
    let module = dir.path().join("gauss-grad.kmod");
    keopsc::artifact::build_with_gradients(
        &compiled,
        &[DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &module,
        &[],
        Placement::Replace,
    )
    .expect("builds");
    let program = env!("CARGO_BIN_EXE_gauss-fit");
    let out = run(
        program,
        &[
            module.to_str().unwrap(),
            "600",
            "700",
            "--true-bandwidth",
            "0.3",
        ],
    );
    let fitted: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("fitted bandwidth "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fitted bandwidth in\n{out}"));
    assert!((fitted - 0.3).abs() < 1e-5, "{out}");
    let plain = build_example("gauss.kf", dir.path());
    let stderr = run_failing(program, &[plain.to_str().unwrap(), "50", "60"]);
    assert!(stderr.contains("keopsc build --grad"), "{stderr}");
}

/// diffusion-curvature on four small clouds, through a module built with `--same y=x` (its
/// products over unordered pairs) and one built without (every pair twice): the sign pattern
/// of the surfaces' curvature comes out right in both, the two agree up to summation order,
/// and the plots are PNG files; the user's points give the laziness as `.npy`.
#[test]
fn diffusion_curvature_finds_the_sign_of_each_surface() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kf")
        .join("curvature.kf");
    let text = std::fs::read_to_string(&path).expect("readable");
    let compiled =
        driver::compile(SourceFile::new("curvature.kf", text)).unwrap_or_else(|_| panic!());
    let module = dir.path().join("curvature.kmod");
    let options = keopsc::artifact::BuildOptions {
        gradients: false,
        same: vec![("y".into(), "x".into())],
        ..Default::default()
    };
    keopsc::artifact::build_with_options(
        &compiled,
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &module,
        &[],
        Placement::Replace,
        &options,
    )
    .expect("builds");
    let program = env!("CARGO_BIN_EXE_diffusion-curvature");
    let plots = dir.path().join("plots");
    let curvatures = |out: &str| -> Vec<f64> {
        out.lines()
            .filter_map(|l| l.strip_prefix("curvature "))
            .filter_map(|rest| {
                rest.split(": ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let args = [
        "--n",
        "1500",
        "--dtype",
        "f64",
        "--out",
        plots.to_str().unwrap(),
    ];
    let once = run(program, &[&[module.to_str().unwrap()], &args[..]].concat());
    assert!(once.contains("sign pattern: ok"), "{once}");
    let values = curvatures(&once);
    assert_eq!(values.len(), 5, "{once}");
    for name in ["diffusion_curvature.png", "diffusion_map.png"] {
        let bytes = std::fs::read(plots.join(name)).expect("a plot");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
    }
    // Without the symmetric pass: the same figures up to summation order.
    let plain = build_example("curvature.kf", dir.path());
    let twice = run(program, &[&[plain.to_str().unwrap()], &args[..]].concat());
    for (a, b) in values.iter().zip(curvatures(&twice)) {
        assert!((a - b).abs() < 1e-6, "{once}\n{twice}");
    }
    // The user's points: the laziness of each, written as .npy.
    let cloud = dir.path().join("cloud.npy");
    points(3, 400, 3).write_npy(&cloud).expect("written");
    let out = dir.path().join("laziness.npy");
    run(
        program,
        &[
            module.to_str().unwrap(),
            "--points",
            cloud.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--eps",
            "0.1",
            "--k",
            "5",
        ],
    );
    let laziness = HostArray::read_npy(&out).expect("readable");
    assert_eq!(laziness.shape, vec![400]);
    assert!(laziness
        .to_f64()
        .iter()
        .all(|&l| l > 0.0 && l <= 1.0 + 1e-9));
    let stderr = run_failing(program, &[module.to_str().unwrap(), "--k", "21"]);
    assert!(stderr.contains("1 to 20"), "{stderr}");
}

/// `--help` is an option, not a module path: each program says what it does and how to call it.
#[test]
fn every_program_has_help() {
    for (name, program) in PROGRAMS {
        let out = run(program, &["--help"]);
        assert!(out.contains("Usage:"), "{name}:\n{out}");
        assert!(out.contains(&format!("Usage: {name}")), "{name}:\n{out}");
    }
    for (name, program) in &PROGRAMS[..3] {
        let out = run(program, &["--help"]);
        for needle in ["keopsc build", "-o, --output", ".npy"] {
            assert!(
                out.contains(needle),
                "{name} --help lacks `{needle}`:\n{out}"
            );
        }
    }
}

/// Uniform numbers in [0, 1) from a fixed seed, as an f64 array.
fn points(seed: u64, rows: usize, cols: usize) -> HostArray {
    let mut rng = keops_examples::SplitMix(seed);
    HostArray::from_f64(
        vec![rows, cols],
        (0..rows * cols).map(|_| rng.next_f64()).collect(),
    )
}

fn sq_dist(a: &[f64], i: usize, b: &[f64], j: usize) -> f64 {
    (0..3).map(|c| (a[i * 3 + c] - b[j * 3 + c]).powi(2)).sum()
}

/// The three programs on the user's `.npy` files (f64; the bandwidth a 0-d array), each result
/// checked against a plain f64 computation of every row.
#[test]
fn programs_run_on_npy_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (n, m) = (40, 57);
    let (x, y) = (points(1, n, 3), points(2, m, 3));
    let b = points(3, m, 1);
    for (name, array) in [("x.npy", &x), ("y.npy", &y), ("b.npy", &b)] {
        array.write_npy(Path::new(&path(name))).expect("writes");
    }
    HostArray::from_f64(vec![], vec![0.3])
        .write_npy(Path::new(&path("s.npy")))
        .expect("writes");
    let (xs, ys, bs) = (x.to_f64(), y.to_f64(), b.to_f64());

    // gauss-sum: a_i = sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j, the bandwidth from a 0-d .npy.
    let gauss = build_example("gauss.kf", dir.path());
    let args = [
        gauss.to_str().unwrap(),
        "--x",
        &path("x.npy"),
        "--y",
        &path("y.npy"),
        "--b",
        &path("b.npy"),
        "--bandwidth",
        &path("s.npy"),
        "-o",
        &path("a.npy"),
    ];
    run(env!("CARGO_BIN_EXE_gauss-sum"), &args);
    let a = HostArray::read_npy(Path::new(&path("a.npy"))).expect("reads");
    assert_eq!(a.shape, vec![n, 1]);
    assert_eq!(a.dtype(), DType::F64);
    for (i, &got) in a.to_f64().iter().enumerate() {
        let want: f64 = (0..m)
            .map(|j| (-sq_dist(&xs, i, &ys, j) / (2.0 * 0.09)).exp() * bs[j])
            .sum();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "a[{i}]: {got} vs {want}"
        );
    }

    // knn: int64 indices of the 10 nearest y_j, nearest first.
    let knn = build_example("knn.kf", dir.path());
    let args = [
        knn.to_str().unwrap(),
        "--x",
        &path("x.npy"),
        "--y",
        &path("y.npy"),
        "-o",
        &path("idx.npy"),
    ];
    run(env!("CARGO_BIN_EXE_knn"), &args);
    let idx = IndexArray::read_npy(Path::new(&path("idx.npy"))).expect("int64");
    assert_eq!(idx.shape, vec![n, 10]);
    for i in 0..n {
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&p, &q| sq_dist(&xs, i, &ys, p).total_cmp(&sq_dist(&xs, i, &ys, q)));
        let want: Vec<i64> = order[..10].iter().map(|&j| j as i64).collect();
        assert_eq!(&idx.data[i * 10..][..10], want.as_slice(), "row {i}");
    }

    // diffusion: t <- D^-1 K t twice, K_ij = exp(-|x_i - x_j|^2 / (2 h^2)); heat as (N,).
    let heat: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
    HostArray::from_f64(vec![n], heat.clone())
        .write_npy(Path::new(&path("t.npy")))
        .expect("writes");
    let diffusion = build_example("diffusion.kf", dir.path());
    let args = [
        diffusion.to_str().unwrap(),
        "--points",
        &path("x.npy"),
        "--heat",
        &path("t.npy"),
        "--bandwidth",
        "0.2",
        "--steps",
        "2",
        "-o",
        &path("t2.npy"),
    ];
    run(env!("CARGO_BIN_EXE_diffusion"), &args);
    let mut want = heat;
    for _ in 0..2 {
        want = (0..n)
            .map(|i| {
                let k = |j: usize| (-sq_dist(&xs, i, &xs, j) / (2.0 * 0.04)).exp();
                let kt: f64 = (0..n).map(|j| k(j) * want[j]).sum();
                let k1: f64 = (0..n).map(k).sum();
                kt / k1
            })
            .collect();
    }
    let got = HostArray::read_npy(Path::new(&path("t2.npy"))).expect("reads");
    assert_eq!(got.shape, vec![n, 1]);
    for (i, (g, w)) in got.to_f64().iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "t[{i}]: {g} vs {w}"
        );
    }

    // Bad input is named, and a bad -o fails before the module is even loaded.
    let stderr = run_failing(
        env!("CARGO_BIN_EXE_knn"),
        &[
            "no-such.kmod",
            "--x",
            &path("x.npy"),
            "-o",
            "/no-such-dir/idx.npy",
        ],
    );
    assert!(
        stderr.contains("-o") && stderr.contains("/no-such-dir"),
        "{stderr}"
    );
    let stderr = run_failing(
        env!("CARGO_BIN_EXE_gauss-sum"),
        &[gauss.to_str().unwrap(), "--x", &path("missing.npy")],
    );
    assert!(
        stderr.contains("--x") && stderr.contains("missing.npy"),
        "{stderr}"
    );
    let stderr = run_failing(
        env!("CARGO_BIN_EXE_diffusion"),
        &[
            diffusion.to_str().unwrap(),
            "--points",
            &path("x.npy"),
            "--heat",
            &path("b.npy"),
        ],
    );
    assert!(
        stderr.contains("--heat") && stderr.contains("(40, 1)"),
        "{stderr}"
    );
}
