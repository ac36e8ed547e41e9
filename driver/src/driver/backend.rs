//! Where a kernel runs ([`Backend`]) and why an evaluation or a compilation failed
//! ([`EvalError`]).

use crate::batch::BatchError;
use crate::codegen::CodegenError;
use crate::interp::InterpError;
use keops_runtime::{ArgumentError, DeviceError, RangesRunError};
use std::fmt;

/// Where a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The f64 reference interpreter.
    Interp,
    /// Compiled, vectorised CPU code.
    Cpu,
    /// Compiled PTX on an NVIDIA GPU.
    Cuda,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "interp" => Some(Backend::Interp),
            "cpu" => Some(Backend::Cpu),
            "cuda" => Some(Backend::Cuda),
            _ => None,
        }
    }

    /// The backends this build can run.
    pub fn available() -> Vec<Backend> {
        let mut backends = vec![Backend::Cpu, Backend::Interp];
        // Built with the CUDA runtime: whether a driver and a GPU are present is found when
        // the backend runs (an error that says so).
        if cfg!(feature = "cuda") {
            backends.push(Backend::Cuda);
        }
        backends
    }

    /// Fails when this build cannot run `self`: the error names those it can.
    pub fn ensure_available(self) -> Result<(), EvalError> {
        let available = Backend::available();
        if available.contains(&self) {
            return Ok(());
        }
        let names: Vec<String> = available.iter().map(ToString::to_string).collect();
        Err(EvalError::BackendUnavailable(self, names.join(", ")))
    }

    /// The fastest backend this build and machine can run.
    pub fn fastest() -> Backend {
        Backend::Cpu
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Interp => "interp",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error("the `{0}` backend is not available in this build (available: {1})")]
    BackendUnavailable(Backend, String),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    NotSymmetric(#[from] crate::symmetric::NotSymmetric),
    /// A block-sparse evaluation's ranges do not fit its arrays: the message says how.
    #[error("{0}")]
    Ranges(String),
    /// Batch axes that do not broadcast together (boxed: the error stays small).
    #[error(transparent)]
    Batch(Box<BatchError>),
    /// Options that do not go together (ranges with batch axes, a symmetric pass off the CPU).
    #[error("{0}")]
    NotSupported(String),
    /// The device's own error (the CUDA driver's, ...): [`EvalError::device_error`] finds it.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl EvalError {
    /// The device's own error, if this is one and it is an `E` (say `keops_runtime::cuda::CudaError`).
    pub fn device_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            EvalError::Device(d) => d.downcast_ref(),
            _ => None,
        }
    }
}

/// A CUDA error met while compiling or loading (an argument error stays one).
#[cfg(feature = "cuda")]
impl From<keops_runtime::cuda::CudaError> for EvalError {
    fn from(e: keops_runtime::cuda::CudaError) -> EvalError {
        keops_runtime::ExecError::from(e).into()
    }
}

/// No executor for `backend` in this build: the error names those there are.
pub(crate) fn unavailable<T>(backend: Backend) -> Result<T, EvalError> {
    let available: Vec<String> = Backend::available()
        .iter()
        .filter(|&&b| b != Backend::Interp)
        .map(|b| b.to_string())
        .collect();
    Err(EvalError::BackendUnavailable(backend, available.join(", ")))
}

impl From<keops_runtime::ExecError> for EvalError {
    fn from(e: keops_runtime::ExecError) -> EvalError {
        match e {
            keops_runtime::ExecError::Argument(a) => EvalError::Argument(a),
            keops_runtime::ExecError::Device(d) => EvalError::Device(d),
        }
    }
}

impl From<BatchError> for EvalError {
    fn from(e: BatchError) -> EvalError {
        match e {
            BatchError::Argument(a) => EvalError::Argument(a),
            other => EvalError::Batch(Box::new(other)),
        }
    }
}

impl From<RangesRunError> for EvalError {
    fn from(e: RangesRunError) -> EvalError {
        match e {
            RangesRunError::Argument(a) => EvalError::Argument(a),
            RangesRunError::Ranges(r) => EvalError::Ranges(r.to_string()),
        }
    }
}
