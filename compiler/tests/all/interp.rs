//! The reference interpreter against values computed independently: closed forms and hand
//! computations for every operator of the table, identities on random inputs, and reductions
//! against explicit loops written here. Nothing in this file uses the interpreter to compute
//! an expected value.

// Expected values are written as the textbook index loops they are.
#![allow(clippy::needless_range_loop)]

use keops_runtime::{DType, HostArray};
use keopsc::check::operators::OPERATORS;
use keopsc::driver::{self, Backend, CompiledFile};
use keopsc::interp::{evaluate_point, InterpError};
use keopsc::source::SourceFile;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::{E, FRAC_PI_2, PI, SQRT_2};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn compile(text: &str) -> CompiledFile {
    match driver::compile(SourceFile::new("<interp test>", text)) {
        Ok(c) => c,
        Err((source, diagnostics)) => panic!(
            "does not compile:\n{text}\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        ),
    }
}

/// A kernel declaring each variable as a parameter `Pm(dim)`, reducing `formula`.
fn point_kernel(vars: &[(&str, usize)], formula: &str) -> String {
    let mut text = String::from("kernel t {\n");
    for (name, dim) in vars {
        text.push_str(&format!("    {name} = Pm({dim})\n"));
    }
    text.push_str(&format!("    Sum_Reduction({formula}, 0)\n}}\n"));
    text
}

/// Evaluates `formula` at one point, every variable a parameter with the given value.
fn try_point(vars: &[(&str, &[f64])], formula: &str) -> Result<Vec<f64>, InterpError> {
    let decls: Vec<(&str, usize)> = vars.iter().map(|(n, v)| (*n, v.len())).collect();
    let compiled = compile(&point_kernel(&decls, formula));
    let kernel = &compiled.kernels[0];
    let values: Vec<Vec<f64>> = vars.iter().map(|(_, v)| v.to_vec()).collect();
    evaluate_point(&kernel.formula, &values)
}

fn point(vars: &[(&str, &[f64])], formula: &str) -> Vec<f64> {
    try_point(vars, formula).unwrap_or_else(|e| panic!("{formula}: {e}"))
}

/// Equal, both NaN, or within `tol` relative to max(1, |a|, |b|).
fn close(a: f64, b: f64, tol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    a == b || (a - b).abs() <= tol * 1f64.max(a.abs()).max(b.abs())
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length of {got:?} vs expected {want:?}"
    );
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, *w, tol),
            "{what}: component {k}: got {g:?}, expected {w:?}\n  got {got:?}\n  expected {want:?}"
        );
    }
}

fn f64s(a: &HostArray) -> Vec<f64> {
    assert_eq!(a.dtype(), DType::F64);
    a.to_f64()
}

fn run(text: &str, inputs: &[(&str, HostArray)]) -> HostArray {
    let compiled = compile(text);
    let inputs: Vec<(String, HostArray)> = inputs
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    driver::evaluate(&compiled.kernels[0], &inputs, Backend::Interp)
        .expect("evaluation succeeds")
        .output
}

fn arr(rows: usize, dim: usize, data: Vec<f64>) -> HostArray {
    assert_eq!(data.len(), rows * dim);
    HostArray::from_f64(vec![rows, dim], data)
}

fn random(rng: &mut StdRng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn row(data: &[f64], dim: usize, r: usize) -> &[f64] {
    &data[r * dim..(r + 1) * dim]
}

// ---------------------------------------------------------------------------------------------
// 1. Every operator of the table, against closed forms
// ---------------------------------------------------------------------------------------------

struct Case {
    formula: &'static str,
    vars: Vec<(&'static str, Vec<f64>)>,
    expected: Vec<f64>,
}

fn c(formula: &'static str, vars: &[(&'static str, &[f64])], expected: &[f64]) -> Case {
    Case {
        formula,
        vars: vars.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
        expected: expected.to_vec(),
    }
}

const NAN: f64 = f64::NAN;
const INF: f64 = f64::INFINITY;

/// Naive row-major matrix product (m x k) (k x n).
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                out[i * n + j] += a[i * k + l] * b[l * n + j];
            }
        }
    }
    out
}

fn seq(n: usize, scale: f64, shift: f64) -> Vec<f64> {
    (0..n).map(|k| k as f64 * scale + shift).collect()
}

/// TensorDot test data: f (2,3,4) and g (4,5,2) contracted over f's axes 0,2 with g's 2,0.
fn tensordot_two_axes() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let f = seq(24, 0.5, -3.0);
    let g: Vec<f64> = (0..40).map(|k| ((k * 7) % 11) as f64 - 4.0).collect();
    // out[b, e] = sum_{a, c} f[a, b, c] g[c, e, a]
    let mut out = vec![0.0; 15];
    for b in 0..3 {
        for e in 0..5 {
            for a in 0..2 {
                for c in 0..4 {
                    out[b * 5 + e] += f[a * 12 + b * 4 + c] * g[c * 10 + e * 2 + a];
                }
            }
        }
    }
    (f, g, out)
}

fn cases() -> Vec<Case> {
    let x3 = [1.0, -2.0, 0.5];
    let y3 = [4.0, 0.25, -3.0];
    let a23 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b34: Vec<f64> = seq(12, 1.0, -5.0);
    let ab = matmul(&a23, &b34, 2, 3, 4);
    let abt: Vec<f64> = (0..8).map(|o| ab[(o % 2) * 4 + o / 2]).collect(); // (F G)^T, shape (4, 2)
    let (td_f, td_g, td_out) = tensordot_two_axes();
    // Outer product of f (2,3) and g (4), kept axes (2,3,4), permute [1,2,0]: output (4,2,3),
    // out[c, a, b] = f[a, b] g[c].
    let g4 = [1.0, -1.0, 2.0, 0.5];
    let mut perm_out = vec![0.0; 24];
    for a in 0..2 {
        for b in 0..3 {
            for cc in 0..4 {
                perm_out[cc * 6 + a * 3 + b] = a23[a * 3 + b] * g4[cc];
            }
        }
    }
    let mut outer = vec![0.0; 24];
    for k in 0..6 {
        for l in 0..4 {
            outer[k * 4 + l] = a23[k] * g4[l];
        }
    }
    let s9 = [1.0, 2.0, -1.0, 0.5, 3.0, 4.0, -2.0, 1.5, 0.25]; // not symmetric
    let quad = |s: &[f64], v: &[f64]| {
        let mut t = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                t += s[i * 3 + j] * v[i] * v[j];
            }
        }
        t
    };
    let d3 = [x3[0] - y3[0], x3[1] - y3[1], x3[2] - y3[2]];
    let sq = |v: &[f64]| v.iter().map(|t| t * t).sum::<f64>();
    let diag = |s: &[f64], v: &[f64]| s.iter().zip(v).map(|(s, t)| s * t * t).sum::<f64>();
    let w3 = [0.5, 2.0, 3.0];

    vec![
        // --- element-wise, one operand ---
        c("Minus(x)", &[("x", &[0.3])], &[-0.3]),
        c("-x", &[("x", &[0.3, -2.0])], &[-0.3, 2.0]),
        c(
            "Exp(x)",
            &[("x", &[0.3, 0.0, -INF])],
            &[0.3f64.exp(), 1.0, 0.0],
        ),
        c(
            "Log(x)",
            &[("x", &[2.5, 1.0, 0.0, -1.0])],
            &[2.5f64.ln(), 0.0, -INF, NAN],
        ),
        c("Sqrt(x)", &[("x", &[2.0, 0.0, -1.0])], &[SQRT_2, 0.0, NAN]),
        c(
            "Rsqrt(x)",
            &[("x", &[4.0, 0.0, 2.0, -1.0])],
            &[0.5, 0.0, 1.0 / SQRT_2, NAN],
        ),
        c("Square(x)", &[("x", &[-1.5])], &[2.25]),
        c("Inv(x)", &[("x", &[4.0, 0.0, -0.0])], &[0.25, INF, -INF]),
        c("Abs(x)", &[("x", &[-2.5, 3.0, -0.0])], &[2.5, 3.0, 0.0]),
        c(
            "Sign(x)",
            &[("x", &[-2.0, 0.0, 3.0, -0.0, NAN])],
            &[-1.0, 0.0, 1.0, 0.0, 0.0],
        ),
        c(
            "Step(x)",
            &[("x", &[-1.0, 0.0, 2.0, -0.0, NAN])],
            &[0.0, 1.0, 1.0, 1.0, 1.0],
        ),
        c(
            "ReLU(x)",
            &[("x", &[-1.0, 0.0, 2.0, NAN])],
            &[0.0, 0.0, 2.0, NAN],
        ),
        c("Sin(x)", &[("x", &[0.3, PI / 6.0])], &[0.3f64.sin(), 0.5]),
        c("Cos(x)", &[("x", &[0.3, 0.0])], &[0.3f64.cos(), 1.0]),
        c(
            "Asin(x)",
            &[("x", &[0.3, 1.0, 2.0])],
            &[0.3f64.asin(), FRAC_PI_2, NAN],
        ),
        c(
            "Acos(x)",
            &[("x", &[0.3, -1.0, 2.0])],
            &[0.3f64.acos(), PI, NAN],
        ),
        c(
            "Atan(x)",
            &[("x", &[0.3, 1.0, INF])],
            &[0.3f64.atan(), PI / 4.0, FRAC_PI_2],
        ),
        c(
            "Floor(x)",
            &[("x", &[-1.5, 1.5, 2.0, -0.2])],
            &[-2.0, 1.0, 2.0, -1.0],
        ),
        c(
            "XLogX(x)",
            &[("x", &[0.0, 1.0, E, 0.5, -1.0])],
            &[0.0, 0.0, E, 0.5 * 0.5f64.ln(), NAN],
        ),
        c(
            "SinXDivX(x)",
            &[("x", &[0.0, 0.3, PI])],
            &[1.0, 0.3f64.sin() / 0.3, PI.sin() / PI],
        ),
        // Round: ties away from zero; d decimals, negative d rounds to tens, hundreds...
        c(
            "Round(x, 0)",
            &[("x", &[2.5, -2.5, 0.5, -0.5, 1.4999, 3.5])],
            &[3.0, -3.0, 1.0, -1.0, 1.0, 4.0],
        ),
        c(
            "Round(x, 2)",
            &[("x", &[1.23456, -1.23456, 0.125])],
            &[1.23, -1.23, 0.13],
        ),
        c("Round(x, 1)", &[("x", &[0.25, -0.25])], &[0.3, -0.3]),
        c(
            "Round(x, -2)",
            &[("x", &[1234.5, -1260.0, 49.0])],
            &[1200.0, -1300.0, 0.0],
        ),
        c("Pow(x, 3)", &[("x", &[1.5, -2.0])], &[3.375, -8.0]),
        c("Pow(x, 0)", &[("x", &[0.0, 7.0])], &[1.0, 1.0]),
        c("Pow(x, -2)", &[("x", &[2.0, 0.0])], &[0.25, INF]),
        c("x**3", &[("x", &[-1.5])], &[-3.375]),
        c("x**2", &[("x", &[-1.5])], &[2.25]),
        c("x**0.5", &[("x", &[2.0])], &[SQRT_2]),
        c("x**-0.5", &[("x", &[4.0, 0.0])], &[0.5, 0.0]),
        c("-x**2", &[("x", &[3.0])], &[-9.0]),
        c(
            "ClampInt(x, -1, 2)",
            &[("x", &[-3.0, 0.5, 5.0, NAN, 2.0])],
            &[-1.0, 0.5, 2.0, NAN, 2.0],
        ),
        // --- element-wise, two operands (with dim-1 broadcasting) ---
        c("Add(x, y)", &[("x", &x3), ("y", &y3)], &[5.0, -1.75, -2.5]),
        c("x + y", &[("x", &x3), ("y", &[10.0])], &[11.0, 8.0, 10.5]),
        c(
            "Subtract(x, y)",
            &[("x", &x3), ("y", &y3)],
            &[-3.0, -2.25, 3.5],
        ),
        c(
            "Subtract(a, y)",
            &[("a", &[1.0]), ("y", &y3)],
            &[-3.0, 0.75, 4.0],
        ),
        c("Mult(x, y)", &[("x", &x3), ("y", &y3)], &[4.0, -0.5, -1.5]),
        c(
            "Mult(a, x)",
            &[("a", &[2.0]), ("x", &x3)],
            &[2.0, -4.0, 1.0],
        ),
        c(
            "Divide(x, y)",
            &[("x", &x3), ("y", &y3)],
            &[0.25, -8.0, 0.5 / -3.0],
        ),
        c(
            "Divide(x, a)",
            &[("x", &x3), ("a", &[0.0])],
            &[INF, -INF, INF],
        ),
        c("x / 4 * 2 - 1", &[("x", &[3.0])], &[0.5]),
        c("2.5 * x", &[("x", &[2.0])], &[5.0]),
        c(
            "Powf(x, y)",
            &[
                ("x", &[2.0, 9.0, -8.0, 0.0]),
                ("y", &[0.5, 0.5, 1.0 / 3.0, 0.0]),
            ],
            &[SQRT_2, 3.0, NAN, 1.0],
        ),
        c(
            "Atan2(y, x)",
            &[("y", &[1.0, -1.0, 0.0, 1.0]), ("x", &[-1.0, 0.0, 1.0, 1.0])],
            &[3.0 * PI / 4.0, -FRAC_PI_2, 0.0, PI / 4.0],
        ),
        c(
            "Equal(x, y)",
            &[("x", &[1.0, 2.0, NAN, 0.0]), ("y", &[1.0, 3.0, NAN, -0.0])],
            &[1.0, 0.0, 0.0, 1.0],
        ),
        c(
            "NotEqual(x, y)",
            &[("x", &[1.0, 2.0, NAN]), ("y", &[1.0, 3.0, NAN])],
            &[0.0, 1.0, 1.0],
        ),
        c(
            "LessThan(x, y)",
            &[("x", &[1.0, 2.0, NAN, 3.0]), ("y", &[2.0, 2.0, 1.0, 1.0])],
            &[1.0, 0.0, 0.0, 0.0],
        ),
        c(
            "LessOrEqual(x, y)",
            &[("x", &[1.0, 2.0, NAN, 3.0]), ("y", &[2.0, 2.0, 1.0, 1.0])],
            &[1.0, 1.0, 0.0, 0.0],
        ),
        c(
            "LessThan(x, a)",
            &[("x", &[1.0, 2.0, 3.0]), ("a", &[2.0])],
            &[1.0, 0.0, 0.0],
        ),
        // --- element-wise, three operands ---
        c(
            "Clamp(x, a, b)",
            &[("x", &[-1.0, 0.5, 3.0, NAN]), ("a", &[0.0]), ("b", &[1.0])],
            &[0.0, 0.5, 1.0, NAN],
        ),
        // a > b: the lower bound is tested first
        c(
            "Clamp(x, a, b)",
            &[("x", &[0.0, 1.5, 3.0]), ("a", &[2.0]), ("b", &[1.0])],
            &[2.0, 2.0, 1.0],
        ),
        c(
            "Clamp(x, a, b)",
            &[
                ("x", &[5.0, 5.0, 5.0]),
                ("a", &[0.0, 6.0, 0.0]),
                ("b", &[1.0, 7.0, 9.0]),
            ],
            &[1.0, 6.0, 5.0],
        ),
        c(
            "IfElse(f, a, b)",
            &[
                ("f", &[0.0, -0.0, -1.0, 2.0, NAN]),
                ("a", &[10.0, 11.0, 12.0, 13.0, 14.0]),
                ("b", &[-5.0]),
            ],
            &[10.0, 11.0, -5.0, 13.0, -5.0],
        ),
        c(
            "IfElse(f, a, b)",
            &[("f", &[0.0]), ("a", &[1.0]), ("b", &[2.0])],
            &[1.0],
        ),
        c(
            "Mod(x, n, d)",
            &[
                ("x", &[7.5, -7.5, 5.0, 1.0, 2.0]),
                ("n", &[2.0, 2.0, 3.0, 3.0, 3.0]),
                ("d", &[0.0, 0.0, -1.0, -1.0, -1.0]),
            ],
            &[1.5, 0.5, -1.0, 1.0, -1.0],
        ),
        c(
            "Mod(x, n, d)",
            &[("x", &[-0.5, 6.0, 6.1]), ("n", &[2.0]), ("d", &[0.0])],
            &[1.5, 0.0, 6.1 - 6.0],
        ),
        // --- vector operators ---
        c("Sum(x)", &[("x", &[1.0, 2.0, 3.5])], &[6.5]),
        c("Sum(a)", &[("a", &[-4.0])], &[-4.0]),
        c("SumT(a, 3)", &[("a", &[2.0])], &[2.0, 2.0, 2.0]),
        c("Max(x)", &[("x", &[1.0, 5.0, 5.0, -2.0])], &[5.0]),
        c("Max(x)", &[("x", &[NAN, 1.0])], &[NAN]),
        c("Max(x)", &[("x", &[1.0, NAN, 2.0])], &[2.0]),
        c("Min(x)", &[("x", &[3.0, -1.0, -1.0, 2.0])], &[-1.0]),
        c("ArgMax(x)", &[("x", &[1.0, 5.0, 5.0, -2.0])], &[1.0]),
        c("ArgMax(x)", &[("x", &[7.0, 7.0, 7.0])], &[0.0]),
        c("ArgMax(x)", &[("x", &[1.0, NAN, 2.0])], &[2.0]),
        c("ArgMin(x)", &[("x", &[3.0, -1.0, 4.0, -1.0])], &[1.0]),
        c("ArgMin(a)", &[("a", &[3.0])], &[0.0]),
        c("SqNorm2(x)", &[("x", &[1.0, 2.0, -2.0])], &[9.0]),
        c("Norm2(x)", &[("x", &[1.0, 2.0, -2.0])], &[3.0]),
        c("Normalize(x)", &[("x", &[3.0, -4.0])], &[0.6, -0.8]),
        c("Normalize(x)", &[("x", &[0.0, 0.0])], &[0.0, 0.0]),
        c(
            "SqDist(x, y)",
            &[("x", &[1.0, 2.0]), ("y", &[4.0, 6.0])],
            &[25.0],
        ),
        c(
            "Scalprod(x, y)",
            &[("x", &[1.0, 2.0, 3.0]), ("y", &[4.0, 5.0, 6.0])],
            &[32.0],
        ),
        c(
            "|x|y|",
            &[("x", &[1.0, 2.0, 3.0]), ("y", &[4.0, -5.0, 6.0])],
            &[12.0],
        ),
        c("(x|y)", &[("x", &[1.0, 2.0]), ("y", &[0.5, 0.25])], &[1.0]),
        c("x|y", &[("x", &[1.0, 2.0]), ("y", &[0.5, 0.25])], &[1.0]),
        c("Elem(x, 2)", &[("x", &[1.0, 2.0, 3.0])], &[3.0]),
        c("Elem(x, 0)", &[("x", &[1.0, 2.0, 3.0])], &[1.0]),
        c("ElemT(a, 4, 1)", &[("a", &[7.0])], &[0.0, 7.0, 0.0, 0.0]),
        c("ElemT(a, 1, 0)", &[("a", &[7.0])], &[7.0]),
        c(
            "Extract(x, 1, 2)",
            &[("x", &[1.0, 2.0, 3.0, 4.0])],
            &[2.0, 3.0],
        ),
        c(
            "Extract(x, 0, 4)",
            &[("x", &[1.0, 2.0, 3.0, 4.0])],
            &[1.0, 2.0, 3.0, 4.0],
        ),
        c(
            "ExtractT(x, 1, 4)",
            &[("x", &[5.0, 6.0])],
            &[0.0, 5.0, 6.0, 0.0],
        ),
        c(
            "ExtractT(x, 2, 4)",
            &[("x", &[5.0, 6.0])],
            &[0.0, 0.0, 5.0, 6.0],
        ),
        c(
            "Concat(x, y)",
            &[("x", &[1.0, 2.0]), ("y", &[3.0])],
            &[1.0, 2.0, 3.0],
        ),
        c(
            "Concat(a, Concat(a, x))",
            &[("a", &[9.0]), ("x", &[1.0, 2.0])],
            &[9.0, 9.0, 1.0, 2.0],
        ),
        // OneHot: (int)(f + 0.5) truncating toward zero; out of range gives zeros
        c("OneHot(a, 4)", &[("a", &[2.5])], &[0.0, 0.0, 0.0, 1.0]),
        c("OneHot(a, 4)", &[("a", &[2.4999])], &[0.0, 0.0, 1.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[0.49])], &[1.0, 0.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[1.5])], &[0.0, 0.0, 1.0]),
        c("OneHot(a, 3)", &[("a", &[-1.0])], &[1.0, 0.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[-1.6])], &[0.0, 0.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[2.5])], &[0.0, 0.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[100.0])], &[0.0, 0.0, 0.0]),
        c("OneHot(a, 3)", &[("a", &[NAN])], &[0.0, 0.0, 0.0]),
        // Row-major A (2x3) times b (3): [1 2 3; 4 5 6] [1 2 3]^T
        c(
            "MatVecMult(A, b)",
            &[("A", &a23), ("b", &[1.0, 2.0, 3.0])],
            &[14.0, 32.0],
        ),
        // A (3x2) = [1 2; 3 4; 5 6] times b (2) = [1, -1]
        c(
            "MatVecMult(A, b)",
            &[("A", &a23), ("b", &[1.0, -1.0])],
            &[-1.0, -1.0, -1.0],
        ),
        c(
            "MatVecMult(A, b)",
            &[("A", &[1.0, 2.0]), ("b", &[3.0, 4.0])],
            &[11.0],
        ),
        // b^T A, A (2x3) row-major: [1 2] [1 2 3; 4 5 6] = [9 12 15]
        c(
            "VecMatMult(b, A)",
            &[("b", &[1.0, 2.0]), ("A", &a23)],
            &[9.0, 12.0, 15.0],
        ),
        // A (3x2): [1 0 -1] [1 2; 3 4; 5 6] = [-4 -4]
        c(
            "VecMatMult(b, A)",
            &[("b", &[1.0, 0.0, -1.0]), ("A", &a23)],
            &[-4.0, -4.0],
        ),
        c(
            "TensorProd(f, g)",
            &[("f", &[1.0, 2.0]), ("g", &[3.0, 4.0, 5.0])],
            &[3.0, 4.0, 5.0, 6.0, 8.0, 10.0],
        ),
        c(
            "TensorProd(f, g)",
            &[("f", &[1.0, 2.0, 3.0]), ("g", &[-1.0, 1.0])],
            &[-1.0, 1.0, -2.0, 2.0, -3.0, 3.0],
        ),
        // TensorDot: matrix product (2x3)(3x4), its transpose via permute, two-axis contraction,
        // outer product, and a 3-axis permute that is not its own inverse.
        c(
            "TensorDot(f, g, [2, 3], [3, 4], [1], [0])",
            &[("f", &a23), ("g", &b34)],
            &ab,
        ),
        c(
            "TensorDot(f, g, [2, 3], [3, 4], [1], [0], [1, 0])",
            &[("f", &a23), ("g", &b34)],
            &abt,
        ),
        c(
            "TensorDot(f, g, [2, 3, 4], [4, 5, 2], [0, 2], [2, 0])",
            &[("f", &td_f), ("g", &td_g)],
            &td_out,
        ),
        c(
            "TensorDot(f, g, [2, 3], [4], [], [])",
            &[("f", &a23), ("g", &g4)],
            &outer,
        ),
        c(
            "TensorDot(f, g, [2, 3], [4], [], [], [1, 2, 0])",
            &[("f", &a23), ("g", &g4)],
            &perm_out,
        ),
        c(
            "TensorDot(f, g, [3], [3], [0], [0])",
            &[("f", &x3), ("g", &y3)],
            &[4.0 - 0.5 - 1.5],
        ),
        // Weighted norms: WeightedSqNorm dispatches on the weight's dimension (1, n, n^2)
        c(
            "WeightedSqNorm(s, x)",
            &[("s", &[2.0]), ("x", &x3)],
            &[2.0 * sq(&x3)],
        ),
        c(
            "WeightedSqNorm(s, x)",
            &[("s", &w3), ("x", &x3)],
            &[diag(&w3, &x3)],
        ),
        c(
            "WeightedSqNorm(s, x)",
            &[("s", &s9), ("x", &x3)],
            &[quad(&s9, &x3)],
        ),
        c(
            "WeightedSqNorm(s, x)",
            &[("s", &[3.0]), ("x", &[2.0])],
            &[12.0],
        ),
        c(
            "WeightedSqDist(s, x, y)",
            &[("s", &[2.0]), ("x", &x3), ("y", &y3)],
            &[2.0 * sq(&d3)],
        ),
        c(
            "WeightedSqDist(s, x, y)",
            &[("s", &w3), ("x", &x3), ("y", &y3)],
            &[diag(&w3, &d3)],
        ),
        c(
            "WeightedSqDist(s, x, y)",
            &[("s", &s9), ("x", &x3), ("y", &y3)],
            &[quad(&s9, &d3)],
        ),
        c(
            "SqNormIso(s, x)",
            &[("s", &[0.5]), ("x", &x3)],
            &[0.5 * 5.25],
        ),
        c(
            "SqNormDiag(s, x)",
            &[("s", &w3), ("x", &x3)],
            &[0.5 * 1.0 + 2.0 * 4.0 + 3.0 * 0.25],
        ),
        c(
            "SymSqNorm(S, x)",
            &[("S", &s9), ("x", &x3)],
            &[quad(&s9, &x3)],
        ),
        // 2x2 by hand: S = [1 2; 3 4], x = (1, -1): 1 - 2 - 3 + 4 = 0; x = (1, 2): 1+4+6+16 = 27
        c(
            "SymSqNorm(S, x)",
            &[("S", &[1.0, 2.0, 3.0, 4.0]), ("x", &[1.0, -1.0])],
            &[0.0],
        ),
        c(
            "SymSqNorm(S, x)",
            &[("S", &[1.0, 2.0, 3.0, 4.0]), ("x", &[1.0, 2.0])],
            &[27.0],
        ),
        // --- constants ---
        c("IntCst(3) * x", &[("x", &[1.5, -1.0])], &[4.5, -3.0]),
        c("IntCst(-2) + x", &[("x", &[1.5])], &[-0.5]),
        c("IntCst(0) + x", &[("x", &[1.5])], &[1.5]),
        c("RatCst(1, 3) * x", &[("x", &[3.0])], &[1.0 / 3.0 * 3.0]),
        c("RatCst(-3, 4) + x", &[("x", &[0.0])], &[-0.75]),
        c("IntInv(8) + x", &[("x", &[1.0])], &[1.125]),
        // Kron of [1, 2] and [[1, 0], [0, 1]] (as 1 x 2 and 2 x 2): [[1, 0, 2, 0], [0, 1, 0, 2]]
        c(
            "Kron(a, b, [1, 2], [2, 2])",
            &[("a", &[1.0, 2.0]), ("b", &[1.0, 0.0, 0.0, 1.0])],
            &[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 2.0],
        ),
        c("Zero(3) + x", &[("x", &x3)], &x3),
        c("Zero(2)", &[("x", &[1.0])], &[0.0, 0.0]),
        // --- compositions ---
        c(
            "Exp(-SqDist(x, y) / (2 * s * s)) * b",
            &[
                ("x", &[0.0, 1.0]),
                ("y", &[1.0, 1.0]),
                ("s", &[0.5]),
                ("b", &[3.0, -1.0]),
            ],
            &[3.0 * (-2.0f64).exp(), -(-2.0f64).exp()],
        ),
    ]
}

#[test]
fn every_operator_matches_its_closed_form() {
    let mut failures = Vec::new();
    for case in cases() {
        let vars: Vec<(&str, &[f64])> = case.vars.iter().map(|(n, v)| (*n, &v[..])).collect();
        match try_point(&vars, case.formula) {
            Ok(got) => {
                let ok = got.len() == case.expected.len()
                    && got
                        .iter()
                        .zip(&case.expected)
                        .all(|(g, w)| close(*g, *w, 1e-13));
                if !ok {
                    failures.push(format!(
                        "{} at {:?}: got {got:?}, expected {:?}",
                        case.formula, case.vars, case.expected
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.formula)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Signs of zero, where `==` cannot tell.
#[test]
fn signed_zeros() {
    let relu = point(&[("x", &[-0.0])], "ReLU(x)");
    assert!(
        relu[0] == 0.0 && relu[0].is_sign_negative(),
        "ReLU(-0.0) = -0.0, got {relu:?}"
    );
    let abs = point(&[("x", &[-0.0])], "Abs(x)");
    assert!(abs[0] == 0.0 && abs[0].is_sign_positive());
    let neg = point(&[("x", &[0.0])], "-x");
    assert!(neg[0] == 0.0 && neg[0].is_sign_negative());
}

/// Formulas that symbolic differentiation expands before evaluation: (formula, operator,
/// expected at x = (0.3, -0.5), e = (1, 2), c = 1.5), against the closed form.
fn calculus_cases() -> Vec<(&'static str, &'static str, Vec<f64>)> {
    let (x, e, c) = ([0.3f64, -0.5], [1.0f64, 2.0], 1.5f64);
    vec![
        // d/dx exp(x) is diagonal: VJP and JVP are both exp(x_k) e_k
        (
            "Grad(Exp(x), x, e)",
            "Grad",
            vec![x[0].exp() * e[0], x[1].exp() * e[1]],
        ),
        (
            "Diff(Exp(x), x, e)",
            "Diff",
            vec![x[0].exp() * e[0], x[1].exp() * e[1]],
        ),
        // grad of |x|^2 is 2x, times the scalar c; its JVP along e is 2 <x, e>
        (
            "Grad(SqNorm2(x), x, c)",
            "Grad",
            vec![2.0 * x[0] * c, 2.0 * x[1] * c],
        ),
        (
            "Diff(SqNorm2(x), x, e)",
            "Diff",
            vec![2.0 * (x[0] * e[0] + x[1] * e[1])],
        ),
    ]
}

#[test]
fn grad_and_diff_match_closed_forms() {
    for (formula, _, want) in calculus_cases() {
        let vars: &[(&str, &[f64])] = &[("x", &[0.3, -0.5]), ("e", &[1.0, 2.0]), ("c", &[1.5])];
        match try_point(vars, formula) {
            Err(err) => panic!("{formula}: {err}"),
            Ok(got) => assert_close(&got, &want, 1e-13, formula),
        }
    }
}

/// Every name of the operator table is called by at least one formula evaluated in this file.
#[test]
fn every_operator_table_entry_is_exercised() {
    let mut formulas: Vec<&str> = cases().iter().map(|c| c.formula).collect();
    formulas.extend(calculus_cases().iter().map(|(f, _, _)| *f));
    let calls = |formula: &str, name: &str| {
        formula.match_indices(&format!("{name}(")).any(|(at, _)| {
            formula[..at]
                .chars()
                .next_back()
                .is_none_or(|ch| !(ch.is_ascii_alphanumeric() || ch == '_'))
        })
    };
    let missing: Vec<&str> = OPERATORS
        .iter()
        .map(|e| e.name)
        .filter(|name| !formulas.iter().any(|f| calls(f, name)))
        .collect();
    assert!(missing.is_empty(), "operators never exercised: {missing:?}");
}

/// Results of Mod lie in [d, d + n) for n > 0.
#[test]
fn mod_result_range() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let x = rng.random_range(-100.0..100.0);
        let n = rng.random_range(0.1..10.0);
        let d = rng.random_range(-5.0..5.0);
        let r = point(&[("x", &[x]), ("n", &[n]), ("d", &[d])], "Mod(x, n, d)")[0];
        assert!(
            r >= d - 1e-12 && r < d + n + 1e-12,
            "Mod({x}, {n}, {d}) = {r}"
        );
        // x - r is a multiple of n
        let q = (x - r) / n;
        assert!(
            (q - q.round()).abs() < 1e-9,
            "Mod({x}, {n}, {d}) = {r}: not congruent"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Identities on random inputs
// ---------------------------------------------------------------------------------------------

const TOL: f64 = 1e-12;

fn vecs(n: usize) -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(-5.0..5.0f64, n)
}

fn same(vars: &[(&str, &[f64])], lhs: &str, rhs: &str) -> Result<(), TestCaseError> {
    let a = point(vars, lhs);
    let b = point(vars, rhs);
    prop_assert_eq!(a.len(), b.len());
    for (p, q) in a.iter().zip(&b) {
        prop_assert!(
            close(*p, *q, TOL),
            "{} = {:?} but {} = {:?} at {:?}",
            lhs,
            a,
            rhs,
            b,
            vars
        );
    }
    Ok(())
}

fn dims_and_vectors() -> impl Strategy<Value = (usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
    (1usize..=4).prop_flat_map(|n| {
        (
            Just(n),
            vecs(n),
            vecs(n),
            vecs(n),
            proptest::collection::vec(-2.0..2.0f64, n * n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn norms_and_distances((_n, x, y, _w, _s) in dims_and_vectors()) {
        let v: &[(&str, &[f64])] = &[("x", &x), ("y", &y)];
        same(v, "SqDist(x, y)", "SqNorm2(x - y)")?;
        same(v, "SqDist(x, y)", "Sum((x - y)**2)")?;
        same(v, "Norm2(x)", "Sqrt(SqNorm2(x))")?;
        same(v, "Normalize(x)", "x / Norm2(x)")?;
        same(v, "Scalprod(x, y)", "|x|y|")?;
        same(v, "Scalprod(x, y)", "(x|y)")?;
        same(v, "Scalprod(x, y)", "Sum(x * y)")?;
        // and against a direct computation
        let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let d2: f64 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        prop_assert!(close(point(v, "Scalprod(x, y)")[0], dot, TOL));
        prop_assert!(close(point(v, "SqDist(x, y)")[0], d2, TOL));
    }

    #[test]
    fn weighted_norms((n, x, y, w, s) in dims_and_vectors(), iso in 0.1..3.0f64) {
        let iso = [iso];
        for weight in [&iso[..], &w[..], &s[..]] {
            let v: &[(&str, &[f64])] = &[("s", weight), ("x", &x), ("y", &y)];
            same(v, "WeightedSqDist(s, x, y)", "WeightedSqNorm(s, x - y)")?;
        }
        let v: &[(&str, &[f64])] = &[("s", &iso), ("x", &x)];
        same(v, "SqNormIso(s, x)", "s * Sum(x**2)")?;
        same(v, "WeightedSqNorm(s, x)", "SqNormIso(s, x)")?;
        let v: &[(&str, &[f64])] = &[("s", &w), ("x", &x)];
        same(v, "SqNormDiag(s, x)", "Sum(s * x**2)")?;
        if n > 1 {
            same(v, "WeightedSqNorm(s, x)", "SqNormDiag(s, x)")?;
        }
        let v: &[(&str, &[f64])] = &[("s", &s), ("x", &x)];
        same(v, "SymSqNorm(s, x)", "Sum(s * TensorProd(x, x))")?;
        if n > 1 {
            same(v, "WeightedSqNorm(s, x)", "SymSqNorm(s, x)")?;
        }
    }

    #[test]
    fn tensordot_is_matvecmult(m in 1usize..4, k in 1usize..4, seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let a = random(&mut rng, m * k, -3.0, 3.0);
        let b = random(&mut rng, k, -3.0, 3.0);
        let v: &[(&str, &[f64])] = &[("A", &a), ("b", &b)];
        let td = format!("TensorDot(A, b, [{m}, {k}], [{k}], [1], [0])");
        same(v, &td, "MatVecMult(A, b)")?;
        // b^T A with A read as (k x m)... i.e. A (k, m) contracted over its axis 0
        let td = format!("TensorDot(b, A, [{k}], [{k}, {m}], [0], [0])");
        same(v, &td, "VecMatMult(b, A)")?;
    }

    #[test]
    fn concat_extract_elem((n, x, y, _w, _s) in dims_and_vectors(), a in -5.0..5.0f64, m in 0usize..4) {
        let v: &[(&str, &[f64])] = &[("x", &x), ("y", &y)];
        prop_assert_eq!(point(v, &format!("Extract(Concat(x, y), 0, {n})")), x.clone());
        prop_assert_eq!(point(v, &format!("Extract(Concat(x, y), {n}, {n})")), y.clone());
        let m = m % n;
        let av = [a];
        let v: &[(&str, &[f64])] = &[("a", &av)];
        for k in 0..n {
            let got = point(v, &format!("Elem(ElemT(a, {n}, {m}), {k})"));
            prop_assert_eq!(got, vec![if k == m { a } else { 0.0 }]);
        }
    }

    #[test]
    fn powers_and_exponentials(x in -3.0..3.0f64, y in -3.0..3.0f64) {
        let (xv, yv) = ([x], [y]);
        let v: &[(&str, &[f64])] = &[("a", &xv), ("b", &yv)];
        same(v, "Exp(a) * Exp(b)", "Exp(a + b)")?;
        same(v, "Pow(a, 3)", "a * a * a")?;
        same(v, "a**3", "a * a * a")?;
        same(v, "a**2", "Square(a)")?;
        same(v, "Square(a)", "a * a")?;
        prop_assert!(close(point(v, "Exp(a + b)")[0], (x + y).exp(), TOL));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Reductions against explicit loops
// ---------------------------------------------------------------------------------------------

/// Random data for `x = Vi(dx)`, `y = Vj(dx)`, `b = Vj(db)`.
struct Data {
    n: usize,
    m: usize,
    dx: usize,
    db: usize,
    x: Vec<f64>,
    y: Vec<f64>,
    b: Vec<f64>,
}

impl Data {
    fn new(seed: u64, n: usize, m: usize, dx: usize, db: usize) -> Data {
        let mut rng = StdRng::seed_from_u64(seed);
        Data {
            n,
            m,
            dx,
            db,
            x: random(&mut rng, n * dx, -2.0, 2.0),
            y: random(&mut rng, m * dx, -2.0, 2.0),
            b: random(&mut rng, m * db, 0.1, 2.0),
        }
    }

    fn inputs(&self) -> Vec<(&'static str, HostArray)> {
        vec![
            ("x", arr(self.n, self.dx, self.x.clone())),
            ("y", arr(self.m, self.dx, self.y.clone())),
            ("b", arr(self.m, self.db, self.b.clone())),
        ]
    }

    fn header(&self) -> String {
        format!(
            "kernel t {{\n x = Vi({})\n y = Vj({})\n b = Vj({})\n",
            self.dx, self.dx, self.db
        )
    }

    /// `F_ij` for every pair, by a function of (x_i, y_j, b_j): the N x M table.
    fn table(&self, f: impl Fn(&[f64], &[f64], &[f64]) -> Vec<f64>) -> Vec<Vec<Vec<f64>>> {
        (0..self.n)
            .map(|i| {
                (0..self.m)
                    .map(|j| {
                        f(
                            row(&self.x, self.dx, i),
                            row(&self.y, self.dx, j),
                            row(&self.b, self.db, j),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn run(&self, reduction: &str) -> Vec<f64> {
        f64s(&run(
            &format!("{}{reduction}\n}}", self.header()),
            &self.inputs(),
        ))
    }
}

/// Component-wise product x * y.
fn prod(x: &[f64], y: &[f64], _: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(a, b)| a * b).collect()
}

fn sqdist(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// Stable log-sum-exp of a list.
fn lse(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
}

#[test]
fn sum_reduction() {
    let d = Data::new(1, 7, 11, 3, 2);
    let got = d.run("Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)");
    let t = d.table(|x, y, b| b.iter().map(|bk| (-sqdist(x, y)).exp() * bk).collect());
    let mut want = Vec::new();
    for i in 0..d.n {
        for k in 0..d.db {
            want.push((0..d.m).map(|j| t[i][j][k]).sum());
        }
    }
    assert_close(&got, &want, 1e-13, "Sum_Reduction");
}

#[test]
fn max_min_and_arg_reductions() {
    let d = Data::new(2, 6, 9, 3, 1);
    let t = d.table(prod);
    let n = d.dx;
    let (mut max, mut min, mut amax, mut amin) = (vec![], vec![], vec![], vec![]);
    for i in 0..d.n {
        for c in 0..n {
            let (mut best_max, mut best_min) = (0, 0);
            for j in 1..d.m {
                if t[i][j][c] > t[i][best_max][c] {
                    best_max = j;
                }
                if t[i][j][c] < t[i][best_min][c] {
                    best_min = j;
                }
            }
            max.push(t[i][best_max][c]);
            min.push(t[i][best_min][c]);
            amax.push(best_max as f64);
            amin.push(best_min as f64);
        }
    }
    assert_eq!(d.run("Max_Reduction(x * y, 0)"), max);
    assert_eq!(d.run("Min_Reduction(x * y, 0)"), min);
    assert_eq!(d.run("ArgMax_Reduction(x * y, 0)"), amax);
    assert_eq!(d.run("ArgMin_Reduction(x * y, 0)"), amin);
    // Max_ArgMax / Min_ArgMin: per row [values (n), indices (n)]
    let layout = |vals: &[f64], idx: &[f64]| -> Vec<f64> {
        (0..d.n)
            .flat_map(|i| {
                vals[i * n..(i + 1) * n]
                    .iter()
                    .chain(&idx[i * n..(i + 1) * n])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(d.run("Max_ArgMax_Reduction(x * y, 0)"), layout(&max, &amax));
    assert_eq!(d.run("Min_ArgMin_Reduction(x * y, 0)"), layout(&min, &amin));
}

#[test]
fn arg_reductions_keep_the_first_of_ties() {
    // F_ij = y_j: the same for every i, with ties at j = 1, 3 (min) and j = 0, 2 (max).
    let text = "kernel t {\n x = Vi(1)\n y = Vj(1)\n Min_ArgMin_Reduction(y + 0 * x, 0)\n}";
    let inputs = [
        ("x", arr(2, 1, vec![1.0, 2.0])),
        ("y", arr(5, 1, vec![4.0, -1.0, 4.0, -1.0, 0.0])),
    ];
    assert_eq!(f64s(&run(text, &inputs)), vec![-1.0, 1.0, -1.0, 1.0]);
    let text = text.replace("Min_ArgMin", "Max_ArgMax");
    assert_eq!(f64s(&run(&text, &inputs)), vec![4.0, 0.0, 4.0, 0.0]);
    let text = text.replace("Max_ArgMax", "ArgMax");
    assert_eq!(f64s(&run(&text, &inputs)), vec![0.0, 0.0]);
    let text = text.replace("ArgMax", "ArgMin");
    assert_eq!(f64s(&run(&text, &inputs)), vec![1.0, 1.0]);
    // KMin with ties: equal values keep their j order
    let text = text.replace(
        "ArgMin_Reduction(y + 0 * x, 0)",
        "KMin_ArgKMin_Reduction(y + 0 * x, 3, 0)",
    );
    assert_eq!(
        f64s(&run(&text, &inputs)),
        [-1.0, -1.0, 0.0, 1.0, 3.0, 4.0].repeat(2)
    );
}

#[test]
fn logsumexp_family() {
    let d = Data::new(3, 5, 13, 2, 3);
    // Large magnitudes: a naive exp would underflow to 0 for every j.
    let f = |x: &[f64], y: &[f64]| -400.0 * sqdist(x, y) - 800.0;
    let t = d.table(|x, y, _| vec![f(x, y)]);
    let fs = |i: usize| -> Vec<f64> { (0..d.m).map(|j| t[i][j][0]).collect() };
    let fstr = "-400 * SqDist(x, y) - 800";

    let got = d.run(&format!("LogSumExp_Reduction({fstr}, 0)"));
    let want: Vec<f64> = (0..d.n).map(|i| lse(&fs(i))).collect();
    assert!(want.iter().all(|w| w.is_finite()));
    assert_close(&got, &want, 1e-12, "LogSumExp");

    // Max_SumShiftExp: (m, s) with m = max_j F_ij and s = sum_j exp(F_ij - m)
    let got = d.run(&format!("Max_SumShiftExp_Reduction({fstr}, 0)"));
    let mut want = Vec::new();
    for i in 0..d.n {
        let v = fs(i);
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        want.push(m);
        want.push(v.iter().map(|t| (t - m).exp()).sum());
    }
    assert_close(&got, &want, 1e-12, "Max_SumShiftExp");

    // Max_SumShiftExpWeight: (m, sum_j exp(F_ij - m) b_j)
    let got = d.run(&format!("Max_SumShiftExpWeight_Reduction({fstr}, b, 0)"));
    let mut want = Vec::new();
    for i in 0..d.n {
        let v = fs(i);
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        want.push(m);
        for k in 0..d.db {
            want.push((0..d.m).map(|j| (v[j] - m).exp() * d.b[j * d.db + k]).sum());
        }
    }
    assert_close(&got, &want, 1e-12, "Max_SumShiftExpWeight");

    // LogSumExpWeight: log sum_j exp(F_ij) b_j = log sum_j exp(F_ij + log b_j), per component
    let got = d.run(&format!("LogSumExpWeight_Reduction({fstr}, b, 0)"));
    let mut want = Vec::new();
    for i in 0..d.n {
        let v = fs(i);
        for k in 0..d.db {
            let shifted: Vec<f64> = (0..d.m).map(|j| v[j] + d.b[j * d.db + k].ln()).collect();
            want.push(lse(&shifted));
        }
    }
    assert_close(&got, &want, 1e-12, "LogSumExpWeight");

    // SumSoftMaxWeight: sum_j exp(F_ij) b_j / sum_j exp(F_ij)
    let got = d.run(&format!("SumSoftMaxWeight_Reduction({fstr}, b, 0)"));
    let mut want = Vec::new();
    for i in 0..d.n {
        let v = fs(i);
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = v.iter().map(|t| (t - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for k in 0..d.db {
            want.push((0..d.m).map(|j| e[j] * d.b[j * d.db + k]).sum::<f64>() / z);
        }
    }
    assert_close(&got, &want, 1e-12, "SumSoftMaxWeight");
}

#[test]
fn logsumexp_small_closed_form() {
    // One i, F_j = y_j in {0, log 2, log 3}: log(1 + 2 + 3) = log 6; softmax weights 1/6, 2/6, 3/6.
    let y = vec![0.0, 2f64.ln(), 3f64.ln()];
    let w = vec![6.0, 12.0, 0.0];
    let header = "kernel t {\n x = Vi(1)\n y = Vj(1)\n w = Vj(1)\n";
    let inputs = [
        ("x", arr(1, 1, vec![0.0])),
        ("y", arr(3, 1, y)),
        ("w", arr(3, 1, w)),
    ];
    let go = |red: &str| f64s(&run(&format!("{header}{red}\n}}"), &inputs));
    assert_close(
        &go("LogSumExp_Reduction(y + x, 0)"),
        &[6f64.ln()],
        1e-14,
        "LSE",
    );
    assert_close(
        &go("Max_SumShiftExp_Reduction(y + x, 0)"),
        &[3f64.ln(), 2.0],
        1e-14,
        "MSSE",
    );
    // sum exp(F) w = 6 + 24 + 0 = 30
    assert_close(
        &go("LogSumExpWeight_Reduction(y + x, w, 0)"),
        &[30f64.ln()],
        1e-14,
        "LSEW",
    );
    assert_close(
        &go("SumSoftMaxWeight_Reduction(y + x, w, 0)"),
        &[5.0],
        1e-14,
        "SSMW",
    );
    // m = log 3, s = (6 + 24) / 3
    assert_close(
        &go("Max_SumShiftExpWeight_Reduction(y + x, w, 0)"),
        &[3f64.ln(), 10.0],
        1e-14,
        "MSSEW",
    );
}

/// Expected K-min of one component: (values, indices), stable in j, padded with (+inf, 0).
fn kmin_of(values: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut pairs: Vec<(f64, usize)> = values.iter().cloned().zip(0..).collect();
    pairs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap()); // stable
    let mut vals: Vec<f64> = pairs.iter().take(k).map(|p| p.0).collect();
    let mut idx: Vec<f64> = pairs.iter().take(k).map(|p| p.1 as f64).collect();
    vals.resize(k, f64::INFINITY);
    idx.resize(k, 0.0);
    (vals, idx)
}

#[test]
fn kmin_reductions_rank_major_layout() {
    for (m, kk) in [(10usize, 3usize), (2, 4)] {
        let d = Data::new(4 + m as u64, 5, m, 2, 1);
        let t = d.table(|x, y, _| x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).collect());
        let n = d.dx;
        let (mut kmin, mut argk, mut both) = (vec![], vec![], vec![]);
        for i in 0..d.n {
            let per_c: Vec<(Vec<f64>, Vec<f64>)> = (0..n)
                .map(|c| kmin_of(&(0..d.m).map(|j| t[i][j][c]).collect::<Vec<_>>(), kk))
                .collect();
            let (mut rk, mut ra, mut rb) =
                (vec![0.0; kk * n], vec![0.0; kk * n], vec![0.0; 2 * kk * n]);
            for r in 0..kk {
                for c in 0..n {
                    rk[r * n + c] = per_c[c].0[r];
                    ra[r * n + c] = per_c[c].1[r];
                    rb[r * n + c] = per_c[c].0[r];
                    rb[kk * n + r * n + c] = per_c[c].1[r];
                }
            }
            kmin.extend(rk);
            argk.extend(ra);
            both.extend(rb);
        }
        assert_eq!(
            d.run(&format!("KMin_Reduction((x - y)**2, {kk}, 0)")),
            kmin,
            "KMin M={m} K={kk}"
        );
        assert_eq!(
            d.run(&format!("ArgKMin_Reduction((x - y)**2, {kk}, 0)")),
            argk,
            "ArgKMin M={m} K={kk}"
        );
        assert_eq!(
            d.run(&format!("KMin_ArgKMin_Reduction((x - y)**2, {kk}, 0)")),
            both,
            "KMin_ArgKMin M={m} K={kk}"
        );
    }
}

/// Axis 1 (one row per j, reducing over i) equals axis 0 with the roles of x and y swapped,
/// and the axis-1 Sum matches a direct loop.
#[test]
fn axis_one_is_axis_zero_with_roles_swapped() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n, m) = (6, 9);
    let x = random(&mut rng, n * 2, -2.0, 2.0);
    let y = random(&mut rng, m * 2, -2.0, 2.0);
    let w = random(&mut rng, n * 2, 0.1, 2.0); // i-indexed weight
    let reductions = [
        "Sum_Reduction(Exp(-SqDist(x, y)) * w, AXIS)",
        "Max_Reduction(x * y, AXIS)",
        "Min_ArgMin_Reduction(x - y, AXIS)",
        "ArgMax_Reduction(x * y, AXIS)",
        "LogSumExp_Reduction(-SqDist(x, y), AXIS)",
        "Max_SumShiftExpWeight_Reduction(-SqDist(x, y), w, AXIS)",
        "SumSoftMaxWeight_Reduction(-SqDist(x, y), w, AXIS)",
        "KMin_ArgKMin_Reduction((x - y)**2, 3, AXIS)",
    ];
    let inputs = [
        ("x", arr(n, 2, x.clone())),
        ("y", arr(m, 2, y.clone())),
        ("w", arr(n, 2, w.clone())),
    ];
    for red in reductions {
        let one = format!(
            "kernel t {{\n x = Vi(2)\n y = Vj(2)\n w = Vi(2)\n {}\n}}",
            red.replace("AXIS", "1")
        );
        let zero = format!(
            "kernel t {{\n x = Vj(2)\n y = Vi(2)\n w = Vj(2)\n {}\n}}",
            red.replace("AXIS", "0")
        );
        let a = run(&one, &inputs);
        let b = run(&zero, &inputs);
        assert_eq!(a.shape[0], m, "{red}: one row per j");
        assert_eq!(a, b, "{red}");
    }
    // Direct loop for the Sum: out[j] = sum_i exp(-|x_i - y_j|^2) w_i
    let one = "kernel t {\n x = Vi(2)\n y = Vj(2)\n w = Vi(2)\n Sum_Reduction(Exp(-SqDist(x, y)) * w, 1)\n}";
    let got = f64s(&run(one, &inputs));
    let mut want = vec![0.0; m * 2];
    for j in 0..m {
        for i in 0..n {
            let k = (-sqdist(row(&x, 2, i), row(&y, 2, j))).exp();
            want[j * 2] += k * w[i * 2];
            want[j * 2 + 1] += k * w[i * 2 + 1];
        }
    }
    assert_close(&got, &want, 1e-13, "axis 1 Sum");
}

#[test]
fn float32_in_float32_out() {
    let d = Data::new(8, 4, 6, 3, 1);
    let text = format!("{}Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)\n}}", d.header());
    let to32 = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<f32>>();
    let inputs = [
        ("x", HostArray::from_f32(vec![d.n, 3], to32(&d.x))),
        ("y", HostArray::from_f32(vec![d.m, 3], to32(&d.y))),
        ("b", HostArray::from_f32(vec![d.m], to32(&d.b))),
    ];
    let out = run(&text, &inputs);
    assert_eq!(out.dtype(), DType::F32);
    assert_eq!(out.shape, vec![d.n, 1]);
    // expected from the f32 values, widened
    let (x, y, b): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        to32(&d.x).iter().map(|&t| t as f64).collect(),
        to32(&d.y).iter().map(|&t| t as f64).collect(),
        to32(&d.b).iter().map(|&t| t as f64).collect(),
    );
    let want: Vec<f64> = (0..d.n)
        .map(|i| {
            (0..d.m)
                .map(|j| (-sqdist(row(&x, 3, i), row(&y, 3, j))).exp() * b[j])
                .sum()
        })
        .collect();
    assert_close(&out.to_f64(), &want, 1e-6, "float32");
}

#[test]
fn empty_ranges() {
    let header = "kernel t {\n x = Vi(2)\n y = Vj(2)\n";
    let x = arr(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let no_y = arr(0, 2, vec![]);
    let go = |red: &str, x: &HostArray, y: &HostArray| {
        run(
            &format!("{header}{red}\n}}"),
            &[("x", x.clone()), ("y", y.clone())],
        )
    };
    // M = 0: one row per i of the reduction's identity
    assert_eq!(
        f64s(&go("Sum_Reduction(x * y, 0)", &x, &no_y)),
        vec![0.0; 6]
    );
    assert_eq!(
        f64s(&go("Min_Reduction(x * y, 0)", &x, &no_y)),
        vec![INF; 6]
    );
    assert_eq!(
        f64s(&go("Max_Reduction(x * y, 0)", &x, &no_y)),
        vec![-INF; 6]
    );
    assert_eq!(
        f64s(&go("ArgMin_Reduction(x * y, 0)", &x, &no_y)),
        vec![0.0; 6]
    );
    assert_eq!(
        f64s(&go("KMin_ArgKMin_Reduction(x * y, 2, 0)", &x, &no_y)),
        [INF, INF, INF, INF, 0.0, 0.0, 0.0, 0.0].repeat(3)
    );
    assert_eq!(
        f64s(&go("LogSumExp_Reduction(SqDist(x, y), 0)", &x, &no_y)),
        vec![-INF; 3]
    );
    // N = 0: no rows
    let no_x = arr(0, 2, vec![]);
    let y = arr(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
    let out = go("Sum_Reduction(x * y, 0)", &no_x, &y);
    assert_eq!(out.shape, vec![0, 2]);
    assert!(out.is_empty());
    // ... and axis 1 over N = 0 is empty sums
    assert_eq!(
        f64s(&go("Sum_Reduction(x * y, 1)", &no_x, &y)),
        vec![0.0; 4]
    );
}

#[test]
fn nan_propagates_through_sum() {
    let text = "kernel t {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x * y, 0)\n}";
    let out = f64s(&run(
        text,
        &[
            ("x", arr(3, 1, vec![1.0, NAN, 2.0])),
            ("y", arr(2, 1, vec![1.0, 2.0])),
        ],
    ));
    assert_eq!(out[0], 3.0);
    assert!(out[1].is_nan());
    assert_eq!(out[2], 6.0);
    let out = f64s(&run(
        text,
        &[
            ("x", arr(2, 1, vec![1.0, 2.0])),
            ("y", arr(2, 1, vec![NAN, 2.0])),
        ],
    ));
    assert!(out.iter().all(|v| v.is_nan()));
}

#[test]
fn parameter_shapes_one_by_d_and_d() {
    let text =
        "kernel t {\n x = Vi(3)\n y = Vj(3)\n p = Pm(3)\n Sum_Reduction(SqDist(x * p, y), 0)\n}";
    let x = arr(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
    let y = arr(2, 3, vec![0.0, 1.0, 0.0, 2.0, 2.0, 2.0]);
    let p = [2.0, -1.0, 0.5];
    let flat = run(
        text,
        &[
            ("x", x.clone()),
            ("y", y.clone()),
            ("p", HostArray::from_f64(vec![3], p.to_vec())),
        ],
    );
    let row = run(
        text,
        &[
            ("x", x),
            ("y", y),
            ("p", HostArray::from_f64(vec![1, 3], p.to_vec())),
        ],
    );
    assert_eq!(flat, row);
    // x_0 * p = (2, -2, 1.5): |.-(0,1,0)|^2 = 4+9+2.25 = 15.25; |.-(2,2,2)|^2 = 0+16+0.25 = 16.25
    // x_1 * p = (-2, 0, 0.5): 4+1+0.25 = 5.25; 16+4+2.25 = 22.25
    assert_eq!(f64s(&flat), vec![31.5, 27.5]);
}

// ---------------------------------------------------------------------------------------------
// 4. Memory stays O(N + M)
// ---------------------------------------------------------------------------------------------

/// M = 1e6 points, N x M = 1e8 pairs: materialising the matrix would take 800 MB; the
/// interpreter streams.
#[test]
fn large_reduction_streams() {
    let (n, m) = (100usize, 1_000_000usize);
    let mut rng = StdRng::seed_from_u64(11);
    let x = random(&mut rng, n, -1.0, 1.0);
    let y = random(&mut rng, m, -1.0, 1.0);
    let b = random(&mut rng, m, 0.0, 1.0);
    let text = "kernel t {\n x = Vi(1)\n y = Vj(1)\n b = Vj(1)\n Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)\n}";
    let out = f64s(&run(
        text,
        &[
            ("x", HostArray::from_f64(vec![n], x.clone())),
            ("y", HostArray::from_f64(vec![m], y.clone())),
            ("b", HostArray::from_f64(vec![m], b.clone())),
        ],
    ));
    assert_eq!(out.len(), n);
    // Each term is in (exp(-4), 1] * b_j, so the sums are plausible...
    let total_b: f64 = b.iter().sum();
    for &v in &out {
        assert!(v > (-4f64).exp() * total_b && v <= total_b, "{v}");
    }
    // ... and a few rows match a direct loop.
    for i in [0, 1, n / 2, n - 1] {
        let want: f64 = (0..m)
            .map(|j| (-(x[i] - y[j]) * (x[i] - y[j])).exp() * b[j])
            .sum();
        assert!(close(out[i], want, 1e-11), "row {i}: {} vs {want}", out[i]);
    }
}
