//! Gradients stored in a module (`keopsc build --grad`): the backward computations of a
//! kernel, read from the manifest ([`ManifestGradient`]) into plans over the module's own
//! kernels, and run through [`crate::backward`] (`Kernel::vjp` calls [`vjp`]). Everything
//! here runs without the compiler or LLVM. It is written over [`GradientKernel`], what it needs
//! of a kernel, so that `module`'s `Kernel`, which holds its gradients, is the one to import.

use crate::abi::Signature;
use crate::arrays::{ArgumentError, ArrayRef, HostArray};
use crate::backward::{self, BackwardError, Passes, Saved, SelectedCotangent, SelectedPass};
use crate::manifest::{ManifestGradient, ManifestSelected};

/// What stored gradients need of the kernels they run (the runtime's `Kernel`).
pub(crate) trait GradientKernel: Clone {
    fn signature(&self) -> &Signature;
    fn call(&self, inputs: &[ArrayRef]) -> Result<HostArray, ArgumentError>;
    /// The same code without the gradients stored with it.
    fn without_gradients(&self) -> Self;
}

/// A backward computation of one kernel, over kernels of its module.
#[derive(Clone)]
pub(crate) struct StoredGradient<K> {
    /// The inputs differentiated, by position.
    wrt: Vec<usize>,
    saved: Saved<K>,
    dense: Vec<(K, Vec<usize>)>,
    selected: Option<StoredSelected<K>>,
}

#[derive(Clone)]
struct StoredSelected<K> {
    indices: K,
    kernel: K,
    k: usize,
    n: usize,
    cotangent: SelectedCotangent,
    outputs: Vec<usize>,
}

/// Why [`Kernel::vjp`] gives no gradient.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GradientError {
    #[error("kernel `{kernel}` has no stored gradients: build its module with `keopsc build --grad`, or compile it with gradients (`keops_driver::jit::Jit::gradients`)")]
    NotBuilt { kernel: String },
    /// The reduction returns indices only (ArgMin, ArgMax, ArgKMin): piecewise constant, with
    /// no gradient however the kernel was built.
    #[error("kernel `{kernel}` ends with {kind}, which returns indices only: indices have no gradient (the value-and-index form, e.g. Min_ArgMin, differentiates the values)")]
    NotDifferentiable {
        kernel: String,
        kind: crate::reduction::ReductionKind,
    },
    #[error("kernel `{kernel}` has no input `{name}` to differentiate with respect to; its inputs are {inputs}")]
    UnknownInput {
        kernel: String,
        name: String,
        inputs: String,
    },
    #[error("kernel `{kernel}`: no input to differentiate with respect to")]
    NoInput { kernel: String },
    #[error("kernel `{kernel}`: `{name}` is asked for twice")]
    DuplicateInput { kernel: String, name: String },
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error("the cotangent {0}")]
    Cotangent(String),
    #[error("the saved forward {0}")]
    Saved(String),
}

/// The sets of inputs `gradients` differentiate, by `forward`'s names.
pub(crate) fn input_sets<'k, K: GradientKernel>(
    forward: &'k K,
    gradients: &[StoredGradient<K>],
) -> Vec<Vec<&'k str>> {
    gradients
        .iter()
        .map(|g| {
            g.wrt
                .iter()
                .map(|&w| forward.signature().args[w].name.as_str())
                .collect()
        })
        .collect()
}

/// The gradients of `sum(G * out)` with respect to the inputs `wrt` of `forward`, from the
/// first of `gradients` that computes them all (see `Kernel::vjp`).
pub(crate) fn vjp<K: GradientKernel>(
    forward: &K,
    gradients: &[StoredGradient<K>],
    wrt: &[&str],
    inputs: &[&HostArray],
    cotangent: &HostArray,
    saved: Option<&HostArray>,
) -> Result<Vec<HostArray>, GradientError> {
    let sig = forward.signature();
    let kernel = || sig.name.clone();
    if wrt.is_empty() {
        return Err(GradientError::NoInput { kernel: kernel() });
    }
    let mut positions = Vec::with_capacity(wrt.len());
    for &name in wrt {
        let at = sig
            .args
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| {
                let names: Vec<String> = sig.args.iter().map(|a| format!("`{}`", a.name)).collect();
                GradientError::UnknownInput {
                    kernel: kernel(),
                    name: name.to_string(),
                    inputs: names.join(", "),
                }
            })?;
        if positions.contains(&at) {
            return Err(GradientError::DuplicateInput {
                kernel: kernel(),
                name: name.to_string(),
            });
        }
        positions.push(at);
    }
    let stored = gradients
        .iter()
        .find(|g| g.wrt == positions)
        .or_else(|| {
            gradients
                .iter()
                .find(|g| positions.iter().all(|w| g.wrt.contains(w)))
        })
        .ok_or_else(|| match sig.reduction.kind.backward() {
            crate::reduction::BackwardShape::None => GradientError::NotDifferentiable {
                kernel: kernel(),
                kind: sig.reduction.kind,
            },
            _ => GradientError::NotBuilt { kernel: kernel() },
        })?;
    let passes = Passes {
        forward: sig,
        wrt: &stored.wrt,
        saved: stored.saved.as_ref(),
        dense: stored
            .dense
            .iter()
            .map(|(k, outputs)| (k, outputs.as_slice()))
            .collect(),
        selected: stored.selected.as_ref().map(|s| SelectedPass {
            indices: &s.indices,
            kernel: &s.kernel,
            k: s.k,
            n: s.n,
            cotangent: s.cotangent,
            outputs: &s.outputs,
        }),
    };
    let mut runner = |k: &K, arrays: &[&HostArray]| {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        k.call(&views)
    };
    let grads = backward::run_passes(&passes, inputs, cotangent, saved, &mut runner).map_err(
        |e| match e {
            BackwardError::Argument(e) | BackwardError::Pass(e) => GradientError::Argument(e),
            BackwardError::Cotangent(text) => GradientError::Cotangent(text),
            BackwardError::Saved(text) => GradientError::Saved(text),
        },
    )?;
    let mut grads: Vec<Option<HostArray>> = grads.into_iter().map(Some).collect();
    Ok(positions
        .iter()
        .map(|w| {
            let slot = stored
                .wrt
                .iter()
                .position(|x| x == w)
                .expect("chosen above");
            grads[slot].take().expect("each input once")
        })
        .collect())
}

/// The gradients a manifest describes for `forward`, over the module's `backward` kernels,
/// checked so that running them cannot index out of bounds: every name resolves, every
/// kernel's output width is what the combination reads, every kernel takes the forward's
/// arguments first.
pub(crate) fn stored_gradients<K: GradientKernel>(
    forward: &K,
    described: &[ManifestGradient],
    backward: &[K],
) -> Result<Vec<StoredGradient<K>>, String> {
    let check = StoredCheck {
        sig: forward.signature(),
        backward,
        // A plain copy of the forward, for the saved output: it must not hold its own gradients.
        plain: forward.without_gradients(),
    };
    described.iter().map(|g| check.gradient(g)).collect()
}

/// What [`stored_gradients`] checks a manifest's gradients against.
struct StoredCheck<'m, K> {
    /// The forward's signature.
    sig: &'m Signature,
    backward: &'m [K],
    plain: K,
}

impl<K: GradientKernel> StoredCheck<'_, K> {
    fn gradient(&self, g: &ManifestGradient) -> Result<StoredGradient<K>, String> {
        let wrt = self.positions(&g.wrt)?;
        if wrt.is_empty() || (1..wrt.len()).any(|k| wrt[..k].contains(&wrt[k])) {
            return Err("a gradient's inputs are empty or repeated".into());
        }
        let saved = self.saved(g)?;
        let saved_columns = usize::from(saved.dim(self.sig).is_some());
        let mut dense = Vec::new();
        for pass in &g.dense {
            let k = self.find(&pass.kernel)?;
            let outputs = self.positions(&pass.outputs)?;
            if outputs.iter().any(|w| !wrt.contains(w)) {
                return Err(format!(
                    "pass `{}` computes an input not asked",
                    pass.kernel
                ));
            }
            self.takes_forward_args(&k, 1 + saved_columns)?;
            self.expect_width(&k, self.width(&outputs))?;
            dense.push((k, outputs));
        }
        let selected = match &g.selected {
            None => None,
            Some(s) => Some(self.selected(s, &wrt, saved.dim(self.sig).is_some())?),
        };
        Ok(StoredGradient {
            wrt,
            saved,
            dense,
            selected,
        })
    }

    fn saved(&self, g: &ManifestGradient) -> Result<Saved<K>, String> {
        Ok(match (g.saved.as_str(), &g.saved_kernel) {
            ("none", None) => Saved::None,
            ("output", None) => Saved::Output(self.plain.clone()),
            ("softmax", Some(name)) => {
                let k = self.find(name)?;
                self.takes_forward_args(&k, 0)?;
                self.expect_width(&k, self.sig.reduction.wdim + 2)?;
                Saved::SoftMax(k)
            }
            (other, _) => return Err(format!("a gradient's saved forward `{other}`")),
        })
    }

    /// The selected-entries part, of a gradient of the inputs at `wrt` that has saved rows
    /// when `has_saved`.
    fn selected(
        &self,
        s: &ManifestSelected,
        wrt: &[usize],
        has_saved: bool,
    ) -> Result<StoredSelected<K>, String> {
        let cotangent = SelectedCotangent::from_name(&s.cotangent)
            .ok_or_else(|| format!("a selected cotangent `{}`", s.cotangent))?;
        if cotangent == SelectedCotangent::ShiftedMax && !has_saved {
            return Err("a shifted maximum without saved rows".into());
        }
        if s.k == 0 || s.n == 0 || s.k * s.n > self.sig.output_dim() {
            return Err(format!("selected entries K = {}, n = {}", s.k, s.n));
        }
        let indices = self.find(&s.indices)?;
        self.takes_forward_args(&indices, 0)?;
        self.expect_width(&indices, 2 * s.k * s.n)?;
        let kernel = self.find(&s.kernel)?;
        let outputs = self.positions(&s.outputs)?;
        if outputs.iter().any(|w| !wrt.contains(w)) {
            return Err(format!("kernel `{}` computes an input not asked", s.kernel));
        }
        if kernel.signature().args.len() != self.sig.args.len() + 1 {
            return Err(format!(
                "per-entry kernel `{}` does not take the forward's arguments",
                s.kernel
            ));
        }
        self.expect_width(&kernel, self.width(&outputs))?;
        Ok(StoredSelected {
            indices,
            kernel,
            k: s.k,
            n: s.n,
            cotangent,
            outputs,
        })
    }

    fn find(&self, name: &str) -> Result<K, String> {
        self.backward
            .iter()
            .find(|k| k.signature().name == name)
            .cloned()
            .ok_or_else(|| format!("its gradient names a kernel `{name}` the module lacks"))
    }

    /// The positions of the forward's inputs `names`.
    fn positions(&self, names: &[String]) -> Result<Vec<usize>, String> {
        names
            .iter()
            .map(|n| {
                self.sig
                    .args
                    .iter()
                    .position(|a| &a.name == n)
                    .ok_or_else(|| format!("its gradient names an input `{n}` it lacks"))
            })
            .collect()
    }

    /// The columns of the gradients of the inputs at `outputs`.
    fn width(&self, outputs: &[usize]) -> usize {
        outputs.iter().map(|&w| self.sig.args[w].dim).sum()
    }

    /// `k` takes the forward's arguments, then `extra` more.
    fn takes_forward_args(&self, k: &K, extra: usize) -> Result<(), String> {
        let args = &k.signature().args;
        let prefix_ok = args.len() == self.sig.args.len() + extra
            && args
                .iter()
                .zip(&self.sig.args)
                .all(|(a, b)| a.dim == b.dim && a.category == b.category);
        if prefix_ok {
            Ok(())
        } else {
            Err(format!(
                "backward kernel `{}` does not take the forward's arguments",
                k.signature().name
            ))
        }
    }

    fn expect_width(&self, k: &K, expected: usize) -> Result<(), String> {
        if k.signature().output_dim() == expected {
            Ok(())
        } else {
            Err(format!(
                "backward kernel `{}` gives {} columns, the gradient reads {expected}",
                k.signature().name,
                k.signature().output_dim()
            ))
        }
    }
}
