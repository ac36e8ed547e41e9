//! Symmetric evaluation: a `Sum` kernel applied to one point cloud against itself (a j-variable
//! holding the data of an i-variable, `keopsc eval --same y=x`) walks each unordered pair once
//! and gives it to both of its rows (`keops_runtime::run_symmetric_tiles`).
//!
//! For a pair (i, j) the row i needs `F(x_i, y_j, b_j, ...)` and the row j needs the same
//! formula with the roles exchanged, `F(x_j, y_i, b_i, ...)`. With `y = x` the swapped formula
//! reads `x` where `F` reads `y` and the reverse; every other variable gets a copy in the other
//! category (a `Vi` copy of `b`, reading `b`'s array). The cross kernel computes
//! `Concat(F, F swapped)` over the pairs of a row block and the later blocks: simplified as one
//! formula, whatever the two halves share (for a Gaussian, the whole exponential: `SqDist` is
//! written with its operands in one order, which changes no bit) is computed once per pair.
//!
//! It is chosen only where that sharing pays ([`plan_if_it_pays`], by the optimiser's cost
//! per pair): a formula whose halves share nothing costs as much either way, plus the
//! column buffers.

use crate::vjp::fresh_name;
use keops_front::check::CheckedKernel;
use keops_front::formula::{Formula, Node, Op};
use keops_runtime::{ArgSpec, Category, ReductionKind};
use std::fmt;

/// How to evaluate a kernel over the unordered pairs of one point cloud.
#[derive(Clone, Debug)]
pub struct SymmetricPlan {
    /// `Sum_Reduction(Concat(F, F swapped))` over the same axis: its first half the rows'
    /// shares, its second half (the columns) the shares of the inner indices' rows.
    pub cross: CheckedKernel,
    /// The width of each half (the kernel's output dimension).
    pub columns: usize,
    /// For each argument of `cross`, the kernel argument whose array it reads.
    pub sources: Vec<usize>,
}

impl fmt::Display for SymmetricPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "symmetric evaluation: each unordered pair once, by {}",
            self.cross.signature
        )?;
        writeln!(
            f,
            "  formula: {}",
            self.cross.formula.to_text(self.cross.formula.root())
        )?;
        write!(
            f,
            "  its last {} columns summed over the other index",
            self.columns
        )
    }
}

/// Why a kernel cannot be evaluated symmetrically (it is then evaluated in full).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotSymmetric {
    #[error("kernel `{kernel}` ends with {kind}: only Sum reductions are evaluated over unordered pairs")]
    Reduction { kernel: String, kind: ReductionKind },
    #[error("kernel `{kernel}`: no j-variable takes an i-variable's data")]
    NoSharedData { kernel: String },
    #[error("kernel `{kernel}`: internal error while building its symmetric kernel: {message}")]
    Internal { kernel: String, message: String },
    #[error("kernel `{kernel}`: its two halves share too little to pay (the formula costs {full} operations per pair, both halves together {both}): the full evaluation is faster")]
    DoesNotPay {
        kernel: String,
        full: u64,
        both: u64,
    },
}

/// What walking unordered pairs costs against the full evaluation, by the optimiser's cost
/// per pair: the full evaluation computes `F` for each ordered pair (`full`, plus `columns`
/// additions into the row), the symmetric one `Concat(F, F swapped)` for each unordered pair
/// (`both`, plus `2 columns` additions). It pays when what the halves share (for a Gaussian,
/// the whole exponential) saves a tenth of the operations at least: the column buffers and
/// their merges cost something, but each unordered pair also loads its inner-indexed inputs
/// and steps the loop once instead of twice, which operation counts leave out (a Gaussian
/// with 3 columns counts 0.83 of the operations and takes about 0.6 of the time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payoff {
    pub full: u64,
    pub both: u64,
    pub columns: u64,
}

impl Payoff {
    pub fn pays(&self) -> bool {
        let symmetric = self.both + 2 * self.columns;
        let full = 2 * (self.full + self.columns);
        10 * symmetric <= 9 * full
    }
}

/// The payoff of `plan` for `kernel`: both simplified by the optimiser (tens of ms).
pub fn payoff(kernel: &CheckedKernel, plan: &SymmetricPlan) -> Result<Payoff, NotSymmetric> {
    let internal = |d: keops_front::diagnostic::Diagnostic| NotSymmetric::Internal {
        kernel: kernel.name.clone(),
        message: d.message,
    };
    let budget = crate::opt::OptBudget::default();
    let full = crate::opt::optimize(kernel, &budget).map_err(internal)?;
    let both = crate::opt::optimize(&plan.cross, &budget).map_err(internal)?;
    Ok(Payoff {
        full: full.after.per_pair,
        both: both.after.per_pair,
        columns: plan.columns as u64,
    })
}

/// [`plan`], refused with [`NotSymmetric::DoesNotPay`] when the full evaluation is cheaper:
/// what chooses the schedule wherever the caller only says that `y` holds `x`'s data.
pub fn plan_if_it_pays(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
) -> Result<SymmetricPlan, NotSymmetric> {
    let plan = plan(kernel, same)?;
    let payoff = payoff(kernel, &plan)?;
    if !payoff.pays() {
        return Err(NotSymmetric::DoesNotPay {
            kernel: kernel.name.clone(),
            full: payoff.full,
            both: payoff.both,
        });
    }
    Ok(plan)
}

/// The symmetric plan of `kernel` where each `(j, i)` of `same` (argument positions) says that
/// the j-variable `j` holds the data of the i-variable `i` (same dimension, N = M).
pub fn plan(
    kernel: &CheckedKernel,
    same: &[(usize, usize)],
) -> Result<SymmetricPlan, NotSymmetric> {
    let sig = &kernel.signature;
    if sig.reduction.kind != ReductionKind::Sum {
        return Err(NotSymmetric::Reduction {
            kernel: kernel.name.clone(),
            kind: sig.reduction.kind,
        });
    }
    if same.is_empty() {
        return Err(NotSymmetric::NoSharedData {
            kernel: kernel.name.clone(),
        });
    }
    let internal = |message: String| NotSymmetric::Internal {
        kernel: kernel.name.clone(),
        message,
    };
    // Each argument's partner in the swapped formula: the other half of a `same` pair, a new
    // copy in the other category, or itself (parameters).
    let mut args: Vec<ArgSpec> = sig.args.clone();
    let mut sources: Vec<usize> = (0..args.len()).collect();
    let mut partner: Vec<usize> = (0..args.len()).collect();
    for &(j, i) in same {
        partner[j] = i;
        partner[i] = j;
    }
    for (k, spec) in sig.args.iter().enumerate() {
        let paired = same.iter().any(|&(j, i)| j == k || i == k);
        let other = match spec.category {
            Category::I => Category::J,
            Category::J => Category::I,
            Category::Param => continue,
        };
        if paired {
            continue;
        }
        partner[k] = args.len();
        sources.push(k);
        args.push(ArgSpec {
            name: fresh_name(&args, &format!("{}_swapped", spec.name)),
            category: other,
            dim: spec.dim,
        });
    }
    let build = || -> Result<Formula, String> {
        let original = &kernel.formula;
        let mut out = Formula::new(args.clone());
        let mut straight = Vec::with_capacity(original.len());
        for node in original.nodes.as_ref() {
            let children = node
                .children
                .iter()
                .map(|&c| straight[usize::from(c)])
                .collect();
            straight.push(out.push(Node::new(node.op.clone(), children), None)?);
        }
        let mut swapped = Vec::with_capacity(original.len());
        for node in original.nodes.as_ref() {
            let op = match node.op {
                Op::Var(k) => Op::Var(partner[k as usize] as u32),
                ref other => other.clone(),
            };
            let mut children: Vec<_> = node
                .children
                .iter()
                .map(|&c| swapped[usize::from(c)])
                .collect();
            // SqDist and Scalprod are symmetric bit for bit: keep the straight half's order,
            // so that the optimiser sees one term for both halves.
            if matches!(op, Op::SqDist | Op::Scalprod) {
                children.swap(0, 1);
            }
            swapped.push(out.push(Node::new(op, children), None)?);
        }
        let root = usize::from(original.root());
        out.push(
            Node::new(Op::Concat, vec![straight[root], swapped[root]]),
            None,
        )?;
        Ok(out)
    };
    let formula = build().map_err(internal)?;
    let columns = sig.reduction.fdim;
    let mut signature = sig.clone();
    signature.name = format!("{}_symmetric", kernel.name);
    signature.args = args;
    signature.reduction = keops_runtime::Reduction::new(ReductionKind::Sum, 2 * columns);
    Ok(SymmetricPlan {
        cross: CheckedKernel {
            name: signature.name.clone(),
            span: kernel.span.clone(),
            signature,
            formula,
        },
        columns,
        sources,
    })
}
