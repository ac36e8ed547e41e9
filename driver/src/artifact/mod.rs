//! Modules on disk: `keopsc build` compiles every kernel of a file, for f32 and f64, into one
//! shared library beside a manifest (the format is `keops_runtime::module`'s, documented in
//! lang-spec/modules.md). A module is written into a temporary directory and renamed into
//! place, so a reader never sees half of one.

pub mod cache;
pub mod gradients;

use crate::codegen::jit::{emit_object, TileSpec};
use crate::codegen::{CodegenError, CpuTarget};
use crate::driver::pipeline::CompiledFile;
use crate::opt::{self, OptBudget};
use keops_runtime::manifest::{
    dtype_name, fnv1a64, library_file, Manifest, ManifestEntry, ManifestKernel, ModuleTarget,
    MANIFEST_FILE, MODULE_FORMAT, VERSION,
};
use keops_runtime::DType;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error("cannot write the module `{path}`: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Gradient(#[from] crate::vjp::VjpError),
    #[error("linking the shared library failed: {0} (keopsc build needs a C compiler driver, `cc`, to link; install gcc)")]
    Link(String),
}

/// What a build did, for `keopsc build` and the cache's latency report.
#[derive(Clone, Debug)]
pub struct BuildReport {
    pub manifest: Manifest,
    /// With gradients: the kernels that have none (their reduction returns indices only).
    pub not_differentiable: Vec<String>,
    /// With `same` pairs: why the kernels without a symmetric pass have none.
    pub not_symmetric: Vec<String>,
    pub codegen: Duration,
    pub link: Duration,
}

/// The symbol of a kernel's tile function for one dtype: the kernel name is an identifier.
pub fn tile_symbol(kernel: &str, dtype: DType) -> String {
    format!("keops_tile_{kernel}_{}", dtype_name(dtype))
}

/// The symbol of a stored backward kernel's tile function: apart from the file's kernels, so
/// that a kernel of the file named like a backward kernel keeps its own.
pub fn backward_tile_symbol(kernel: &str, dtype: DType) -> String {
    format!("keops_backward_tile_{kernel}_{}", dtype_name(dtype))
}

pub use crate::codegen::machine::llvm_version;

/// What to do when the module directory already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Replace it (`keopsc build`).
    Replace,
    /// Keep it and fail with an I/O error (the cache, where another process won the race).
    KeepExisting,
}

/// Compiles every kernel of `file` for `dtypes` and `target`, and writes the module directory
/// `out`, with `extra` files (name, contents) beside the manifest.
pub fn build(
    file: &CompiledFile,
    dtypes: &[DType],
    target: &CpuTarget,
    out: &Path,
    extra: &[(&str, &str)],
    placement: Placement,
) -> Result<BuildReport, BuildError> {
    let options = BuildOptions::default();
    build_with_options(file, dtypes, target, out, extra, placement, &options)
}

/// [`build`], with the gradients of every kernel (`keopsc build --grad`): the backward plans
/// of each input alone and of all inputs at once, and their kernels, so that a program that
/// links only the runtime computes gradients (`keops_runtime::Kernel::vjp`). A kernel whose
/// reduction returns indices only has none ([`BuildReport::not_differentiable`]).
pub fn build_with_gradients(
    file: &CompiledFile,
    dtypes: &[DType],
    target: &CpuTarget,
    out: &Path,
    extra: &[(&str, &str)],
    placement: Placement,
) -> Result<BuildReport, BuildError> {
    let options = BuildOptions {
        gradients: true,
        ..BuildOptions::default()
    };
    build_with_options(file, dtypes, target, out, extra, placement, &options)
}

/// What a module stores beside each kernel's tile functions.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Every kernel's gradients ([`build_with_gradients`], `keopsc build --grad`).
    pub gradients: bool,
    /// `(j, i)` variable names (`keopsc build --same J=I`): every `Sum` kernel with a
    /// j-variable `j` and an i-variable `i` of one dimension also stores its pass over
    /// unordered pairs ([`crate::symmetric`], `keops_runtime::SymmetricPass`), which its
    /// `Kernel::call_symmetric` and the linear operators built on it run when `j`'s array
    /// holds `i`'s data.
    pub same: Vec<(String, String)>,
    /// Every kernel's GPU code too (`keopsc build --gpu`): its 1-D kernel and its block-sparse
    /// kernel as PTX for `sm_80` (which the driver JIT-compiles for later GPUs), a file each per
    /// dtype, which `keops_runtime::cuda::CudaKernel::from_kernel` and `from_kernel_ranges`
    /// load without the compiler.
    pub gpu: bool,
}

/// The symbol of a kernel's symmetric pass for one dtype.
pub fn symmetric_tile_symbol(kernel: &str, dtype: DType) -> String {
    format!("keops_symmetric_tile_{kernel}_{}", dtype_name(dtype))
}

/// The argument pairs of `kernel` that `same` names: a j-variable and an i-variable of one
/// dimension each; empty when the kernel has no such pair.
pub fn pairs_of(
    kernel: &crate::check::CheckedKernel,
    same: &[(String, String)],
) -> Vec<(usize, usize)> {
    let args = &kernel.signature.args;
    let position = |name: &str| args.iter().position(|a| a.name == name);
    same.iter()
        .filter_map(|(j, i)| {
            let (j, i) = (position(j)?, position(i)?);
            let fits = args[j].category == keops_runtime::Category::J
                && args[i].category == keops_runtime::Category::I
                && args[j].dim == args[i].dim;
            fits.then_some((j, i))
        })
        .collect()
}

/// A kernel's symmetric pass as a build stores it: the plan, its cross kernel optimised as a
/// whole, and its row signature.
type SymmetricBuild = (
    crate::symmetric::SymmetricPlan,
    opt::OptimizedKernel,
    keops_runtime::Signature,
);

/// `kernel` through the middle end at the CPU's prices, or at `budget`'s.
fn optimize_for(
    kernel: &crate::check::CheckedKernel,
    budget: &OptBudget,
) -> Result<opt::OptimizedKernel, CodegenError> {
    opt::optimize(kernel, budget).map_err(|d| CodegenError::Internal {
        stage: "optimiser",
        message: d.message,
    })
}

/// [`build`] with what `options` asks to store besides.
pub fn build_with_options(
    file: &CompiledFile,
    dtypes: &[DType],
    target: &CpuTarget,
    out: &Path,
    extra: &[(&str, &str)],
    placement: Placement,
    options: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    let start = Instant::now();
    let stored = if options.gradients {
        gradients::collect(file)?
    } else {
        gradients::StoredGradients {
            kernels: Vec::new(),
            gradients: vec![Vec::new(); file.kernels.len()],
            not_differentiable: Vec::new(),
        }
    };
    let cpu = OptBudget::default();
    let optimized: Vec<opt::OptimizedKernel> = file
        .kernels
        .iter()
        .map(|k| optimize_for(k, &cpu))
        .collect::<Result<_, _>>()?;
    let backward: Vec<opt::OptimizedKernel> = stored
        .kernels
        .iter()
        .map(|k| optimize_for(k, &cpu))
        .collect::<Result<_, _>>()?;
    let (symmetric, not_symmetric) = symmetric_passes(file, &options.same)?;
    let mut specs = Vec::new();
    let mut kernels = Vec::new();
    let mut ptx_files: Vec<(String, String)> = Vec::new();
    let described = optimized.iter().zip(stored.gradients).zip(&symmetric);
    for (((k, gradients), sym), checked) in described.zip(&file.kernels) {
        let mut entry = describe(k, tile_symbol, dtypes, target, &mut specs);
        entry.gradients = gradients;
        if options.gpu {
            entry.gpu = gpu_entries(checked, dtypes, &mut ptx_files)?;
        }
        if let Some(pass) = sym {
            let same = pairs_of(checked, &options.same);
            entry.symmetric = Some(describe_symmetric(
                &k.name, pass, &same, dtypes, target, &mut specs,
            ));
        }
        kernels.push(entry);
    }
    let backward_kernels: Vec<ManifestKernel> = backward
        .iter()
        .map(|k| describe(k, backward_tile_symbol, dtypes, target, &mut specs))
        .collect();
    let object = emit_object("kernels", &specs, target)?;
    let codegen = start.elapsed();
    let mut extra: Vec<(&str, &str)> = extra.to_vec();
    extra.extend(ptx_files.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    let (manifest, link) = place_module(
        file,
        &object,
        (kernels, backward_kernels),
        target,
        out,
        &extra,
        placement,
    )?;
    Ok(BuildReport {
        manifest,
        not_differentiable: stored.not_differentiable,
        not_symmetric,
        codegen,
        link,
    })
}

/// For each kernel whose arguments `same` pairs, its pass over unordered pairs when it pays
/// (its cross kernel `Concat(F, F swapped)` optimised as a whole, with its row signature),
/// and for the others why not.
fn symmetric_passes(
    file: &CompiledFile,
    same: &[(String, String)],
) -> Result<(Vec<Option<SymmetricBuild>>, Vec<String>), BuildError> {
    let mut symmetric = Vec::new();
    let mut not_symmetric = Vec::new();
    for k in &file.kernels {
        if same.is_empty() {
            symmetric.push(None);
            continue;
        }
        match crate::symmetric::plan_if_it_pays(k, &pairs_of(k, same)) {
            Ok(plan) => {
                let cross = optimize_for(&plan.cross, &OptBudget::default())?;
                let mut rows = cross.signature.clone();
                rows.reduction =
                    keops_runtime::Reduction::new(keops_runtime::ReductionKind::Sum, plan.columns);
                symmetric.push(Some((plan, cross, rows)));
            }
            Err(reason) => {
                not_symmetric.push(reason.to_string());
                symmetric.push(None);
            }
        }
    }
    Ok((symmetric, not_symmetric))
}

/// A kernel's GPU code (`keopsc build --gpu`): optimised at the GPU's prices, its 1-D and
/// block-sparse kernels as PTX for each dtype, their block size from occupancy; the files go
/// to `ptx_files`, their manifest entries come back.
fn gpu_entries(
    checked: &crate::check::CheckedKernel,
    dtypes: &[DType],
    ptx_files: &mut Vec<(String, String)>,
) -> Result<Vec<keops_runtime::manifest::ManifestGpuEntry>, BuildError> {
    use crate::codegen::nvptx::GpuEntry;
    let (gpu_target, gpu_budget) = crate::driver::pipeline::gpu_target();
    let gpu_formula = optimize_for(checked, &gpu_budget)?.formula;
    let mut entries = Vec::new();
    for &dtype in dtypes {
        for (gpu_entry, suffix) in [(GpuEntry::Tiles, ""), (GpuEntry::Ranges, "_ranges")] {
            let ptx = crate::codegen::nvptx::compile_entry_tuned(
                &gpu_formula,
                &checked.signature,
                dtype,
                &gpu_target,
                gpu_entry,
            )?;
            let file = format!("gpu_{}_{}{suffix}.ptx", checked.name, dtype_name(dtype));
            entries.push(keops_runtime::manifest::ManifestGpuEntry {
                dtype: dtype_name(dtype).to_string(),
                file: file.clone(),
                symbol: ptx.symbol.clone(),
                block: ptx.schedule.launch.block,
                shared_bytes: ptx.schedule.launch.shared_bytes,
                arch: gpu_target.ptx_arch.to_string(),
                hash: format!("{:016x}", fnv1a64(ptx.ptx.as_bytes())),
            });
            ptx_files.push((file, ptx.ptx));
        }
    }
    Ok(entries)
}

/// The manifest entry of a kernel's symmetric pass, its cross tile functions (one per dtype)
/// added to `specs`.
fn describe_symmetric<'k>(
    kernel: &str,
    (plan, cross, rows): &'k SymmetricBuild,
    same: &[(usize, usize)],
    dtypes: &[DType],
    target: &CpuTarget,
    specs: &mut Vec<TileSpec<'k>>,
) -> keops_runtime::manifest::ManifestSymmetric {
    let mut stored = keops_runtime::manifest::ManifestSymmetric {
        args: ManifestKernel::describe(rows).args,
        sources: plan.sources.clone(),
        same: same.iter().map(|&(j, i)| [j, i]).collect(),
        entries: Vec::new(),
    };
    for &dtype in dtypes {
        let spec = TileSpec {
            formula: &cross.formula,
            signature: rows,
            dtype,
            symbol: symmetric_tile_symbol(kernel, dtype),
            columns: plan.columns,
        };
        stored.entries.push(ManifestEntry {
            dtype: dtype_name(dtype).to_string(),
            symbol: spec.symbol.clone(),
            lanes: spec.schedule(target).lanes as usize,
        });
        specs.push(spec);
    }
    stored
}

/// Writes the module into a staging directory beside `out`, then moves it into place (as
/// `placement` says): readers never see half a module.
fn place_module(
    file: &CompiledFile,
    object: &[u8],
    kernels: (Vec<ManifestKernel>, Vec<ManifestKernel>),
    target: &CpuTarget,
    out: &Path,
    extra: &[(&str, &str)],
    placement: Placement,
) -> Result<(Manifest, Duration), BuildError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let staging = temporary_dir(&parent, out);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let (manifest, link) = match write_module(file, object, kernels, target, &staging, extra) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let placed = match placement {
        Placement::Replace => replace_dir(&staging, out),
        Placement::KeepExisting => std::fs::rename(&staging, out),
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(out)(e));
    }
    Ok((manifest, link))
}

/// The manifest entry of one kernel, its tile functions (one per dtype) added to `specs`.
fn describe<'k>(
    k: &'k opt::OptimizedKernel,
    symbol: fn(&str, DType) -> String,
    dtypes: &[DType],
    target: &CpuTarget,
    specs: &mut Vec<TileSpec<'k>>,
) -> ManifestKernel {
    let mut entry = ManifestKernel::describe(&k.signature);
    for &dtype in dtypes {
        let spec = TileSpec {
            formula: &k.formula,
            signature: &k.signature,
            dtype,
            symbol: symbol(&k.name, dtype),
            columns: 0,
        };
        entry.entries.push(ManifestEntry {
            dtype: dtype_name(dtype).to_string(),
            symbol: spec.symbol.clone(),
            lanes: spec.schedule(target).lanes as usize,
        });
        specs.push(spec);
    }
    entry
}

/// An I/O error about `path`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |e| BuildError::Io {
        path: path.clone(),
        message: e.to_string(),
    }
}

/// Writes the library and manifest of a module into the empty directory `staging`.
fn write_module(
    file: &CompiledFile,
    object: &[u8],
    (kernels, backward_kernels): (Vec<ManifestKernel>, Vec<ManifestKernel>),
    target: &CpuTarget,
    staging: &Path,
    extra: &[(&str, &str)],
) -> Result<(Manifest, Duration), BuildError> {
    let start = Instant::now();
    let object_path = staging.join("kernels.o");
    std::fs::write(&object_path, object).map_err(io(&object_path))?;
    let linked_path = staging.join("kernels.so");
    link(&object_path, &linked_path)?;
    std::fs::remove_file(&object_path).map_err(io(&object_path))?;
    let link_time = start.elapsed();
    let library = std::fs::read(&linked_path).map_err(io(&linked_path))?;
    let library_hash = format!("{:016x}", fnv1a64(&library));
    // The library's name carries its checksum: dlopen matches loaded libraries by path, so a
    // rebuilt module at the same path must not reuse the code a process loaded before.
    let library_name = library_file(&library_hash);
    let library_path = staging.join(&library_name);
    std::fs::rename(&linked_path, &library_path).map_err(io(&library_path))?;
    let mut manifest = Manifest {
        format: MODULE_FORMAT,
        compiler_version: VERSION.to_string(),
        llvm_version: llvm_version(),
        source_hash: format!("{:016x}", fnv1a64(file.source.text.as_bytes())),
        target: ModuleTarget {
            triple: target.triple.clone(),
            cpu: target.cpu.clone(),
            required_features: target.required_features.clone(),
        },
        library: library_name,
        library_hash,
        kernels,
        backward_kernels,
        manifest_hash: String::new(),
    };
    manifest.manifest_hash = manifest.checksum();
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
    let manifest_path = staging.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, text).map_err(io(&manifest_path))?;
    for (name, contents) in extra {
        let path = staging.join(name);
        std::fs::write(&path, contents).map_err(io(&path))?;
    }
    Ok((manifest, link_time))
}

/// A fresh directory name beside `out`, unique across processes and threads.
pub(crate) fn temporary_dir(parent: &Path, out: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    parent.join(format!(
        ".{stem}.tmp-{}-{count}-{nanos}",
        std::process::id()
    ))
}

/// Puts `staging` at `out`: a rename, after moving an existing `out` aside.
fn replace_dir(staging: &Path, out: &Path) -> std::io::Result<()> {
    if out.exists() {
        let old = temporary_dir(out.parent().unwrap_or(Path::new(".")), out);
        std::fs::rename(out, &old)?;
        std::fs::rename(staging, out)?;
        let _ = std::fs::remove_dir_all(old);
        Ok(())
    } else {
        std::fs::rename(staging, out)
    }
}

/// Links an object file into a shared library with the system's C compiler driver.
fn link(object: &Path, library: &Path) -> Result<(), BuildError> {
    let output = Command::new("cc")
        .arg("-shared")
        .arg("-o")
        .arg(library)
        .arg(object)
        .output()
        .map_err(|e| BuildError::Link(format!("cannot run `cc`: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildError::Link(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}
