//! The executor boundary: what runs a compiled reduction, whatever the machine. An
//! [`Executor`] takes host arrays in signature order, checks them against the kernel's
//! signature, and returns the reduction's output; the CPU's tiles (rayon threads over the tile
//! function, [`crate::tiles`]) and the CUDA runtime (`crate::cuda`, feature `cuda`) are the two
//! behind it, and callers that only evaluate (the CLI's `eval` and `bench`) hold a
//! `Box<dyn Executor>` without knowing which.

use crate::arrays::{ArgumentError, ArrayRef, HostArray};
use crate::module::Kernel;
use crate::tiles::{run_tiles, TileKernel};
use std::sync::Arc;

/// A reduction ready to run.
pub trait Executor: Send + Sync {
    /// Where it runs: `cpu`, `cuda`, ...
    fn backend(&self) -> &'static str;

    /// Evaluates the reduction on `arrays` (signature order, checked first); the output is
    /// `(rows, output_dim)` in the arrays' dtype.
    fn reduce(&self, arrays: &[ArrayRef]) -> Result<HostArray, ExecError>;
}

/// Why an executor did not run: its arguments, or its device (the device's own error, kept
/// whole: [`DeviceError::downcast_ref`] finds it). One shape whatever the features a build has,
/// so that code matching it builds with and without them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A device's error (the CUDA driver's, ...), as the executor that met it gave it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct DeviceError {
    /// Where it happened: the executor's [`Executor::backend`].
    pub backend: &'static str,
    error: Arc<dyn std::error::Error + Send + Sync>,
}

impl DeviceError {
    pub fn new(
        backend: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DeviceError {
            backend,
            error: Arc::new(error),
        }
    }

    /// The device's own error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref()
    }
}

/// Equal when they say the same thing on the same backend.
impl PartialEq for DeviceError {
    fn eq(&self, other: &DeviceError) -> bool {
        self.backend == other.backend && self.error.to_string() == other.error.to_string()
    }
}

/// The CPU: the tile function over rayon's threads.
impl Executor for TileKernel<'_> {
    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn reduce(&self, arrays: &[ArrayRef]) -> Result<HostArray, ExecError> {
        Ok(run_tiles(self, arrays, None)?)
    }
}

/// A module's kernel on the CPU (the tile function of the arrays' dtype).
impl Executor for Kernel {
    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn reduce(&self, arrays: &[ArrayRef]) -> Result<HostArray, ExecError> {
        Ok(self.call(arrays)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ArgSpec, Axis, Category, Signature};
    use crate::reduction::{Reduction, ReductionKind};
    use crate::DType;
    use std::ffi::c_void;

    /// sum_j x_i * y_j, written by hand as a tile function.
    unsafe extern "C" fn product_tile(
        args: *const *const c_void,
        stride: i64,
        row_start: i64,
        row_end: i64,
        inner_start: i64,
        inner_end: i64,
        acc: *mut f64,
    ) {
        // SAFETY: the tile contract (`crate::tiles::TileFn`): x is row-major (N x 1), y
        // transposed (1 x stride), acc holds the rows' accumulators.
        unsafe {
            let x = *args as *const f64;
            let y = *args.add(1) as *const f64;
            let _ = stride;
            for r in row_start..row_end {
                for j in inner_start..inner_end {
                    *acc.add((r - row_start) as usize) += *x.add(r as usize) * *y.add(j as usize);
                }
            }
        }
    }

    #[test]
    fn the_cpu_executor_checks_and_reduces() {
        let signature = Signature {
            name: "product".to_string(),
            args: vec![
                ArgSpec {
                    name: "x".to_string(),
                    category: Category::I,
                    dim: 1,
                },
                ArgSpec {
                    name: "y".to_string(),
                    category: Category::J,
                    dim: 1,
                },
            ],
            reduction: Reduction::new(ReductionKind::Sum, 1),
            axis: Axis::I,
        };
        // SAFETY: `product_tile` follows the tile contract for this signature, one lane wide.
        let kernel = unsafe { TileKernel::new(&signature, DType::F64, 1, product_tile) };
        let executor: &dyn Executor = &kernel;
        assert_eq!(executor.backend(), "cpu");
        let (x, y) = ([1.0, 2.0], [3.0, 4.0, 5.0]);
        let out = executor
            .reduce(&[ArrayRef::f64(&[2, 1], &x), ArrayRef::f64(&[3, 1], &y)])
            .unwrap();
        assert_eq!(out.to_f64(), vec![12.0, 24.0]);
        let err = executor
            .reduce(&[
                ArrayRef::f64(&[2, 1], &x),
                ArrayRef::f64(&[3, 2], &[0.0; 6]),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("`y`"), "{err}");
    }
}
