//! What one component of each operator costs on a target, relative to an addition: the table
//! the optimiser's extraction minimises (`opt::cost`). Only the ratios matter, and only between
//! formulas that compute the same thing: a division against a product by an inverse, an `exp`
//! of a sum against a product of `exp`s.

use keops_front::formula::Op;

/// Relative prices of the operator families (an addition costs 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpPrices {
    pub target: &'static str,
    /// Division, inverse, square root and its inverse, modulo.
    pub division: u64,
    /// `Norm2`, `Normalize` (a square root or its inverse and a sum of squares).
    pub norm: u64,
    /// `Exp`, `Log`, `XLogX`.
    pub exp_log: u64,
    /// `Sin`, `Cos`, `Atan`, `SinXDivX`.
    pub trig: u64,
    /// `Asin`, `Acos`, `Atan2`.
    pub inverse_trig: u64,
    /// `Powf` (a logarithm and an exponential in extended precision).
    pub powf: u64,
    /// What a negative integer power adds (an inverse).
    pub negative_power: u64,
}

/// The vectorised CPU code: `exp`/`log` are polynomials of about 8 fused operations, `sin`/`cos`
/// add a range reduction, a vector division or square root costs about four FMA slots.
pub const CPU: OpPrices = OpPrices {
    target: "cpu",
    division: 4,
    norm: 5,
    exp_log: 8,
    trig: 10,
    inverse_trig: 12,
    powf: 20,
    negative_power: 4,
};

/// The GPU code: f32 `exp` is a multiplication, a reduction and one `ex2.approx` on the
/// special-function unit, which runs beside the FMA pipes; an IEEE division or square root is
/// an approximation refined by Newton steps (about four operations); the other functions are
/// the CPU's polynomials, one thread wide.
pub const GPU: OpPrices = OpPrices {
    target: "gpu",
    division: 4,
    norm: 5,
    exp_log: 6,
    trig: 10,
    inverse_trig: 12,
    powf: 20,
    negative_power: 4,
};

impl OpPrices {
    /// The price of one component of `op`.
    pub fn price(&self, op: &Op) -> u64 {
        match op {
            Op::Var(_) | Op::Const(_) | Op::IntCst(_) | Op::Zero(_) => 0,
            Op::Neg | Op::Add | Op::Sub | Op::Mul | Op::Abs | Op::Square => 1,
            Op::Sign | Op::Step | Op::ReLU | Op::Floor | Op::Round(_) | Op::ClampInt(..) => 1,
            Op::Equal | Op::NotEqual | Op::LessThan | Op::LessOrEqual | Op::Clamp | Op::IfElse => 1,
            Op::Sum | Op::SumT(_) | Op::Max | Op::Min | Op::ArgMax | Op::ArgMin => 1,
            Op::SqNorm2 | Op::SqDist | Op::Scalprod | Op::Concat | Op::Elem(_) | Op::ElemT(..) => 1,
            Op::Extract(..) | Op::ExtractT(..) | Op::OneHot(_) => 1,
            Op::Pow(m) => {
                1 + (m.unsigned_abs() as u64).max(1).ilog2() as u64
                    + u64::from(*m < 0) * self.negative_power
            }
            Op::Div | Op::Inv | Op::Sqrt | Op::Rsqrt | Op::Mod => self.division,
            Op::Norm2 | Op::Normalize => self.norm,
            Op::Exp | Op::Log | Op::XLogX => self.exp_log,
            Op::Sin | Op::Cos | Op::Atan | Op::SinXDivX => self.trig,
            Op::Asin | Op::Acos | Op::Atan2 => self.inverse_trig,
            Op::Powf => self.powf,
            Op::MatVecMult | Op::VecMatMult | Op::TensorProd | Op::TensorDot(_) => 1,
            Op::WeightedSqNorm
            | Op::WeightedSqDist
            | Op::SqNormDiag
            | Op::SqNormIso
            | Op::SymSqNorm => 2,
            Op::Grad | Op::Diff => crate::opt::cost::UNEXPANDED,
        }
    }
}
