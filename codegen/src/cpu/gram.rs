//! Blocks of rows, and Gram products ([`GramProduct`]): a pair-level `SqDist(x, y)` or `(x | y)` of a row variable
//! and an inner variable of many components, computed for a block of rows against the whole
//! inner tile before the rows' pair loops, which then read one value per pair from a buffer.
//!
//! ```text
//! per inner tile:  centred copy y' = y - c of the tile's points (c: its first point), |y'|^2
//! per row block:   centred rows x' = x - c, |x'|^2
//!   for each vector of inner indices:
//!     for each component:   one vector load of y', then one FMA per row of the block
//!     SqDist = |x'|^2 + |y'|^2 - 2 <x', y'>, then sum (x - y)^2 where that could be inexact
//! ```
//! Each loaded component feeds a block's worth of FMAs (the direct loop loads one per FMA and
//! one subtraction), and the component loop is a loop: the code's size does not grow with the
//! dimension.
//!
//! **Accuracy.** In the scalar-product form the absolute error of a squared distance is
//! bounded by about `2 (D + 2) u (|x'|^2 + |y'|^2)` (`u` the unit roundoff), against
//! `(D / 4 + 2) u |x - y|^2` for the direct sum. Centring on a point of the tile keeps the
//! norms near the squared distances of the cloud; a pair whose result is below
//! [`CLOSE_FRACTION`] of `|x'|^2 + |y'|^2` (or not a number: infinities, overflow) is
//! recomputed directly, so every squared distance keeps a relative error within about 16
//! times the direct sum's bound. A vector of lanes with one such pair is recomputed whole.

use super::components::LoopedOperand;
use super::{built, NodeValues, Params, TileEmitter};
use crate::formula::Value;
use crate::loops::LoopCode;
use crate::reduce::reduce_or;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use keops_front::formula::Op;
use keops_middle::schedule::{ComponentSum, GramKind, GramProduct, Level};

/// Pairs whose scalar-product-form squared distance is below this fraction of the centred
/// norms' sum are recomputed directly (see the module documentation).
const CLOSE_FRACTION: f64 = 0.125;

/// The stack buffers and loop counters of one Gram product.
#[derive(Clone, Copy)]
struct ProductSlots<'ctx> {
    /// The product's values for a block of rows: `gram_rows x inner_tile`.
    values: PointerValue<'ctx>,
    /// `SqDist`: the tile's centred inner points (`dim x inner_tile`) and their squared norms.
    centred: Option<(PointerValue<'ctx>, PointerValue<'ctx>)>,
    /// The block's rows (`gram_rows` rows of [`row_stride`] numbers; `SqDist`: centred) and
    /// their squared norms (`SqDist`).
    rows: (PointerValue<'ctx>, PointerValue<'ctx>),
    /// `SqDist`: the tile's centre, its first inner point (`dim` components).
    centre: Option<PointerValue<'ctx>>,
}

/// Stack slots of a tile function's Gram products.
#[derive(Clone)]
pub(super) struct GramSlots<'ctx> {
    products: Vec<ProductSlots<'ctx>>,
    /// The first row of the current block.
    block_start: PointerValue<'ctx>,
    /// Loop counters: components, vectors of inner indices, rows of the block, and the
    /// direct recomputation's components.
    component: PointerValue<'ctx>,
    vector: PointerValue<'ctx>,
    row: PointerValue<'ctx>,
    exact_component: PointerValue<'ctx>,
    /// One accumulator vector per row of a block, and the direct recomputation's.
    acc: Vec<PointerValue<'ctx>>,
    exact_acc: PointerValue<'ctx>,
    /// One number: the row side's sums of a looped operand.
    narrow_acc: PointerValue<'ctx>,
}

impl<'e, 'a, 'ctx> TileEmitter<'e, 'a, 'ctx> {
    /// Allocates the Gram products' buffers (in the entry block), if there are any.
    pub(super) fn allocate_gram(&self) -> Option<GramSlots<'ctx>> {
        let sched = self.schedule;
        if sched.gram.is_empty() && sched.wide.is_none() {
            return None;
        }
        let em = self.em;
        let b = em.builder;
        let i64t = em.context.i64_type();
        let ft = em.float_type();
        let tile = sched.inner_tile as i64;
        let rows = sched.gram_rows as i64;
        let array = |len: i64, name: &str| built(b.build_array_alloca(ft, self.i64(len), name));
        let products = sched
            .gram
            .iter()
            .map(|g| {
                let centred = g.kind == GramKind::SqDist;
                ProductSlots {
                    values: array(rows * tile, "gram_values"),
                    centred: centred.then(|| {
                        (
                            array(g.dim as i64 * tile, "gram_inner"),
                            array(tile, "gram_inner_norms"),
                        )
                    }),
                    rows: (
                        array(rows * row_stride(g, sched.lanes), "gram_rows"),
                        array(rows, "gram_row_norms"),
                    ),
                    centre: centred.then(|| array(g.dim as i64, "gram_centre")),
                }
            })
            .collect();
        let counter = |name: &str| built(b.build_alloca(i64t, name));
        let vector = em.vector_type(sched.lanes);
        Some(GramSlots {
            products,
            block_start: counter("gram_block"),
            component: counter("gram_component"),
            vector: counter("gram_vector"),
            row: counter("gram_row"),
            exact_component: counter("gram_exact_component"),
            acc: (0..rows)
                .map(|_| built(b.build_alloca(vector, "gram_acc")))
                .collect(),
            exact_acc: built(b.build_alloca(vector, "gram_exact_acc")),
            narrow_acc: built(b.build_alloca(em.vector_type(1), "gram_narrow_acc")),
        })
    }

    /// `jt` rounded up to the vectors that cover `[jt, jt_end)` (the inputs are padded).
    pub(super) fn vectors_end(&self, jt: IntValue<'ctx>, jt_end: IntValue<'ctx>) -> IntValue<'ctx> {
        let lanes = self.schedule.lanes as i64;
        let len = self.sub(jt_end, jt);
        let rounded = built(self.em.builder.build_int_signed_div(
            self.add(len, self.i64(lanes - 1)),
            self.i64(lanes),
            "vectors",
        ));
        self.add(jt, self.mul(rounded, self.i64(lanes)))
    }

    /// The component loops' bound: the dimension, in a form LLVM cannot fold (the stride is
    /// never negative), so that it does not unroll the loops whole (measured: a fully unrolled
    /// D = 32 product took 5x the compile time and ran slower).
    fn component_bound(&self, g: &GramProduct, inner_stride: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = self.em.builder;
        let negative = self.less(inner_stride, self.i64(0));
        built(b.build_select(negative, self.i64(0), self.i64(g.dim as i64), "components"))
            .into_int_value()
    }

    fn load_scalar(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>) -> Value<'ctx> {
        self.load(base, index, 1)
    }

    pub(super) fn load_vector_slot(&self, slot: PointerValue<'ctx>) -> Value<'ctx> {
        let em = self.em;
        built(
            em.builder
                .build_load(em.vector_type(self.schedule.lanes), slot, "acc"),
        )
        .into_vector_value()
    }

    /// Per inner tile: the inner operands computed in loops (`looped` products) into the
    /// tile's stack buffer, and each `SqDist` product's centred copy of the tile's inner points
    /// and their squared norms.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_gram_tile(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        inner_stride: IntValue<'ctx>,
        jt: IntValue<'ctx>,
        jt_end: IntValue<'ctx>,
        scratch: Option<PointerValue<'ctx>>,
    ) {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let tile = self.schedule.inner_tile as i64;
        let end = self.vectors_end(jt, jt_end);
        for g in self.schedule.gram.iter().filter(|g| g.looped) {
            let Some(n) = g.inner_operand else {
                continue;
            };
            let nodes = keops_middle::schedule::subformula(self.formula, n);
            let slot = self.schedule.scratch_slots[n].expect("a stored inner part") as i64;
            let scratch = scratch.expect("a tile buffer");
            self.emit_vector_loop(function, slots.vector, jt, end, |v| {
                // No row variable in an inner operand: the row is never read.
                let leaf = |m: usize, c: IntValue<'ctx>| {
                    self.variable_component(m, arg_ptrs, inner_stride, (v, c, v), lanes)
                };
                let at = self.sub(v, jt);
                let store = |c: IntValue<'ctx>, x: Value<'ctx>| {
                    let first = self.mul(self.add(c, self.i64(slot)), self.i64(tile));
                    self.store(scratch, self.add(first, at), x)
                };
                self.emit_looped_operand(
                    function,
                    &LoopedOperand {
                        nodes: &nodes,
                        dim: g.dim,
                        lanes,
                        leaf: &leaf,
                        store: &store,
                        counter: slots.component,
                        acc: slots.exact_acc,
                    },
                );
            });
        }
        for (g, product) in self.schedule.gram.iter().zip(&slots.products) {
            let Some((centred, norms)) = product.centred else {
                continue;
            };
            let y = arg_ptrs[g.inner_var];
            let bound = self.component_bound(g, inner_stride);
            self.emit_vector_loop(function, slots.vector, jt, end, |v| {
                self.store(norms, self.sub(v, jt), em.constant(0.0, lanes))
            });
            self.emit_loop(
                function,
                slots.component,
                self.i64(0),
                1,
                |c| self.less(c, bound),
                |c| {
                    let row = self.mul(c, inner_stride);
                    let first = self.load_scalar(y, self.add(row, jt));
                    if let Some(centre) = product.centre {
                        self.store(centre, c, first);
                    }
                    let centre = em.splat(first, lanes);
                    let into = self.mul(c, self.i64(tile));
                    self.emit_vector_loop(function, slots.vector, jt, end, |v| {
                        let x = em.sub(self.load(y, self.add(row, v), lanes), centre);
                        let at = self.sub(v, jt);
                        self.store(centred, self.add(into, at), x);
                        let n = em.fma(x, x, self.load(norms, at, lanes));
                        self.store(norms, at, n);
                    });
                },
            );
        }
    }

    /// At the first row `r` of a block (`r - row_start` a multiple of `gram_rows`): the block's
    /// Gram products.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gram_block_if_first_row(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        params: &Params<'ctx>,
        r: IntValue<'ctx>,
        (jt, jt_end): (IntValue<'ctx>, IntValue<'ctx>),
        computed: (&NodeValues<'ctx>, Option<PointerValue<'ctx>>),
    ) {
        let em = self.em;
        let b = em.builder;
        let ctx = em.context;
        let offset = self.sub(r, params.row_start);
        let within = built(b.build_int_signed_rem(
            offset,
            self.i64(self.schedule.gram_rows as i64),
            "within_block",
        ));
        let first = built(b.build_int_compare(IntPredicate::EQ, within, self.i64(0), "first"));
        let block = ctx.append_basic_block(function, "gram_block");
        let rows = ctx.append_basic_block(function, "gram_block_done");
        built(b.build_conditional_branch(first, block, rows));
        b.position_at_end(block);
        built(b.build_store(slots.block_start, r));
        self.emit_gram_block(
            function,
            slots,
            arg_ptrs,
            params.inner_stride,
            r,
            params.row_end,
            jt,
            jt_end,
            computed,
        );
        built(b.build_unconditional_branch(rows));
        b.position_at_end(rows);
    }

    /// Per block of rows `[rb, rb + gram_rows)` (rows past `row_end` repeat the last one):
    /// every product's values against the tile `[jt, jt_end)`, into its buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_gram_block(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        inner_stride: IntValue<'ctx>,
        rb: IntValue<'ctx>,
        row_end: IntValue<'ctx>,
        jt: IntValue<'ctx>,
        jt_end: IntValue<'ctx>,
        (call, scratch): (&NodeValues<'ctx>, Option<PointerValue<'ctx>>),
    ) {
        for (g, product) in self.schedule.gram.iter().zip(&slots.products) {
            if let Some(sum) = &g.components {
                self.component_sums(
                    function,
                    slots,
                    (g, sum),
                    product.values,
                    (arg_ptrs, inner_stride),
                    (rb, row_end),
                    (jt, jt_end),
                );
                continue;
            }
            match &g.row_operand {
                Some(nodes) => self.computed_rows(
                    function,
                    slots,
                    g,
                    *product,
                    (nodes, call, arg_ptrs),
                    (rb, row_end),
                ),
                None => self.centre_rows(
                    function,
                    slots,
                    g,
                    *product,
                    arg_ptrs[g.row_var],
                    (rb, row_end),
                ),
            }
            self.gram_vectors(
                function,
                slots,
                g,
                *product,
                arg_ptrs,
                inner_stride,
                (rb, row_end),
                jt,
                jt_end,
                scratch,
            );
        }
    }

    /// A row operand computed from the row's variables (`Normalize(x)`), for each row of the
    /// block, into the block's row copies: the row code's operations, once per row.
    fn computed_rows(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        g: &GramProduct,
        product: ProductSlots<'ctx>,
        (nodes, call, arg_ptrs): (&[usize], &NodeValues<'ctx>, &[PointerValue<'ctx>]),
        (rb, row_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let em = self.em;
        let formula = self.formula;
        let lanes = self.schedule.lanes;
        self.for_each_block_row(function, slots.row, |k| {
            let row = self.block_row(rb, k, row_end);
            let into = self.mul(k, self.i64(row_stride(g, lanes)));
            if g.looped {
                // No inner variable in a row operand: the inner vector is never read.
                let leaf = |m: usize, c: IntValue<'ctx>| {
                    self.variable_component(m, arg_ptrs, row, (row, c, row), 1)
                };
                let store = |c: IntValue<'ctx>, x: Value<'ctx>| {
                    self.store(product.rows.0, self.add(into, c), x)
                };
                self.emit_looped_operand(
                    function,
                    &LoopedOperand {
                        nodes,
                        dim: g.dim,
                        lanes: 1,
                        leaf: &leaf,
                        store: &store,
                        counter: slots.component,
                        acc: slots.narrow_acc,
                    },
                );
                return;
            }
            let mut narrow = call.narrow.clone();
            for &n in nodes {
                if narrow[n].is_some() {
                    continue;
                }
                let node = &formula.nodes.as_ref()[n];
                let dim = formula.info[n].dim;
                let value: Vec<Value<'ctx>> = match node.op {
                    Op::Var(var) => {
                        let base = arg_ptrs[var as usize];
                        let first = match self.schedule.levels[n] {
                            Level::Row => self.mul(row, self.i64(dim as i64)),
                            _ => self.i64(0),
                        };
                        (0..dim)
                            .map(|c| self.load(base, self.add(first, self.i64(c as i64)), 1))
                            .collect()
                    }
                    ref op => {
                        let operands: Vec<&[Value<'ctx>]> = node
                            .children
                            .iter()
                            .map(|&c| narrow[usize::from(c)].as_deref().expect("computed"))
                            .collect();
                        em.emit(op, &operands, dim, 1)
                    }
                };
                narrow[n] = Some(value);
            }
            let operand = narrow[*nodes.last().expect("an operand")]
                .as_ref()
                .expect("computed above");
            for (c, &x) in operand.iter().enumerate() {
                self.store(product.rows.0, self.add(into, self.i64(c as i64)), x);
            }
        });
    }

    /// A [`ComponentSum`] for the block's rows against every vector of the tile: one
    /// accumulator per row, a loop over the components evaluating the summed formulas (each
    /// inner operand loaded once for all the rows), the sums into the product's buffer.
    #[allow(clippy::too_many_arguments)]
    fn component_sums(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        (g, sum): (&GramProduct, &ComponentSum),
        values: PointerValue<'ctx>,
        (arg_ptrs, inner_stride): (&[PointerValue<'ctx>], IntValue<'ctx>),
        (rb, row_end): (IntValue<'ctx>, IntValue<'ctx>),
        (jt, jt_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let em = self.em;
        let b = em.builder;
        let lanes = self.schedule.lanes;
        let tile = self.schedule.inner_tile as i64;
        let end = self.vectors_end(jt, jt_end);
        let bound = self.component_bound(g, inner_stride);
        let rows: Vec<IntValue<'ctx>> = (0..self.schedule.gram_rows as i64)
            .map(|k| self.block_row(rb, self.i64(k), row_end))
            .collect();
        self.emit_vector_loop(function, slots.vector, jt, end, |v| {
            let at = self.sub(v, jt);
            for &acc in &slots.acc {
                built(b.build_store(acc, em.constant(0.0, lanes)));
            }
            self.emit_loop(
                function,
                slots.component,
                self.i64(0),
                1,
                |c| self.less(c, bound),
                |c| {
                    for (&acc, &row) in slots.acc.iter().zip(&rows) {
                        let values =
                            self.component_values(&sum.nodes, arg_ptrs, inner_stride, (row, c, v));
                        let operand = |k: usize| values[sum.operands[k]].expect("computed");
                        let total = self.load_vector_slot(acc);
                        let total = match sum.op {
                            Op::Sum => em.add(total, operand(0)),
                            Op::SqNorm2 => em.fma(operand(0), operand(0), total),
                            Op::Scalprod => em.fma(operand(0), operand(1), total),
                            _ => {
                                let d = em.sub(operand(0), operand(1));
                                em.fma(d, d, total)
                            }
                        };
                        built(b.build_store(acc, total));
                    }
                },
            );
            for (k, &acc) in slots.acc.iter().enumerate() {
                let into = self.add(self.i64(k as i64 * tile), at);
                self.store(values, into, self.load_vector_slot(acc));
            }
        });
    }

    /// The block's rows, copied (a `SqDist` product's moved by the tile's centre, with their
    /// squared norms): whole vectors of components, then the remaining components one by one.
    fn centre_rows(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        g: &GramProduct,
        product: ProductSlots<'ctx>,
        x: PointerValue<'ctx>,
        (rb, row_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let (centred, norms) = product.rows;
        let em = self.em;
        let b = em.builder;
        let lanes = self.schedule.lanes;
        let dim = self.i64(g.dim as i64);
        let whole = (g.dim / lanes as usize * lanes as usize) as i64;
        self.for_each_block_row(function, slots.row, |k| {
            let first = self.mul(self.block_row(rb, k, row_end), dim);
            let into = self.mul(k, self.i64(row_stride(g, lanes)));
            built(b.build_store(slots.exact_acc, em.constant(0.0, lanes)));
            self.emit_loop(
                function,
                slots.component,
                self.i64(0),
                lanes as i64,
                |c| self.less(c, self.i64(whole)),
                |c| {
                    let v = self.load(x, self.add(first, c), lanes);
                    let v = match product.centre {
                        Some(centre) => em.sub(v, self.load(centre, c, lanes)),
                        None => v,
                    };
                    self.store(centred, self.add(into, c), v);
                    let n = em.fma(v, v, self.load_vector_slot(slots.exact_acc));
                    built(b.build_store(slots.exact_acc, n));
                },
            );
            let partial = self.load_vector_slot(slots.exact_acc);
            let lane = |l: u64| {
                let index = em.context.i64_type().const_int(l, false);
                let x = built(b.build_extract_element(partial, index, "lane"));
                em.from_scalar(x.into_float_value())
            };
            let lane_sums: Vec<Value<'ctx>> = (0..lanes as u64).map(lane).collect();
            self.store(norms, k, em.sum(&lane_sums));
            self.emit_loop(
                function,
                slots.component,
                self.i64(whole),
                1,
                |c| self.less(c, dim),
                |c| {
                    let v = self.load_scalar(x, self.add(first, c));
                    let v = match product.centre {
                        Some(centre) => em.sub(v, self.load_scalar(centre, c)),
                        None => v,
                    };
                    self.store(centred, self.add(into, c), v);
                    let n = em.fma(v, v, self.load_scalar(norms, k));
                    self.store(norms, k, n);
                },
            );
        });
    }

    /// Row `rb + k` of a block, or the last row when that is past `row_end`.
    /// `for k in 0..gram_rows { body(k) }`: the rows of a block, `k` counted in `counter`.
    fn for_each_block_row(
        &self,
        function: FunctionValue<'ctx>,
        counter: PointerValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>),
    ) {
        let rows = self.i64(self.schedule.gram_rows as i64);
        self.emit_loop(
            function,
            counter,
            self.i64(0),
            1,
            |k| self.less(k, rows),
            body,
        );
    }

    fn block_row(
        &self,
        rb: IntValue<'ctx>,
        k: IntValue<'ctx>,
        row_end: IntValue<'ctx>,
    ) -> IntValue<'ctx> {
        let r = self.add(rb, k);
        let last = self.sub(row_end, self.i64(1));
        built(
            self.em
                .builder
                .build_select(self.less(r, row_end), r, last, "gram_row"),
        )
        .into_int_value()
    }

    /// The register-tiled product of the block's rows with every vector of the tile.
    #[allow(clippy::too_many_arguments)]
    fn gram_vectors(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        g: &GramProduct,
        product: ProductSlots<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        inner_stride: IntValue<'ctx>,
        (rb, row_end): (IntValue<'ctx>, IntValue<'ctx>),
        jt: IntValue<'ctx>,
        jt_end: IntValue<'ctx>,
        scratch: Option<PointerValue<'ctx>>,
    ) {
        let em = self.em;
        let b = em.builder;
        let lanes = self.schedule.lanes;
        let tile = self.schedule.inner_tile as i64;
        let (x, y) = (arg_ptrs[g.row_var], arg_ptrs[g.inner_var]);
        let end = self.vectors_end(jt, jt_end);
        let bound = self.component_bound(g, inner_stride);
        let zero = em.constant(0.0, lanes);
        self.emit_vector_loop(function, slots.vector, jt, end, |v| {
            let at = self.sub(v, jt);
            for &acc in &slots.acc {
                built(b.build_store(acc, zero));
            }
            self.emit_loop(
                function,
                slots.component,
                self.i64(0),
                1,
                |c| self.less(c, bound),
                |c| {
                    let column = match (product.centred, g.inner_operand) {
                        (Some((centred, _)), _) => {
                            self.load(centred, self.add(self.mul(c, self.i64(tile)), at), lanes)
                        }
                        // A computed inner operand, in the tile's stack buffer.
                        (None, Some(n)) => {
                            let slot = self.schedule.scratch_slots[n].expect("a stored inner part");
                            let scratch = scratch.expect("a tile buffer");
                            let first =
                                self.mul(self.add(c, self.i64(slot as i64)), self.i64(tile));
                            self.load(scratch, self.add(first, at), lanes)
                        }
                        (None, None) => self.load(y, self.add(self.mul(c, inner_stride), v), lanes),
                    };
                    for (k, &acc) in slots.acc.iter().enumerate() {
                        let first = self.i64(k as i64 * row_stride(g, lanes));
                        let xs = self.load_scalar(product.rows.0, self.add(first, c));
                        let sum = em.fma(em.splat(xs, lanes), column, self.load_vector_slot(acc));
                        built(b.build_store(acc, sum));
                    }
                },
            );
            let mut any_close: Option<Value<'ctx>> = None;
            for (k, &acc) in slots.acc.iter().enumerate() {
                let into = self.add(self.i64(k as i64 * tile), at);
                let dot = self.load_vector_slot(acc);
                let (Some((_, inner_norms)), Some((_, row_norms))) =
                    (product.centred, Some(product.rows))
                else {
                    self.store(product.values, into, dot);
                    continue;
                };
                let norms = self.centred_norms(inner_norms, row_norms, self.i64(k as i64), at);
                let sq = em.fma(em.constant(-2.0, lanes), dot, norms);
                let negative = em.compare(FloatPredicate::OLT, sq, zero);
                let sq = em.select(negative, zero, sq);
                self.store(product.values, into, sq);
                let close = self.close_pairs(sq, norms);
                any_close = Some(match any_close {
                    None => close,
                    Some(c) => built(b.build_or(c, close, "any_close")),
                });
            }
            // One loop over the rows for the direct recomputation, rather than one copy
            // per row, entered when a row of the block needs it: it rarely runs.
            if let (Some((_, inner_norms)), Some((_, row_norms)), Some(any_close)) =
                (product.centred, Some(product.rows), any_close)
            {
                let ctx = em.context;
                let rows_direct = ctx.append_basic_block(function, "gram_close_rows");
                let done = ctx.append_basic_block(function, "gram_close_rows_done");
                let any = reduce_or(em, any_close);
                built(b.build_conditional_branch(any, rows_direct, done));
                b.position_at_end(rows_direct);
                self.for_each_block_row(function, slots.row, |k| {
                    let into = self.add(self.mul(k, self.i64(tile)), at);
                    let sq = self.load(product.values, into, lanes);
                    let norms = self.centred_norms(inner_norms, row_norms, k, at);
                    let close = self.close_pairs(sq, norms);
                    let row = self.block_row(rb, k, row_end);
                    self.direct_sqdist_if(
                        function,
                        slots,
                        g,
                        reduce_or(em, close),
                        (x, y),
                        row,
                        v,
                        inner_stride,
                        (product.values, into),
                    );
                });
                built(b.build_unconditional_branch(done));
                b.position_at_end(done);
            }
        });
    }

    /// The lanes whose squared distance `sq` in the scalar-product form may have lost
    /// accuracy, given the centred norms' sum: small against it, or not a number.
    fn close_pairs(&self, sq: Value<'ctx>, norms: Value<'ctx>) -> Value<'ctx> {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let bound = em.mul(norms, em.constant(CLOSE_FRACTION, lanes));
        let close = em.compare(FloatPredicate::ULT, sq, bound);
        // Norms that overflowed give `inf` where the direct sum may be finite.
        let overflow = em.compare(
            FloatPredicate::OEQ,
            norms,
            em.constant(f64::INFINITY, lanes),
        );
        built(em.builder.build_or(close, overflow, "close"))
    }

    /// `|x'_k|^2 + |y'|^2` for row `k` of the block and the vector at `at` in the tile.
    fn centred_norms(
        &self,
        inner_norms: PointerValue<'ctx>,
        row_norms: PointerValue<'ctx>,
        k: IntValue<'ctx>,
        at: IntValue<'ctx>,
    ) -> Value<'ctx> {
        let lanes = self.schedule.lanes;
        self.em.add(
            self.em.splat(self.load_scalar(row_norms, k), lanes),
            self.load(inner_norms, at, lanes),
        )
    }

    /// When `any` holds: `sum_c (x[row, c] - y[c, v..])^2` into `values[into..]`.
    #[allow(clippy::too_many_arguments)]
    fn direct_sqdist_if(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        g: &GramProduct,
        any: IntValue<'ctx>,
        (x, y): (PointerValue<'ctx>, PointerValue<'ctx>),
        row: IntValue<'ctx>,
        v: IntValue<'ctx>,
        inner_stride: IntValue<'ctx>,
        (values, into): (PointerValue<'ctx>, IntValue<'ctx>),
    ) {
        let em = self.em;
        let b = em.builder;
        let ctx = em.context;
        let lanes = self.schedule.lanes;
        let dim = self.i64(g.dim as i64);
        let direct = ctx.append_basic_block(function, "gram_direct");
        let done = ctx.append_basic_block(function, "gram_direct_done");
        built(b.build_conditional_branch(any, direct, done));
        b.position_at_end(direct);
        built(b.build_store(slots.exact_acc, em.constant(0.0, lanes)));
        let first = self.mul(row, dim);
        let bound = self.component_bound(g, inner_stride);
        self.emit_loop(
            function,
            slots.exact_component,
            self.i64(0),
            1,
            |c| self.less(c, bound),
            |c| {
                let xs = em.splat(self.load_scalar(x, self.add(first, c)), lanes);
                let ys = self.load(y, self.add(self.mul(c, inner_stride), v), lanes);
                let d = em.sub(xs, ys);
                let s = em.fma(d, d, self.load_vector_slot(slots.exact_acc));
                built(b.build_store(slots.exact_acc, s));
            },
        );
        self.store(values, into, self.load_vector_slot(slots.exact_acc));
        built(b.build_unconditional_branch(done));
        b.position_at_end(done);
    }

    /// The first row of the current block.
    pub(super) fn block_first_row(&self, slots: &GramSlots<'ctx>) -> IntValue<'ctx> {
        let i64t = self.em.context.i64_type();
        built(self.em.builder.build_load(i64t, slots.block_start, "block")).into_int_value()
    }

    /// Where row `r` and the vector at `jv` are in a block's `gram_rows x inner_tile` buffer.
    pub(super) fn block_offset(
        &self,
        slots: &GramSlots<'ctx>,
        r: IntValue<'ctx>,
        jv: IntValue<'ctx>,
        jt: IntValue<'ctx>,
    ) -> IntValue<'ctx> {
        let rb = self.block_first_row(slots);
        let tile = self.i64(self.schedule.inner_tile as i64);
        self.add(self.mul(self.sub(r, rb), tile), self.sub(jv, jt))
    }

    /// Pair code's values of the Gram products for row `r` and the vector at `jv`.
    pub(super) fn load_gram(
        &self,
        values: &mut [Option<Vec<Value<'ctx>>>],
        slots: &GramSlots<'ctx>,
        r: IntValue<'ctx>,
        jv: IntValue<'ctx>,
        jt: IntValue<'ctx>,
    ) {
        let at = self.block_offset(slots, r, jv, jt);
        for (g, product) in self.schedule.gram.iter().zip(&slots.products) {
            values[g.node] = Some(vec![self.load(product.values, at, self.schedule.lanes)]);
        }
    }
}

/// Numbers between two rows of a block's copy: a vector more than the dimension, so that rows
/// of 4 KiB (dimension 1024 in f32) do not all fall in one set of the L1 cache (measured: the
/// Gram product at dimension 1024 ran at half its speed at dimension 256 without it).
fn row_stride(g: &GramProduct, lanes: u32) -> i64 {
    (g.dim + lanes as usize) as i64
}
