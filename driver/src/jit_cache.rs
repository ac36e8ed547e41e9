//! A process-wide table of kernels compiled to host code in this process (the JIT), so that a
//! kernel run again is not compiled again. The backward kernels of a vjp are checked kernels
//! built anew from the plan, and compiling one costs tens of milliseconds (optimiser and LLVM),
//! far more than running it on small inputs; every caller of `vjp::run_plan` / `run_many`
//! (the CLI, the Python package, the JAX bindings) goes through [`JitCache::global`].
//!
//! The key is the checked kernel exactly: its signature and its formula, one node per line
//! (every operator with its parameters, constants printed so that they read back to the same
//! f64), plus the dtype. The target is this machine's CPU, the same for the whole process, and
//! the optimiser's budget is the default one, a count (the result never depends on load).
//!
//! With the `cuda` feature it also holds GPU kernels loaded on the first GPU ([`JitCache::get_gpu`]),
//! under keys of their own.
//!
//! The table is bounded: past [`JitCache::DEFAULT_CAPACITY`] entries the least recently used
//! one is dropped (a caller still holding it keeps it alive through its `Arc`). Compilation
//! runs outside the lock, so callers on other threads are not held up by it; two threads that
//! miss on the same kernel at once may both compile it, and the table keeps one.

use crate::check::CheckedKernel;
use crate::codegen::{JitCrossKernel, JitKernel};
use crate::driver::backend::EvalError;
use crate::driver::pipeline::{compile_cpu, compile_cpu_cross};
use keops_runtime::DType;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// How a lookup went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitOutcome {
    /// Compiled before: nothing was compiled.
    Hit,
    /// Compiled now, and stored.
    Compiled,
}

/// Counts since the table was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitCacheStats {
    pub hits: u64,
    pub compiled: u64,
    pub evicted: u64,
    /// Entries held now.
    pub entries: usize,
}

pub struct JitCache {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Incremented at each lookup: an entry's `last_used` orders the entries by recency.
    clock: u64,
    stats: JitCacheStats,
}

struct Entry {
    /// A [`JitKernel`] or a [`JitCrossKernel`], as the key says.
    kernel: Arc<dyn Any + Send + Sync>,
    last_used: u64,
    /// Lookups that found this entry.
    hits: u64,
}

impl JitCache {
    /// Entries the process-wide table holds at most. A compiled kernel holds its LLVM context
    /// and machine code: 0.8 MB for the backward kernel of a Gaussian sum (measured), so the
    /// full table holds about 100 MB.
    pub const DEFAULT_CAPACITY: usize = 128;

    /// An empty table of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> JitCache {
        JitCache {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The table every default runner of the library uses.
    pub fn global() -> &'static JitCache {
        static GLOBAL: OnceLock<JitCache> = OnceLock::new();
        GLOBAL.get_or_init(|| JitCache::new(JitCache::DEFAULT_CAPACITY))
    }

    /// The key of a kernel compiled for `dtype`.
    fn key(kernel: &CheckedKernel, dtype: DType) -> String {
        format!("{dtype}\n{}\n{}", kernel.signature, kernel.formula)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held left the table consistent (every update is one
        // statement on plain data): go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `kernel` compiled for `dtype`: from the table, or compiled now and stored.
    pub fn get(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<JitKernel>, JitOutcome), EvalError> {
        self.get_or_compile(JitCache::key(kernel, dtype), || compile_cpu(kernel, dtype))
    }

    /// The cross pass of `kernel` (its last `columns` components summed over the rows, see
    /// [`compile_cpu_cross`]) compiled for `dtype`: from the table, or compiled now and stored.
    pub fn get_cross(
        &self,
        kernel: &CheckedKernel,
        columns: usize,
        dtype: DType,
    ) -> Result<(Arc<JitCrossKernel>, JitOutcome), EvalError> {
        let key = format!(
            "cross pass, {columns} columns\n{}",
            JitCache::key(kernel, dtype)
        );
        self.get_or_compile(key, || compile_cpu_cross(kernel, columns, dtype))
    }

    /// `kernel`'s GPU code for `dtype` loaded on the first GPU ([`crate::driver::pipeline::load_gpu`]):
    /// from the table, or compiled and loaded now and stored.
    #[cfg(feature = "cuda")]
    pub fn get_gpu(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<keops_runtime::cuda::CudaKernel>, JitOutcome), EvalError> {
        let key = format!("cuda\n{}", JitCache::key(kernel, dtype));
        self.get_or_compile(key, || crate::driver::pipeline::load_gpu(kernel, dtype))
    }

    /// [`JitCache::get_gpu`] for the block-sparse GPU kernel (KeOps's ranges).
    #[cfg(feature = "cuda")]
    pub fn get_gpu_ranges(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<keops_runtime::cuda::CudaKernel>, JitOutcome), EvalError> {
        let key = format!("cuda ranges\n{}", JitCache::key(kernel, dtype));
        self.get_or_compile(key, || {
            crate::driver::pipeline::load_gpu_entry(
                kernel,
                dtype,
                crate::codegen::nvptx::GpuEntry::Ranges,
            )
        })
    }

    fn get_or_compile<T: Any + Send + Sync>(
        &self,
        key: String,
        compile: impl FnOnce() -> Result<T, EvalError>,
    ) -> Result<(Arc<T>, JitOutcome), EvalError> {
        let typed = |kernel: Arc<dyn Any + Send + Sync>| {
            kernel
                .downcast::<T>()
                .expect("each key holds one kind of compiled kernel")
        };
        {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            if let Some(entry) = state.entries.get_mut(&key) {
                entry.last_used = now;
                entry.hits += 1;
                let found = entry.kernel.clone();
                state.stats.hits += 1;
                return Ok((typed(found), JitOutcome::Hit));
            }
        }
        let compiled: Arc<dyn Any + Send + Sync> = Arc::new(compile()?);
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        state.stats.compiled += 1;
        if !state.entries.contains_key(&key) && state.entries.len() >= self.capacity {
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                state.entries.remove(&oldest);
                state.stats.evicted += 1;
            }
        }
        let entry = state.entries.entry(key).or_insert(Entry {
            kernel: compiled,
            last_used: now,
            hits: 0,
        });
        entry.last_used = now;
        Ok((typed(entry.kernel.clone()), JitOutcome::Compiled))
    }

    /// How many lookups found `kernel` compiled for `dtype`; `None` when it is not held.
    pub fn hits_of(&self, kernel: &CheckedKernel, dtype: DType) -> Option<u64> {
        let key = JitCache::key(kernel, dtype);
        self.lock().entries.get(&key).map(|e| e.hits)
    }

    pub fn stats(&self) -> JitCacheStats {
        let state = self.lock();
        JitCacheStats {
            entries: state.entries.len(),
            ..state.stats
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
