//! Example kernels (`examples/kf/*.kf`) and the programs a user starts from: `make-example-data`
//! and `show-npy` (used by `./x run-example`), and three programs that load a module built by
//! `keopsc build` through `keops-runtime` alone (no LLVM): `gauss-sum`, `knn`, `diffusion`.
//! `diffusion-curvature` computes the diffusion curvature of point clouds (sphere, plane,
//! saddle, torus, or the user's) from a module built with `--same y=x`, and plots it
//! (`plot`: PNG scatter plots without dependencies).
//! `gauss-fit` trains through a module built with its gradients (`keopsc build --grad`): the
//! runtime alone computes them. `jit-gauss-sum` (feature `jit`) compiles its kernel at run
//! time instead.
//!
//! The three module programs are tools as well as examples: each takes the user's `.npy`
//! points (`--x`, `--points`, ...) and writes its result as `.npy` (`-o`); without input files
//! they run on random points. `PROGRAM --help` says how.

pub mod plot;

use keops_runtime::{DType, HostArray, Module};
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

/// Reads a `.npy` array of points (float32 or float64, C or Fortran order), naming the option
/// it was given with in errors.
pub fn read_npy(path: &Path, option: &str) -> Result<HostArray, String> {
    HostArray::read_npy(path).map_err(|e| format!("{option} `{}`: {e}", path.display()))
}

/// Reads points: a 2-d array `(rows, dim)`, or a 1-d array of `rows` points of dimension 1.
pub fn read_points(path: &Path, option: &str) -> Result<HostArray, String> {
    let mut array = read_npy(path, option)?;
    match array.shape.as_slice() {
        [_, _] => Ok(array),
        [rows] => {
            array.shape = vec![*rows, 1];
            Ok(array)
        }
        other => Err(format!(
            "{option} `{}`: expected an array of points (N, D), found shape {other:?}",
            path.display()
        )),
    }
}

/// A number given on the command line, or read from a `.npy` file holding one number (shape
/// `()`, `(1,)` or `(1, 1)`).
pub fn number_or_npy(text: &str, option: &str) -> Result<f64, String> {
    if let Ok(value) = text.parse::<f64>() {
        return Ok(value);
    }
    let array = read_npy(Path::new(text), option)?;
    match array.to_f64().as_slice() {
        [value] => Ok(*value),
        values => Err(format!(
            "{option} `{text}`: expected one number, found {} in an array of shape {:?}",
            values.len(),
            array.shape
        )),
    }
}

/// An array of `dtype` holding `values` (rounded to f32 when `dtype` is float32).
pub fn array_of(dtype: DType, shape: Vec<usize>, values: Vec<f64>) -> HostArray {
    match dtype {
        DType::F64 => HostArray::from_f64(shape, values),
        DType::F32 => HostArray::from_f32(shape, values.into_iter().map(|v| v as f32).collect()),
    }
}

/// Writes an array, naming the option in errors.
pub fn write_npy(array: &HostArray, path: &Path, option: &str) -> Result<(), String> {
    array
        .write_npy(path)
        .map_err(|e| format!("{option} `{}`: {e}", path.display()))
}

/// Checks, before any work, that `path` can be written: its directory exists. (The file
/// itself is written once the result is known.)
pub fn check_output(path: &Path, option: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.is_dir() {
        return Err(format!("{option} `{}`: is a directory", path.display()));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{option} `{}`: the directory `{}` does not exist",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Squared Euclidean distance between row `i` of `a` and row `j` of `b` (both `dim` wide), in
/// f64: the plain computation the programs check the kernels against.
pub fn sq_dist(a: &[f64], i: usize, b: &[f64], j: usize, dim: usize) -> f64 {
    (0..dim)
        .map(|c| (a[i * dim + c] - b[j * dim + c]).powi(2))
        .sum()
}
