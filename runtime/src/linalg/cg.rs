//! Conjugate gradients for `(A + lambda I) x = b`, several right-hand sides in one product each
//! iteration.

use super::operator::{check_operand, check_square, column, is_positive};
use super::{LinalgError, LinearOperator, Progress, Shifted};
use std::fmt;

/// What `M^-1` is applied to the residuals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preconditioner {
    None,
    /// `diag(A + lambda I)^-1`: needs the operator's diagonal.
    Jacobi,
}

impl fmt::Display for Preconditioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preconditioner::None => "none",
            Preconditioner::Jacobi => "jacobi",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CgOptions {
    /// The shift `lambda` added to the diagonal (the ridge, or the noise variance).
    pub lambda: f64,
    /// Stop a column when `||b - (A + lambda I) x|| <= tol ||b||`.
    pub tol: f64,
    pub max_iterations: usize,
    pub preconditioner: Preconditioner,
}

impl Default for CgOptions {
    fn default() -> CgOptions {
        CgOptions {
            lambda: 0.0,
            tol: 1e-8,
            max_iterations: 1000,
            preconditioner: Preconditioner::None,
        }
    }
}

/// The solution, and how it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct CgResult {
    /// `rows x ncols`, row-major, as `b`.
    pub solution: Vec<f64>,
    pub ncols: usize,
    /// Iterations run (one product each), and whether every column reached the tolerance.
    pub iterations: usize,
    pub converged: bool,
    /// After each iteration (and before the first), the largest relative residual over the
    /// columns, as the recurrence tracks it.
    pub residual_history: Vec<f64>,
    /// Per column, `||b - (A + lambda I) x|| / ||b||` recomputed from the solution (one more
    /// product): the residual actually reached.
    pub relative_residuals: Vec<f64>,
}

impl fmt::Display for CgResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let worst = self
            .relative_residuals
            .iter()
            .fold(0.0f64, |a, &b| a.max(b));
        write!(
            f,
            "conjugate gradients: {} after {} iterations, largest relative residual {:.3e} over {} column{}",
            if self.converged { "converged" } else { "not converged" },
            self.iterations,
            worst,
            self.ncols,
            if self.ncols == 1 { "" } else { "s" }
        )
    }
}

/// Solves `(A + lambda I) x = b` for the `ncols` columns of `b` (`rows x ncols`, row-major) by
/// (preconditioned) conjugate gradients, from `x = 0`. `A + lambda I` must be symmetric positive
/// definite (a positive semi-definite kernel with `lambda > 0` is); a breakdown that shows it
/// is not is an error. Each iteration is one product of all the columns not yet converged (the
/// converged ones ride along as zeros), reported to `progress`.
pub fn conjugate_gradient<A: LinearOperator + ?Sized>(
    op: &A,
    b: &[f64],
    ncols: usize,
    options: &CgOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CgResult, LinalgError> {
    let n = check_square(op, "conjugate gradients")?;
    check_operand(op, b, ncols)?;
    if !is_positive(options.tol) || !options.lambda.is_finite() {
        return Err(LinalgError::Parameter(format!(
            "conjugate gradients need a positive tolerance and a finite shift (tol {}, lambda {})",
            options.tol, options.lambda
        )));
    }
    let system = Shifted {
        op,
        shift: options.lambda,
    };
    let inverse_diagonal = match options.preconditioner {
        Preconditioner::None => None,
        Preconditioner::Jacobi => {
            let d = system.diagonal()?;
            if let Some((row, &value)) = d.iter().enumerate().find(|(_, d)| !is_positive(**d)) {
                return Err(LinalgError::Parameter(format!(
                    "the Jacobi preconditioner needs a positive diagonal; entry {row} of A + lambda I is {value}"
                )));
            }
            Some(d.iter().map(|d| 1.0 / d).collect::<Vec<f64>>())
        }
    };
    let precondition = |r: &[f64]| -> Vec<f64> {
        match &inverse_diagonal {
            None => r.to_vec(),
            Some(inv) => r
                .iter()
                .enumerate()
                .map(|(k, v)| v * inv[k / ncols])
                .collect(),
        }
    };
    let dot = |a: &[f64], b: &[f64], c: usize| -> f64 {
        column(a, ncols, c)
            .zip(column(b, ncols, c))
            .map(|(a, b)| a * b)
            .sum()
    };
    let b_norms: Vec<f64> = (0..ncols).map(|c| dot(b, b, c).sqrt()).collect();
    let relative = |r: &[f64], c: usize| {
        if b_norms[c] > 0.0 {
            dot(r, r, c).sqrt() / b_norms[c]
        } else {
            0.0
        }
    };
    let mut x = vec![0.0; n * ncols];
    let mut r = b.to_vec();
    let mut z = precondition(&r);
    let mut p = z.clone();
    let mut rz: Vec<f64> = (0..ncols).map(|c| dot(&r, &z, c)).collect();
    let mut residuals: Vec<f64> = (0..ncols).map(|c| relative(&r, c)).collect();
    let mut active: Vec<bool> = residuals.iter().map(|&res| res > options.tol).collect();
    let worst_active = |residuals: &[f64], active: &[bool]| {
        residuals
            .iter()
            .zip(active)
            .filter(|(_, a)| **a)
            .fold(0.0f64, |m, (r, _)| m.max(*r))
    };
    let mut history = vec![residuals.iter().fold(0.0f64, |m, &r| m.max(r))];
    let mut iterations = 0;
    while active.iter().any(|&a| a) && iterations < options.max_iterations {
        iterations += 1;
        let q = system.apply(&p, ncols)?;
        for c in (0..ncols).filter(|&c| active[c]) {
            let pq = dot(&p, &q, c);
            if !is_positive(pq) {
                return Err(LinalgError::NotPositiveDefinite {
                    column: c,
                    iteration: iterations,
                    value: pq,
                });
            }
            let alpha = rz[c] / pq;
            for row in 0..n {
                let k = row * ncols + c;
                x[k] += alpha * p[k];
                r[k] -= alpha * q[k];
            }
            residuals[c] = relative(&r, c);
        }
        z = precondition(&r);
        for c in 0..ncols {
            if !active[c] {
                continue;
            }
            if residuals[c] <= options.tol {
                active[c] = false;
                // Zero search directions cost nothing to carry through the next products.
                (0..n).for_each(|row| p[row * ncols + c] = 0.0);
                continue;
            }
            let rz_next = dot(&r, &z, c);
            let beta = rz_next / rz[c];
            rz[c] = rz_next;
            for row in 0..n {
                let k = row * ncols + c;
                p[k] = z[k] + beta * p[k];
            }
        }
        history.push(residuals.iter().fold(0.0f64, |m, &r| m.max(r)));
        progress(&Progress {
            task: "cg",
            step: iterations,
            steps: options.max_iterations,
            residual: worst_active(&residuals, &active),
            converged: active.iter().filter(|a| !**a).count(),
            wanted: ncols,
        });
    }
    let ax = system.apply(&x, ncols)?;
    let true_residual: Vec<f64> = b.iter().zip(&ax).map(|(b, ax)| b - ax).collect();
    let relative_residuals: Vec<f64> = (0..ncols).map(|c| relative(&true_residual, c)).collect();
    Ok(CgResult {
        solution: x,
        ncols,
        iterations,
        converged: active.iter().all(|a| !a),
        residual_history: history,
        relative_residuals,
    })
}
