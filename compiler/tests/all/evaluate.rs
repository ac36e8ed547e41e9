//! The one evaluation entry, `driver::evaluate`, and its options: arguments by name or in
//! order, batch axes found from the arrays, block-sparse ranges, cached or fresh code, and the
//! options that do not go together, each against the interpreter or an unbatched, dense run.

use keops_runtime::{DType, HostArray, Ranges};
use keopsc::driver::{self, Backend, EvalError, EvalOptions, Pairs};
use keopsc::jit_cache::JitCache;
use keopsc::source::SourceFile;

fn kernel(bandwidth: f64) -> keopsc::check::CheckedKernel {
    let source = format!(
        "kernel k {{\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n \
         Sum_Reduction(Exp(-SqDist(x, y) * {bandwidth}) * b, 0)\n}}\n"
    );
    let compiled = driver::compile(SourceFile::new("<evaluate test>", source))
        .unwrap_or_else(|_| panic!("the kernel compiles"));
    compiled.kernels.into_iter().next().expect("one kernel")
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn array(shape: &[usize], seed: u64) -> HostArray {
    HostArray::from_f64(shape.to_vec(), values(shape.iter().product(), seed))
}

fn assert_close(got: &HostArray, want: &HostArray, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    for (k, (g, w)) in got.to_f64().iter().zip(want.to_f64()).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}: {k}: {g} against {w}"
        );
    }
}

#[test]
fn named_and_ordered_arguments_give_the_same_output_on_every_backend() {
    let k = kernel(0.5);
    let (x, y, b) = (array(&[40, 3], 1), array(&[30, 3], 2), array(&[30, 1], 3));
    // By name, in another order than the signature's.
    let named = vec![
        ("b".to_string(), b.clone()),
        ("x".to_string(), x.clone()),
        ("y".to_string(), y.clone()),
    ];
    let want = driver::evaluate(&k, &named, Backend::Interp)
        .unwrap()
        .output;
    assert_eq!(want.shape, vec![40, 1]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let got = driver::evaluate(&k, &[&x, &y, &b], backend).unwrap();
        assert_close(&got.output, &want, &format!("{backend}, in order"));
        assert_eq!((got.timings.size.n, got.timings.size.m), (40, 30));
    }
    let missing = driver::evaluate(&k, &named[..2], Backend::Cpu).unwrap_err();
    assert!(
        matches!(missing, EvalError::Argument(_)) && missing.to_string().contains("`y`"),
        "{missing}"
    );
}

/// Leading axes are batches, found from the arrays: each batch is the unbatched evaluation of
/// its slice, and an array without the axis broadcasts.
#[test]
fn batch_axes_are_found_from_the_arrays() {
    let k = kernel(0.7);
    let (batches, n, m) = (3, 17, 11);
    let x = array(&[batches, n, 3], 4);
    let y = array(&[m, 3], 5);
    let b = array(&[batches, m, 1], 6);
    for backend in [Backend::Interp, Backend::Cpu] {
        for code in [
            EvalOptions::on(backend),
            EvalOptions::on(backend).compiled_anew(),
        ] {
            let got = driver::evaluate(&k, &[&x, &y, &b], code).unwrap();
            assert_eq!(got.output.shape, vec![batches, n, 1]);
            assert_eq!((got.timings.size.n, got.timings.size.m), (n, m));
            let got = got.output.to_f64();
            for batch in 0..batches {
                let xs = HostArray::from_f64(
                    vec![n, 3],
                    x.to_f64()[batch * n * 3..(batch + 1) * n * 3].to_vec(),
                );
                let bs = HostArray::from_f64(
                    vec![m, 1],
                    b.to_f64()[batch * m..(batch + 1) * m].to_vec(),
                );
                let want = driver::evaluate(&k, &[&xs, &y, &bs], Backend::Interp).unwrap();
                let one = HostArray::from_f64(vec![n, 1], got[batch * n..(batch + 1) * n].to_vec());
                assert_close(&one, &want.output, &format!("{backend}, batch {batch}"));
            }
        }
    }
    let y_batched = array(&[2, m, 3], 7);
    let clash = driver::evaluate(&k, &[&x, &y_batched, &b], Backend::Cpu).unwrap_err();
    assert!(matches!(clash, EvalError::Batch(_)), "{clash}");
    assert!(clash.to_string().contains("do not broadcast"), "{clash}");
}

/// Ranges that keep every pair give the dense result; ranges that keep the first half of the
/// inner index give the dense result on that half.
#[test]
fn ranges_keep_only_their_pairs() {
    let k = kernel(0.3);
    let (n, m) = (50, 24);
    let (x, y, b) = (array(&[n, 3], 8), array(&[m, 3], 9), array(&[m, 1], 10));
    let every = Ranges {
        rows: vec![(0, n)],
        slices: vec![1],
        inner: vec![(0, m)],
    };
    let half = Ranges {
        inner: vec![(0, m / 2)],
        ..every.clone()
    };
    let cut = |a: &HostArray, rows: usize| {
        let width = a.shape[1];
        HostArray::from_f64(vec![rows, width], a.to_f64()[..rows * width].to_vec())
    };
    let (y_half, b_half) = (cut(&y, m / 2), cut(&b, m / 2));
    let dense = driver::evaluate(&k, &[&x, &y, &b], Backend::Interp).unwrap();
    let dense_half = driver::evaluate(&k, &[&x, &y_half, &b_half], Backend::Interp).unwrap();
    let cpu = EvalOptions::on(Backend::Cpu);
    let got = driver::evaluate(&k, &[&x, &y, &b], cpu.ranges(&every)).unwrap();
    assert_close(&got.output, &dense.output, "every pair");
    let got = driver::evaluate(&k, &[&x, &y, &b], cpu.ranges(&half)).unwrap();
    assert_close(&got.output, &dense_half.output, "half the inner index");

    let out_of_bounds = Ranges {
        inner: vec![(0, m + 1)],
        ..every.clone()
    };
    let error = driver::evaluate(&k, &[&x, &y, &b], cpu.ranges(&out_of_bounds)).unwrap_err();
    assert!(matches!(error, EvalError::Ranges(_)), "{error}");
}

#[test]
fn options_that_do_not_go_together_are_errors_that_say_so() {
    let k = kernel(0.4);
    let (x, y, b) = (array(&[8, 3], 11), array(&[8, 3], 12), array(&[8, 1], 13));
    let every = Ranges {
        rows: vec![(0, 8)],
        slices: vec![1],
        inner: vec![(0, 8)],
    };
    let interp = EvalOptions::on(Backend::Interp);
    let error = driver::evaluate(&k, &[&x, &y, &b], interp.ranges(&every)).unwrap_err();
    assert!(error.to_string().contains("not interp"), "{error}");

    let plan = keopsc::symmetric::plan(&k, &[(1, 0)]).expect("W1 has a symmetric plan");
    let error =
        driver::evaluate(&k, &[&x, &x, &b], interp.pairs(Pairs::Symmetric(&plan))).unwrap_err();
    assert!(matches!(error, EvalError::NotSupported(_)), "{error}");
    assert!(error.to_string().contains("cpu"), "{error}");

    let x_batched = array(&[2, 8, 3], 14);
    let cpu = EvalOptions::on(Backend::Cpu);
    let error = driver::evaluate(&k, &[&x_batched, &y, &b], cpu.ranges(&every)).unwrap_err();
    assert!(matches!(error, EvalError::NotSupported(_)), "{error}");

    if !cfg!(feature = "cuda") {
        let error = driver::evaluate(&k, &[&x, &y, &b], Backend::Cuda).unwrap_err();
        assert!(
            matches!(error, EvalError::BackendUnavailable(..)),
            "{error}"
        );
        assert!(error.to_string().contains("cpu"), "{error}");
    }
}

/// Cached code is compiled once per process and found again; code compiled anew leaves the
/// process's table alone. A bandwidth no other test uses keeps the kernel's entry its own.
#[test]
fn cached_code_is_found_again_and_fresh_code_is_not_stored() {
    let k = kernel(0.123_456_789);
    let (x, y, b) = (array(&[9, 3], 15), array(&[7, 3], 16), array(&[7, 1], 17));
    let table = JitCache::global();
    let anew = EvalOptions::on(Backend::Cpu).compiled_anew();
    let fresh = driver::evaluate(&k, &[&x, &y, &b], anew).unwrap();
    assert!(fresh.timings.compile > std::time::Duration::ZERO);
    assert_eq!(table.hits_of(&k, DType::F64), None);
    let first = driver::evaluate(&k, &[&x, &y, &b], Backend::Cpu).unwrap();
    assert_eq!(table.hits_of(&k, DType::F64), Some(0));
    let again = driver::evaluate(&k, &[&x, &y, &b], Backend::Cpu).unwrap();
    assert_eq!(table.hits_of(&k, DType::F64), Some(1));
    assert_eq!(first.output.to_f64(), again.output.to_f64());
    assert_eq!(first.output.to_f64(), fresh.output.to_f64());
}

/// Shapes whose size overflows, or that their data does not fill, are argument errors on
/// every backend, batched or not, before anything is sized or sliced from them (they
/// panicked in release builds: the product wrapped around and passed the length check).
#[test]
fn shapes_that_their_data_does_not_fill_are_argument_errors() {
    let k = kernel(0.6);
    let (y, b) = (array(&[4, 3], 18), array(&[4, 1], 19));
    // (usize::MAX / 3 + 11) * 3 wraps around to 32.
    let wrapping = HostArray::from_f64(vec![usize::MAX / 3 + 11, 3], vec![0.5; 32]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let error = driver::evaluate(&k, &[&wrapping, &y, &b], backend).unwrap_err();
        assert!(
            matches!(error, EvalError::Argument(_)),
            "{backend}: {error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("`x`") && text.contains("more than this machine can address"),
            "{text}"
        );
    }
    // Two batches of (5, 3) need 30 numbers; 15 fill the first batch only.
    let short = HostArray::from_f64(vec![2, 5, 3], vec![0.5; 15]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let error = driver::evaluate(&k, &[&short, &y, &b], backend).unwrap_err();
        assert!(
            matches!(error, EvalError::Argument(_)),
            "{backend}: {error}"
        );
        assert!(error.to_string().contains("holds 15 numbers"), "{error}");
    }
    // Empty arrays whose batch axes broadcast to more batches than can be counted.
    let huge = 1usize << 40;
    let x_empty = HostArray::from_f64(vec![huge, 0, 3], vec![]);
    let y_empty = HostArray::from_f64(vec![huge, 1, 0, 3], vec![]);
    let b_empty = HostArray::from_f64(vec![0, 1], vec![]);
    let error = driver::evaluate(&k, &[&x_empty, &y_empty, &b_empty], Backend::Cpu).unwrap_err();
    assert!(matches!(error, EvalError::Batch(_)), "{error}");
    assert!(error.to_string().contains("more batches"), "{error}");
}
