//! The CPU tile function: the loop nest around the formula, for the ABI of
//! [`keops_runtime::TileFn`]. The inner (reduced) index runs on SIMD lanes; each subformula is
//! computed at the outermost loop where its inputs are fixed (see [`Level`]):
//!
//! ```text
//! per call:            constants and parameter-only parts
//! for each inner tile: inner-only parts, for the whole tile, into a stack buffer
//!   for each row:      row-only parts; lane accumulators := init
//!     for each vector of inner indices (then one masked remainder):
//!                      the pair part; fold into the lane accumulators
//!     merge the lanes into the row's f64 accumulator
//! ```
//! Inner tiles are sized so that their inputs stay in the L1/L2 cache while the rows of a
//! block pass over them. Tiles whose rows keep one accumulator number (W1's sum) run the row
//! loop two rows at a time: each vector of inner indices is loaded once for both, whose pair
//! code forms two independent dependency chains (the loop waits on latency, not on the FP
//! pipes); an odd last row runs alone.
//!
//! A *cross* tile function ([`keops_runtime::CrossTileFn`], `columns > 0`) also sums the last
//! `columns` components of the formula over the rows: each inner tile keeps them in a stack
//! buffer of the element type (one vector load, add and store per component and vector of
//! pairs), zeroed before the rows and added into the caller's f64 columns after them.

mod components;
pub mod flush;
mod gram;
mod wide;

use super::formula::{Emitter, Value};
use super::loops::LoopCode;
use super::reduce::LaneAccumulators;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use keops_front::formula::{Formula, Op};
use keops_middle::schedule::{Level, Schedule};
use keops_runtime::{Category, Signature};

fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

/// The most accumulator numbers per row for which a tile runs two rows at a time (each row's
/// lane accumulators live in registers through the pass). Measured on AVX2 (16 vector
/// registers, Zen 3): W1 and the gradient in b (one number) gain 5-20%, the gradients in x or y
/// (three) lose 8-20% to spills.
const MAX_PAIRED_ACC: usize = 1;

/// The tile function's parameters, in order.
struct Params<'ctx> {
    args: PointerValue<'ctx>,
    inner_stride: IntValue<'ctx>,
    row_start: IntValue<'ctx>,
    row_end: IntValue<'ctx>,
    inner_start: IntValue<'ctx>,
    inner_end: IntValue<'ctx>,
    acc: PointerValue<'ctx>,
}

/// Values of the formula's nodes computed so far at each level. `narrow`: one lane (call and
/// row levels); `wide`: the loop's lanes (broadcast call/row values, and pair values).
#[derive(Clone)]
struct NodeValues<'ctx> {
    narrow: Vec<Option<Vec<Value<'ctx>>>>,
    wide: Vec<Option<Vec<Value<'ctx>>>>,
}

/// The stack slots of the tile function's loop counters.
struct Counters<'ctx> {
    inner_tile: PointerValue<'ctx>,
    row: PointerValue<'ctx>,
    inner_vector: PointerValue<'ctx>,
    lane: PointerValue<'ctx>,
}

/// What the tile function's body reads everywhere: its parameters, the stack slots of its
/// entry block, the arguments' pointers and the values computed once per call.
struct TileFunction<'ctx> {
    function: FunctionValue<'ctx>,
    params: Params<'ctx>,
    /// The caller's f64 columns (a cross tile's extra parameter).
    cols: Option<PointerValue<'ctx>>,
    arg_ptrs: Vec<PointerValue<'ctx>>,
    /// The per-call values: constants and parameters.
    call: NodeValues<'ctx>,
    lane_acc: LaneAccumulators<'ctx>,
    /// The second row's, when the tile runs rows in pairs.
    lane_acc_second: Option<LaneAccumulators<'ctx>>,
    counters: Counters<'ctx>,
    /// A cross tile's column sums over the inner tile, and the counter that flushes them.
    column_tile: Option<PointerValue<'ctx>>,
    flush_counter: Option<PointerValue<'ctx>>,
    gram: Option<gram::GramSlots<'ctx>>,
    wide: Option<wide::WideSlots<'ctx>>,
    /// The inner-only values of the inner tile.
    scratch: Option<PointerValue<'ctx>>,
}

/// The rows a pass over the inner vectors serves (one, or two in pairs): their row-level
/// values, lane accumulators and f64 accumulator rows, and the inner tile's start.
struct RowBlock<'r, 'ctx> {
    rows: &'r [IntValue<'ctx>],
    accs: Vec<&'r LaneAccumulators<'ctx>>,
    values: Vec<NodeValues<'ctx>>,
    acc_rows: Vec<PointerValue<'ctx>>,
    jt: IntValue<'ctx>,
}

impl<'ctx> LoopCode<'ctx> for TileEmitter<'_, '_, 'ctx> {
    fn em(&self) -> &Emitter<'_, 'ctx> {
        self.em
    }
}

pub struct TileEmitter<'e, 'a, 'ctx> {
    em: &'e Emitter<'a, 'ctx>,
    wide_f64: &'e Emitter<'a, 'ctx>,
    formula: &'e Formula,
    signature: &'e Signature,
    schedule: &'e Schedule,
    /// Components of the formula (its last ones) summed over the rows instead (cross tiles).
    columns: usize,
    /// `SqDist(a, b)` nodes to compute as `SqDist(b, a)` (the same value bit for bit), because
    /// the formula also subtracts `b - a`: the differences are then computed once.
    sqdist_reversed: Vec<bool>,
}

impl<'e, 'a, 'ctx> TileEmitter<'e, 'a, 'ctx> {
    pub fn new(
        em: &'e Emitter<'a, 'ctx>,
        wide_f64: &'e Emitter<'a, 'ctx>,
        formula: &'e Formula,
        signature: &'e Signature,
        schedule: &'e Schedule,
    ) -> Self {
        TileEmitter {
            em,
            wide_f64,
            formula,
            signature,
            schedule,
            columns: 0,
            sqdist_reversed: sqdist_reversed(formula),
        }
    }

    /// A cross tile function: the last `columns` components of the formula are summed over
    /// the rows, into the extra `cols` parameter of [`keops_runtime::CrossTileFn`].
    pub fn with_columns(self, columns: usize) -> Self {
        TileEmitter { columns, ..self }
    }

    /// `for (v = start; v < end; v += lanes) body(v)`: the vectors of inner indices.
    fn emit_vector_loop(
        &self,
        function: FunctionValue<'ctx>,
        counter: PointerValue<'ctx>,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>),
    ) {
        let lanes = self.schedule.lanes as i64;
        self.emit_loop(function, counter, start, lanes, |v| self.less(v, end), body);
    }

    /// Defines the tile function `name` in the emitter's module: its stack slots and per-call
    /// values, then the loop over inner tiles ([`TileEmitter::emit_inner_tile`]).
    pub fn emit(&self, name: &str) -> FunctionValue<'ctx> {
        let t = self.begin_function(name);
        let tile = self.schedule.inner_tile as i64;
        self.emit_loop(
            t.function,
            t.counters.inner_tile,
            t.params.inner_start,
            tile,
            |jt| self.less(jt, t.params.inner_end),
            |jt| self.emit_inner_tile(&t, jt),
        );
        built(self.em.builder.build_return(None));
        t.function
    }

    /// Declares the function, and in its entry block allocates every stack slot (there, LLVM
    /// promotes them), loads the arguments' pointers and computes the per-call values.
    fn begin_function(&self, name: &str) -> TileFunction<'ctx> {
        let em = self.em;
        let ctx = em.context;
        let ptr = ctx.ptr_type(AddressSpace::default());
        let i64t = ctx.i64_type();
        let mut params_types = vec![
            ptr.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            ptr.into(),
        ];
        if self.columns > 0 {
            params_types.push(ptr.into());
        }
        let fn_type = ctx.void_type().fn_type(&params_types, false);
        let function = em.module.add_function(name, fn_type, None);
        let param = |k: u32| function.get_nth_param(k).expect("declared above");
        let params = Params {
            args: param(0).into_pointer_value(),
            inner_stride: param(1).into_int_value(),
            row_start: param(2).into_int_value(),
            row_end: param(3).into_int_value(),
            inner_start: param(4).into_int_value(),
            inner_end: param(5).into_int_value(),
            acc: param(6).into_pointer_value(),
        };
        let cols = (self.columns > 0).then(|| param(7).into_pointer_value());
        let entry = ctx.append_basic_block(function, "entry");
        em.builder.position_at_end(entry);

        let sched = self.schedule;
        let lanes = sched.lanes;
        let red = self.signature.reduction;
        let lane_acc = LaneAccumulators::allocate(em, red, lanes);
        // Two rows per pass over the inner vectors where the pair code is plain (no Gram or
        // wide product) and a second row's accumulators stay small.
        let row_pairs = self.rows_in_pairs(&lane_acc);
        let lane_acc_second = row_pairs.then(|| LaneAccumulators::allocate(em, red, lanes));
        let counter = || built(em.builder.build_alloca(i64t, "counter"));
        let counters = Counters {
            inner_tile: counter(),
            row: counter(),
            inner_vector: counter(),
            lane: counter(),
        };
        let column_tile = (self.columns > 0).then(|| {
            let len = self.i64((self.columns * self.column_stride()) as i64);
            built(
                em.builder
                    .build_array_alloca(em.float_type(), len, "column_tile"),
            )
        });
        let flush_counter =
            (self.columns > 0).then(|| built(em.builder.build_alloca(i64t, "column")));
        let gram = self.allocate_gram();
        let wide = self.allocate_wide();
        let scratch = (sched.scratch_dim > 0).then(|| {
            let len = self.i64((sched.scratch_dim * sched.inner_tile) as i64);
            built(
                em.builder
                    .build_array_alloca(em.float_type(), len, "inner_tile"),
            )
        });

        let arg_ptrs: Vec<PointerValue<'ctx>> = (0..self.formula.vars.len())
            .map(|k| {
                let slot = unsafe {
                    built(em.builder.build_in_bounds_gep(
                        ptr,
                        params.args,
                        &[self.i64(k as i64)],
                        "argp",
                    ))
                };
                built(em.builder.build_load(ptr, slot, "arg")).into_pointer_value()
            })
            .collect();

        let n_nodes = self.formula.len();
        let mut call = NodeValues {
            narrow: vec![None; n_nodes],
            wide: vec![None; n_nodes],
        };
        // Per call: constants and parameters, narrow, broadcast once where wide code uses them.
        self.emit_level(Level::Call, &mut call, &arg_ptrs, None);
        self.broadcast(Level::Call, &mut call);
        TileFunction {
            function,
            params,
            cols,
            arg_ptrs,
            call,
            lane_acc,
            lane_acc_second,
            counters,
            column_tile,
            flush_counter,
            gram,
            wide,
            scratch,
        }
    }

    /// One inner tile `[jt, jt_end)`: its inner-only values, its Gram products, then every row
    /// against it, then (a cross tile) its column sums flushed to the caller.
    fn emit_inner_tile(&self, t: &TileFunction<'ctx>, jt: IntValue<'ctx>) {
        let em = self.em;
        let next = self.add(jt, self.i64(self.schedule.inner_tile as i64));
        let jt_end = built(em.builder.build_select(
            self.less(next, t.params.inner_end),
            next,
            t.params.inner_end,
            "jt_end",
        ))
        .into_int_value();
        if let Some(scratch) = t.scratch {
            self.fill_scratch(t, scratch, (jt, jt_end));
        }
        if let Some(slots) = &t.gram {
            self.emit_gram_tile(
                t.function,
                slots,
                &t.arg_ptrs,
                t.params.inner_stride,
                jt,
                jt_end,
                t.scratch,
            );
        }
        if let Some(tile) = t.column_tile {
            let zero = em.constant(0.0, self.schedule.lanes);
            let len = self.i64((self.columns * self.column_stride()) as i64);
            self.emit_loop(
                t.function,
                t.counters.inner_vector,
                self.i64(0),
                self.schedule.lanes as i64,
                |k| self.less(k, len),
                |k| self.store(tile, k, zero),
            );
        }
        self.emit_rows(t, (jt, jt_end));
        if let (Some(tile), Some(cols), Some(flush_counter)) =
            (t.column_tile, t.cols, t.flush_counter)
        {
            self.flush_columns(t.function, tile, cols, &t.params, jt, jt_end, flush_counter);
        }
    }

    /// The inner-only parts of the formula, once per inner index of the tile, into the stack
    /// buffer the pair code loads them from.
    fn fill_scratch(
        &self,
        t: &TileFunction<'ctx>,
        scratch: PointerValue<'ctx>,
        (jt, jt_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let sched = self.schedule;
        self.emit_loop(
            t.function,
            t.counters.inner_vector,
            jt,
            sched.lanes as i64,
            |jv| self.less(jv, jt_end),
            |jv| {
                let mut inner = t.call.clone();
                let at = Some((jv, t.params.inner_stride));
                self.emit_level(Level::Inner, &mut inner, &t.arg_ptrs, at);
                let offset = self.sub(jv, jt);
                for (k, slot) in sched.scratch_slots.iter().enumerate() {
                    // Looped Gram operands are stored by the Gram product's loops.
                    if let (Some(slot), true) = (slot, sched.live[k]) {
                        let v = inner.wide[k].as_ref().expect("computed above");
                        for (c, &x) in v.iter().enumerate() {
                            let at =
                                self.add(offset, self.i64(((slot + c) * sched.inner_tile) as i64));
                            self.store(scratch, at, x);
                        }
                    }
                }
            },
        );
    }

    /// Every row against the inner tile: two at a time when the tile runs rows in pairs (an
    /// odd last row alone), else one at a time, with a Gram product's block values first.
    fn emit_rows(&self, t: &TileFunction<'ctx>, tile: (IntValue<'ctx>, IntValue<'ctx>)) {
        let em = self.em;
        let ctx = em.context;
        let params = &t.params;
        if t.lane_acc_second.is_some() {
            self.emit_loop(
                t.function,
                t.counters.row,
                params.row_start,
                2,
                |r| self.less(self.add(r, self.i64(1)), params.row_end),
                |r| self.emit_row_block(t, &[r, self.add(r, self.i64(1))], tile),
            );
            // An odd row count leaves the last row.
            let i64t = ctx.i64_type();
            let r = built(em.builder.build_load(i64t, t.counters.row, "r")).into_int_value();
            let last = ctx.append_basic_block(t.function, "last_row");
            let rows_done = ctx.append_basic_block(t.function, "rows_done");
            built(em.builder.build_conditional_branch(
                self.less(r, params.row_end),
                last,
                rows_done,
            ));
            em.builder.position_at_end(last);
            self.emit_row_block(t, &[r], tile);
            built(em.builder.build_unconditional_branch(rows_done));
            em.builder.position_at_end(rows_done);
            return;
        }
        // With Gram products, each block of `gram_rows` rows starts with their values (one
        // row loop all the same: a loop over the rows of a block would be unrolled, copying
        // the pair code).
        self.emit_loop(
            t.function,
            t.counters.row,
            params.row_start,
            1,
            |r| self.less(r, params.row_end),
            |r| {
                if let Some(slots) = &t.gram {
                    self.gram_block_if_first_row(
                        t.function,
                        slots,
                        &t.arg_ptrs,
                        params,
                        r,
                        tile,
                        (&t.call, t.scratch),
                    );
                }
                self.emit_row_block(t, &[r], tile);
                if let (Some(slots), Some(wide)) = (&t.gram, &t.wide) {
                    self.wide_block_if_last_row(
                        t.function,
                        slots,
                        wide,
                        &t.arg_ptrs,
                        params,
                        r,
                        tile,
                    );
                }
            },
        );
    }

    /// One row, or two rows at once (their pair code shares the inner loads), against the
    /// inner tile: their row-level values, then the whole vectors of inner indices and one
    /// masked remainder, then the lanes merged into the rows' accumulators.
    fn emit_row_block(
        &self,
        t: &TileFunction<'ctx>,
        rows: &[IntValue<'ctx>],
        (jt, jt_end): (IntValue<'ctx>, IntValue<'ctx>),
    ) {
        let em = self.em;
        let ctx = em.context;
        let lanes = self.schedule.lanes;
        let acc_dim = self.signature.reduction.acc_dim() as i64;
        let block = RowBlock {
            rows,
            accs: std::iter::once(&t.lane_acc)
                .chain(&t.lane_acc_second)
                .take(rows.len())
                .collect(),
            values: rows
                .iter()
                .map(|&r| {
                    let mut row = t.call.clone();
                    let at = Some((r, t.params.inner_stride));
                    self.emit_level(Level::Row, &mut row, &t.arg_ptrs, at);
                    self.broadcast(Level::Row, &mut row);
                    row
                })
                .collect(),
            acc_rows: rows
                .iter()
                .map(|&r| {
                    let row_offset = self.mul(self.sub(r, t.params.row_start), self.i64(acc_dim));
                    unsafe {
                        built(em.builder.build_in_bounds_gep(
                            ctx.f64_type(),
                            t.params.acc,
                            &[row_offset],
                            "acc_row",
                        ))
                    }
                })
                .collect(),
            jt,
        };
        // Whole vectors, then one masked remainder.
        if t.wide.is_none() {
            for (acc, &acc_row) in block.accs.iter().zip(&block.acc_rows) {
                acc.init(em, self.wide_f64, acc_row);
            }
        }
        let last_full = self.sub(jt_end, self.i64(lanes as i64 - 1));
        self.emit_loop(
            t.function,
            t.counters.inner_vector,
            jt,
            lanes as i64,
            |jv| self.less(jv, last_full),
            |jv| self.emit_pairs(t, &block, jv, None),
        );
        let i64t = ctx.i64_type();
        let jv = built(em.builder.build_load(i64t, t.counters.inner_vector, "jv")).into_int_value();
        let remaining = self.less(jv, jt_end);
        let tail = ctx.append_basic_block(t.function, "tail");
        let after = ctx.append_basic_block(t.function, "tail_done");
        built(em.builder.build_conditional_branch(remaining, tail, after));
        em.builder.position_at_end(tail);
        let mask = self.lane_mask(jv, jt_end, lanes);
        self.emit_pairs(t, &block, jv, Some(mask));
        built(em.builder.build_unconditional_branch(after));
        em.builder.position_at_end(after);

        // A wide product adds into the rows after the block's last.
        if t.wide.is_none() {
            for (acc, &acc_row) in block.accs.iter().zip(&block.acc_rows) {
                acc.merge_lanes_into(em, self.wide_f64, t.function, acc_row, jt, t.counters.lane);
            }
        }
    }

    /// The pair code of the block's rows against one vector of inner indices `jv` (`mask`: the
    /// lanes inside the tile, for the remainder), folded into their lane accumulators, or
    /// stored for a wide product; a cross tile also adds the last components into its columns.
    fn emit_pairs(
        &self,
        t: &TileFunction<'ctx>,
        block: &RowBlock<'_, 'ctx>,
        jv: IntValue<'ctx>,
        mask: Option<Value<'ctx>>,
    ) {
        let em = self.em;
        let lanes = self.schedule.lanes;
        let jt = block.jt;
        let offset = self.sub(jv, jt);
        let index = em.add(
            em.splat(
                em.from_scalar(built(em.builder.build_signed_int_to_float(
                    offset,
                    em.float_type(),
                    "rel",
                ))),
                lanes,
            ),
            self.iota(lanes),
        );
        for (k, &r) in block.rows.iter().enumerate() {
            let mut pair = block.values[k].clone();
            self.load_inner(
                &mut pair,
                &t.arg_ptrs,
                t.scratch,
                jv,
                jt,
                t.params.inner_stride,
            );
            if let Some(slots) = &t.gram {
                self.load_gram(&mut pair.wide, slots, r, jv, jt);
            }
            self.emit_level(
                Level::Pair,
                &mut pair,
                &t.arg_ptrs,
                Some((jv, t.params.inner_stride)),
            );
            if let (Some(product), Some(slots), Some(wide)) =
                (&self.schedule.wide, &t.gram, &t.wide)
            {
                let scalar = pair.wide[product.scalar]
                    .as_ref()
                    .expect("the scalar factor is computed")[0];
                self.store_wide_scalar(slots, wide, scalar, mask, r, jv, jt);
                continue;
            }
            let root = usize::from(self.formula.root());
            let value = pair.wide[root].clone().expect("the root is available wide");
            block.accs[k].fold(
                em,
                self.wide_f64,
                t.function,
                &value,
                index,
                mask,
                (block.acc_rows[k], jt),
            );
            // A cross tile (one row at a time) adds the row's last components into its
            // columns.
            if let Some(tile) = t.column_tile {
                let first = value.len() - self.columns;
                for (c, &v) in value[first..].iter().enumerate() {
                    let v = match mask {
                        Some(m) => em.select(m, v, em.constant(0.0, lanes)),
                        None => v,
                    };
                    let at = self.add(offset, self.i64((c * self.column_stride()) as i64));
                    let sum = em.add(self.load(tile, at, lanes), v);
                    self.store(tile, at, sum);
                }
            }
        }
    }

    /// Adds the inner tile's column sums `[jt, jt_end)` (element type) into the caller's f64
    /// columns, `columns x (inner_end - inner_start)` from `inner_start`.
    #[allow(clippy::too_many_arguments)]
    fn flush_columns(
        &self,
        function: FunctionValue<'ctx>,
        tile: PointerValue<'ctx>,
        cols: PointerValue<'ctx>,
        params: &Params<'ctx>,
        jt: IntValue<'ctx>,
        jt_end: IntValue<'ctx>,
        counter: PointerValue<'ctx>,
    ) {
        let em = self.em;
        let b = em.builder;
        let f64t = em.context.f64_type();
        let width = self.sub(params.inner_end, params.inner_start);
        let stride = self.column_stride() as i64;
        for k in 0..self.columns {
            self.emit_loop(
                function,
                counter,
                jt,
                1,
                |j| self.less(j, jt_end),
                |j| {
                    let from = self.add(self.sub(j, jt), self.i64(k as i64 * stride));
                    let x = built(b.build_load(em.float_type(), self.elem_ptr(tile, from), "col"))
                        .into_float_value();
                    let x = if em.float_type() == f64t {
                        x
                    } else {
                        built(b.build_float_ext(x, f64t, "col"))
                    };
                    let to = self.add(
                        self.sub(j, params.inner_start),
                        self.mul(self.i64(k as i64), width),
                    );
                    // SAFETY (of the generated code): `to` is inside the caller's columns.
                    let slot = unsafe { built(b.build_in_bounds_gep(f64t, cols, &[to], "slot")) };
                    let sum = built(b.build_load(f64t, slot, "sum")).into_float_value();
                    built(b.build_store(slot, built(b.build_float_add(sum, x, "sum"))));
                },
            );
        }
    }

    /// Elements between two components' sums in a cross tile's column buffer: a tile plus two
    /// vectors, so that the components' addresses differ in their low 12 bits (at a multiple
    /// of 4 KiB, a load of one component waits for the store to the previous one: x86 tells
    /// addresses apart by those bits first).
    fn column_stride(&self) -> usize {
        self.schedule.inner_tile + 2 * self.schedule.lanes as usize
    }

    /// Whether the tile runs its rows two at a time: plain pair code (no Gram or wide
    /// product), accumulators folded in the lanes, and at most [`MAX_PAIRED_ACC`] of them,
    /// a cross tile's columns counted (paired, W1's symmetric pass ran slower).
    fn rows_in_pairs(&self, lane_acc: &LaneAccumulators<'ctx>) -> bool {
        self.schedule.gram.is_empty()
            && self.schedule.wide.is_none()
            && lane_acc.folds_in_lanes()
            && self.signature.reduction.acc_dim() + self.columns <= MAX_PAIRED_ACC
    }

    /// `[0, 1, ..., lanes - 1]`
    fn iota(&self, lanes: u32) -> Value<'ctx> {
        let t = self.em.float_type();
        let items: Vec<_> = (0..lanes).map(|l| t.const_float(l as f64)).collect();
        inkwell::types::VectorType::const_vector(&items)
    }

    /// Lanes `jv + l < end`.
    fn lane_mask(&self, jv: IntValue<'ctx>, end: IntValue<'ctx>, lanes: u32) -> Value<'ctx> {
        let em = self.em;
        let i64t = em.context.i64_type();
        let count = self.sub(end, jv);
        let undef = i64t.vec_type(1).get_undef();
        let one = built(
            em.builder
                .build_insert_element(undef, count, i64t.const_zero(), "n"),
        );
        let zeros = em.context.i32_type().vec_type(lanes).const_zero();
        let counts = built(em.builder.build_shuffle_vector(one, one, zeros, "ns"));
        let items: Vec<_> = (0..lanes)
            .map(|l| i64t.const_int(l as u64, false))
            .collect();
        let iota = inkwell::types::VectorType::const_vector(&items);
        built(
            em.builder
                .build_int_compare(IntPredicate::SLT, iota, counts, "mask"),
        )
    }

    /// Inner-only values the pair code reads: variables from the transposed inputs, the other
    /// parts from the tile's stack buffer.
    fn load_inner(
        &self,
        values: &mut NodeValues<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        scratch: Option<PointerValue<'ctx>>,
        jv: IntValue<'ctx>,
        jt: IntValue<'ctx>,
        inner_stride: IntValue<'ctx>,
    ) {
        let sched = self.schedule;
        let lanes = sched.lanes;
        for (k, node) in self.formula.nodes.as_ref().iter().enumerate() {
            if sched.levels[k] != Level::Inner || !sched.needed_wide[k] || !sched.live[k] {
                continue;
            }
            let dim = self.formula.info[k].dim;
            let v: Vec<Value<'ctx>> = if let Op::Var(v) = node.op {
                (0..dim)
                    .map(|c| {
                        let at = self.add(self.mul(self.i64(c as i64), inner_stride), jv);
                        self.load(arg_ptrs[v as usize], at, lanes)
                    })
                    .collect()
            } else {
                let slot = sched.scratch_slots[k].expect("a stored inner part");
                let scratch = scratch.expect("a tile buffer");
                let offset = self.sub(jv, jt);
                (0..dim)
                    .map(|c| {
                        let at = self.add(offset, self.i64(((slot + c) * sched.inner_tile) as i64));
                        self.load(scratch, at, lanes)
                    })
                    .collect()
            };
            values.wide[k] = Some(v);
        }
    }

    /// Broadcasts the level's values that wider code reads.
    fn broadcast(&self, level: Level, values: &mut NodeValues<'ctx>) {
        for k in 0..self.formula.len() {
            if self.schedule.levels[k] == level && self.schedule.needed_wide[k] {
                let narrow = values.narrow[k].as_ref().expect("computed at its level");
                values.wide[k] = Some(
                    narrow
                        .iter()
                        .map(|&v| self.em.splat(v, self.schedule.lanes))
                        .collect(),
                );
            }
        }
    }

    /// Computes the nodes of one level. `at`: for row code, `(row, _)`; for inner and pair
    /// code, `(first inner index of the vector, inner stride)`.
    fn emit_level(
        &self,
        level: Level,
        values: &mut NodeValues<'ctx>,
        arg_ptrs: &[PointerValue<'ctx>],
        at: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    ) {
        let sched = self.schedule;
        let narrow = matches!(level, Level::Call | Level::Row);
        let lanes = if narrow { 1 } else { sched.lanes };
        for (k, node) in self.formula.nodes.as_ref().iter().enumerate() {
            // Gram products are read from their buffer (`load_gram`), and what only they
            // read is not computed.
            if sched.levels[k] != level || !sched.live[k] || sched.gram.iter().any(|g| g.node == k)
            {
                continue;
            }
            let dim = self.formula.info[k].dim;
            let v: Vec<Value<'ctx>> = if let Op::Var(var) = node.op {
                let spec = &self.formula.vars[var as usize];
                let base = arg_ptrs[var as usize];
                match spec.category {
                    Category::Param => (0..dim)
                        .map(|c| self.load(base, self.i64(c as i64), 1))
                        .collect(),
                    _ if level == Level::Row => {
                        let (r, ..) = at.expect("row code knows its row");
                        let first = self.mul(r, self.i64(dim as i64));
                        (0..dim)
                            .map(|c| self.load(base, self.add(first, self.i64(c as i64)), 1))
                            .collect()
                    }
                    _ => {
                        let (jv, stride, ..) = at.expect("inner code knows its index");
                        (0..dim)
                            .map(|c| {
                                self.load(
                                    base,
                                    self.add(self.mul(self.i64(c as i64), stride), jv),
                                    lanes,
                                )
                            })
                            .collect()
                    }
                }
            } else {
                let operands: Vec<&[Value<'ctx>]> = node
                    .children
                    .iter()
                    .map(|&c| {
                        let c = usize::from(c);
                        let table = if narrow { &values.narrow } else { &values.wide };
                        table[c].as_deref().unwrap_or_else(|| {
                            panic!("operand {c} of node {k} is computed before it")
                        })
                    })
                    .collect();
                let mut operands = operands;
                if self.sqdist_reversed[k] {
                    operands.swap(0, 1);
                }
                self.em.emit(&node.op, &operands, dim, lanes)
            };
            if narrow {
                values.narrow[k] = Some(v);
            } else {
                values.wide[k] = Some(v);
            }
        }
    }
}

/// The `SqDist(a, b)` nodes of `formula` whose operands' difference the formula computes the
/// other way round (`b - a`) and not this way: squared, both differences give the same bits.
fn sqdist_reversed(formula: &Formula) -> Vec<bool> {
    let nodes = formula.nodes.as_ref();
    let subtractions: std::collections::HashSet<(usize, usize)> = nodes
        .iter()
        .filter(|n| n.op == Op::Sub)
        .map(|n| (usize::from(n.children[0]), usize::from(n.children[1])))
        .collect();
    nodes
        .iter()
        .map(|n| {
            if n.op != Op::SqDist {
                return false;
            }
            let (a, b) = (usize::from(n.children[0]), usize::from(n.children[1]));
            !subtractions.contains(&(a, b)) && subtractions.contains(&(b, a))
        })
        .collect()
}
