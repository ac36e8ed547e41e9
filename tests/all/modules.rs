//! Modules built by `keopsc::artifact::build`, loaded by `keops_runtime::Module::load`, and the
//! compile cache: results against the interpreter, every refusal (version, CPU features,
//! damaged files), argument errors that name the argument, many threads on one kernel, and
//! cache entries that are damaged or raced for.

use keops_runtime::manifest::MANIFEST_FILE;
use keops_runtime::ndarray::Array2;
use keops_runtime::{ArgumentError, ArrayRef, DType, HostArray, LoadError, Module, OutputRef};
use keopsc::artifact::cache::{CacheOutcome, CompileCache};
use keopsc::codegen::nvptx::GpuEntry;
use keopsc::codegen::CpuTarget;
use keopsc::driver::{self, Backend, CompiledFile};
use keopsc::source::SourceFile;
use std::path::Path;

const SOURCE: &str = "
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) * s) * b, 0)
}
kernel nearest {
    x = Vi(3)
    y = Vj(3)
    ArgKMin_Reduction(SqDist(x, y), 3, 1)
}
";

fn compiled(text: &str) -> CompiledFile {
    driver::compile(SourceFile::new("<module test>", text)).unwrap_or_else(|_| panic!("compiles"))
}

fn build(dir: &Path, target: &CpuTarget) -> std::path::PathBuf {
    let out = dir.join("m.kmod");
    keopsc::artifact::build(
        &compiled(SOURCE),
        &[DType::F32, DType::F64],
        target,
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
    )
    .expect("builds");
    out
}

/// Numbers in [0, 1) of `shape` in `dtype`.
fn random_array(dtype: DType, shape: Vec<usize>, seed: u64) -> HostArray {
    let data = random(shape.iter().product(), seed);
    match dtype {
        DType::F64 => HostArray::from_f64(shape, data),
        DType::F32 => HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
    }
}

fn random(len: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

#[test]
fn a_module_gives_the_interpreters_results_for_every_kernel_and_dtype() {
    let dir = tempfile::tempdir().expect("temp dir");
    for target in [
        keopsc::codegen::host_cpu_level(),
        keopsc::codegen::cpu_level("x86-64").expect("a level"),
    ] {
        let module = Module::load(build(dir.path(), &target)).expect("loads");
        let file = compiled(SOURCE);
        let (n, m) = (37, 1001);
        for dtype in [DType::F32, DType::F64] {
            let make = |shape: Vec<usize>, seed| random_array(dtype, shape, seed);
            let inputs = [
                ("x".to_string(), make(vec![n, 3], 1)),
                ("y".to_string(), make(vec![m, 3], 2)),
                ("b".to_string(), make(vec![m, 1], 3)),
                ("s".to_string(), make(vec![1], 4)),
            ];
            check_every_kernel(&module, &file, &inputs, dtype, &target.cpu);
        }
    }
}

/// Every kernel of `file` in `module` against the interpreter on `inputs` (those it reads).
fn check_every_kernel(
    module: &Module,
    file: &CompiledFile,
    inputs: &[(String, HostArray)],
    dtype: DType,
    cpu: &str,
) {
    for checked in &file.kernels {
        let used: Vec<(String, HostArray)> = inputs
            .iter()
            .filter(|(name, _)| checked.signature.args.iter().any(|a| &a.name == name))
            .cloned()
            .collect();
        let want = driver::evaluate(checked, &used, Backend::Interp)
            .expect("runs")
            .output
            .to_f64();
        let kernel = module.kernel(&checked.name).expect("present");
        let named: Vec<(&str, ArrayRef)> =
            used.iter().map(|(n, a)| (n.as_str(), a.view())).collect();
        let got = kernel.call_named(&named).expect("runs");
        assert_eq!(got.dtype(), dtype);
        let got = got.to_f64();
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-11 };
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{} ({dtype}, {cpu}): {g} vs {w}",
                checked.name
            );
        }
    }
}

#[test]
fn arguments_are_checked_against_the_manifest_with_their_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module =
        Module::load(build(dir.path(), &keopsc::codegen::host_cpu_level())).expect("loads");
    let kernel = module.kernel("gauss").expect("present");
    let x = vec![0.0f32; 6];
    let (s2, s3, s1) = ([2, 3], [3, 3], [1]);
    let y = vec![0.0f32; 9];
    let b = vec![0.0f32; 3];
    let bshape = [3, 1];
    let ok = [
        ("x", ArrayRef::f32(&s2, &x)),
        ("y", ArrayRef::f32(&s3, &y)),
        ("b", ArrayRef::f32(&bshape, &b)),
    ];
    // Missing `s`: said as a program passed it (no command-line advice).
    match kernel.call_named(&ok) {
        Err(e @ ArgumentError::Missing { .. }) => {
            assert_eq!(e.to_string(), "missing argument `s` (Pm(1))")
        }
        other => panic!("{other:?}"),
    }
    let s = [1.0f32];
    // One array too many, in argument order.
    let five: Vec<ArrayRef> = [&x[..], &y, &b, &s, &s]
        .iter()
        .zip([&s2[..], &s3, &bshape, &s1, &s1])
        .map(|(data, shape)| ArrayRef::f32(shape, data))
        .collect();
    match kernel.call(&five) {
        Err(e @ ArgumentError::TooMany { given: 5, .. }) => assert_eq!(
            e.to_string(),
            "5 arrays given; the kernel takes 4 (`x`, `y`, `b`, `s`)"
        ),
        other => panic!("{other:?}"),
    }
    let wrong_shape = [3, 2];
    let err = kernel
        .call(&[
            ArrayRef::f32(&s2, &x),
            ArrayRef::f32(&wrong_shape, &x),
            ArrayRef::f32(&bshape, &b),
            ArrayRef::f32(&s1, &s),
        ])
        .expect_err("y has dimension 3");
    assert!(err.to_string().contains("`y`"), "{err}");
    let s64 = [1.0f64];
    let err = kernel
        .call(&[
            ArrayRef::f32(&s2, &x),
            ArrayRef::f32(&s3, &y),
            ArrayRef::f32(&bshape, &b),
            ArrayRef::f64(&s1, &s64),
        ])
        .expect_err("mixed dtypes");
    assert!(err.to_string().contains("`s`"), "{err}");
    let short = [0.0f32; 5];
    let err = kernel
        .call(&[
            ArrayRef::f32(&s2, &short),
            ArrayRef::f32(&s3, &y),
            ArrayRef::f32(&bshape, &b),
            ArrayRef::f32(&s1, &s),
        ])
        .expect_err("x holds 5 numbers");
    assert!(
        err.to_string().contains("`x`") && err.to_string().contains('5'),
        "{err}"
    );
    match kernel.call_named(&[("z", ArrayRef::f32(&s1, &s))]) {
        Err(ArgumentError::Unknown { name, .. }) => assert_eq!(name, "z"),
        other => panic!("{other:?}"),
    }
    // The output buffer must fit.
    let mut out = vec![0.0f32; 1];
    let inputs = [
        ArrayRef::f32(&s2, &x),
        ArrayRef::f32(&s3, &y),
        ArrayRef::f32(&bshape, &b),
        ArrayRef::f32(&s1, &s),
    ];
    assert!(matches!(
        kernel.call_into(&inputs, OutputRef::F32(&mut out)),
        Err(ArgumentError::Output { .. })
    ));
    let mut out = vec![0.0f32; 2];
    kernel
        .call_into(&inputs, OutputRef::F32(&mut out))
        .expect("fits");
    assert_eq!(out, vec![0.0, 0.0]);
}

#[test]
fn a_rebuilt_module_at_the_same_path_runs_its_new_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("k.kmod");
    let make = |formula: &str| {
        let text =
            format!("kernel k {{\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction({formula}, 0)\n}}\n");
        keopsc::artifact::build(
            &compiled(&text),
            &[DType::F64],
            &keopsc::codegen::host_cpu_level(),
            &out,
            &[],
            keopsc::artifact::Placement::Replace,
        )
        .expect("builds");
        Module::load(&out)
            .expect("loads")
            .kernel("k")
            .expect("present")
    };
    let one = [1.0f64];
    let shape = [1, 1];
    let call = |k: &keops_runtime::Kernel| {
        k.call(&[ArrayRef::f64(&shape, &one), ArrayRef::f64(&shape, &one)])
            .expect("runs")
            .to_f64()
    };
    let first = make("x + y");
    assert_eq!(call(&first), vec![2.0]);
    // Still loaded in this process while the module is rebuilt with other code.
    let second = make("x - y");
    assert_eq!(call(&second), vec![0.0]);
    assert_eq!(call(&first), vec![2.0]);
}

#[test]
fn many_threads_call_one_kernel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module =
        Module::load(build(dir.path(), &keopsc::codegen::host_cpu_level())).expect("loads");
    let kernel = module.kernel("gauss").expect("present");
    let n = 300;
    let x = Array2::from_shape_vec((n, 3), random(n * 3, 5)).expect("shape");
    let b = Array2::from_shape_vec((n, 1), random(n, 6)).expect("shape");
    let s = keops_runtime::ndarray::arr1(&[2.0f64]);
    let call = || {
        kernel
            .call(&[
                ArrayRef::try_from(&x).expect("standard layout"),
                ArrayRef::try_from(&x).expect("standard layout"),
                ArrayRef::try_from(&b).expect("standard layout"),
                ArrayRef::try_from(&s).expect("standard layout"),
            ])
            .expect("runs")
            .to_f64()
    };
    let first = call();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(call)).collect();
        for h in handles {
            assert_eq!(h.join().expect("no panic"), first);
        }
    });
    // A transposed view is not in standard layout: refused, not misread.
    let t = x.t();
    assert!(ArrayRef::try_from(&t).is_err());
}

/// The module's shared library, as its manifest names it.
fn library(module: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(module.join(MANIFEST_FILE)).expect("manifest");
    let manifest: keops_runtime::Manifest = serde_json::from_str(&text).expect("a manifest");
    module.join(manifest.library)
}

fn rewrite_manifest(module: &Path, edit: impl Fn(String) -> String) {
    let path = module.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).expect("manifest");
    std::fs::write(&path, edit(text)).expect("written");
}

#[test]
fn damaged_or_foreign_modules_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = keopsc::codegen::host_cpu_level();

    let module = build(dir.path(), &target);
    let mut bytes = std::fs::read(library(&module)).expect("library");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(library(&module), &bytes).expect("written");
    assert!(matches!(
        Module::load(&module),
        Err(LoadError::Corrupt { .. })
    ));

    let module = build(dir.path(), &target);
    std::fs::write(library(&module), b"truncated").expect("written");
    assert!(matches!(
        Module::load(&module),
        Err(LoadError::Corrupt { .. })
    ));

    let module = build(dir.path(), &target);
    rewrite_manifest(&module, |t| {
        t.replace(
            "\"compiler_version\": \"",
            "\"compiler_version\": \"0.0.0-other-",
        )
    });
    let err = Module::load(&module).err().expect("refused");
    assert!(matches!(err, LoadError::Version { .. }), "{err}");
    assert!(err.to_string().contains("keopsc build"), "{err}");

    let module = build(dir.path(), &target);
    rewrite_manifest(&module, |t| t.replace("\"format\": 1", "\"format\": 99"));
    assert!(matches!(
        Module::load(&module),
        Err(LoadError::Version { .. })
    ));

    let module = build(dir.path(), &target);
    rewrite_manifest(&module, |t| {
        t.replace("\"sse2\"", "\"a-feature-no-cpu-has\"")
    });
    let err = Module::load(&module).err().expect("refused");
    assert!(matches!(err, LoadError::CpuFeatures { .. }), "{err}");
    assert!(err.to_string().contains("a-feature-no-cpu-has"), "{err}");

    let module = build(dir.path(), &target);
    rewrite_manifest(&module, |t| t[..t.len() / 2].to_string());
    assert!(matches!(
        Module::load(&module),
        Err(LoadError::Corrupt { .. })
    ));

    let module = build(dir.path(), &target);
    rewrite_manifest(&module, |t| {
        t.replace("\"output_dim\": 1", "\"output_dim\": 7")
    });
    assert!(matches!(
        Module::load(&module),
        Err(LoadError::Corrupt { .. })
    ));

    assert!(matches!(
        Module::load(dir.path().join("absent.kmod")),
        Err(LoadError::Io { .. })
    ));
    let module = Module::load(build(dir.path(), &target)).expect("loads");
    let err = module.kernel("gaus").expect_err("no such kernel");
    assert!(err.to_string().contains("`gauss`"), "{err}");
}

const CACHED: &str =
    "kernel k {\n x = Vi(2)\n y = Vj(2)\n Sum_Reduction(Exp(-SqDist(x, y)), 0)\n}\n";

/// A program that built its syntax tree (the Python package's LazyTensor) goes through the
/// same front end as the text (`driver::compile_tree`), and a file already through it finds
/// the text's cache entry (`CompileCache::kernel_of`) without being parsed again.
#[test]
fn a_built_tree_is_checked_as_its_text_and_finds_its_cache_entry() {
    let text = driver::compile(SourceFile::new("<text>", CACHED)).unwrap_or_else(|_| panic!());
    let tree = keopsc::syntax::parse(CACHED).0;
    let built = driver::compile_tree(SourceFile::new("<tree>", CACHED), tree)
        .unwrap_or_else(|_| panic!("the tree checks"));
    assert_eq!(built.kernels.len(), text.kernels.len());
    for (b, t) in built.kernels.iter().zip(&text.kernels) {
        assert_eq!(b.signature.to_string(), t.signature.to_string());
        assert_eq!(b.formula.to_string(), t.formula.to_string());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = CompileCache::open(dir.path());
    assert_eq!(
        cache.kernel(CACHED, None).expect("compiles").1,
        CacheOutcome::Miss
    );
    assert_eq!(
        cache.kernel_of(&built, None).expect("found").1,
        CacheOutcome::Hit
    );
    // The checker's diagnostics come back against the tree's text.
    let bad = "kernel k {\n x = Vi(2)\n Sum_Reduction(Exq(x), 0)\n}\n";
    let (file, diagnostics) =
        driver::compile_tree(SourceFile::new("<tree>", bad), keopsc::syntax::parse(bad).0)
            .err()
            .expect("an unknown operator is refused");
    let rendered = keopsc::diagnostic::render_all(&diagnostics, &file, false);
    assert!(rendered.contains("Exq"), "{rendered}");
}

#[test]
fn the_cache_hits_rebuilds_damaged_entries_and_ignores_layout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = CompileCache::open(dir.path());
    let (_, first) = cache.kernel(CACHED, None).expect("compiles");
    assert_eq!(first, CacheOutcome::Miss);
    // The same kernel with other comments and spacing is the same entry.
    let reformatted = format!("# a comment\n{}", CACHED.replace(" x = ", "    x   =  "));
    let (kernel, second) = cache.kernel(&reformatted, Some("k")).expect("compiles");
    assert_eq!(second, CacheOutcome::Hit);
    let x = [0.0f64, 0.0];
    let shape = [1, 2];
    let out = kernel
        .call(&[ArrayRef::f64(&shape, &x), ArrayRef::f64(&shape, &x)])
        .expect("runs");
    assert_eq!(out.to_f64(), vec![1.0]);
    // Unloaded before its file is damaged below: overwriting a mapped library in place is
    // what the cache itself never does (it moves entries aside).
    drop(kernel);

    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listed")
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1, "one entry and no leftovers");
    let entry = entries[0].path();
    std::fs::write(library(&entry), b"garbage").expect("written");
    let (_, third) = cache.kernel(CACHED, None).expect("rebuilds");
    assert_eq!(third, CacheOutcome::Rebuilt);
    let (_, fourth) = cache.kernel(CACHED, None).expect("compiles");
    assert_eq!(fourth, CacheOutcome::Hit);

    // A different formula is another entry; errors are the compiler's diagnostics.
    let other = CACHED.replace("Exp", "Sin");
    assert_eq!(
        cache.kernel(&other, None).expect("compiles").1,
        CacheOutcome::Miss
    );
    let err = cache
        .kernel(
            "kernel k {\n x = Vi(2)\n Sum_Reduction(Exq(x), 0)\n}\n",
            None,
        )
        .expect_err("bad source");
    assert!(err.to_string().contains("Exp"), "{err}");
}

#[test]
fn concurrent_cache_users_never_see_half_an_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = CACHED.replace("Exp", "Cos");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let cache = CompileCache::open(dir.path());
                    let (kernel, _) = cache.kernel(&source, None).expect("compiles or loads");
                    let x = [0.5f32, 0.25];
                    let shape = [1, 2];
                    kernel
                        .call(&[ArrayRef::f32(&shape, &x), ArrayRef::f32(&shape, &x)])
                        .expect("runs")
                        .to_f64()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("no panic"), vec![1.0]);
        }
    });
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("listed")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one entry, no temporary directory left: {names:?}"
    );
}

const GRAD_SOURCE: &str = "
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) * s) * b, 0)
}
kernel lse {
    x = Vi(2)
    y = Vj(2)
    s = Pm(1)
    LogSumExp_Reduction(-SqDist(x, y) * s, 1)
}
kernel softmax {
    x = Vi(2)
    y = Vj(2)
    v = Vj(2)
    SumSoftMaxWeight_Reduction(-SqDist(x, y), v, 0)
}
kernel nearest {
    x = Vi(2)
    y = Vj(2)
    KMin_Reduction(SqDist(x, y), 2, 0)
}
kernel shifted {
    x = Vi(1)
    y = Vj(1)
    Max_SumShiftExp_Reduction(x * y, 0)
}
kernel index {
    x = Vi(2)
    y = Vj(2)
    ArgMin_Reduction(SqDist(x, y), 0)
}
";

fn build_gradients(dir: &Path, source: &str) -> std::path::PathBuf {
    let out = dir.join("grad.kmod");
    let report = keopsc::artifact::build_with_gradients(
        &compiled(source),
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
    )
    .expect("builds");
    assert_eq!(report.not_differentiable, ["index"]);
    out
}

/// Random inputs for a kernel's signature (N rows for Vi, M for Vj) and a cotangent shaped
/// like its output, in `dtype`.
fn gradient_inputs(
    sig: &keops_runtime::Signature,
    dtype: DType,
    seed: u64,
) -> (Vec<HostArray>, HostArray) {
    let (n, m) = (7, 11);
    let make = |shape: Vec<usize>, seed| {
        let data: Vec<f64> = random(shape.iter().product(), seed)
            .iter()
            .map(|v| 2.0 * v - 1.0)
            .collect();
        match dtype {
            DType::F64 => HostArray::from_f64(shape, data),
            DType::F32 => HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
        }
    };
    let inputs = sig
        .args
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let shape = match a.category {
                keops_runtime::Category::I => vec![n, a.dim],
                keops_runtime::Category::J => vec![m, a.dim],
                keops_runtime::Category::Param => vec![a.dim],
            };
            make(shape, seed + k as u64)
        })
        .collect();
    let rows = match sig.axis {
        keops_runtime::Axis::I => n,
        keops_runtime::Axis::J => m,
    };
    (inputs, make(vec![rows, sig.output_dim()], seed + 100))
}

fn assert_close(what: &str, got: &HostArray, want: &HostArray, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}");
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    let (got, want) = (got.to_f64(), want.to_f64());
    let scale = want.iter().fold(1e-3f64, |s, x| s.max(x.abs()));
    for (a, b) in got.iter().zip(&want) {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}: {a} vs {b}\n{got:?}\n{want:?}"
        );
    }
}

/// A module built with gradients computes, through the runtime alone, the gradients the JIT
/// computes: every stored set of inputs (each alone, all at once), a subset in another order,
/// every kind of backward (dense, saved forward, SumSoftMaxWeight's `(out, L)`, selected
/// entries, the shifted maximum), both axes and dtypes; with the saved forward passed in.
#[test]
fn a_module_with_gradients_gives_the_jit_gradients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module = Module::load(build_gradients(dir.path(), GRAD_SOURCE)).expect("loads");
    let file = compiled(GRAD_SOURCE);
    for checked in file.kernels.iter().filter(|k| k.name != "index") {
        let kernel = module.kernel(&checked.name).unwrap();
        let names: Vec<&str> = checked
            .signature
            .args
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let mut sets: Vec<Vec<&str>> = names.iter().map(|&n| vec![n]).collect();
        sets.push(names.clone());
        let stored = kernel.stored_gradients();
        assert_eq!(stored, sets, "{}", checked.name);
        // Two inputs in reverse order: from the plan of all inputs.
        sets.push(names.iter().rev().take(2).copied().collect());
        for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 2e-4)] {
            let (inputs, g) = gradient_inputs(&checked.signature, dtype, 5);
            let refs: Vec<&HostArray> = inputs.iter().collect();
            let named: Vec<(String, HostArray)> = names
                .iter()
                .map(|n| n.to_string())
                .zip(inputs.iter().cloned())
                .collect();
            for set in &sets {
                let want = keopsc::vjp::vjp_many(checked, set, &named, &g, Backend::Cpu).unwrap();
                let got = kernel.vjp(set, &refs, &g, None).unwrap();
                assert_eq!(got.len(), set.len());
                for ((name, got), want) in set.iter().zip(&got).zip(&want) {
                    let what = format!("{} d{name} ({set:?}, {dtype})", checked.name);
                    assert_close(&what, got, want, tol);
                }
            }
            // The saved forward, passed in: the same gradients.
            let plan = keopsc::vjp::plan_many(checked, &names).unwrap();
            if let Some(saved) =
                keopsc::vjp::saved_rows(&plan.saved, &plan.forward, &refs, Backend::Cpu).unwrap()
            {
                let computed = kernel.vjp(&names, &refs, &g, None).unwrap();
                let given = kernel.vjp(&names, &refs, &g, Some(&saved)).unwrap();
                for (a, b) in computed.iter().zip(&given) {
                    assert_close(&format!("{} saved", checked.name), b, a, 1e-12);
                }
            }
        }
    }
}

#[test]
fn gradients_a_module_cannot_give_are_clear_errors() {
    use keops_runtime::GradientError;
    let dir = tempfile::tempdir().expect("temp dir");
    let module = Module::load(build_gradients(dir.path(), GRAD_SOURCE)).expect("loads");
    let gauss = module.kernel("gauss").unwrap();
    let (inputs, g) = gradient_inputs(gauss.signature(), DType::F64, 3);
    let refs: Vec<&HostArray> = inputs.iter().collect();
    let err = gauss.vjp(&["z"], &refs, &g, None).unwrap_err();
    assert!(matches!(err, GradientError::UnknownInput { .. }), "{err}");
    assert!(err.to_string().contains("`x`, `y`, `b`, `s`"), "{err}");
    let err = gauss.vjp(&["x", "x"], &refs, &g, None).unwrap_err();
    assert!(matches!(err, GradientError::DuplicateInput { .. }), "{err}");
    let err = gauss.vjp(&[], &refs, &g, None).unwrap_err();
    assert!(matches!(err, GradientError::NoInput { .. }), "{err}");
    let short = HostArray::from_f64(vec![3, 1], vec![0.0; 3]);
    let err = gauss.vjp(&["y"], &refs, &short, None).unwrap_err();
    assert!(
        err.to_string().contains("cotangent has shape (3, 1)"),
        "{err}"
    );
    let f32_g = HostArray::from_f32(vec![7, 1], vec![0.0; 7]);
    let err = gauss.vjp(&["y"], &refs, &f32_g, None).unwrap_err();
    assert!(err.to_string().contains("float32"), "{err}");
    let err = gauss.vjp(&["y"], &refs[..3], &g, None).unwrap_err();
    assert!(err.to_string().contains("`s`"), "{err}");
    let lse = module.kernel("lse").unwrap();
    let (inputs, g) = gradient_inputs(lse.signature(), DType::F64, 3);
    let refs: Vec<&HostArray> = inputs.iter().collect();
    let err = lse.vjp(&["y"], &refs, &g, Some(&short)).unwrap_err();
    assert!(
        err.to_string().contains("saved forward has shape (3, 1)"),
        "{err}"
    );
    let index = module.kernel("index").unwrap();
    let err = index.vjp(&["x"], &refs, &g, None).unwrap_err();
    // Built with --grad, but an index has no gradient: said so, not "build it with --grad".
    assert!(
        matches!(err, GradientError::NotDifferentiable { .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("--grad"), "{err}");
    assert!(index.stored_gradients().is_empty());
    // Without --grad: no gradients, and the manifest has no gradient fields at all.
    let plain = Module::load(build(dir.path(), &keopsc::codegen::host_cpu_level())).expect("loads");
    let err = plain
        .kernel("gauss")
        .unwrap()
        .vjp(&["x"], &refs, &g, None)
        .unwrap_err();
    assert!(err.to_string().contains("keopsc build --grad"), "{err}");
    let text = std::fs::read_to_string(dir.path().join("m.kmod").join(MANIFEST_FILE)).unwrap();
    assert!(!text.contains("gradients") && !text.contains("backward_kernels"));
}

/// A manifest whose gradient names a kernel it lacks, or reads columns a kernel does not give,
/// is refused at load (its checksum made to match), before anything runs.
#[test]
fn damaged_gradients_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build_gradients(dir.path(), GRAD_SOURCE);
    let reseal = |edit: &dyn Fn(&mut keops_runtime::Manifest)| {
        let text = std::fs::read_to_string(path.join(MANIFEST_FILE)).unwrap();
        let mut manifest: keops_runtime::Manifest = serde_json::from_str(&text).unwrap();
        edit(&mut manifest);
        manifest.manifest_hash = manifest.checksum();
        std::fs::write(
            path.join(MANIFEST_FILE),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
    };
    let original = std::fs::read_to_string(path.join(MANIFEST_FILE)).unwrap();
    reseal(&|m| m.kernels[0].gradients[0].dense[0].kernel = "missing".into());
    let err = Module::load(&path).err().expect("refused");
    assert!(err.to_string().contains("`missing`"), "{err}");
    std::fs::write(path.join(MANIFEST_FILE), &original).unwrap();
    reseal(&|m| m.kernels[0].gradients[0].dense[0].outputs = vec!["y".into()]);
    let err = Module::load(&path).err().expect("refused");
    assert!(
        err.to_string().contains("not asked") || err.to_string().contains("columns"),
        "{err}"
    );
    std::fs::write(path.join(MANIFEST_FILE), &original).unwrap();
    Module::load(&path).expect("the original loads");
}

fn build_symmetric(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("sym.kmod");
    let options = keopsc::artifact::BuildOptions {
        gradients: false,
        same: vec![("y".into(), "x".into())],
        ..Default::default()
    };
    let report = keopsc::artifact::build_with_options(
        &compiled(SOURCE),
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
        &options,
    )
    .expect("builds");
    // `nearest` is no Sum: it has none, and the report says why.
    assert!(report.manifest.kernels[0].symmetric.is_some());
    assert!(report.manifest.kernels[1].symmetric.is_none());
    assert!(
        report.not_symmetric.iter().any(|r| r.contains("nearest")),
        "{:?}",
        report.not_symmetric
    );
    out
}

#[test]
fn a_module_built_with_same_walks_each_pair_once_and_agrees_with_the_full_evaluation() {
    use keops_runtime::linalg::{KernelOperator, LinearOperator};
    let dir = tempfile::tempdir().expect("temp dir");
    let module = Module::load(build_symmetric(dir.path())).expect("loads");
    let gauss = module.kernel("gauss").expect("kernel");
    assert!(gauss.symmetric().is_some());
    assert!(module.kernel("nearest").unwrap().symmetric().is_none());
    // 700 points: two full blocks of 256 rows and a partial one.
    let n = 700;
    for dtype in [DType::F32, DType::F64] {
        let make = |shape: Vec<usize>, seed| {
            let data = random(shape.iter().product(), seed);
            match dtype {
                DType::F64 => HostArray::from_f64(shape, data),
                DType::F32 => HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
            }
        };
        let (x, b, s) = (make(vec![n, 3], 1), make(vec![n, 1], 2), make(vec![1], 3));
        let views = [x.view(), x.view(), b.view(), s.view()];
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let full = gauss.call(&views).expect("runs");
        let once = gauss.call_symmetric(&views).expect("runs");
        assert_close("call_symmetric", &once, &full, tol);
        let op = KernelOperator::new(
            gauss.clone(),
            "b",
            vec![
                ("x".into(), x.clone()),
                ("y".into(), x.clone()),
                ("s".into(), s.clone()),
            ],
        )
        .expect("an operator");
        assert!(op.pairs_once(), "{op:?}");
        let product = op.apply(&b.to_f64(), 1).expect("a product");
        let want = full.to_f64();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (g, w) in product.iter().zip(&want) {
            assert!((g - w).abs() <= tol * scale, "{dtype}: {g} against {w}");
        }
        // Other points for y: the full evaluation.
        let y = make(vec![n, 3], 4);
        let other = [x.view(), y.view(), b.view(), s.view()];
        assert_eq!(
            gauss.call_symmetric(&other).unwrap().to_f64(),
            gauss.call(&other).unwrap().to_f64()
        );
    }
}

#[test]
fn a_damaged_symmetric_pass_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = build_symmetric(dir.path());
    let original = std::fs::read_to_string(path.join(MANIFEST_FILE)).unwrap();
    let reseal = |edit: &dyn Fn(&mut keops_runtime::manifest::ManifestSymmetric)| {
        let mut manifest: keops_runtime::Manifest = serde_json::from_str(&original).unwrap();
        edit(manifest.kernels[0].symmetric.as_mut().unwrap());
        manifest.manifest_hash = manifest.checksum();
        std::fs::write(
            path.join(MANIFEST_FILE),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
    };
    // The swapped copy of `b` reading the parameter; a pair of two i-variables; a cross
    // kernel without its copy of `b`.
    let damages: [&dyn Fn(&mut keops_runtime::manifest::ManifestSymmetric); 3] = [
        &|s| *s.sources.last_mut().unwrap() = 3,
        &|s| s.same = vec![[0, 0]],
        &|s| {
            s.args.pop();
        },
    ];
    for damage in damages {
        reseal(damage);
        let err = Module::load(&path).err().expect("refused");
        assert!(err.to_string().contains("symmetric pass"), "{err}");
    }
    std::fs::write(path.join(MANIFEST_FILE), &original).unwrap();
    Module::load(&path).expect("the original loads");
}

/// `--gpu`: every kernel carries its PTX for each dtype after a load (no CUDA needed), the
/// same text the compiler emits; a damaged or missing PTX file is refused at load.
#[test]
fn a_module_built_with_gpu_code_carries_its_ptx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("gpu.kmod");
    let options = keopsc::artifact::BuildOptions {
        gpu: true,
        ..Default::default()
    };
    let file = compiled(SOURCE);
    keopsc::artifact::build_with_options(
        &file,
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
        &options,
    )
    .expect("builds");
    let module = Module::load(&out).expect("loads");
    for (kernel, checked) in module.kernels().iter().zip(&file.kernels) {
        for dtype in [DType::F32, DType::F64] {
            let code = kernel.gpu_code(dtype).expect("GPU code");
            let emitted = driver::compile_gpu(checked, dtype).expect("PTX");
            assert_eq!(
                &*code.ptx,
                emitted.ptx.as_str(),
                "{} {dtype}",
                kernel.name()
            );
            assert_eq!(code.symbol, emitted.symbol);
            assert_eq!(code.launch, emitted.schedule.launch);
            assert_eq!(code.arch, "sm_80");
            assert!(code.ptx.contains(".entry"));
            // The block-sparse kernel beside it, the one `eval --ranges --backend cuda` loads.
            let ranges = kernel
                .gpu_ranges_code(dtype)
                .expect("block-sparse GPU code");
            let emitted = driver::compile_gpu_entry(checked, dtype, GpuEntry::Ranges).expect("PTX");
            assert_eq!(
                &*ranges.ptx,
                emitted.ptx.as_str(),
                "{} {dtype}",
                kernel.name()
            );
            assert_eq!(ranges.symbol, keops_runtime::gpu::GPU_RANGES_SYMBOL);
            assert_ne!(ranges.symbol, code.symbol);
            assert_eq!(ranges.launch, emitted.schedule.launch);
        }
    }
    // Without --gpu: none.
    let plain = Module::load(build(dir.path(), &keopsc::codegen::host_cpu_level())).unwrap();
    assert!(plain.kernels()[0].gpu_code(DType::F32).is_none());
    assert!(plain.kernels()[0].gpu_ranges_code(DType::F32).is_none());
    // An entry point the runtime has no calling convention for, and one dtype's kernel twice:
    // refused, named.
    let kernel = &module.kernels()[0];
    let mut other = kernel.gpu_code(DType::F32).expect("GPU code").clone();
    other.symbol = "keops_gpu_tile_other".into();
    let err = kernel.with_gpu_code(vec![other]).expect_err("refused");
    assert!(
        err.contains("unknown entry point `keops_gpu_tile_other`"),
        "{err}"
    );
    let twice = kernel.gpu_code(DType::F32).expect("GPU code").clone();
    let err = kernel
        .with_gpu_code(vec![twice.clone(), twice])
        .expect_err("refused");
    assert!(err.contains("given twice"), "{err}");
    // A PTX file changed by one byte, then missing.
    let ptx = out.join("gpu_gauss_float32.ptx");
    let text = std::fs::read_to_string(&ptx).expect("the PTX file");
    std::fs::write(&ptx, text.replacen(".entry", ".entrY", 1)).unwrap();
    let err = Module::load(&out).err().expect("refused");
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::remove_file(&ptx).unwrap();
    let err = Module::load(&out).err().expect("refused");
    assert!(err.to_string().contains("gpu_gauss_float32.ptx"), "{err}");
}

/// `Kernel::call_batched`: many problems in one parallel region give, bit for bit, what a
/// call per problem gives: few problems (each split over the threads) and many (each on one
/// thread), of different sizes, every kernel of the module; a bad problem is refused before
/// any runs, with its argument's name.
#[test]
fn batched_calls_give_each_problems_own_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module =
        Module::load(build(dir.path(), &keopsc::codegen::host_cpu_level())).expect("loads");
    for kernel in module.kernels() {
        for count in [1, 37] {
            let arrays: Vec<Vec<HostArray>> = (0..count)
                .map(|k| {
                    let (n, m) = (1 + (k * 7) % 50, 3 + (k * 13) % 300);
                    kernel
                        .signature()
                        .args
                        .iter()
                        .enumerate()
                        .map(|(a, spec)| {
                            let rows = match spec.category {
                                keops_runtime::Category::I => n,
                                keops_runtime::Category::J => m,
                                keops_runtime::Category::Param => 1,
                            };
                            let data = random(rows * spec.dim, (k * 10 + a) as u64);
                            let shape = match spec.category {
                                keops_runtime::Category::Param => vec![spec.dim],
                                _ => vec![rows, spec.dim],
                            };
                            HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                        })
                        .collect()
                })
                .collect();
            let problems: Vec<Vec<ArrayRef>> = arrays
                .iter()
                .map(|p| p.iter().map(HostArray::view).collect())
                .collect();
            let batched = kernel.call_batched(&problems).expect("runs");
            for (p, out) in problems.iter().zip(&batched) {
                let single = kernel.call(p).expect("runs");
                assert_eq!(out.shape, single.shape);
                assert_eq!(out.to_f64(), single.to_f64(), "{} x{count}", kernel.name());
            }
        }
    }
    // The second problem's x has the wrong dimension.
    let gauss = module.kernel("gauss").unwrap();
    let good = [
        HostArray::from_f32(vec![4, 3], vec![0.5; 12]),
        HostArray::from_f32(vec![5, 3], vec![0.5; 15]),
        HostArray::from_f32(vec![5, 1], vec![1.0; 5]),
        HostArray::from_f32(vec![1], vec![1.0]),
    ];
    let bad_x = HostArray::from_f32(vec![4, 2], vec![0.5; 8]);
    let first: Vec<ArrayRef> = good.iter().map(HostArray::view).collect();
    let mut second = first.clone();
    second[0] = bad_x.view();
    let err = gauss.call_batched(&[first, second]).expect_err("refused");
    assert!(err.to_string().contains("`x`"), "{err}");
}

const RANGES_SOURCE: &str = "
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(2)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) * s) * b, 0)
}
kernel nearest {
    x = Vi(3)
    y = Vj(3)
    ArgKMin_Reduction(SqDist(x, y), 3, 0)
}
kernel closest {
    x = Vi(3)
    y = Vj(3)
    Min_ArgMin_Reduction(SqDist(x, y), 0)
}
kernel lse {
    x = Vi(3)
    y = Vj(3)
    s = Pm(1)
    LogSumExp_Reduction(-SqDist(x, y) * s, 0)
}
kernel over_i {
    x = Vi(3)
    y = Vj(3)
    u = Vi(1)
    Max_ArgMax_Reduction(-SqDist(x, y) + u, 1)
}
";

/// Block-sparse reductions (`Kernel::call_ranges`) against each row evaluated on exactly the
/// inner indices its cluster keeps (a plain call on those points, indices mapped back): every
/// reduction family, both axes, f32 and f64, clusters and ranges starting anywhere (not on
/// vector boundaries), empty ranges, rows in no cluster; malformed ranges name their array.
#[test]
fn block_sparse_reductions_keep_exactly_their_pairs() {
    use keops_runtime::Ranges;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("ranges.kmod");
    keopsc::artifact::build(
        &compiled(RANGES_SOURCE),
        &[DType::F32, DType::F64],
        &keopsc::codegen::host_cpu_level(),
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
    )
    .expect("builds");
    let module = Module::load(&out).expect("loads");
    let (n, m) = (83, 301);
    for kernel in module.kernels() {
        let sig = kernel.signature().clone();
        let (rows, inner) = match sig.axis {
            keops_runtime::Axis::I => (n, m),
            keops_runtime::Axis::J => (m, n),
        };
        // Rows 0..5 in no cluster; clusters of odd sizes; ranges at unaligned starts, one empty.
        let clusters = [(5, 22), (22, 23), (30, rows)];
        let ranges = Ranges {
            rows: clusters.to_vec(),
            slices: vec![3, 3, 6],
            inner: vec![
                (3, 40),
                (41, 41),
                (77, inner - 5),
                (0, 1),
                (17, 19),
                (100.min(inner - 1), inner),
            ],
        };
        for dtype in [DType::F32, DType::F64] {
            let arrays: Vec<HostArray> = sig
                .args
                .iter()
                .enumerate()
                .map(|(a, spec)| {
                    let len = match spec.category {
                        keops_runtime::Category::I => n,
                        keops_runtime::Category::J => m,
                        keops_runtime::Category::Param => 1,
                    };
                    let data = random(len * spec.dim, 100 + a as u64);
                    let shape = match spec.category {
                        keops_runtime::Category::Param => vec![spec.dim],
                        _ => vec![len, spec.dim],
                    };
                    match dtype {
                        DType::F32 => {
                            HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                        }
                        DType::F64 => HostArray::from_f64(shape, data),
                    }
                })
                .collect();
            let views: Vec<ArrayRef> = arrays.iter().map(HostArray::view).collect();
            let got = kernel.call_ranges(&views, &ranges).expect("runs").to_f64();
            let width = sig.output_dim();
            let indices = keops_runtime::index_columns(&sig.reduction).unwrap_or(0..0);
            let inner_category = match sig.axis {
                keops_runtime::Axis::I => keops_runtime::Category::J,
                keops_runtime::Axis::J => keops_runtime::Category::I,
            };
            let take = |array: &HostArray, picked: &[usize]| -> HostArray {
                let dim = array.shape[1];
                let values = array.to_f64();
                let data: Vec<f64> = picked
                    .iter()
                    .flat_map(|&p| values[p * dim..(p + 1) * dim].to_vec())
                    .collect();
                let shape = vec![picked.len(), dim];
                match dtype {
                    DType::F32 => {
                        HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                    }
                    DType::F64 => HostArray::from_f64(shape, data),
                }
            };
            let empty: Vec<f64> = {
                let mut acc = vec![0.0; sig.reduction.acc_dim()];
                sig.reduction.init(&mut acc);
                let mut o = vec![0.0; width];
                sig.reduction.finalize(&acc, &mut o);
                o
            };
            for row in 0..rows {
                let cluster = clusters.iter().position(|&(a, b)| a <= row && row < b);
                let kept: Vec<usize> = match cluster {
                    None => Vec::new(),
                    Some(c) => {
                        let from = if c == 0 { 0 } else { ranges.slices[c - 1] };
                        ranges.inner[from..ranges.slices[c]]
                            .iter()
                            .flat_map(|&(a, b)| a..b)
                            .collect()
                    }
                };
                let what = format!("{} {dtype} row {row}", kernel.name());
                let got_row = &got[row * width..(row + 1) * width];
                if kept.is_empty() {
                    assert_eq!(got_row, &empty[..], "{what}");
                    continue;
                }
                let sub: Vec<HostArray> = arrays
                    .iter()
                    .zip(&sig.args)
                    .map(|(a, spec)| {
                        if spec.category == inner_category {
                            take(a, &kept)
                        } else if spec.category == keops_runtime::Category::Param {
                            a.clone()
                        } else {
                            take(a, &[row])
                        }
                    })
                    .collect();
                let sub_views: Vec<ArrayRef> = sub.iter().map(HostArray::view).collect();
                let want = kernel.call(&sub_views).expect("runs").to_f64();
                for (k, (&g, &w)) in got_row.iter().zip(&want).enumerate() {
                    let w = if indices.contains(&k) {
                        kept[w as usize] as f64
                    } else {
                        w
                    };
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    assert!(
                        g == w || (g - w).abs() <= tol * (1.0 + w.abs()),
                        "{what} column {k}: {g} against {w}"
                    );
                }
            }
        }
    }
    // Malformed ranges: the array and entry named.
    let gauss = module.kernel("gauss").unwrap();
    let arrays = [
        HostArray::from_f64(vec![10, 3], vec![0.5; 30]),
        HostArray::from_f64(vec![20, 3], vec![0.5; 60]),
        HostArray::from_f64(vec![20, 2], vec![1.0; 40]),
        HostArray::from_f64(vec![1], vec![1.0]),
    ];
    let views: Vec<ArrayRef> = arrays.iter().map(HostArray::view).collect();
    let bad = |ranges: Ranges, needle: &str| {
        let err = gauss
            .call_ranges(&views, &ranges)
            .expect_err("refused")
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    bad(
        Ranges {
            rows: vec![(0, 11)],
            slices: vec![1],
            inner: vec![(0, 5)],
        },
        "ranges_i[0]",
    );
    bad(
        Ranges {
            rows: vec![(0, 5), (4, 8)],
            slices: vec![1, 1],
            inner: vec![(0, 5)],
        },
        "sorted and disjoint",
    );
    bad(
        Ranges {
            rows: vec![(0, 5)],
            slices: vec![2],
            inner: vec![(0, 5)],
        },
        "slices_i[0]",
    );
    bad(
        Ranges {
            rows: vec![(0, 5)],
            slices: vec![1],
            inner: vec![(3, 21)],
        },
        "redranges_j[0]",
    );
    bad(
        Ranges {
            rows: vec![(0, 5)],
            slices: vec![2],
            inner: vec![(5, 9), (2, 6)],
        },
        "redranges_j[1]",
    );
}

/// Kernels of large dimensions in modules (Gram and wide products, `codegen/cpu/gram.rs` and
/// `wide.rs`), for the host and for plain x86-64 (4 and 2 lanes), against the interpreter.
#[test]
fn modules_of_large_dimensions_give_the_interpreters_results() {
    const LARGE: &str = "
kernel gauss {
    x = Vi(40)
    y = Vj(40)
    b = Vj(20)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) * s) * b, 0)
}
kernel gradient {
    x = Vi(40)
    y = Vj(40)
    s = Pm(1)
    Sum_Reduction(Grad(Exp(-SqDist(x, y) * s), y, s), 1)
}
";
    let dir = tempfile::tempdir().expect("temp dir");
    for target in [
        keopsc::codegen::host_cpu_level(),
        keopsc::codegen::cpu_level("x86-64").expect("a level"),
    ] {
        let out = dir.path().join(format!("large-{}.kmod", target.cpu));
        let file = compiled(LARGE);
        keopsc::artifact::build(
            &file,
            &[DType::F32, DType::F64],
            &target,
            &out,
            &[],
            keopsc::artifact::Placement::Replace,
        )
        .expect("builds");
        let module = Module::load(&out).expect("loads");
        let (n, m) = (29, 203);
        for dtype in [DType::F32, DType::F64] {
            let make = |shape: Vec<usize>, seed| random_array(dtype, shape, seed);
            let inputs = [
                ("x".to_string(), make(vec![n, 40], 5)),
                ("y".to_string(), make(vec![m, 40], 6)),
                ("b".to_string(), make(vec![m, 20], 7)),
                ("s".to_string(), make(vec![1], 8)),
            ];
            check_every_kernel(&module, &file, &inputs, dtype, &target.cpu);
        }
    }
}
