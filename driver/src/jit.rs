//! Kernels compiled at run time, as the runtime's [`Kernel`] (the type a module loaded from
//! disk gives): [`Jit`], one type with its options (dtypes, gradients, a cloud against itself),
//! backed by the process-wide [`JitCache`]: a kernel asked for again, by this `Jit` or any
//! other, in this thread or another, is not compiled again, and concurrent requests for one
//! kernel compile it once. Nothing runs but LLVM in this process (no linker, no `cc`).
//!
//! ```
//! use keops_driver::jit::Jit;
//! use keops_runtime::{ArrayRef, DType};
//!
//! let source = "kernel gauss {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n \
//!               Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)\n}\n";
//! let kernel = Jit::new().dtypes(&[DType::F64]).compile(source, None)?;
//! let (x, y, b) = (vec![0.0; 2 * 3], vec![0.5; 4 * 3], vec![1.0; 4]);
//! let out = kernel.call(&[
//!     ArrayRef::f64(&[2, 3], &x),
//!     ArrayRef::f64(&[4, 3], &y),
//!     ArrayRef::f64(&[4, 1], &b),
//! ])?;
//! assert_eq!(out.shape, vec![2, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::artifact::{gradients::collect_kernels, pairs_of};
use crate::check::CheckedKernel;
use crate::codegen::CodegenError;
use crate::diagnostic::render_all;
use crate::driver::kernels::{runtime_kernel, symmetric_pass};
use crate::driver::{pipeline, EvalError};
use crate::jit_cache::JitCache;
use crate::source::SourceFile;
use crate::syntax::build::BuiltKernel;
use crate::vjp::{VjpError, VjpRunError};
use keops_runtime::{DType, Kernel, SymmetricPass};

/// Why [`Jit`] made no kernel. Fields are data; the messages suit an API caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JitError {
    /// The source does not compile: its diagnostics, rendered (plain text).
    #[error("{rendered}")]
    Source { rendered: String },
    #[error(
        "no kernel `{name}` in the source (it has {})",
        keops_runtime::quoted_names(available)
    )]
    UnknownKernel {
        name: String,
        available: Vec<String>,
    },
    #[error(
        "the source holds several kernels ({}): name the one to compile",
        keops_runtime::quoted_names(available)
    )]
    AmbiguousKernel { available: Vec<String> },
    /// A `same` pair that is not a j-variable and an i-variable of one dimension of the kernel.
    #[error("kernel `{kernel}`: `{j}` cannot hold the data of `{i}` (same: a j-variable and an i-variable of one dimension)")]
    Same {
        kernel: String,
        j: String,
        i: String,
    },
    #[error(transparent)]
    Compile(#[from] EvalError),
    /// The backward kernels of the gradients asked for.
    #[error(transparent)]
    Gradients(#[from] VjpRunError),
}

/// Compiles `.kf` kernels (or checked ones) into the runtime's [`Kernel`].
#[derive(Clone)]
pub struct Jit<'c> {
    cache: &'c JitCache,
    dtypes: Vec<DType>,
    gradients: bool,
    same: Vec<(String, String)>,
}

impl Default for Jit<'static> {
    fn default() -> Self {
        Jit::new()
    }
}

impl Jit<'static> {
    /// On the process-wide cache, for f32 and f64, without gradients.
    pub fn new() -> Jit<'static> {
        Jit::with_cache(JitCache::global())
    }
}

impl<'c> Jit<'c> {
    /// On `cache` (a table of one's own: its own capacity, its own counts).
    pub fn with_cache(cache: &'c JitCache) -> Jit<'c> {
        Jit {
            cache,
            dtypes: vec![DType::F32, DType::F64],
            gradients: false,
            same: Vec::new(),
        }
    }

    /// The dtypes the kernel runs in (each compiled; at least one).
    pub fn dtypes(mut self, dtypes: &[DType]) -> Self {
        if !dtypes.is_empty() {
            self.dtypes = dtypes.to_vec();
        }
        self
    }

    /// With the kernel's gradients (`Kernel::vjp`): the backward kernels of each input and of
    /// all inputs at once, as `keopsc build --grad` stores them. A reduction that returns
    /// indices only has none (its `vjp` says so).
    pub fn gradients(mut self, gradients: bool) -> Self {
        self.gradients = gradients;
        self
    }

    /// The j-variable `j` will hold the data of the i-variable `i` (a cloud against itself,
    /// `keopsc build --same j=i`): the kernel carries a pass over each unordered pair once
    /// (`Kernel::call_symmetric`, and the linear operators built on it) when it is a `Sum`
    /// whose halves share enough for it to pay; otherwise it is compiled without one.
    pub fn same(mut self, j: &str, i: &str) -> Self {
        self.same.push((j.to_string(), i.to_string()));
        self
    }

    /// The kernel `name` of the `.kf` text `source` (which may be left out when the source
    /// holds one kernel).
    pub fn compile(&self, source: &str, name: Option<&str>) -> Result<Kernel, JitError> {
        let compiled = pipeline::compile(SourceFile::new("<source>", source)).map_err(
            |(file, diagnostics)| JitError::Source {
                rendered: render_all(&diagnostics, &file, false),
            },
        )?;
        let available: Vec<String> = compiled.kernels.iter().map(|k| k.name.clone()).collect();
        let kernel = match name {
            Some(name) => compiled
                .kernel(name)
                .ok_or_else(|| JitError::UnknownKernel {
                    name: name.to_string(),
                    available,
                })?,
            None if compiled.kernels.len() == 1 => &compiled.kernels[0],
            None => return Err(JitError::AmbiguousKernel { available }),
        };
        self.compile_checked(kernel)
    }

    /// A kernel built in Rust ([`KernelBuilder`](crate::syntax::build::KernelBuilder)):
    /// checked as its text would be, then compiled.
    pub fn compile_built(&self, built: &BuiltKernel) -> Result<Kernel, JitError> {
        let compiled = pipeline::compile_tree(built.source.clone(), built.file.clone()).map_err(
            |(file, diagnostics)| JitError::Source {
                rendered: render_all(&diagnostics, &file, false),
            },
        )?;
        let kernel = compiled.kernels.first().ok_or_else(|| {
            EvalError::Codegen(CodegenError::Internal {
                stage: "the front end",
                message: "a built kernel checked into no kernel and no diagnostic".into(),
            })
        })?;
        self.compile_checked(kernel)
    }

    /// A kernel already through the front end (`driver::compile`, `driver::compile_tree`).
    pub fn compile_checked(&self, kernel: &CheckedKernel) -> Result<Kernel, JitError> {
        let mut compiled = self.plain(kernel)?;
        if !self.same.is_empty() {
            if let Some(pass) = self.symmetric(kernel)? {
                compiled = compiled.with_symmetric(pass).map_err(|message| {
                    EvalError::Codegen(CodegenError::Internal {
                        stage: "symmetric pass",
                        message,
                    })
                })?;
            }
        }
        if self.gradients {
            compiled = self.with_gradients(kernel, compiled)?;
        }
        Ok(compiled)
    }

    /// The kernel's tile functions for each dtype, from the cache.
    fn plain(&self, kernel: &CheckedKernel) -> Result<Kernel, EvalError> {
        let compiled = self
            .dtypes
            .iter()
            .map(|&dtype| Ok(self.cache.get(kernel, dtype)?.0))
            .collect::<Result<Vec<_>, EvalError>>()?;
        Ok(runtime_kernel(&kernel.signature, compiled))
    }

    /// The pass over unordered pairs of the `same` pairs, when it pays (`None` otherwise).
    fn symmetric(&self, kernel: &CheckedKernel) -> Result<Option<SymmetricPass>, JitError> {
        let same = pairs_of(kernel, &self.same);
        if let Some((j, i)) = self
            .same
            .iter()
            .find(|(j, i)| !same.contains(&position_pair(kernel, j, i)))
        {
            return Err(JitError::Same {
                kernel: kernel.name.clone(),
                j: j.clone(),
                i: i.clone(),
            });
        }
        let Ok(plan) = crate::symmetric::plan_if_it_pays(kernel, &same) else {
            return Ok(None);
        };
        let compiled = self
            .dtypes
            .iter()
            .map(|&dtype| Ok(self.cache.get_cross(&plan.cross, plan.columns, dtype)?.0))
            .collect::<Result<Vec<_>, EvalError>>()?;
        Ok(Some(symmetric_pass(plan, &same, compiled)))
    }

    /// `forward` with the gradients of `kernel`, their backward kernels from the cache.
    fn with_gradients(&self, kernel: &CheckedKernel, forward: Kernel) -> Result<Kernel, JitError> {
        let stored = collect_kernels(std::slice::from_ref(kernel)).map_err(VjpRunError::from)?;
        let backward: Vec<Kernel> = stored
            .kernels
            .iter()
            .map(|k| self.plain(k))
            .collect::<Result<_, _>>()?;
        let described = stored.gradients.into_iter().next().unwrap_or_default();
        forward
            .with_gradients(&described, &backward)
            .map_err(|message| {
                VjpRunError::from(VjpError::Internal {
                    kernel: kernel.name.clone(),
                    message,
                })
                .into()
            })
    }
}

/// The positions of the arguments `j` and `i` of `kernel` (`usize::MAX` for a name it lacks).
fn position_pair(kernel: &CheckedKernel, j: &str, i: &str) -> (usize, usize) {
    let args = &kernel.signature.args;
    let position = |name: &str| {
        args.iter()
            .position(|a| a.name == name)
            .unwrap_or(usize::MAX)
    };
    (position(j), position(i))
}
