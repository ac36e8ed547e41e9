//! The top eigenpairs of a symmetric operator: Lanczos with full reorthogonalisation and thick
//! restarts (the Krylov basis is compressed to the best Ritz vectors when it is full, so memory
//! stays `basis x N` however many products convergence takes).

use super::operator::{check_square, is_positive, LinearOperator};
use super::symmetric_eigen::symmetric_eigen;
use super::{LinalgError, Progress};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct EigOptions {
    /// How many eigenpairs: those of the `k` algebraically largest eigenvalues.
    pub k: usize,
    /// A pair `(theta, y)` is accepted when `||A y - theta y|| <= tol * |theta_max|`
    /// (`theta_max` the largest Ritz value in magnitude, an estimate of `||A||`). For a
    /// symmetric `A` an eigenvalue then lies within `tol * ||A||` of `theta`, and the angle
    /// between `y` and its eigenvector is at most that over the gap to the other eigenvalues.
    pub tol: f64,
    /// The Krylov basis size before a restart; 0 picks `max(2k + 1, k + 20)` (at most N).
    pub basis: usize,
    pub max_restarts: usize,
    /// The starting vector; a fixed pseudo-random one when `None`.
    pub start: Option<Vec<f64>>,
}

impl Default for EigOptions {
    fn default() -> EigOptions {
        EigOptions {
            k: 6,
            tol: 1e-8,
            basis: 0,
            max_restarts: 200,
            start: None,
        }
    }
}

/// Eigenpairs in decreasing order of the eigenvalue.
#[derive(Clone, Debug, PartialEq)]
pub struct EigResult {
    pub values: Vec<f64>,
    /// `N x k`, row-major: column `c` is the unit eigenvector of `values[c]`, its largest
    /// component positive.
    pub vectors: Vec<f64>,
    pub k: usize,
    /// `||A y - theta y||` of each pair, as the Lanczos relation gives it (no extra product).
    pub residuals: Vec<f64>,
    /// Whether every pair met the tolerance (otherwise the restarts ran out).
    pub converged: bool,
    pub restarts: usize,
    /// Products with the operator.
    pub products: usize,
}

impl fmt::Display for EigResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let worst = self.residuals.iter().fold(0.0f64, |a, &b| a.max(b));
        write!(
            f,
            "lanczos: {} {} eigenpairs after {} products ({} restarts), largest residual {:.3e}",
            if self.converged {
                "converged"
            } else {
                "not converged:"
            },
            self.k,
            self.products,
            self.restarts,
            worst
        )
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Removes from `w` its components along the (orthonormal) `basis`, twice (classical
/// Gram-Schmidt repeated is as accurate as modified, and reads each basis vector once per
/// pass); returns the coefficients removed.
fn orthogonalize(basis: &[Vec<f64>], w: &mut [f64]) -> Vec<f64> {
    let mut total = vec![0.0; basis.len()];
    for _ in 0..2 {
        let coefficients: Vec<f64> = basis.iter().map(|v| dot(v, w)).collect();
        for (v, c) in basis.iter().zip(&coefficients) {
            for (w, v) in w.iter_mut().zip(v) {
                *w -= c * v;
            }
        }
        total
            .iter_mut()
            .zip(&coefficients)
            .for_each(|(t, c)| *t += c);
    }
    total
}

/// A deterministic pseudo-random vector (splitmix64), uniform in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// A unit vector orthogonal to `basis`, from `candidate` or, if it lies in the basis's span,
/// from fresh pseudo-random ones; `None` when the basis spans the whole space.
fn new_direction(basis: &[Vec<f64>], candidate: Vec<f64>, seed: u64) -> Option<Vec<f64>> {
    let n = candidate.len();
    if basis.len() >= n {
        return None;
    }
    let mut w = candidate;
    for attempt in 0..8 {
        let before = dot(&w, &w).sqrt();
        orthogonalize(basis, &mut w);
        let after = dot(&w, &w).sqrt();
        if after > 1e-10 * before && after > 0.0 {
            w.iter_mut().for_each(|x| *x /= after);
            return Some(w);
        }
        w = pseudo_random(n, seed.wrapping_add(attempt + 1));
    }
    None
}

/// The `k` algebraically largest eigenvalues of the symmetric operator `op`, and their
/// eigenvectors, to the tolerance of [`EigOptions::tol`]. Each basis vector costs one product
/// (one column); `progress` hears after each restart.
pub fn lanczos<A: LinearOperator + ?Sized>(
    op: &A,
    options: &EigOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<EigResult, LinalgError> {
    let n = check_square(op, "lanczos")?;
    let k = options.k;
    if k == 0 || k > n {
        return Err(LinalgError::Parameter(format!(
            "lanczos: k = {k} eigenpairs asked of an operator of size {n} (1 <= k <= N)"
        )));
    }
    if !is_positive(options.tol) {
        return Err(LinalgError::Parameter(format!(
            "lanczos: the tolerance must be positive, not {}",
            options.tol
        )));
    }
    let m = if options.basis == 0 {
        (2 * k + 1).max(k + 20)
    } else {
        options.basis
    }
    .min(n);
    if m <= k && m < n {
        return Err(LinalgError::Parameter(format!(
            "lanczos: a basis of {m} vectors cannot hold k = {k} eigenvectors and grow (basis > k)"
        )));
    }
    let start = match &options.start {
        Some(s) if s.len() != n => {
            return Err(LinalgError::OperandShape {
                len: s.len(),
                rows: n,
                ncols: 1,
            })
        }
        Some(s) => s.clone(),
        None => pseudo_random(n, 0x5eed),
    };
    let Some(mut next) = new_direction(&[], start, 1) else {
        return Err(LinalgError::Parameter(
            "lanczos: the operator is empty".into(),
        ));
    };
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(m + 1);
    // The projected matrix V^T A V, m x m.
    let mut h = vec![0.0; m * m];
    let mut beta_last = 0.0;
    let mut scale = 0.0f64;
    let mut products = 0;
    let mut seed = 2;
    let mut restart = 0;
    loop {
        let mut exhausted = false;
        while basis.len() < m {
            let j = basis.len();
            basis.push(next.clone());
            let mut w = op.apply(&basis[j], 1)?;
            products += 1;
            let coefficients = orthogonalize(&basis, &mut w);
            for (i, c) in coefficients.iter().enumerate() {
                h[i * m + j] = *c;
                h[j * m + i] = *c;
            }
            let beta = dot(&w, &w).sqrt();
            scale = scale.max(coefficients[j].abs()).max(beta);
            if beta > 1e-12 * scale {
                beta_last = beta;
                next = w.into_iter().map(|x| x / beta).collect();
            } else {
                // The basis spans an invariant subspace: go on from a new direction (its
                // coupling to the basis is zero).
                beta_last = 0.0;
                seed += 1;
                match new_direction(&basis, pseudo_random(n, seed), seed) {
                    Some(d) => next = d,
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
        }
        let size = basis.len();
        let projected: Vec<f64> = (0..size * size)
            .map(|e| h[(e / size) * m + e % size])
            .collect();
        let ritz = symmetric_eigen(&projected, size)?;
        let theta_max = ritz.values.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let residuals: Vec<f64> = (0..k)
            .map(|i| (beta_last * ritz.vectors[(size - 1) * size + i]).abs())
            .collect();
        let threshold = options.tol * theta_max.max(f64::MIN_POSITIVE);
        let converged = exhausted || residuals.iter().all(|&r| r <= threshold);
        progress(&Progress {
            task: "lanczos",
            step: restart + 1,
            steps: options.max_restarts + 1,
            residual: residuals
                .iter()
                .filter(|&&r| r > threshold)
                .fold(0.0f64, |a, &b| a.max(b)),
            converged: residuals.iter().filter(|&&r| r <= threshold).count(),
            wanted: k,
        });
        let ritz_vectors = |count: usize| -> Vec<Vec<f64>> {
            (0..count)
                .map(|i| {
                    let mut y = vec![0.0; n];
                    for (j, v) in basis.iter().enumerate() {
                        let s = ritz.vectors[j * size + i];
                        y.iter_mut().zip(v).for_each(|(y, v)| *y += s * v);
                    }
                    y
                })
                .collect()
        };
        if converged || restart == options.max_restarts {
            let mut vectors = vec![0.0; n * k];
            for (c, mut y) in ritz_vectors(k).into_iter().enumerate() {
                let norm = dot(&y, &y).sqrt();
                let largest = y
                    .iter()
                    .fold(0.0f64, |a, &b| if b.abs() > a.abs() { b } else { a });
                let sign = if largest < 0.0 { -1.0 } else { 1.0 };
                y.iter_mut().for_each(|v| *v *= sign / norm);
                for (row, v) in y.into_iter().enumerate() {
                    vectors[row * k + c] = v;
                }
            }
            return Ok(EigResult {
                values: ritz.values[..k].to_vec(),
                vectors,
                k,
                residuals,
                converged,
                restarts: restart,
                products,
            });
        }
        // Thick restart: keep the best Ritz vectors (more than k, which speeds up the k-th),
        // their projected matrix diagonal; `next` (the residual direction) continues.
        let keep = (k + (size - k) / 2).min(size - 1).max(k);
        basis = ritz_vectors(keep);
        h.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..keep {
            h[i * m + i] = ritz.values[i];
        }
        restart += 1;
    }
}
