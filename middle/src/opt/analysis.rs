//! What every e-class knows about its value: dimension, dependence on i/j, the variables it
//! depends on (so `Grad(f, v, e)` of an f free of v is zero), and its value when constant
//! (constant folding happens in `modify`).

use egg::{Analysis, DidMerge, EGraph, Id};
use keops_front::formula::{Deps, Node, Op};
use keops_runtime::ArgSpec;
use ordered_float::OrderedFloat;

pub type FormulaGraph = EGraph<Node, FormulaAnalysis>;

/// The analysis carries the kernel's variables: a `Var` node's dimension and category are theirs.
#[derive(Clone, Debug, Default)]
pub struct FormulaAnalysis {
    pub vars: Vec<ArgSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    pub dim: usize,
    pub deps: Deps,
    /// Bit k: the value may depend on variable k.
    pub vars: u128,
    /// The value, when it is a constant: one number per component.
    pub constant: Option<Vec<f64>>,
}

impl ClassData {
    pub fn is_zero(&self) -> bool {
        self.constant
            .as_ref()
            .is_some_and(|c| c.iter().all(|&x| x == 0.0))
    }

    pub fn is_scalar_constant(&self, value: f64) -> bool {
        self.dim == 1 && self.constant.as_ref().is_some_and(|c| c[0] == value)
    }
}

impl Analysis<Node> for FormulaAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut FormulaGraph, enode: &Node, _id: Id) -> ClassData {
        let child = |id: &Id| &egraph[*id].data;
        if let Op::Var(k) = enode.op {
            let var = &egraph.analysis.vars[k as usize];
            return ClassData {
                dim: var.dim,
                deps: Deps::of_category(var.category),
                vars: 1u128 << k,
                constant: None,
            };
        }
        let dims: Vec<usize> = enode.children.iter().map(|c| child(c).dim).collect();
        let dim = enode
            .op
            .output_dim(&dims)
            .unwrap_or_else(|e| panic!("a rewrite built an ill-typed `{}`: {e}", enode.op.name()));
        let deps = enode
            .children
            .iter()
            .fold(Deps::NONE, |d, c| d.union(child(c).deps));
        let vars = enode.children.iter().fold(0, |v, c| v | child(c).vars);
        let constant = fold_constant(egraph, enode, dim);
        ClassData {
            dim,
            deps,
            vars,
            constant,
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        assert_eq!(
            a.dim, b.dim,
            "a rewrite merged formulas of different dimensions"
        );
        // Equal values: the class depends only on what every member depends on.
        let deps = Deps {
            i: a.deps.i && b.deps.i,
            j: a.deps.j && b.deps.j,
        };
        let vars = a.vars & b.vars;
        let constant = a.constant.clone().or(b.constant.clone());
        let changed_a = deps != a.deps || vars != a.vars || !same_values(&constant, &a.constant);
        let changed_b = deps != b.deps || vars != b.vars || !same_values(&constant, &b.constant);
        a.deps = deps;
        a.vars = vars;
        a.constant = constant;
        DidMerge(changed_a, changed_b)
    }

    fn modify(egraph: &mut FormulaGraph, id: Id) {
        let data = &egraph[id].data;
        let Some(values) = data.constant.clone() else {
            return;
        };
        let node =
            if values.iter().all(|&x| x == 0.0) && !values.iter().any(|x| x.is_sign_negative()) {
                Node::leaf(Op::Zero(data.dim))
            } else if data.dim == 1 && values[0].is_finite() {
                let v = values[0];
                if v.fract() == 0.0 && v.abs() < 1e15 && v != 0.0 {
                    Node::leaf(Op::IntCst(v as i64))
                } else {
                    Node::leaf(Op::Const(OrderedFloat(v)))
                }
            } else {
                return;
            };
        let leaf = egraph.add(node);
        egraph.union(id, leaf);
    }
}

/// Whether two constants are the same numbers, bit for bit: a NaN constant is itself (with
/// `==`, a class folded to NaN would read as changed at every merge, and egg's rebuild would
/// never end).
fn same_values(a: &Option<Vec<f64>>, b: &Option<Vec<f64>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        }
        (None, None) => true,
        _ => false,
    }
}

/// Folds a node whose operands are all constant, with the interpreter's own arithmetic.
fn fold_constant(egraph: &FormulaGraph, enode: &Node, dim: usize) -> Option<Vec<f64>> {
    match &enode.op {
        Op::Const(c) => return Some(vec![c.0]),
        Op::IntCst(k) => return Some(vec![*k as f64]),
        Op::Zero(d) => return Some(vec![0.0; *d]),
        Op::Grad | Op::Diff => return None,
        _ => {}
    }
    let args: Vec<&Vec<f64>> = enode
        .children
        .iter()
        .map(|c| egraph[*c].data.constant.as_ref())
        .collect::<Option<_>>()?;
    // Constants are leaves, and leaves are scalars or zeros: vector values stay formulas.
    if dim != 1 {
        return None;
    }
    let slices: Vec<&[f64]> = args.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0.0; dim];
    keops_front::interp::apply_op(&enode.op, &slices, &mut out);
    Some(out)
}
