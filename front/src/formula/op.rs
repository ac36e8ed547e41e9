//! The operators of the formula IR. Each variant carries a KeOps name and its integer
//! parameters (never its operands: those are the node's children). Arity and dimension rules
//! live here, next to the variants, so that the checker, the optimiser and the interpreter all
//! read one definition.

use ordered_float::OrderedFloat;
use std::fmt;

/// The largest dimension of any value: a variable, an operator's result, a reduction's output
/// or accumulator. Sizes written in the source (dimensions, `K`, `SumT`, `OneHot`, `Zero`
/// lengths) are checked against it before anything is sized by them, and every product or sum
/// of dimensions below it fits in a `usize`. Compiled code unrolls or loops over components,
/// so a formula near this bound is already far past what compiles in reasonable time; the
/// bound exists so that a tiny source cannot ask for gigabytes.
pub const MAX_DIM: usize = 1 << 24;

/// The message for a dimension above [`MAX_DIM`].
pub fn too_large(what: &str, dim: usize) -> String {
    format!("{what} {dim}: more than the largest supported dimension, {MAX_DIM}")
}

/// Shapes and contractions of `TensorDot(f, g, dimsf, dimsg, contf, contg[, permute])`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorDotSpec {
    pub dims_f: Vec<usize>,
    pub dims_g: Vec<usize>,
    pub contract_f: Vec<usize>,
    pub contract_g: Vec<usize>,
    /// Kept axis `k` (f's kept axes, then g's) goes to output axis `permute[k]`.
    pub permute: Option<Vec<usize>>,
}

impl TensorDotSpec {
    pub fn kept_f(&self) -> Vec<usize> {
        (0..self.dims_f.len())
            .filter(|a| !self.contract_f.contains(a))
            .collect()
    }

    pub fn kept_g(&self) -> Vec<usize> {
        (0..self.dims_g.len())
            .filter(|a| !self.contract_g.contains(a))
            .collect()
    }

    /// Output shape before the permutation: f's kept axes then g's kept axes.
    pub fn kept_shape(&self) -> Vec<usize> {
        let mut shape: Vec<usize> = self.kept_f().iter().map(|&a| self.dims_f[a]).collect();
        shape.extend(self.kept_g().iter().map(|&a| self.dims_g[a]));
        shape
    }

    /// Output shape after the permutation.
    pub fn output_shape(&self) -> Vec<usize> {
        let kept = self.kept_shape();
        match &self.permute {
            None => kept,
            Some(p) => {
                let mut out = vec![0; kept.len()];
                for (k, &dst) in p.iter().enumerate() {
                    out[dst] = kept[k];
                }
                out
            }
        }
    }

    /// The output position of each kept axis (f's kept axes, then g's).
    fn kept_positions(&self) -> Vec<usize> {
        let n = self.kept_f().len() + self.kept_g().len();
        match &self.permute {
            Some(p) => p.clone(),
            None => (0..n).collect(),
        }
    }

    /// The vector-Jacobian products of `TensorDot(f, g)`: for a gradient input `e` of the
    /// output's shape, `Grad` with respect to f is `TensorDot(e, g, vjp_f)` and with respect to g
    /// is `TensorDot(e, f, vjp_g)`. Each contracts e's axes that came from the other operand with
    /// that operand's kept axes, and permutes the result back into the operand's axis order.
    pub fn vjp_f(&self) -> TensorDotSpec {
        Self::vjp(self, true)
    }

    pub fn vjp_g(&self) -> TensorDotSpec {
        Self::vjp(self, false)
    }

    fn vjp(&self, wrt_f: bool) -> TensorDotSpec {
        let positions = self.kept_positions();
        let n_kept_f = self.kept_f().len();
        // `mine`: the operand differentiated; `other`: the one contracted with e.
        let (other_dims, my_kept, other_kept, my_contracted, other_contracted, my_pos, other_pos) =
            if wrt_f {
                (
                    &self.dims_g,
                    self.kept_f(),
                    self.kept_g(),
                    &self.contract_f,
                    &self.contract_g,
                    positions[..n_kept_f].to_vec(),
                    positions[n_kept_f..].to_vec(),
                )
            } else {
                (
                    &self.dims_f,
                    self.kept_g(),
                    self.kept_f(),
                    &self.contract_g,
                    &self.contract_f,
                    positions[n_kept_f..].to_vec(),
                    positions[..n_kept_f].to_vec(),
                )
            };
        // Result axes: e's remaining axes (my kept axes, by output position), then the other
        // operand's remaining axes (its contracted axes, in its own axis order).
        let mut mine_by_position: Vec<(usize, usize)> = my_pos
            .iter()
            .copied()
            .zip(my_kept.iter().copied())
            .collect();
        mine_by_position.sort();
        let mut result_axes: Vec<usize> = mine_by_position.iter().map(|&(_, axis)| axis).collect();
        let mut other_remaining: Vec<usize> = other_contracted.clone();
        other_remaining.sort();
        for axis in other_remaining {
            let pair = other_contracted
                .iter()
                .position(|&a| a == axis)
                .expect("a contracted axis");
            result_axes.push(my_contracted[pair]);
        }
        TensorDotSpec {
            dims_f: self.output_shape(),
            dims_g: other_dims.clone(),
            contract_f: other_pos,
            contract_g: other_kept,
            // Result axis r is my axis result_axes[r].
            permute: Some(result_axes),
        }
    }

    /// Checks the spec against the operand dimensions; the message says what is wrong.
    pub fn validate(&self, dim_f: usize, dim_g: usize) -> Result<usize, String> {
        // Saturating: a product past usize (from the source's lists) is no operand's dimension.
        let prod = |v: &[usize]| v.iter().fold(1usize, |a, &b| a.saturating_mul(b));
        if prod(&self.dims_f) != dim_f {
            return Err(format!(
                "dimsf {:?} holds {} numbers but the first operand has dimension {dim_f}",
                self.dims_f,
                prod(&self.dims_f)
            ));
        }
        if prod(&self.dims_g) != dim_g {
            return Err(format!(
                "dimsg {:?} holds {} numbers but the second operand has dimension {dim_g}",
                self.dims_g,
                prod(&self.dims_g)
            ));
        }
        if self.contract_f.len() != self.contract_g.len() {
            return Err("contf and contg must list the same number of axes".into());
        }
        for (&a, &b) in self.contract_f.iter().zip(&self.contract_g) {
            let (Some(&da), Some(&db)) = (self.dims_f.get(a), self.dims_g.get(b)) else {
                return Err(format!(
                    "contracted axis pair ({a}, {b}) is out of range (axes count from 0)"
                ));
            };
            if da != db {
                return Err(format!(
                    "contracted axes {a} of f (size {da}) and {b} of g (size {db}) differ in size"
                ));
            }
        }
        let distinct = |v: &[usize]| {
            let mut s = v.to_vec();
            s.sort();
            s.dedup();
            s.len() == v.len()
        };
        if !distinct(&self.contract_f) || !distinct(&self.contract_g) {
            return Err("an axis is contracted twice".into());
        }
        let kept = self.kept_shape();
        if let Some(p) = &self.permute {
            let mut sorted = p.clone();
            sorted.sort();
            if sorted != (0..kept.len()).collect::<Vec<_>>() {
                return Err(format!(
                    "permute {p:?} is not a permutation of the {} kept axes",
                    kept.len()
                ));
            }
        }
        Ok(kept.iter().product())
    }
}

/// A formula operator. Children are stored in the node, not here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    // Leaves
    /// The kernel's argument with this index.
    Var(u32),
    /// A real literal (dimension 1).
    Const(OrderedFloat<f64>),
    IntCst(i64),
    Zero(usize),

    // Element-wise, one operand
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Square,
    Inv,
    Abs,
    Sign,
    Step,
    ReLU,
    Sin,
    Cos,
    Asin,
    Acos,
    Atan,
    Floor,
    XLogX,
    SinXDivX,
    /// Round to this many decimal places.
    Round(i32),
    Pow(i32),
    ClampInt(i64, i64),

    // Element-wise, two or three operands (a dimension-1 operand broadcasts)
    Add,
    Sub,
    Mul,
    Div,
    Powf,
    Atan2,
    Equal,
    NotEqual,
    LessThan,
    LessOrEqual,
    Clamp,
    IfElse,
    Mod,

    // Vector operators
    Sum,
    /// Broadcast a scalar to this dimension (the adjoint of `Sum`).
    SumT(usize),
    Max,
    Min,
    ArgMax,
    ArgMin,
    SqNorm2,
    Norm2,
    Normalize,
    SqDist,
    Scalprod,
    Elem(usize),
    /// `ElemT(f, n, m)`: dimension n, zero but for `f` at m.
    ElemT(usize, usize),
    /// `Extract(f, start, len)`
    Extract(usize, usize),
    /// `ExtractT(f, start, dim)`: zero-padding, the adjoint of `Extract`.
    ExtractT(usize, usize),
    Concat,
    OneHot(usize),
    MatVecMult,
    VecMatMult,
    TensorProd,
    TensorDot(Box<TensorDotSpec>),
    WeightedSqNorm,
    WeightedSqDist,
    SqNormDiag,
    SqNormIso,
    SymSqNorm,

    // Calculus
    /// `Grad(f, v, e)`: the vector-Jacobian product, dimension of `v`.
    Grad,
    /// `Diff(f, v, u)`: the Jacobian-vector product, dimension of `f`.
    Diff,
}

/// How the dimension of a node follows from its operands'.
enum DimRule {
    Leaf,
    /// Operands of equal dimension or dimension 1; the output takes the largest.
    Elementwise,
    Scalar,
    SameAsFirst,
    Other,
}

impl Op {
    /// The KeOps name, as written in `.kf` files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Var(_) => "Var",
            Op::Const(_) => "Const",
            Op::IntCst(_) => "IntCst",
            Op::Zero(_) => "Zero",
            Op::Neg => "Minus",
            Op::Exp => "Exp",
            Op::Log => "Log",
            Op::Sqrt => "Sqrt",
            Op::Rsqrt => "Rsqrt",
            Op::Square => "Square",
            Op::Inv => "Inv",
            Op::Abs => "Abs",
            Op::Sign => "Sign",
            Op::Step => "Step",
            Op::ReLU => "ReLU",
            Op::Sin => "Sin",
            Op::Cos => "Cos",
            Op::Asin => "Asin",
            Op::Acos => "Acos",
            Op::Atan => "Atan",
            Op::Floor => "Floor",
            Op::XLogX => "XLogX",
            Op::SinXDivX => "SinXDivX",
            Op::Round(_) => "Round",
            Op::Pow(_) => "Pow",
            Op::ClampInt(..) => "ClampInt",
            Op::Add => "Add",
            Op::Sub => "Subtract",
            Op::Mul => "Mult",
            Op::Div => "Divide",
            Op::Powf => "Powf",
            Op::Atan2 => "Atan2",
            Op::Equal => "Equal",
            Op::NotEqual => "NotEqual",
            Op::LessThan => "LessThan",
            Op::LessOrEqual => "LessOrEqual",
            Op::Clamp => "Clamp",
            Op::IfElse => "IfElse",
            Op::Mod => "Mod",
            Op::Sum => "Sum",
            Op::SumT(_) => "SumT",
            Op::Max => "Max",
            Op::Min => "Min",
            Op::ArgMax => "ArgMax",
            Op::ArgMin => "ArgMin",
            Op::SqNorm2 => "SqNorm2",
            Op::Norm2 => "Norm2",
            Op::Normalize => "Normalize",
            Op::SqDist => "SqDist",
            Op::Scalprod => "Scalprod",
            Op::Elem(_) => "Elem",
            Op::ElemT(..) => "ElemT",
            Op::Extract(..) => "Extract",
            Op::ExtractT(..) => "ExtractT",
            Op::Concat => "Concat",
            Op::OneHot(_) => "OneHot",
            Op::MatVecMult => "MatVecMult",
            Op::VecMatMult => "VecMatMult",
            Op::TensorProd => "TensorProd",
            Op::TensorDot(_) => "TensorDot",
            Op::WeightedSqNorm => "WeightedSqNorm",
            Op::WeightedSqDist => "WeightedSqDist",
            Op::SqNormDiag => "SqNormDiag",
            Op::SqNormIso => "SqNormIso",
            Op::SymSqNorm => "SymSqNorm",
            Op::Grad => "Grad",
            Op::Diff => "Diff",
        }
    }

    /// Number of formula operands.
    pub fn arity(&self) -> usize {
        match self {
            Op::Var(_) | Op::Const(_) | Op::IntCst(_) | Op::Zero(_) => 0,
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Powf
            | Op::Atan2
            | Op::Equal
            | Op::NotEqual
            | Op::LessThan
            | Op::LessOrEqual
            | Op::SqDist
            | Op::Scalprod
            | Op::Concat
            | Op::MatVecMult
            | Op::VecMatMult
            | Op::TensorProd
            | Op::TensorDot(_)
            | Op::WeightedSqNorm
            | Op::SqNormDiag
            | Op::SqNormIso
            | Op::SymSqNorm => 2,
            Op::Clamp | Op::IfElse | Op::Mod | Op::WeightedSqDist | Op::Grad | Op::Diff => 3,
            _ => 1,
        }
    }

    fn dim_rule(&self) -> DimRule {
        match self {
            Op::Var(_) | Op::Const(_) | Op::IntCst(_) | Op::Zero(_) => DimRule::Leaf,
            Op::Neg
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Rsqrt
            | Op::Square
            | Op::Inv
            | Op::Abs
            | Op::Sign
            | Op::Step
            | Op::ReLU
            | Op::Sin
            | Op::Cos
            | Op::Asin
            | Op::Acos
            | Op::Atan
            | Op::Floor
            | Op::XLogX
            | Op::SinXDivX
            | Op::Round(_)
            | Op::Pow(_)
            | Op::ClampInt(..)
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Powf
            | Op::Atan2
            | Op::Equal
            | Op::NotEqual
            | Op::LessThan
            | Op::LessOrEqual
            | Op::Clamp
            | Op::IfElse
            | Op::Mod => DimRule::Elementwise,
            Op::Sum | Op::Max | Op::Min | Op::ArgMax | Op::ArgMin | Op::SqNorm2 | Op::Norm2 => {
                DimRule::Scalar
            }
            Op::Normalize => DimRule::SameAsFirst,
            _ => DimRule::Other,
        }
    }

    /// Whether the operator applies one scalar function per component.
    pub fn is_elementwise(&self) -> bool {
        matches!(self.dim_rule(), DimRule::Elementwise)
    }

    /// The output dimension, given the operands' dimensions, or why they do not fit. Leaves
    /// other than `Zero` need the argument table and are resolved by the caller.
    /// Operands are at most [`MAX_DIM`], and so is the result.
    pub fn output_dim(&self, dims: &[usize]) -> Result<usize, String> {
        debug_assert_eq!(dims.len(), self.arity(), "arity of {}", self.name());
        let dim = self.unbounded_output_dim(dims)?;
        if dim > MAX_DIM {
            return Err(too_large(
                &format!("the result of `{}` would have dimension", self.name()),
                dim,
            ));
        }
        Ok(dim)
    }

    fn unbounded_output_dim(&self, dims: &[usize]) -> Result<usize, String> {
        let name = self.name();
        match self.dim_rule() {
            DimRule::Leaf => Ok(match self {
                Op::Zero(d) => *d,
                _ => 1,
            }),
            DimRule::Elementwise => {
                let max = dims.iter().copied().max().unwrap_or(1);
                if dims.iter().all(|&d| d == 1 || d == max) {
                    Ok(max)
                } else {
                    Err(format!(
                        "the operands of `{name}` must have equal dimensions, or dimension 1 to broadcast"
                    ))
                }
            }
            DimRule::Scalar => Ok(1),
            DimRule::SameAsFirst => Ok(dims[0]),
            DimRule::Other => self.other_dim(dims),
        }
    }

    fn other_dim(&self, dims: &[usize]) -> Result<usize, String> {
        let name = self.name();
        let same = |a: usize, b: usize| {
            if a == b {
                Ok(())
            } else {
                Err(format!(
                    "the operands of `{name}` must have the same dimension"
                ))
            }
        };
        let scalar_first = |what: &str| {
            if dims[0] == 1 {
                Ok(())
            } else {
                Err(format!("the operand of `{name}` must be a scalar ({what})"))
            }
        };
        match self {
            Op::SumT(n) => {
                scalar_first("it is broadcast")?;
                if *n >= 1 {
                    Ok(*n)
                } else {
                    Err("`SumT` needs a dimension of at least 1".into())
                }
            }
            Op::SqDist | Op::Scalprod => same(dims[0], dims[1]).map(|_| 1),
            Op::Elem(m) => {
                if *m < dims[0] {
                    Ok(1)
                } else {
                    Err(format!(
                        "`Elem` index {m} is out of range for an operand of dimension {}",
                        dims[0]
                    ))
                }
            }
            Op::ElemT(n, m) => {
                scalar_first("it is placed at one index")?;
                if m < n {
                    Ok(*n)
                } else {
                    Err(format!(
                        "`ElemT` index {m} is out of range for dimension {n}"
                    ))
                }
            }
            Op::Extract(start, len) => {
                if start.saturating_add(*len) <= dims[0] && *len > 0 {
                    Ok(*len)
                } else if *len == 0 {
                    Err("`Extract` must take at least one component".into())
                } else {
                    Err(format!(
                        "`Extract` of components {start}..{} is out of range for an operand of dimension {}",
                        start.saturating_add(*len),
                        dims[0]
                    ))
                }
            }
            Op::ExtractT(start, d) => {
                if start.saturating_add(dims[0]) <= *d {
                    Ok(*d)
                } else {
                    Err(format!(
                        "`ExtractT` places {} components at {start}, past dimension {d}",
                        dims[0]
                    ))
                }
            }
            Op::Concat => Ok(dims[0] + dims[1]),
            Op::OneHot(d) => {
                scalar_first("it is an index")?;
                if *d >= 1 {
                    Ok(*d)
                } else {
                    Err("`OneHot` needs a length of at least 1".into())
                }
            }
            Op::MatVecMult => {
                if dims[1] > 0 && dims[0].is_multiple_of(dims[1]) {
                    Ok(dims[0] / dims[1])
                } else {
                    Err("`MatVecMult(A, b)`: the dimension of A must be a multiple of the dimension of b".into())
                }
            }
            Op::VecMatMult => {
                if dims[0] > 0 && dims[1].is_multiple_of(dims[0]) {
                    Ok(dims[1] / dims[0])
                } else {
                    Err("`VecMatMult(b, A)`: the dimension of A must be a multiple of the dimension of b".into())
                }
            }
            Op::TensorProd => Ok(dims[0] * dims[1]),
            Op::TensorDot(spec) => spec.validate(dims[0], dims[1]),
            Op::WeightedSqNorm => {
                let (s, n) = (dims[0], dims[1]);
                if s == 1 || s == n || s == n * n {
                    Ok(1)
                } else {
                    Err(format!("`WeightedSqNorm(s, f)`: the weight must have dimension 1, {n} or {} (that of f, or its square)", n * n))
                }
            }
            Op::WeightedSqDist => {
                same(dims[1], dims[2])?;
                let (s, n) = (dims[0], dims[1]);
                if s == 1 || s == n || s == n * n {
                    Ok(1)
                } else {
                    Err(format!(
                        "`WeightedSqDist(s, f, g)`: the weight must have dimension 1, {n} or {}",
                        n * n
                    ))
                }
            }
            Op::SqNormIso => scalar_first("an isotropic weight").map(|_| 1),
            Op::SqNormDiag => same(dims[0], dims[1]).map(|_| 1),
            Op::SymSqNorm => {
                if dims[0] == dims[1] * dims[1] {
                    Ok(1)
                } else {
                    Err(format!(
                        "`SymSqNorm(S, f)`: S must have dimension {} (the square of f's)",
                        dims[1] * dims[1]
                    ))
                }
            }
            // A scalar e stands for e broadcast to f's dimension; a scalar f with a vector e
            // (which rewriting produces) stands for f broadcast, whose adjoint sums e.
            Op::Grad => {
                if dims[2] == dims[0] || dims[2] == 1 || dims[0] == 1 {
                    Ok(dims[1])
                } else {
                    Err(format!(
                        "`Grad(f, v, e)`: e must have f's dimension ({}) or 1",
                        dims[0]
                    ))
                }
            }
            Op::Diff => {
                if dims[2] == dims[1] || dims[2] == 1 {
                    Ok(dims[0])
                } else {
                    Err(format!(
                        "`Diff(f, v, u)`: u must have v's dimension ({}) or 1",
                        dims[1]
                    ))
                }
            }
            _ => unreachable!("{name} has a generic dimension rule"),
        }
    }
}

impl fmt::Display for Op {
    /// The operator with its parameters, as in the formula printout (`Pow[3]`, `Extract[0,2]`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Var(k) => write!(f, "Var[{k}]"),
            Op::Const(c) => write!(f, "{}", format_real(c.0)),
            Op::IntCst(k) => write!(f, "IntCst({k})"),
            Op::Zero(d) => write!(f, "Zero({d})"),
            Op::Round(d) => write!(f, "Round[{d}]"),
            Op::Pow(m) => write!(f, "Pow[{m}]"),
            Op::ClampInt(a, b) => write!(f, "ClampInt[{a},{b}]"),
            Op::SumT(n) => write!(f, "SumT[{n}]"),
            Op::Elem(m) => write!(f, "Elem[{m}]"),
            Op::ElemT(n, m) => write!(f, "ElemT[{n},{m}]"),
            Op::Extract(s, l) => write!(f, "Extract[{s},{l}]"),
            Op::ExtractT(s, d) => write!(f, "ExtractT[{s},{d}]"),
            Op::OneHot(d) => write!(f, "OneHot[{d}]"),
            Op::TensorDot(spec) => write!(f, "TensorDot[{}]", tensordot_params(spec)),
            other => f.write_str(other.name()),
        }
    }
}

/// `dimsf, dimsg, contf, contg[, permute]` as `.kf` list literals.
pub fn tensordot_params(spec: &TensorDotSpec) -> String {
    let list = |v: &[usize]| {
        let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        format!("[{}]", items.join(", "))
    };
    let mut s = format!(
        "{}, {}, {}, {}",
        list(&spec.dims_f),
        list(&spec.dims_g),
        list(&spec.contract_f),
        list(&spec.contract_g)
    );
    if let Some(p) = &spec.permute {
        s.push_str(&format!(", {}", list(p)));
    }
    s
}

/// Shortest text that reads back to the same f64, always with a `.` or exponent.
pub fn format_real(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}
