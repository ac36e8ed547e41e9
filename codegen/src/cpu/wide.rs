//! The wide product ([`keops_middle::schedule::WideProduct`]): `Sum_Reduction(s * b)` with `b` an
//! inner variable of many components. The pair code stores the scalar `s` for a block of rows
//! against the inner tile (instead of folding `s * b` into per-lane accumulators, one per
//! component); after the block's last row, a register-tiled product adds
//! `sum_j s[r, j] b[j, c]` into the rows' f64 accumulators:
//!
//! ```text
//! for each group of 4 rows of the block, each group of 4 components of b:
//!   16 lane accumulators := 0
//!   for each vector of inner indices: 4 loads of s, 4 of b, 16 FMAs
//!   each accumulator's lanes summed (a pairwise tree), added in f64 to its row and component
//! ```
//! As elsewhere, lanes accumulate in the element type over one inner tile and are merged in
//! f64. The loops over components keep the code's size independent of `b`'s dimension, and
//! the accumulators' size too, so any dimension runs.

use super::gram::GramSlots;
use super::{built, Params, TileEmitter};
use crate::formula::Value;
use crate::loops::LoopCode;
use crate::reduce::{rescale_factor, shifted_exp_term};
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use keops_middle::schedule::WideKind;

/// Rows and components of the register tile.
const TILE_ROWS: usize = 4;
const TILE_COMPONENTS: usize = 4;
// A block's rows come in whole groups of the register tile's rows: the scalars read for rows
// past the block stay inside its buffer.
const _: () = assert!(keops_middle::schedule::GRAM_ROWS.is_multiple_of(TILE_ROWS));

/// Stack slots of a wide product.
#[derive(Clone)]
pub(super) struct WideSlots<'ctx> {
    /// The scalar factor for a block of rows: `gram_rows x inner_tile`.
    scalars: PointerValue<'ctx>,
    /// Loop counters: groups of rows, groups of components, vectors of inner indices.
    row_group: PointerValue<'ctx>,
    component_group: PointerValue<'ctx>,
    vector: PointerValue<'ctx>,
    /// The softmax family's loop over the block's rows.
    row: PointerValue<'ctx>,
    /// `TILE_ROWS x TILE_COMPONENTS` lane accumulators.
    acc: Vec<PointerValue<'ctx>>,
}

/// What a block's product reads throughout: the function, its slots and arguments, the
/// block's rows `[rb, block_end)`, the inner tile `(jt, whole_end, jt_end)` (`whole_end`: the
/// start of its last, partial vector), the rows' accumulator layout `(acc_dim, first_sum)`.
struct WideBlock<'s, 'ctx> {
    function: FunctionValue<'ctx>,
    wide: &'s WideSlots<'ctx>,
    arg_ptrs: &'s [PointerValue<'ctx>],
    params: &'s Params<'ctx>,
    rows: (IntValue<'ctx>, IntValue<'ctx>),
    inner: (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    /// The inner tile's length, the stride of the stored scalars' rows.
    tile: IntValue<'ctx>,
    /// The vector's dimension.
    dim: IntValue<'ctx>,
    acc: (i64, i64),
    components_per_tile: usize,
    zero: Value<'ctx>,
}

impl<'e, 'a, 'ctx> TileEmitter<'e, 'a, 'ctx> {
    /// Allocates the wide product's buffers (in the entry block), if the schedule has one.
    pub(super) fn allocate_wide(&self) -> Option<WideSlots<'ctx>> {
        self.schedule.wide.as_ref()?;
        let em = self.em;
        let b = em.builder;
        let i64t = em.context.i64_type();
        let len = (self.schedule.gram_rows * self.schedule.inner_tile) as i64;
        let vector = em.vector_type(self.schedule.lanes);
        Some(WideSlots {
            scalars: built(b.build_array_alloca(em.float_type(), self.i64(len), "wide_scalars")),
            row_group: built(b.build_alloca(i64t, "wide_rows")),
            component_group: built(b.build_alloca(i64t, "wide_components")),
            vector: built(b.build_alloca(i64t, "wide_vector")),
            row: built(b.build_alloca(i64t, "wide_row")),
            acc: (0..TILE_ROWS * TILE_COMPONENTS)
                .map(|_| built(b.build_alloca(vector, "wide_acc")))
                .collect(),
        })
    }

    /// Pair code's end with a wide product: the scalar factor of row `r` and the vector at
    /// `jv` (masked-off lanes 0) into the block's buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_wide_scalar(
        &self,
        slots: &GramSlots<'ctx>,
        wide: &WideSlots<'ctx>,
        scalar: Value<'ctx>,
        mask: Option<Value<'ctx>>,
        r: IntValue<'ctx>,
        jv: IntValue<'ctx>,
        jt: IntValue<'ctx>,
    ) {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let scalar = match mask {
            // Masked-off lanes add nothing: 0 to a sum, exp(-inf) = 0 to a softmax.
            Some(m) => {
                let shifted = self.schedule.wide.as_ref().is_some_and(|w| w.shifted);
                let nothing = if shifted { f64::NEG_INFINITY } else { 0.0 };
                em.select(m, scalar, em.constant(nothing, lanes))
            }
            None => scalar,
        };
        let at = self.block_offset(slots, r, jv, jt);
        self.store(wide.scalars, at, scalar);
    }

    /// After row `r`, when it ends its block: the block's products with the tile's `b`, added
    /// into the rows' accumulators.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wide_block_if_last_row(
        &self,
        function: FunctionValue<'ctx>,
        slots: &GramSlots<'ctx>,
        wide: &WideSlots<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        params: &Params<'ctx>,
        r: IntValue<'ctx>,
        (jt, jt_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let product = self.schedule.wide.as_ref().expect("a wide product");
        let em = self.em;
        let b = em.builder;
        let ctx = em.context;
        let lanes = self.schedule.lanes;
        let tile = self.i64(self.schedule.inner_tile as i64);
        let dim = self.i64(product.dim as i64);
        let rb = self.block_first_row(slots);
        let next = self.add(rb, self.i64(self.schedule.gram_rows as i64));
        let block_end = built(b.build_select(
            self.less(next, params.row_end),
            next,
            params.row_end,
            "block_end",
        ))
        .into_int_value();
        let last = built(b.build_int_compare(
            IntPredicate::EQ,
            self.add(r, self.i64(1)),
            block_end,
            "last_row",
        ));
        let product_block = ctx.append_basic_block(function, "wide_block");
        let done = ctx.append_basic_block(function, "wide_block_done");
        built(b.build_conditional_branch(last, product_block, done));
        b.position_at_end(product_block);

        let end = self.vectors_end(jt, jt_end);
        // The start of the last, partial vector of the tile (or its end).
        let whole_end = {
            let len = self.sub(jt_end, jt);
            let lanes_i = self.i64(lanes as i64);
            let whole = built(b.build_int_signed_div(len, lanes_i, "whole"));
            self.add(jt, self.mul(whole, lanes_i))
        };
        let rows_in_block = self.sub(block_end, rb);
        let zero = em.constant(0.0, lanes);
        let last_row = self.sub(params.row_end, self.i64(1));
        // The rows' accumulators: `dim` sums, or `(m, s, dim weighted sums)` for a softmax.
        let (acc_dim, first_sum) = match product.shifted {
            true => (product.dim as i64 + 2, 2),
            false => (product.dim as i64, 0),
        };
        if product.shifted {
            self.exp_against_running_max(
                function,
                wide,
                params,
                (rb, block_end),
                (jt, end),
                acc_dim,
            );
        }
        let block = WideBlock {
            function,
            wide,
            arg_ptrs,
            params,
            rows: (rb, block_end),
            inner: (jt, whole_end, jt_end),
            tile,
            dim,
            acc: (acc_dim, first_sum),
            // An element-wise vector keeps its row operands in registers too: fewer components.
            components_per_tile: match product.kind {
                WideKind::Variable(_) => TILE_COMPONENTS,
                WideKind::Elementwise(_) => TILE_COMPONENTS / 2,
            },
            zero,
        };
        self.emit_loop(
            function,
            wide.row_group,
            self.i64(0),
            TILE_ROWS as i64,
            |g| self.less(g, rows_in_block),
            |g| {
                // Rows past the block's end read its last row (their sums are dropped).
                let rows: Vec<IntValue<'ctx>> = (0..TILE_ROWS as i64)
                    .map(|k| {
                        let r = self.add(self.add(rb, g), self.i64(k));
                        built(b.build_select(self.less(r, params.row_end), r, last_row, "row"))
                            .into_int_value()
                    })
                    .collect();
                self.emit_loop(
                    function,
                    wide.component_group,
                    self.i64(0),
                    block.components_per_tile as i64,
                    |c| self.less(c, dim),
                    |c| self.wide_register_tile(&block, g, &rows, c),
                );
            },
        );
        built(b.build_unconditional_branch(done));
        b.position_at_end(done);
    }

    /// One register tile of the product: the rows of group `g` (`rows`, clamped to the
    /// block) against the components from `c`, over the inner tile, then added into the rows'
    /// accumulators.
    fn wide_register_tile(
        &self,
        block: &WideBlock<'_, 'ctx>,
        g: IntValue<'ctx>,
        rows: &[IntValue<'ctx>],
        c: IntValue<'ctx>,
    ) {
        let em = self.em;
        let b = em.builder;
        let ctx = em.context;
        let lanes = self.schedule.lanes;
        let product = self.schedule.wide.as_ref().expect("a wide product");
        let (function, wide, dim) = (block.function, block.wide, block.dim);
        let (rb, block_end) = block.rows;
        let (jt, whole_end, jt_end) = block.inner;
        for &acc in &wide.acc {
            built(b.build_store(acc, block.zero));
        }
        // Components past the last read the last one (their sums are dropped).
        let last_component = self.i64(product.dim as i64 - 1);
        let components: Vec<IntValue<'ctx>> = (0..block.components_per_tile as i64)
            .map(|k| {
                let comp = self.add(c, self.i64(k));
                built(b.build_select(self.less(comp, dim), comp, last_component, "component"))
                    .into_int_value()
            })
            .collect();
        // Whole vectors, then the last one with the lanes past `jt_end` masked: there the
        // scalars are 0 but `v` is computed from the padding (or the next chunk's data),
        // possibly infinite, and 0 * inf is NaN.
        self.emit_vector_loop(function, wide.vector, jt, whole_end, |v| {
            self.wide_step(block, g, rows, &components, v, None)
        });
        let tail = ctx.append_basic_block(function, "wide_tail");
        let tail_done = ctx.append_basic_block(function, "wide_tail_done");
        let partial = self.less(whole_end, jt_end);
        built(b.build_conditional_branch(partial, tail, tail_done));
        b.position_at_end(tail);
        let mask = self.lane_mask(whole_end, jt_end, lanes);
        self.wide_step(block, g, rows, &components, whole_end, Some(mask));
        built(b.build_unconditional_branch(tail_done));
        b.position_at_end(tail_done);
        for k in 0..TILE_ROWS {
            for l in 0..block.components_per_tile {
                let row = self.add(self.add(rb, g), self.i64(k as i64));
                let comp = self.add(c, self.i64(l as i64));
                let acc = wide.acc[k * TILE_COMPONENTS + l];
                self.add_to_accumulator_if(
                    function,
                    block.params,
                    (row, block_end),
                    (comp, dim),
                    block.acc,
                    self.load_vector_slot(acc),
                );
            }
        }
    }

    /// One vector of inner indices `v` of a register tile: the rows' scalars times the
    /// components' values, into the tile's lane accumulators (`mask`: the lanes inside the
    /// inner tile, for its last vector).
    fn wide_step(
        &self,
        block: &WideBlock<'_, 'ctx>,
        g: IntValue<'ctx>,
        rows: &[IntValue<'ctx>],
        components: &[IntValue<'ctx>],
        v: IntValue<'ctx>,
        mask: Option<Value<'ctx>>,
    ) {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let product = self.schedule.wide.as_ref().expect("a wide product");
        let (jt, _, _) = block.inner;
        let at = self.sub(v, jt);
        let scalars: Vec<Value<'ctx>> = (0..TILE_ROWS as i64)
            .map(|k| {
                let row = self.mul(self.add(g, self.i64(k)), block.tile);
                self.load(block.wide.scalars, self.add(row, at), lanes)
            })
            .collect();
        for (k, (&s, &row)) in scalars.iter().zip(rows).enumerate() {
            for (l, &comp) in components.iter().enumerate() {
                let x = match &product.kind {
                    WideKind::Variable(var) => {
                        let first = self.mul(comp, block.params.inner_stride);
                        self.load(block.arg_ptrs[*var], self.add(first, v), lanes)
                    }
                    WideKind::Elementwise(nodes) => {
                        let values = self.component_values(
                            nodes,
                            block.arg_ptrs,
                            block.params.inner_stride,
                            (row, comp, v),
                        );
                        values[*nodes.last().expect("a vector node")].expect("computed above")
                    }
                };
                let x = match mask {
                    Some(m) => em.select(m, x, block.zero),
                    None => x,
                };
                let acc = block.wide.acc[k * TILE_COMPONENTS + l];
                let sum = em.fma(s, x, self.load_vector_slot(acc));
                built(em.builder.build_store(acc, sum));
            }
        }
    }

    /// The softmax family, for each row of the block `[rb, block_end)`: the tile's maximum of
    /// the stored scalars joins the row's running maximum `m` (its sums rescaled by
    /// `exp(m - m')`, exactly 1 when it does not move), the scalars become
    /// `exp(s - m')` (the runtime's `shifted_exp_term`: `-inf` gives 0, `s = m'` exactly 1, NaN
    /// stays), and their sum is added to the row's `s`. The product with `v` then adds the
    /// weighted sums.
    fn exp_against_running_max(
        &self,
        function: FunctionValue<'ctx>,
        wide: &WideSlots<'ctx>,
        params: &Params<'ctx>,
        (rb, block_end): (IntValue<'ctx>, IntValue<'ctx>),
        (jt, end): (IntValue<'ctx>, IntValue<'ctx>),
        acc_dim: i64,
    ) {
        let em = self.em;
        let wide_f64 = self.wide_f64;
        let b = em.builder;
        let ctx = em.context;
        let f64t = ctx.f64_type();
        let lanes = self.schedule.lanes;
        let tile = self.i64(self.schedule.inner_tile as i64);
        let acc_slot = |row: IntValue<'ctx>, k: i64| {
            let at = self.add(
                self.mul(self.sub(row, params.row_start), self.i64(acc_dim)),
                self.i64(k),
            );
            // SAFETY (of the generated code): `row` is in `[row_start, row_end)` and `k` below
            // the accumulator's dimension.
            unsafe { built(b.build_in_bounds_gep(f64t, params.acc, &[at], "acc")) }
        };
        let load_f64 =
            |slot| wide_f64.from_scalar(built(b.build_load(f64t, slot, "acc")).into_float_value());
        let store_f64 = |slot, v: Value<'ctx>| {
            let x = built(b.build_extract_element(v, ctx.i64_type().const_zero(), "x"));
            built(b.build_store(slot, x));
        };
        self.emit_loop(
            function,
            wide.row,
            rb,
            1,
            |r| self.less(r, block_end),
            |r| {
                let first = self.mul(self.sub(r, rb), tile);
                // The tile's maximum (masked-off lanes hold -inf).
                built(b.build_store(wide.acc[0], em.constant(f64::NEG_INFINITY, lanes)));
                self.emit_vector_loop(function, wide.vector, jt, end, |v| {
                    let s = self.load(wide.scalars, self.add(first, self.sub(v, jt)), lanes);
                    let m = self.load_vector_slot(wide.acc[0]);
                    let larger = em.compare(FloatPredicate::OGT, s, m);
                    built(b.build_store(wide.acc[0], em.select(larger, s, m)));
                });
                let tile_max = em.horizontal_max(self.load_vector_slot(wide.acc[0]));
                let tile_max = wide_f64.from_scalar(em.to_f64(tile_max));
                let m = load_f64(acc_slot(r, 0));
                let grows = wide_f64.compare(FloatPredicate::OGT, tile_max, m);
                let m_new = wide_f64.select(grows, tile_max, m);
                let scale = rescale_factor(wide_f64, m, m_new);
                for k in 1..acc_dim {
                    let slot = acc_slot(r, k);
                    store_f64(slot, wide_f64.mul(load_f64(slot), scale));
                }
                store_f64(acc_slot(r, 0), m_new);
                // The running maximum is a value of the element type (or -inf): exact there.
                let m_elem =
                    built(b.build_extract_element(m_new, ctx.i64_type().const_zero(), "m"))
                        .into_float_value();
                let m_elem = if em.float_type() == f64t {
                    m_elem
                } else {
                    built(b.build_float_trunc(m_elem, em.float_type(), "m"))
                };
                let m_vec = em.splat(em.from_scalar(m_elem), lanes);
                built(b.build_store(wide.acc[0], em.constant(0.0, lanes)));
                self.emit_vector_loop(function, wide.vector, jt, end, |v| {
                    let at = self.add(first, self.sub(v, jt));
                    let e = shifted_exp_term(em, self.load(wide.scalars, at, lanes), m_vec);
                    self.store(wide.scalars, at, e);
                    let sum = em.add(self.load_vector_slot(wide.acc[0]), e);
                    built(b.build_store(wide.acc[0], sum));
                });
                let sum = em.to_f64(em.horizontal_sum(self.load_vector_slot(wide.acc[0])));
                let slot = acc_slot(r, 1);
                store_f64(
                    slot,
                    wide_f64.add(load_f64(slot), wide_f64.from_scalar(sum)),
                );
            },
        );
    }

    /// `acc[row, first_sum + comp] += sum of the lanes of v` (in f64) when `row < row_end` and
    /// `comp < dim`, rows of `acc_dim` accumulators.
    fn add_to_accumulator_if(
        &self,
        function: FunctionValue<'ctx>,
        params: &Params<'ctx>,
        (row, row_end): (IntValue<'ctx>, IntValue<'ctx>),
        (comp, dim): (IntValue<'ctx>, IntValue<'ctx>),
        (acc_dim, first_sum): (i64, i64),
        v: Value<'ctx>,
    ) {
        let em = self.em;
        let b = em.builder;
        let ctx = em.context;
        let f64t = ctx.f64_type();
        let inside = built(b.build_and(self.less(row, row_end), self.less(comp, dim), "inside"));
        let add = ctx.append_basic_block(function, "wide_add");
        let done = ctx.append_basic_block(function, "wide_add_done");
        built(b.build_conditional_branch(inside, add, done));
        b.position_at_end(add);
        let sum = em.to_f64(em.horizontal_sum(v));
        let row_first = self.mul(self.sub(row, params.row_start), self.i64(acc_dim));
        let at = self.add(self.add(row_first, self.i64(first_sum)), comp);
        // SAFETY (of the generated code): `row` is in `[row_start, row_end)` and `comp` below
        // the accumulator's dimension.
        let slot = unsafe { built(b.build_in_bounds_gep(f64t, params.acc, &[at], "acc")) };
        let old = built(b.build_load(f64t, slot, "acc")).into_float_value();
        built(b.build_store(slot, built(b.build_float_add(old, sum, "acc"))));
        built(b.build_unconditional_branch(done));
        b.position_at_end(done);
    }
}
