//! Example kernels (`examples/kf/*.kf`) and the programs a user starts from: `make-example-data`
//! and `show-npy` (used by `./x run-example`), and three programs that load a module built by
//! `keopsc build` through `keops-runtime` alone (no LLVM): `gauss-sum`, `knn`, `diffusion`.
//! `jit-gauss-sum` (feature `jit`) compiles its kernel at run time instead.

use keops_runtime::{HostArray, Module};
use std::path::Path;

/// A small deterministic generator (SplitMix64), so that the examples need no dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `len` uniform numbers in [0, 1), as f32.
    pub fn uniform(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f64() as f32).collect()
    }

    pub fn array(&mut self, rows: usize, cols: usize) -> HostArray {
        HostArray::from_f32(vec![rows, cols], self.uniform(rows * cols))
    }
}

/// Loads a module, with the error as text.
pub fn load_module(path: &Path) -> Result<Module, String> {
    Module::load(path).map_err(|e| e.to_string())
}

/// `args[k]` parsed, or `default`.
pub fn arg_or<T: std::str::FromStr>(args: &[String], k: usize, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match args.get(k) {
        Some(text) => text
            .parse()
            .map_err(|e| format!("argument {k} (`{text}`): {e}")),
        None => Ok(default),
    }
}
