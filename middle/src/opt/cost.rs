//! The cost model of extraction: what the generated code pays. A subformula that depends on
//! both i and j is computed for every pair; one that depends on i only, j only, or neither is
//! computed once per i, once per j, or once per call, which is next to nothing per pair. So the
//! cheapest formula is the one that moves work out of the pair loop.

use super::analysis::FormulaGraph;
use crate::target::OpPrices;
use egg::{CostFunction, Id, Language};
use keops_front::formula::{Deps, Formula, Node, Op};

/// Weight of one per-pair operation against one hoisted operation.
pub const PAIR_WEIGHT: u64 = 1000;
/// What a leftover `Grad`/`Diff` costs: more than any formula without one.
pub const UNEXPANDED: u64 = u64::MAX / 4;

/// The work of one node: price times the components it touches, times [`PAIR_WEIGHT`] when it
/// is computed for every pair.
pub fn node_cost(
    prices: &OpPrices,
    op: &Op,
    out_dim: usize,
    operand_dims: &[usize],
    deps: Deps,
) -> u64 {
    let base = prices.price(op);
    if base == UNEXPANDED {
        return UNEXPANDED;
    }
    let width = operand_dims
        .iter()
        .copied()
        .chain([out_dim])
        .max()
        .unwrap_or(1) as u64;
    let work = match op {
        // Products of matrices touch every entry of the larger operand.
        Op::MatVecMult | Op::VecMatMult | Op::TensorProd | Op::SymSqNorm => {
            operand_dims.iter().copied().max().unwrap_or(1).max(out_dim) as u64
        }
        Op::TensorDot(_) => (operand_dims.iter().product::<usize>() as u64).max(out_dim as u64),
        _ => width,
    };
    let per_pair = deps.i && deps.j;
    base * work * if per_pair { PAIR_WEIGHT } else { 1 }
}

/// Extraction cost over an e-graph.
pub struct PairCost<'g> {
    egraph: &'g FormulaGraph,
    prices: &'static OpPrices,
}

impl<'g> PairCost<'g> {
    pub fn new(egraph: &'g FormulaGraph, prices: &'static OpPrices) -> PairCost<'g> {
        PairCost { egraph, prices }
    }
}

impl CostFunction<Node> for PairCost<'_> {
    type Cost = u64;

    fn cost<C>(&mut self, enode: &Node, mut costs: C) -> u64
    where
        C: FnMut(Id) -> u64,
    {
        let eg = self.egraph;
        // Called many times per e-node by the extractor: no allocation.
        let mut dims = [0usize; 3];
        for (d, c) in dims.iter_mut().zip(&enode.children) {
            *d = eg[*c].data.dim;
        }
        let dims = &dims[..enode.children.len()];
        let (out_dim, deps) = match enode.op {
            Op::Var(k) => {
                let v = &eg.analysis.vars[k as usize];
                (v.dim, Deps::of_category(v.category))
            }
            _ => {
                let deps = enode
                    .children
                    .iter()
                    .fold(Deps::NONE, |d, c| d.union(eg[*c].data.deps));
                (enode.op.output_dim(dims).unwrap_or(1), deps)
            }
        };
        let own = node_cost(self.prices, &enode.op, out_dim, dims, deps);
        enode.fold(own, |total, child| total.saturating_add(costs(child)))
    }
}

/// The cost of a formula as code generation sees it: each node once (shared nodes are
/// computed once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormulaCost {
    /// Operations per (i, j) pair.
    pub per_pair: u64,
    /// Operations done once per i, once per j, or once per call.
    pub hoisted: u64,
}

impl FormulaCost {
    /// At the CPU's prices.
    pub fn of(formula: &Formula) -> FormulaCost {
        FormulaCost::priced(formula, &crate::target::prices::CPU)
    }

    pub fn priced(formula: &Formula, prices: &OpPrices) -> FormulaCost {
        let mut cost = FormulaCost::default();
        for (node, info) in formula.nodes.as_ref().iter().zip(&formula.info) {
            let dims: Vec<usize> = node.children.iter().map(|&c| formula.info(c).dim).collect();
            let c = node_cost(prices, &node.op, info.dim, &dims, Deps::NONE);
            if info.deps.i && info.deps.j {
                cost.per_pair = cost.per_pair.saturating_add(c);
            } else {
                cost.hoisted = cost.hoisted.saturating_add(c);
            }
        }
        cost
    }
}

impl std::fmt::Display for FormulaCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} per pair, {} hoisted", self.per_pair, self.hoisted)
    }
}
