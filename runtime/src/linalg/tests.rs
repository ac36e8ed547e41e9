//! The linear-operator layer against dense computations: the matrix is formed here only.

use super::*;
use crate::abi::{ArgSpec, Axis, Category, Signature};
use crate::arrays::{DType, HostArray};
use crate::module::Kernel;
use crate::reduction::{Reduction, ReductionKind};
use std::ffi::c_void;
use std::sync::Arc;

/// A dense row-major matrix as an operator.
struct Dense {
    a: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl LinearOperator for Dense {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        check_operand(self, x, ncols)?;
        Ok(matmul(&self.a, self.rows, self.cols, x, ncols))
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        Ok((0..self.rows.min(self.cols))
            .map(|i| self.a[i * self.cols + i])
            .collect())
    }
}

fn matmul(a: &[f64], rows: usize, inner: usize, b: &[f64], ncols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * ncols];
    for i in 0..rows {
        for k in 0..inner {
            let aik = a[i * inner + k];
            for c in 0..ncols {
                out[i * ncols + c] += aik * b[k * ncols + c];
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Deterministic points in [0, 1)^d (a Weyl sequence of a few irrationals).
fn points(n: usize, d: usize, shift: f64) -> Vec<f64> {
    let alphas = [0.754_877_666, 0.569_840_290, 0.362_123_6, 0.231_7];
    (0..n * d)
        .map(|k| ((k / d) as f64 * alphas[k % d] + shift * (k % d + 1) as f64).fract())
        .collect()
}

const D: usize = 3;

/// `exp(-g |x_i - y_j|^2) * b_j` with `x = Vi(3)`, `y = Vj(3)`, `b = Vj(R)`, `g = Pm(1)`, summed
/// over j: a tile function written in Rust against the TileFn contract (j-variables arrive
/// transposed, `inner_stride` numbers per component).
unsafe extern "C" fn gaussian_tile<T: Copy + Into<f64>, const R: usize>(
    args: *const *const c_void,
    inner_stride: i64,
    row_start: i64,
    row_end: i64,
    inner_start: i64,
    inner_end: i64,
    acc: *mut f64,
) {
    let stride = inner_stride as usize;
    // SAFETY: the TileFn contract for the signature of `gaussian_kernel`.
    let (x, y, b, g, acc) = unsafe {
        (
            std::slice::from_raw_parts(*args as *const T, row_end as usize * D),
            std::slice::from_raw_parts(*args.add(1) as *const T, D * stride),
            std::slice::from_raw_parts(*args.add(2) as *const T, R * stride),
            (*(*args.add(3) as *const T)).into(),
            std::slice::from_raw_parts_mut(acc, (row_end - row_start) as usize * R),
        )
    };
    for (r, i) in (row_start as usize..row_end as usize).enumerate() {
        for j in inner_start as usize..inner_end as usize {
            let d2: f64 = (0..D)
                .map(|c| {
                    let diff = x[i * D + c].into() - y[c * stride + j].into();
                    diff * diff
                })
                .sum();
            let k = (-g * d2).exp();
            for c in 0..R {
                acc[r * R + c] += k * b[c * stride + j].into();
            }
        }
    }
}

fn gaussian_signature(width: usize, kind: ReductionKind) -> Signature {
    let arg = |name: &str, category, dim| ArgSpec {
        name: name.into(),
        category,
        dim,
    };
    Signature {
        name: "gauss".into(),
        args: vec![
            arg("x", Category::I, D),
            arg("y", Category::J, D),
            arg("b", Category::J, width),
            arg("g", Category::Param, 1),
        ],
        reduction: Reduction::new(kind, width),
        axis: Axis::I,
    }
}

fn gaussian_kernel<const R: usize>() -> Kernel {
    let entries: Vec<(DType, crate::tiles::TileFn, usize)> = vec![
        (DType::F64, gaussian_tile::<f64, R>, 1),
        (DType::F32, gaussian_tile::<f32, R>, 1),
    ];
    // SAFETY: the tile functions implement the contract for this signature, lanes 1.
    unsafe {
        Kernel::from_parts(
            gaussian_signature(R, ReductionKind::Sum),
            entries,
            Arc::new(()),
        )
    }
}

fn dense_gaussian(x: &[f64], y: &[f64], g: f64) -> Vec<f64> {
    let (n, m) = (x.len() / D, y.len() / D);
    (0..n * m)
        .map(|e| {
            let (i, j) = (e / m, e % m);
            let d2: f64 = (0..D).map(|c| (x[i * D + c] - y[j * D + c]).powi(2)).sum();
            (-g * d2).exp()
        })
        .collect()
}

fn operator<const R: usize>(x: &[f64], y: &[f64], g: f64, dtype: DType) -> KernelOperator {
    let array = |v: &[f64], shape: Vec<usize>| match dtype {
        DType::F64 => HostArray::from_f64(shape, v.to_vec()),
        DType::F32 => HostArray::from_f32(shape, v.iter().map(|&v| v as f32).collect()),
    };
    KernelOperator::new(
        gaussian_kernel::<R>(),
        "b",
        vec![
            ("x".into(), array(x, vec![x.len() / D, D])),
            ("y".into(), array(y, vec![y.len() / D, D])),
            ("g".into(), array(&[g], vec![1])),
        ],
    )
    .unwrap()
}

#[test]
fn jacobi_decomposes_symmetric_matrices() {
    for (n, repeated) in [(1, false), (7, false), (30, false), (12, true)] {
        let r = points(n * n, 1, 0.1);
        let mut a: Vec<f64> = (0..n * n)
            .map(|k| r[k] + r[(k % n) * n + k / n] - 1.0)
            .collect();
        if repeated {
            // An identity block: a repeated eigenvalue.
            a.iter_mut().for_each(|v| *v = 0.0);
            (0..n).for_each(|i| a[i * n + i] = if i < 5 { 2.0 } else { i as f64 });
        }
        let e = symmetric_eigen(&a, n).unwrap();
        assert!(e.values.windows(2).all(|w| w[0] >= w[1]), "{:?}", e.values);
        // A = V diag(values) V^T, V^T V = I: a complete proof of the decomposition.
        let mut vl = e.vectors.clone();
        for (k, v) in vl.iter_mut().enumerate() {
            *v *= e.values[k % n];
        }
        let vt: Vec<f64> = (0..n * n).map(|k| e.vectors[(k % n) * n + k / n]).collect();
        assert!(max_abs_diff(&matmul(&vl, n, n, &vt, n), &a) < 1e-12 * n as f64);
        let identity: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        assert!(max_abs_diff(&matmul(&vt, n, n, &e.vectors, n), &identity) < 1e-12 * n as f64);
    }
    assert!(symmetric_eigen(&[1.0, 2.0], 2).is_err());
}

#[test]
fn kernel_products_match_the_dense_matrix() {
    let (x, y) = (points(301, D, 0.0), points(257, D, 0.37));
    let k = dense_gaussian(&x, &y, 4.0);
    for ncols in [1, 2, 3, 5] {
        let v = points(257 * ncols, 1, 0.2);
        let dense = matmul(&k, 301, 257, &v, ncols);
        let op = operator::<2>(&x, &y, 4.0, DType::F64);
        assert_eq!((op.rows(), op.cols(), op.width()), (301, 257, 2));
        let product = op.apply(&v, ncols).unwrap();
        assert!(max_abs_diff(&product, &dense) < 1e-12 * max_abs(&dense));
        let op = operator::<2>(&x, &y, 4.0, DType::F32);
        let product = op.apply(&v, ncols).unwrap();
        assert!(max_abs_diff(&product, &dense) < 1e-5 * max_abs(&dense));
    }
    let op = operator::<1>(&x, &x, 4.0, DType::F64);
    let diagonal = op.diagonal().unwrap();
    assert!(diagonal.iter().all(|&d| (d - 1.0).abs() < 1e-15));
    assert!(matches!(
        op.apply(&[1.0; 3], 1),
        Err(LinalgError::OperandShape {
            len: 3,
            rows: 301,
            ncols: 1
        })
    ));
}

#[test]
fn a_kernel_that_is_not_a_linear_operator_says_why() {
    let x = HostArray::from_f64(vec![4, D], vec![0.0; 4 * D]);
    let g = HostArray::from_f64(vec![1], vec![1.0]);
    let inputs = |with_b: bool| {
        let mut v = vec![
            ("x".to_string(), x.clone()),
            ("y".to_string(), x.clone()),
            ("g".to_string(), g.clone()),
        ];
        if with_b {
            v.push(("b".to_string(), x.clone()));
        }
        v
    };
    // SAFETY: never called (the signature is refused first).
    let max = unsafe {
        Kernel::from_parts(
            gaussian_signature(1, ReductionKind::Max),
            vec![(DType::F64, gaussian_tile::<f64, 1>, 1)],
            Arc::new(()),
        )
    };
    let error = KernelOperator::new(max, "b", inputs(false)).unwrap_err();
    assert!(error.to_string().contains("only Sum is linear"), "{error}");
    let error = KernelOperator::new(gaussian_kernel::<1>(), "x", inputs(false)).unwrap_err();
    assert!(
        error.to_string().contains("must be a Vj variable"),
        "{error}"
    );
    let error = KernelOperator::new(gaussian_kernel::<1>(), "c", inputs(false)).unwrap_err();
    assert!(
        error.to_string().contains("unknown argument `c`"),
        "{error}"
    );
    let error = KernelOperator::new(gaussian_kernel::<1>(), "b", inputs(true)).unwrap_err();
    assert!(error.to_string().contains("is the operand"), "{error}");
    let error =
        KernelOperator::new(gaussian_kernel::<1>(), "b", inputs(false)[..2].to_vec()).unwrap_err();
    assert!(
        error.to_string().contains("missing argument `g`"),
        "{error}"
    );
}

/// The Gaussian operator on one cloud, and its dense matrix.
fn symmetric_case(n: usize, g: f64) -> (KernelOperator, Dense) {
    let x = points(n, D, 0.05);
    let op = operator::<1>(&x, &x, g, DType::F64);
    let dense = Dense {
        a: dense_gaussian(&x, &x, g),
        rows: n,
        cols: n,
    };
    (op, dense)
}

/// `diag(l) A diag(r)` of a dense matrix.
fn scale_dense(a: &Dense, l: &[f64], r: &[f64]) -> Dense {
    let n = a.rows;
    Dense {
        a: (0..n * n).map(|e| l[e / n] * a.a[e] * r[e % n]).collect(),
        rows: n,
        cols: n,
    }
}

#[test]
fn normalisations_match_dense_ones() {
    let (op, dense) = symmetric_case(240, 6.0);
    let n = 240;
    let degrees: Vec<f64> = matmul(&dense.a, n, n, &vec![1.0; n], 1);
    let v = points(n * 2, 1, 0.3);
    let check = |steps: &[Normalization], expected: &Dense| {
        let scaled = Scaled::normalized(&op, steps).unwrap();
        let got = scaled.apply(&v, 2).unwrap();
        let want = expected.apply(&v, 2).unwrap();
        assert!(
            max_abs_diff(&got, &want) < 1e-12 * max_abs(&want),
            "{steps:?}"
        );
        let diagonal = scaled.diagonal().unwrap();
        assert!(max_abs_diff(&diagonal, &expected.diagonal().unwrap()) < 1e-12);
    };
    let ones = vec![1.0; n];
    let inv: Vec<f64> = degrees.iter().map(|d| 1.0 / d).collect();
    let inv_sqrt: Vec<f64> = degrees.iter().map(|d| d.powf(-0.5)).collect();
    check(&[Normalization::Row], &scale_dense(&dense, &inv, &ones));
    check(
        &[Normalization::Symmetric],
        &scale_dense(&dense, &inv_sqrt, &inv_sqrt),
    );
    // Diffusion maps: alpha = 1, then rows (the degrees of the alpha-normalised matrix).
    let alpha = scale_dense(&dense, &inv, &inv);
    let alpha_degrees = matmul(&alpha.a, n, n, &ones, 1);
    let alpha_inv: Vec<f64> = alpha_degrees.iter().map(|d| 1.0 / d).collect();
    check(
        &[Normalization::Alpha(1.0), Normalization::Row],
        &scale_dense(&alpha, &alpha_inv, &ones),
    );
    let half: Vec<f64> = degrees.iter().map(|d| d.powf(-0.5)).collect();
    check(
        &[Normalization::Alpha(0.5)],
        &scale_dense(&dense, &half, &half),
    );
    // Rows of the random walk sum to one.
    let walk = Scaled::normalized(&op, &[Normalization::Row]).unwrap();
    let sums = walk.apply(&ones, 1).unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-13));
    // A zero degree is refused.
    let zero = Dense {
        a: vec![1.0, 0.0, 0.0, 0.0],
        rows: 2,
        cols: 2,
    };
    assert!(matches!(
        Scaled::normalized(&zero, &[Normalization::Row]),
        Err(LinalgError::NonPositiveDegree { row: 1, .. })
    ));
    assert_eq!(
        Normalization::parse_list("alpha=0.5, sym").unwrap(),
        vec![Normalization::Alpha(0.5), Normalization::Symmetric]
    );
    assert!(Normalization::parse_list("rows").is_err());
}

#[test]
fn powers_match_dense_matrix_powers() {
    let (op, dense) = symmetric_case(200, 5.0);
    let walk = Scaled::normalized(&op, &[Normalization::Row]).unwrap();
    let n = 200;
    let degrees = matmul(&dense.a, n, n, &vec![1.0; n], 1);
    let p = scale_dense(
        &dense,
        &degrees.iter().map(|d| 1.0 / d).collect::<Vec<_>>(),
        &vec![1.0; n],
    );
    // P^8 by repeated squaring of the dense matrix: another order of operations.
    let p2 = matmul(&p.a, n, n, &p.a, n);
    let p4 = matmul(&p2, n, n, &p2, n);
    let p8 = matmul(&p4, n, n, &p4, n);
    let v = points(n * 3, 1, 0.7);
    let want = matmul(&p8, n, n, &v, 3);
    let mut steps = Vec::new();
    let got = apply_power(&walk, &v, 3, 8, &mut |p| steps.push(p.step)).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-12 * max_abs(&want));
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    assert_eq!(apply_power(&walk, &v, 3, 0, &mut no_progress).unwrap(), v);
}

/// Solves the SPD system `a x = b` by Cholesky.
fn cholesky_solve(a: &[f64], n: usize, b: &[f64], ncols: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut x = b.to_vec();
    for c in 0..ncols {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[i * n + k] * x[k * ncols + c]).sum();
            x[i * ncols + c] = (x[i * ncols + c] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k * ncols + c]).sum();
            x[i * ncols + c] = (x[i * ncols + c] - s) / l[i * n + i];
        }
    }
    x
}

#[test]
fn conjugate_gradients_solve_the_regularised_system() {
    let n = 300;
    let (op, dense) = symmetric_case(n, 3.0);
    let lambda = 1e-2;
    let shifted: Vec<f64> = (0..n * n)
        .map(|e| dense.a[e] + if e / n == e % n { lambda } else { 0.0 })
        .collect();
    let mut b = points(n * 2, 1, 0.9);
    b.iter_mut().for_each(|v| *v -= 0.5);
    let want = cholesky_solve(&shifted, n, &b, 2);
    let mut iterations = [0; 2];
    for (slot, preconditioner) in [Preconditioner::None, Preconditioner::Jacobi]
        .into_iter()
        .enumerate()
    {
        let options = CgOptions {
            lambda,
            tol: 1e-10,
            max_iterations: 2000,
            preconditioner,
        };
        let mut reports = 0;
        let result = conjugate_gradient(&op, &b, 2, &options, &mut |_| reports += 1).unwrap();
        assert!(result.converged, "{result}");
        assert_eq!(reports, result.iterations);
        assert_eq!(result.residual_history.len(), result.iterations + 1);
        assert!(
            result.relative_residuals.iter().all(|&r| r < 1e-9),
            "{result}"
        );
        // The error is bounded by the residual times the condition number (<= ~n / lambda).
        let error = max_abs_diff(&result.solution, &want) / max_abs(&want);
        assert!(error < 1e-6, "{preconditioner}: relative error {error}");
        iterations[slot] = result.iterations;
    }
    assert!(
        iterations.iter().all(|&i| i > 1 && i < 2000),
        "{iterations:?}"
    );
    // Too few iterations: reported, not an error; the true residual says how far it got.
    let options = CgOptions {
        lambda,
        tol: 1e-12,
        max_iterations: 3,
        preconditioner: Preconditioner::None,
    };
    let result = conjugate_gradient(&op, &b, 2, &options, &mut no_progress).unwrap();
    assert!(!result.converged && result.iterations == 3);
    assert!(result.relative_residuals.iter().all(|&r| r > 1e-12));
    // An indefinite system is refused at the breakdown.
    let indefinite = Dense {
        a: vec![1.0, 0.0, 0.0, -1.0],
        rows: 2,
        cols: 2,
    };
    let error = conjugate_gradient(
        &indefinite,
        &[0.0, 1.0],
        1,
        &CgOptions::default(),
        &mut no_progress,
    )
    .unwrap_err();
    assert!(
        matches!(error, LinalgError::NotPositiveDefinite { .. }),
        "{error}"
    );
}

#[test]
fn lanczos_finds_the_top_eigenpairs_of_the_diffusion_operator() {
    let n = 220;
    let (op, dense) = symmetric_case(n, 8.0);
    let degrees = matmul(&dense.a, n, n, &vec![1.0; n], 1);
    let inv_sqrt: Vec<f64> = degrees.iter().map(|d| d.powf(-0.5)).collect();
    let sym = scale_dense(&dense, &inv_sqrt, &inv_sqrt);
    let reference = symmetric_eigen(&sym.a, n).unwrap();
    let operator = Scaled::normalized(&op, &[Normalization::Symmetric]).unwrap();
    // The default basis, and a small one that forces many restarts.
    for basis in [0, 14] {
        let k = 8;
        let options = EigOptions {
            k,
            tol: 1e-10,
            basis,
            max_restarts: 500,
            start: None,
        };
        let mut restarts_seen = 0;
        let result = lanczos(&operator, &options, &mut |_| restarts_seen += 1).unwrap();
        assert!(result.converged, "{result}");
        assert_eq!(restarts_seen, result.restarts + 1);
        if basis == 14 {
            assert!(result.restarts > 0, "{result}");
        }
        // The top eigenvalue of D^-1/2 K D^-1/2 is 1 (eigenvector D^1/2 1).
        assert!((result.values[0] - 1.0).abs() < 1e-9);
        for c in 0..k {
            let error = (result.values[c] - reference.values[c]).abs();
            assert!(
                error < 1e-9,
                "eigenvalue {c}: {} against {}",
                result.values[c],
                reference.values[c]
            );
            // Eigenvectors up to sign, where the eigenvalue is separated from its neighbours.
            let gap = (0..n)
                .filter(|&j| j != c)
                .map(|j| (reference.values[j] - reference.values[c]).abs())
                .fold(f64::INFINITY, f64::min);
            let y: Vec<f64> = (0..n).map(|i| result.vectors[i * k + c]).collect();
            let want: Vec<f64> = (0..n).map(|i| reference.vectors[i * n + c]).collect();
            let cosine = y.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>().abs();
            if gap > 1e-4 {
                assert!(
                    1.0 - cosine < 1e-8,
                    "eigenvector {c}: cosine {cosine}, gap {gap}"
                );
            }
            // The true residual, from the dense matrix.
            let ay = sym.apply(&y, 1).unwrap();
            let residual = ay
                .iter()
                .zip(&y)
                .map(|(a, y)| (a - result.values[c] * y).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(residual < 1e-9, "residual {c}: {residual}");
        }
    }
    // The random walk's eigenvectors: D^-1 K psi = lambda psi, psi^T D psi = 1.
    let result = lanczos(
        &operator,
        &EigOptions {
            k: 4,
            tol: 1e-10,
            ..EigOptions::default()
        },
        &mut no_progress,
    )
    .unwrap();
    let psi = operator
        .random_walk_eigenvectors(&result.vectors, 4)
        .unwrap();
    let inv: Vec<f64> = degrees.iter().map(|d| 1.0 / d).collect();
    let walk = scale_dense(&dense, &inv, &vec![1.0; n]);
    let walked = walk.apply(&psi, 4).unwrap();
    for c in 0..4 {
        let residual = (0..n).fold(0.0f64, |m, i| {
            m.max((walked[i * 4 + c] - result.values[c] * psi[i * 4 + c]).abs())
        });
        assert!(residual < 1e-9, "walk eigenvector {c}: {residual}");
        let norm: f64 = (0..n).map(|i| degrees[i] * psi[i * 4 + c].powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-9);
    }
    let walk_op = Scaled::normalized(&op, &[Normalization::Row]).unwrap();
    assert!(walk_op
        .random_walk_eigenvectors(&result.vectors, 4)
        .is_err());
    // k = N: the whole spectrum, exactly.
    let small = Dense {
        a: vec![2.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 4.0],
        rows: 3,
        cols: 3,
    };
    let all = lanczos(
        &small,
        &EigOptions {
            k: 3,
            ..EigOptions::default()
        },
        &mut no_progress,
    )
    .unwrap();
    let exact = symmetric_eigen(&small.a, 3).unwrap();
    assert!(max_abs_diff(&all.values, &exact.values) < 1e-12);
    assert!(lanczos(
        &small,
        &EigOptions {
            k: 4,
            ..EigOptions::default()
        },
        &mut no_progress
    )
    .is_err());
}

#[test]
fn the_timer_counts_products() {
    let (op, _) = symmetric_case(50, 1.0);
    let timed = Timed::new(&op);
    let v = vec![1.0; 100];
    timed.apply(&v, 2).unwrap();
    timed.apply(&v[..50], 1).unwrap();
    assert_eq!((timed.applies(), timed.columns()), (2, 3));
    assert!(timed.seconds() > 0.0);
}
