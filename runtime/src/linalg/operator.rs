//! The operator trait, and the operators built from others: a shift `A + sigma I`, a timer.

use super::{LinalgError, Progress};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A matrix known only through its products. Blocks of vectors are row-major: `x` holds
/// `cols x ncols` numbers (one column per right-hand side), the result `rows x ncols`: the
/// layout of a numpy array `(N, ncols)`, and of a kernel's j-variable of dimension `ncols`.
pub trait LinearOperator {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// `A x` for the `ncols` columns of `x`.
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError>;
    /// The diagonal `A_ii` (`min(rows, cols)` numbers), for preconditioners; an operator that
    /// cannot give it says [`LinalgError::NoDiagonal`].
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        Err(LinalgError::NoDiagonal)
    }
}

impl<T: LinearOperator + ?Sized> LinearOperator for &T {
    fn rows(&self) -> usize {
        (**self).rows()
    }
    fn cols(&self) -> usize {
        (**self).cols()
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        (**self).apply(x, ncols)
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        (**self).diagonal()
    }
}

impl<T: LinearOperator + ?Sized> LinearOperator for Box<T> {
    fn rows(&self) -> usize {
        (**self).rows()
    }
    fn cols(&self) -> usize {
        (**self).cols()
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        (**self).apply(x, ncols)
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        (**self).diagonal()
    }
}

/// That `x` holds `op.cols() x ncols` numbers, with `ncols >= 1`.
pub fn check_operand<A: LinearOperator + ?Sized>(
    op: &A,
    x: &[f64],
    ncols: usize,
) -> Result<(), LinalgError> {
    if ncols == 0 || x.len() != op.cols() * ncols {
        return Err(LinalgError::OperandShape {
            len: x.len(),
            rows: op.cols(),
            ncols,
        });
    }
    Ok(())
}

/// That `op` is square, for `what` (an algorithm's name in the error).
pub(crate) fn check_square<A: LinearOperator + ?Sized>(
    op: &A,
    what: &'static str,
) -> Result<usize, LinalgError> {
    if op.rows() != op.cols() {
        return Err(LinalgError::NotSquare {
            what,
            rows: op.rows(),
            cols: op.cols(),
        });
    }
    Ok(op.rows())
}

/// `A + shift I` (square `A`): the regularised system `(K + lambda I) x = b` of kernel ridge
/// regression and Gaussian processes.
pub struct Shifted<A> {
    pub op: A,
    pub shift: f64,
}

impl<A: LinearOperator> Shifted<A> {
    pub fn new(op: A, shift: f64) -> Result<Shifted<A>, LinalgError> {
        check_square(&op, "a shift")?;
        Ok(Shifted { op, shift })
    }
}

impl<A: LinearOperator> LinearOperator for Shifted<A> {
    fn rows(&self) -> usize {
        self.op.rows()
    }
    fn cols(&self) -> usize {
        self.op.cols()
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        let mut y = self.op.apply(x, ncols)?;
        if self.shift != 0.0 {
            for (y, x) in y.iter_mut().zip(x) {
                *y += self.shift * x;
            }
        }
        Ok(y)
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        let mut d = self.op.diagonal()?;
        d.iter_mut().for_each(|d| *d += self.shift);
        Ok(d)
    }
}

/// An operator that counts its products and the time spent in them: how much of an algorithm
/// is kernel evaluation.
pub struct Timed<A> {
    pub op: A,
    applies: AtomicU64,
    columns: AtomicU64,
    nanos: AtomicU64,
}

impl<A> Timed<A> {
    pub fn new(op: A) -> Timed<A> {
        Timed {
            op,
            applies: AtomicU64::new(0),
            columns: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }

    /// Products computed (calls of `apply`).
    pub fn applies(&self) -> u64 {
        self.applies.load(Ordering::Relaxed)
    }

    /// Vectors multiplied (the sum of `ncols` over the calls).
    pub fn columns(&self) -> u64 {
        self.columns.load(Ordering::Relaxed)
    }

    /// Seconds spent in `apply`.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

impl<A: LinearOperator> LinearOperator for Timed<A> {
    fn rows(&self) -> usize {
        self.op.rows()
    }
    fn cols(&self) -> usize {
        self.op.cols()
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        let start = Instant::now();
        let y = self.op.apply(x, ncols);
        let nanos = start.elapsed().as_nanos() as u64;
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.applies.fetch_add(1, Ordering::Relaxed);
        self.columns.fetch_add(ncols as u64, Ordering::Relaxed);
        y
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        self.op.diagonal()
    }
}

/// `A^t V` for a square `A` (a diffusion operator: `t` steps of the random walk from each
/// column of `V`), one product per step, reported to `progress` after each.
pub fn apply_power<A: LinearOperator + ?Sized>(
    op: &A,
    v: &[f64],
    ncols: usize,
    t: usize,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<f64>, LinalgError> {
    check_square(op, "a power")?;
    check_operand(op, v, ncols)?;
    let mut current = v.to_vec();
    for step in 1..=t {
        current = op.apply(&current, ncols)?;
        progress(&Progress {
            task: "power",
            step,
            steps: t,
            residual: 0.0,
            converged: 0,
            wanted: 0,
        });
    }
    Ok(current)
}

/// Column `c` of a row-major `rows x ncols` block.
pub(crate) fn column(block: &[f64], ncols: usize, c: usize) -> impl Iterator<Item = f64> + '_ {
    block.iter().skip(c).step_by(ncols).copied()
}

/// `v > 0`, false for NaN: the test every "must be positive" check needs.
pub(crate) fn is_positive(v: f64) -> bool {
    v > 0.0
}
