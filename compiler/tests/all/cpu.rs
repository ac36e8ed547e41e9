//! The compiled CPU backend against the reference interpreter: every operator, every reduction,
//! both axes, f32 and f64, sizes that leave remainders (1, 7, 1000, 1003), random formulas,
//! and schedules that split the inner range. Tolerances scale with the sum of absolute terms,
//! which bounds the rounding error of any summation order.

use keops_runtime::{run_tiles, DType, HostArray, TileSchedule};
use keopsc::check::CheckedKernel;
use keopsc::driver::{self, Backend, CompiledFile};
use keopsc::interp::PointEvaluator;
use keopsc::source::SourceFile;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `data` as an `(n, 1)` array of `dtype`.
fn column(data: &[f64], dtype: DType) -> HostArray {
    match dtype {
        DType::F64 => HostArray::from_f64(vec![data.len(), 1], data.to_vec()),
        DType::F32 => HostArray::from_f32(
            vec![data.len(), 1],
            data.iter().map(|&x| x as f32).collect(),
        ),
    }
}

fn compile(text: &str) -> CompiledFile {
    match driver::compile(SourceFile::new("<cpu test>", text)) {
        Ok(c) => c,
        Err((source, diagnostics)) => panic!(
            "does not compile:\n{text}\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        ),
    }
}

/// The variables every test kernel declares.
const DECLS: &str = "
    x = Vi(3)
    y = Vj(3)
    u = Vi(1)
    v = Vj(1)
    s = Pm(1)
    p = Pm(3)
    a = Pm(9)
";

fn kernel(reduction: &str) -> String {
    format!("kernel t {{{DECLS}    {reduction}\n}}\n")
}

struct Problem {
    inputs: Vec<(String, HostArray)>,
}

fn problem(n: usize, m: usize, dtype: DType, seed: u64) -> Problem {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut array = |rows: usize, dim: usize, lo: f64, hi: f64| {
        let data: Vec<f64> = (0..rows * dim).map(|_| rng.random_range(lo..hi)).collect();
        let shape = vec![rows, dim];
        match dtype {
            DType::F64 => HostArray::from_f64(shape, data),
            DType::F32 => HostArray::from_f32(shape, data.iter().map(|&x| x as f32).collect()),
        }
    };
    let inputs = vec![
        ("x".to_string(), array(n, 3, -1.0, 1.0)),
        ("y".to_string(), array(m, 3, -1.0, 1.0)),
        ("u".to_string(), array(n, 1, -1.0, 1.0)),
        ("v".to_string(), array(m, 1, -1.0, 1.0)),
        ("s".to_string(), array(1, 1, 0.5, 1.5)),
        ("p".to_string(), array(1, 3, 0.5, 1.5)),
        ("a".to_string(), array(1, 9, -1.0, 1.0)),
    ];
    Problem { inputs }
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 3e-4,
        DType::F64 => 1e-10,
    }
}

/// `got` against `want` where `scale` bounds each output's summed magnitudes.
#[track_caller]
fn assert_matches(got: &[f64], want: &[f64], scale: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    for (k, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * s.abs().max(w.abs()).max(1e-3)
        };
        assert!(
            ok,
            "{what}: output {k}: cpu {g:?}, interpreter {w:?} (scale {s})"
        );
    }
}

fn eval(kernel: &CheckedKernel, problem: &Problem, backend: Backend) -> HostArray {
    driver::evaluate(kernel, &problem.inputs, backend)
        .map(|done| done.output)
        .unwrap_or_else(|e| panic!("{backend} evaluation of `{}`: {e}", kernel.name))
}

/// Runs `reduction` on both backends and compares; Sum-like reductions are scaled by the
/// same reduction of the absolute formula.
fn check(reduction: &str, scale_reduction: Option<&str>, n: usize, m: usize, dtype: DType) {
    check_within(reduction, scale_reduction, n, m, dtype, tolerance(dtype));
}

fn check_within(
    reduction: &str,
    scale_reduction: Option<&str>,
    n: usize,
    m: usize,
    dtype: DType,
    tol: f64,
) {
    let compiled = compile(&kernel(reduction));
    let k = &compiled.kernels[0];
    let problem = problem(n, m, dtype, (n * 1000 + m) as u64);
    let want = eval(k, &problem, Backend::Interp).to_f64();
    let got = eval(k, &problem, Backend::Cpu);
    assert_eq!(got.dtype(), dtype, "{reduction}: output dtype");
    let got = got.to_f64();
    let scale = match scale_reduction {
        Some(text) => {
            let compiled = compile(&kernel(text));
            eval(&compiled.kernels[0], &problem, Backend::Interp).to_f64()
        }
        None => want.clone(),
    };
    let what = format!("{reduction} ({dtype}, N = {n}, M = {m})");
    assert_matches(&got, &want, &scale, tol, &what);
}

/// Formulas over every operator (dimension 3 or 1), valid on inputs in [-1, 1].
const FORMULAS: &[&str] = &[
    "x - y",
    "-x + y * 2.5",
    "x * y",
    "x / (Square(y) + 0.5)",
    "Exp(x - y)",
    "Log(Square(x - y) + 0.1)",
    "Sqrt(Abs(x - y))",
    "Rsqrt(Abs(x - y) + 0.01)",
    "Square(x - y)",
    "Inv(Square(x - y) + 0.1)",
    "Abs(x - y)",
    "Sign(x - y)",
    "Step(x - y)",
    "ReLU(x - y)",
    "Sin(3 * x - y)",
    "Cos(x * y * 4)",
    "Asin(0.9 * Sin(x - y))",
    "Acos(0.9 * Cos(x + y))",
    "Atan(4 * (x - y))",
    "Floor(4 * (x - y))",
    "XLogX(Abs(x - y))",
    "SinXDivX(5 * (x - y))",
    "Round(x - y, 2)",
    "Pow(x - y, 3)",
    "Pow(Abs(x - y) + 0.5, -2)",
    "ClampInt(4 * (x - y), -1, 2)",
    "Powf(Abs(x - y) + 0.1, u + 1)",
    "Atan2(x - y, x + y)",
    "Equal(Round(x, 1), Round(y, 1))",
    "NotEqual(Round(x, 1), Round(y, 1))",
    "LessThan(x, y)",
    "LessOrEqual(x, y)",
    "Clamp(x - y, u, u + 0.5)",
    "IfElse(x - y, x, y)",
    "Mod(4 * (x - y), 1.5, -0.25)",
    "Sum(x - y)",
    "SumT(u - v, 3)",
    "Max(x - y)",
    "Min(x - y)",
    "ArgMax(x - y)",
    "ArgMin(x - y)",
    "SqNorm2(x - y)",
    "Norm2(x - y)",
    "Normalize(x - y)",
    "SqDist(x, y)",
    "(x - y | x + y)",
    "Scalprod(x, y)",
    "Elem(x - y, 1)",
    "ElemT(u - v, 3, 1)",
    "Extract(x - y, 1, 2)",
    "ExtractT(u - v, 1, 3)",
    "Concat(x - y, u)",
    "OneHot(4 * Abs(u - v), 3)",
    "MatVecMult(a, x - y)",
    "VecMatMult(x - y, a)",
    "TensorProd(x, y)",
    "TensorDot(a, x - y, [3, 3], [3], [1], [0])",
    "TensorDot(a, TensorProd(x, y), [3, 3], [3, 3], [0, 1], [1, 0])",
    "WeightedSqNorm(s, x - y)",
    "WeightedSqNorm(p, x - y)",
    "WeightedSqNorm(a, x - y)",
    "WeightedSqDist(p, x, y)",
    "SqNormIso(s, x - y)",
    "SqNormDiag(p, x - y)",
    "SymSqNorm(a, x - y)",
    "IntCst(3) * x + Zero(3)",
    // Parts that depend on one index only, or none, as the whole formula or inside it.
    "x",
    "y * s",
    "p",
    "Exp(y) * Normalize(y) + Sin(x) * u",
    "Grad(Exp(-SqDist(x, y) * s), x, v)",
];

fn check_formula(formula: &str, dtype: DType, n: usize, m: usize) {
    for axis in [0, 1] {
        check(
            &format!("Sum_Reduction({formula}, {axis})"),
            Some(&format!("Sum_Reduction(Abs({formula}), {axis})")),
            n,
            m,
            dtype,
        );
    }
}

#[test]
fn every_operator_f64() {
    for formula in FORMULAS {
        check_formula(formula, DType::F64, 37, 203);
    }
}

#[test]
fn every_operator_f32() {
    for formula in FORMULAS {
        check_formula(formula, DType::F32, 37, 203);
    }
}

/// Every reduction, with the formula it needs (a scalar for the LogSumExp family).
fn reductions(axis: usize) -> Vec<(String, Option<String>)> {
    let f = "SqDist(x, y) * s - u * v";
    let vec_f = "x * y - p";
    let w = "Concat(v, y)";
    let sum = |g: &str| Some(format!("Sum_Reduction(Abs({g}), {axis})"));
    vec![
        (format!("Sum_Reduction({vec_f}, {axis})"), sum(vec_f)),
        (format!("Max_Reduction({vec_f}, {axis})"), None),
        (format!("Min_Reduction({vec_f}, {axis})"), None),
        (format!("ArgMax_Reduction({vec_f}, {axis})"), None),
        (format!("ArgMin_Reduction({vec_f}, {axis})"), None),
        (format!("Max_ArgMax_Reduction({vec_f}, {axis})"), None),
        (format!("Min_ArgMin_Reduction({vec_f}, {axis})"), None),
        (format!("LogSumExp_Reduction({f}, {axis})"), None),
        (
            format!("LogSumExpWeight_Reduction({f}, Exp({w}), {axis})"),
            None,
        ),
        (format!("Max_SumShiftExp_Reduction({f}, {axis})"), None),
        (
            format!("Max_SumShiftExpWeight_Reduction({f}, {w}, {axis})"),
            None,
        ),
        (
            format!("SumSoftMaxWeight_Reduction({f}, {w}, {axis})"),
            None,
        ),
        (format!("KMin_Reduction({vec_f}, 4, {axis})"), None),
        (format!("ArgKMin_Reduction({vec_f}, 4, {axis})"), None),
        (format!("KMin_ArgKMin_Reduction({vec_f}, 3, {axis})"), None),
        (format!("ArgKMin_Reduction(SqDist(x, y), 10, {axis})"), None),
        // Above the unrolled size: lane lists in memory, insertions as loops.
        (format!("KMin_ArgKMin_Reduction({vec_f}, 17, {axis})"), None),
        (format!("ArgKMin_Reduction(SqDist(x, y), 40, {axis})"), None),
    ]
}

/// Arg-reductions in f32 may pick another index where two values are within rounding of each
/// other: there, the values at both indices must agree to the tolerance instead.
fn check_reductions(dtype: DType, sizes: &[(usize, usize)]) {
    for &(n, m) in sizes {
        for axis in [0, 1] {
            for (reduction, scale) in reductions(axis) {
                let compiled = compile(&kernel(&reduction));
                let k = &compiled.kernels[0];
                let problem = problem(n, m, dtype, (n * 7 + m) as u64);
                let want = eval(k, &problem, Backend::Interp).to_f64();
                let got = eval(k, &problem, Backend::Cpu).to_f64();
                let scale = match scale {
                    Some(text) => {
                        let c = compile(&kernel(&text));
                        eval(&c.kernels[0], &problem, Backend::Interp).to_f64()
                    }
                    None => want.clone(),
                };
                let what = format!("{reduction} ({dtype}, N = {n}, M = {m})");
                if dtype == DType::F32 && k.signature.reduction.kind.outputs_indices() {
                    check_indices_f32(k, &problem, &got, &want, &what);
                } else {
                    assert_matches(&got, &want, &scale, tolerance(dtype), &what);
                }
            }
        }
    }
}

/// Values must match; an index may differ only where the formula's values at both indices are
/// within the f32 tolerance.
fn check_indices_f32(k: &CheckedKernel, problem: &Problem, got: &[f64], want: &[f64], what: &str) {
    let red = &k.signature.reduction;
    let out_dim = red.output_dim();
    let n = red.fdim;
    let evaluator = PointEvaluator::new(&k.formula).expect("no derivatives left");
    let mut scratch = evaluator.scratch();
    let data: Vec<Vec<f64>> = problem.inputs.iter().map(|(_, a)| a.to_f64()).collect();
    let axis0 = k.signature.axis == keops_runtime::Axis::I;
    let mut value_at = |row: usize, inner: usize, c: usize| {
        let (i, j) = if axis0 { (row, inner) } else { (inner, row) };
        let vars = &k.formula.vars;
        evaluator.eval(&mut scratch, |v| {
            let dim = vars[v].dim;
            let r = match vars[v].category {
                keops_runtime::Category::I => i,
                keops_runtime::Category::J => j,
                keops_runtime::Category::Param => 0,
            };
            &data[v][r * dim..(r + 1) * dim]
        })[c]
    };
    for (row, (g, w)) in got
        .chunks(out_dim.max(1))
        .zip(want.chunks(out_dim.max(1)))
        .enumerate()
    {
        for (slot, (&gi, &wi)) in g.iter().zip(w).enumerate() {
            let is_index = match red.kind {
                keops_runtime::ReductionKind::MaxArgMax
                | keops_runtime::ReductionKind::MinArgMin => slot >= n,
                keops_runtime::ReductionKind::KMinArgKMin => slot >= out_dim / 2,
                _ => true,
            };
            if gi == wi {
                continue;
            }
            if !is_index {
                let tol = tolerance(DType::F32) * wi.abs().max(1e-3);
                assert!(
                    (gi - wi).abs() <= tol,
                    "{what}: row {row} slot {slot}: cpu {gi}, interpreter {wi}"
                );
            } else if gi != wi {
                let c = slot % n;
                let (vg, vw) = (value_at(row, gi as usize, c), value_at(row, wi as usize, c));
                assert!(
                    (vg - vw).abs() <= 1e-5 * vw.abs().max(1.0),
                    "{what}: row {row} slot {slot}: cpu index {gi} (value {vg}), interpreter index {wi} (value {vw})"
                );
            }
        }
    }
}

#[test]
fn every_reduction_f64() {
    check_reductions(DType::F64, &[(1, 1), (7, 1003), (1000, 7), (1003, 1000)]);
}

#[test]
fn every_reduction_f32() {
    check_reductions(DType::F32, &[(1, 1), (7, 1003), (1000, 7), (1003, 1000)]);
}

#[test]
fn larger_sizes_with_several_tiles() {
    for dtype in [DType::F32, DType::F64] {
        check(
            "Sum_Reduction(Exp(-SqDist(x, y) * s) * v, 0)",
            Some("Sum_Reduction(Exp(-SqDist(x, y) * s) * Abs(v), 0)"),
            1003,
            5000,
            dtype,
        );
        check(
            "LogSumExp_Reduction(-SqDist(x, y) * s * 30 + v, 1)",
            None,
            5000,
            1003,
            dtype,
        );
        check(
            "Min_ArgMin_Reduction(SqDist(x, y), 0)",
            None,
            300,
            4099,
            DType::F64,
        );
        check(
            "KMin_ArgKMin_Reduction(SqDist(x, y), 5, 1)",
            None,
            4099,
            300,
            DType::F64,
        );
    }
}

/// The runtime's inner split (used when rows are few) merges partial accumulators: every
/// schedule must give the interpreter's result.
#[test]
fn inner_splits_merge_partials() {
    let cases = [
        "Sum_Reduction(Exp(-SqDist(x, y)) * v, 0)",
        "Min_ArgMin_Reduction(SqDist(x, y) * v, 0)",
        "LogSumExp_Reduction(SqDist(x, y) * 20 * v, 0)",
        "KMin_ArgKMin_Reduction(SqDist(x, y), 4, 0)",
        "SumSoftMaxWeight_Reduction(SqDist(x, y), Concat(v, y), 0)",
    ];
    for text in cases {
        let compiled = compile(&kernel(text));
        let k = &compiled.kernels[0];
        let problem = problem(5, 20011, DType::F64, 3);
        let want = eval(k, &problem, Backend::Interp).to_f64();
        let jit = driver::compile_cpu(k, DType::F64).expect("compiles");
        let arrays: Vec<_> = problem.inputs.iter().map(|(_, a)| a.view()).collect();
        for (row_block, inner_chunks) in [(1, 1), (2, 3), (5, 7), (1, 64)] {
            let schedule = TileSchedule {
                row_block,
                inner_chunks,
            };
            let got = run_tiles(&jit.tile_kernel(), &arrays, Some(schedule))
                .expect("runs")
                .to_f64();
            assert_matches(
                &got,
                &want,
                &want,
                1e-10,
                &format!("{text} with {schedule:?}"),
            );
        }
    }
}

#[test]
fn sum_of_a_million_f32_terms_is_accurate() {
    // 0.1 is inexact in f32: a running f32 sum of 10^6 copies drifts by about 1%.
    let text = "kernel t {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(y + x * 0, 0)\n}\n";
    let compiled = compile(text);
    let m = 1_000_000;
    let mut rng = StdRng::seed_from_u64(9);
    let y: Vec<f32> = (0..m).map(|_| rng.random_range(0.0..1.0f32)).collect();
    let exact: f64 = y.iter().map(|&v| v as f64).sum();
    let inputs = vec![
        (
            "x".to_string(),
            HostArray::from_f32(vec![3, 1], vec![1.0, 2.0, 3.0]),
        ),
        ("y".to_string(), HostArray::from_f32(vec![m, 1], y)),
    ];
    let out = driver::evaluate(&compiled.kernels[0], &inputs, Backend::Cpu)
        .expect("runs")
        .output
        .to_f64();
    for got in out {
        assert!(((got - exact) / exact).abs() < 1e-5, "{got} vs {exact}");
    }
}

#[test]
fn nan_propagates_and_infinities_are_handled() {
    let text = kernel("Sum_Reduction(x * v, 0)");
    let compiled = compile(&text);
    let mut problem = problem(3, 17, DType::F64, 1);
    let (_, y) = problem
        .inputs
        .iter_mut()
        .find(|(n, _)| n == "v")
        .expect("v");
    if let keops_runtime::ArrayData::F64(data) = &mut y.data {
        data[5] = f64::NAN;
    }
    let out = eval(&compiled.kernels[0], &problem, Backend::Cpu).to_f64();
    assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    // LogSumExp of values that are all -inf is -inf; a +inf dominates.
    let lse = compile(&kernel("LogSumExp_Reduction(Log(Step(u) * Step(v)), 0)"));
    let problem = self::problem(40, 33, DType::F64, 2);
    let want = eval(&lse.kernels[0], &problem, Backend::Interp).to_f64();
    let got = eval(&lse.kernels[0], &problem, Backend::Cpu).to_f64();
    assert_matches(&got, &want, &want, 1e-12, "LogSumExp with -inf");
}

fn arb_formula() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        Just("u".to_string()),
        Just("v".to_string()),
        Just("p".to_string()),
        Just("s".to_string()),
        (-2.0f64..2.0).prop_map(|c| format!("{c:.3}")),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
            inner.clone().prop_map(|a| format!("Exp(-Square({a}))")),
            inner.clone().prop_map(|a| format!("Sin({a})")),
            inner.clone().prop_map(|a| format!("Log(1 + Square({a}))")),
            inner.clone().prop_map(|a| format!("Sqrt(Abs({a}))")),
            inner.clone().prop_map(|a| format!("Atan({a})")),
            inner.clone().prop_map(|a| format!("Sum({a})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("SqDist({a}, {b})")),
        ]
    })
}

proptest! {
    // A fixed seed: the same formulas on every run (set PROPTEST_RNG_SEED to explore others).
    #![proptest_config(ProptestConfig {
        cases: 24,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261124),
        ..ProptestConfig::default()
    })]

    /// Random formulas (mixed dimensions broadcast or fail to check; those are rejected and
    /// drawn again, so that every counted case runs). In f32 a random formula may cancel
    /// catastrophically (`Log(1 + Square(y))` for small y loses digits that f64 keeps): f32
    /// checks the code paths with a looser tolerance, f64 the values.
    #[test]
    fn random_formulas_match_the_interpreter(formula in arb_formula(), axis in 0usize..2, f32 in any::<bool>()) {
        let text = kernel(&format!("Sum_Reduction({formula}, {axis})"));
        prop_assume!(driver::compile(SourceFile::new("<random>", &text)).is_ok());
        let dtype = if f32 { DType::F32 } else { DType::F64 };
        let tol = if f32 { 2e-2 } else { tolerance(dtype) };
        check_within(&format!("Sum_Reduction({formula}, {axis})"), Some(&format!("Sum_Reduction(Abs({formula}), {axis})")), 9, 61, dtype, tol);
    }
}

/// Values with many exact ties, across lanes, inner tiles and inner splits: the first index
/// must win everywhere, as in the interpreter (exact integers, so no rounding can excuse a
/// difference).
#[test]
fn ties_keep_the_first_index_across_lanes_and_tiles() {
    let cases = [
        "KMin_ArgKMin_Reduction(Floor(4 * v) + Floor(2 * u), 6, 0)",
        "ArgKMin_Reduction(Floor(3 * y) + u * 0, 3, 0)",
        "KMin_ArgKMin_Reduction(Floor(4 * v) + Floor(2 * u), 20, 0)",
        "Min_ArgMin_Reduction(Floor(4 * v) - x, 0)",
        "Max_ArgMax_Reduction(Floor(4 * u) + x, 1)",
    ];
    for dtype in [DType::F64, DType::F32] {
        for text in cases {
            let compiled = compile(&kernel(text));
            let k = &compiled.kernels[0];
            let problem = problem(13, 9001, dtype, 5);
            let problem = if text.contains(", 1)") {
                self::problem(9001, 13, dtype, 6)
            } else {
                problem
            };
            let want = eval(k, &problem, Backend::Interp).to_f64();
            let jit = driver::compile_cpu(k, dtype).expect("compiles");
            let arrays: Vec<_> = problem.inputs.iter().map(|(_, a)| a.view()).collect();
            for schedule in [
                None,
                Some(TileSchedule {
                    row_block: 3,
                    inner_chunks: 5,
                }),
            ] {
                let got = run_tiles(&jit.tile_kernel(), &arrays, schedule)
                    .expect("runs")
                    .to_f64();
                assert_eq!(got, want, "{text} ({dtype}) with {schedule:?}");
            }
        }
    }
}

/// Offsets past 2^31 bytes in the transposed inputs (5.6e8 floats): every address computation
/// of the tile function is 64-bit. About 4.5 GB of memory (the input and its transposed copy)
/// and 10 s: ignored by a plain `cargo test`, which reports it as such; `./x test` runs it
/// where 6 GiB are available (CI has 24).
#[test]
#[ignore = "needs about 6 GiB of memory: cargo test -p keopsc --test all -- --ignored huge_inner_offsets (./x test runs it)"]
fn huge_inner_offsets_index_in_64_bits() {
    let text = "kernel t {\n x = Vi(4)\n y = Vj(4)\n Min_ArgMin_Reduction(SqDist(x, y), 0)\n}\n";
    let compiled = compile(text);
    let m: usize = 140_000_000;
    // A multiple of 16: exact in a float32 output (spacing 16 above 2^27).
    let planted = 139_999_984;
    let mut y: Vec<f32> = (0..m * 4)
        .map(|k| 1.0 + ((k as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0)
        .collect();
    y[planted * 4..planted * 4 + 4].fill(0.5);
    let inputs = vec![
        (
            "x".to_string(),
            HostArray::from_f32(vec![2, 4], vec![0.0; 8]),
        ),
        ("y".to_string(), HostArray::from_f32(vec![m, 4], y)),
    ];
    let out = driver::evaluate(&compiled.kernels[0], &inputs, Backend::Cpu)
        .expect("runs")
        .output
        .to_f64();
    assert_eq!(out, vec![1.0, planted as f64, 1.0, planted as f64]);
}

/// The online maximum keeps LogSumExp finite where exp alone overflows (f32 overflows above 88,
/// f64 above 709), and its lanes merge correctly when the maximum jumps between tiles.
#[test]
fn logsumexp_of_large_values_does_not_overflow() {
    for dtype in [DType::F32, DType::F64] {
        check(
            "LogSumExp_Reduction(SqDist(x, y) * 300 + 800 * v, 0)",
            None,
            13,
            9001,
            dtype,
        );
        check(
            "Max_SumShiftExp_Reduction(-SqDist(x, y) * 300 - 800 * u, 1)",
            None,
            9001,
            13,
            dtype,
        );
    }
}

/// Tiles of one accumulator run their rows two at a time (`codegen::cpu`, `rows_in_pairs`):
/// odd and even row counts, one row, a block boundary, remainders of every length, and a Min
/// (which pairs too) give the interpreter's results.
#[test]
fn rows_run_in_pairs_with_every_remainder() {
    for dtype in [DType::F32, DType::F64] {
        // Row counts around the pairs and the 256-row blocks; inner lengths around the vector
        // width and, with few rows, the 4096-element inner tile.
        let sizes = [1, 2, 3, 5, 256, 257, 515]
            .into_iter()
            .flat_map(|n| [1, 7, 9, 17].map(|m| (n, m)))
            .chain([(1, 4099), (2, 4099), (5, 4099)]);
        for (n, m) in sizes {
            check(
                "Sum_Reduction(Exp(-SqDist(x, y) * s) * v + u, 0)",
                Some("Sum_Reduction(Abs(Exp(-SqDist(x, y) * s) * v) + Abs(u), 0)"),
                n,
                m,
                dtype,
            );
            check("Min_Reduction(SqDist(x, y) - u * v, 1)", None, m, n, dtype);
        }
    }
}

/// A maximum that grows at every pair (v sorted), in every lane or in some (rows whose u
/// reverses the order), with -inf and +inf among the values: the folds that rescale and
/// weigh with one exponential give the interpreter's results, weights included.
#[test]
fn logsumexp_with_a_maximum_growing_at_every_pair() {
    for reduction in [
        "LogSumExp_Reduction(v * u, 0)",
        "LogSumExpWeight_Reduction(v * u, Concat(v, v * v), 0)",
    ] {
        check_growing_maxima(reduction);
    }
}

fn check_growing_maxima(reduction: &str) {
    let compiled = compile(&kernel(reduction));
    let k = &compiled.kernels[0];
    for dtype in [DType::F32, DType::F64] {
        for m in [7, 64, 1001] {
            let mut v: Vec<f64> = (0..m).map(|j| j as f64 * 0.75 - 3.0).collect();
            // Rows: increasing (every pair grows), decreasing (never after the first), and
            // a -inf and a +inf among the values of the last columns.
            let u = [1.0, -1.0, 0.5, 2.0];
            if m > 8 {
                v[m - 3] = f64::NEG_INFINITY;
                v[m / 2] = f64::INFINITY;
            }
            let mut problem = problem(u.len(), m, dtype, 5);
            for (name, array) in problem.inputs.iter_mut() {
                match name.as_str() {
                    "u" => *array = column(&u, dtype),
                    "v" => *array = column(&v, dtype),
                    _ => {}
                }
            }
            let want = eval(k, &problem, Backend::Interp).to_f64();
            let got = eval(k, &problem, Backend::Cpu).to_f64();
            let what = format!("{reduction} {dtype:?} M = {m}");
            assert_matches(&got, &want, &want, tolerance(dtype), &what);
        }
    }
}

/// Rows whose exponentials are all normal, all denormal, all zero, or mixed (some lanes
/// underflow), in runs: every row must come out as the interpreter's (up to the flushed
/// subnormals), whatever the rows before it were. A lane of the flushing `exp` scaled wrongly
/// below the smallest normal number (`MathLib::with_flushing`) would be off by a factor of
/// 2 or more, or not flushed.
#[test]
fn small_exponentials_in_runs_of_rows_match_the_interpreter() {
    #[derive(Clone, Copy)]
    enum Row {
        Normal,
        Denormal,
        Zero,
        Mixed,
    }
    use Row::*;
    let mut pattern: Vec<Row> = Vec::new();
    let mut run = |row: Row, count: usize| pattern.extend(std::iter::repeat_n(row, count));
    run(Normal, 3);
    run(Denormal, 1);
    run(Normal, 10);
    run(Denormal, 300);
    run(Normal, 200);
    for _ in 0..40 {
        run(Normal, 1);
        run(Mixed, 1);
    }
    run(Zero, 20);
    run(Normal, 20);
    run(Mixed, 150);
    run(Normal, 5);
    let kernels = [
        ("Sum_Reduction(Exp(u - a * v), 0)", "sum"),
        ("LogSumExp_Reduction(u - a * v, 0)", "logsumexp"),
    ];
    for dtype in [DType::F32, DType::F64] {
        // exp(u ± 1) is denormal: f32 below 2^-126 (e^-87.3), f64 below 2^-1022 (e^-708.4).
        let denormal = match dtype {
            DType::F32 => -95.0,
            DType::F64 => -720.0,
        };
        let (mut u, mut a) = (Vec::new(), Vec::new());
        for &row in &pattern {
            let (offset, mixing) = match row {
                Normal => (0.0, 0.0),
                Denormal => (denormal, 0.0),
                Zero => (-1e4, 0.0),
                Mixed => (0.0, 1.0),
            };
            u.push(offset);
            a.push(mixing);
        }
        for m in [100, 5003] {
            let mut rng = StdRng::seed_from_u64(m as u64);
            // Every 7th inner point makes the mixed rows' exponent -800: 0 in both types.
            let v: Vec<f64> = (0..m)
                .map(|j| {
                    if j % 7 == 3 {
                        800.0
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            let array = |data: &[f64]| column(data, dtype);
            let inputs = vec![
                ("u".to_string(), array(&u)),
                ("a".to_string(), array(&a)),
                ("v".to_string(), array(&v)),
            ];
            for (reduction, what) in kernels {
                let text = format!("kernel t {{ u = Vi(1) a = Vi(1) v = Vj(1) {reduction} }}\n");
                let compiled = compile(&text);
                let k = &compiled.kernels[0];
                let want = driver::evaluate(k, &inputs, Backend::Interp)
                    .unwrap()
                    .output
                    .to_f64();
                let views: Vec<_> = inputs.iter().map(|(_, x)| x.view()).collect();
                let jit = driver::compile_cpu(k, dtype).unwrap();
                for schedule in [
                    None,
                    Some(TileSchedule {
                        row_block: 37,
                        inner_chunks: 1,
                    }),
                ] {
                    let got = run_tiles(&jit.tile_kernel(), &views, schedule)
                        .unwrap()
                        .to_f64();
                    // Each term rounds once, or is flushed to zero below the smallest normal
                    // number (lang-spec/backends.md, "Subnormal numbers"), then sums.
                    let (tol, step) = match dtype {
                        DType::F32 => (1e-5, f64::from(f32::MIN_POSITIVE)),
                        DType::F64 => (1e-12, f64::MIN_POSITIVE),
                    };
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= tol * w.abs() + m as f64 * step,
                            "{what}, {dtype}, m = {m}, {schedule:?}: row {i}: cpu {g:e}, interpreter {w:e}"
                        );
                    }
                }
            }
        }
    }
}

/// The symmetric schedule is chosen where the two halves share enough: a Gaussian (the
/// exponential shared) pays, a formula whose halves share nothing does not, and
/// `Pairs::Same` then runs the full evaluation, with the same result.
#[test]
fn symmetric_evaluation_is_chosen_where_it_pays() {
    let kernel = |formula: &str| {
        let text = format!(
            "kernel t {{ x = Vi(3) y = Vj(3) b = Vj(1) s = Pm(1) Sum_Reduction({formula}, 0) }}\n"
        );
        compile(&text).kernels.remove(0)
    };
    let gauss = kernel("Exp(-SqDist(x, y) * s) * b");
    let plan = keopsc::symmetric::plan(&gauss, &[(1, 0)]).unwrap();
    let payoff = keopsc::symmetric::payoff(&gauss, &plan).unwrap();
    assert!(payoff.pays(), "{payoff:?}");
    assert!(keopsc::symmetric::plan_if_it_pays(&gauss, &[(1, 0)]).is_ok());
    let apart = kernel("Exp(Elem(x, 0) * s - Elem(y, 1)) * b");
    let plan = keopsc::symmetric::plan(&apart, &[(1, 0)]).unwrap();
    let payoff = keopsc::symmetric::payoff(&apart, &plan).unwrap();
    assert!(!payoff.pays(), "{payoff:?}");
    let refused = keopsc::symmetric::plan_if_it_pays(&apart, &[(1, 0)]).unwrap_err();
    assert!(
        refused.to_string().contains("share too little"),
        "{refused}"
    );
    let n = 300;
    let x: Vec<f64> = (0..n * 3)
        .map(|k| ((k * 37) % 101) as f64 / 101.0)
        .collect();
    let arrays = [
        HostArray::from_f64(vec![n, 3], x.clone()),
        HostArray::from_f64(vec![n, 3], x),
        HostArray::from_f64(vec![n, 1], vec![0.5; n]),
        HostArray::from_f64(vec![1], vec![0.7]),
    ];
    let refs: Vec<&HostArray> = arrays.iter().collect();
    let same = driver::EvalOptions::on(Backend::Cpu).pairs(driver::Pairs::Same(&[(1, 0)]));
    let same = driver::evaluate(&apart, &refs, same).unwrap().output;
    let full = driver::evaluate(&apart, &refs, Backend::Cpu)
        .unwrap()
        .output;
    assert_eq!(same.to_f64(), full.to_f64());
}

/// A kernel applied to one point cloud against itself (`y` holds `x`'s data), walked over
/// unordered pairs (`Pairs::Symmetric`): the same as the full evaluation and the
/// interpreter, for symmetric and non-symmetric formulas, vector outputs, both axes, sizes
/// around the symmetric blocks, f32 and f64.
#[test]
fn symmetric_evaluation_matches_the_full_one() {
    let formulas = [
        "Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})",
        "Sum_Reduction(Concat(Exp(-SqDist(x, y) * s) * b * u, (x - y) * Elem(y, 0) + u), {axis})",
        "Sum_Reduction(Scalprod(x, y) * u + Sin(Elem(y, 1)) * b, {axis})",
        // Most exponentials underflow, some would be subnormal: flushed alike in the
        // symmetric and the full evaluation.
        "Sum_Reduction(Exp(-SqDist(x, y) * s * 200) * b + Exp(u * 90 - 100), {axis})",
    ];
    for (f, formula) in formulas.iter().enumerate() {
        for axis in [0, 1] {
            let text = format!(
                "kernel t {{ x = Vi(3) y = Vj(3) u = Vi(1) b = Vj(1) s = Pm(1) {} }}\n",
                formula.replace("{axis}", &axis.to_string())
            );
            let compiled = compile(&text);
            let k = &compiled.kernels[0];
            let same = match axis {
                0 => [(1usize, 0usize)],
                _ => [(1, 0)],
            };
            let plan = keopsc::symmetric::plan(k, &same).unwrap();
            assert_eq!(plan.columns, k.signature.output_dim());
            for n in [1, 7, 255, 257, 1000] {
                let mut rng = StdRng::seed_from_u64((f * 10_000 + n) as u64);
                let mut array = |rows: usize, dim: usize| -> Vec<f64> {
                    (0..rows * dim)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect()
                };
                let (x, u, b) = (array(n, 3), array(n, 1), array(n, 1));
                for dtype in [DType::F64, DType::F32] {
                    let make = |shape: Vec<usize>, data: &[f64]| match dtype {
                        DType::F64 => HostArray::from_f64(shape, data.to_vec()),
                        DType::F32 => {
                            HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                        }
                    };
                    let arrays = [
                        make(vec![n, 3], &x),
                        make(vec![n, 3], &x),
                        make(vec![n, 1], &u),
                        make(vec![n, 1], &b),
                        make(vec![1], &[0.8]),
                    ];
                    let refs: Vec<&HostArray> = arrays.iter().collect();
                    // The pass over unordered pairs itself, whether it pays or not.
                    let symmetric = driver::EvalOptions::on(Backend::Cpu)
                        .pairs(driver::Pairs::Symmetric(&plan));
                    let got = driver::evaluate(k, &refs, symmetric).unwrap().output;
                    let full = driver::evaluate(k, &refs, Backend::Cpu).unwrap().output;
                    let want = driver::evaluate(k, &refs, Backend::Interp).unwrap().output;
                    assert_eq!(got.shape, full.shape);
                    let tol = match dtype {
                        DType::F64 => 1e-10,
                        DType::F32 => 1e-4,
                    };
                    let scale = n as f64;
                    for (r, ((g, w), c)) in got
                        .to_f64()
                        .iter()
                        .zip(want.to_f64())
                        .zip(full.to_f64())
                        .enumerate()
                    {
                        let what = format!("{formula} axis {axis}, n = {n}, {dtype}, entry {r}");
                        assert!(
                            (g - w).abs() <= tol * scale,
                            "{what}: {g} vs interpreter {w}"
                        );
                        assert!((g - c).abs() <= tol * scale, "{what}: {g} vs full {c}");
                    }
                }
            }
        }
    }
}

/// The x86 MXCSR of the calling thread.
#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut value = 0u32;
    // SAFETY: stores the 32-bit MXCSR into `value`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack)) };
    value
}

/// Sets the x86 MXCSR of the calling thread.
#[cfg(target_arch = "x86_64")]
fn set_mxcsr(value: u32) {
    // SAFETY: loads a valid MXCSR (the tests pass values read from it, with bits 6 and 15).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &value, options(nostack)) };
}

/// Compiled code flushes subnormal numbers to zero: a subnormal input reads as zero, a result
/// below the smallest normal number is zero, a row of subnormal terms sums to exactly zero, in
/// f32 and f64, on the caller's thread and rayon's workers alike (lang-spec/backends.md,
/// "Subnormal numbers"); the interpreter does not.
#[test]
fn subnormal_inputs_and_results_are_flushed_to_zero() {
    let k = compile("kernel t { x = Vi(1) y = Vj(1) Sum_Reduction(x * y, 0) }\n")
        .kernels
        .remove(0);
    let e = compile("kernel t { u = Vi(1) v = Vj(1) Sum_Reduction(Exp(u + v * 0), 0) }\n")
        .kernels
        .remove(0);
    for dtype in [DType::F32, DType::F64] {
        let (tiny, subnormal, below) = match dtype {
            // tiny * tiny is below the smallest normal; subnormal is one itself; exp(below) too
            DType::F32 => (1e-20, 3e-39, -95.0),
            DType::F64 => (1e-160, 3e-310, -720.0),
        };
        let array = |data: &[f64]| column(data, dtype);
        // Rows: tiny (tiny * tiny flushed, tiny * 1 kept), subnormal, -subnormal, 1.
        let inputs = vec![
            ("x".to_string(), array(&[tiny, subnormal, -subnormal, 1.0])),
            ("y".to_string(), array(&[tiny, 1.0])),
        ];
        let views: Vec<_> = inputs.iter().map(|(_, a)| a.view()).collect();
        let jit = driver::compile_cpu(&k, dtype).unwrap();
        let got = run_tiles(&jit.tile_kernel(), &views, None)
            .unwrap()
            .to_f64();
        let tiny_kept = array(&[tiny]).to_f64()[0];
        assert_eq!(got, vec![tiny_kept, 0.0, 0.0, 1.0 + tiny_kept], "{dtype}");
        // The interpreter keeps them.
        let exact = driver::evaluate(&k, &inputs, Backend::Interp)
            .unwrap()
            .output
            .to_f64();
        assert!(exact[1] > 0.0 && exact[2] < 0.0, "{dtype}: {exact:?}");

        // A row of 5000 subnormal exponentials sums to 0 (exactly: about 2e-38 in f32, a
        // normal number, when each term is kept), across lanes, tiles and inner splits; the
        // row of normal ones beside it does not change.
        let m = 5000;
        let inputs = vec![
            ("u".to_string(), array(&[below, 0.0, below])),
            ("v".to_string(), array(&vec![0.5; m])),
        ];
        let views: Vec<_> = inputs.iter().map(|(_, a)| a.view()).collect();
        let jit = driver::compile_cpu(&e, dtype).unwrap();
        for schedule in [
            None,
            Some(TileSchedule {
                row_block: 1,
                inner_chunks: 7,
            }),
        ] {
            let got = run_tiles(&jit.tile_kernel(), &views, schedule)
                .unwrap()
                .to_f64();
            assert_eq!(got, vec![0.0, m as f64, 0.0], "{dtype} {schedule:?}");
        }
        let exact = driver::evaluate(&e, &inputs, Backend::Interp)
            .unwrap()
            .output
            .to_f64();
        assert!(
            exact[0] > 0.0,
            "{dtype}: the interpreter keeps subnormal terms"
        );
    }
}

/// The flushing window never leaks: after compiled code ran on the caller's thread and on
/// rayon's workers, each thread's MXCSR is what it was, whether the caller flushed or not.
#[cfg(target_arch = "x86_64")]
#[test]
fn compiled_code_restores_the_callers_floating_point_state() {
    let k = compile("kernel t { x = Vi(1) y = Vj(1) Sum_Reduction(Exp(-x * y), 0) }\n")
        .kernels
        .remove(0);
    let jit = driver::compile_cpu(&k, DType::F32).unwrap();
    let data = |n: usize| HostArray::from_f32(vec![n, 1], (0..n).map(|i| i as f32).collect());
    let (x, y) = (data(4000), data(3000));
    let views = [x.view(), y.view()];
    let original = mxcsr();
    const FTZ_DAZ: u32 = 0x8040;
    let workers_before = rayon::broadcast(|_| mxcsr());
    for caller in [original & !FTZ_DAZ, original | FTZ_DAZ] {
        set_mxcsr(caller);
        // Many blocks and inner splits: the caller's thread runs some, the workers the rest.
        let schedule = TileSchedule {
            row_block: 16,
            inner_chunks: 4,
        };
        run_tiles(&jit.tile_kernel(), &views, Some(schedule)).unwrap();
        let after = mxcsr();
        set_mxcsr(original);
        assert_eq!(after, caller, "the caller's MXCSR after a call");
        assert_eq!(
            rayon::broadcast(|_| mxcsr()),
            workers_before,
            "rayon's workers"
        );
    }
}

/// Which tiles run their rows two at a time: a sum of one number does; the cross tile of its
/// symmetric pass (one number per row and one column) does not, its columns counted. Paired,
/// W1's symmetric pass lost its whole gain (1.0x the full evaluation's time against 0.59x, f32,
/// N = 5e4, Zen 3): the columns' loads and stores per vector of pairs doubled with the rows.
#[test]
fn cross_tiles_run_one_row_at_a_time() {
    use keops_runtime::{Reduction, ReductionKind};
    use keopsc::codegen::jit::{build_module, TileSpec};
    let text = "kernel w {\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n \
                Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)\n}\n";
    let kernel = compile(text).kernels.remove(0);
    let plan = keopsc::symmetric::plan(&kernel, &[(1, 0)]).expect("a symmetric plan");
    let target = keopsc::codegen::host_cpu();
    let optimize = |k: &CheckedKernel| {
        keopsc::opt::optimize(k, &keopsc::opt::OptBudget::default())
            .expect("optimises")
            .formula
    };
    let ir = |spec: TileSpec| {
        let context = inkwell::context::Context::create();
        let module = build_module(&context, "tiles", &[spec], &target).expect("builds");
        // Bound to a name: the module borrows the context, which must outlive it.
        let text: String = module.print_to_string().to_string();
        text
    };
    let plain = optimize(&kernel);
    let paired = ir(TileSpec::single(&plain, &kernel.signature, DType::F32));
    assert!(
        paired.contains("last_row"),
        "W1's tile runs its rows in pairs"
    );

    let cross = optimize(&plan.cross);
    let mut rows = plan.cross.signature.clone();
    let fdim = rows.reduction.fdim;
    rows.reduction = Reduction::new(ReductionKind::Sum, fdim - plan.columns);
    let spec = TileSpec {
        columns: plan.columns,
        ..TileSpec::single(&cross, &rows, DType::F32)
    };
    assert!(
        !ir(spec).contains("last_row"),
        "the cross tile runs one row at a time"
    );
}
