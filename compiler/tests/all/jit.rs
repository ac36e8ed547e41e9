//! `Jit`, the one way to compile kernels at run time into the runtime's `Kernel`: its options,
//! its errors (data, not text), and the cache behind it: code compiled once per optimised
//! kernel and dtype, optimised once for all dtypes, shared by kernels that simplify alike,
//! bounded, and compiled once when several threads ask at once. Each test has a table of its
//! own, so that no other test's kernels count in it.

use keops_runtime::{ArrayRef, DType};
use keopsc::driver::{self, Backend};
use keopsc::jit::{Jit, JitError};
use keopsc::jit_cache::{JitCache, JitCacheStats};
use keopsc::source::SourceFile;

const GAUSS: &str = "kernel gauss {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n \
                     Sum_Reduction(Exp(-SqDist(x, y) * 0.75) * b, 0)\n}\n";

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn counts(cache: &JitCache) -> (u64, u64, u64, usize, u64) {
    let JitCacheStats {
        hits,
        compiled,
        evicted,
        entries,
        optimised,
    } = cache.stats();
    (hits, compiled, evicted, entries, optimised)
}

/// The kernel's output on fixed data, against the interpreter's.
fn check_against_the_interpreter(kernel: &keops_runtime::Kernel, source: &str) {
    let (x, y, b) = (values(7 * 3, 1), values(5 * 3, 2), values(5, 3));
    let got = kernel
        .call(&[
            ArrayRef::f64(&[7, 3], &x),
            ArrayRef::f64(&[5, 3], &y),
            ArrayRef::f64(&[5, 1], &b),
        ])
        .unwrap()
        .to_f64();
    let checked = driver::compile(SourceFile::new("<jit test>", source))
        .unwrap_or_else(|_| panic!("compiles"))
        .kernels
        .remove(0);
    let host =
        |shape: &[usize], v: &[f64]| keops_runtime::HostArray::from_f64(shape.to_vec(), v.to_vec());
    let (x, y, b) = (host(&[7, 3], &x), host(&[5, 3], &y), host(&[5, 1], &b));
    let want = driver::evaluate(&checked, &[&x, &y, &b], Backend::Interp)
        .unwrap()
        .output
        .to_f64();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{got:?} against {want:?}"
        );
    }
}

#[test]
fn a_kernel_asked_for_again_is_not_compiled_again() {
    let cache = JitCache::new(8);
    let jit = Jit::with_cache(&cache).dtypes(&[DType::F64]);
    let first = jit.compile(GAUSS, None).unwrap();
    assert_eq!(counts(&cache), (0, 1, 0, 1, 1));
    // Another Jit on the same table, the kernel named this time.
    let again = Jit::with_cache(&cache)
        .dtypes(&[DType::F64])
        .compile(GAUSS, Some("gauss"))
        .unwrap();
    assert_eq!(counts(&cache), (1, 1, 0, 1, 1));
    check_against_the_interpreter(&first, GAUSS);
    check_against_the_interpreter(&again, GAUSS);
    assert_eq!(again.dtypes(), &[DType::F64]);
}

#[test]
fn both_dtypes_are_compiled_from_one_optimisation() {
    let cache = JitCache::new(8);
    let kernel = Jit::with_cache(&cache).compile(GAUSS, None).unwrap();
    // Two code entries, one optimiser run.
    assert_eq!(counts(&cache), (0, 2, 0, 2, 1));
    assert_eq!(kernel.dtypes(), &[DType::F32, DType::F64]);
}

#[test]
fn kernels_that_simplify_alike_share_their_code() {
    let cache = JitCache::new(8);
    let jit = Jit::with_cache(&cache).dtypes(&[DType::F64]);
    let plain = "kernel k {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x * y, 0)\n}\n";
    let padded = "kernel k {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x * y + 0 * y, 0)\n}\n";
    jit.compile(plain, None).unwrap();
    jit.compile(padded, None).unwrap();
    // Two checked kernels optimised, one piece of code.
    let (hits, compiled, _, entries, optimised) = counts(&cache);
    assert_eq!((hits, compiled, entries, optimised), (1, 1, 1, 2));
}

#[test]
fn the_least_recently_used_kernel_goes_when_the_table_is_full() {
    let cache = JitCache::new(1);
    let jit = Jit::with_cache(&cache).dtypes(&[DType::F32]);
    let other = GAUSS.replace("0.75", "0.5");
    jit.compile(GAUSS, None).unwrap();
    jit.compile(&other, None).unwrap();
    jit.compile(GAUSS, None).unwrap();
    let (hits, compiled, evicted, entries, _) = counts(&cache);
    assert_eq!((hits, compiled, evicted, entries), (0, 3, 2, 1));
}

#[test]
fn threads_asking_at_once_compile_the_kernel_once() {
    let cache = JitCache::new(8);
    let threads = 4;
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                start.wait();
                let kernel = Jit::with_cache(&cache)
                    .dtypes(&[DType::F64])
                    .compile(GAUSS, None)
                    .unwrap();
                check_against_the_interpreter(&kernel, GAUSS);
            });
        }
    });
    let (hits, compiled, _, entries, optimised) = counts(&cache);
    assert_eq!((hits, compiled, entries, optimised), (3, 1, 1, 1));
}

#[test]
fn what_cannot_be_compiled_is_a_typed_error() {
    let jit = Jit::new();
    match jit.compile(
        "kernel k {\n x = Vi(1)\n Sum_Reduction(Exp(x, x), 0)\n}\n",
        None,
    ) {
        Err(JitError::Source { rendered }) => assert!(rendered.contains("Exp"), "{rendered}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let two = format!("{GAUSS}{}", GAUSS.replace("gauss", "other"));
    match jit.compile(&two, None) {
        Err(JitError::AmbiguousKernel { available }) => {
            assert_eq!(available, ["gauss", "other"])
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match jit.compile(&two, Some("third")) {
        Err(e @ JitError::UnknownKernel { .. }) => {
            let JitError::UnknownKernel { name, available } = &e else {
                unreachable!()
            };
            assert_eq!((name.as_str(), available.len()), ("third", 2));
            assert!(e.to_string().contains("`gauss`, `other`"), "{e}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // `b` is a j-variable of dimension 1: it cannot hold the data of `x` (i, dimension 3).
    match jit.clone().same("b", "x").compile(GAUSS, None) {
        Err(JitError::Same { kernel, j, i }) => {
            assert_eq!((&*kernel, &*j, &*i), ("gauss", "b", "x"))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_cloud_against_itself_carries_its_pass_over_unordered_pairs_when_it_pays() {
    let cache = JitCache::new(8);
    let jit = Jit::with_cache(&cache).dtypes(&[DType::F64]).same("y", "x");
    assert!(jit.compile(GAUSS, None).unwrap().symmetric().is_some());
    // A Max is no Sum: compiled without the pass, not refused.
    let max = GAUSS.replace("Sum_Reduction", "Max_Reduction");
    assert!(jit.compile(&max, None).unwrap().symmetric().is_none());
}

/// A kernel built in Rust node by node is the kernel its text describes: same text, same
/// results.
#[test]
fn a_kernel_built_in_rust_is_its_text() {
    use keops_runtime::{Axis, Category, ReductionKind};
    use keopsc::syntax::build::KernelBuilder;
    let mut k = KernelBuilder::new("gauss");
    let x = k.arg("x", Category::I, 3);
    let y = k.arg("y", Category::J, 3);
    let b = k.arg("b", Category::J, 1);
    let d = k.call("SqDist", &[x, y], &[]);
    let c = k.constant(-0.75);
    let scaled = k.mul(c, d);
    let e = k.call("Exp", &[scaled], &[]);
    let f = k.mul(e, b);
    let built = k.reduction(ReductionKind::Sum, f, Axis::I).unwrap();
    assert_eq!(
        built.to_string(),
        "kernel gauss {\n    x = Vi(3)\n    y = Vj(3)\n    b = Vj(1)\n    \
         Sum_Reduction(Mult(Exp(Mult(-0.75, SqDist(x, y))), b), 0)\n}\n"
    );
    let kernel = Jit::new()
        .dtypes(&[DType::F64])
        .compile_built(&built)
        .unwrap();
    check_against_the_interpreter(&kernel, GAUSS);
}

/// What a builder cannot make says why: names, dimensions, constants, the reduction's form,
/// and a text formula that does not parse (against the kernel's text); an operator the table
/// lacks is the checker's diagnostic.
#[test]
fn a_builder_says_what_is_wrong() {
    use keops_runtime::{Axis, Category, ReductionKind};
    use keopsc::syntax::build::{BuildError, KernelBuilder};
    let mut k = KernelBuilder::new("2bad");
    let x = k.arg("x", Category::I, 0);
    let _ = k.arg("x", Category::J, 1);
    let c = k.constant(f64::NAN);
    let f = k.mul(x, c);
    match k.k_reduction(ReductionKind::Sum, f, 2, Axis::I) {
        Err(BuildError::Invalid { problems, .. }) => assert_eq!(problems.len(), 5, "{problems:?}"),
        other => panic!("{other:?}"),
    }
    let mut k = KernelBuilder::new("t");
    let _ = k.arg("x", Category::I, 1);
    let f = k.text("Exp(x +)");
    match k.reduction(ReductionKind::Sum, f, Axis::I) {
        Err(e @ BuildError::Syntax { .. }) => assert!(e.to_string().contains("Exp(x +)"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut k = KernelBuilder::new("t");
    let x = k.arg("x", Category::I, 1);
    let f = k.call("Exq", &[x], &[]);
    let built = k.reduction(ReductionKind::Sum, f, Axis::I).unwrap();
    match Jit::new().compile_built(&built) {
        Err(JitError::Source { rendered }) => assert!(rendered.contains("Exp"), "{rendered}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A compilation that fails stores nothing and drops nothing: a full table keeps its kernel.
#[test]
fn a_failed_compilation_leaves_the_table_as_it_was() {
    let cache = JitCache::new(1);
    let checked = driver::compile(SourceFile::new("<jit test>", GAUSS))
        .unwrap_or_else(|_| panic!("compiles"))
        .kernels
        .remove(0);
    cache.get(&checked, DType::F64).unwrap();
    // A cross pass of 5 columns from a kernel of 1: refused by code generation.
    assert!(cache.get_cross(&checked, 5, DType::F64).is_err());
    let (hits, compiled, evicted, entries, _) = counts(&cache);
    assert_eq!((hits, compiled, evicted, entries), (0, 1, 0, 1));
    let (_, outcome) = cache.get(&checked, DType::F64).unwrap();
    assert_eq!(outcome, keopsc::jit_cache::JitOutcome::Hit);
}
