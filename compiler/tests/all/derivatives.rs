//! Symbolic differentiation against central finite differences of the reference interpreter.
//!
//! Every differentiable operator of the table appears in at least one formula of [`cases`]; for
//! each formula and each of its variables (i-indexed `Vi`, j-indexed `Vj` and parameters `Pm`
//! all occur), `Grad(F, v, e)` as compiled by the driver (derivatives expanded symbolically) is
//! compared with the finite-difference vector-Jacobian product, with a vector `e` and with a
//! broadcast scalar `e`. Second derivatives `Grad(Grad(F, v, e), w, f)` (w = v and mixed) are
//! compared with finite differences of the compiled first derivative, `Diff(F, v, u)` with the
//! finite-difference directional derivative, and reductions of gradients with finite
//! differences of reductions. Inputs lie inside each operator's domain and away from its kinks
//! and jumps; the piecewise-constant operators must have an exactly zero gradient there.
//! Nothing here computes an expected derivative by hand: the interpreter's values of `F` are
//! the only oracle.

use keops_runtime::HostArray;
use keopsc::check::operators::OPERATORS;
use keopsc::driver::{self, Backend, CompiledFile};
use keopsc::interp::evaluate_point;
use keopsc::source::SourceFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Relative (to max(1, |a|, |b|)) tolerance of every comparison with finite differences.
const TOL: f64 = 1e-6;

/// Operators without a derivative rule (differentiating them would be a compile error): none.
const NO_RULE: &[&str] = &[];

/// Operators that are constant between their jumps: their gradient is exactly zero.
const PIECEWISE_CONSTANT: &[&str] = &[
    "Sign",
    "Step",
    "Floor",
    "Round",
    "OneHot",
    "ArgMax",
    "ArgMin",
    "Equal",
    "NotEqual",
    "LessThan",
    "LessOrEqual",
];

#[derive(Clone, Debug)]
struct Var {
    name: String,
    cat: &'static str,
    value: Vec<f64>,
}

fn var(name: &str, cat: &'static str, value: Vec<f64>) -> Var {
    assert!(matches!(cat, "Vi" | "Vj" | "Pm"));
    Var {
        name: name.to_string(),
        cat,
        value,
    }
}

fn kernel_text(vars: &[Var], formula: &str, reduction_axis: usize) -> String {
    let mut text = String::from("kernel t {\n");
    for v in vars {
        text.push_str(&format!("    {} = {}({})\n", v.name, v.cat, v.value.len()));
    }
    text.push_str(&format!(
        "    Sum_Reduction({formula}, {reduction_axis})\n}}\n"
    ));
    text
}

fn compile(text: &str) -> CompiledFile {
    match driver::compile(SourceFile::new("<derivatives test>", text)) {
        Ok(c) => c,
        Err((source, diagnostics)) => panic!(
            "does not compile:\n{text}\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        ),
    }
}

/// The messages of the diagnostics of a file that must not compile.
fn compile_errors(text: &str) -> Vec<String> {
    match driver::compile(SourceFile::new("<derivatives test>", text)) {
        Ok(_) => panic!("compiles but should not:\n{text}"),
        Err((_, diagnostics)) => diagnostics.into_iter().map(|d| d.message).collect(),
    }
}

/// A formula compiled once (derivatives expanded), evaluated at any point with `evaluate_point`.
struct PointFn {
    file: CompiledFile,
    text: String,
}

impl PointFn {
    fn new(vars: &[Var], formula: &str) -> PointFn {
        let text = kernel_text(vars, formula, 0);
        PointFn {
            file: compile(&text),
            text,
        }
    }

    fn at(&self, vars: &[Var]) -> Vec<f64> {
        let kernel = &self.file.kernels[0];
        let values: Vec<Vec<f64>> = kernel
            .signature
            .args
            .iter()
            .map(|a| {
                vars.iter()
                    .find(|v| v.name == a.name)
                    .unwrap_or_else(|| panic!("no value for `{}`", a.name))
                    .value
                    .clone()
            })
            .collect();
        evaluate_point(&kernel.formula, &values).unwrap_or_else(|e| panic!("{}: {e}", self.text))
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    a.is_finite() && b.is_finite() && (a - b).abs() <= tol * 1f64.max(a.abs()).max(b.abs())
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length of {got:?} vs {want:?}"
    );
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, *w, TOL),
            "{what}: component {k}: symbolic {g:?}, finite differences {w:?}\n  symbolic {got:?}\n  finite differences {want:?}"
        );
    }
}

/// The step of a central difference at `x`, and the exact distance between the two points.
fn step(x: f64) -> (f64, f64, f64) {
    let h = 1e-6 * x.abs().max(1.0);
    let (plus, minus) = (x + h, x - h);
    (plus, minus, plus - minus)
}

fn position(vars: &[Var], name: &str) -> usize {
    vars.iter()
        .position(|v| v.name == name)
        .unwrap_or_else(|| panic!("no variable `{name}`"))
}

/// A name for an extra variable (`e3`, ...) that no variable of `vars` uses.
fn fresh(vars: &[Var], prefix: &str) -> String {
    (0..)
        .map(|k| format!("{prefix}{k}"))
        .find(|n| vars.iter().all(|v| &v.name != n))
        .expect("a free name")
}

/// Finite-difference vector-Jacobian product: component m is d/dv_m of sum_k e_k F_k (e of
/// F's dimension, or 1 and broadcast).
fn fd_vjp(fun: &PointFn, vars: &[Var], v: &str, e: &[f64]) -> Vec<f64> {
    let k = position(vars, v);
    (0..vars[k].value.len())
        .map(|m| {
            let (xp, xm, width) = step(vars[k].value[m]);
            let mut plus = vars.to_vec();
            plus[k].value[m] = xp;
            let mut minus = vars.to_vec();
            minus[k].value[m] = xm;
            let (fp, fm) = (fun.at(&plus), fun.at(&minus));
            let ec = |c: usize| if e.len() == 1 { e[0] } else { e[c] };
            fp.iter()
                .zip(&fm)
                .enumerate()
                .map(|(c, (a, b))| ec(c) * (a - b))
                .sum::<f64>()
                / width
        })
        .collect()
}

/// Finite-difference directional derivative of F along u (u of v's dimension, or 1).
fn fd_jvp(fun: &PointFn, vars: &[Var], v: &str, u: &[f64]) -> Vec<f64> {
    let k = position(vars, v);
    let h = 1e-6 * vars[k].value.iter().fold(1f64, |m, x| m.max(x.abs()));
    let uc = |c: usize| if u.len() == 1 { u[0] } else { u[c] };
    let mut plus = vars.to_vec();
    let mut minus = vars.to_vec();
    for c in 0..vars[k].value.len() {
        plus[k].value[c] += h * uc(c);
        minus[k].value[c] -= h * uc(c);
    }
    let (fp, fm) = (fun.at(&plus), fun.at(&minus));
    fp.iter()
        .zip(&fm)
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect()
}

/// `Grad(f, v, e)` compiled, against finite differences of `f`. Returns the symbolic value.
#[track_caller]
fn check_grad(what: &str, vars: &[Var], f: &str, v: &str, e: &[f64]) -> Vec<f64> {
    let fun = PointFn::new(vars, f);
    let e_name = fresh(vars, "e");
    let mut all = vars.to_vec();
    all.push(var(&e_name, "Vi", e.to_vec()));
    let grad = PointFn::new(&all, &format!("Grad({f}, {v}, {e_name})"));
    let got = grad.at(&all);
    let want = fd_vjp(&fun, vars, v, e);
    assert_close(
        &got,
        &want,
        &format!("{what}: Grad({f}, {v}, e = {e:?}) at {vars:?}"),
    );
    got
}

/// `Diff(f, v, u)` compiled, against the finite-difference directional derivative.
#[track_caller]
fn check_diff(what: &str, vars: &[Var], f: &str, v: &str, u: &[f64]) {
    let fun = PointFn::new(vars, f);
    let u_name = fresh(vars, "u");
    let mut all = vars.to_vec();
    all.push(var(&u_name, "Pm", u.to_vec()));
    let diff = PointFn::new(&all, &format!("Diff({f}, {v}, {u_name})"));
    let got = diff.at(&all);
    let want = fd_jvp(&fun, vars, v, u);
    assert_close(
        &got,
        &want,
        &format!("{what}: Diff({f}, {v}, u = {u:?}) at {vars:?}"),
    );
}

fn random(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Magnitudes in [lo, hi) with random signs: away from a kink at 0.
fn signed(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = rng.random_range(lo..hi);
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// Whether `formula` calls the operator `name` (not a longer name ending with it).
fn calls(formula: &str, name: &str) -> bool {
    formula.match_indices(&format!("{name}(")).any(|(at, _)| {
        formula[..at]
            .chars()
            .next_back()
            .is_none_or(|ch| !(ch.is_ascii_alphanumeric() || ch == '_'))
    })
}

// ---------------------------------------------------------------------------------------------
// The formulas
// ---------------------------------------------------------------------------------------------

struct Case {
    formula: String,
    vars: Vec<Var>,
    /// Built from piecewise-constant operators only: the gradient is exactly zero.
    constant: bool,
}

fn case(formula: &str, vars: Vec<Var>) -> Case {
    Case {
        formula: formula.to_string(),
        vars,
        constant: false,
    }
}

fn constant(formula: &str, vars: Vec<Var>) -> Case {
    Case {
        constant: true,
        ..case(formula, vars)
    }
}

/// Unary element-wise operators: (template, domain lo, hi, signed magnitudes, constant).
/// With `signed`, values are magnitudes in [lo, hi) of either sign (a kink or pole at 0).
const UNARY: &[(&str, f64, f64, bool, bool)] = &[
    ("Minus({})", -2.0, 2.0, false, false),
    ("Exp({})", -1.5, 1.5, false, false),
    ("Log({})", 0.2, 3.0, false, false),
    ("Sqrt({})", 0.2, 3.0, false, false),
    ("Rsqrt({})", 0.2, 3.0, false, false),
    ("Square({})", -2.0, 2.0, false, false),
    ("Inv({})", 0.3, 2.0, true, false),
    ("Abs({})", 0.2, 2.0, true, false),
    ("ReLU({})", 0.2, 2.0, true, false),
    ("Sin({})", -3.0, 3.0, false, false),
    ("Cos({})", -3.0, 3.0, false, false),
    ("Asin({})", -0.85, 0.85, false, false),
    ("Acos({})", -0.85, 0.85, false, false),
    ("Atan({})", -3.0, 3.0, false, false),
    ("XLogX({})", 0.1, 3.0, false, false),
    ("SinXDivX({})", 0.2, 3.0, true, false),
    ("Pow({}, 0)", -2.0, 2.0, false, false),
    ("Pow({}, 1)", -2.0, 2.0, false, false),
    ("Pow({}, 2)", -2.0, 2.0, false, false),
    ("Pow({}, 3)", -2.0, 2.0, false, false),
    ("Pow({}, -2)", 0.3, 2.0, true, false),
    ("ClampInt({}, -1, 1)", -2.0, 2.0, false, false),
    ("ClampInt({}, 0, 3)", -1.0, 4.0, false, false),
    ("Sign({})", 0.2, 2.0, true, true),
    ("Step({})", 0.2, 2.0, true, true),
    ("Floor({})", -3.0, 3.0, false, true),
    ("Round({}, 0)", -3.0, 3.0, false, true),
    ("Round({}, 1)", -3.0, 3.0, false, true),
];

fn cases() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(20240611);
    let r = &mut rng;
    let mut out = Vec::new();

    // Element-wise unary operators: on an i-variable, a j-variable and a parameter; and on a
    // vector scaled by a scalar parameter, times a scalar j-variable (broadcasts both ways).
    for &(template, lo, hi, sgn, cst) in UNARY {
        let sample = |r: &mut StdRng, n| {
            if sgn {
                signed(r, n, lo, hi)
            } else {
                random(r, n, lo, hi)
            }
        };
        let u = |arg: &str| template.replace("{}", arg);
        let vars = vec![
            var("x", "Vi", sample(r, 3)),
            var("y", "Vj", sample(r, 3)),
            var("p", "Pm", sample(r, 3)),
        ];
        let f1 = if cst {
            format!("{} + {} - {}", u("x"), u("y"), u("p"))
        } else {
            format!("{} + {} * {}", u("x"), u("y"), u("p"))
        };
        // s * x stays in the domain: s is close to 1 and x's domain has a margin.
        let x = sample(r, 3).iter().map(|v| v * 0.9).collect();
        let vars2 = vec![
            var("x", "Vi", x),
            var("s", "Pm", random(r, 1, 0.95, 1.05)),
            var("b", "Vj", random(r, 1, 0.5, 1.5)),
        ];
        if cst {
            out.push(constant(&f1, vars));
            out.push(constant(&format!("{} - Step(b)", u("s * x")), vars2));
        } else {
            out.push(case(&f1, vars));
            out.push(case(&format!("{} * b", u("s * x")), vars2));
        }
    }

    let xyz = |r: &mut StdRng, lo: f64, hi: f64| {
        vec![
            var("x", "Vi", random(r, 3, lo, hi)),
            var("y", "Vj", random(r, 3, lo, hi)),
            var("p", "Pm", random(r, 3, lo, hi)),
        ]
    };
    let with = |mut vars: Vec<Var>, more: Vec<Var>| {
        vars.extend(more);
        vars
    };

    // Arithmetic, with broadcasts of scalars.
    let v = xyz(r, -2.0, 2.0);
    out.push(case("x + y * p", v.clone()));
    out.push(case("Add(x, p) * Subtract(y, x)", v.clone()));
    out.push(case("Minus(x) * y - p", v.clone()));
    out.push(case("Mult(x, y) * p", v.clone()));
    let s = vec![var("s", "Pm", vec![0.7]), var("t", "Vi", vec![-1.3])];
    out.push(case("x * s + t - y", with(v.clone(), s.clone())));
    out.push(case(
        "Mult(s, x) + Add(t, s) * Subtract(s, p)",
        with(v.clone(), s.clone()),
    ));
    let pos = xyz(r, 0.5, 2.0);
    out.push(case("x / y + Divide(p, x)", pos.clone()));
    out.push(case("Divide(s, y) * x / t", with(pos.clone(), s.clone())));
    // Powf: a positive base; the exponent of either sign.
    let e = vec![
        var("x", "Vi", random(r, 3, 0.5, 2.0)),
        var("y", "Vj", random(r, 3, -1.5, 1.5)),
        var("p", "Pm", random(r, 3, 0.5, 2.0)),
        var("s", "Pm", vec![1.7]),
        var("b", "Vj", vec![-0.6]),
    ];
    out.push(case("Powf(x, y) * p", e.clone()));
    out.push(case("Powf(p, s) + Powf(s, y)", e.clone()));
    out.push(case("Powf(x, b)", e.clone()));
    // Atan2(y, x): away from the origin and from the branch cut x < 0, y = 0.
    let a = vec![
        var("x", "Vi", vec![0.8, -1.2, 0.3]),
        var("y", "Vj", vec![0.5, 0.9, -1.4]),
        var("p", "Pm", vec![1.1, -0.7, 0.6]),
        var("s", "Pm", vec![0.4]),
    ];
    out.push(case("Atan2(y, x) + Atan2(x, p)", a.clone()));
    out.push(case("Atan2(s, p)", a.clone()));
    // Clamp: one component below, one inside, one above [a, b].
    let c = vec![
        var("x", "Vi", vec![-1.5, 0.1, 1.3]),
        var("y", "Vj", vec![-0.6, -0.4, -0.5]),
        var("p", "Pm", vec![0.4, 0.6, 0.5]),
        var("s", "Pm", vec![-0.3]),
        var("b", "Vj", vec![0.7]),
    ];
    out.push(case("Clamp(x, y, p)", c.clone()));
    out.push(case("Clamp(x * x, y, p) * x", c.clone()));
    out.push(case("Clamp(x, s, b)", c.clone()));
    // IfElse: the condition of both signs.
    let i = vec![
        var("x", "Vi", vec![-1.5, 0.4, 1.3]),
        var("y", "Vj", vec![0.6, -0.4, 1.5]),
        var("p", "Pm", vec![0.4, 2.6, -0.5]),
        var("s", "Pm", vec![0.3]),
    ];
    out.push(case("IfElse(x, y * y, Exp(p))", i.clone()));
    out.push(case("IfElse(p - s, x * y, s)", i.clone()));
    // Mod(x, n, d): n > 0, x away from the jumps at d + k n.
    let m = vec![
        var("x", "Vi", vec![-2.3, 0.7, 3.9]),
        var("y", "Vj", vec![1.3, 0.9, 2.2]),
        var("p", "Pm", vec![-0.4, 0.2, -1.1]),
        var("s", "Pm", vec![1.6]),
        var("b", "Vj", vec![0.35]),
    ];
    out.push(case("Mod(x, y, p)", m.clone()));
    out.push(case("Mod(x * x, s, b) * p", m.clone()));

    // Piecewise-constant operators of several operands, or inside products.
    let v = xyz(r, -2.0, 2.0);
    let t = vec![var("t", "Vi", vec![1.8]), var("s", "Pm", vec![0.9])];
    out.push(constant("Equal(x, y) + NotEqual(y, p)", v.clone()));
    out.push(constant("Equal(x, x) + NotEqual(p, p)", v.clone()));
    out.push(constant("LessThan(x, y) - LessOrEqual(p, x)", v.clone()));
    out.push(constant("OneHot(t * s, 4)", with(v.clone(), t.clone())));
    out.push(case("IntInv(4) * Exp(x) * p", v.clone()));
    out.push(constant("ArgMax(x + y) + ArgMin(x * p)", v.clone()));
    out.push(case("Sign(x) * y + Step(y) * Square(p)", v.clone()));
    out.push(case("Floor(x) * Exp(y) + Round(p, 1) * p", v.clone()));
    out.push(case(
        "Scalprod(OneHot(t * s, 4), Concat(x * y, t))",
        with(v.clone(), t.clone()),
    ));
    out.push(case("ArgMax(x) * y + ArgMin(y) * p", v.clone()));
    out.push(case("LessThan(x, y) * p + Equal(x, x) * y", v.clone()));

    // Vector operators.
    let v = xyz(r, -2.0, 2.0);
    let sc = vec![var("s", "Pm", vec![0.8]), var("b", "Vj", vec![-1.1])];
    let vs = with(v.clone(), sc.clone());
    out.push(case("Sum(x * y) * p", v.clone()));
    out.push(case("SumT(s, 3) * x + SumT(Sum(y), 3) * p", vs.clone()));
    out.push(case("Max(x * y) + Min(x + p)", v.clone()));
    out.push(case("Max(x) * Min(y) * p", v.clone()));
    out.push(case("SqNorm2(x - p) * y", v.clone()));
    out.push(case("Norm2(x + y) * p", v.clone()));
    out.push(case("Normalize(x - y) * Sum(p)", v.clone()));
    out.push(case("SqDist(x, y) * s + SqDist(p, x)", vs.clone()));
    out.push(case("Scalprod(x, Exp(y)) * p", v.clone()));
    out.push(case("Elem(x, 1) * y + Elem(p, 2)", v.clone()));
    out.push(case(
        "ElemT(s, 3, 2) * x + ElemT(Elem(y, 0), 3, 1) * p",
        vs.clone(),
    ));
    out.push(case("Extract(Concat(x, y), 2, 3) * p", v.clone()));
    out.push(case(
        "ExtractT(Extract(x, 1, 2), 1, 4) * Concat(b, p) + Concat(s, y)",
        vs.clone(),
    ));
    out.push(case("Concat(x * y, Exp(p)) * Concat(p, x)", v.clone()));
    out.push(case(
        "IntCst(3) * x + RatCst(2, 3) * y * p + Zero(3) * p",
        v.clone(),
    ));
    out.push(case("Exp(-SqDist(x, y) * s) * b", vs.clone()));

    // Matrix products: A is 2 x 3 (row-major), B 3 x 3.
    let mvars = with(
        v.clone(),
        vec![
            var("A", "Pm", random(r, 6, -1.0, 1.0)),
            var("B", "Vi", random(r, 9, -1.0, 1.0)),
            var("q", "Vj", random(r, 2, -1.0, 1.0)),
        ],
    );
    out.push(case("MatVecMult(A, x * y)", mvars.clone()));
    out.push(case("MatVecMult(B, p) * y", mvars.clone()));
    out.push(case("VecMatMult(q, A) * x", mvars.clone()));
    out.push(case(
        "VecMatMult(y, B) + MatVecMult(TensorProd(x, p), y)",
        mvars.clone(),
    ));
    out.push(case("TensorProd(x, y) * B", mvars.clone()));
    out.push(case("TensorProd(q, p) * A", mvars.clone()));
    // TensorDot: a contraction (B as 3 x 3 against x), an outer product with a permutation, a
    // double contraction of two 3 x 3 matrices with permuted kept axes, and Kron.
    out.push(case(
        "TensorDot(B, x * y, [3, 3], [3], [1], [0])",
        mvars.clone(),
    ));
    out.push(case(
        "TensorDot(x, q, [3], [2], [], [], [1, 0])",
        mvars.clone(),
    ));
    out.push(case(
        "TensorDot(B, TensorProd(y, p), [3, 3], [3, 3], [0], [1], [1, 0])",
        mvars.clone(),
    ));
    out.push(case(
        "TensorDot(B, TensorProd(x, y), [3, 3], [3, 3], [0, 1], [1, 0])",
        mvars.clone(),
    ));
    out.push(case("Kron(q, x, [2], [3]) * Sum(y)", mvars.clone()));
    out.push(case("Kron(A, B, [2, 3], [3, 3])", mvars.clone()));

    // Weighted norms: weights of dimension 1, n and n².
    let w = with(
        v.clone(),
        vec![
            var("s", "Pm", vec![0.7]),
            var("w", "Vj", random(r, 3, 0.2, 1.5)),
            var("S", "Pm", random(r, 9, -1.0, 1.0)),
        ],
    );
    out.push(case(
        "WeightedSqNorm(s, x) + WeightedSqNorm(w, y)",
        w.clone(),
    ));
    out.push(case("WeightedSqNorm(S, x - p)", w.clone()));
    out.push(case("WeightedSqDist(s, x, y)", w.clone()));
    out.push(case("WeightedSqDist(w, x, p)", w.clone()));
    out.push(case("WeightedSqDist(S, x, y)", w.clone()));
    out.push(case("SqNormDiag(w, x) * SqNormIso(s, y)", w.clone()));
    out.push(case("SymSqNorm(S, x + y)", w.clone()));
    out.push(case("Exp(-WeightedSqDist(S, x, y)) * p", w.clone()));

    // Derivatives of derivatives.
    let d = with(v.clone(), vec![var("s", "Pm", vec![0.6])]);
    out.push(case("Grad(Exp(x) * y, x, p)", d.clone()));
    out.push(case("Grad(SqDist(x, y) * s, y, s)", d.clone()));
    out.push(case("Diff(Sin(x) * y, x, p)", d.clone()));
    out.push(case("Diff(Grad(Norm2(x - y), x, s), y, p)", d.clone()));
    out
}

/// The formulas of [`cases`] (F) that the second-order and `Diff` tests also use: all of them.
fn smooth_cases() -> Vec<Case> {
    cases().into_iter().filter(|c| !c.constant).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. First order
// ---------------------------------------------------------------------------------------------

#[test]
fn first_order_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(1);
    for c in cases() {
        let dim_f = PointFn::new(&c.vars, &c.formula).at(&c.vars).len();
        for v in &c.vars {
            let e = random(&mut rng, dim_f, -1.5, 1.5);
            let got = check_grad("first order", &c.vars, &c.formula, &v.name, &e);
            // A scalar e stands for that many copies.
            let scalar = [rng.random_range(0.5..1.5)];
            let got_scalar = check_grad("scalar e", &c.vars, &c.formula, &v.name, &scalar);
            if c.constant {
                for g in got.iter().chain(&got_scalar) {
                    assert!(
                        *g == 0.0,
                        "Grad({}, {}) of a piecewise-constant formula: {got:?} / {got_scalar:?}",
                        c.formula,
                        v.name
                    );
                }
            }
        }
    }
}

/// Each category of variable is differentiated for each family of formulas.
#[test]
fn every_category_is_differentiated() {
    let cs = cases();
    for cat in ["Vi", "Vj", "Pm"] {
        for (what, constant) in [("smooth", false), ("piecewise constant", true)] {
            assert!(
                cs.iter()
                    .any(|c| c.constant == constant && c.vars.iter().any(|v| v.cat == cat)),
                "no {what} formula has a {cat} variable"
            );
        }
    }
    // Each unary operator: one formula with x = Vi, y = Vj, p = Pm, all differentiated.
    for &(template, ..) in UNARY {
        let name = &template[..template.find('(').unwrap()];
        for cat in ["Vi", "Vj", "Pm"] {
            assert!(
                cs.iter()
                    .any(|c| calls(&c.formula, name) && c.vars.iter().any(|v| v.cat == cat)),
                "{name} is never differentiated with respect to a {cat} variable"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Second order
// ---------------------------------------------------------------------------------------------

/// `Grad(Grad(F, v, e), w, f)` for every pair of variables (v, w), w = v included, against
/// finite differences of the compiled `Grad(F, v, e)`.
fn second_order(shard: usize, shards: usize) {
    let mut rng = StdRng::seed_from_u64(2 + shard as u64);
    for (n, c) in smooth_cases().into_iter().enumerate() {
        if n % shards != shard {
            continue;
        }
        let dim_f = PointFn::new(&c.vars, &c.formula).at(&c.vars).len();
        for v in &c.vars {
            let mut vars = c.vars.clone();
            let e = random(&mut rng, dim_f, -1.5, 1.5);
            vars.push(var("e_in", "Vj", e));
            let g = format!("Grad({}, {}, e_in)", c.formula, v.name);
            let dim_g = v.value.len();
            for w in &c.vars {
                let f = random(&mut rng, dim_g, -1.5, 1.5);
                check_grad("second order", &vars, &g, &w.name, &f);
            }
        }
    }
}

#[test]
fn second_order_gradients_match_finite_differences_0() {
    second_order(0, 2);
}

#[test]
fn second_order_gradients_match_finite_differences_1() {
    second_order(1, 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Forward mode
// ---------------------------------------------------------------------------------------------

#[test]
fn diff_matches_directional_finite_differences() {
    let mut rng = StdRng::seed_from_u64(3);
    for c in smooth_cases() {
        for v in &c.vars {
            let u = random(&mut rng, v.value.len(), -1.5, 1.5);
            check_diff("Diff", &c.vars, &c.formula, &v.name, &u);
            // A scalar u is broadcast.
            check_diff("Diff, scalar u", &c.vars, &c.formula, &v.name, &[0.7]);
        }
    }
}

#[test]
fn diff_of_a_gradient_and_gradient_of_a_diff() {
    let vars = vec![
        var("x", "Vi", vec![0.3, -0.8, 1.1]),
        var("y", "Vj", vec![-0.5, 0.4, 0.9]),
        var("b", "Vj", vec![1.3]),
        var("e_in", "Vi", vec![0.7]),
        var("u_in", "Pm", vec![0.2, -1.0, 0.6]),
    ];
    let gauss = "Exp(-SqDist(x, y)) * b";
    for v in ["x", "y"] {
        // Hessian-vector products, both ways.
        let g = format!("Grad({gauss}, {v}, e_in)");
        check_diff("Diff of Grad", &vars, &g, "x", &[0.5, 1.0, -2.0]);
        check_diff("Diff of Grad", &vars, &g, "y", &[0.5, 1.0, -2.0]);
        let d = format!("Diff({gauss}, {v}, u_in)");
        check_grad("Grad of Diff", &vars, &d, "x", &[1.2]);
        check_grad("Grad of Diff", &vars, &d, "y", &[1.2]);
        check_grad("Grad of Diff", &vars, &d, "b", &[1.2]);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Reductions of gradients
// ---------------------------------------------------------------------------------------------

const N: usize = 4;
const M: usize = 5;

struct Data {
    /// (name, category, dim, rows of data)
    vars: Vec<(String, &'static str, usize, Vec<f64>)>,
}

impl Data {
    fn rows(cat: &str) -> usize {
        match cat {
            "Vi" => N,
            "Vj" => M,
            _ => 1,
        }
    }

    fn text(&self, formula: &str, axis: usize) -> String {
        let decls: Vec<Var> = self
            .vars
            .iter()
            .map(|(n, c, d, _)| var(n, c, vec![0.0; *d]))
            .collect();
        kernel_text(&decls, formula, axis)
    }

    fn run(&self, formula: &str, axis: usize) -> Vec<f64> {
        let file = compile(&self.text(formula, axis));
        let inputs: Vec<(String, HostArray)> = self
            .vars
            .iter()
            .map(|(n, c, d, data)| {
                let rows = Data::rows(c);
                let shape = if *c == "Pm" { vec![*d] } else { vec![rows, *d] };
                (n.clone(), HostArray::from_f64(shape, data.clone()))
            })
            .collect();
        driver::evaluate(&file.kernels[0], &inputs, Backend::Interp)
            .expect("evaluation succeeds")
            .output
            .to_f64()
    }
}

/// `Sum_Reduction(Grad(F, v, e), axis)` against finite differences of
/// `Sum_Reduction(Sum(F * e), axis)`: row r of the first is the gradient with respect to
/// row r of v of row r of the second (v indexed by the output rows: i for axis 0, j for 1).
fn check_reduction(formula: &str, v: &str, axis: usize, dim_f: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Data {
        vars: vec![
            ("x".into(), "Vi", 3, random(&mut rng, N * 3, -1.0, 1.0)),
            ("y".into(), "Vj", 3, random(&mut rng, M * 3, -1.0, 1.0)),
            ("b".into(), "Vj", 1, random(&mut rng, M, 0.5, 1.5)),
            ("p".into(), "Pm", 3, random(&mut rng, 3, -1.0, 1.0)),
            ("A".into(), "Pm", 6, random(&mut rng, 6, -1.0, 1.0)),
            (
                "e".into(),
                "Vi",
                dim_f,
                random(&mut rng, N * dim_f, -1.0, 1.0),
            ),
        ],
    };
    let got = data.run(&format!("Grad({formula}, {v}, e)"), axis);
    let k = data.vars.iter().position(|(n, ..)| n == v).unwrap();
    let (cat, dim) = (data.vars[k].1, data.vars[k].2);
    let rows = Data::rows(cat);
    assert_eq!(got.len(), rows * dim, "{formula}: output size");
    let contracted = format!("Sum(({formula}) * e)");
    let mut want = vec![0.0; rows * dim];
    for r in 0..rows {
        for m in 0..dim {
            let at = r * dim + m;
            let x0 = data.vars[k].3[at];
            let (xp, xm, width) = step(x0);
            data.vars[k].3[at] = xp;
            let fp = data.run(&contracted, axis)[r];
            data.vars[k].3[at] = xm;
            let fm = data.run(&contracted, axis)[r];
            data.vars[k].3[at] = x0;
            want[at] = (fp - fm) / width;
        }
    }
    assert_close(
        &got,
        &want,
        &format!("Sum_Reduction(Grad({formula}, {v}, e), {axis})"),
    );
}

const REDUCED: &[(&str, usize)] = &[
    ("Exp(-SqDist(x, y)) * b", 1),
    ("Normalize(x - y) * b", 3),
    ("MatVecMult(A, x * y) + Sqrt(SqNorm2(x + p) + b)", 2),
    ("Concat(Sin(x) * y, Log(b))", 4),
];

#[test]
fn reductions_of_gradients_wrt_i_variables() {
    for (k, (formula, dim_f)) in REDUCED.iter().enumerate() {
        check_reduction(formula, "x", 0, *dim_f, 10 + k as u64);
    }
}

#[test]
fn reductions_of_gradients_wrt_j_variables() {
    for (k, (formula, dim_f)) in REDUCED.iter().enumerate() {
        check_reduction(formula, "y", 1, *dim_f, 20 + k as u64);
        check_reduction(formula, "b", 1, *dim_f, 30 + k as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn gradient_input_of_the_wrong_dimension_is_an_error() {
    for (formula, e_dim) in [
        ("Grad(Exp(x), x, e)", 2),
        ("Grad(SqNorm2(x), x, e)", 3),
        ("Grad(MatVecMult(A, x), x, e)", 3),
    ] {
        let text = format!(
            "kernel k {{\n    x = Vi(3)\n    A = Pm(6)\n    e = Vj({e_dim})\n    Sum_Reduction({formula}, 0)\n}}\n"
        );
        let errors = compile_errors(&text);
        assert!(
            errors.iter().any(|m| m == "dimension mismatch in `Grad`"),
            "{formula}: {errors:?}"
        );
    }
}

#[test]
fn gradient_with_respect_to_a_non_variable_is_an_error() {
    for (body, formula) in [
        ("let g = Exp(x)\n", "Grad(Sum(g), g, 1)"),
        ("", "Grad(Exp(x), Exp(x), e)"),
        ("", "Grad(Exp(x), x + x, e)"),
        ("", "Diff(Exp(x), 2 * x, e)"),
    ] {
        let text = format!(
            "kernel k {{\n    x = Vi(3)\n    e = Vj(3)\n    {body}    Sum_Reduction({formula}, 0)\n}}\n"
        );
        let errors = compile_errors(&text);
        assert!(
            errors
                .iter()
                .any(|m| m == "differentiation is with respect to a variable"),
            "{formula}: {errors:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------------------------

/// Every operator of the table with a derivative rule is differentiated by some formula here;
/// every piecewise-constant one in a formula whose gradient must be exactly zero.
#[test]
fn every_differentiable_operator_is_covered() {
    let cs = cases();
    let mut formulas: Vec<String> = cs.iter().map(|c| c.formula.clone()).collect();
    formulas.extend(REDUCED.iter().map(|(f, _)| f.to_string()));
    let missing: Vec<&str> = OPERATORS
        .iter()
        .map(|e| e.name)
        .filter(|name| !NO_RULE.contains(name))
        .filter(|name| !formulas.iter().any(|f| calls(f, name)))
        .collect();
    assert!(
        missing.is_empty(),
        "operators never differentiated: {missing:?}"
    );
    for name in PIECEWISE_CONSTANT {
        assert!(
            OPERATORS.iter().any(|e| e.name == *name),
            "{name} is not in the table"
        );
        assert!(
            cs.iter().any(|c| c.constant && calls(&c.formula, name)),
            "{name} never appears in a formula checked to have a zero gradient"
        );
    }
    for name in NO_RULE {
        assert!(
            OPERATORS.iter().any(|e| e.name == *name),
            "{name} is not in the table"
        );
    }
}
