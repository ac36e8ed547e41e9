//! The fuzzers' properties (`keops_tests::fuzzing`, driven by libFuzzer in `fuzz/`) without the
//! fuzzer: on the seed files, on fixed pseudo-random inputs, and on every input a fuzzer found
//! (`fuzz/regressions/TARGET/*`, one file per finding, kept after the fix).

use keops_runtime::ReductionKind;
use keops_tests::fuzzing::{differential, front_end, generate, loader};
use keopsc::check::operators::OPERATORS;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    out.sort();
    out
}

/// The inputs a fuzzer found for `target`.
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    files(&root().join("fuzz/regressions").join(target))
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("regression readable");
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// The front end's seeds (what `scripts/fuzz.sh` copies into its corpus): every `.kf` file of
/// `tests/kf` and `examples/kf`, and every fenced block of `lang-spec`.
fn front_end_seeds() -> Vec<(String, String)> {
    let root = root();
    let mut seeds = Vec::new();
    for dir in [
        "tests/kf/pass",
        "tests/kf/fail",
        "tests/kf/run",
        "examples/kf",
    ] {
        for path in files(&root.join(dir)) {
            if path.extension().is_some_and(|e| e == "kf") {
                let text = std::fs::read_to_string(&path).expect("readable");
                seeds.push((path.display().to_string(), text));
            }
        }
    }
    for path in files(&root.join("lang-spec")) {
        let text = std::fs::read_to_string(&path).expect("readable");
        let mut block: Option<(usize, String)> = None;
        for (k, line) in text.lines().enumerate() {
            let fence = line.trim_start().starts_with("```");
            match (&mut block, fence) {
                (None, true) => block = Some((k + 1, String::new())),
                (Some((start, body)), true) => {
                    seeds.push((format!("{}:{start}", path.display()), std::mem::take(body)));
                    block = None;
                }
                (Some((_, body)), false) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, false) => {}
            }
        }
    }
    seeds
}

#[test]
fn front_end_on_every_seed_and_finding() {
    let seeds = front_end_seeds();
    assert!(seeds.len() > 100, "seeds found: {}", seeds.len());
    for (name, text) in &seeds {
        let result = std::panic::catch_unwind(|| front_end::run(text.as_bytes()));
        assert!(result.is_ok(), "the front end panicked on {name}");
    }
    for (name, bytes) in regressions("front_end") {
        let result = std::panic::catch_unwind(|| front_end::run(&bytes));
        assert!(result.is_ok(), "the front end panicked on {name}");
    }
}

/// Fixed pseudo-random inputs (xorshift), so that the suite runs the differential property on
/// the same kernels every time.
fn fixed_inputs(seed: u64, count: usize, len: usize) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| (0..len).map(|_| next() as u8).collect())
        .collect()
}

#[test]
fn generated_kernels_reach_every_operator_and_reduction() {
    let mut called = BTreeSet::new();
    let mut reductions = BTreeSet::new();
    for bytes in fixed_inputs(7, 20_000, 200) {
        let case = generate::case(&bytes);
        let text = &case.reduction;
        let mut start = None;
        for (k, c) in text.char_indices() {
            if c.is_ascii_alphanumeric() || c == '_' {
                start.get_or_insert(k);
            } else {
                if let Some(s) = start.take() {
                    if c == '(' {
                        called.insert(text[s..k].to_string());
                    }
                }
            }
        }
        reductions.insert(text[..text.find('(').expect("a call")].to_string());
    }
    let missing: Vec<&str> = OPERATORS
        .iter()
        .map(|e| e.name)
        .filter(|n| !called.contains(*n))
        .collect();
    assert!(missing.is_empty(), "operators never generated: {missing:?}");
    let missing: Vec<String> = ReductionKind::ALL
        .iter()
        .map(|k| k.to_string())
        .filter(|n| !reductions.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "reductions never generated: {missing:?}"
    );
}

#[test]
fn generated_kernels_are_well_typed() {
    for bytes in fixed_inputs(11, 2_000, 200) {
        let case = generate::case(&bytes);
        let text = case.kernel_text();
        let source = keopsc::source::SourceFile::new("<generated>", text.as_str());
        if let Err((source, diagnostics)) = keopsc::driver::compile(source) {
            panic!(
                "{}",
                keopsc::diagnostic::render_all(&diagnostics, &source, false)
            );
        }
    }
}

#[test]
fn cpu_backend_agrees_with_the_interpreter_on_generated_kernels() {
    let mut inputs: Vec<(String, Vec<u8>)> = fixed_inputs(3, 24, 120)
        .into_iter()
        .enumerate()
        .map(|(k, b)| (format!("fixed input {k}"), b))
        .collect();
    inputs.extend(regressions("differential"));
    for (name, bytes) in inputs {
        if let Err(e) = differential::run(&bytes) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn module_loader_refuses_damaged_modules() {
    let mut inputs: Vec<(String, Vec<u8>)> = fixed_inputs(5, 300, 64)
        .into_iter()
        .enumerate()
        .map(|(k, b)| (format!("fixed input {k}"), b))
        .collect();
    inputs.extend(regressions("module_loader"));
    for (name, bytes) in inputs {
        if let Err(e) = loader::run(&bytes) {
            panic!("{name}: {e}");
        }
    }
}

/// Found by `module_loader`: a manifest whose description of the library was damaged (here an
/// argument's dimension, an entry's lanes, the f32 and f64 symbols swapped, the target
/// triple) loaded, since only the library had a checksum; calls then read and wrote out of
/// bounds. The manifest's own checksum refuses it.
#[test]
fn a_manifest_that_describes_its_library_wrongly_is_refused() {
    use keops_runtime::manifest::MANIFEST_FILE;
    use keops_runtime::module::{LoadError, Module};
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("m.kmod");
    let compiled = keops_tests::compile_ok("<loader>", loader::SOURCE);
    keopsc::artifact::build(
        &compiled,
        &[keops_runtime::DType::F32, keops_runtime::DType::F64],
        &keopsc::codegen::host_cpu(),
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
    )
    .expect("builds");
    let path = out.join(MANIFEST_FILE);
    let built = std::fs::read_to_string(&path).expect("manifest");
    Module::load(&out).expect("the module as built loads");
    let damages: [(&str, &str); 4] = [
        ("\"dim\": 3", "\"dim\": 30"),
        ("\"lanes\": ", "\"lanes\": 1"),
        ("_float32\"", "_float64\""),
        ("x86_64-", "x86_64="),
    ];
    for (from, to) in damages {
        assert!(built.contains(from), "{from}");
        std::fs::write(&path, built.replacen(from, to, 1)).expect("written");
        match Module::load(&out) {
            Err(LoadError::Corrupt { message, .. }) => {
                assert!(message.contains("checksum"), "{from} -> {to}: {message}")
            }
            Err(e) => panic!("{from} -> {to}: refused for another reason: {e}"),
            Ok(_) => panic!("{from} -> {to}: a damaged manifest was loaded"),
        }
    }
}
