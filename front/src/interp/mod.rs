//! The reference interpreter: a plain f64 evaluator of any formula and reduction. Simple on
//! purpose, it is the oracle every backend and every rewrite is tested against. Memory stays
//! O(N + M): it evaluates one pair at a time into a scratch buffer of the formula's size and
//! folds it into one accumulator per output row; the N x M matrix never exists.

mod ops;

/// One operator applied to operand values: the interpreter's definition, shared with constant
/// folding so that folded constants are exactly what evaluation would give.
pub use ops::apply as apply_op;

use crate::formula::{Formula, Op};
use egg::Id;
use keops_runtime::{Axis, Category, ProblemSize, Reduction};
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// `Grad`/`Diff` are expanded by the optimiser before evaluation; one reaching here is a
    /// bug in the pipeline, not in the user's formula.
    #[error("internal error in the interpreter: `{0}` reached evaluation without being expanded by symbolic differentiation")]
    Unexpanded(&'static str),
}

/// Evaluates a formula at one point: precomputed offsets into one scratch buffer.
pub struct PointEvaluator<'f> {
    formula: &'f Formula,
    offsets: Vec<usize>,
    size: usize,
}

impl<'f> PointEvaluator<'f> {
    pub fn new(formula: &'f Formula) -> Result<PointEvaluator<'f>, InterpError> {
        let mut offsets = Vec::with_capacity(formula.len());
        let mut size = 0;
        for (node, info) in formula.nodes.as_ref().iter().zip(&formula.info) {
            if matches!(node.op, Op::Grad | Op::Diff) {
                return Err(InterpError::Unexpanded(node.op.name()));
            }
            offsets.push(size);
            size += info.dim;
        }
        Ok(PointEvaluator {
            formula,
            offsets,
            size,
        })
    }

    pub fn scratch(&self) -> Vec<f64> {
        vec![0.0; self.size]
    }

    /// Evaluates every node; `var(k)` gives the value of argument `k` at this point. Returns the
    /// root's value, a slice of `scratch`.
    pub fn eval<'s>(&self, scratch: &'s mut [f64], var: impl Fn(usize) -> &'s [f64]) -> &'s [f64]
    where
        'f: 's,
    {
        let nodes = self.formula.nodes.as_ref();
        for (k, node) in nodes.iter().enumerate() {
            let (before, rest) = scratch.split_at_mut(self.offsets[k]);
            let out = &mut rest[..self.formula.info[k].dim];
            if let Op::Var(v) = node.op {
                out.copy_from_slice(var(v as usize));
                continue;
            }
            // Operators take at most three operands: a fixed buffer, no allocation per node.
            let mut args: [&[f64]; 3] = [&[]; 3];
            for (slot, &c) in args.iter_mut().zip(&node.children) {
                let c = usize::from(c);
                *slot = &before[self.offsets[c]..self.offsets[c] + self.formula.info[c].dim];
            }
            ops::apply(&node.op, &args[..node.children.len()], out);
        }
        let root = usize::from(self.formula.root());
        &scratch[self.offsets[root]..self.offsets[root] + self.formula.info[root].dim]
    }

    /// The value of any node after [`eval`](Self::eval) filled `scratch`.
    pub fn value<'s>(&self, scratch: &'s [f64], id: Id) -> &'s [f64] {
        let k = usize::from(id);
        &scratch[self.offsets[k]..self.offsets[k] + self.formula.info[k].dim]
    }
}

/// Evaluates a formula at one point, each variable given its value.
pub fn evaluate_point(formula: &Formula, values: &[Vec<f64>]) -> Result<Vec<f64>, InterpError> {
    let evaluator = PointEvaluator::new(formula)?;
    let mut scratch = evaluator.scratch();
    Ok(evaluator.eval(&mut scratch, |v| &values[v][..]).to_vec())
}

/// Runs a reduction: `args[k]` holds argument `k` row-major (`rows x dim`), sizes as checked
/// by [`keops_runtime::check_arguments`]. Returns the output row-major, one row per i (axis 0)
/// or per j (axis 1).
pub fn evaluate(
    formula: &Formula,
    reduction: &Reduction,
    axis: Axis,
    args: &[&[f64]],
    size: ProblemSize,
) -> Result<Vec<f64>, InterpError> {
    let evaluator = PointEvaluator::new(formula)?;
    let (rows, inner) = match axis {
        Axis::I => (size.n, size.m),
        Axis::J => (size.m, size.n),
    };
    let out_dim = reduction.output_dim();
    let mut out = vec![0.0; rows * out_dim];
    if out_dim == 0 {
        return Ok(out);
    }
    let vars = &formula.vars;
    out.par_chunks_mut(out_dim).enumerate().for_each_init(
        || (evaluator.scratch(), vec![0.0; reduction.acc_dim()]),
        |(scratch, acc), (r, out_row)| {
            reduction.init(acc);
            for t in 0..inner {
                let (i, j) = match axis {
                    Axis::I => (r, t),
                    Axis::J => (t, r),
                };
                let value = evaluator.eval(scratch, |v| {
                    let dim = vars[v].dim;
                    let row = match vars[v].category {
                        Category::I => i,
                        Category::J => j,
                        Category::Param => 0,
                    };
                    &args[v][row * dim..(row + 1) * dim]
                });
                reduction.fold(acc, value, t);
            }
            reduction.finalize(acc, out_row);
        },
    );
    Ok(out)
}
