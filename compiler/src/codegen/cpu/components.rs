//! Element-wise subformulas evaluated one component at a time, for the loops over components
//! of large dimensions (the wide products' vectors, the Gram products' summed formulas): the
//! same operations as the unrolled code's for that component, on one vector of inner indices.

use super::TileEmitter;
use crate::codegen::formula::Value;
use crate::formula::Op;
use crate::schedule::Level;
use inkwell::values::{IntValue, PointerValue};

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
            let dim = formula.info[k].dim;
            let c = if dim == 1 { self.i64(0) } else { comp };
            let value = match node.op {
                Op::Var(var) => {
                    let base = arg_ptrs[var as usize];
                    match self.schedule.levels[k] {
                        Level::Inner => {
                            self.load(base, self.add(self.mul(c, inner_stride), v), lanes)
                        }
                        Level::Row => {
                            let at = self.add(self.mul(row, self.i64(dim as i64)), c);
                            em.splat(self.load(base, at, 1), lanes)
                        }
                        _ => em.splat(self.load(base, c, 1), lanes),
                    }
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
}
