//! A process-wide table of kernels compiled to host code in this process (the JIT), so that a
//! kernel run again is not compiled again. The backward kernels of a vjp are checked kernels
//! built anew from the plan, and compiling one costs tens of milliseconds (optimiser and LLVM),
//! far more than running it on small inputs; every caller of `vjp::run_plan` / `run_many`
//! (the CLI, the Python package, the JAX bindings) and every [`Jit`](crate::jit::Jit) goes
//! through [`JitCache::global`].
//!
//! Two tables, one lookup:
//! - **optimised kernels**, keyed by the checked kernel exactly (its signature and its formula,
//!   one node per line: every operator with its parameters, constants printed so that they
//!   read back to the same f64), at the host CPU's prices with the default budget, a count
//!   (the result never depends on load): a kernel asked for in f32 and then in f64 goes
//!   through the optimiser once;
//! - **compiled code**, keyed by a fingerprint of what code generation reads: the optimised
//!   kernel (signature and simplified formula), the target (the host CPU's name and features)
//!   and the dtype. Two checked kernels that simplify to the same formula share their code.
//!
//! With the `cuda` feature it also holds GPU kernels loaded on the first GPU ([`JitCache::get_gpu`]),
//! keyed by the checked kernel (they are optimised at the GPU's prices, on their own path).
//!
//! Each table is bounded: past its capacity the least recently used entry is dropped (a caller
//! still holding it keeps it alive through its `Arc`). Concurrent requests for one entry are
//! compiled once: the first compiles while the others wait for its result (a failure is not
//! stored: the next request tries again); requests for other entries are not held up.

use crate::check::CheckedKernel;
use crate::codegen::{CpuTarget, JitCrossKernel, JitKernel};
use crate::driver::backend::EvalError;
use crate::driver::pipeline::{
    compile_cpu_cross_optimized, compile_cpu_optimized, on_one_stack, optimized,
};
use crate::opt::{OptBudget, OptimizedKernel};
use keops_runtime::DType;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// How a lookup went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitOutcome {
    /// Compiled before: nothing was compiled.
    Hit,
    /// Compiled now, and stored.
    Compiled,
}

/// Counts of the compiled-code table since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitCacheStats {
    pub hits: u64,
    pub compiled: u64,
    pub evicted: u64,
    /// Entries held now.
    pub entries: usize,
    /// Kernels the optimiser ran on (the optimised-kernel table's misses).
    pub optimised: u64,
}

pub struct JitCache {
    code: Table,
    optimised: Table,
    /// The host CPU, as code generation targets it (part of every code key).
    target: OnceLock<CpuTarget>,
}

impl JitCache {
    /// Entries the process-wide table holds at most. A compiled kernel holds its LLVM context
    /// and machine code: 0.8 MB for the backward kernel of a Gaussian sum (measured), so the
    /// full table holds about 100 MB.
    pub const DEFAULT_CAPACITY: usize = 128;

    /// An empty table of at most `capacity` compiled kernels (at least one), and as many
    /// optimised ones.
    pub fn new(capacity: usize) -> JitCache {
        JitCache {
            code: Table::new(capacity),
            optimised: Table::new(capacity),
            target: OnceLock::new(),
        }
    }

    /// The table every default runner of the library uses.
    pub fn global() -> &'static JitCache {
        static GLOBAL: OnceLock<JitCache> = OnceLock::new();
        GLOBAL.get_or_init(|| JitCache::new(JitCache::DEFAULT_CAPACITY))
    }

    /// `kernel` compiled for `dtype`: from the table, or compiled now and stored.
    pub fn get(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<JitKernel>, JitOutcome), EvalError> {
        let optimized = self.optimized(kernel)?;
        let key = self.code_key("tiles", &optimized, dtype);
        self.code.get_or_compile(key, || {
            on_one_stack(|| compile_cpu_optimized(&optimized, dtype))
        })
    }

    /// The cross pass of `kernel` (its last `columns` components summed over the rows, see
    /// [`compile_cpu_cross`](crate::driver::pipeline::compile_cpu_cross)) compiled for `dtype`:
    /// from the table, or compiled now and stored.
    pub fn get_cross(
        &self,
        kernel: &CheckedKernel,
        columns: usize,
        dtype: DType,
    ) -> Result<(Arc<JitCrossKernel>, JitOutcome), EvalError> {
        let optimized = self.optimized(kernel)?;
        let key = self.code_key(&format!("cross pass, {columns} columns"), &optimized, dtype);
        self.code.get_or_compile(key, || {
            on_one_stack(|| compile_cpu_cross_optimized(&optimized, columns, dtype))
        })
    }

    /// `kernel` optimised at the host CPU's prices (the default budget): from the table, or
    /// optimised now and stored.
    pub fn optimized(&self, kernel: &CheckedKernel) -> Result<Arc<OptimizedKernel>, EvalError> {
        let (optimized, _) = self.optimised.get_or_compile(checked_key(kernel), || {
            optimized(kernel, &OptBudget::default())
        })?;
        Ok(optimized)
    }

    /// `kernel`'s GPU code for `dtype` loaded on the first GPU ([`crate::driver::pipeline::load_gpu`]):
    /// from the table, or compiled and loaded now and stored.
    #[cfg(feature = "cuda")]
    pub fn get_gpu(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<keops_runtime::cuda::CudaKernel>, JitOutcome), EvalError> {
        let key = format!("cuda\n{dtype}\n{}", checked_key(kernel));
        self.code
            .get_or_compile(key, || crate::driver::pipeline::load_gpu(kernel, dtype))
    }

    /// [`JitCache::get_gpu`] for the block-sparse GPU kernel (KeOps's ranges).
    #[cfg(feature = "cuda")]
    pub fn get_gpu_ranges(
        &self,
        kernel: &CheckedKernel,
        dtype: DType,
    ) -> Result<(Arc<keops_runtime::cuda::CudaKernel>, JitOutcome), EvalError> {
        let key = format!("cuda ranges\n{dtype}\n{}", checked_key(kernel));
        self.code.get_or_compile(key, || {
            crate::driver::pipeline::load_gpu_entry(
                kernel,
                dtype,
                crate::codegen::nvptx::GpuEntry::Ranges,
            )
        })
    }

    /// The key of code compiled from `optimized` for `dtype` on the host CPU; `kind` says
    /// which function (tiles, a cross pass).
    fn code_key(&self, kind: &str, optimized: &OptimizedKernel, dtype: DType) -> String {
        let target = self.target.get_or_init(crate::codegen::host_cpu);
        format!(
            "{kind}\n{dtype}\n{} {} {}\n{}\n{}",
            target.triple, target.cpu, target.features, optimized.signature, optimized.formula
        )
    }

    /// How many lookups found `kernel` compiled for `dtype`; `None` when it is not held.
    pub fn hits_of(&self, kernel: &CheckedKernel, dtype: DType) -> Option<u64> {
        let optimized = self
            .optimised
            .held(&checked_key(kernel))
            .and_then(|o| o.downcast::<OptimizedKernel>().ok())?;
        self.code
            .hits_of(&self.code_key("tiles", &optimized, dtype))
    }

    pub fn stats(&self) -> JitCacheStats {
        let code = self.code.lock();
        JitCacheStats {
            entries: code.entries.len(),
            optimised: self.optimised.lock().stats.compiled,
            ..code.stats
        }
    }

    pub fn capacity(&self) -> usize {
        self.code.capacity
    }
}

/// The key of a checked kernel: its signature and its formula exactly.
fn checked_key(kernel: &CheckedKernel) -> String {
    format!("{}\n{}", kernel.signature, kernel.formula)
}

/// A bounded table of values built once per key, least recently used out first.
struct Table {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Arc<Slot>>,
    /// Incremented at each lookup: an entry's `last_used` orders the entries by recency.
    clock: u64,
    stats: JitCacheStats,
}

/// One entry: its value once built (the lock is held while it is built, so that concurrent
/// requests wait for it instead of building it again).
#[derive(Default)]
struct Slot {
    value: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    last_used: std::sync::atomic::AtomicU64,
    /// Lookups that found the value built.
    hits: std::sync::atomic::AtomicU64,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held left the data consistent (every update is one statement
    // on plain data, and a value is stored only once built): go on with it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn new(capacity: usize) -> Table {
        Table {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// The value of `key`: from the table, or built by `build` now and stored.
    fn get_or_compile<T: Any + Send + Sync>(
        &self,
        key: String,
        build: impl FnOnce() -> Result<T, EvalError>,
    ) -> Result<(Arc<T>, JitOutcome), EvalError> {
        use std::sync::atomic::Ordering::Relaxed;
        let typed = |value: Arc<dyn Any + Send + Sync>| {
            value
                .downcast::<T>()
                .expect("each key holds one kind of value")
        };
        let slot = self.slot(&key);
        let mut value = locked(&slot.value);
        if let Some(found) = value.as_ref() {
            slot.hits.fetch_add(1, Relaxed);
            self.lock().stats.hits += 1;
            return Ok((typed(found.clone()), JitOutcome::Hit));
        }
        let built: Arc<dyn Any + Send + Sync> = match build() {
            Ok(built) => Arc::new(built),
            Err(e) => {
                // Nothing is stored for a failure, and nothing was evicted for it.
                let mut state = self.lock();
                if state
                    .entries
                    .get(&key)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    state.entries.remove(&key);
                }
                return Err(e);
            }
        };
        *value = Some(built.clone());
        let mut state = self.lock();
        state.stats.compiled += 1;
        self.evict_beyond_capacity(&mut state, &key);
        Ok((typed(built), JitOutcome::Compiled))
    }

    /// The entry of `key`, made empty if there is none; marked as used now.
    fn slot(&self, key: &str) -> Arc<Slot> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let slot = state.entries.entry(key.to_string()).or_default().clone();
        slot.last_used.store(now, Relaxed);
        slot
    }

    /// Drops the least recently used entries but `kept` (just built) while the table holds
    /// more than its capacity. Entries being built count, so that the table stays bounded
    /// however many threads compile at once.
    fn evict_beyond_capacity(&self, state: &mut State, kept: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        while state.entries.len() > self.capacity {
            let oldest = state
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != kept)
                .min_by_key(|(_, slot)| slot.last_used.load(Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(oldest) => {
                    state.entries.remove(&oldest);
                    state.stats.evicted += 1;
                }
                None => break,
            }
        }
    }

    /// The value of `key` if it is built (without marking it used).
    fn held(&self, key: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        let slot = self.lock().entries.get(key)?.clone();
        let value = locked(&slot.value).clone();
        value
    }

    fn hits_of(&self, key: &str) -> Option<u64> {
        let slot = self.lock().entries.get(key)?.clone();
        let built = locked(&slot.value).is_some();
        built.then(|| slot.hits.load(std::sync::atomic::Ordering::Relaxed))
    }
}
