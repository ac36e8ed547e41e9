//! Element-wise subformulas evaluated one component at a time, for the loops over components
//! of large dimensions (the wide products' vectors, the Gram products' summed formulas): the
//! same operations as the unrolled code's for that component, on one vector of inner indices.

use super::{built, TileEmitter};
use crate::formula::Value;
use crate::loops::LoopCode;
use inkwell::values::{IntValue, PointerValue};
use keops_front::formula::Op;
use keops_middle::schedule::Level;

impl<'e, 'a, 'ctx> TileEmitter<'e, 'a, 'ctx> {
    /// The values of `nodes` (element-wise operators over variables and constants, in order)
    /// at component `comp`, for row `row` and the inner vector at `v`: each variable's
    /// component `comp` (component 0 of a variable of dimension 1), inner ones as vectors, row
    /// ones and parameters broadcast. Indexed by node; `None` for nodes not in `nodes`.
    pub(super) fn component_values(
        &self,
        nodes: &[usize],
        arg_ptrs: &[PointerValue<'ctx>],
        inner_stride: IntValue<'ctx>,
        (row, comp, v): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    ) -> Vec<Option<Value<'ctx>>> {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let formula = self.formula;
        let mut values: Vec<Option<Value<'ctx>>> = vec![None; formula.len()];
        for &k in nodes {
            let node = &formula.nodes.as_ref()[k];
            let value = match node.op {
                Op::Var(_) => {
                    self.variable_component(k, arg_ptrs, inner_stride, (row, comp, v), lanes)
                }
                ref op => {
                    let operands: Vec<Value<'ctx>> = node
                        .children
                        .iter()
                        .map(|&child| values[usize::from(child)].expect("computed before"))
                        .collect();
                    let slices: Vec<&[Value<'ctx>]> =
                        operands.iter().map(std::slice::from_ref).collect();
                    em.emit(op, &slices, 1, lanes)[0]
                }
            };
            values[k] = Some(value);
        }
        values
    }

    /// Component `c` of the variable at node `k` (component 0 of a variable of dimension 1)
    /// for row `row` and the inner vector at `v`, on `lanes` lanes: an inner variable's
    /// vector, a row variable's or a parameter's number broadcast.
    pub(super) fn variable_component(
        &self,
        k: usize,
        arg_ptrs: &[PointerValue<'ctx>],
        inner_stride: IntValue<'ctx>,
        (row, c, v): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        lanes: u32,
    ) -> Value<'ctx> {
        let formula = self.formula;
        let Op::Var(var) = formula.nodes.as_ref()[k].op else {
            unreachable!("node {k} is a variable")
        };
        let dim = formula.info[k].dim;
        let c = if dim == 1 { self.i64(0) } else { c };
        let base = arg_ptrs[var as usize];
        match self.schedule.levels[k] {
            Level::Inner => self.load(base, self.add(self.mul(c, inner_stride), v), lanes),
            Level::Row => {
                let at = self.add(self.mul(row, self.i64(dim as i64)), c);
                self.em.splat(self.load(base, at, 1), lanes)
            }
            _ => self.em.splat(self.load(base, c, 1), lanes),
        }
    }
}

/// A subformula evaluated with loops over its components ([`keops_middle::schedule::loopable`]):
/// where its variables are read and where its components go.
pub(super) struct LoopedOperand<'a, 'ctx> {
    /// Its nodes, in order, the operand last.
    pub nodes: &'a [usize],
    /// Its components.
    pub dim: usize,
    /// Lanes of its values (1 for a row, the vector's for inner indices).
    pub lanes: u32,
    /// Component `c` of variable node `n` (`c` is 0 for a variable of one component).
    pub leaf: &'a dyn Fn(usize, IntValue<'ctx>) -> Value<'ctx>,
    /// Where component `c` of the operand goes.
    pub store: &'a dyn Fn(IntValue<'ctx>, Value<'ctx>),
    /// A loop counter and an accumulator slot of `lanes` numbers.
    pub counter: PointerValue<'ctx>,
    pub acc: PointerValue<'ctx>,
}

/// What the first pass of [`TileEmitter::emit_looped_operand`] computes: the one-component
/// nodes, and the factor `Rsqrt(SqNorm2(e))` of each `Normalize(e)`.
struct Scalars<'ctx> {
    values: Vec<Option<Value<'ctx>>>,
    normalize: Vec<Option<Value<'ctx>>>,
}

impl<'e, 'a, 'ctx> TileEmitter<'e, 'a, 'ctx> {
    /// Evaluates a looped operand: first its one-component nodes (sums over components as
    /// loops) and its normalisation factors, then a loop storing each of its components. The
    /// code does not grow with the dimension.
    pub(super) fn emit_looped_operand(
        &self,
        function: inkwell::values::FunctionValue<'ctx>,
        op: &LoopedOperand<'_, 'ctx>,
    ) {
        let em = self.em;
        let b = em.builder;
        let formula = self.formula;
        let all = formula.nodes.as_ref();
        let mut scalars = Scalars {
            values: vec![None; formula.len()],
            normalize: vec![None; formula.len()],
        };
        let zero = em.constant(0.0, op.lanes);
        let bound = self.i64(op.dim as i64);
        // A sum over the components, `step(c, total)` adding component c's term.
        let summed = |scalars: &Scalars<'ctx>,
                      step: &dyn Fn(&Scalars<'ctx>, IntValue<'ctx>, Value<'ctx>) -> Value<'ctx>| {
            built(b.build_store(op.acc, zero));
            self.emit_loop(
                function,
                op.counter,
                self.i64(0),
                1,
                |c| self.less(c, bound),
                |c| {
                    let total = built(b.build_load(em.vector_type(op.lanes), op.acc, "acc"))
                        .into_vector_value();
                    built(b.build_store(op.acc, step(scalars, c, total)));
                },
            );
            built(b.build_load(em.vector_type(op.lanes), op.acc, "sum")).into_vector_value()
        };
        for &k in op.nodes {
            let node = &all[k];
            let child = |i: usize| usize::from(node.children[i]);
            if formula.info[k].dim == 1 {
                let value = match &node.op {
                    Op::Var(_) => (op.leaf)(k, self.i64(0)),
                    Op::Sum | Op::SqNorm2 | Op::Norm2 | Op::Scalprod | Op::SqDist => {
                        let kind = node.op.clone();
                        let total = summed(&scalars, &|s, c, total| {
                            let a = self.looped_component(op, s, child(0), c);
                            match kind {
                                Op::Sum => em.add(total, a),
                                Op::Scalprod => {
                                    let b2 = self.looped_component(op, s, child(1), c);
                                    em.fma(a, b2, total)
                                }
                                Op::SqDist => {
                                    let b2 = self.looped_component(op, s, child(1), c);
                                    let d = em.sub(a, b2);
                                    em.fma(d, d, total)
                                }
                                _ => em.fma(a, a, total),
                            }
                        });
                        match node.op {
                            Op::Norm2 => em.intrinsic("llvm.sqrt", &[total]),
                            _ => total,
                        }
                    }
                    other => {
                        let operands: Vec<Value<'ctx>> = node
                            .children
                            .iter()
                            .map(|&c| scalars.values[usize::from(c)].expect("computed before"))
                            .collect();
                        let slices: Vec<&[Value<'ctx>]> =
                            operands.iter().map(std::slice::from_ref).collect();
                        em.emit(other, &slices, 1, op.lanes)[0]
                    }
                };
                scalars.values[k] = Some(value);
            } else if node.op == Op::Normalize {
                let sq = summed(&scalars, &|s, c, total| {
                    let e = self.looped_component(op, s, child(0), c);
                    em.fma(e, e, total)
                });
                // KeOps's Rsqrt(0) = 0, as the unrolled Normalize.
                scalars.normalize[k] = Some(em.emit(&Op::Rsqrt, &[&[sq]], 1, op.lanes)[0]);
            }
        }
        let top = *op.nodes.last().expect("an operand");
        self.emit_loop(
            function,
            op.counter,
            self.i64(0),
            1,
            |c| self.less(c, bound),
            |c| (op.store)(c, self.looped_component(op, &scalars, top, c)),
        );
    }

    /// Component `c` of node `k` of a looped operand (its value for a one-component node).
    fn looped_component(
        &self,
        op: &LoopedOperand<'_, 'ctx>,
        scalars: &Scalars<'ctx>,
        k: usize,
        c: IntValue<'ctx>,
    ) -> Value<'ctx> {
        let em = self.em;
        let formula = self.formula;
        if formula.info[k].dim == 1 {
            return scalars.values[k].expect("computed in the first pass");
        }
        let node = &formula.nodes.as_ref()[k];
        match &node.op {
            Op::Var(_) => (op.leaf)(k, c),
            Op::Normalize => {
                let e = self.looped_component(op, scalars, usize::from(node.children[0]), c);
                em.mul(scalars.normalize[k].expect("computed in the first pass"), e)
            }
            other => {
                let operands: Vec<Value<'ctx>> = node
                    .children
                    .iter()
                    .map(|&child| self.looped_component(op, scalars, usize::from(child), c))
                    .collect();
                let slices: Vec<&[Value<'ctx>]> =
                    operands.iter().map(std::slice::from_ref).collect();
                em.emit(other, &slices, 1, op.lanes)[0]
            }
        }
    }
}
