//! Well-typed kernels from bytes: a formula over every entry of the operator table
//! (`keopsc::check::operators::OPERATORS`, reached as `reaches_every_operator` in
//! `tests/all/fuzz.rs` checks) under every reduction, with arguments wrapped into each
//! operator's domain (as `compiler/tests/all/simplify.rs` does) so that values stay finite.

use super::Tape;
use keops_runtime::{ReductionArgs, ReductionKind};

/// The variables of every generated kernel (as in `compiler/tests/all/cpu.rs`).
pub const DECLS: [(&str, &str); 7] = [
    ("x", "Vi(3)"),
    ("y", "Vj(3)"),
    ("u", "Vi(1)"),
    ("v", "Vj(1)"),
    ("s", "Pm(1)"),
    ("p", "Pm(3)"),
    ("a", "Pm(9)"),
];

/// A generated kernel and the problem it runs on.
#[derive(Clone, Debug)]
pub struct Case {
    /// The reduced formula `F`.
    pub formula: String,
    /// The whole last line, `Kind_Reduction(F, ..., axis)`.
    pub reduction: String,
    /// The last line with `Abs` around `F` and the weight: a bound of the summed magnitudes
    /// for the Sum family (`None` where the result itself is the scale).
    pub scale_reduction: Option<String>,
    pub n: usize,
    pub m: usize,
    /// Seed of the input values.
    pub seed: u64,
}

impl Case {
    pub fn kernel_text(&self) -> String {
        kernel_text(&self.reduction)
    }
}

pub fn kernel_text(reduction: &str) -> String {
    let mut text = String::from("kernel t {\n");
    for (name, decl) in DECLS {
        text.push_str(&format!("    {name} = {decl}\n"));
    }
    text.push_str(&format!("    {reduction}\n}}\n"));
    text
}

/// Templates of element-wise operators: `$d` is an operand of the result's dimension, `$b` one
/// of the result's dimension or 1 (broadcast), `$o` an offset keeping a discontinuity away from
/// an operand that is identically zero, `$r` a rounding digit count, `$p` a small power.
const ELEMENTWISE: &[&str] = &[
    "(-$d)",
    "Minus($d)",
    "Exp(Sin($d))",
    "Exp(-Square($d))",
    "Log(1 + Square($d))",
    "Log(2 + Sin($d))",
    "Sqrt(1 + Square($d))",
    "Rsqrt(1 + Square($d))",
    "((1 + Square($d)) ** -0.5)",
    "Square($d)",
    "($d ** 2)",
    "($d ^ 3)",
    "Inv(2 + Sin($d))",
    "Abs($d + $o)",
    "Sign($d + $o)",
    "Step($d + $o)",
    "ReLU($d + $o)",
    "Sin($d)",
    "Cos($d)",
    "Asin(0.9 * Sin($d))",
    "Acos(0.9 * Cos($d))",
    "Atan($d)",
    "Floor($d + $o)",
    "XLogX(0.5 + Square($d))",
    "SinXDivX($d + $o)",
    "Round($d + $o, $r)",
    "Pow($d, $p)",
    "Pow(1 + Square($d), -$p)",
    "ClampInt($d, -1, 1)",
    "($d + $b)",
    "($b - $d)",
    "($d * $b)",
    "($d / (2 + Sin($b)))",
    "Add($d, $b)",
    "Subtract($b, $d)",
    "Mult($d, $b)",
    "Divide($d, 1 + Square($b))",
    "Powf(1 + Square($d), Sin($b))",
    "Atan2($d + $o, $b)",
    "Equal(Floor($d + $o), Floor($b + $o))",
    "NotEqual(Floor($b + $o), Floor($d + $o))",
    "LessThan($d + $o, $b)",
    "LessOrEqual($b + $o, $d)",
    "Clamp($d + $o, $b, $b + 1)",
    "IfElse($d + $o, $b, $b)",
    "Mod($d, 2 + Sin($b), $b + $o)",
];

/// Vector operators of a scalar result: `$1`, `$3`, `$9` are operands of that dimension, `$w`
/// one of dimension 1, 3 or 9 (a weight), `$k` an index below 3.
const TO_SCALAR: &[&str] = &[
    "Sum($3)",
    "Sum($9)",
    "Sum(Concat($1, $3))",
    "Max($3)",
    "Min($3)",
    "ArgMax($3)",
    "ArgMin($3)",
    "SqNorm2($3)",
    "Norm2($3)",
    "SqDist($3, $3)",
    "Scalprod($3, $3)",
    "|$3|$3|",
    "($3 | $3)",
    "Elem($3, $k)",
    "WeightedSqNorm($w, $3)",
    "WeightedSqDist($w, $3, $3)",
    "SqNormDiag($3, $3)",
    "SqNormIso($1, $3)",
    "SymSqNorm($9, $3)",
    "TensorDot($3, $3, [3], [3], [0], [0])",
];

/// Vector operators of a 3-vector result; `$e` is 0, 3 or 6.
const TO_3: &[&str] = &[
    "SumT($1, 3)",
    "ElemT($1, 3, $k)",
    "Extract($9, $e, 3)",
    "Extract(Concat($3, $3), $k, 3)",
    "ExtractT($1, $k, 3)",
    "Concat($1, Concat($1, $1))",
    // Normalize jumps at 0 (Normalize(0) = 0): an offset, as for Sign, keeps a sum of
    // values that cancel exactly, but are rounded differently by each backend (1/sqrt(3) from
    // two Normalizes), away from it.
    "Normalize($3 + $o)",
    "Normalize($3 + $1 + $o)",
    "OneHot(1 + 1.5 * Sin($1), 3)",
    "MatVecMult($9, $3)",
    "MatVecMult($3, $1)",
    "VecMatMult($3, $9)",
    "VecMatMult($1, $3)",
    "TensorDot($9, $3, [3, 3], [3], [1], [0])",
    "TensorDot($3, $9, [3], [3, 3], [0], [1])",
];

/// Vector operators of a 9-vector result.
const TO_9: &[&str] = &[
    "TensorProd($3, $3)",
    "ExtractT($3, $e, 9)",
    "Concat($3, Concat($3, $3))",
    "TensorDot($9, $9, [3, 3], [3, 3], [1], [0])",
    "TensorDot($9, $9, [3, 3], [3, 3], [0], [1], [1, 0])",
    "TensorDot($3, $3, [3], [3], [], [])",
    "MatVecMult($9, $1)",
    "SumT($1, 9)",
    "Kron($3, $3, [3], [3])",
];

const OFFSETS: [&str; 4] = ["0.3137", "0.4142", "0.2718", "0.1732"];

/// Builds formulas from a tape.
pub struct Generator<'t, 'a> {
    tape: &'t mut Tape<'a>,
}

impl<'t, 'a> Generator<'t, 'a> {
    pub fn new(tape: &'t mut Tape<'a>) -> Generator<'t, 'a> {
        Generator { tape }
    }

    fn leaf(&mut self, d: usize) -> String {
        let leaves: &[&str] = match d {
            1 => &[
                "u",
                "v",
                "s",
                "0.5",
                "2",
                "IntCst(3)",
                "RatCst(1, 3)",
                "RatCst(-2, 7)",
                "IntInv(-4)",
                "(-1)",
                "Zero(1)",
            ],
            3 => &["x", "y", "p", "Zero(3)"],
            _ => &["a", "Zero(9)"],
        };
        self.tape.choose(leaves).to_string()
    }

    /// A formula of dimension `d` (1, 3 or 9) at most `depth` operators deep.
    pub fn expr(&mut self, d: usize, depth: u32) -> String {
        if depth == 0 || self.tape.pick(6) == 0 {
            return self.leaf(d);
        }
        let vector: &[&str] = match d {
            1 => TO_SCALAR,
            3 => TO_3,
            _ => TO_9,
        };
        match self.tape.pick(12) {
            0..=6 => {
                let t = self.tape.choose(ELEMENTWISE);
                self.fill(t, d, depth - 1)
            }
            7..=10 => {
                let t = self.tape.choose(vector);
                self.fill(t, d, depth - 1)
            }
            _ => self.calculus(d, depth - 1),
        }
    }

    /// `template` with its placeholders replaced.
    fn fill(&mut self, template: &str, d: usize, depth: u32) -> String {
        let mut out = String::new();
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            let part = match chars.next() {
                Some('d') => self.expr(d, depth),
                Some('b') => {
                    let db = if self.tape.pick(3) == 0 { 1 } else { d };
                    self.expr(db, depth)
                }
                Some('1') => self.expr(1, depth),
                Some('3') => self.expr(3, depth),
                Some('9') => self.expr(9, depth),
                Some('w') => {
                    let dw = *self.tape.choose(&[1, 3, 9]);
                    self.expr(dw, depth)
                }
                Some('o') => self.tape.choose(&OFFSETS).to_string(),
                Some('r') => self.tape.choose(&["0", "1", "-1", "2"]).to_string(),
                Some('p') => (1 + self.tape.pick(3)).to_string(),
                Some('k') => self.tape.pick(3).to_string(),
                Some('e') => (3 * self.tape.pick(3)).to_string(),
                other => panic!("template `{template}`: unknown placeholder {other:?}"),
            };
            out.push_str(&part);
        }
        out
    }

    /// `Grad(f, v, e)` (v's dimension) or `Diff(f, v, u)` (f's dimension), with small bodies;
    /// the direction is never constant (a constant one makes differentiation saturate
    /// slowly, see `compiler/tests/all/simplify.rs`).
    fn calculus(&mut self, d: usize, depth: u32) -> String {
        let body = depth.min(2);
        let scalar_var = *self.tape.choose(&["u", "v", "s"]);
        if self.tape.pick(2) == 0 {
            let v = match d {
                1 => *self.tape.choose(&["u", "v", "s"]),
                3 => *self.tape.choose(&["x", "y", "p"]),
                _ => "a",
            };
            let df = *self.tape.choose(&[1, 3]);
            let de = *self.tape.choose(&[df, 1]);
            let f = self.expr(df, body);
            let e = self.expr(de, body.min(1));
            format!("Grad({f}, {v}, {e} * {scalar_var})")
        } else {
            let (v, dv) = *self.tape.choose(&[
                ("x", 3),
                ("y", 3),
                ("u", 1),
                ("v", 1),
                ("s", 1),
                ("p", 3),
                ("a", 9),
            ]);
            let du = *self.tape.choose(&[dv, 1]);
            let f = self.expr(d, body);
            let u = self.expr(du, body.min(1));
            format!("Diff({f}, {v}, {u} * {scalar_var})")
        }
    }
}

/// The K of K-reductions: small ones, and one above the unrolled size (16).
const KS: [usize; 6] = [1, 2, 3, 4, 5, 17];

/// A case from the fuzzer's bytes.
pub fn case(bytes: &[u8]) -> Case {
    let mut tape = Tape::new(bytes);
    let kind = *tape.choose(&ReductionKind::ALL);
    let axis = tape.pick(2);
    // Sizes across a vector's lanes (up to 16) and, now and then, several inner tiles.
    let n = 1 + tape.pick(40);
    let m = if tape.pick(4) == 0 {
        1 + tape.pick(1200)
    } else {
        1 + tape.pick(70)
    };
    let seed = tape.byte() as u64;
    let scalar_only = matches!(
        kind,
        ReductionKind::LogSumExp
            | ReductionKind::LogSumExpWeight
            | ReductionKind::MaxSumShiftExp
            | ReductionKind::MaxSumShiftExpWeight
            | ReductionKind::SumSoftMaxWeight
    );
    let fdim = if scalar_only {
        1
    } else if kind == ReductionKind::Sum {
        *tape.choose(&[1, 3, 9])
    } else {
        *tape.choose(&[1, 3])
    };
    let mut g = Generator::new(&mut tape);
    let formula = g.expr(fdim, 4);
    let (reduction, scale_reduction) = match kind.args() {
        ReductionArgs::Formula => (
            format!("{kind}({formula}, {axis})"),
            (kind == ReductionKind::Sum).then(|| format!("{kind}(Abs({formula}), {axis})")),
        ),
        ReductionArgs::FormulaK => {
            let k = *g.tape.choose(&KS);
            (format!("{kind}({formula}, {k}, {axis})"), None)
        }
        ReductionArgs::FormulaWeight => {
            let wdim = *g.tape.choose(&[1, 3]);
            let weight = g.expr(wdim, 2);
            let weight = if kind == ReductionKind::LogSumExpWeight {
                // Its result is a logarithm of the weighted sum: keep the weights positive.
                format!("Exp(Sin({weight}))")
            } else {
                weight
            };
            (
                format!("{kind}({formula}, {weight}, {axis})"),
                (kind == ReductionKind::SumSoftMaxWeight)
                    .then(|| format!("{kind}({formula}, Abs({weight}), {axis})")),
            )
        }
    };
    Case {
        formula,
        reduction,
        scale_reduction,
        n,
        m,
        seed,
    }
}
