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
    let m = basis_size(options, n)?;
    let mut krylov = Krylov::new(m, starting_direction(options, n)?);
    let mut restart = 0;
    loop {
        let exhausted = krylov.expand(op)?;
        let size = krylov.basis.len();
        let ritz = symmetric_eigen(&krylov.projected(), size)?;
        let theta_max = ritz.values.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let residuals: Vec<f64> = (0..k)
            .map(|i| (krylov.beta_last * ritz.vectors[(size - 1) * size + i]).abs())
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
        if converged || restart == options.max_restarts {
            return Ok(EigResult {
                values: ritz.values[..k].to_vec(),
                vectors: unit_columns(krylov.ritz_vectors(&ritz.vectors, k), n),
                k,
                residuals,
                converged,
                restarts: restart,
                products: krylov.products,
            });
        }
        // Thick restart: keep the best Ritz vectors (more than k, which speeds up the k-th),
        // their projected matrix diagonal; `next` (the residual direction) continues.
        let keep = (k + (size - k) / 2).min(size - 1).max(k);
        krylov.restart(
            krylov.ritz_vectors(&ritz.vectors, keep),
            &ritz.values[..keep],
        );
        restart += 1;
    }
}

/// The Krylov basis size before a restart (checking `k` and the tolerance on the way).
fn basis_size(options: &EigOptions, n: usize) -> Result<usize, LinalgError> {
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
    Ok(m)
}

/// The first basis vector: the caller's start (or a fixed pseudo-random one), normalised.
fn starting_direction(options: &EigOptions, n: usize) -> Result<Vec<f64>, LinalgError> {
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
    new_direction(&[], start, 1)
        .ok_or_else(|| LinalgError::Parameter("lanczos: the operator is empty".into()))
}

/// An orthonormal Krylov basis of at most `m` vectors, the projected matrix `V^T A V` on it,
/// and the direction it grows in next.
struct Krylov {
    m: usize,
    basis: Vec<Vec<f64>>,
    /// `m x m`, row-major; the leading `basis.len()` square is filled.
    h: Vec<f64>,
    next: Vec<f64>,
    /// The coupling of the last basis vector to `next` (0 after a new direction).
    beta_last: f64,
    /// The largest coefficient seen, an estimate of `||A||` that says when `beta` is 0.
    scale: f64,
    products: usize,
    seed: u64,
}

impl Krylov {
    fn new(m: usize, next: Vec<f64>) -> Krylov {
        Krylov {
            m,
            basis: Vec::with_capacity(m + 1),
            h: vec![0.0; m * m],
            next,
            beta_last: 0.0,
            scale: 0.0,
            products: 0,
            seed: 2,
        }
    }

    /// Grows the basis to `m` vectors, one product each; true when the basis spans the whole
    /// space before that (every eigenpair is then exact).
    fn expand<A: LinearOperator + ?Sized>(&mut self, op: &A) -> Result<bool, LinalgError> {
        let (m, n) = (self.m, self.next.len());
        while self.basis.len() < m {
            let j = self.basis.len();
            self.basis.push(self.next.clone());
            let mut w = op.apply(&self.basis[j], 1)?;
            self.products += 1;
            let coefficients = orthogonalize(&self.basis, &mut w);
            for (i, c) in coefficients.iter().enumerate() {
                self.h[i * m + j] = *c;
                self.h[j * m + i] = *c;
            }
            let beta = dot(&w, &w).sqrt();
            self.scale = self.scale.max(coefficients[j].abs()).max(beta);
            if beta > 1e-12 * self.scale {
                self.beta_last = beta;
                self.next = w.into_iter().map(|x| x / beta).collect();
            } else {
                // The basis spans an invariant subspace: go on from a new direction (its
                // coupling to the basis is zero).
                self.beta_last = 0.0;
                self.seed += 1;
                match new_direction(&self.basis, pseudo_random(n, self.seed), self.seed) {
                    Some(d) => self.next = d,
                    None => return Ok(true),
                }
            }
        }
        Ok(false)
    }

    /// The projected matrix on the basis, `size x size` with `size` the basis's length.
    fn projected(&self) -> Vec<f64> {
        let size = self.basis.len();
        (0..size * size)
            .map(|e| self.h[(e / size) * self.m + e % size])
            .collect()
    }

    /// The first `count` Ritz vectors, from the eigenvectors (`size x size`, column `i` the
    /// `i`-th) of the projected matrix.
    fn ritz_vectors(&self, eigenvectors: &[f64], count: usize) -> Vec<Vec<f64>> {
        let size = self.basis.len();
        let n = self.next.len();
        (0..count)
            .map(|i| {
                let mut y = vec![0.0; n];
                for (j, v) in self.basis.iter().enumerate() {
                    let s = eigenvectors[j * size + i];
                    y.iter_mut().zip(v).for_each(|(y, v)| *y += s * v);
                }
                y
            })
            .collect()
    }

    /// Restarts from `kept` Ritz vectors: the projected matrix is their Ritz values on its
    /// diagonal.
    fn restart(&mut self, kept: Vec<Vec<f64>>, values: &[f64]) {
        self.basis = kept;
        self.h.iter_mut().for_each(|x| *x = 0.0);
        for (i, &value) in values.iter().enumerate() {
            self.h[i * self.m + i] = value;
        }
    }
}

/// The vectors `ys` as the unit columns of an `n x k` row-major matrix, each with its largest
/// component positive.
fn unit_columns(ys: Vec<Vec<f64>>, n: usize) -> Vec<f64> {
    let k = ys.len();
    let mut vectors = vec![0.0; n * k];
    for (c, mut y) in ys.into_iter().enumerate() {
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
    vectors
}
