//! A kernel's symmetric pass, compiled: what lets a `Sum` kernel applied to one point cloud
//! against itself walk each unordered pair once ([`run_symmetric_tiles`]) wherever the kernel
//! goes (a module, a JIT-compiled kernel, a linear operator) without the compiler.
//!
//! The pass is the cross kernel `Concat(F, F swapped)` of `keopsc::symmetric`: its arguments are
//! the kernel's, then a copy in the other category of each variable that is not paired (a `Vi`
//! copy of a `Vj` weight `b`, reading `b`'s array); `sources` says which kernel argument each
//! one reads. It is only valid when every pair `(j, i)` of `same` holds the same data, which
//! [`SymmetricPass::holds`] checks on the arrays of each call.

use crate::abi::{Category, Signature};
use crate::arrays::{ArgumentError, ArrayRef, DType, DataRef, HostArray};
use crate::cross::{run_symmetric_tiles, CrossTileFn, CrossTileKernel};
use crate::reduction::ReductionKind;
use crate::tiles::TileKernel;
use std::any::Any;
use std::sync::Arc;

/// The compiled symmetric pass of one kernel: one cross tile function per dtype.
#[derive(Clone)]
pub struct SymmetricPass {
    /// The cross kernel's row part: a `Sum` of the kernel's output width over the cross
    /// kernel's arguments.
    signature: Signature,
    /// For each argument of `signature`, the kernel argument whose array it reads.
    sources: Vec<usize>,
    /// `(j, i)`: the kernel's j-variable `j` holds the data of its i-variable `i`.
    same: Vec<(usize, usize)>,
    entries: Vec<(DType, CrossTileFn, usize)>,
    _owner: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for SymmetricPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SymmetricPass({}, same {:?})", self.signature, self.same)
    }
}

impl SymmetricPass {
    /// `entries`: (dtype, cross tile function, SIMD lanes); `owner` keeps the code alive.
    ///
    /// # Safety
    /// Each tile function must implement the [`CrossTileFn`] contract for `signature` with as
    /// many columns as the signature's output dimension and the given lanes, compute the
    /// pair's row share `F(i, j)` and column share `F(j, i)` of a kernel whose arguments
    /// `sources` maps to, and stay valid as long as `owner` lives.
    pub unsafe fn from_parts(
        signature: Signature,
        sources: Vec<usize>,
        same: Vec<(usize, usize)>,
        entries: Vec<(DType, CrossTileFn, usize)>,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> SymmetricPass {
        SymmetricPass {
            signature,
            sources,
            same,
            entries,
            _owner: owner,
        }
    }

    /// The cross kernel's signature (its row part).
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// For each argument of the cross kernel, the kernel argument it reads.
    pub fn sources(&self) -> &[usize] {
        &self.sources
    }

    /// The `(j, i)` argument pairs that must hold the same data.
    pub fn same(&self) -> &[(usize, usize)] {
        &self.same
    }

    pub fn dtypes(&self) -> Vec<DType> {
        self.entries.iter().map(|e| e.0).collect()
    }

    /// Whether this pass fits `kernel`: a `Sum` whose output is as wide as the pass's, the
    /// pairs a j-variable and an i-variable of one dimension, and every argument of the pass
    /// reading a kernel argument of its dimension (in the same category, or in the other one
    /// for the swapped copies). What is wrong otherwise.
    pub fn check_against(&self, kernel: &Signature) -> Result<(), String> {
        let sig = &self.signature;
        if kernel.reduction.kind != ReductionKind::Sum || sig.reduction.kind != ReductionKind::Sum {
            return Err(format!(
                "a symmetric pass sums; kernel `{}` reduces by {}",
                kernel.name, kernel.reduction.kind
            ));
        }
        if sig.output_dim() != kernel.output_dim() || sig.axis != kernel.axis {
            return Err(format!(
                "the symmetric pass gives {} components over axis {:?}; kernel `{}` {} over axis {:?}",
                sig.output_dim(),
                sig.axis,
                kernel.name,
                kernel.output_dim(),
                kernel.axis
            ));
        }
        if self.same.is_empty() {
            return Err(
                "a symmetric pass needs at least one j-variable paired with an i-variable".into(),
            );
        }
        for &(j, i) in &self.same {
            let (Some(a), Some(b)) = (kernel.args.get(j), kernel.args.get(i)) else {
                return Err(format!(
                    "pair ({j}, {i}) names no argument of `{}`",
                    kernel.name
                ));
            };
            if a.category != Category::J || b.category != Category::I || a.dim != b.dim {
                return Err(format!(
                    "`{}` ({}({})) cannot hold the data of `{}` ({}({}))",
                    a.name, a.category, a.dim, b.name, b.category, b.dim
                ));
            }
        }
        if self.sources.len() != sig.args.len() {
            return Err(format!(
                "{} sources for the {} arguments of the symmetric pass",
                self.sources.len(),
                sig.args.len()
            ));
        }
        for (k, (&source, spec)) in self.sources.iter().zip(&sig.args).enumerate() {
            let Some(read) = kernel.args.get(source) else {
                return Err(format!(
                    "argument {k} of the symmetric pass reads no argument"
                ));
            };
            let fits = read.dim == spec.dim
                && (if k < kernel.args.len() {
                    source == k && read.category == spec.category
                } else {
                    read.category != Category::Param && read.category != spec.category
                });
            if !fits {
                return Err(format!(
                    "argument `{}` of the symmetric pass ({}({})) cannot read `{}` ({}({}))",
                    spec.name, spec.category, spec.dim, read.name, read.category, read.dim
                ));
            }
        }
        Ok(())
    }

    /// Whether the arrays of a call (in the kernel's argument order) hold the same data, bit
    /// for bit, at every pair: then the pass gives the kernel's result.
    pub fn holds(&self, inputs: &[ArrayRef]) -> bool {
        self.same
            .iter()
            .all(|&(j, i)| match (inputs.get(j), inputs.get(i)) {
                (Some(a), Some(b)) => {
                    a.shape.first() == b.shape.first() && same_data(a.data, b.data)
                }
                _ => false,
            })
    }

    /// Runs the kernel `full` (already checked on `inputs`) over the unordered pairs.
    pub(crate) fn run(
        &self,
        full: &TileKernel,
        inputs: &[ArrayRef],
    ) -> Result<HostArray, ArgumentError> {
        let dtype = full.dtype();
        let Some(&(_, tile, lanes)) = self.entries.iter().find(|e| e.0 == dtype) else {
            return Err(ArgumentError::CompiledDType {
                name: self
                    .signature
                    .args
                    .first()
                    .map(|a| a.name.clone())
                    .unwrap_or_default(),
                found: dtype,
                expected: self.entries.first().map_or(DType::F32, |e| e.0),
            });
        };
        let columns = self.signature.output_dim();
        // SAFETY: see `from_parts`.
        let cross = unsafe { CrossTileKernel::new(&self.signature, columns, dtype, lanes, tile) };
        let cross_inputs: Vec<ArrayRef> = self.sources.iter().map(|&k| inputs[k]).collect();
        run_symmetric_tiles(full, inputs, &cross, &cross_inputs)
    }
}

fn same_data(a: DataRef, b: DataRef) -> bool {
    match (a, b) {
        (DataRef::F32(a), DataRef::F32(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        }
        (DataRef::F64(a), DataRef::F64(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        }
        _ => false,
    }
}
