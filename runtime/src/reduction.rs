//! The reductions of KeOps, as data: an accumulator layout, an initial value, a fold of one
//! formula value `F_ij` (with its index), a merge of two partial accumulators, and a finalize
//! step that writes the output row. Every backend (the reference interpreter, compiled CPU tiles,
//! GPU blocks) drives reductions through this one definition, so they agree by construction.
//!
//! Conventions follow keopscore 2.x: ties keep the first index (strict comparisons), indices are
//! returned as floats holding exact integers, and a vector-valued `F` is reduced component-wise
//! except by the LogSumExp family, whose `F` is a scalar.
//!
//! The part of a reduction that compiled code re-implements (its [`Family`]: the neutral value,
//! the comparison, the tie order, which slots hold indices, how infinities and NaN combine) is
//! defined here as data and small scalar rules ([`shifted_exp_term`], [`rescale_factor`]); the
//! code generator reads the same table, so the answer never depends on which backend, lane,
//! tile, inner split or thread count computed it.

use crate::backward::Saved;
use num_traits::Float;
use std::fmt;

/// Which reduction a kernel ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReductionKind {
    Sum,
    Max,
    Min,
    ArgMax,
    ArgMin,
    MaxArgMax,
    MinArgMin,
    LogSumExp,
    LogSumExpWeight,
    MaxSumShiftExp,
    MaxSumShiftExpWeight,
    SumSoftMaxWeight,
    KMin,
    ArgKMin,
    KMinArgKMin,
}

/// What a reduction's output rows hold ([`ReductionKind::output`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionOutput {
    Values,
    /// Indices only (as numbers of the output's dtype; int64 where a binding converts them).
    Indices,
    /// Values, then as many indices.
    ValuesAndIndices,
}

impl ReductionOutput {
    pub fn name(self) -> &'static str {
        match self {
            ReductionOutput::Values => "values",
            ReductionOutput::Indices => "indices",
            ReductionOutput::ValuesAndIndices => "values_and_indices",
        }
    }
}

/// The shape of a reduction's backward pass ([`ReductionKind::backward`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardShape {
    /// Indices only: piecewise constant, no gradient.
    None,
    /// Every pair contributes: one dense pass over the other index, reading `saved` of the
    /// forward; `shifted_max`: the running maximum `m` (Max_SumShiftExp(Weight)) also sends
    /// a gradient through the entry that holds it (a selected part, as [`BackwardShape::Selected`]).
    Dense { saved: Saved<()>, shifted_max: bool },
    /// The gradient flows through the selected entries only, found by the kind's
    /// [`ReductionKind::with_indices`].
    Selected,
}

/// What a reduction sums of `F` when a wide product can compute it
/// ([`ReductionKind::summed_vector`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummedVector {
    /// `F` itself (Sum).
    Formula,
    /// The weight `V` of `Concat(F, V)`, `F` a scalar.
    Weight,
}

/// How a reduction is written in a `.kf` file: which extra arguments sit between `F` and `axis`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionArgs {
    /// `Kind_Reduction(F, axis)`
    Formula,
    /// `Kind_Reduction(F, K, axis)`
    FormulaK,
    /// `Kind_Reduction(F, V, axis)`: `V` is a weight formula
    FormulaWeight,
}

/// How a reduction folds values: what every backend implements, one family for several kinds.
///
/// | family | fold of a value `v` | ties | infinities and NaN |
/// |---|---|---|---|
/// | `Sum` | `acc + v` per component | - | IEEE: NaN propagates, `+inf + -inf` is NaN |
/// | `Extreme` | keeps `v` when strictly better (`order`), and its index when `with_index` | the smaller index wins; without an index, a tie of `-0` and `+0` gives `-0` to Min and `+0` to Max | NaN is never taken (strict comparisons, as KeOps) |
/// | `ShiftedExp` | online `(m, s = sum exp(v - m), sw = sum exp(v - m) w)` | - | `-inf` adds 0; values equal to `m` add exactly 1 (so `+inf` values count, and a set holding `+inf` has LogSumExp `+inf`); NaN propagates |
/// | `KSmallest` | inserts `(v, index)` when strictly below the K-th | the smaller index first | NaN never enters |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sum,
    Extreme { order: Order, with_index: bool },
    ShiftedExp,
    KSmallest,
}

/// Which of two values an `Extreme` reduction keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Max, ArgMax, Max_ArgMax
    Greater,
    /// Min, ArgMin, Min_ArgMin
    Less,
}

impl Order {
    /// Whether `a` is strictly better than `b` (false when either is NaN).
    pub fn better<T: Float>(self, a: T, b: T) -> bool {
        match self {
            Order::Greater => a > b,
            Order::Less => a < b,
        }
    }

    /// The value a Min or Max without index keeps of `kept` and a new `value`: the better one,
    /// and of two zeros of opposite signs (equal, so "first wins" would make the sign depend on
    /// the order of the fold), `-0` for Min and `+0` for Max, whatever the order.
    pub fn keep<T: Float>(self, kept: T, value: T) -> T {
        if self.better(value, kept) {
            value
        } else if value == kept && value.is_sign_negative() != kept.is_sign_negative() {
            match self {
                Order::Less => -value.abs(),
                Order::Greater => value.abs(),
            }
        } else {
            kept
        }
    }
}

impl Family {
    /// The value a pair outside the range folds (a masked SIMD lane): one that changes nothing.
    pub fn neutral(self) -> f64 {
        match self {
            Family::Sum => 0.0,
            Family::Extreme {
                order: Order::Greater,
                ..
            } => f64::NEG_INFINITY,
            Family::Extreme {
                order: Order::Less, ..
            }
            | Family::KSmallest => f64::INFINITY,
            Family::ShiftedExp => f64::NEG_INFINITY,
        }
    }
}

/// `exp(v - m)`: the weight of a value `v` in sums kept relative to the running maximum `m`
/// (`v <= m`). Exactly 1 when `v == m`, so that `v = m = +inf` counts once instead of giving
/// `exp(inf - inf) = NaN`; exactly 0 when `v = -inf` (even when `m = -inf` too). A NaN `v`
/// gives NaN.
pub fn shifted_exp_term<T: Float>(v: T, m: T) -> T {
    if v == T::neg_infinity() {
        T::zero()
    } else if v == m {
        T::one()
    } else {
        (v - m).exp()
    }
}

/// `exp(from - to)`: the factor that moves sums kept relative to the maximum `from` to the
/// maximum `to` (`from <= to`). Exactly 1 when they are equal, infinite or not, so that two
/// partial sums whose maximum is `+inf` add up instead of giving NaN; 0 from `-inf`.
pub fn rescale_factor<T: Float>(from: T, to: T) -> T {
    if from == to {
        T::one()
    } else {
        (from - to).exp()
    }
}

impl ReductionKind {
    pub const ALL: [ReductionKind; 15] = [
        ReductionKind::Sum,
        ReductionKind::Max,
        ReductionKind::Min,
        ReductionKind::ArgMax,
        ReductionKind::ArgMin,
        ReductionKind::MaxArgMax,
        ReductionKind::MinArgMin,
        ReductionKind::LogSumExp,
        ReductionKind::LogSumExpWeight,
        ReductionKind::MaxSumShiftExp,
        ReductionKind::MaxSumShiftExpWeight,
        ReductionKind::SumSoftMaxWeight,
        ReductionKind::KMin,
        ReductionKind::ArgKMin,
        ReductionKind::KMinArgKMin,
    ];

    /// The KeOps name, without the `_Reduction` suffix.
    pub fn name(self) -> &'static str {
        match self {
            ReductionKind::Sum => "Sum",
            ReductionKind::Max => "Max",
            ReductionKind::Min => "Min",
            ReductionKind::ArgMax => "ArgMax",
            ReductionKind::ArgMin => "ArgMin",
            ReductionKind::MaxArgMax => "Max_ArgMax",
            ReductionKind::MinArgMin => "Min_ArgMin",
            ReductionKind::LogSumExp => "LogSumExp",
            ReductionKind::LogSumExpWeight => "LogSumExpWeight",
            ReductionKind::MaxSumShiftExp => "Max_SumShiftExp",
            ReductionKind::MaxSumShiftExpWeight => "Max_SumShiftExpWeight",
            ReductionKind::SumSoftMaxWeight => "SumSoftMaxWeight",
            ReductionKind::KMin => "KMin",
            ReductionKind::ArgKMin => "ArgKMin",
            ReductionKind::KMinArgKMin => "KMin_ArgKMin",
        }
    }

    /// Parses `Sum_Reduction` (and the other reduction names) to a kind.
    pub fn from_reduction_name(name: &str) -> Option<ReductionKind> {
        let stem = name.strip_suffix("_Reduction")?;
        ReductionKind::ALL.into_iter().find(|k| k.name() == stem)
    }

    pub fn args(self) -> ReductionArgs {
        match self {
            ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin => {
                ReductionArgs::FormulaK
            }
            ReductionKind::LogSumExpWeight
            | ReductionKind::MaxSumShiftExpWeight
            | ReductionKind::SumSoftMaxWeight => ReductionArgs::FormulaWeight,
            _ => ReductionArgs::Formula,
        }
    }

    /// How this kind folds values (shared by every backend).
    pub fn family(self) -> Family {
        match self {
            ReductionKind::Sum => Family::Sum,
            ReductionKind::Max => Family::Extreme {
                order: Order::Greater,
                with_index: false,
            },
            ReductionKind::Min => Family::Extreme {
                order: Order::Less,
                with_index: false,
            },
            ReductionKind::ArgMax | ReductionKind::MaxArgMax => Family::Extreme {
                order: Order::Greater,
                with_index: true,
            },
            ReductionKind::ArgMin | ReductionKind::MinArgMin => Family::Extreme {
                order: Order::Less,
                with_index: true,
            },
            ReductionKind::LogSumExp
            | ReductionKind::LogSumExpWeight
            | ReductionKind::MaxSumShiftExp
            | ReductionKind::MaxSumShiftExpWeight
            | ReductionKind::SumSoftMaxWeight => Family::ShiftedExp,
            ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin => {
                Family::KSmallest
            }
        }
    }

    /// The LogSumExp family folds a scalar `F` (the weight, if any, may be a vector).
    pub fn needs_scalar_formula(self) -> bool {
        matches!(
            self,
            ReductionKind::LogSumExp
                | ReductionKind::LogSumExpWeight
                | ReductionKind::MaxSumShiftExp
                | ReductionKind::MaxSumShiftExpWeight
                | ReductionKind::SumSoftMaxWeight
        )
    }

    /// What the output rows hold: values, indices only (ArgMin, ...), or values then indices
    /// (Min_ArgMin, ...: the second half of each row).
    pub fn output(self) -> ReductionOutput {
        match self {
            ReductionKind::ArgMax | ReductionKind::ArgMin | ReductionKind::ArgKMin => {
                ReductionOutput::Indices
            }
            ReductionKind::MaxArgMax | ReductionKind::MinArgMin | ReductionKind::KMinArgKMin => {
                ReductionOutput::ValuesAndIndices
            }
            ReductionKind::Sum
            | ReductionKind::Max
            | ReductionKind::Min
            | ReductionKind::KMin
            | ReductionKind::LogSumExp
            | ReductionKind::LogSumExpWeight
            | ReductionKind::MaxSumShiftExp
            | ReductionKind::MaxSumShiftExpWeight
            | ReductionKind::SumSoftMaxWeight => ReductionOutput::Values,
        }
    }

    /// Whether (part of) the output holds indices rather than values.
    pub fn outputs_indices(self) -> bool {
        self.output() != ReductionOutput::Values
    }

    /// The kind that reduces the same values and also returns the selected entries' indices
    /// (Min -> Min_ArgMin, KMin -> KMin_ArgKMin, ...; the maximum of Max_SumShiftExp(Weight)
    /// -> Max_ArgMax): what a backward pass runs to find the entries its gradient flows
    /// through. `None` for the kinds where every pair contributes.
    pub fn with_indices(self) -> Option<ReductionKind> {
        use ReductionKind as K;
        match self {
            K::Min | K::ArgMin | K::MinArgMin => Some(K::MinArgMin),
            K::Max | K::ArgMax | K::MaxArgMax | K::MaxSumShiftExp | K::MaxSumShiftExpWeight => {
                Some(K::MaxArgMax)
            }
            K::KMin | K::ArgKMin | K::KMinArgKMin => Some(K::KMinArgKMin),
            K::Sum | K::LogSumExp | K::LogSumExpWeight | K::SumSoftMaxWeight => None,
        }
    }

    /// The shape of this kind's backward pass (`keops_middle::vjp` builds its kernels).
    pub fn backward(self) -> BackwardShape {
        use ReductionKind as K;
        match self {
            K::ArgMin | K::ArgMax | K::ArgKMin => BackwardShape::None,
            K::Sum => BackwardShape::Dense {
                saved: Saved::None,
                shifted_max: false,
            },
            K::LogSumExp | K::LogSumExpWeight => BackwardShape::Dense {
                saved: Saved::Output(()),
                shifted_max: false,
            },
            K::MaxSumShiftExp | K::MaxSumShiftExpWeight => BackwardShape::Dense {
                saved: Saved::Output(()),
                shifted_max: true,
            },
            K::SumSoftMaxWeight => BackwardShape::Dense {
                saved: Saved::SoftMax(()),
                shifted_max: false,
            },
            K::Min | K::Max | K::MinArgMin | K::MaxArgMax | K::KMin | K::KMinArgKMin => {
                BackwardShape::Selected
            }
        }
    }

    /// What of a pair's formula value this kind sums, when it sums a vector that a wide
    /// product (a scalar times a vector per pair: `keops_middle::schedule`) can compute with
    /// `fdim` the dimension of `F`: all of `F` (Sum), or the weight `V` of a scalar `F`
    /// (the weighted LogSumExp family). `None` for the kinds that compare values.
    pub fn summed_vector(self, fdim: usize) -> Option<SummedVector> {
        use ReductionKind as K;
        match self {
            K::Sum => Some(SummedVector::Formula),
            K::SumSoftMaxWeight | K::LogSumExpWeight | K::MaxSumShiftExpWeight if fdim == 1 => {
                Some(SummedVector::Weight)
            }
            K::SumSoftMaxWeight
            | K::LogSumExpWeight
            | K::MaxSumShiftExpWeight
            | K::LogSumExp
            | K::MaxSumShiftExp
            | K::Max
            | K::Min
            | K::ArgMax
            | K::ArgMin
            | K::MaxArgMax
            | K::MinArgMin
            | K::KMin
            | K::ArgKMin
            | K::KMinArgKMin => None,
        }
    }
}

impl fmt::Display for ReductionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_Reduction", self.name())
    }
}

/// A reduction with its sizes fixed: the kind, `K` for the K-reductions, the dimension of `F`
/// and of the weight `V` (0 when there is none). The formula value handed to [`fold`] is
/// `F` followed by `V`, `fdim + wdim` numbers.
///
/// [`fold`]: Reduction::fold
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reduction {
    pub kind: ReductionKind,
    pub k: usize,
    pub fdim: usize,
    pub wdim: usize,
}

impl Reduction {
    pub fn new(kind: ReductionKind, fdim: usize) -> Reduction {
        Reduction {
            kind,
            k: 1,
            fdim,
            wdim: 0,
        }
    }

    pub fn with_k(kind: ReductionKind, k: usize, fdim: usize) -> Reduction {
        Reduction {
            kind,
            k,
            fdim,
            wdim: 0,
        }
    }

    pub fn with_weight(kind: ReductionKind, fdim: usize, wdim: usize) -> Reduction {
        Reduction {
            kind,
            k: 1,
            fdim,
            wdim,
        }
    }

    /// Width of the formula value folded per pair (`F` then `V`).
    pub fn formula_dim(&self) -> usize {
        self.fdim + self.wdim
    }

    /// Width of the output row.
    pub fn output_dim(&self) -> usize {
        let n = self.fdim;
        match self.kind {
            ReductionKind::Sum
            | ReductionKind::Max
            | ReductionKind::Min
            | ReductionKind::ArgMax
            | ReductionKind::ArgMin => n,
            ReductionKind::MaxArgMax | ReductionKind::MinArgMin => 2 * n,
            ReductionKind::LogSumExp => 1,
            ReductionKind::LogSumExpWeight | ReductionKind::SumSoftMaxWeight => self.wdim,
            ReductionKind::MaxSumShiftExp => 2,
            ReductionKind::MaxSumShiftExpWeight => 1 + self.wdim,
            ReductionKind::KMin | ReductionKind::ArgKMin => self.k * n,
            ReductionKind::KMinArgKMin => 2 * self.k * n,
        }
    }

    /// Width of the accumulator.
    pub fn acc_dim(&self) -> usize {
        let n = self.fdim;
        match self.kind {
            ReductionKind::Sum | ReductionKind::Max | ReductionKind::Min => n,
            ReductionKind::ArgMax
            | ReductionKind::ArgMin
            | ReductionKind::MaxArgMax
            | ReductionKind::MinArgMin => 2 * n,
            // (running max m, shifted sum s, shifted weighted sums)
            ReductionKind::LogSumExp | ReductionKind::MaxSumShiftExp => 2,
            ReductionKind::LogSumExpWeight
            | ReductionKind::MaxSumShiftExpWeight
            | ReductionKind::SumSoftMaxWeight => 2 + self.wdim,
            // K slots, each [values (n), indices (n)], sorted ascending
            ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin => {
                2 * self.k * n
            }
        }
    }

    /// Whether accumulator slot `k` holds an index (an absolute inner index, as a float).
    pub fn is_index_slot(&self, k: usize) -> bool {
        let n = self.fdim;
        match self.kind.family() {
            Family::Extreme {
                with_index: true, ..
            } => k >= n,
            Family::KSmallest => k % (2 * n) >= n,
            _ => false,
        }
    }

    pub fn init<T: Float>(&self, acc: &mut [T]) {
        let neutral = T::from(self.kind.family().neutral()).unwrap_or_else(T::nan);
        match self.kind.family() {
            Family::Sum | Family::Extreme { .. } | Family::KSmallest => {
                // values start at the neutral value, indices at 0
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = if self.is_index_slot(k) {
                        T::zero()
                    } else {
                        neutral
                    };
                }
            }
            Family::ShiftedExp => {
                acc[0] = neutral;
                acc[1..].fill(T::zero());
            }
        }
    }

    /// Folds the formula value `fout` (`F` then `V`) of the pair with inner index `index`.
    pub fn fold<T: Float>(&self, acc: &mut [T], fout: &[T], index: usize) {
        let n = self.fdim;
        let idx = T::from(index).unwrap_or_else(T::nan);
        match self.kind.family() {
            Family::Sum => {
                for (a, &f) in acc.iter_mut().zip(fout) {
                    *a = *a + f;
                }
            }
            Family::Extreme {
                order,
                with_index: false,
            } => {
                for (a, &f) in acc.iter_mut().zip(fout) {
                    *a = order.keep(*a, f);
                }
            }
            Family::Extreme {
                order,
                with_index: true,
            } => {
                for c in 0..n {
                    if order.better(fout[c], acc[c]) {
                        acc[c] = fout[c];
                        acc[n + c] = idx;
                    }
                }
            }
            Family::ShiftedExp => {
                let weight = &fout[n..];
                let (m, rest) = acc.split_first_mut().expect("accumulator has a max slot");
                fold_shifted_exp(m, rest, fout[0], weight);
            }
            Family::KSmallest => {
                for (c, &value) in fout[..n].iter().enumerate() {
                    insert_sorted(acc, self.k, n, c, value, idx);
                }
            }
        }
    }

    /// Merges the partial accumulator `other` into `acc`. `other` must cover inner indices that
    /// come after those of `acc`, so that ties still keep the first index.
    pub fn merge<T: Float>(&self, acc: &mut [T], other: &[T]) {
        let n = self.fdim;
        match self.kind.family() {
            Family::Sum => {
                for (a, &b) in acc.iter_mut().zip(other) {
                    *a = *a + b;
                }
            }
            Family::Extreme {
                order,
                with_index: false,
            } => {
                for (a, &o) in acc.iter_mut().zip(other) {
                    *a = order.keep(*a, o);
                }
            }
            Family::Extreme {
                order,
                with_index: true,
            } => {
                for c in 0..n {
                    if order.better(other[c], acc[c]) {
                        acc[c] = other[c];
                        acc[n + c] = other[n + c];
                    }
                }
            }
            Family::ShiftedExp => {
                let (m, rest) = acc.split_first_mut().expect("accumulator has a max slot");
                merge_shifted_exp(m, rest, other[0], &other[1..]);
            }
            Family::KSmallest => {
                for slot in other.chunks(2 * n) {
                    for c in 0..n {
                        // Slots past the filled ones hold +inf and never insert.
                        insert_sorted(acc, self.k, n, c, slot[c], slot[n + c]);
                    }
                }
            }
        }
    }

    /// Writes the output row from a complete accumulator.
    pub fn finalize<T: Float>(&self, acc: &[T], out: &mut [T]) {
        let n = self.fdim;
        let k = self.k;
        match self.kind {
            ReductionKind::Sum | ReductionKind::Max | ReductionKind::Min => {
                out.copy_from_slice(acc)
            }
            ReductionKind::ArgMax | ReductionKind::ArgMin => out.copy_from_slice(&acc[n..]),
            ReductionKind::MaxArgMax | ReductionKind::MinArgMin => out.copy_from_slice(acc),
            ReductionKind::LogSumExp => out[0] = acc[0] + acc[1].ln(),
            ReductionKind::LogSumExpWeight => {
                // log of the weighted sum: m + log(sum_j exp(F_j - m) V_j)
                for (o, &s) in out.iter_mut().zip(&acc[2..]) {
                    *o = acc[0] + s.ln();
                }
            }
            ReductionKind::MaxSumShiftExp => out.copy_from_slice(&acc[..2]),
            ReductionKind::MaxSumShiftExpWeight => {
                out[0] = acc[0];
                out[1..].copy_from_slice(&acc[2..]);
            }
            ReductionKind::SumSoftMaxWeight => {
                for (o, &s) in out.iter_mut().zip(&acc[2..]) {
                    *o = s / acc[1];
                }
            }
            // Each part rank-major (`out[r n + c]`); KMin_ArgKMin concatenates the two parts,
            // values then indices, as the contract's combined reductions do.
            ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin => {
                let parts: &[usize] = match self.kind {
                    ReductionKind::KMin => &[0],
                    ReductionKind::ArgKMin => &[n],
                    _ => &[0, n],
                };
                for (p, &offset) in parts.iter().enumerate() {
                    for l in 0..k {
                        out[p * k * n + l * n..][..n]
                            .copy_from_slice(&acc[l * 2 * n + offset..][..n]);
                    }
                }
            }
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.args() {
            ReductionArgs::Formula => write!(f, "{}", self.kind),
            ReductionArgs::FormulaK => write!(f, "{} (K = {})", self.kind, self.k),
            ReductionArgs::FormulaWeight => write!(f, "{} (weight dim {})", self.kind, self.wdim),
        }
    }
}

/// One step of the online log-sum-exp: the accumulator holds the running maximum `m`, then
/// `s = sum exp(F - m)` and `sw = sum exp(F - m) * V`. Rescaling by `exp(m_old - m_new)` keeps
/// every exponent <= 0, so nothing overflows. Infinities and NaN follow [`shifted_exp_term`]
/// and [`rescale_factor`]; a NaN value never becomes the maximum but makes the sums NaN.
fn fold_shifted_exp<T: Float>(m: &mut T, sums: &mut [T], value: T, weight: &[T]) {
    if value > *m {
        let scale = rescale_factor(*m, value);
        *m = value;
        sums[0] = sums[0] * scale + T::one();
        for (s, &w) in sums[1..].iter_mut().zip(weight) {
            *s = *s * scale + w;
        }
    } else {
        let e = shifted_exp_term(value, *m);
        sums[0] = sums[0] + e;
        for (s, &w) in sums[1..].iter_mut().zip(weight) {
            *s = *s + e * w;
        }
    }
}

/// Merges the partial sums `(other_m, other_sums)` into `(m, sums)`: both move to the larger
/// maximum. An empty part (`-inf`, zero sums) changes nothing; a NaN sum stays NaN.
fn merge_shifted_exp<T: Float>(m: &mut T, sums: &mut [T], other_m: T, other_sums: &[T]) {
    if other_m > *m {
        let scale = rescale_factor(*m, other_m);
        *m = other_m;
        for (s, &o) in sums.iter_mut().zip(other_sums) {
            *s = *s * scale + o;
        }
    } else {
        let scale = rescale_factor(other_m, *m);
        for (s, &o) in sums.iter_mut().zip(other_sums) {
            *s = *s + o * scale;
        }
    }
}

/// Inserts `(value, index)` into component `c` of a sorted K-list (slot `l` at `l * 2n`), keeping
/// the order stable: an equal value goes after the ones already there (first index wins).
fn insert_sorted<T: Float>(acc: &mut [T], k: usize, n: usize, c: usize, value: T, index: T) {
    let stride = 2 * n;
    // Only a value strictly below the K-th enters (NaN never does).
    if value.partial_cmp(&acc[(k - 1) * stride + c]) != Some(std::cmp::Ordering::Less) {
        return;
    }
    let mut l = k - 1;
    while l > 0 && value < acc[(l - 1) * stride + c] {
        acc[l * stride + c] = acc[(l - 1) * stride + c];
        acc[l * stride + n + c] = acc[(l - 1) * stride + n + c];
        l -= 1;
    }
    acc[l * stride + c] = value;
    acc[l * stride + n + c] = index;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the indices sit in an output row: all of it (ArgKMin), its second half
    /// (KMin_ArgKMin, Min_ArgMin), nowhere (the others).
    #[test]
    fn index_columns_of_each_output() {
        let columns = |red: Reduction| crate::arrays::index_columns(&red);
        assert_eq!(
            columns(Reduction::with_k(ReductionKind::ArgKMin, 3, 1)),
            Some(0..3)
        );
        assert_eq!(
            columns(Reduction::with_k(ReductionKind::KMinArgKMin, 3, 1)),
            Some(3..6)
        );
        assert_eq!(
            columns(Reduction::new(ReductionKind::MinArgMin, 1)),
            Some(1..2)
        );
        assert_eq!(
            columns(Reduction::new(ReductionKind::ArgMax, 1)),
            Some(0..1)
        );
        assert_eq!(columns(Reduction::with_k(ReductionKind::KMin, 3, 1)), None);
        assert_eq!(columns(Reduction::new(ReductionKind::Sum, 4)), None);
        for kind in ReductionKind::ALL {
            let indices = matches!(kind.name(), "ArgMin" | "ArgMax" | "ArgKMin")
                || kind.name().contains("_Arg");
            assert_eq!(kind.outputs_indices(), indices, "{kind}");
        }
    }

    fn run(red: &Reduction, values: &[&[f64]]) -> Vec<f64> {
        let mut acc = vec![0.0; red.acc_dim()];
        red.init(&mut acc);
        for (j, v) in values.iter().enumerate() {
            red.fold(&mut acc, v, j);
        }
        let mut out = vec![0.0; red.output_dim()];
        red.finalize(&acc, &mut out);
        out
    }

    /// Folds the values in two halves and merges them: must equal the plain fold.
    fn run_split(red: &Reduction, values: &[&[f64]], at: usize) -> Vec<f64> {
        let mut a = vec![0.0; red.acc_dim()];
        let mut b = vec![0.0; red.acc_dim()];
        red.init(&mut a);
        red.init(&mut b);
        for (j, v) in values.iter().enumerate() {
            if j < at {
                red.fold(&mut a, v, j);
            } else {
                red.fold(&mut b, v, j);
            }
        }
        red.merge(&mut a, &b);
        let mut out = vec![0.0; red.output_dim()];
        red.finalize(&a, &mut out);
        out
    }

    #[test]
    fn names_round_trip() {
        for kind in ReductionKind::ALL {
            let name = format!("{kind}");
            assert_eq!(ReductionKind::from_reduction_name(&name), Some(kind));
        }
        assert_eq!(ReductionKind::from_reduction_name("Sum"), None);
    }

    #[test]
    fn argmin_keeps_first_of_ties() {
        let red = Reduction::new(ReductionKind::MinArgMin, 2);
        let out = run(&red, &[&[3.0, 1.0], &[1.0, 1.0], &[1.0, 0.5]]);
        assert_eq!(out, vec![1.0, 0.5, 1.0, 2.0]);
        assert_eq!(
            run_split(&red, &[&[3.0, 1.0], &[1.0, 1.0], &[1.0, 0.5]], 2),
            out
        );
    }

    #[test]
    fn logsumexp_matches_closed_form_and_survives_large_values() {
        let red = Reduction::new(ReductionKind::LogSumExp, 1);
        let out = run(&red, &[&[1000.0], &[1000.0], &[999.0]]);
        let expected = 1000.0 + (2.0 + (-1.0f64).exp()).ln();
        assert!((out[0] - expected).abs() < 1e-12);
        let split = run_split(&red, &[&[1000.0], &[1000.0], &[999.0]], 1);
        assert!((split[0] - expected).abs() < 1e-12);
        // Empty sum: log(0) = -inf
        assert_eq!(run(&red, &[])[0], f64::NEG_INFINITY);
    }

    #[test]
    fn logsumexp_of_a_set_holding_plus_infinity_is_plus_infinity_however_it_is_split() {
        let red = Reduction::new(ReductionKind::LogSumExp, 1);
        let inf = f64::INFINITY;
        let values: Vec<[f64; 1]> = [1.0, inf, 2.0, inf, -inf, 0.5].map(|v| [v]).to_vec();
        let refs: Vec<&[f64]> = values.iter().map(|v| &v[..]).collect();
        assert_eq!(run(&red, &refs), vec![inf]);
        for at in 0..=refs.len() {
            assert_eq!(run_split(&red, &refs, at), vec![inf], "split at {at}");
        }
        // Max_SumShiftExp counts the infinite values: (m, s) = (+inf, 2) however it is split.
        let mss = Reduction::new(ReductionKind::MaxSumShiftExp, 1);
        for at in 0..=refs.len() {
            assert_eq!(run_split(&mss, &refs, at), vec![inf, 2.0], "split at {at}");
        }
        // All -inf: -inf.
        assert_eq!(run(&red, &[&[-inf], &[-inf]]), vec![-inf]);
        // The softmax weights of +inf values: their weights' mean.
        let soft = Reduction::with_weight(ReductionKind::SumSoftMaxWeight, 1, 1);
        let out = run(&soft, &[&[inf, 2.0], &[3.0, 100.0], &[inf, 4.0]]);
        assert_eq!(out, vec![3.0]);
    }

    #[test]
    fn nan_in_a_part_that_is_otherwise_empty_still_propagates() {
        let red = Reduction::new(ReductionKind::LogSumExp, 1);
        let values: [&[f64]; 3] = [&[1.0], &[f64::NAN], &[f64::NEG_INFINITY]];
        for at in 0..=3 {
            assert!(run_split(&red, &values, at)[0].is_nan(), "split at {at}");
        }
        let values: [&[f64]; 2] = [&[f64::NAN], &[2.0]];
        for at in 0..=2 {
            assert!(run_split(&red, &values, at)[0].is_nan(), "split at {at}");
        }
    }

    #[test]
    fn every_kind_has_a_family_and_neutral_folds_change_nothing() {
        for kind in ReductionKind::ALL {
            let red = match kind.args() {
                ReductionArgs::Formula => Reduction::new(kind, 2),
                ReductionArgs::FormulaK => Reduction::with_k(kind, 3, 2),
                ReductionArgs::FormulaWeight => Reduction::with_weight(kind, 1, 2),
            };
            let neutral = kind.family().neutral();
            let mut acc = vec![0.0; red.acc_dim()];
            red.init(&mut acc);
            red.fold(&mut acc, &[1.5, 0.25, -3.0][..red.formula_dim()], 0);
            let before = acc.clone();
            let mut value = vec![neutral; red.formula_dim()];
            // a masked lane's weights are 0
            value[red.fdim..].fill(0.0);
            red.fold(&mut acc, &value, 7);
            assert_eq!(acc, before, "{kind}");
        }
    }

    /// The index form of a kind that selects entries folds its values the same way (same
    /// order, same K), returns values then indices, and has no index form other than itself;
    /// a kind that outputs indices has no gradient, the others have one.
    #[test]
    fn index_forms_and_backward_shapes_agree_with_the_families() {
        for kind in ReductionKind::ALL {
            let backward = kind.backward();
            assert_eq!(
                backward == BackwardShape::None,
                kind.output() == ReductionOutput::Indices,
                "{kind}"
            );
            let Some(indexed) = kind.with_indices() else {
                assert!(
                    matches!(
                        backward,
                        BackwardShape::Dense {
                            shifted_max: false,
                            ..
                        }
                    ),
                    "{kind}"
                );
                continue;
            };
            assert_eq!(
                indexed.output(),
                ReductionOutput::ValuesAndIndices,
                "{kind}"
            );
            assert_eq!(indexed.with_indices(), Some(indexed), "{kind}");
            match (kind.family(), indexed.family()) {
                (Family::Extreme { order: a, .. }, Family::Extreme { order: b, .. }) => {
                    assert_eq!(a, b, "{kind}")
                }
                (Family::KSmallest, Family::KSmallest) => {}
                // The running maximum of Max_SumShiftExp(Weight).
                (Family::ShiftedExp, Family::Extreme { order, .. }) => {
                    assert_eq!(order, Order::Greater, "{kind}");
                    assert!(
                        matches!(
                            backward,
                            BackwardShape::Dense {
                                shifted_max: true,
                                ..
                            }
                        ),
                        "{kind}"
                    );
                }
                (a, b) => panic!("{kind}: {a:?} selected through {indexed} ({b:?})"),
            }
        }
    }

    #[test]
    fn softmax_weight_is_a_weighted_mean() {
        let red = Reduction::with_weight(ReductionKind::SumSoftMaxWeight, 1, 2);
        let out = run(&red, &[&[0.0, 1.0, 10.0], &[(2.0f64).ln(), 4.0, 20.0]]);
        // weights 1 and 2 (normalised: 1/3, 2/3)
        assert!((out[0] - 3.0).abs() < 1e-12);
        assert!((out[1] - 50.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn kmin_sorts_and_merges() {
        let red = Reduction::with_k(ReductionKind::KMinArgKMin, 3, 1);
        let vals: Vec<[f64; 1]> = [5.0, 1.0, 4.0, 1.0, 0.0, 9.0].map(|v| [v]).to_vec();
        let refs: Vec<&[f64]> = vals.iter().map(|v| &v[..]).collect();
        let out = run(&red, &refs);
        assert_eq!(out, vec![0.0, 1.0, 1.0, 4.0, 1.0, 3.0]);
        for at in 0..=refs.len() {
            assert_eq!(run_split(&red, &refs, at), out, "split at {at}");
        }
    }

    #[test]
    fn nan_propagates_through_sums_and_is_skipped_by_comparisons() {
        let sum = Reduction::new(ReductionKind::Sum, 1);
        assert!(run(&sum, &[&[1.0], &[f64::NAN]])[0].is_nan());
        let lse = Reduction::new(ReductionKind::LogSumExp, 1);
        assert!(run(&lse, &[&[1.0], &[f64::NAN]])[0].is_nan());
        // KeOps compares strictly: NaN never wins a Min/Max, as in its generated code.
        let max = Reduction::new(ReductionKind::MaxArgMax, 1);
        assert_eq!(run(&max, &[&[1.0], &[f64::NAN], &[2.0]]), vec![2.0, 2.0]);
    }
}
