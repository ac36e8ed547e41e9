//! Large dimensions against the interpreter: Gram products (`SqDist` and scalar products of
//! many-component variables, computed a block of rows against a tile at once;
//! `schedule::GramProduct`) and wide products (a sum of a scalar times a many-component inner
//! variable, `schedule::WideProduct`). Odd dimensions and sizes (partial row blocks, inner
//! remainders, components left over by the register tile), both axes and dtypes, data far from
//! the origin, exact duplicates, NaN and infinities, several products in one formula, formulas
//! that also read the variables elsewhere, and a 4001-component sum.

use keops_runtime::{DType, HostArray};
use keopsc::driver::{self, Backend};
use keopsc::opt::{optimize, OptBudget};
use keopsc::source::SourceFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Case {
    /// The kernel's text, `{D}` standing for the dimension.
    text: &'static str,
    /// The same kernel with every term made non-negative (the scale of the rounding error of
    /// a sum), or None for reductions that are not sums.
    scale: Option<&'static str>,
}

fn source(text: &str, dim: usize) -> String {
    text.replace("{D}", &dim.to_string())
}

/// Points `centre + spread * uniform(-1, 1)`, `rows x dim`, with row 0 of `x` repeated in
/// `y` (an exact duplicate) when both have rows.
fn inputs(
    n: usize,
    m: usize,
    dim: usize,
    dtype: DType,
    (centre, spread): (f64, f64),
    seed: u64,
) -> Vec<(String, HostArray)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut points = |rows: usize, dim: usize, centre: f64, spread: f64| -> Vec<f64> {
        (0..rows * dim)
            .map(|_| centre + spread * rng.random_range(-1.0..1.0))
            .collect()
    };
    let x = points(n, dim, centre, spread);
    let mut y = points(m, dim, centre, spread);
    let z = points(m, dim, 0.0, 1.0);
    if m > 2 {
        y[2 * dim..3 * dim].copy_from_slice(&x[..dim]);
    }
    let v = points(m, 1, 0.0, 1.0);
    let g = vec![0.5 / (dim as f64 * spread * spread).max(1e-12)];
    let array = |rows: usize, dim: usize, data: Vec<f64>| match dtype {
        DType::F64 => HostArray::from_f64(vec![rows, dim], data),
        DType::F32 => {
            HostArray::from_f32(vec![rows, dim], data.iter().map(|&x| x as f32).collect())
        }
    };
    vec![
        ("x".into(), array(n, dim, x)),
        ("y".into(), array(m, dim, y)),
        ("z".into(), array(m, dim, z)),
        ("v".into(), array(m, 1, v)),
        ("g".into(), array(1, 1, g)),
    ]
}

const DECLS: &str = "x = Vi({D})\n y = Vj({D})\n z = Vj({D})\n v = Vj(1)\n g = Pm(1)\n";

fn kernel(body: &str) -> String {
    format!("kernel t {{\n {DECLS} {body}\n}}\n")
}

fn evaluate(text: &str, inputs: &[(String, HostArray)], backend: Backend) -> Vec<f64> {
    let compiled = driver::compile(SourceFile::new("<gram test>", text))
        .unwrap_or_else(|_| panic!("compiles:\n{text}"));
    driver::evaluate(&compiled.kernels[0], inputs, backend)
        .map(|done| done.output)
        .unwrap_or_else(|e| panic!("{backend}: {e}\n{text}"))
        .to_f64()
}

/// The CPU code's schedule text for `text` in `dtype`.
fn schedule_of(text: &str, dtype: DType) -> String {
    let compiled = driver::compile(SourceFile::new("<gram test>", text)).expect("compiles");
    let optimized = optimize(&compiled.kernels[0], &OptBudget::default()).expect("optimizes");
    driver::cpu_code(&optimized, dtype)
        .expect("compiles for the CPU")
        .schedule_text
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], scale: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * s.abs().max(w.abs()).max(1e-6)
        };
        assert!(ok, "{what}: output {k}: cpu {g:?}, interpreter {w:?}");
    }
}

const CASES: &[Case] = &[
    Case {
        text: "Sum_Reduction(Exp(-SqDist(x, y) * g) * v, 0)",
        scale: Some("Sum_Reduction(Exp(-SqDist(x, y) * g) * Abs(v), 0)"),
    },
    Case {
        text: "Sum_Reduction(Exp(-SqDist(y, x) * g) * v, 1)",
        scale: Some("Sum_Reduction(Exp(-SqDist(y, x) * g) * Abs(v), 1)"),
    },
    Case {
        text: "Min_Reduction(SqDist(x, y), 0)",
        scale: None,
    },
    Case {
        text: "Max_Reduction((x | y) * g, 1)",
        scale: None,
    },
    Case {
        text: "LogSumExp_Reduction((x | z) * g - SqDist(x, y) * g, 0)",
        scale: None,
    },
    // Wide products (with a Gram product inside).
    Case {
        text: "Sum_Reduction(Exp(-SqDist(x, y) * g) * z, 0)",
        scale: Some("Sum_Reduction(Exp(-SqDist(x, y) * g) * Abs(z), 0)"),
    },
    Case {
        text: "Sum_Reduction(x * Exp(-SqDist(x, y) * g), 1)",
        scale: Some("Sum_Reduction(Abs(x) * Exp(-SqDist(x, y) * g), 1)"),
    },
    Case {
        text: "Sum_Reduction(Sin(Sum(x) * v) * z, 0)",
        scale: Some("Sum_Reduction(Abs(Sin(Sum(x) * v) * z), 0)"),
    },
    // Element-wise vectors accumulated component by component (wide products too).
    Case {
        text: "Sum_Reduction(Exp(-SqDist(x, y) * g) * (x * 2 - Abs(y) + z * v), 0)",
        scale: Some("Sum_Reduction(Exp(-SqDist(x, y) * g) * Abs(x * 2 - Abs(y) + z * v), 0)"),
    },
    Case {
        text: "Sum_Reduction(Grad(Exp(-SqDist(x, y) * g) * v, y, v), 1)",
        scale: Some("Sum_Reduction(Abs(Grad(Exp(-SqDist(x, y) * g) * v, y, v)), 1)"),
    },
    // The softmax family with a weight of many components (attention): wide products of
    // `exp(s - m)` against the rows' running maximum.
    Case {
        text: "SumSoftMaxWeight_Reduction((x | y) * g * 4, z, 0)",
        scale: Some("SumSoftMaxWeight_Reduction((x | y) * g * 4, Abs(z), 0)"),
    },
    Case {
        text: "LogSumExpWeight_Reduction(-SqDist(x, y) * g, Abs(z) + 1, 0)",
        scale: None,
    },
    Case {
        text: "Max_SumShiftExpWeight_Reduction(-SqDist(y, x) * g, x - y, 1)",
        scale: Some("Max_SumShiftExpWeight_Reduction(-SqDist(y, x) * g, Abs(x - y), 1)"),
    },
    // The gradient reads `x - y` besides the squared distance.
    Case {
        text: "Sum_Reduction(Grad(Exp(-SqDist(x, y) * g) * v, x, v), 0)",
        scale: Some("Sum_Reduction(Abs(Grad(Exp(-SqDist(x, y) * g) * v, x, v)), 0)"),
    },
    // Infinite scalars in the softmax family: -inf adds nothing, rows where every value is
    // -inf, +inf values that count once each.
    Case {
        text: "SumSoftMaxWeight_Reduction(Log(Step(v)) + (x | y) * g, z, 0)",
        scale: Some("SumSoftMaxWeight_Reduction(Log(Step(v)) + (x | y) * g, Abs(z), 0)"),
    },
    Case {
        text: "SumSoftMaxWeight_Reduction(Log(Step(v - 2)) + (x | y) * g, z, 0)",
        scale: None,
    },
    Case {
        text: "Max_SumShiftExpWeight_Reduction(-Log(Step(v)) + (x | y) * g, z + 2, 0)",
        scale: None,
    },
    // Sums over the components of element-wise formulas (Gram products evaluated component
    // by component): L1 distances, weighted norms, scalar products of products.
    Case {
        text: "Sum_Reduction(Exp(-Sum(Abs(x - y)) * g) * v, 0)",
        scale: Some("Sum_Reduction(Exp(-Sum(Abs(x - y)) * g) * Abs(v), 0)"),
    },
    Case {
        text: "Min_Reduction(SqNorm2(x * 2 - y), 1)",
        scale: None,
    },
    Case {
        text: "Max_Reduction((x * z | y) * g, 0)",
        scale: None,
    },
    Case {
        text: "ArgKMin_Reduction(SqDist(x * 2, y) + Sum(x * 0.5 - z), 3, 0)",
        scale: None,
    },
    // A vector infinite on the zero padding past the inner size (`Log(0)`): the tail's lanes
    // must not multiply it.
    Case {
        text: "Sum_Reduction(Exp(-SqDist(x, y) * g) * Log(Abs(z) + z * z), 0)",
        scale: Some("Sum_Reduction(Exp(-SqDist(x, y) * g) * Abs(Log(Abs(z) + z * z)), 0)"),
    },
    // DType products of computed operands (cosine similarities): Gram products reading the
    // row operand computed per row of a block and the inner one from the tile's buffer.
    Case {
        text: "Max_Reduction((Normalize(x) | Normalize(y)), 0)",
        scale: None,
    },
    Case {
        text: "Sum_Reduction(Exp((x * 2 | Normalize(z)) * g) * v, 1)",
        scale: Some("Sum_Reduction(Exp((x * 2 | Normalize(z)) * g) * Abs(v), 1)"),
    },
    // A computed operand that is not evaluated in loops (Concat): unrolled, once per row.
    Case {
        text: "Max_Reduction((Extract(Concat(x, x * 2), 1, {D}) | Normalize(y)), 0)",
        scale: None,
    },
];

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-4,
        DType::F64 => 1e-10,
    }
}

#[test]
fn large_dimensions_use_gram_products_and_small_ones_do_not() {
    let text = kernel(CASES[0].text);
    for dtype in [DType::F32, DType::F64] {
        let large = schedule_of(&source(&text, 64), dtype);
        assert!(
            large.contains("looped over components: SqDist(x, y)"),
            "{large}"
        );
        let small = schedule_of(&source(&text, 3), dtype);
        assert!(!small.contains("looped over components"), "{small}");
    }
    let wide = schedule_of(&source(&kernel(CASES[5].text), 16), DType::F32);
    assert!(wide.contains("accumulated as a matrix product"), "{wide}");
    for (k, how) in [
        (8, "accumulated component by component"),
        (9, "accumulated component by component"),
        (10, "accumulated as a matrix product"),
        (11, "accumulated component by component"),
        (12, "accumulated component by component"),
        (13, "accumulated component by component"),
        (17, "(component by component)"),
        (18, "(component by component)"),
        (19, "(component by component)"),
        (20, "(component by component)"),
        (
            22,
            "looped over components: Scalprod(Normalize(x), Normalize(y))",
        ),
    ] {
        let schedule = schedule_of(&source(&kernel(CASES[k].text), 16), DType::F32);
        assert!(schedule.contains(how), "{}: {schedule}", CASES[k].text);
    }
    let narrow = schedule_of(&source(&kernel(CASES[5].text), 15), DType::F32);
    assert!(!narrow.contains("matrix product"), "{narrow}");
    let dot = schedule_of(&source(&kernel(CASES[3].text), 40), DType::F32);
    assert!(dot.contains("looped over components: Scalprod("), "{dot}");
}

#[test]
fn gram_products_match_the_interpreter() {
    // (N, M, D): partial blocks of rows, remainders of lanes and tiles, odd dimensions.
    let sizes = [(13, 37, 16), (1, 7, 17), (29, 300, 64), (40, 1037, 131)];
    for case in CASES {
        for dtype in [DType::F32, DType::F64] {
            for (k, &(n, m, dim)) in sizes.iter().enumerate() {
                let inputs = inputs(n, m, dim, dtype, (0.0, 1.0), k as u64);
                // The axis-1 cases reduce over x: the rows are y's.
                let text = source(&kernel(case.text), dim);
                let want = evaluate(&text, &inputs, Backend::Interp);
                let got = evaluate(&text, &inputs, Backend::Cpu);
                let scale = match case.scale {
                    Some(s) => evaluate(&source(&kernel(s), dim), &inputs, Backend::Interp),
                    None => want.clone(),
                };
                let what = format!("{} ({dtype}, N {n}, M {m}, D {dim})", case.text);
                assert_close(&got, &want, &scale, tolerance(dtype), &what);
            }
        }
    }
}

/// Points far from the origin against their spread: the scalar-product form without centring
/// would lose every digit in f32 (|x|^2 = 1e6 D, distances about D).
#[test]
fn points_far_from_the_origin_keep_their_accuracy() {
    for dtype in [DType::F32, DType::F64] {
        let inputs = inputs(50, 333, 48, dtype, (1000.0, 1.0), 7);
        for case in &CASES[..3] {
            let text = source(&kernel(case.text), 48);
            let want = evaluate(&text, &inputs, Backend::Interp);
            let got = evaluate(&text, &inputs, Backend::Cpu);
            let scale = match case.scale {
                Some(s) => evaluate(&source(&kernel(s), 48), &inputs, Backend::Interp),
                None => want.clone(),
            };
            let what = format!("{} far from the origin ({dtype})", case.text);
            assert_close(&got, &want, &scale, tolerance(dtype), &what);
        }
    }
}

/// A point of `y` equal to `x[0]` is at distance exactly 0 (the direct recomputation), and the
/// nearest neighbour of x[0] is found with distance 0.
#[test]
fn exact_duplicates_are_at_distance_zero() {
    for dtype in [DType::F32, DType::F64] {
        let inputs = inputs(20, 100, 64, dtype, (3.0, 1.0), 3);
        let text = source(&kernel("Min_ArgMin_Reduction(SqDist(x, y), 0)"), 64);
        let got = evaluate(&text, &inputs, Backend::Cpu);
        assert_eq!(got[0], 0.0, "{dtype}: min distance of x[0]");
        assert_eq!(got[1], 2.0, "{dtype}: its index");
        let want = evaluate(&text, &inputs, Backend::Interp);
        let indices = |v: &[f64]| v.iter().skip(1).step_by(2).copied().collect::<Vec<_>>();
        assert_eq!(
            indices(&got),
            indices(&want),
            "{dtype}: every row's nearest point"
        );
        assert_close(&got, &want, &want, tolerance(dtype), &format!("{dtype}"));
    }
}

#[test]
fn nan_propagates_and_infinities_are_exact() {
    for dtype in [DType::F32, DType::F64] {
        let mut inputs = inputs(17, 45, 32, dtype, (0.0, 1.0), 11);
        let set = |array: &mut HostArray, at: usize, value: f64| match &mut array.data {
            keops_runtime::ArrayData::F64(d) => d[at] = value,
            keops_runtime::ArrayData::F32(d) => d[at] = value as f32,
        };
        set(&mut inputs[0].1, 3 * 32 + 5, f64::NAN); // x[3]: NaN
        set(&mut inputs[0].1, 4 * 32 + 1, f64::INFINITY); // x[4]: +inf
        set(&mut inputs[0].1, 5 * 32 + 7, 1e30); // x[5]: overflows in f32 once squared
                                                 // x[6] and y[3] both 1.8e19 in component 0 (y[0], the tile's centre, near 0): their
                                                 // centred norms overflow in f32 (2 x 3.2e38) while their distance is small.
        set(&mut inputs[0].1, 6 * 32, 1.8e19);
        set(&mut inputs[1].1, 3 * 32, 1.8e19);
        for body in [
            "Min_Reduction(SqDist(x, y), 0)",
            "Sum_Reduction(SqDist(x, y) * Abs(v), 0)",
        ] {
            let text = source(&kernel(body), 32);
            let want = evaluate(&text, &inputs, Backend::Interp);
            let got = evaluate(&text, &inputs, Backend::Cpu);
            assert_close(
                &got,
                &want,
                &want,
                tolerance(dtype),
                &format!("{body} ({dtype})"),
            );
            if body.starts_with("Sum") {
                assert!(got[3].is_nan(), "{dtype}: {:?}", got[3]);
            } else {
                assert_eq!(got[4], f64::INFINITY, "{dtype}");
            }
        }
    }
}

/// A sum of 4001 components per row (more per-lane accumulators than a tile may hold: the wide
/// product needs none), with NaN and infinity in some components of `b`.
#[test]
fn sums_of_thousands_of_components_run() {
    let text = "kernel t {\n x = Vi(3)\n y = Vj(3)\n b = Vj(4001)\n g = Pm(1)\n Sum_Reduction(Exp(-SqDist(x, y) * g) * b, 0)\n}\n";
    let scale_text = text.replace("* b, 0)", "* Abs(b), 0)");
    for dtype in [DType::F32, DType::F64] {
        let mut rng = StdRng::seed_from_u64(5);
        let mut points = |rows: usize, dim: usize| -> Vec<f64> {
            (0..rows * dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        };
        let (n, m) = (23, 101);
        let mut b = points(m, 4001);
        b[7 * 4001 + 10] = f64::NAN;
        b[9 * 4001 + 4000] = f64::INFINITY;
        let array = |rows: usize, dim: usize, data: Vec<f64>| match dtype {
            DType::F64 => HostArray::from_f64(vec![rows, dim], data),
            DType::F32 => {
                HostArray::from_f32(vec![rows, dim], data.iter().map(|&x| x as f32).collect())
            }
        };
        let inputs = vec![
            ("x".to_string(), array(n, 3, points(n, 3))),
            ("y".to_string(), array(m, 3, points(m, 3))),
            ("b".to_string(), array(m, 4001, b)),
            ("g".to_string(), array(1, 1, vec![0.7])),
        ];
        let want = evaluate(text, &inputs, Backend::Interp);
        let got = evaluate(text, &inputs, Backend::Cpu);
        let scale = evaluate(&scale_text, &inputs, Backend::Interp);
        assert!(got[10].is_nan() && got[4000] == f64::INFINITY, "{dtype}");
        assert_close(
            &got,
            &want,
            &scale,
            tolerance(dtype),
            &format!("4001 components ({dtype})"),
        );
    }
}

/// The pass over unordered pairs (a cross tile function, whose formula holds `F` and `F` with
/// the variables swapped) with Gram products in it, against the interpreter.
#[test]
fn symmetric_passes_with_gram_products_match_the_interpreter() {
    for formula in [
        "Sum_Reduction(Exp(-SqDist(x, y) * s) * b, 0)",
        "Sum_Reduction(Scalprod(x, y) * s * b + SqDist(x, y), 1)",
    ] {
        let text = format!("kernel t {{ x = Vi(24) y = Vj(24) b = Vj(1) s = Pm(1) {formula} }}\n");
        let compiled = driver::compile(SourceFile::new("<gram test>", &text)).expect("compiles");
        let k = &compiled.kernels[0];
        let plan = keopsc::symmetric::plan(k, &[(1, 0)]).expect("a symmetric plan");
        for n in [1, 13, 300] {
            let mut rng = StdRng::seed_from_u64(n as u64);
            let mut array = |rows: usize, dim: usize| -> Vec<f64> {
                (0..rows * dim)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            };
            let (x, b) = (array(n, 24), array(n, 1));
            for dtype in [DType::F64, DType::F32] {
                let make = |shape: Vec<usize>, data: &[f64]| match dtype {
                    DType::F64 => HostArray::from_f64(shape, data.to_vec()),
                    DType::F32 => {
                        HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                    }
                };
                let arrays = [
                    make(vec![n, 24], &x),
                    make(vec![n, 24], &x),
                    make(vec![n, 1], &b),
                    make(vec![1], &[0.05]),
                ];
                let refs: Vec<&HostArray> = arrays.iter().collect();
                let symmetric =
                    driver::EvalOptions::on(Backend::Cpu).pairs(driver::Pairs::Symmetric(&plan));
                let got = driver::evaluate(k, &refs, symmetric).expect("runs").output;
                let want = driver::evaluate(k, &refs, Backend::Interp)
                    .expect("runs")
                    .output;
                let want = want.to_f64();
                let scale: Vec<f64> = want.iter().map(|_| 24.0 * n as f64).collect();
                let what = format!("{formula} over unordered pairs ({dtype}, N {n})");
                assert_close(&got.to_f64(), &want, &scale, tolerance(dtype), &what);
            }
        }
    }
}
