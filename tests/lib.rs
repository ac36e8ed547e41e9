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

/// Builds the kernels of the `.kf` file at `kf` (a path from the repository's root) into the
/// module directory `out`, for f32 and f64 on this machine's CPU, with their gradients when
/// `gradients`: what `keopsc build [--grad]` does, for the lang-spec's Rust examples.
pub fn build_module(
    kf: &str,
    out: &str,
    gradients: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(kf);
    let text = std::fs::read_to_string(&path)?;
    let file = driver::compile(SourceFile::new(kf, text)).map_err(|(source, diagnostics)| {
        keopsc::diagnostic::render_all(&diagnostics, &source, false)
    })?;
    let build = if gradients {
        keopsc::artifact::build_with_gradients
    } else {
        keopsc::artifact::build
    };
    build(
        &file,
        &[keops_runtime::DType::F32, keops_runtime::DType::F64],
        &keopsc::codegen::host_cpu(),
        std::path::Path::new(out),
        &[],
        keopsc::artifact::Placement::Replace,
    )?;
    Ok(())
}

/// The Rust examples of `lang-spec/modules.md`, run as doc tests: each is a whole program, the
/// lines that make its data (a module built from `examples/kf/gauss.kf`, arrays) starting
/// with `# `.
#[doc = include_str!("../lang-spec/modules.md")]
pub mod lang_spec_modules {}
