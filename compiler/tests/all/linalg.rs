//! Kernels compiled by keopsc as linear operators (`keops_runtime::linalg`) and the `keopsc
//! linalg` subcommand, against dense matrices formed here only.

use keops_runtime::linalg::{
    conjugate_gradient, lanczos, no_progress, symmetric_eigen, CgOptions, EigOptions,
    KernelOperator, LinearOperator, Normalization, Preconditioner, Scaled,
};
use keops_runtime::{DType, HostArray};
use keopsc::driver;
use keopsc::source::SourceFile;
use std::process::Command;

/// A Gaussian kernel with an operand of width `R`.
fn gauss_source(width: usize) -> String {
    format!(
        "kernel gauss {{
    x = Vi(3)
    y = Vj(3)
    b = Vj({width})
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) / (2 * s * s)) * b, 0)
}}
"
    )
}

/// Points on a noisy helix in [0, 1]^3, deterministic.
fn cloud(n: usize) -> Vec<f64> {
    (0..n)
        .flat_map(|i| {
            let t = i as f64 / n as f64 * 12.0;
            let wobble = ((i * 7919) % 101) as f64 / 101.0 * 0.05;
            [
                0.5 + 0.4 * t.cos() + wobble,
                0.5 + 0.4 * t.sin(),
                t / 12.0 + wobble,
            ]
        })
        .collect()
}

fn dense_gauss(x: &[f64], s: f64) -> Vec<f64> {
    let n = x.len() / 3;
    (0..n * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let d2: f64 = (0..3).map(|c| (x[i * 3 + c] - x[j * 3 + c]).powi(2)).sum();
            (-d2 / (2.0 * s * s)).exp()
        })
        .collect()
}

fn matmul(a: &[f64], n: usize, b: &[f64], ncols: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * ncols];
    for i in 0..n {
        for k in 0..n {
            for c in 0..ncols {
                out[i * ncols + c] += a[i * n + k] * b[k * ncols + c];
            }
        }
    }
    out
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn operator(width: usize, x: &[f64], s: f64, dtype: DType) -> KernelOperator {
    operator_of(width, x, x, s, dtype, false)
}

/// The operator of `gauss_source(width)` on points `x` and `y`; `symmetric`: its kernel
/// carries the symmetric pass for `y = x`.
fn operator_of(
    width: usize,
    x: &[f64],
    y: &[f64],
    s: f64,
    dtype: DType,
    symmetric: bool,
) -> KernelOperator {
    let compiled = driver::compile(SourceFile::new("<test>", gauss_source(width)))
        .unwrap_or_else(|_| panic!("the test kernel compiles"));
    let kernel = if symmetric {
        keopsc::jit::Jit::new()
            .dtypes(&[dtype])
            .same("y", "x")
            .compile_checked(&compiled.kernels[0])
            .expect("jit")
    } else {
        driver::jit_kernel(&compiled.kernels[0], &[dtype]).expect("jit")
    };
    let n = x.len() / 3;
    let array = |v: Vec<f64>, shape: Vec<usize>| match dtype {
        DType::F64 => HostArray::from_f64(shape, v),
        DType::F32 => HostArray::from_f32(shape, v.into_iter().map(|v| v as f32).collect()),
    };
    KernelOperator::new(
        kernel,
        "b",
        vec![
            ("x".into(), array(x.to_vec(), vec![n, 3])),
            ("y".into(), array(y.to_vec(), vec![y.len() / 3, 3])),
            ("s".into(), array(vec![s], vec![1])),
        ],
    )
    .expect("a linear operator")
}

#[test]
fn compiled_kernel_products_match_dense_ones() {
    let n = 1001;
    let x = cloud(n);
    let k = dense_gauss(&x, 0.1);
    // Width 4: 4 right-hand sides in one pass, 6 in two (the second padded), 1 in one.
    for dtype in [DType::F64, DType::F32] {
        let op = operator(4, &x, 0.1, dtype);
        for ncols in [1, 4, 6] {
            let v: Vec<f64> = (0..n * ncols).map(|k| (k as f64 * 0.37).sin()).collect();
            let want = matmul(&k, n, &v, ncols);
            let got = op.apply(&v, ncols).unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(
                max_abs_diff(&got, &want) < tol * max_abs(&want),
                "{dtype}, {ncols} columns"
            );
        }
        let diagonal = op.diagonal().unwrap();
        assert!(diagonal.iter().all(|d| (d - 1.0).abs() < 1e-6));
    }
}

#[test]
fn symmetric_products_walk_each_pair_once_and_match_dense_ones() {
    // 1001 points: four blocks of 256 rows, the last one partial.
    let n = 1001;
    let x = cloud(n);
    let k = dense_gauss(&x, 0.1);
    for dtype in [DType::F64, DType::F32] {
        for width in [1, 3] {
            let op = operator_of(width, &x, &x, 0.1, dtype, true);
            assert!(op.pairs_once(), "{dtype}, width {width}: {op:?}");
            let full = operator_of(width, &x, &x, 0.1, dtype, false);
            assert!(!full.pairs_once());
            for ncols in [1, 4] {
                let v: Vec<f64> = (0..n * ncols).map(|k| (k as f64 * 0.37).sin()).collect();
                let want = matmul(&k, n, &v, ncols);
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                let got = op.apply(&v, ncols).unwrap();
                assert!(
                    max_abs_diff(&got, &want) < tol * max_abs(&want),
                    "{dtype}, width {width}, {ncols} columns"
                );
                let got_full = full.apply(&v, ncols).unwrap();
                assert!(max_abs_diff(&got, &got_full) < tol * max_abs(&want));
            }
        }
    }
    // Points that differ from x in one bit of one coordinate: the pass does not hold, and the
    // products are the full ones.
    let mut y = x.clone();
    y[5] = f64::from_bits(y[5].to_bits() ^ 1);
    let op = operator_of(1, &x, &y, 0.1, DType::F64, true);
    assert!(!op.pairs_once());
    let v: Vec<f64> = (0..n).map(|k| (k as f64 * 0.37).sin()).collect();
    let got = op.apply(&v, 1).unwrap();
    assert!(max_abs_diff(&got, &matmul(&k, n, &v, 1)) < 1e-10 * max_abs(&got));
}

#[test]
fn a_symmetric_pass_is_refused_where_it_cannot_run() {
    let text = "kernel m { x = Vi(3) y = Vj(3) Max_Reduction(-SqDist(x, y), 0) }";
    let compiled = driver::compile(SourceFile::new("<test>", text.to_string()))
        .unwrap_or_else(|_| panic!("the test kernel compiles"));
    let err =
        driver::jit_symmetric(&compiled.kernels[0], &[(1, 0)], &[DType::F64]).expect_err("refused");
    assert!(err.to_string().contains("only Sum"), "{err}");
    let compiled = driver::compile(SourceFile::new("<test>", gauss_source(1)))
        .unwrap_or_else(|_| panic!("the test kernel compiles"));
    let full = driver::jit_kernel(&compiled.kernels[0], &[DType::F64]).unwrap();
    let pass = driver::jit_symmetric(&compiled.kernels[0], &[(1, 0)], &[DType::F64]).unwrap();
    // The pass of one kernel does not fit another whose output is wider.
    let wider = driver::compile(SourceFile::new("<test>", gauss_source(2)))
        .unwrap_or_else(|_| panic!("the test kernel compiles"));
    let wide = driver::jit_kernel(&wider.kernels[0], &[DType::F64]).unwrap();
    assert!(wide.with_symmetric(pass.clone()).is_err());
    assert!(full.with_symmetric(pass).is_ok());
}

/// The runtime's `KernelOperator::new` probes linearity on a sample of the points: an affine
/// or nonlinear formula in the operand, or one whose output column c reads another column of
/// it, is refused there (more points than the sample, so the probe runs on a part of them);
/// `assuming_linear` takes the caller's word.
#[test]
fn the_runtime_refuses_a_kernel_that_is_not_linear_in_its_operand() {
    let n = 40;
    let x = cloud(n);
    let inputs = |dtype: DType| {
        let x = match dtype {
            DType::F64 => HostArray::from_f64(vec![n, 3], x.clone()),
            DType::F32 => HostArray::from_f32(vec![n, 3], x.iter().map(|&v| v as f32).collect()),
        };
        vec![("x".to_string(), x.clone()), ("y".to_string(), x)]
    };
    for dtype in [DType::F64, DType::F32] {
        for (formula, why) in [
            ("Exp(-SqDist(x, y)) * b * b", "is not linear in `b`"),
            ("Exp(-SqDist(x, y)) * b + 1", "is not linear in `b`"),
            (
                "Exp(-SqDist(x, y)) * Concat(Elem(b, 1), Elem(b, 0))",
                "depends on other columns",
            ),
        ] {
            let source = format!(
                "kernel k {{\n x = Vi(3)\n y = Vj(3)\n b = Vj(2)\n Sum_Reduction({formula}, 0)\n}}\n"
            );
            let kernel = keopsc::jit::Jit::new()
                .dtypes(&[dtype])
                .compile(&source, None)
                .unwrap();
            let error = KernelOperator::new(kernel.clone(), "b", inputs(dtype)).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains("is not a linear operator on `b`") && text.contains(why),
                "{formula}: {text}"
            );
            assert!(KernelOperator::assuming_linear(kernel, "b", inputs(dtype)).is_ok());
        }
        let linear = "kernel k {\n x = Vi(3)\n y = Vj(3)\n b = Vj(2)\n Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)\n}\n";
        let linear = keopsc::jit::Jit::new()
            .dtypes(&[dtype])
            .compile(linear, None)
            .unwrap();
        assert!(KernelOperator::new(linear.clone(), "b", inputs(dtype)).is_ok());
        // An array whose data does not fill its shape is an argument error, also where the
        // probe's sample would have been cut from it.
        let short = HostArray::from_f64(vec![100, 3], vec![0.0; 10]);
        let given = vec![("x".to_string(), short.clone()), ("y".to_string(), short)];
        let error = KernelOperator::new(linear, "b", given).unwrap_err();
        assert!(error.to_string().contains("`x`"), "{error}");
    }
}

fn cholesky_solve(a: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut x = b.to_vec();
    for i in 0..n {
        x[i] = (x[i] - (0..i).map(|k| l[i * n + k] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    for i in (0..n).rev() {
        x[i] = (x[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

#[test]
fn conjugate_gradients_on_a_compiled_kernel_match_a_dense_solve() {
    let n = 800;
    let x = cloud(n);
    let lambda = 0.05;
    let mut a = dense_gauss(&x, 0.15);
    (0..n).for_each(|i| a[i * n + i] += lambda);
    let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.01).cos()).collect();
    let want = cholesky_solve(&a, n, &b);
    let op = operator(1, &x, 0.15, DType::F64);
    for preconditioner in [Preconditioner::None, Preconditioner::Jacobi] {
        let options = CgOptions {
            lambda,
            tol: 1e-10,
            max_iterations: 3000,
            preconditioner,
        };
        let result = conjugate_gradient(&op, &b, 1, &options, &mut no_progress).unwrap();
        assert!(result.converged, "{result}");
        assert!(result.relative_residuals[0] < 1e-9, "{result}");
        let error = max_abs_diff(&result.solution, &want) / max_abs(&want);
        assert!(error < 1e-6, "{preconditioner}: {error}");
    }
}

#[test]
fn lanczos_on_a_compiled_kernel_matches_a_dense_eigensolver() {
    let n = 400;
    let x = cloud(n);
    let k = dense_gauss(&x, 0.08);
    let degrees: Vec<f64> = (0..n).map(|i| k[i * n..(i + 1) * n].iter().sum()).collect();
    let sym: Vec<f64> = (0..n * n)
        .map(|e| k[e] / (degrees[e / n] * degrees[e % n]).sqrt())
        .collect();
    // The reference: every eigenpair of the dense matrix (Jacobi rotations, checked in the
    // runtime's tests by reconstruction).
    let reference = symmetric_eigen(&sym, n).unwrap();
    let op = operator(1, &x, 0.08, DType::F64);
    let normalized = Scaled::normalized(&op, &[Normalization::Symmetric]).unwrap();
    let wanted = 10;
    let result = lanczos(
        &normalized,
        &EigOptions {
            k: wanted,
            tol: 1e-10,
            ..EigOptions::default()
        },
        &mut no_progress,
    )
    .unwrap();
    assert!(result.converged, "{result}");
    for c in 0..wanted {
        assert!(
            (result.values[c] - reference.values[c]).abs() < 1e-9,
            "eigenvalue {c}: {} against {}",
            result.values[c],
            reference.values[c]
        );
        let cosine: f64 = (0..n)
            .map(|i| result.vectors[i * wanted + c] * reference.vectors[i * n + c])
            .sum();
        let gap = (reference.values[c] - reference.values[c + 1])
            .abs()
            .min(if c > 0 {
                (reference.values[c - 1] - reference.values[c]).abs()
            } else {
                f64::INFINITY
            });
        if gap > 1e-4 {
            assert!(1.0 - cosine.abs() < 1e-8, "eigenvector {c}: {cosine}");
        }
    }
}

struct Run {
    code: i32,
    stderr: String,
}

fn keopsc(args: &[String]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_keopsc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("keopsc runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run
}

/// A folder with the Gaussian kernel, a cloud of `n` points and its bandwidth.
struct Fixture {
    dir: tempfile::TempDir,
    n: usize,
    x: Vec<f64>,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let x = cloud(n);
        std::fs::write(dir.path().join("gauss.kf"), gauss_source(1)).unwrap();
        let f = Fixture { dir, n, x };
        f.npy("x.npy", HostArray::from_f64(vec![n, 3], f.x.clone()));
        f.npy("s.npy", HostArray::from_f64(vec![1], vec![0.1]));
        f
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn npy(&self, name: &str, array: HostArray) {
        array.write_npy(&self.dir.path().join(name)).unwrap();
    }

    fn read(&self, name: &str) -> HostArray {
        HostArray::read_npy(&self.dir.path().join(name)).unwrap()
    }

    /// `keopsc linalg SUB gauss.kf --arg x --same y=x --arg s` and `extra`.
    fn run(&self, sub: &str, extra: &[&str]) -> Run {
        let mut args: Vec<String> = vec!["linalg".into(), sub.into(), self.p("gauss.kf")];
        args.extend([
            "--arg".into(),
            format!("x={}", self.p("x.npy")),
            "--same".into(),
            "y=x".into(),
            "--arg".into(),
            format!("s={}", self.p("s.npy")),
        ]);
        args.extend(extra.iter().map(|s| {
            if s.ends_with(".npy") {
                self.p(s)
            } else {
                s.to_string()
            }
        }));
        keopsc(&args)
    }
}

#[test]
fn keopsc_linalg_solves_powers_and_finds_eigenpairs() {
    let f = Fixture::new(300);
    let n = f.n;
    let k = dense_gauss(&f.x, 0.1);
    let degrees: Vec<f64> = (0..n).map(|i| k[i * n..(i + 1) * n].iter().sum()).collect();

    // solve: two right-hand sides at once.
    let b: Vec<f64> = (0..n * 2).map(|i| (i as f64 * 0.3).sin()).collect();
    f.npy("b.npy", HostArray::from_f64(vec![n, 2], b.clone()));
    let run = f.run(
        "solve",
        &[
            "--rhs", "b.npy", "--lambda", "0.1", "--jacobi", "--tol", "1e-11", "-o", "sol.npy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("converged after"), "{}", run.stderr);
    assert!(run.stderr.contains("in kernel products"), "{}", run.stderr);
    let sol = f.read("sol.npy");
    assert_eq!(sol.shape, vec![n, 2]);
    let mut shifted = k.clone();
    (0..n).for_each(|i| shifted[i * n + i] += 0.1);
    let residual: Vec<f64> = matmul(&shifted, n, &sol.to_f64(), 2)
        .iter()
        .zip(&b)
        .map(|(a, b)| a - b)
        .collect();
    assert!(max_abs(&residual) < 1e-9 * max_abs(&b));

    // power: 5 steps of the random walk D^-1 K.
    let run = f.run(
        "power",
        &[
            "--rhs",
            "b.npy",
            "--t",
            "5",
            "--normalize",
            "row",
            "-o",
            "p.npy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let walk: Vec<f64> = (0..n * n).map(|e| k[e] / degrees[e / n]).collect();
    let mut want = b.clone();
    for _ in 0..5 {
        want = matmul(&walk, n, &want, 2);
    }
    assert!(max_abs_diff(&f.read("p.npy").to_f64(), &want) < 1e-12 * max_abs(&want));

    // eigs of the symmetric normalisation.
    let run = f.run(
        "eigs",
        &[
            "--k",
            "6",
            "--normalize",
            "sym",
            "--tol",
            "1e-10",
            "-o",
            "vals.npy",
            "--vectors",
            "vecs.npy",
            "--walk-vectors",
            "psi.npy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sym: Vec<f64> = (0..n * n)
        .map(|e| k[e] / (degrees[e / n] * degrees[e % n]).sqrt())
        .collect();
    let reference = symmetric_eigen(&sym, n).unwrap();
    let values = f.read("vals.npy").to_f64();
    assert!(
        max_abs_diff(&values, &reference.values[..6]) < 1e-9,
        "{values:?}"
    );
    let vectors = f.read("vecs.npy");
    assert_eq!(vectors.shape, vec![n, 6]);
    // A V = V diag(values), from the dense matrix.
    let v = vectors.to_f64();
    let av = matmul(&sym, n, &v, 6);
    let scaled: Vec<f64> = v
        .iter()
        .enumerate()
        .map(|(e, v)| v * values[e % 6])
        .collect();
    assert!(max_abs_diff(&av, &scaled) < 1e-8);
    // The random walk's eigenvectors: D^-1 K psi = lambda psi.
    let psi = f.read("psi.npy").to_f64();
    let walk_psi = matmul(&walk, n, &psi, 6);
    let scaled: Vec<f64> = psi
        .iter()
        .enumerate()
        .map(|(e, v)| v * values[e % 6])
        .collect();
    assert!(max_abs_diff(&walk_psi, &scaled) < 1e-8);
    let run = f.run(
        "eigs",
        &["--k", "2", "-o", "vals.npy", "--walk-vectors", "psi.npy"],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--walk-vectors needs"),
        "{}",
        run.stderr
    );
}

#[test]
fn keopsc_linalg_refuses_what_is_not_a_linear_operator() {
    let f = Fixture::new(50);
    std::fs::write(
        f.dir.path().join("square.kf"),
        "kernel square {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n Sum_Reduction(Exp(-SqDist(x, y)) * b * b, 0)\n}\n",
    )
    .unwrap();
    f.npy("b.npy", HostArray::from_f64(vec![50], vec![1.0; 50]));
    let run = keopsc(&[
        "linalg".into(),
        "solve".into(),
        f.p("square.kf"),
        "--arg".into(),
        format!("x={}", f.p("x.npy")),
        "--same".into(),
        "y=x".into(),
        "--rhs".into(),
        f.p("b.npy"),
        "-o".into(),
        f.p("out.npy"),
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("is not a linear operator on `b`"),
        "{}",
        run.stderr
    );

    f.npy("short.npy", HostArray::from_f64(vec![49], vec![1.0; 49]));
    let run = f.run("solve", &["--rhs", "short.npy", "-o", "out.npy"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("needs (50,) or (50, R)"),
        "{}",
        run.stderr
    );

    let run = f.run("eigs", &["--normalize", "rows", "-o", "vals.npy"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("unknown normalisation `rows`"),
        "{}",
        run.stderr
    );

    // Too few iterations: the solution reached is written, with a warning.
    let run = f.run(
        "solve",
        &[
            "--rhs",
            "b.npy",
            "--lambda",
            "0.01",
            "--max-iter",
            "2",
            "-o",
            "two.npy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("not converged after 2 iterations")
            && run
                .stderr
                .contains("raise --max-iter, or precondition with --jacobi"),
        "{}",
        run.stderr
    );
    assert_eq!(f.read("two.npy").shape, vec![50]);

    let run = f.run("eigs", &["--k", "51", "-o", "vals.npy"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("k = 51"), "{}", run.stderr);
    assert!(!f.dir.path().join("vals.npy").exists());
}
