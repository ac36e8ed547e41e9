//! Helpers shared by the end-to-end tests.

use keops_runtime::HostArray;
use keopsc::driver::{self, Backend, CompiledFile};
use keopsc::source::SourceFile;

/// Compiles source text, panicking with the rendered diagnostics if it does not compile.
pub fn compile_ok(name: &str, text: &str) -> CompiledFile {
    match driver::compile(SourceFile::new(name, text)) {
        Ok(c) => c,
        Err((source, diagnostics)) => panic!(
            "{name} does not compile:\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        ),
    }
}

/// Runs the only (or named) kernel of `text` through the interpreter on f64 row-major arrays.
pub fn run_interp(
    text: &str,
    kernel: Option<&str>,
    args: &[(&str, Vec<usize>, Vec<f64>)],
) -> HostArray {
    let compiled = compile_ok("<test>", text);
    let kernel = match kernel {
        Some(name) => compiled.kernel(name).expect("kernel exists"),
        None => &compiled.kernels[0],
    };
    let inputs: Vec<(String, HostArray)> = args
        .iter()
        .map(|(n, shape, data)| {
            (
                n.to_string(),
                HostArray::from_f64(shape.clone(), data.clone()),
            )
        })
        .collect();
    driver::evaluate(kernel, &inputs, Backend::Interp)
        .expect("evaluation succeeds")
        .output
}

pub mod fuzzing;
