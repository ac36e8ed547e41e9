//! THE operator table: every name a `.kf` formula may call, what its arguments are (formulas
//! or integer parameters) and the operator it builds. The checker, the diagnostics ("did you
//! mean", signatures) and the lang-spec tests all read this one list.

use crate::formula::{Op, TensorDotSpec};

/// One argument slot of an operator call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A formula operand.
    Formula,
    /// A variable operand (`Grad`/`Diff`'s second argument).
    Variable,
    /// An integer literal (possibly negative).
    Int,
    /// A list of non-negative integers, `[2, 3]`.
    IntList,
    /// An optional trailing integer list.
    OptIntList,
}

/// A callable name.
pub struct OperatorEntry {
    pub name: &'static str,
    pub params: &'static [Param],
    /// How the call is written, for messages: `Elem(f, m)`.
    pub signature: &'static str,
}

impl OperatorEntry {
    pub fn min_args(&self) -> usize {
        self.params
            .iter()
            .filter(|p| **p != Param::OptIntList)
            .count()
    }

    pub fn max_args(&self) -> usize {
        self.params.len()
    }
}

use Param::{Formula as F, Int as I, IntList as L, OptIntList as OL, Variable as V};

macro_rules! entry {
    ($name:literal, [$($p:expr),*], $sig:literal) => {
        OperatorEntry { name: $name, params: &[$($p),*], signature: $sig }
    };
}

pub static OPERATORS: &[OperatorEntry] = &[
    // Element-wise math
    entry!("Minus", [F], "Minus(f)"),
    entry!("Exp", [F], "Exp(f)"),
    entry!("Log", [F], "Log(f)"),
    entry!("Sqrt", [F], "Sqrt(f)"),
    entry!("Rsqrt", [F], "Rsqrt(f)"),
    entry!("Square", [F], "Square(f)"),
    entry!("Inv", [F], "Inv(f)"),
    entry!("Abs", [F], "Abs(f)"),
    entry!("Sign", [F], "Sign(f)"),
    entry!("Step", [F], "Step(f)"),
    entry!("ReLU", [F], "ReLU(f)"),
    entry!("Sin", [F], "Sin(f)"),
    entry!("Cos", [F], "Cos(f)"),
    entry!("Asin", [F], "Asin(f)"),
    entry!("Acos", [F], "Acos(f)"),
    entry!("Atan", [F], "Atan(f)"),
    entry!("Floor", [F], "Floor(f)"),
    entry!("XLogX", [F], "XLogX(f)"),
    entry!("SinXDivX", [F], "SinXDivX(f)"),
    entry!("Round", [F, I], "Round(f, d)"),
    entry!("Pow", [F, I], "Pow(f, m)"),
    entry!("ClampInt", [F, I, I], "ClampInt(f, a, b)"),
    entry!("Add", [F, F], "Add(f, g)"),
    entry!("Subtract", [F, F], "Subtract(f, g)"),
    entry!("Mult", [F, F], "Mult(f, g)"),
    entry!("Divide", [F, F], "Divide(f, g)"),
    entry!("Powf", [F, F], "Powf(f, g)"),
    entry!("Atan2", [F, F], "Atan2(y, x)"),
    entry!("Equal", [F, F], "Equal(f, g)"),
    entry!("NotEqual", [F, F], "NotEqual(f, g)"),
    entry!("LessThan", [F, F], "LessThan(f, g)"),
    entry!("LessOrEqual", [F, F], "LessOrEqual(f, g)"),
    entry!("Clamp", [F, F, F], "Clamp(f, a, b)"),
    entry!("IfElse", [F, F, F], "IfElse(f, a, b)"),
    entry!("Mod", [F, F, F], "Mod(x, n, d)"),
    // Vector operators
    entry!("Sum", [F], "Sum(f)"),
    entry!("SumT", [F, I], "SumT(f, n)"),
    entry!("Max", [F], "Max(f)"),
    entry!("Min", [F], "Min(f)"),
    entry!("ArgMax", [F], "ArgMax(f)"),
    entry!("ArgMin", [F], "ArgMin(f)"),
    entry!("SqNorm2", [F], "SqNorm2(f)"),
    entry!("Norm2", [F], "Norm2(f)"),
    entry!("Normalize", [F], "Normalize(f)"),
    entry!("SqDist", [F, F], "SqDist(f, g)"),
    entry!("Scalprod", [F, F], "Scalprod(f, g)"),
    entry!("Elem", [F, I], "Elem(f, m)"),
    entry!("ElemT", [F, I, I], "ElemT(f, n, m)"),
    entry!("Extract", [F, I, I], "Extract(f, start, len)"),
    entry!("ExtractT", [F, I, I], "ExtractT(f, start, dim)"),
    entry!("Concat", [F, F], "Concat(f, g)"),
    entry!("OneHot", [F, I], "OneHot(f, dim)"),
    entry!("MatVecMult", [F, F], "MatVecMult(A, b)"),
    entry!("VecMatMult", [F, F], "VecMatMult(b, A)"),
    entry!("TensorProd", [F, F], "TensorProd(f, g)"),
    entry!(
        "TensorDot",
        [F, F, L, L, L, L, OL],
        "TensorDot(f, g, dimsf, dimsg, contf, contg[, permute])"
    ),
    entry!("Kron", [F, F, L, L], "Kron(f, g, dimsf, dimsg)"),
    entry!("WeightedSqNorm", [F, F], "WeightedSqNorm(s, f)"),
    entry!("WeightedSqDist", [F, F, F], "WeightedSqDist(s, f, g)"),
    entry!("SqNormDiag", [F, F], "SqNormDiag(s, f)"),
    entry!("SqNormIso", [F, F], "SqNormIso(s, f)"),
    entry!("SymSqNorm", [F, F], "SymSqNorm(S, f)"),
    // Constants
    entry!("IntCst", [I], "IntCst(n)"),
    entry!("RatCst", [I, I], "RatCst(p, q)"),
    entry!("IntInv", [I], "IntInv(n)"),
    entry!("Zero", [I], "Zero(dim)"),
    // Calculus
    entry!("Grad", [F, V, F], "Grad(f, v, e)"),
    entry!("Diff", [F, V, F], "Diff(f, v, u)"),
];

/// Inline positional variables: `Vi(pos, dim)`, and in declarations also `Vi(dim)`; KeOps's
/// raw `Var(pos, dim, cat)` with cat 0 (i), 1 (j) or 2 (parameter).
pub const VARIABLE_CONSTRUCTORS: [&str; 4] = ["Vi", "Vj", "Pm", "Var"];

pub fn lookup(name: &str) -> Option<&'static OperatorEntry> {
    OPERATORS.iter().find(|e| e.name == name)
}

/// The arguments of a call once sorted by kind: integer parameters and lists in order.
pub struct Params {
    pub ints: Vec<i64>,
    pub lists: Vec<Vec<usize>>,
}

/// The operator an entry builds from its parameters, or why the parameters are invalid.
/// `IntCst`, `RatCst`, `IntInv` and `Zero` are leaves handled by the checker.
pub fn build_op(name: &str, p: &Params) -> Result<Op, String> {
    let nonneg = |k: usize, what: &str| -> Result<usize, String> {
        usize::try_from(p.ints[k]).map_err(|_| format!("{what} must be a non-negative integer"))
    };
    Ok(match name {
        "Minus" => Op::Neg,
        "Exp" => Op::Exp,
        "Log" => Op::Log,
        "Sqrt" => Op::Sqrt,
        "Rsqrt" => Op::Rsqrt,
        "Square" => Op::Square,
        "Inv" => Op::Inv,
        "Abs" => Op::Abs,
        "Sign" => Op::Sign,
        "Step" => Op::Step,
        "ReLU" => Op::ReLU,
        "Sin" => Op::Sin,
        "Cos" => Op::Cos,
        "Asin" => Op::Asin,
        "Acos" => Op::Acos,
        "Atan" => Op::Atan,
        "Floor" => Op::Floor,
        "XLogX" => Op::XLogX,
        "SinXDivX" => Op::SinXDivX,
        "Round" => Op::Round(
            i32::try_from(p.ints[0])
                .ok()
                .filter(|d| d.abs() <= 300)
                .ok_or("the number of decimals must be between -300 and 300")?,
        ),
        "Pow" => Op::Pow(i32::try_from(p.ints[0]).map_err(|_| "the exponent is too large")?),
        "ClampInt" => {
            if p.ints[0] > p.ints[1] {
                return Err("ClampInt(f, a, b) needs a <= b".into());
            }
            Op::ClampInt(p.ints[0], p.ints[1])
        }
        "Add" => Op::Add,
        "Subtract" => Op::Sub,
        "Mult" => Op::Mul,
        "Divide" => Op::Div,
        "Powf" => Op::Powf,
        "Atan2" => Op::Atan2,
        "Equal" => Op::Equal,
        "NotEqual" => Op::NotEqual,
        "LessThan" => Op::LessThan,
        "LessOrEqual" => Op::LessOrEqual,
        "Clamp" => Op::Clamp,
        "IfElse" => Op::IfElse,
        "Mod" => Op::Mod,
        "Sum" => Op::Sum,
        "SumT" => Op::SumT(nonneg(0, "the dimension")?),
        "Max" => Op::Max,
        "Min" => Op::Min,
        "ArgMax" => Op::ArgMax,
        "ArgMin" => Op::ArgMin,
        "SqNorm2" => Op::SqNorm2,
        "Norm2" => Op::Norm2,
        "Normalize" => Op::Normalize,
        "SqDist" => Op::SqDist,
        "Scalprod" => Op::Scalprod,
        "Elem" => Op::Elem(nonneg(0, "the index")?),
        "ElemT" => Op::ElemT(nonneg(0, "the dimension")?, nonneg(1, "the index")?),
        "Extract" => Op::Extract(nonneg(0, "the start")?, nonneg(1, "the length")?),
        "ExtractT" => Op::ExtractT(nonneg(0, "the start")?, nonneg(1, "the dimension")?),
        "Concat" => Op::Concat,
        "OneHot" => Op::OneHot(nonneg(0, "the dimension")?),
        "MatVecMult" => Op::MatVecMult,
        "VecMatMult" => Op::VecMatMult,
        "TensorProd" => Op::TensorProd,
        "TensorDot" => Op::TensorDot(Box::new(TensorDotSpec {
            dims_f: p.lists[0].clone(),
            dims_g: p.lists[1].clone(),
            contract_f: p.lists[2].clone(),
            contract_g: p.lists[3].clone(),
            permute: p.lists.get(4).cloned(),
        })),
        // The Kronecker product: an outer product whose axes interleave, f's axis k going to
        // output axis 2k and g's to 2k + 1 (numpy.kron's layout).
        "Kron" => {
            let (dims_f, dims_g) = (p.lists[0].clone(), p.lists[1].clone());
            if dims_f.len() != dims_g.len() {
                return Err("`Kron` needs dimsf and dimsg with the same number of axes".into());
            }
            let n = dims_f.len();
            let permute = (0..n)
                .map(|k| 2 * k)
                .chain((0..n).map(|k| 2 * k + 1))
                .collect();
            Op::TensorDot(Box::new(TensorDotSpec {
                dims_f,
                dims_g,
                contract_f: Vec::new(),
                contract_g: Vec::new(),
                permute: Some(permute),
            }))
        }
        "WeightedSqNorm" => Op::WeightedSqNorm,
        "WeightedSqDist" => Op::WeightedSqDist,
        "SqNormDiag" => Op::SqNormDiag,
        "SqNormIso" => Op::SqNormIso,
        "SymSqNorm" => Op::SymSqNorm,
        "Grad" => Op::Grad,
        "Diff" => Op::Diff,
        other => unreachable!("operator table entry `{other}` has no builder"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table entry builds an operator whose arity matches its formula parameters.
    #[test]
    fn every_entry_builds_with_matching_arity() {
        for entry in OPERATORS {
            if matches!(entry.name, "IntCst" | "RatCst" | "IntInv" | "Zero") {
                continue;
            }
            let ints = entry.params.iter().filter(|p| **p == Param::Int).count();
            let lists = entry
                .params
                .iter()
                .filter(|p| **p == Param::IntList)
                .count();
            let params = Params {
                ints: vec![1, 2][..ints.min(2)].to_vec(),
                lists: vec![vec![1]; lists],
            };
            let op = build_op(entry.name, &params).expect(entry.name);
            let formulas = entry
                .params
                .iter()
                .filter(|p| matches!(p, Param::Formula | Param::Variable))
                .count();
            assert_eq!(op.arity(), formulas, "{}", entry.name);
        }
    }
}
