//! A module's manifest (`manifest.json`): what the module holds, as plain data read and
//! written with serde (lang-spec/modules.md): the format and compiler versions, the target,
//! each kernel's signature, compiled entries, stored gradients, symmetric pass and GPU code.
//! Reading it checks nothing beyond its own shape; `module` checks it against the library.

use crate::abi::{ArgSpec, Axis, Category, Signature};
use crate::arrays::DType;
use crate::reduction::{Reduction, ReductionKind};
use serde::{Deserialize, Serialize};

/// Version of the module layout and of the tile ABI. A module of another format is refused.
pub const MODULE_FORMAT: u32 = 1;

/// The version of keops-rs (the compiler and this runtime are released together).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const MANIFEST_FILE: &str = "manifest.json";
/// The shared library's file name: `kernels-<checksum>.so`.
pub fn library_file(library_hash: &str) -> String {
    format!("kernels-{library_hash}.so")
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MODULE_FORMAT`] of the compiler that wrote it.
    pub format: u32,
    /// keops-rs version of the compiler that wrote it.
    pub compiler_version: String,
    pub llvm_version: String,
    /// FNV-1a 64 of the `.kf` source, hex.
    pub source_hash: String,
    pub target: ModuleTarget,
    /// The shared library's file name, and its FNV-1a 64 checksum, hex.
    pub library: String,
    pub library_hash: String,
    pub kernels: Vec<ManifestKernel>,
    /// The kernels of the stored gradients (`keopsc build --grad`), which the gradients of
    /// [`ManifestKernel::gradients`] name; not callable by name. Absent without `--grad`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backward_kernels: Vec<ManifestKernel>,
    /// FNV-1a 64 of this manifest's JSON with this field empty, hex ([`Manifest::checksum`]):
    /// the library's checksum does not cover what the manifest says about it (signatures,
    /// symbols, lanes), and a damaged description would make safe calls read or write out of
    /// bounds.
    #[serde(default)]
    pub manifest_hash: String,
}

impl Manifest {
    /// The checksum [`Manifest::manifest_hash`] must hold: of the manifest's compact JSON
    /// (fields in declaration order) with `manifest_hash` empty.
    pub fn checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.manifest_hash.clear();
        let text = serde_json::to_string(&unsealed).unwrap_or_default();
        format!("{:016x}", fnv1a64(text.as_bytes()))
    }
}

/// What the native code was compiled for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleTarget {
    pub triple: String,
    /// LLVM's CPU name (`x86-64-v3`, ...).
    pub cpu: String,
    /// CPU features the code needs (x86 names as `is_x86_feature_detected!` spells them).
    pub required_features: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestKernel {
    pub name: String,
    pub args: Vec<ManifestArg>,
    /// `Sum`, `ArgKMin`, ... (KeOps names without `_Reduction`)
    pub reduction: String,
    pub k: usize,
    /// Dimensions of the reduced formula `F` and of the weight `V` (0 without one).
    pub formula_dim: usize,
    pub weight_dim: usize,
    /// 0: one output row per i; 1: one per j.
    pub axis: usize,
    pub output_dim: usize,
    pub entries: Vec<ManifestEntry>,
    /// The stored backward computations (`keopsc build --grad`): one per input, and one for
    /// every input at once. Absent without `--grad`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gradients: Vec<ManifestGradient>,
    /// The kernel's pass over unordered pairs (`keopsc build --same J=I`). Absent without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<ManifestSymmetric>,
    /// Its GPU code, one PTX file per dtype (`keopsc build --gpu`). Absent without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu: Vec<ManifestGpuEntry>,
}

/// One PTX file of a kernel: its 1-D kernel or its block-sparse one for `dtype`
/// (`keops_runtime::gpu`'s calling conventions; the entry point says which), the launch shape
/// it was compiled for, its architecture and the file's FNV-1a 64 checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestGpuEntry {
    pub dtype: String,
    pub file: String,
    pub symbol: String,
    pub block: u32,
    pub shared_bytes: u32,
    pub arch: String,
    pub hash: String,
}

/// A stored symmetric pass ([`SymmetricPass`]): the cross kernel's arguments (the kernel's,
/// then the swapped copies), the kernel argument each reads, the `(j, i)` pairs of arguments
/// that must hold the same data, and one cross tile function per dtype.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSymmetric {
    pub args: Vec<ManifestArg>,
    pub sources: Vec<usize>,
    pub same: Vec<[usize; 2]>,
    pub entries: Vec<ManifestEntry>,
}

/// One stored backward computation of a kernel: `d/dv sum(G * out)` for each input `v` of
/// `wrt`, by the names of its kernels (in [`Manifest::backward_kernels`]). The plan is the
/// compiler's (`keopsc::vjp::plan_many`); lang-spec/gradients.md says what each part does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestGradient {
    /// The inputs differentiated, in the order of the results.
    pub wrt: Vec<String>,
    /// What the dense passes read from the forward: `none`, `output` (the forward output,
    /// computed by the kernel itself) or `softmax` (`(out, L)` from `saved_kernel`).
    pub saved: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_kernel: Option<String>,
    pub dense: Vec<ManifestPass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<ManifestSelected>,
}

/// A dense pass: its kernel, and the inputs whose gradients its output columns concatenate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPass {
    pub kernel: String,
    pub outputs: Vec<String>,
}

/// The selected-entries part: the kernel finding the entries, the per-entry kernel, `K`, the
/// dimension `n` of the reduced values, the cotangent of each entry (`values` or
/// `shifted-max`) and the inputs whose gradients the per-entry kernel's columns concatenate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSelected {
    pub indices: String,
    pub kernel: String,
    pub k: usize,
    pub n: usize,
    pub cotangent: String,
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestArg {
    pub name: String,
    /// `Vi`, `Vj` or `Pm`.
    pub category: String,
    pub dim: usize,
}

/// One compiled tile function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// `float32` or `float64`
    pub dtype: String,
    pub symbol: String,
    pub lanes: usize,
}

impl ManifestKernel {
    /// The manifest entry of a signature (without its compiled entries).
    pub fn describe(sig: &Signature) -> ManifestKernel {
        ManifestKernel {
            name: sig.name.clone(),
            args: sig
                .args
                .iter()
                .map(|a| ManifestArg {
                    name: a.name.clone(),
                    category: a.category.keops_name().to_string(),
                    dim: a.dim,
                })
                .collect(),
            reduction: sig.reduction.kind.name().to_string(),
            k: sig.reduction.k,
            formula_dim: sig.reduction.fdim,
            weight_dim: sig.reduction.wdim,
            axis: sig.axis.index(),
            output_dim: sig.output_dim(),
            entries: Vec::new(),
            gradients: Vec::new(),
            symmetric: None,
            gpu: Vec::new(),
        }
    }

    /// The signature it describes, or what is wrong with it.
    pub fn signature(&self) -> Result<Signature, String> {
        let kind = ReductionKind::ALL
            .into_iter()
            .find(|k| k.name() == self.reduction)
            .ok_or_else(|| format!("unknown reduction `{}`", self.reduction))?;
        let args = parse_args(&self.args)?;
        let axis = Axis::from_index(self.axis as i64).ok_or("axis must be 0 or 1")?;
        let sig = Signature {
            name: self.name.clone(),
            args,
            reduction: Reduction {
                kind,
                k: self.k.max(1),
                fdim: self.formula_dim,
                wdim: self.weight_dim,
            },
            axis,
        };
        if sig.output_dim() != self.output_dim {
            return Err(format!(
                "output dimension {} does not follow from the reduction ({})",
                self.output_dim,
                sig.output_dim()
            ));
        }
        Ok(sig)
    }
}

impl ManifestSymmetric {
    /// The stored pass's signature (the row part of its cross kernel) for the kernel `of`.
    pub fn signature(&self, of: &Signature) -> Result<Signature, String> {
        Ok(Signature {
            name: format!("{}_symmetric", of.name),
            args: parse_args(&self.args)?,
            ..of.clone()
        })
    }
}

fn parse_args(args: &[ManifestArg]) -> Result<Vec<ArgSpec>, String> {
    args.iter()
        .map(|a| {
            let category = match a.category.as_str() {
                "Vi" => Category::I,
                "Vj" => Category::J,
                "Pm" => Category::Param,
                other => return Err(format!("unknown category `{other}`")),
            };
            Ok(ArgSpec {
                name: a.name.clone(),
                category,
                dim: a.dim,
            })
        })
        .collect()
}

/// FNV-1a, 64 bits: a checksum against damaged files and a cache key, not a defence against
/// tampering.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
    }
}
