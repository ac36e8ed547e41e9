//! Operators as s-expression atoms, so that rewrite rules and tests read like lang-spec:
//! `(exp (neg (sqdist x y)))`. Integer parameters follow a colon (`pow:3`, `extract:0:2`,
//! `zero:3`, `var:0`); integer literals are `int:2`; any other number is a real constant.

use super::{Node, Op};
use egg::{FromOp, Id};
use ordered_float::OrderedFloat;
use std::fmt;

const PLAIN: &[(&str, Op)] = &[
    ("exp", Op::Exp),
    ("log", Op::Log),
    ("sqrt", Op::Sqrt),
    ("rsqrt", Op::Rsqrt),
    ("square", Op::Square),
    ("inv", Op::Inv),
    ("abs", Op::Abs),
    ("sign", Op::Sign),
    ("step", Op::Step),
    ("relu", Op::ReLU),
    ("sin", Op::Sin),
    ("cos", Op::Cos),
    ("asin", Op::Asin),
    ("acos", Op::Acos),
    ("atan", Op::Atan),
    ("floor", Op::Floor),
    ("xlogx", Op::XLogX),
    ("sinxdivx", Op::SinXDivX),
    ("+", Op::Add),
    ("*", Op::Mul),
    ("/", Op::Div),
    ("powf", Op::Powf),
    ("atan2", Op::Atan2),
    ("eq", Op::Equal),
    ("ne", Op::NotEqual),
    ("lt", Op::LessThan),
    ("le", Op::LessOrEqual),
    ("clamp", Op::Clamp),
    ("ifelse", Op::IfElse),
    ("mod", Op::Mod),
    ("sum", Op::Sum),
    ("max", Op::Max),
    ("min", Op::Min),
    ("argmax", Op::ArgMax),
    ("argmin", Op::ArgMin),
    ("sqnorm2", Op::SqNorm2),
    ("norm2", Op::Norm2),
    ("normalize", Op::Normalize),
    ("sqdist", Op::SqDist),
    ("scalprod", Op::Scalprod),
    ("concat", Op::Concat),
    ("matvecmult", Op::MatVecMult),
    ("vecmatmult", Op::VecMatMult),
    ("tensorprod", Op::TensorProd),
    ("weightedsqnorm", Op::WeightedSqNorm),
    ("weightedsqdist", Op::WeightedSqDist),
    ("sqnormdiag", Op::SqNormDiag),
    ("sqnormiso", Op::SqNormIso),
    ("symsqnorm", Op::SymSqNorm),
    ("grad", Op::Grad),
    ("diff", Op::Diff),
];

impl Op {
    /// The s-expression atom of this operator.
    pub fn sexpr(&self) -> String {
        match self {
            Op::Var(k) => format!("var:{k}"),
            Op::Const(c) => super::op::format_real(c.0),
            Op::IntCst(k) => format!("int:{k}"),
            Op::Zero(d) => format!("zero:{d}"),
            Op::Neg | Op::Sub => "-".into(),
            Op::Round(d) => format!("round:{d}"),
            Op::Pow(m) => format!("pow:{m}"),
            Op::ClampInt(a, b) => format!("clampint:{a}:{b}"),
            Op::SumT(n) => format!("sumt:{n}"),
            Op::Elem(m) => format!("elem:{m}"),
            Op::ElemT(n, m) => format!("elemt:{n}:{m}"),
            Op::Extract(s, l) => format!("extract:{s}:{l}"),
            Op::ExtractT(s, d) => format!("extractt:{s}:{d}"),
            Op::OneHot(d) => format!("onehot:{d}"),
            Op::TensorDot(spec) => {
                let list = |v: &[usize]| {
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let mut s = format!(
                    "tensordot:{}:{}:{}:{}",
                    list(&spec.dims_f),
                    list(&spec.dims_g),
                    list(&spec.contract_f),
                    list(&spec.contract_g)
                );
                if let Some(p) = &spec.permute {
                    s.push(':');
                    s.push_str(&list(p));
                }
                s
            }
            other => PLAIN
                .iter()
                .find(|(_, op)| op == other)
                .map(|(name, _)| name.to_string())
                .unwrap_or_else(|| other.name().to_lowercase()),
        }
    }

    /// Parses an atom with `arity` children; `None` if it names no operator of that arity.
    pub fn from_sexpr(atom: &str, arity: usize) -> Option<Op> {
        let mut parts = atom.split(':');
        let head = parts.next()?;
        let ints: Vec<&str> = parts.collect();
        let int = |k: usize| -> Option<i64> { ints.get(k)?.parse().ok() };
        let uint = |k: usize| -> Option<usize> { ints.get(k)?.parse().ok() };
        let op = match (head, ints.len()) {
            ("-", 0) if arity == 1 => Op::Neg,
            ("-", 0) => Op::Sub,
            ("var", 1) => Op::Var(u32::try_from(uint(0)?).ok()?),
            ("int", 1) => Op::IntCst(int(0)?),
            ("zero", 1) => Op::Zero(uint(0)?),
            ("round", 1) => Op::Round(i32::try_from(int(0)?).ok()?),
            ("pow", 1) => Op::Pow(i32::try_from(int(0)?).ok()?),
            ("clampint", 2) => Op::ClampInt(int(0)?, int(1)?),
            ("sumt", 1) => Op::SumT(uint(0)?),
            ("elem", 1) => Op::Elem(uint(0)?),
            ("elemt", 2) => Op::ElemT(uint(0)?, uint(1)?),
            ("extract", 2) => Op::Extract(uint(0)?, uint(1)?),
            ("extractt", 2) => Op::ExtractT(uint(0)?, uint(1)?),
            ("onehot", 1) => Op::OneHot(uint(0)?),
            ("tensordot", 4 | 5) => {
                let list = |k: usize| -> Option<Vec<usize>> {
                    let text = ints.get(k)?;
                    if text.is_empty() {
                        return Some(Vec::new());
                    }
                    text.split(',').map(|x| x.parse().ok()).collect()
                };
                Op::TensorDot(Box::new(super::TensorDotSpec {
                    dims_f: list(0)?,
                    dims_g: list(1)?,
                    contract_f: list(2)?,
                    contract_g: list(3)?,
                    permute: if ints.len() == 5 {
                        Some(list(4)?)
                    } else {
                        None
                    },
                }))
            }
            (name, 0) => match PLAIN.iter().find(|(n, _)| *n == name) {
                Some((_, op)) => op.clone(),
                None => Op::Const(OrderedFloat(name.parse::<f64>().ok()?)),
            },
            _ => return None,
        };
        (op.arity() == arity).then_some(op)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op.sexpr())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAtom(pub String);

impl FromOp for Node {
    type Error = UnknownAtom;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        match Op::from_sexpr(op, children.len()) {
            Some(op) => Ok(Node::new(op, children)),
            None => Err(UnknownAtom(format!(
                "{op} with {} operands",
                children.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_round_trip() {
        let ops = [
            (Op::Neg, 1),
            (Op::Sub, 2),
            (Op::Pow(-3), 1),
            (Op::Extract(1, 2), 1),
            (Op::Zero(4), 0),
            (Op::Var(2), 0),
            (Op::IntCst(-2), 0),
            (Op::Const(OrderedFloat(0.5)), 0),
            (Op::SqDist, 2),
            (Op::ClampInt(-1, 3), 1),
            (Op::Grad, 3),
        ];
        for (op, arity) in ops {
            assert_eq!(
                Op::from_sexpr(&op.sexpr(), arity),
                Some(op.clone()),
                "{}",
                op.sexpr()
            );
        }
        assert_eq!(Op::from_sexpr("exp", 2), None);
        assert_eq!(Op::from_sexpr("banana", 0), None);
    }
}
