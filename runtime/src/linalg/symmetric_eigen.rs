//! Eigenvalues and eigenvectors of a small dense symmetric matrix, by cyclic Jacobi rotations:
//! the Rayleigh-Ritz step of Lanczos, on matrices of a few tens to a few hundred rows.
//! Jacobi is slower than tridiagonal QR for large matrices but needs no care for its accuracy:
//! every eigenvalue comes out with an absolute error of a few ulps of the matrix's norm.

use super::LinalgError;

/// `values` in decreasing order; `vectors` row-major `n x n`, column `k` the unit eigenvector of
/// `values[k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SymmetricEigen {
    pub values: Vec<f64>,
    pub vectors: Vec<f64>,
}

/// The eigendecomposition of the symmetric `n x n` matrix `a` (row-major; only its symmetric
/// part `(a + a^T) / 2` is used).
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen, LinalgError> {
    if a.len() != n * n {
        return Err(LinalgError::OperandShape {
            len: a.len(),
            rows: n,
            ncols: n,
        });
    }
    let mut m: Vec<f64> = (0..n * n)
        .map(|k| 0.5 * (a[k] + a[(k % n) * n + k / n]))
        .collect();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let norm: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    // Sweeps until the off-diagonal part is below rounding: quadratic convergence makes that
    // a handful of sweeps; the cap only guards against a NaN in the input.
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|p| (p + 1..n).map(move |q| (p, q)))
            .map(|(p, q)| m[p * n + q] * m[p * n + q])
            .sum::<f64>()
            .sqrt();
        if off.is_nan() || off <= f64::EPSILON * 1e-3 * norm {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation zeroing (p, q): cot(2 phi) = theta, t = tan(phi) the smaller
                // root of t^2 + 2 theta t - 1 = 0.
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| m[b * n + b].total_cmp(&m[a * n + a]));
    let values = order.iter().map(|&k| m[k * n + k]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + new] = v[row * n + old];
        }
    }
    Ok(SymmetricEigen { values, vectors })
}
