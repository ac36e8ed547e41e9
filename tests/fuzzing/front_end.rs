//! The front end on arbitrary bytes: whatever the text, the library's entry points answer with
//! a result or diagnostics, never a panic.

use keops_runtime::{Category, HostArray};
use keopsc::diagnostic::render_all;
use keopsc::driver::{self, Backend};
use keopsc::opt::{self, OptBudget};
use keopsc::source::SourceFile;

/// Kernels larger than this (sum of the arguments' dimensions, or of the formula's node
/// dimensions) are checked and simplified but not evaluated: their inputs or the interpreter's
/// scratch would not fit a fuzzing process's memory limit.
const MAX_EVAL_ARG_DIMS: usize = 4096;
const MAX_EVAL_NODE_DIMS: usize = 100_000;

/// A small budget: the fuzzer's throughput, and a bound that does not depend on the clock.
pub fn budget() -> OptBudget {
    OptBudget {
        node_limit: 2_000,
        iter_limit: 4,
        ..OptBudget::default()
    }
}

/// Lexes, parses, checks and expands derivatives (`driver::compile`), renders the diagnostics,
/// simplifies and prints every kernel, and runs the small ones on the interpreter (N = 2,
/// M = 3). Panics only where the library does.
pub fn run(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let compiled = match driver::compile(SourceFile::new("<fuzz>", text.as_ref())) {
        Ok(c) => c,
        Err((source, diagnostics)) => {
            assert!(!diagnostics.is_empty(), "a refused file has diagnostics");
            let _ = render_all(&diagnostics, &source, false);
            return;
        }
    };
    for kernel in &compiled.kernels {
        let _ = kernel.to_string();
        match opt::optimize(kernel, &budget()) {
            Ok(optimized) => {
                let _ = optimized.to_string();
            }
            Err(d) => {
                let _ = d.render(&compiled.source, false);
            }
        }
        let arg_dims: usize = kernel.signature.args.iter().map(|a| a.dim).sum();
        let node_dims: usize = kernel.formula.info.iter().map(|i| i.dim).sum();
        if arg_dims <= MAX_EVAL_ARG_DIMS && node_dims <= MAX_EVAL_NODE_DIMS {
            let inputs = small_inputs(kernel, 2, 3);
            let _ = driver::evaluate(kernel, &inputs, Backend::Interp);
        }
    }
}

/// Inputs for every argument of `kernel`: `(n, dim)`, `(m, dim)` or `(1, dim)` arrays of
/// varied values in [-1, 1].
pub fn small_inputs(
    kernel: &keopsc::check::CheckedKernel,
    n: usize,
    m: usize,
) -> Vec<(String, HostArray)> {
    kernel
        .signature
        .args
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let rows = match a.category {
                Category::I => n,
                Category::J => m,
                Category::Param => 1,
            };
            let data = (0..rows * a.dim)
                .map(|e| ((k * 131 + e * 7 + 3) as f64).sin())
                .collect();
            (a.name.clone(), HostArray::from_f64(vec![rows, a.dim], data))
        })
        .collect()
}
