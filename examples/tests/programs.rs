//! The example programs end to end: modules built from examples/kf/*.kf by the compiler's
//! library (what `keopsc build` runs), loaded and run by programs that link keops-runtime
//! only; and a check that those programs indeed do not link LLVM.

use keops_runtime::DType;
use keopsc::artifact::{build, Placement};
use keopsc::codegen::CpuTarget;
use keopsc::driver;
use keopsc::source::SourceFile;
use std::path::{Path, PathBuf};
use std::process::Command;

fn build_example(kf: &str, dir: &Path) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kf").join(kf);
    let text = std::fs::read_to_string(&path).expect("readable");
    let source = SourceFile::new(path.display().to_string(), text);
    let compiled = driver::compile(source).unwrap_or_else(|_| panic!("{kf} compiles"));
    let out = dir.join(kf.replace(".kf", ".kmod"));
    build(
        &compiled,
        &[DType::F32, DType::F64],
        &CpuTarget::host_level(),
        &out,
        &[],
        Placement::Replace,
    )
    .expect("builds");
    out
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn programs_load_and_run_modules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gauss = build_example("gauss.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_gauss-sum"),
        &[gauss.to_str().unwrap(), "2000", "3001"],
    );
    assert!(out.contains("largest relative difference"), "{out}");
    let knn = build_example("knn.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_knn"),
        &[knn.to_str().unwrap(), "1500", "2001"],
    );
    assert!(out.contains("neighbours of x[0]"), "{out}");
    let diffusion = build_example("diffusion.kf", dir.path());
    let out = run(
        env!("CARGO_BIN_EXE_diffusion"),
        &[diffusion.to_str().unwrap(), "3000", "2"],
    );
    assert!(out.contains("step 2"), "{out}");
}

#[test]
fn module_programs_do_not_link_llvm() {
    for program in [
        env!("CARGO_BIN_EXE_gauss-sum"),
        env!("CARGO_BIN_EXE_knn"),
        env!("CARGO_BIN_EXE_diffusion"),
    ] {
        let Ok(output) = Command::new("ldd").arg(program).output() else {
            eprintln!("SKIPPED: `ldd` is not available to list the libraries of {program}");
            return;
        };
        let libraries = String::from_utf8_lossy(&output.stdout);
        assert!(
            !libraries.to_lowercase().contains("llvm"),
            "{program} links LLVM:\n{libraries}"
        );
    }
}
