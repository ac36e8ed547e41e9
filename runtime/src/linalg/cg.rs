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
    check_square(op, "conjugate gradients")?;
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
    let columns = Columns::new(b, ncols, jacobi_inverse(&system, options.preconditioner)?);
    let mut state = CgState::new(&columns, b, options.tol);
    let mut history = vec![state.residuals.iter().fold(0.0f64, |m, &r| m.max(r))];
    let mut iterations = 0;
    while state.active.iter().any(|&a| a) && iterations < options.max_iterations {
        iterations += 1;
        let q = system.apply(&state.p, ncols)?;
        state.advance_solution(&columns, &q, iterations)?;
        state.advance_directions(&columns, options.tol);
        history.push(state.residuals.iter().fold(0.0f64, |m, &r| m.max(r)));
        progress(&Progress {
            task: "cg",
            step: iterations,
            steps: options.max_iterations,
            residual: state.worst_active(),
            converged: state.active.iter().filter(|a| !**a).count(),
            wanted: ncols,
        });
    }
    let ax = system.apply(&state.x, ncols)?;
    let true_residual: Vec<f64> = b.iter().zip(&ax).map(|(b, ax)| b - ax).collect();
    let relative_residuals: Vec<f64> = (0..ncols)
        .map(|c| columns.relative(&true_residual, c))
        .collect();
    Ok(CgResult {
        converged: state.active.iter().all(|a| !a),
        solution: state.x,
        ncols,
        iterations,
        residual_history: history,
        relative_residuals,
    })
}

/// `diag(A + lambda I)^-1` for the Jacobi preconditioner (`None` without one).
fn jacobi_inverse<A: LinearOperator + ?Sized>(
    system: &Shifted<&A>,
    preconditioner: Preconditioner,
) -> Result<Option<Vec<f64>>, LinalgError> {
    match preconditioner {
        Preconditioner::None => Ok(None),
        Preconditioner::Jacobi => {
            let d = system.diagonal()?;
            if let Some((row, &value)) = d.iter().enumerate().find(|(_, d)| !is_positive(**d)) {
                return Err(LinalgError::Parameter(format!(
                    "the Jacobi preconditioner needs a positive diagonal; entry {row} of A + lambda I is {value}"
                )));
            }
            Ok(Some(d.iter().map(|d| 1.0 / d).collect()))
        }
    }
}

/// Column-wise arithmetic on `rows x ncols` row-major blocks: dot products, residuals relative
/// to the right-hand side's columns, the preconditioner.
struct Columns {
    ncols: usize,
    b_norms: Vec<f64>,
    inverse_diagonal: Option<Vec<f64>>,
}

impl Columns {
    fn new(b: &[f64], ncols: usize, inverse_diagonal: Option<Vec<f64>>) -> Columns {
        let mut columns = Columns {
            ncols,
            b_norms: Vec::new(),
            inverse_diagonal,
        };
        columns.b_norms = (0..ncols).map(|c| columns.dot(b, b, c).sqrt()).collect();
        columns
    }

    fn dot(&self, a: &[f64], b: &[f64], c: usize) -> f64 {
        column(a, self.ncols, c)
            .zip(column(b, self.ncols, c))
            .map(|(a, b)| a * b)
            .sum()
    }

    /// `||r_c|| / ||b_c||` (0 for a zero column of `b`).
    fn relative(&self, r: &[f64], c: usize) -> f64 {
        if self.b_norms[c] > 0.0 {
            self.dot(r, r, c).sqrt() / self.b_norms[c]
        } else {
            0.0
        }
    }

    /// `M^-1 r`.
    fn precondition(&self, r: &[f64]) -> Vec<f64> {
        match &self.inverse_diagonal {
            None => r.to_vec(),
            Some(inv) => r
                .iter()
                .enumerate()
                .map(|(k, v)| v * inv[k / self.ncols])
                .collect(),
        }
    }
}

/// The iterates of conjugate gradients, all columns at once.
struct CgState {
    x: Vec<f64>,
    r: Vec<f64>,
    z: Vec<f64>,
    p: Vec<f64>,
    /// `<r, z>` per column.
    rz: Vec<f64>,
    residuals: Vec<f64>,
    /// The columns not yet at the tolerance.
    active: Vec<bool>,
}

impl CgState {
    /// From `x = 0`.
    fn new(columns: &Columns, b: &[f64], tol: f64) -> CgState {
        let ncols = columns.ncols;
        let r = b.to_vec();
        let z = columns.precondition(&r);
        let rz = (0..ncols).map(|c| columns.dot(&r, &z, c)).collect();
        let residuals: Vec<f64> = (0..ncols).map(|c| columns.relative(&r, c)).collect();
        CgState {
            x: vec![0.0; b.len()],
            active: residuals.iter().map(|&res| res > tol).collect(),
            p: z.clone(),
            r,
            z,
            rz,
            residuals,
        }
    }

    /// The step along `p` of each active column, `q = (A + lambda I) p`: `x` and `r` move,
    /// the residuals follow. A non-positive curvature `<p, q>` is an error.
    fn advance_solution(
        &mut self,
        columns: &Columns,
        q: &[f64],
        iteration: usize,
    ) -> Result<(), LinalgError> {
        let ncols = columns.ncols;
        for c in (0..ncols).filter(|&c| self.active[c]) {
            let pq = columns.dot(&self.p, q, c);
            if !is_positive(pq) {
                return Err(LinalgError::NotPositiveDefinite {
                    column: c,
                    iteration,
                    value: pq,
                });
            }
            let alpha = self.rz[c] / pq;
            for k in (c..self.x.len()).step_by(ncols) {
                self.x[k] += alpha * self.p[k];
                self.r[k] -= alpha * q[k];
            }
            self.residuals[c] = columns.relative(&self.r, c);
        }
        Ok(())
    }

    /// The next search directions; a column at the tolerance stops (its direction zeroed).
    fn advance_directions(&mut self, columns: &Columns, tol: f64) {
        let ncols = columns.ncols;
        self.z = columns.precondition(&self.r);
        for c in 0..ncols {
            if !self.active[c] {
                continue;
            }
            if self.residuals[c] <= tol {
                self.active[c] = false;
                // Zero search directions cost nothing to carry through the next products.
                (c..self.p.len())
                    .step_by(ncols)
                    .for_each(|k| self.p[k] = 0.0);
                continue;
            }
            let rz_next = columns.dot(&self.r, &self.z, c);
            let beta = rz_next / self.rz[c];
            self.rz[c] = rz_next;
            for k in (c..self.p.len()).step_by(ncols) {
                self.p[k] = self.z[k] + beta * self.p[k];
            }
        }
    }

    /// The largest residual of the columns still active.
    fn worst_active(&self) -> f64 {
        self.residuals
            .iter()
            .zip(&self.active)
            .filter(|(_, a)| **a)
            .fold(0.0f64, |m, (r, _)| m.max(*r))
    }
}
