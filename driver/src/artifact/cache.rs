//! The on-disk compile cache of the run-time compilation path. An entry is a module directory
//! (the format `keopsc build` writes) named by a hash of everything that changes the code:
//! the normalised source (the file printed back from its syntax tree, so comments and layout
//! do not matter), the dtypes, the compiler and module-format versions, the LLVM version, and
//! the CPU name and features. The full key is stored in the entry and compared on every hit,
//! so a hash collision rebuilds rather than returns the wrong code.
//!
//! Entries are built in a temporary directory and renamed into place: concurrent processes
//! never see half an entry. An entry that fails to load (damaged, truncated, another format)
//! is removed and rebuilt.

use super::{build, llvm_version, temporary_dir, BuildError, Placement};
use crate::codegen::CpuTarget;
use crate::diagnostic::render_all;
use crate::driver::pipeline::{self, CompiledFile};
use crate::source::SourceFile;
use keops_runtime::manifest::{dtype_name, fnv1a64, MODULE_FORMAT, VERSION};
use keops_runtime::{DType, Kernel, Module};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that overrides the cache directory.
pub const CACHE_DIR_VAR: &str = "KEOPS_RS_CACHE_DIR";
const KEY_FILE: &str = "cache-key";

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The source does not compile: the rendered diagnostics.
    #[error("{0}")]
    Source(String),
    #[error("no kernel `{name}` in the source (it has {available})")]
    UnknownKernel { name: String, available: String },
    #[error("the source holds several kernels ({0}): name the one to compile")]
    AmbiguousKernel(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the compile cache at `{path}`: {message}")]
    Cache { path: PathBuf, message: String },
    /// A broken invariant of the compiler (a bug, not a problem with the source).
    #[error(
        "internal error in the compile cache (a bug of keopsc, not a problem with the source): {0}"
    )]
    Internal(String),
}

/// How a lookup went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// An entry was there but damaged or from another build: it was rebuilt.
    Rebuilt,
}

pub struct CompileCache {
    dir: PathBuf,
    target: CpuTarget,
}

impl CompileCache {
    /// `$KEOPS_RS_CACHE_DIR`, else `$XDG_CACHE_HOME/keops-rs`, else `~/.cache/keops-rs`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os(CACHE_DIR_VAR).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("keops-rs");
        }
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache").join("keops-rs"),
            None => std::env::temp_dir().join("keops-rs-cache"),
        }
    }

    pub fn open_default() -> CompileCache {
        CompileCache::open(CompileCache::default_dir())
    }

    /// A cache in `dir` (created on first write), for this machine's CPU.
    pub fn open(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache {
            dir: dir.into(),
            target: crate::codegen::host_cpu(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel `name` of `source` (or its only kernel), compiled for f32 and f64: from the
    /// cache when an entry is there, else built and stored. Runs on the compiler's own stack
    /// ([`crate::isolate`]): the cache key prints the syntax tree, which recurses over it.
    pub fn kernel(
        &self,
        source: &str,
        name: Option<&str>,
    ) -> Result<(Kernel, CacheOutcome), CompileError> {
        crate::isolate::on_compiler_stack(|| self.kernel_here(source, name))
            .unwrap_or_else(|panic| Err(CompileError::Internal(panic)))
    }

    fn kernel_here(
        &self,
        source: &str,
        name: Option<&str>,
    ) -> Result<(Kernel, CacheOutcome), CompileError> {
        let compiled = pipeline::compile(SourceFile::new("<source>", source)).map_err(
            |(file, diagnostics)| CompileError::Source(render_all(&diagnostics, &file, false)),
        )?;
        self.kernel_of_here(&compiled, name)
    }

    /// [`CompileCache::kernel`] for a file already through the front end (`driver::compile`
    /// or `driver::compile_tree`): it is not parsed or checked again.
    pub fn kernel_of(
        &self,
        compiled: &CompiledFile,
        name: Option<&str>,
    ) -> Result<(Kernel, CacheOutcome), CompileError> {
        crate::isolate::on_compiler_stack(|| self.kernel_of_here(compiled, name))
            .unwrap_or_else(|panic| Err(CompileError::Internal(panic)))
    }

    fn kernel_of_here(
        &self,
        compiled: &CompiledFile,
        name: Option<&str>,
    ) -> Result<(Kernel, CacheOutcome), CompileError> {
        let names: Vec<String> = compiled
            .kernels
            .iter()
            .map(|k| format!("`{}`", k.name))
            .collect();
        let name = match name {
            Some(n) => {
                if compiled.kernel(n).is_none() {
                    return Err(CompileError::UnknownKernel {
                        name: n.to_string(),
                        available: names.join(", "),
                    });
                }
                n.to_string()
            }
            None if compiled.kernels.len() == 1 => compiled.kernels[0].name.clone(),
            None => return Err(CompileError::AmbiguousKernel(names.join(", "))),
        };
        let dtypes = [DType::F32, DType::F64];
        let key = self.key(&compiled.ast.to_string(), &dtypes);
        let entry = self
            .dir
            .join(format!("{:016x}.kmod", fnv1a64(key.as_bytes())));
        let mut outcome = CacheOutcome::Miss;
        if entry.exists() {
            let same_key = std::fs::read_to_string(entry.join(KEY_FILE)).is_ok_and(|k| k == key);
            if same_key {
                if let Ok(module) = Module::load(&entry) {
                    if let Ok(kernel) = module.kernel(&name) {
                        return Ok((kernel, CacheOutcome::Hit));
                    }
                }
            }
            outcome = CacheOutcome::Rebuilt;
        }
        let cache_error = |message: String| CompileError::Cache {
            path: self.dir.clone(),
            message,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| cache_error(e.to_string()))?;
        if outcome == CacheOutcome::Rebuilt {
            // Moved aside first: a rename is atomic, so a concurrent reader sees the damaged
            // entry or none, never a half-deleted one.
            let aside = temporary_dir(&self.dir, &entry);
            if std::fs::rename(&entry, &aside).is_ok() {
                let _ = std::fs::remove_dir_all(&aside);
            }
        }
        let built = build(
            compiled,
            &dtypes,
            &self.target,
            &entry,
            &[(KEY_FILE, &key)],
            Placement::KeepExisting,
        );
        if let Err(e) = built {
            // Another process may have placed the same entry meanwhile: use it if it loads.
            if !matches!(e, BuildError::Io { .. }) || !entry.exists() {
                return Err(e.into());
            }
        }
        let module = Module::load(&entry).map_err(|e| cache_error(e.to_string()))?;
        let kernel = module
            .kernel(&name)
            .map_err(|e| cache_error(e.to_string()))?;
        Ok((kernel, outcome))
    }

    fn key(&self, normalized_source: &str, dtypes: &[DType]) -> String {
        let dtypes: Vec<&str> = dtypes.iter().map(|&d| dtype_name(d)).collect();
        format!(
            "keops-rs {VERSION}, module format {MODULE_FORMAT}, LLVM {}, {} {} [{}], dtypes {}\n{normalized_source}",
            llvm_version(),
            self.target.triple,
            self.target.cpu,
            self.target.features,
            dtypes.join(" ")
        )
    }
}

/// Cold (empty cache) and warm (entry present) latency of compiling `source` through a cache
/// in `dir`, the fastest of `repeats` each.
pub fn measure_latency(
    dir: &Path,
    source: &str,
    repeats: usize,
) -> Result<(Duration, Duration), CompileError> {
    let mut cold = Duration::MAX;
    let mut warm = Duration::MAX;
    for _ in 0..repeats.max(1) {
        let _ = std::fs::remove_dir_all(dir);
        let cache = CompileCache::open(dir);
        let start = Instant::now();
        cache.kernel(source, None)?;
        cold = cold.min(start.elapsed());
        let start = Instant::now();
        let (_, outcome) = cache.kernel(source, None)?;
        warm = warm.min(start.elapsed());
        debug_assert_eq!(outcome, CacheOutcome::Hit);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok((cold, warm))
}
