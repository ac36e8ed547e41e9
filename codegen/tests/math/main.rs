//! Accuracy sweeps of the math library against Rust's f64 functions (the host libm), for
//! every function, both precisions, scalar and vector code. Each test prints the measured
//! maximum error; `cargo test --release -- --nocapture` shows them.
//!
//! Errors are distances in representable values of the element type between the result and
//! the reference rounded to that type (for f32 the reference is computed in f64 on the f32
//! input). The harness that runs them (`harness.rs`) uses the code generator's public API.

mod harness;

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_PI_2, FRAC_PI_4, LN_2, SQRT_2};

use harness::{evaluate_on_host, evaluate_on_host_flushing, evaluate_on_host_with};
use inkwell::context::Context;
use inkwell::module::Linkage;
use keops_codegen::math::{Exp2, MathFn, MathLib};
use keops_middle::target::cpu::LEVELS;
use keops_runtime::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SCALARS: [DType; 2] = [DType::F32, DType::F64];

/// DType code and every vector width code generation can select on this host: that of each
/// x86-64 level the host satisfies (`keopsc build --target`) and that of the host itself (the
/// JIT), e.g. 1, 4, 8 and 16 lanes of f32 on an AVX-512 machine.
fn widths(s: DType) -> Vec<u32> {
    // Levels are nested: the host satisfies every one up to its highest.
    let host_level = keops_codegen::host_cpu_level().cpu;
    let highest = LEVELS
        .iter()
        .position(|&l| l == host_level)
        .expect("the host level is a known level");
    let levels = LEVELS[..=highest]
        .iter()
        .map(|l| keops_codegen::cpu_level(l).expect("a known level").lanes(s));
    let mut widths: Vec<u32> = std::iter::once(1)
        .chain(levels)
        .chain(std::iter::once(keops_codegen::host_cpu().lanes(s)))
        .collect();
    widths.sort_unstable();
    widths.dedup();
    widths
}

#[test]
fn sweeps_cover_the_host_widths() {
    for s in SCALARS {
        let w = widths(s);
        assert_eq!(w[0], 1, "{s:?}: scalar code first");
        assert!(
            w.contains(&keops_codegen::host_cpu().lanes(s)),
            "{s:?}: {w:?}"
        );
        let sse = match s {
            DType::F32 => 4,
            DType::F64 => 2,
        };
        assert!(w.contains(&sse), "{s:?}: the x86-64 baseline width, {w:?}");
    }
}

/// How the code under test treats subnormal numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Computed exactly (the library as the GPU and the interpreter's tests see it).
    Exact,
    /// Built for and run with FTZ and DAZ (the CPU backend's code): subnormal operands read
    /// as zeros, subnormal results are zeros.
    Flushing,
}

impl Mode {
    fn evaluate(self, f: MathFn, s: DType, width: u32, args: &[Vec<f64>]) -> Vec<f64> {
        match self {
            Mode::Exact => evaluate_on_host(f, s, width, args),
            Mode::Flushing => evaluate_on_host_flushing(f, s, width, args),
        }
        .unwrap_or_else(|e| panic!("{} {s:?} width {width} {self:?}: {e}", f.name()))
    }

    /// `v` of type `s` as this mode reads or writes it.
    fn flush(self, s: DType, v: f64) -> f64 {
        let smallest_normal = match s {
            DType::F32 => f64::from(f32::MIN_POSITIVE),
            DType::F64 => f64::MIN_POSITIVE,
        };
        if self == Mode::Flushing && v.abs() < smallest_normal {
            0.0f64.copysign(v)
        } else {
            v
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Exact => "",
            Mode::Flushing => " flushing",
        }
    }
}

fn round_to(s: DType, v: f64) -> f64 {
    match s {
        DType::F32 => f64::from(v as f32),
        DType::F64 => v,
    }
}

fn reference(f: MathFn, a: &[f64]) -> f64 {
    match f {
        MathFn::Exp => a[0].exp(),
        MathFn::Log => a[0].ln(),
        MathFn::Sin => a[0].sin(),
        MathFn::Cos => a[0].cos(),
        MathFn::Atan => a[0].atan(),
        MathFn::Asin => a[0].asin(),
        MathFn::Acos => a[0].acos(),
        MathFn::Atan2 => a[0].atan2(a[1]),
        MathFn::Pow => a[0].powf(a[1]),
    }
}

/// Position of `v` (of type `s`) on the number line of `s`; ±0 share position 0.
fn ordinal(s: DType, v: f64) -> i64 {
    let (magnitude, negative) = match s {
        DType::F32 => {
            let b = (v as f32).to_bits();
            (i64::from(b & 0x7fff_ffff), b >> 31 == 1)
        }
        DType::F64 => {
            let b = v.to_bits();
            ((b & 0x7fff_ffff_ffff_ffff) as i64, b >> 63 == 1)
        }
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// ULP distance in `s`; 0 for two NaNs, infinite when only one is NaN.
fn ulp_distance(s: DType, got: f64, want: f64) -> f64 {
    match (got.is_nan(), want.is_nan()) {
        (true, true) => 0.0,
        (false, false) => (ordinal(s, got) - ordinal(s, want)).unsigned_abs() as f64,
        _ => f64::INFINITY,
    }
}

/// `v` rounded to `s`, moved by `steps` representable values.
fn step(s: DType, v: f64, steps: i64) -> f64 {
    match s {
        DType::F32 => {
            let mut x = v as f32;
            for _ in 0..steps.abs() {
                x = if steps > 0 {
                    x.next_up()
                } else {
                    x.next_down()
                };
            }
            f64::from(x)
        }
        DType::F64 => {
            let mut x = v;
            for _ in 0..steps.abs() {
                x = if steps > 0 {
                    x.next_up()
                } else {
                    x.next_down()
                };
            }
            x
        }
    }
}

/// `v` and its `k` neighbours on each side in `s`.
fn around(s: DType, v: f64, k: i64) -> Vec<f64> {
    (-k..=k).map(|i| step(s, v, i)).collect()
}

/// ±2^u, u uniform in [lo, hi].
fn log_spaced(rng: &mut StdRng, n: usize, lo: f64, hi: f64, both_signs: bool) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = rng.random_range(lo..hi).exp2();
            if both_signs && rng.random::<bool>() {
                -v
            } else {
                v
            }
        })
        .collect()
}

fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Positive finite values of `s` with uniformly random bit patterns (denormals included).
fn random_bits(rng: &mut StdRng, s: DType, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| match s {
            DType::F32 => f64::from(f32::from_bits(rng.random_range(1..0x7f80_0000u32))),
            DType::F64 => f64::from_bits(rng.random_range(1..0x7ff0_0000_0000_0000u64)),
        })
        .collect()
}

fn smallest_denormal(s: DType) -> f64 {
    match s {
        DType::F32 => f64::from(f32::from_bits(1)),
        DType::F64 => f64::from_bits(1),
    }
}

fn largest(s: DType) -> f64 {
    match s {
        DType::F32 => f64::from(f32::MAX),
        DType::F64 => f64::MAX,
    }
}

/// Inputs every function is checked on, beside its sweep.
fn special_values(s: DType) -> Vec<f64> {
    let mut v = vec![
        0.0,
        1.0,
        0.5,
        2.0,
        3.0,
        10.0,
        smallest_denormal(s),
        largest(s),
        f64::INFINITY,
    ];
    v.extend(v.clone().into_iter().map(|x: f64| -x));
    v.push(f64::NAN);
    v
}

/// What a point is checked against.
enum Expect {
    /// Within this many ULP of the reference (NaN-ness, and the sign of zero results, must
    /// match).
    Ulp(f64),
    /// Within this absolute distance of the reference.
    Abs(f64),
    /// Bitwise this value (a documented departure from libm).
    Exactly(f64),
}

struct Point {
    args: Vec<f64>,
    /// Special input: a zero or infinite reference must be matched exactly, sign included.
    special: bool,
}

/// Evaluates `f` on `points` at every width of `s`, checks every point against the
/// reference per `expect`, prints (with `what` describing the points) and returns the maximum
/// ULP error among the points checked in ULP.
fn check(
    f: MathFn,
    s: DType,
    what: &str,
    points: &[Point],
    expect: impl Fn(&[f64]) -> Expect,
) -> f64 {
    check_in(Mode::Exact, f, s, what, points, expect)
}

/// [`check`] of the code `mode` builds, against the reference of the arguments and result as
/// `mode` reads and writes them.
fn check_in(
    mode: Mode,
    f: MathFn,
    s: DType,
    what: &str,
    points: &[Point],
    expect: impl Fn(&[f64]) -> Expect,
) -> f64 {
    let arity = f.arity();
    let columns: Vec<Vec<f64>> = (0..arity)
        .map(|i| points.iter().map(|p| round_to(s, p.args[i])).collect())
        .collect();
    let mut results: Option<Vec<f64>> = None;
    for width in widths(s) {
        let got = mode.evaluate(f, s, width, &columns);
        if let Some(first) = &results {
            for (i, (a, b)) in first.iter().zip(&got).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{} {s:?}: width {width} gives {b:e} but width 1 gives {a:e} at {:?}",
                    f.name(),
                    points[i].args
                );
            }
        } else {
            results = Some(got);
        }
    }
    let results = results.expect("at least one width");

    let mut max_ulp = 0.0f64;
    let mut worst = Vec::new();
    let mut failures = Vec::new();
    for (i, (point, &got)) in points.iter().zip(&results).enumerate() {
        let args: Vec<f64> = columns.iter().map(|c| c[i]).collect();
        let read: Vec<f64> = args.iter().map(|&a| mode.flush(s, a)).collect();
        let want = mode.flush(s, round_to(s, reference(f, &read)));
        let describe = || format!("{}{args:?} = {got:e}, reference {want:e}", f.name());
        match expect(&args) {
            Expect::Ulp(bound) => {
                let d = ulp_distance(s, got, want);
                if d > max_ulp {
                    max_ulp = d;
                    worst = args.clone();
                }
                let exact_needed = point.special && (want == 0.0 || want.is_infinite());
                let sign_mismatch =
                    want == 0.0 && got == 0.0 && want.is_sign_negative() != got.is_sign_negative();
                if d > bound || sign_mismatch || (exact_needed && got.to_bits() != want.to_bits()) {
                    failures.push(format!("{} ({d} ULP > {bound})", describe()));
                }
            }
            Expect::Abs(bound) => {
                if got.is_nan() || (got - want).abs() > bound {
                    failures.push(format!("{} (absolute error > {bound:e})", describe()));
                }
            }
            Expect::Exactly(v) => {
                if got.to_bits() != round_to(s, v).to_bits() {
                    failures.push(format!("{} (documented value {v:e})", describe()));
                }
            }
        }
    }
    println!(
        "MEASURED {:>5} {s:?}{}{what}: max {max_ulp} ULP over {} points (worst at {worst:?}; max_ulp {})",
        f.name(),
        mode.label(),
        points.len(),
        f.max_ulp(s)
    );
    assert!(
        failures.is_empty(),
        "{} {s:?}{}: {} failures, e.g.\n{}",
        f.name(),
        mode.label(),
        failures.len(),
        failures
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    max_ulp
}

/// Sweep points from `values` (unary) plus the special values.
fn unary_points(s: DType, values: Vec<f64>) -> Vec<Point> {
    let mut points: Vec<Point> = values
        .into_iter()
        .map(|v| Point {
            args: vec![v],
            special: false,
        })
        .collect();
    points.extend(special_values(s).into_iter().map(|v| Point {
        args: vec![v],
        special: true,
    }));
    points
}

/// Sweep points from `pairs` plus all pairs of special values.
fn binary_points(s: DType, pairs: Vec<(f64, f64)>) -> Vec<Point> {
    let mut points: Vec<Point> = pairs
        .into_iter()
        .map(|(a, b)| Point {
            args: vec![a, b],
            special: false,
        })
        .collect();
    let specials = special_values(s);
    for &a in &specials {
        for &b in &specials {
            points.push(Point {
                args: vec![a, b],
                special: true,
            });
        }
    }
    points
}

fn rng(f: MathFn, s: DType) -> StdRng {
    StdRng::seed_from_u64(0x6b65_6f70 ^ ((f as u64) << 8) ^ s as u64)
}

#[test]
fn exp() {
    for s in SCALARS {
        let mut rng = rng(MathFn::Exp, s);
        // Overflow threshold ln(MAX), underflow to 0 (ln of half the smallest denormal), start
        // of the denormal results (ln of the smallest normal).
        let (low, high, overflow, underflow, denormal): (f64, f64, f64, f64, f64) = match s {
            DType::F32 => (
                -104.0,
                89.0,
                88.722_839_052_068_35,
                -103.972_077_083_991_8,
                -87.336_544_750_553_1,
            ),
            DType::F64 => (
                -746.0,
                710.0,
                709.782_712_893_384,
                -745.133_219_101_941_1,
                -708.396_418_532_264_1,
            ),
        };
        let mut x = uniform(&mut rng, 200_000, low, high);
        x.extend(log_spaced(&mut rng, 150_000, -60.0, 7.0, true));
        x.extend(uniform(&mut rng, 20_000, -2.0, 2.0));
        for t in [overflow, underflow, denormal] {
            x.extend(around(s, t, 40));
        }
        // Where n = rint(x/ln 2) changes.
        for j in -1100..1100 {
            let t = (f64::from(j) + 0.5) * LN_2;
            if t > low && t < high {
                x.extend(around(s, t, 2));
            }
        }
        x.extend([1000.0, -1000.0, 88.0, -88.0, 700.0, -700.0]);
        // Denormal results (computed by integer rounding, see `scale_by_power_of_two`),
        // densely, with both ends; the largest n of that path, whose results straddle the
        // smallest normal; and results that round to 0, far below the clamp too.
        x.extend(uniform(&mut rng, 100_000, underflow - 0.5, denormal + 1.5));
        let last_small_n = (denormal / LN_2).round() * LN_2;
        x.extend(uniform(
            &mut rng,
            20_000,
            last_small_n - 0.4,
            last_small_n + 0.4,
        ));
        x.extend(uniform(&mut rng, 5_000, 4.0 * low, low));
        x.extend(
            log_spaced(&mut rng, 5_000, 7.0, 100.0, false)
                .iter()
                .map(|v| -v),
        );
        // Flushing code's last n, whose results straddle the smallest normal number, and its
        // clamp.
        let flushing_clamp = (denormal / LN_2 - 0.25) * LN_2;
        x.extend(uniform(
            &mut rng,
            20_000,
            flushing_clamp - 0.4,
            denormal + 0.4,
        ));
        let bound = MathFn::Exp.max_ulp(s);
        let points = unary_points(s, x);
        for mode in [Mode::Exact, Mode::Flushing] {
            check_in(mode, MathFn::Exp, s, "", &points, |_| Expect::Ulp(bound));
        }
    }
}

/// The GPU's fast f32 `exp` (`ex2.approx` of the reduced argument times log2 e) with the
/// host's `exp2` in the special-function unit's place: its reduction, scaling, clamping and
/// special values are all checked here; on a GPU, `ex2.approx`'s own 2 ULP come on top.
#[test]
fn the_gpu_fast_exp_path_is_right_but_for_ex2_approx() {
    let s = DType::F32;
    let mut rng = rng(MathFn::Exp, s);
    let mut x = uniform(&mut rng, 100_000, -104.0, 89.0);
    x.extend(uniform(&mut rng, 20_000, -2.0, 2.0));
    x.extend(uniform(&mut rng, 20_000, -103.972, -86.3));
    for t in [
        88.722_839_052_068_35,
        -103.972_077_083_991_8,
        -87.336_544_750_553_1,
    ] {
        x.extend(around(s, t, 40));
    }
    x.extend([1000.0, -1000.0, 0.0, -0.0, 1e-30, -1e-30]);
    let x: Vec<f64> = x.into_iter().map(|v| round_to(s, v)).collect();
    let got = evaluate_on_host_with(MathFn::Exp, s, 1, std::slice::from_ref(&x), Exp2::HostExp2)
        .expect("compiles");
    let mut worst = 0.0f64;
    for (&a, &g) in x.iter().zip(&got) {
        let want = round_to(s, a.exp());
        let d = ulp_distance(s, g, want);
        assert!(
            d <= 2.0,
            "fast exp({a:e}) = {g:e}, reference {want:e}: {d} ULP"
        );
        worst = worst.max(d);
    }
    eprintln!("fast f32 exp with the host's exp2: {worst} ULP at most");
    let special = evaluate_on_host_with(
        MathFn::Exp,
        s,
        1,
        &[vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]],
        Exp2::HostExp2,
    )
    .unwrap();
    assert!(special[0].is_nan());
    assert_eq!(&special[1..], &[f64::INFINITY, 0.0]);
}

#[test]
fn log() {
    for s in SCALARS {
        let mut rng = rng(MathFn::Log, s);
        let mut x = random_bits(&mut rng, s, 200_000);
        x.extend(
            log_spaced(&mut rng, 30_000, -53.0, -1.0, false)
                .into_iter()
                .map(|d| 1.0 + d),
        );
        x.extend(
            log_spaced(&mut rng, 30_000, -53.0, -1.0, false)
                .into_iter()
                .map(|d| 1.0 - d),
        );
        x.extend(uniform(&mut rng, 30_000, 0.5, 2.0));
        for t in [FRAC_1_SQRT_2, SQRT_2, 1.0, 0.5, 2.0] {
            x.extend(around(s, t, 40));
        }
        let bound = MathFn::Log.max_ulp(s);
        check(MathFn::Log, s, "", &unary_points(s, x), |_| {
            Expect::Ulp(bound)
        });
    }
}

/// Largest |x| of the stated ULP bound for sin and cos, and the slope of the absolute error
/// bound beyond it (up to 2^50).
fn trig_limits(s: DType) -> (f64, f64) {
    match s {
        DType::F32 => (4.2e8, (-78.0f64).exp2()),
        DType::F64 => (1.6e6, (-86.0f64).exp2()),
    }
}

/// Spacing of `s` at 1: one ULP of any result in [-1, 1] is at most half of it.
fn epsilon(s: DType) -> f64 {
    match s {
        DType::F32 => f64::from(f32::EPSILON),
        DType::F64 => f64::EPSILON,
    }
}

fn sin_cos(f: MathFn) {
    for s in SCALARS {
        let mut rng = rng(f, s);
        let (limit, slope) = trig_limits(s);
        let mut x = uniform(&mut rng, 150_000, -10.0, 10.0);
        x.extend(log_spaced(&mut rng, 200_000, -40.0, limit.log2(), true));
        // Boundaries of the octants, and multiples of π/2 far out (tiny reduced arguments).
        for k in -400..400 {
            x.extend(around(s, f64::from(k) * FRAC_PI_4, 3));
        }
        for _ in 0..3000 {
            let k = rng.random_range(1.0..limit / FRAC_PI_2).round();
            x.extend(around(s, k * FRAC_PI_2, 2));
        }
        // Beyond the ULP bound: bounded absolute error up to 2^50.
        x.extend(log_spaced(&mut rng, 20_000, limit.log2(), 50.0, true));
        // Large arguments, including the documented values past 2^50.
        x.extend([1e4, 1e6, 1e10, 1e15, 1e30, -1e30, 1e300]);
        let bound = f.max_ulp(s);
        let what = format!(" (ULP for |x| <= {limit:e}, absolute error beyond)");
        let max = check(f, s, &what, &unary_points(s, x), |a| {
            let ax = a[0].abs();
            if ax <= limit || !ax.is_finite() {
                Expect::Ulp(bound)
            } else if ax <= 50f64.exp2() {
                Expect::Abs(ax * slope + epsilon(s))
            } else if f == MathFn::Sin {
                Expect::Exactly(0.0f64.copysign(a[0]))
            } else {
                Expect::Exactly(1.0)
            }
        });
        assert!(max <= bound);
    }
}

#[test]
fn sin() {
    sin_cos(MathFn::Sin);
}

#[test]
fn cos() {
    sin_cos(MathFn::Cos);
}

#[test]
fn atan() {
    for s in SCALARS {
        let mut rng = rng(MathFn::Atan, s);
        let mut x = log_spaced(&mut rng, 200_000, -40.0, 40.0, true);
        x.extend(uniform(&mut rng, 40_000, -3.0, 3.0));
        x.extend(random_bits(&mut rng, s, 20_000).into_iter().map(|v| {
            if rng.random() {
                v
            } else {
                -v
            }
        }));
        for t in [0.414_213_562_373_095, 0.66, 1.0, 2.414_213_562_373_095] {
            x.extend(around(s, t, 40));
            x.extend(around(s, -t, 40));
        }
        let bound = MathFn::Atan.max_ulp(s);
        check(MathFn::Atan, s, "", &unary_points(s, x), |_| {
            Expect::Ulp(bound)
        });
    }
}

fn asin_acos(f: MathFn) {
    for s in SCALARS {
        let mut rng = rng(f, s);
        let mut x = uniform(&mut rng, 200_000, -1.0, 1.0);
        for sign in [1.0, -1.0] {
            x.extend(
                log_spaced(&mut rng, 20_000, -54.0, -1.0, false)
                    .into_iter()
                    .map(|d| sign * (1.0 - d)),
            );
        }
        x.extend(log_spaced(&mut rng, 30_000, -60.0, -1.0, true));
        // Where the arctangent reduction switches region (tan(π/8), 0.66, tan(3π/8)).
        for t in [
            0.382_683_432_365_089_8,
            0.550_8,
            0.923_879_532_511_286_7,
            FRAC_1_SQRT_2,
            0.5,
        ] {
            x.extend(around(s, t, 40));
            x.extend(around(s, -t, 40));
            x.extend(uniform(&mut rng, 20_000, t - 0.01, t + 0.01));
        }
        // Worst cases of the exhaustive f32 search.
        x.extend(around(s, 0.382_695_1, 8));
        x.extend(around(s, 0.912_812_35, 8));
        x.extend([1.5, -1.5, 1.0 + f64::EPSILON]);
        let bound = f.max_ulp(s);
        check(f, s, "", &unary_points(s, x), |_| Expect::Ulp(bound));
    }
}

#[test]
fn asin() {
    asin_acos(MathFn::Asin);
}

#[test]
fn acos() {
    asin_acos(MathFn::Acos);
}

#[test]
fn atan2() {
    for s in SCALARS {
        let mut rng = rng(MathFn::Atan2, s);
        let (emax, emin): (f64, f64) = match s {
            DType::F32 => (127.0, -149.0),
            DType::F64 => (1023.0, -1074.0),
        };
        let mut pairs = Vec::new();
        let y = log_spaced(&mut rng, 200_000, -60.0, 60.0, true);
        let x = log_spaced(&mut rng, 200_000, -60.0, 60.0, true);
        pairs.extend(y.into_iter().zip(x));
        let y = uniform(&mut rng, 40_000, -10.0, 10.0);
        let x = uniform(&mut rng, 40_000, -10.0, 10.0);
        pairs.extend(y.into_iter().zip(x));
        // Ratios at the reduction boundaries.
        for t in [0.414_213_562_373_095, 0.66, 1.0, 2.414_213_562_373_095] {
            for x in log_spaced(&mut rng, 2_000, -30.0, 30.0, true) {
                let y = t * x.abs() * (1.0 + rng.random_range(-1e-6..1e-6));
                pairs.push((y, x));
            }
        }
        // Huge and denormal operands.
        let big = log_spaced(&mut rng, 10_000, emax - 8.0, emax, true);
        let tiny = log_spaced(&mut rng, 10_000, emin, emin + 60.0, true);
        let mixed = log_spaced(&mut rng, 10_000, emin, emax, true);
        pairs.extend(big.iter().copied().zip(big.iter().rev().copied()));
        pairs.extend(tiny.iter().copied().zip(tiny.iter().rev().copied()));
        pairs.extend(mixed.iter().copied().zip(big.iter().copied()));
        pairs.extend(tiny.iter().copied().zip(mixed.iter().copied()));
        let bound = MathFn::Atan2.max_ulp(s);
        check(MathFn::Atan2, s, "", &binary_points(s, pairs), |_| {
            Expect::Ulp(bound)
        });
    }
}

/// Slope of the f64 pow bound beyond |y·ln|x|| = 1, in ULP per unit of |y·ln|x|| (see the
/// emitter's documentation).
const POW_F64_ULP_PER_UNIT: f64 = 1.0 / 16.0;

#[test]
fn pow() {
    for s in SCALARS {
        let mut rng = rng(MathFn::Pow, s);
        let emax: f64 = match s {
            DType::F32 => 127.0,
            DType::F64 => 1023.0,
        };
        let mut pairs = Vec::new();
        // |y·ln x| <= 1.
        for _ in 0..150_000 {
            let x = round_to(s, rng.random_range(-60.0..60.0f64).exp2());
            let y = rng.random_range(-1.0..1.0) / x.ln();
            pairs.push((x, y));
        }
        // General: results over the whole range, overflow and underflow included.
        for _ in 0..150_000 {
            let x = rng.random_range(-emax..emax).exp2();
            let y = rng.random_range(-1.2 * emax..1.2 * emax) / x.log2();
            pairs.push((x, y));
        }
        // Small powers of moderate numbers, and large |y| close to 1.
        for _ in 0..20_000 {
            pairs.push((rng.random_range(0.0..100.0), rng.random_range(-10.0..10.0)));
        }
        for _ in 0..20_000 {
            let x = 1.0 + rng.random_range(-1.0..1.0f64) * rng.random_range(-50.0..-1.0f64).exp2();
            pairs.push((
                x,
                rng.random_range(-40.0..40.0f64).exp2() * if rng.random() { 1.0 } else { -1.0 },
            ));
        }
        // Negative x with integer y (odd and even), and with non-integer y.
        for _ in 0..20_000 {
            let x = -rng.random_range(-10.0..10.0f64).exp2();
            let y = rng.random_range(-40..=40);
            pairs.push((x, f64::from(y)));
            pairs.push((x, f64::from(y) + 0.5));
        }
        // The stated bound holds while |y·ln|x|| <= 1; beyond, f64 errors grow linearly.
        let w = |a: &[f64]| (a[1] * a[0].abs().ln()).abs();
        let bound = MathFn::Pow.max_ulp(s);
        let (near, far): (Vec<_>, Vec<_>) = binary_points(s, pairs)
            .into_iter()
            .partition(|p| w(&[round_to(s, p.args[0]), round_to(s, p.args[1])]) <= 1.0);
        for mode in [Mode::Exact, Mode::Flushing] {
            check_in(mode, MathFn::Pow, s, " (|y ln x| <= 1)", &near, |_| {
                Expect::Ulp(bound)
            });
            check_in(
                mode,
                MathFn::Pow,
                s,
                " (|y ln x| > 1: bound max_ulp + |y ln x|/16 for f64)",
                &far,
                |a| match s {
                    DType::F32 => Expect::Ulp(bound),
                    DType::F64 => Expect::Ulp(bound + w(a) * POW_F64_ULP_PER_UNIT),
                },
            );
        }
    }
}

#[test]
fn special_values_follow_the_documentation() {
    for s in SCALARS {
        let one = |f: MathFn, args: &[f64]| -> f64 {
            let columns: Vec<Vec<f64>> = args.iter().map(|&a| vec![a]).collect();
            evaluate_on_host(f, s, 1, &columns).expect("compiles")[0]
        };
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let cases: &[(MathFn, &[f64], f64)] = &[
            (MathFn::Exp, &[f64::NAN], f64::NAN),
            (MathFn::Exp, &[f64::NEG_INFINITY], 0.0),
            (MathFn::Exp, &[f64::INFINITY], f64::INFINITY),
            (MathFn::Exp, &[-1000.0], 0.0),
            (MathFn::Exp, &[1000.0], f64::INFINITY),
            (MathFn::Log, &[0.0], f64::NEG_INFINITY),
            (MathFn::Log, &[-0.0], f64::NEG_INFINITY),
            (MathFn::Log, &[-1.0], f64::NAN),
            (MathFn::Log, &[f64::INFINITY], f64::INFINITY),
            (MathFn::Sin, &[-0.0], -0.0),
            (MathFn::Sin, &[f64::INFINITY], f64::NAN),
            (MathFn::Cos, &[f64::NEG_INFINITY], f64::NAN),
            (MathFn::Sin, &[1e30], 0.0),
            (MathFn::Sin, &[-1e30], -0.0),
            (MathFn::Cos, &[1e30], 1.0),
            (MathFn::Atan, &[-0.0], -0.0),
            (MathFn::Asin, &[-0.0], -0.0),
            (MathFn::Asin, &[1.5], f64::NAN),
            (MathFn::Acos, &[-1.5], f64::NAN),
            (MathFn::Acos, &[1.0], 0.0),
            (MathFn::Atan2, &[0.0, -0.0], std::f64::consts::PI),
            (MathFn::Atan2, &[-0.0, -0.0], -std::f64::consts::PI),
            (MathFn::Atan2, &[-0.0, 0.0], -0.0),
            (MathFn::Atan2, &[f64::INFINITY, f64::INFINITY], FRAC_PI_4),
            (
                MathFn::Atan2,
                &[f64::NEG_INFINITY, f64::NEG_INFINITY],
                -3.0 * FRAC_PI_4,
            ),
            (MathFn::Pow, &[f64::NAN, 0.0], 1.0),
            (MathFn::Pow, &[1.0, f64::NAN], 1.0),
            (MathFn::Pow, &[-1.0, f64::INFINITY], 1.0),
            (MathFn::Pow, &[-2.0, 3.0], -8.0),
            (MathFn::Pow, &[-2.0, 2.0], 4.0),
            (MathFn::Pow, &[-2.0, 0.5], f64::NAN),
            (MathFn::Pow, &[0.0, 2.0], 0.0),
            (MathFn::Pow, &[0.0, -2.0], f64::INFINITY),
            (MathFn::Pow, &[-0.0, 3.0], -0.0),
            (MathFn::Pow, &[-0.0, -3.0], f64::NEG_INFINITY),
            (MathFn::Pow, &[f64::NEG_INFINITY, 0.5], f64::INFINITY),
        ];
        for &(f, args, expected) in cases {
            let got = one(f, args);
            assert!(
                same(got, round_to(s, expected)),
                "{} {s:?} of {args:?}: got {got:e}, documented {expected:e}",
                f.name()
            );
        }
    }
}

#[test]
fn every_function_is_covered() {
    for f in MathFn::ALL {
        assert!(f.arity() == 1 || f.arity() == 2);
        for s in SCALARS {
            assert!(f.max_ulp(s) >= 0.5, "{} {s:?}", f.name());
        }
    }
}

#[test]
fn definitions_are_shared_and_the_builder_stays_put() {
    let context = Context::create();
    let module = context.create_module("m");
    let builder = context.create_builder();
    let lib = MathLib::new(&context);
    let f32_type = context.f32_type();
    let v4f64 = context.f64_type().vec_type(4);
    let function = module.add_function(
        "user",
        f32_type.fn_type(&[f32_type.into(), v4f64.into()], false),
        None,
    );
    let entry = context.append_basic_block(function, "entry");
    builder.position_at_end(entry);
    let (x, v) = (
        function.get_nth_param(0).unwrap(),
        function.get_nth_param(1).unwrap(),
    );
    let a = lib.call(&module, &builder, MathFn::Exp, &[x]);
    let b = lib.call(&module, &builder, MathFn::Exp, &[a]);
    lib.call(&module, &builder, MathFn::Atan2, &[v, v]);
    assert_eq!(builder.get_insert_block(), Some(entry));
    builder.build_return(Some(&b)).unwrap();
    module.verify().unwrap();
    let defined: Vec<String> = module
        .get_functions()
        .filter(|f| {
            f.count_basic_blocks() > 0 && f.get_name().to_str().unwrap().starts_with("keops.")
        })
        .map(|f| {
            assert_eq!(f.get_linkage(), Linkage::Internal);
            f.get_name().to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(defined, ["keops.exp.f32", "keops.atan2.v4f64"]);
}
