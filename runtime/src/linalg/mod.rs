//! Kernel matrices as linear operators: what people compute with a kernel matrix that is too
//! large to store (1e5 x 1e5 and more). A compiled kernel whose formula is linear in one
//! j-variable `b` (`K(x_i, y_j) * b_j`, reduced by `Sum`) is the product `K b`; everything here
//! is built from such products and from vectors of length N, never from an N x N matrix.
//!
//! - [`LinearOperator`]: the one trait the algorithms are generic over; [`KernelOperator`] is a
//!   compiled kernel seen as one (many right-hand sides in one pass, up to the width of `b`).
//! - [`Scaled`] and [`Normalization`]: the normalisations of diffusion geometry (row-stochastic
//!   `D^-1 K`, symmetric `D^-1/2 K D^-1/2`, `D^-a K D^-a`), degrees computed by one product.
//! - [`apply_power`]: `P^t V`. [`conjugate_gradient`]: `(A + lambda I) x = b`, preconditioned
//!   or not. [`lanczos`]: the top-k eigenpairs of a symmetric operator.
//!
//! Long runs report through a [`Progress`] callback.

mod cg;
mod kernel_operator;
mod lanczos;
mod normalize;
mod operator;
mod symmetric_eigen;

pub use cg::{conjugate_gradient, CgOptions, CgResult, Preconditioner};
pub use kernel_operator::{KernelOperator, LINEARITY_SAMPLE};
pub use lanczos::{lanczos, EigOptions, EigResult};
pub use normalize::{Normalization, Scaled};
pub use operator::{apply_power, check_operand, LinearOperator, Shifted, Timed};
pub use symmetric_eigen::{symmetric_eigen, SymmetricEigen};

use crate::arrays::ArgumentError;
use std::fmt;

/// Why an operator or an algorithm on it cannot give a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinalgError {
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error("kernel `{kernel}` is not a linear operator on `{operand}`: {reason}")]
    NotLinear {
        kernel: String,
        operand: String,
        reason: String,
    },
    #[error("the operand holds {len} numbers; expected {rows} rows x {ncols} columns")]
    OperandShape {
        len: usize,
        rows: usize,
        ncols: usize,
    },
    #[error("{what} needs a square operator; this one is {rows} x {cols}")]
    NotSquare {
        what: &'static str,
        rows: usize,
        cols: usize,
    },
    #[error(
        "row {row} has degree {value}: a normalisation needs every degree positive and finite"
    )]
    NonPositiveDegree { row: usize, value: f64 },
    #[error("this operator cannot give its diagonal, which the Jacobi preconditioner needs")]
    NoDiagonal,
    #[error("conjugate gradients broke down at iteration {iteration} (column {column}): p^T A p = {value}; the operator plus the shift is not positive definite")]
    NotPositiveDefinite {
        column: usize,
        iteration: usize,
        value: f64,
    },
    #[error("{0}")]
    Parameter(String),
}

/// Where a long computation stands, given to the caller's callback after each step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// `cg`, `lanczos` or `power`.
    pub task: &'static str,
    /// Steps done (iterations, restarts or powers), and the most there will be.
    pub step: usize,
    pub steps: usize,
    /// The largest residual not yet below the tolerance (relative for `cg`, `||A y - theta
    /// y||` for `lanczos`); 0 where the task has none.
    pub residual: f64,
    /// How many columns (cg) or eigenpairs (lanczos) have converged, out of `wanted`.
    pub converged: usize,
    pub wanted: usize,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: step {}/{}", self.task, self.step, self.steps)?;
        if self.wanted > 0 {
            write!(
                f,
                ", {}/{} converged, residual {:.3e}",
                self.converged, self.wanted, self.residual
            )?;
        }
        Ok(())
    }
}

/// A progress callback that ignores every report.
pub fn no_progress(_: &Progress) {}

#[cfg(test)]
mod tests;
