//! Compiled modules on disk, and the kernel type a program calls. A module is a directory:
//!
//! ```text
//! NAME.kmod/
//!   manifest.json   what the module holds (see [`Manifest`]; lang-spec/modules.md)
//!   kernels-<checksum>.so   the tile functions, native code for the manifest's target
//! ```
//!
//! Loading checks, before any code runs: the format and compiler versions, that this CPU has
//! every feature the code was compiled for, and the library's checksum. A module that fails a
//! check is refused with a [`LoadError`]; nothing in it is executed.

use crate::abi::Signature;
use crate::arrays::{ArgumentError, ArrayRef, DType, HostArray, OutputRef};
use crate::cross::CrossTileFn;
use crate::gpu::{GpuCode, GpuLaunch1D};
use crate::gradient::{self, stored_gradients, GradientError, GradientKernel, StoredGradient};
use crate::manifest::{
    fnv1a64, Manifest, ManifestEntry, ManifestGradient, ManifestKernel, ManifestSymmetric,
    MANIFEST_FILE, MODULE_FORMAT, VERSION,
};
use crate::symmetric::SymmetricPass;
use crate::tiles::{run_tiles, run_tiles_into, TileFn, TileKernel};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a module cannot be loaded. Nothing of a refused module has run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read module `{path}`: {message}")]
    Io { path: PathBuf, message: String },
    #[error("module `{path}` is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("module `{path}` was written by keops-rs {found} (module format {found_format}); this runtime is {expected} (format {expected_format}): rebuild it with `keopsc build`")]
    Version {
        path: PathBuf,
        found: String,
        found_format: u32,
        expected: String,
        expected_format: u32,
    },
    #[error("module `{path}` was compiled for {cpu}, which needs CPU features this machine lacks: {}; rebuild it with `keopsc build --target host` here", missing.join(", "))]
    CpuFeatures {
        path: PathBuf,
        cpu: String,
        missing: Vec<String>,
    },
    #[error("module `{path}` has no kernel `{name}` (it has {available})")]
    UnknownKernel {
        path: PathBuf,
        name: String,
        available: String,
    },
}

const V2: &[&str] = &[
    "sse2",
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "cmpxchg16b",
];
const V3: &[&str] = &[
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave",
];
const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];

/// The x86-64 psABI levels a module can be compiled for (LLVM's CPU names).
pub const LEVELS: [&str; 4] = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"];

/// The CPU features a level implies (as [`cpu_has`] names them), and the vector width code for
/// it uses.
pub fn level_features(level: &str) -> Option<(Vec<String>, u32)> {
    let (parts, bits): (&[&[&str]], u32) = match level {
        "x86-64" => (&[&["sse2"]], 128),
        "x86-64-v2" => (&[V2], 128),
        "x86-64-v3" => (&[V2, V3], 256),
        "x86-64-v4" => (&[V2, V3, V4], 512),
        _ => return None,
    };
    let features = parts.iter().flat_map(|p| p.iter().map(|f| f.to_string()));
    Some((features.collect(), bits))
}

/// Whether this CPU has an x86 feature, by the name a manifest uses.
pub fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($name:tt),*) => {
                match feature {
                    $($name => std::arch::is_x86_feature_detected!($name),)*
                    _ => false,
                }
            };
        }
        // Every name `level_features` uses, as literals (the macro needs them).
        detect!(
            "sse2",
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "cmpxchg16b",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "f16c",
            "fma",
            "lzcnt",
            "movbe",
            "xsave",
            "avx512f",
            "avx512bw",
            "avx512cd",
            "avx512dq",
            "avx512vl"
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// A kernel ready to call: its signature and one tile function per dtype. It keeps alive what
/// its code lives in (a loaded library, or JIT-compiled code). Cheap to clone; callable from
/// many threads at once.
#[derive(Clone)]
pub struct Kernel {
    signature: Signature,
    entries: Vec<(DType, TileFn, usize)>,
    _owner: Arc<dyn Any + Send + Sync>,
    /// The backward computations stored with it (a module built with `--grad`).
    pub(crate) gradients: Arc<Vec<StoredGradient<Kernel>>>,
    /// Its pass over unordered pairs, for one point cloud against itself (a module built
    /// with `--same`, or `keopsc::driver::jit_symmetric`).
    symmetric: Option<Arc<SymmetricPass>>,
    /// Its GPU code per dtype (a module built with `--gpu`).
    gpu: Arc<Vec<GpuCode>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({})", self.signature)
    }
}

impl Kernel {
    /// `entries`: (dtype, tile function, SIMD lanes). `owner` keeps the code alive.
    ///
    /// # Safety
    /// Each tile function must implement the [`TileFn`] contract for `signature` with the
    /// given lanes, and stay valid as long as `owner` lives.
    pub unsafe fn from_parts(
        signature: Signature,
        entries: Vec<(DType, TileFn, usize)>,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Kernel {
        Kernel {
            signature,
            entries,
            _owner: owner,
            gradients: Arc::new(Vec::new()),
            symmetric: None,
            gpu: Arc::new(Vec::new()),
        }
    }

    /// The same kernel carrying GPU code (what `keops_runtime::cuda::CudaKernel::from_kernel`
    /// loads); what is wrong when the code does not fit (a dtype twice, no block).
    pub fn with_gpu_code(&self, code: Vec<GpuCode>) -> Result<Kernel, String> {
        for (k, c) in code.iter().enumerate() {
            if c.launch.block == 0 || c.symbol.is_empty() {
                return Err(format!(
                    "GPU code for {}: no block size or entry point",
                    c.dtype
                ));
            }
            if ![crate::gpu::GPU_TILE_SYMBOL, crate::gpu::GPU_RANGES_SYMBOL].contains(&&*c.symbol) {
                return Err(format!(
                    "GPU code for {}: unknown entry point `{}` (`{}` or `{}`)",
                    c.dtype,
                    c.symbol,
                    crate::gpu::GPU_TILE_SYMBOL,
                    crate::gpu::GPU_RANGES_SYMBOL
                ));
            }
            if code[..k]
                .iter()
                .any(|o| o.dtype == c.dtype && o.symbol == c.symbol)
            {
                return Err(format!(
                    "GPU code for {} (`{}`) given twice",
                    c.dtype, c.symbol
                ));
            }
        }
        Ok(Kernel {
            gpu: Arc::new(code),
            ..self.clone()
        })
    }

    /// Its GPU code for `dtype` (the 1-D kernel), if it carries some.
    pub fn gpu_code(&self, dtype: DType) -> Option<&GpuCode> {
        self.gpu_entry(dtype, crate::gpu::GPU_TILE_SYMBOL)
    }

    /// Its block-sparse GPU kernel for `dtype` (KeOps's ranges), if it carries one.
    pub fn gpu_ranges_code(&self, dtype: DType) -> Option<&GpuCode> {
        self.gpu_entry(dtype, crate::gpu::GPU_RANGES_SYMBOL)
    }

    fn gpu_entry(&self, dtype: DType, symbol: &str) -> Option<&GpuCode> {
        self.gpu
            .iter()
            .find(|c| c.dtype == dtype && c.symbol == symbol)
    }

    /// The same kernel carrying `pass`, which [`Kernel::call_symmetric`] then runs when the
    /// inputs of a call pair up as it says; what is wrong when the pass does not fit.
    pub fn with_symmetric(&self, pass: SymmetricPass) -> Result<Kernel, String> {
        pass.check_against(&self.signature)?;
        Ok(Kernel {
            symmetric: Some(Arc::new(pass)),
            ..self.clone()
        })
    }

    /// Its pass over unordered pairs, if it carries one.
    pub fn symmetric(&self) -> Option<&SymmetricPass> {
        self.symmetric.as_deref()
    }

    /// [`Kernel::call`], walking each unordered pair once when the kernel carries a symmetric
    /// pass, the paired inputs hold the same data (bit for bit) and the pass was compiled
    /// for their dtype: about half the work for a Gaussian. Otherwise the full evaluation.
    /// The two agree up to summation order.
    pub fn call_symmetric(&self, inputs: &[ArrayRef]) -> Result<HostArray, ArgumentError> {
        let kernel = self.prepare(inputs)?;
        match &self.symmetric {
            Some(pass) if pass.holds(inputs) && pass.dtypes().contains(&kernel.dtype()) => {
                pass.run(&kernel, inputs)
            }
            _ => run_tiles(&kernel, inputs, None),
        }
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The same kernel with the gradients `described` (as a manifest describes them), over
    /// the `backward` kernels they name; what is wrong with them otherwise (a kernel they name
    /// is missing, or does not take the forward's arguments or give the columns read). A
    /// module's kernels get theirs at load; `keops_driver::jit::Jit::gradients` gives
    /// compiled ones theirs.
    pub fn with_gradients(
        &self,
        described: &[ManifestGradient],
        backward: &[Kernel],
    ) -> Result<Kernel, String> {
        let gradients = stored_gradients(self, described, backward)?;
        Ok(Kernel {
            gradients: Arc::new(gradients),
            ..self.clone()
        })
    }

    /// The sets of inputs whose gradients its module stores, by name: each input alone, then
    /// all of them at once. Empty for a module built without `--grad`.
    pub fn stored_gradients(&self) -> Vec<Vec<&str>> {
        gradient::input_sets(self, &self.gradients)
    }

    /// The gradients of `sum(G * out)` with respect to the inputs `wrt`, in that order, each
    /// in the shape of the array passed for it and the inputs' dtype, computed by the backward
    /// kernels its module stores (`keopsc build --grad`): the same plans, kernels and results
    /// as `keopsc::vjp::vjp_many`, without the compiler. `inputs` in argument order;
    /// `cotangent` shaped like the output; `saved`: the saved forward rows when already
    /// computed (the forward output for the LogSumExp family, `(out, L)` for
    /// SumSoftMaxWeight; see lang-spec/gradients.md), ignored by a reduction that reads none.
    ///
    /// One input runs its own plan (one dense pass, or the selected entries); several run the
    /// plan of every input at once (two dense passes at most) and keep those asked for.
    pub fn vjp(
        &self,
        wrt: &[&str],
        inputs: &[&HostArray],
        cotangent: &HostArray,
        saved: Option<&HostArray>,
    ) -> Result<Vec<HostArray>, GradientError> {
        gradient::vjp(self, &self.gradients, wrt, inputs, cotangent, saved)
    }

    pub fn name(&self) -> &str {
        &self.signature.name
    }

    /// The dtypes it was compiled for.
    pub fn dtypes(&self) -> Vec<DType> {
        self.entries.iter().map(|e| e.0).collect()
    }

    /// Runs on inputs in argument order. The output is `(N, Dout)` for axis 0, `(M, Dout)`
    /// for axis 1, in the inputs' dtype.
    pub fn call(&self, inputs: &[ArrayRef]) -> Result<HostArray, ArgumentError> {
        let kernel = self.prepare(inputs)?;
        run_tiles(&kernel, inputs, None)
    }

    /// Checks the inputs and picks the tile function of their dtype.
    fn prepare(&self, inputs: &[ArrayRef]) -> Result<TileKernel<'_>, ArgumentError> {
        let sig = &self.signature;
        if inputs.len() != sig.args.len() {
            return Err(crate::arrays::argument_count_error(sig, inputs.len()));
        }
        let size = crate::arrays::check_arguments(sig, inputs)?;
        let Some(&(dtype, tile, lanes)) = self.entries.iter().find(|e| e.0 == size.dtype) else {
            return Err(ArgumentError::CompiledDType {
                name: sig.args.first().map(|a| a.name.clone()).unwrap_or_default(),
                found: size.dtype,
                expected: self.entries.first().map_or(DType::F32, |e| e.0),
            });
        };
        // SAFETY: the entries were loaded (and checked) or compiled for this signature; see
        // `Kernel::from_parts`.
        Ok(unsafe { TileKernel::new(sig, dtype, lanes, tile) })
    }

    /// Runs on many problems at once (`problems[k]`: the inputs of problem `k` in argument
    /// order, one dtype for all), in one parallel region ([`crate::run_tiles_batched`]): the
    /// outputs in order. Batches of small problems run several times faster than a loop of
    /// [`Kernel::call`]s.
    pub fn call_batched(
        &self,
        problems: &[Vec<ArrayRef>],
    ) -> Result<Vec<HostArray>, ArgumentError> {
        let Some(first) = problems.first() else {
            return Ok(Vec::new());
        };
        let kernel = self.prepare(first)?;
        crate::tiles::run_tiles_batched(&kernel, problems)
    }

    /// Runs over the pairs `ranges` keeps (block-sparse, KeOps's `ranges`;
    /// [`crate::ranges`]): the full evaluation with every other pair left out.
    pub fn call_ranges(
        &self,
        inputs: &[ArrayRef],
        ranges: &crate::ranges::Ranges,
    ) -> Result<HostArray, crate::ranges::RangesRunError> {
        let kernel = self.prepare(inputs)?;
        crate::ranges::run_tiles_ranges(&kernel, inputs, ranges)
    }

    /// Runs on inputs given by name, in any order.
    pub fn call_named(&self, inputs: &[(&str, ArrayRef)]) -> Result<HostArray, ArgumentError> {
        let ordered = bind_named(&self.signature, inputs)?;
        self.call(&ordered)
    }

    /// Runs and writes the output into `out` (row-major, `rows x output_dim`, the inputs'
    /// dtype).
    pub fn call_into(&self, inputs: &[ArrayRef], out: OutputRef) -> Result<(), ArgumentError> {
        let kernel = self.prepare(inputs)?;
        run_tiles_into(&kernel, inputs, None, out)
    }
}

impl GradientKernel for Kernel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn call(&self, inputs: &[ArrayRef]) -> Result<HostArray, ArgumentError> {
        Kernel::call(self, inputs)
    }

    fn without_gradients(&self) -> Kernel {
        Kernel {
            gradients: Arc::new(Vec::new()),
            ..self.clone()
        }
    }
}

/// Orders named inputs as the signature's arguments; every error names the argument. Returns
/// the first error; [`bind_all_named`] returns them all.
pub fn bind_named<T: Copy>(sig: &Signature, inputs: &[(&str, T)]) -> Result<Vec<T>, ArgumentError> {
    let (bound, errors) = bind_all_named(sig, inputs);
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    Ok(bound.into_iter().flatten().collect())
}

/// Orders named inputs as the signature's arguments, and lists every unknown, duplicate and
/// missing name (in that order). A slot is `None` where the argument is missing.
pub fn bind_all_named<T: Copy>(
    sig: &Signature,
    inputs: &[(&str, T)],
) -> (Vec<Option<T>>, Vec<ArgumentError>) {
    let names: Vec<String> = sig.args.iter().map(|a| format!("`{}`", a.name)).collect();
    let mut bound: Vec<Option<T>> = vec![None; sig.args.len()];
    let mut errors = Vec::new();
    for &(name, value) in inputs {
        let Some(k) = sig.args.iter().position(|a| a.name == name) else {
            errors.push(ArgumentError::Unknown {
                name: name.to_string(),
                expected: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
            continue;
        };
        if bound[k].is_some() {
            errors.push(ArgumentError::Duplicate {
                name: name.to_string(),
            });
            continue;
        }
        bound[k] = Some(value);
    }
    for (slot, spec) in bound.iter().zip(&sig.args) {
        if slot.is_none() {
            errors.push(ArgumentError::Missing {
                name: spec.name.clone(),
                spec: format!("{}({})", spec.category, spec.dim),
            });
        }
    }
    (bound, errors)
}

fn entry_dtype(e: &ManifestEntry) -> DType {
    if e.dtype == "float32" {
        DType::F32
    } else {
        DType::F64
    }
}

/// The steps of [`Module::load`], each refusing with the module's path in its error.
struct Loader {
    path: PathBuf,
}

impl Loader {
    fn io(&self, message: String) -> LoadError {
        LoadError::Io {
            path: self.path.clone(),
            message,
        }
    }

    fn corrupt(&self, message: String) -> LoadError {
        LoadError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }

    /// The manifest, its version fields read first, so that a module of another format says
    /// so rather than failing to parse.
    fn manifest(&self) -> Result<Manifest, LoadError> {
        let text = std::fs::read_to_string(self.path.join(MANIFEST_FILE))
            .map_err(|e| self.io(format!("{MANIFEST_FILE}: {e}")))?;
        let header: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| self.corrupt(format!("{MANIFEST_FILE}: {e}")))?;
        let found_format = header.get("format").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let found = header
            .get("compiler_version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        if found_format != MODULE_FORMAT || found != VERSION {
            return Err(LoadError::Version {
                path: self.path.clone(),
                found,
                found_format,
                expected: VERSION.to_string(),
                expected_format: MODULE_FORMAT,
            });
        }
        serde_json::from_str(&text).map_err(|e| self.corrupt(format!("{MANIFEST_FILE}: {e}")))
    }

    /// The module's code runs on this machine: its architecture, and every CPU feature it
    /// was compiled for.
    fn check_target(&self, manifest: &Manifest) -> Result<(), LoadError> {
        let missing: Vec<String> = manifest
            .target
            .required_features
            .iter()
            .filter(|f| !cpu_has(f))
            .cloned()
            .collect();
        if missing.is_empty() && manifest.target.triple.starts_with(std::env::consts::ARCH) {
            return Ok(());
        }
        Err(LoadError::CpuFeatures {
            path: self.path.clone(),
            cpu: format!("{} ({})", manifest.target.cpu, manifest.target.triple),
            missing: if missing.is_empty() {
                vec![format!("the architecture ({})", std::env::consts::ARCH)]
            } else {
                missing
            },
        })
    }

    /// The manifest's and the library's checksums, the library's name (inside the module) and
    /// every kernel's signature and entries: the library's path when all hold.
    fn check_integrity(&self, manifest: &Manifest) -> Result<PathBuf, LoadError> {
        let checksum = manifest.checksum();
        if manifest.manifest_hash != checksum {
            return Err(self.corrupt(format!(
                "{MANIFEST_FILE} has checksum {checksum}, it says {:?}; rebuild it with `keopsc build`",
                manifest.manifest_hash
            )));
        }
        if manifest.library.contains('/') || manifest.library.contains("..") {
            return Err(self.corrupt(format!("library name `{}`", manifest.library)));
        }
        let library_path = self.path.join(&manifest.library);
        let bytes = std::fs::read(&library_path)
            .map_err(|e| self.io(format!("{}: {e}", manifest.library)))?;
        let hash = format!("{:016x}", fnv1a64(&bytes));
        if hash != manifest.library_hash {
            return Err(self.corrupt(format!(
                "{} has checksum {hash}, the manifest says {}",
                manifest.library, manifest.library_hash
            )));
        }
        for k in manifest.kernels.iter().chain(&manifest.backward_kernels) {
            k.signature()
                .map_err(|e| self.corrupt(format!("kernel `{}`: {e}", k.name)))?;
            let symmetric = k.symmetric.iter().flat_map(|s| &s.entries);
            for e in k.entries.iter().chain(symmetric) {
                if e.lanes == 0 || !matches!(e.dtype.as_str(), "float32" | "float64") {
                    return Err(self.corrupt(format!("kernel `{}`: entry {}", k.name, e.symbol)));
                }
            }
        }
        Ok(library_path)
    }

    /// The kernels `described`, their tile functions from `library`.
    fn kernels(
        &self,
        library: &Arc<libloading::Library>,
        described: &[ManifestKernel],
    ) -> Result<Vec<Kernel>, LoadError> {
        let mut kernels = Vec::new();
        for k in described {
            let sig = k
                .signature()
                .map_err(|e| self.corrupt(format!("kernel `{}`: {e}", k.name)))?;
            // SAFETY: a kernel's symbols were emitted with the TileFn signature (checked
            // format).
            let entries = unsafe { self.entries::<TileFn>(library, &k.entries)? };
            let owner: Arc<dyn Any + Send + Sync> = library.clone();
            // SAFETY: entries come from the library `owner` keeps loaded.
            kernels.push(unsafe { Kernel::from_parts(sig, entries, owner) });
        }
        Ok(kernels)
    }

    /// The tile functions `entries` name in `library`, with their dtype and lanes.
    ///
    /// # Safety
    /// Each symbol must have been emitted with the signature `F`.
    unsafe fn entries<F: Copy>(
        &self,
        library: &libloading::Library,
        entries: &[ManifestEntry],
    ) -> Result<Vec<(DType, F, usize)>, LoadError> {
        entries
            .iter()
            .map(|e| {
                // SAFETY: the caller's contract.
                let tile: F = unsafe {
                    *library
                        .get::<F>(e.symbol.as_bytes())
                        .map_err(|err| self.corrupt(format!("symbol {}: {err}", e.symbol)))?
                };
                Ok((entry_dtype(e), tile, e.lanes))
            })
            .collect()
    }

    /// A kernel's PTX files, each inside the module and matching its checksum.
    fn gpu_code(&self, described: &ManifestKernel) -> Result<Vec<GpuCode>, LoadError> {
        let mut code = Vec::new();
        for e in &described.gpu {
            let bad = |m: String| {
                self.corrupt(format!(
                    "kernel `{}`: GPU code {}: {m}",
                    described.name, e.file
                ))
            };
            if e.file.contains('/') || e.file.contains("..") || !e.file.ends_with(".ptx") {
                return Err(bad("not a PTX file of the module".into()));
            }
            if !matches!(e.dtype.as_str(), "float32" | "float64") {
                return Err(bad(format!("dtype `{}`", e.dtype)));
            }
            let bytes = std::fs::read(self.path.join(&e.file))
                .map_err(|err| self.io(format!("{}: {err}", e.file)))?;
            let hash = format!("{:016x}", fnv1a64(&bytes));
            if hash != e.hash {
                return Err(bad(format!(
                    "checksum {hash}, the manifest says {}",
                    e.hash
                )));
            }
            let ptx = String::from_utf8(bytes).map_err(|_| bad("not text".into()))?;
            code.push(GpuCode {
                dtype: if e.dtype == "float32" {
                    DType::F32
                } else {
                    DType::F64
                },
                ptx: ptx.into(),
                symbol: e.symbol.clone(),
                launch: GpuLaunch1D {
                    block: e.block,
                    shared_bytes: e.shared_bytes,
                },
                arch: e.arch.clone(),
            });
        }
        Ok(code)
    }

    /// A kernel's stored symmetric pass (`keopsc build --same`), its cross tile functions from
    /// `library`.
    fn symmetric_pass(
        &self,
        library: &Arc<libloading::Library>,
        kernel: &Kernel,
        described: &ManifestKernel,
        stored: &ManifestSymmetric,
    ) -> Result<SymmetricPass, LoadError> {
        let sig = stored.signature(kernel.signature()).map_err(|e| {
            self.corrupt(format!("kernel `{}`: symmetric pass: {e}", described.name))
        })?;
        // SAFETY: a symmetric pass's symbols were emitted with the CrossTileFn signature
        // (checked format).
        let entries = unsafe { self.entries::<CrossTileFn>(library, &stored.entries)? };
        let same = stored.same.iter().map(|&[j, i]| (j, i)).collect();
        let owner: Arc<dyn Any + Send + Sync> = library.clone();
        // SAFETY: entries come from the library `owner` keeps loaded, compiled by `keopsc build
        // --same` as this kernel's pass; `with_symmetric` checks that its arguments fit the
        // kernel's.
        Ok(unsafe { SymmetricPass::from_parts(sig, stored.sources.clone(), same, entries, owner) })
    }
}

/// A module loaded from disk.
pub struct Module {
    path: PathBuf,
    manifest: Manifest,
    kernels: Vec<Kernel>,
}

impl Module {
    /// Loads `path` (a `.kmod` directory), after checking versions, CPU features and the
    /// library's checksum.
    pub fn load(path: impl AsRef<Path>) -> Result<Module, LoadError> {
        let loader = Loader {
            path: path.as_ref().to_path_buf(),
        };
        let manifest = loader.manifest()?;
        loader.check_target(&manifest)?;
        // After the version and CPU checks (which only refuse, and say why more precisely),
        // before anything the manifest says is trusted.
        let library_path = loader.check_integrity(&manifest)?;
        // SAFETY: the library passed the checks above: it is the one this compiler version
        // wrote for a CPU this machine satisfies; its initialisers are LLVM-generated (none).
        let library = Arc::new(
            unsafe { libloading::Library::new(&library_path) }
                .map_err(|e| loader.io(format!("{}: {e}", manifest.library)))?,
        );
        let mut kernels = loader.kernels(&library, &manifest.kernels)?;
        let backward = loader.kernels(&library, &manifest.backward_kernels)?;
        for (kernel, described) in kernels.iter_mut().zip(&manifest.kernels) {
            let attached = |e: String| loader.corrupt(format!("kernel `{}`: {e}", described.name));
            if !described.gradients.is_empty() {
                *kernel = kernel
                    .with_gradients(&described.gradients, &backward)
                    .map_err(attached)?;
            }
            if !described.gpu.is_empty() {
                let code = loader.gpu_code(described)?;
                *kernel = kernel.with_gpu_code(code).map_err(attached)?;
            }
            if let Some(stored) = &described.symmetric {
                let pass = loader.symmetric_pass(&library, kernel, described, stored)?;
                *kernel = kernel.with_symmetric(pass).map_err(|e| {
                    loader.corrupt(format!("kernel `{}`: symmetric pass: {e}", described.name))
                })?;
            }
        }
        Ok(Module {
            path: loader.path,
            manifest,
            kernels,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// The kernel `name`; `LoadError::UnknownKernel` (naming the ones it has) when the module
    /// holds none of that name.
    pub fn kernel(&self, name: &str) -> Result<Kernel, LoadError> {
        self.kernels
            .iter()
            .find(|k| k.name() == name)
            .cloned()
            .ok_or_else(|| LoadError::UnknownKernel {
                path: self.path.clone(),
                name: name.to_string(),
                available: self
                    .kernels
                    .iter()
                    .map(|k| format!("`{}`", k.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
