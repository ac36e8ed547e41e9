//! Reductions in generated code. Inside a tile, each SIMD lane keeps its own accumulator, in
//! the runtime's layout ([`Reduction::acc_dim`] slots, one vector per slot) with indices
//! relative to the start of the inner tile; lanes fold pairs with vector selects and no
//! horizontal work. At the end of a row's inner tile the lanes are merged, in f64, into the
//! runtime's accumulator row, with indices made absolute.
//!
//! Lanes hold interleaved inner indices, so the merge orders ties by index (the smaller wins)
//! rather than by arrival, which gives KeOps's "first index on ties" whatever the interleaving.

use super::formula::{Emitter, Value};
use inkwell::basic_block::BasicBlock;
use inkwell::intrinsics::Intrinsic;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::FloatPredicate;
use keops_runtime::{Family, Order, Reduction, ReductionKind};

/// Builder calls fail only when the builder has no position, which is a bug of the emitter.
fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

/// The family of a reduction: the runtime's table, which the fold, merge and neutral values
/// below implement in vector code.
fn family(kind: ReductionKind) -> Family {
    kind.family()
}

/// The comparison that says `a` is strictly better than `b` ([`Order::better`]).
fn better_predicate(order: Order) -> FloatPredicate {
    match order {
        Order::Greater => FloatPredicate::OGT,
        Order::Less => FloatPredicate::OLT,
    }
}

/// Creates `then` and `after` blocks, branches to `then` when any lane of `mask` is set, runs
/// `body` there, and leaves the builder in `after`.
pub fn if_any<'ctx>(
    em: &Emitter<'_, 'ctx>,
    function: FunctionValue<'ctx>,
    mask: Value<'ctx>,
    body: impl FnOnce(),
) {
    let any = reduce_or(em, mask);
    let then: BasicBlock = em.context.append_basic_block(function, "any");
    let after = em.context.append_basic_block(function, "after");
    built(em.builder.build_conditional_branch(any, then, after));
    em.builder.position_at_end(then);
    body();
    built(em.builder.build_unconditional_branch(after));
    em.builder.position_at_end(after);
}

/// As [`if_any`], with `otherwise` run when no lane of `mask` is set.
pub fn if_any_else<'ctx>(
    em: &Emitter<'_, 'ctx>,
    function: FunctionValue<'ctx>,
    mask: Value<'ctx>,
    then: impl FnOnce(),
    otherwise: impl FnOnce(),
) {
    let any = reduce_or(em, mask);
    let then_block: BasicBlock = em.context.append_basic_block(function, "any");
    let else_block = em.context.append_basic_block(function, "none");
    let after = em.context.append_basic_block(function, "after");
    built(
        em.builder
            .build_conditional_branch(any, then_block, else_block),
    );
    em.builder.position_at_end(then_block);
    then();
    built(em.builder.build_unconditional_branch(after));
    em.builder.position_at_end(else_block);
    otherwise();
    built(em.builder.build_unconditional_branch(after));
    em.builder.position_at_end(after);
}

pub fn reduce_or<'ctx>(em: &Emitter<'_, 'ctx>, mask: Value<'ctx>) -> IntValue<'ctx> {
    let function = Intrinsic::find("llvm.vector.reduce.or")
        .and_then(|i| i.get_declaration(em.module, &[mask.get_type().into()]))
        .expect("LLVM 19 has llvm.vector.reduce.or");
    built(em.builder.build_call(function, &[mask.into()], "any"))
        .try_as_basic_value()
        .basic()
        .expect("reduce.or returns a value")
        .into_int_value()
}

/// Per-lane accumulators of one reduction, as stack slots (promoted to registers by LLVM).
pub struct LaneAccumulators<'ctx> {
    red: Reduction,
    lanes: u32,
    slots: Vec<PointerValue<'ctx>>,
    /// K-smallest merges: one lane's accumulator, in f64, and a counter over its K entries, so
    /// that one insertion network (in a loop) serves every entry.
    lane_buffer: Option<(PointerValue<'ctx>, PointerValue<'ctx>)>,
    /// K-smallest with K above [`UNROLLED_K`]: no lane lists (they would not fit registers,
    /// and in memory every insertion would walk K slots); candidates below the row's K-th value
    /// go straight into the row's list.
    row_lists: Option<RowLists<'ctx>>,
}

/// Up to this K, each lane keeps its own K-list in registers, with unrolled insertion networks
/// (K = 10 compiles in about 30 ms); above, see [`RowLists`].
pub const UNROLLED_K: usize = 16;

/// Counters of the per-row insertions: over a vector's lanes, and the insertion position.
struct RowLists<'ctx> {
    lane: PointerValue<'ctx>,
    position: PointerValue<'ctx>,
}

/// Vector slots the per-lane accumulators of a reduction take (none for long K-lists).
pub fn lane_slots(red: &Reduction) -> usize {
    if family(red.kind) == Family::KSmallest && red.k > UNROLLED_K {
        0
    } else {
        red.acc_dim()
    }
}

impl<'ctx> LaneAccumulators<'ctx> {
    /// Allocates the slots; the builder must be in the entry block.
    pub fn allocate(em: &Emitter<'_, 'ctx>, red: Reduction, lanes: u32) -> LaneAccumulators<'ctx> {
        let ty = em.vector_type(lanes);
        let i64t = em.context.i64_type();
        let slots = (0..lane_slots(&red))
            .map(|_| built(em.builder.build_alloca(ty, "lane_acc")))
            .collect();
        let short_lists = family(red.kind) == Family::KSmallest && red.k <= UNROLLED_K;
        let lane_buffer = short_lists.then(|| {
            let len = i64t.const_int(red.acc_dim() as u64, false);
            let buffer = built(
                em.builder
                    .build_array_alloca(em.context.f64_type(), len, "lane"),
            );
            let counter = built(em.builder.build_alloca(i64t, "entry"));
            (buffer, counter)
        });
        let row_lists =
            (family(red.kind) == Family::KSmallest && red.k > UNROLLED_K).then(|| RowLists {
                lane: built(em.builder.build_alloca(i64t, "lane")),
                position: built(em.builder.build_alloca(i64t, "position")),
            });
        LaneAccumulators {
            red,
            lanes,
            slots,
            lane_buffer,
            row_lists,
        }
    }

    /// Whether folds touch only the lane slots (not the row's accumulator in memory), so
    /// that a row's pass over a tile can be thrown away and redone from `init`.
    pub fn folds_in_lanes(&self) -> bool {
        self.row_lists.is_none()
    }

    /// Whether folding calls `exp` (the LogSumExp family's shifted terms).
    pub fn folds_with_exp(&self) -> bool {
        family(self.red.kind) == Family::ShiftedExp
    }

    fn load(&self, em: &Emitter<'_, 'ctx>, k: usize) -> Value<'ctx> {
        built(
            em.builder
                .build_load(em.vector_type(self.lanes), self.slots[k], "acc"),
        )
        .into_vector_value()
    }

    fn store(&self, em: &Emitter<'_, 'ctx>, k: usize, v: Value<'ctx>) {
        built(em.builder.build_store(self.slots[k], v));
    }

    /// The runtime's initial accumulator, in every lane. For the K-smallest and LogSumExp
    /// families, lanes start from the row's accumulator instead (`acc_row`, f64, read by the
    /// `wide` emitter): a pair that cannot enter the row's K smallest is rejected by the lane at
    /// once, and a lane rarely needs to rescale its sums. The seeded K entries carry an
    /// infinite index, so the merge never takes them back.
    pub fn init(
        &self,
        em: &Emitter<'_, 'ctx>,
        wide: &Emitter<'_, 'ctx>,
        acc_row: PointerValue<'ctx>,
    ) {
        if self.row_lists.is_some() {
            return;
        }
        let mut initial = vec![0.0f64; self.red.acc_dim()];
        self.red.init(&mut initial);
        for (k, &x) in initial.iter().enumerate() {
            self.store(em, k, em.constant(x, self.lanes));
        }
        let seed = |slot: usize| {
            let v = load_f64(wide, acc_row, slot);
            let v = built(em.builder.build_extract_element(
                v,
                em.context.i64_type().const_zero(),
                "seed",
            ))
            .into_float_value();
            let v = if em.float_type() == wide.float_type() {
                v
            } else {
                built(em.builder.build_float_trunc(v, em.float_type(), "seed"))
            };
            em.splat(em.from_scalar(v), self.lanes)
        };
        match family(self.red.kind) {
            Family::KSmallest => {
                let (k, n) = (self.red.k, self.red.fdim);
                for c in 0..n {
                    let threshold = seed((k - 1) * 2 * n + c);
                    for l in 0..k {
                        self.store(em, l * 2 * n + c, threshold);
                        self.store(
                            em,
                            l * 2 * n + n + c,
                            em.constant(f64::INFINITY, self.lanes),
                        );
                    }
                }
            }
            Family::ShiftedExp => self.store(em, 0, seed(0)),
            _ => {}
        }
    }

    /// The value a lane outside the inner range folds: one that changes nothing.
    fn neutral(&self) -> f64 {
        family(self.red.kind).neutral()
    }

    /// Folds one vector of pairs: `value` holds `F` then `V` (one vector per component),
    /// `index` the lanes' inner indices relative to the tile, `mask` the lanes in range. `row`
    /// is the row's f64 accumulator (read by the `wide` emitter) and the tile's first inner
    /// index, for reductions that fold into the row directly.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &self,
        em: &Emitter<'_, 'ctx>,
        wide: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        value: &[Value<'ctx>],
        index: Value<'ctx>,
        mask: Option<Value<'ctx>>,
        row: (PointerValue<'ctx>, IntValue<'ctx>),
    ) {
        let lanes = self.lanes;
        let n = self.red.fdim;
        let masked = |v: Value<'ctx>, neutral: f64| match mask {
            Some(m) => em.select(m, v, em.constant(neutral, lanes)),
            None => v,
        };
        let f: Vec<Value<'ctx>> = value[..n]
            .iter()
            .map(|&v| masked(v, self.neutral()))
            .collect();
        match family(self.red.kind) {
            Family::Sum => {
                for (c, &x) in f.iter().enumerate() {
                    let acc = self.load(em, c);
                    self.store(em, c, em.add(acc, x));
                }
            }
            Family::Extreme { order, with_index } => {
                let p = better_predicate(order);
                for (c, &x) in f.iter().enumerate() {
                    let acc = self.load(em, c);
                    if with_index {
                        let better = em.compare(p, x, acc);
                        self.store(em, c, em.select(better, x, acc));
                        let i = self.load(em, n + c);
                        self.store(em, n + c, em.select(better, index, i));
                    } else {
                        self.store(em, c, keep(em, order, acc, x));
                    }
                }
            }
            Family::ShiftedExp => {
                let weights: Vec<Value<'ctx>> =
                    value[n..].iter().map(|&w| masked(w, 0.0)).collect();
                self.fold_shifted_exp(em, function, f[0], &weights);
            }
            Family::KSmallest => {
                let k = self.red.k;
                let stride = 2 * n;
                for (c, &x) in f.iter().enumerate() {
                    if let Some(rows) = &self.row_lists {
                        self.fold_into_row(em, wide, function, rows, c, x, index, row);
                        continue;
                    }
                    let last = self.load(em, (k - 1) * stride + c);
                    let enters = em.compare(FloatPredicate::OLT, x, last);
                    // Most pairs do not enter the K smallest: skip the insertion network.
                    if_any(em, function, enters, || {
                        let vals: Vec<Value<'ctx>> =
                            (0..k).map(|l| self.load(em, l * stride + c)).collect();
                        let idxs: Vec<Value<'ctx>> =
                            (0..k).map(|l| self.load(em, l * stride + n + c)).collect();
                        let below: Vec<Value<'ctx>> = vals
                            .iter()
                            .map(|&v| em.compare(FloatPredicate::OLT, x, v))
                            .collect();
                        // Strict <: an equal value goes after the ones present, so the
                        // earlier index stays first.
                        let inserted = insert_sorted(em, &vals, &idxs, &below, x, index);
                        for (l, (v, i)) in inserted.into_iter().enumerate() {
                            self.store(em, l * stride + c, v);
                            self.store(em, l * stride + n + c, i);
                        }
                    });
                }
            }
        }
    }

    /// K-smallest with long lists: the lanes whose value is below the row's K-th (strictly: an
    /// equal value comes later than the one there) insert it, in lane order, into the row's
    /// sorted list in f64, shifting larger entries down. Usually no lane passes the threshold.
    #[allow(clippy::too_many_arguments)]
    fn fold_into_row(
        &self,
        em: &Emitter<'_, 'ctx>,
        wide: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        rows: &RowLists<'ctx>,
        c: usize,
        x: Value<'ctx>,
        index: Value<'ctx>,
        (acc_row, tile_start): (PointerValue<'ctx>, IntValue<'ctx>),
    ) {
        let (k, n) = (self.red.k, self.red.fdim);
        let stride = 2 * n;
        let i64t = em.context.i64_type();
        let f64t = em.context.f64_type();
        let narrow = |v: Value<'ctx>| {
            let v = built(em.builder.build_extract_element(v, i64t.const_zero(), "v"))
                .into_float_value();
            if em.float_type() == f64t {
                v
            } else {
                built(em.builder.build_float_trunc(v, em.float_type(), "v"))
            }
        };
        let threshold = em.splat(
            em.from_scalar(narrow(load_f64(wide, acc_row, (k - 1) * stride + c))),
            self.lanes,
        );
        let enters = em.compare(FloatPredicate::OLT, x, threshold);
        if_any(em, function, enters, || {
            let base = built(
                em.builder
                    .build_signed_int_to_float(tile_start, f64t, "base"),
            );
            counted_loop(em, function, rows.lane, self.lanes as u64, |l| {
                let lane_enters =
                    built(em.builder.build_extract_element(enters, l, "e")).into_int_value();
                let insert = em.context.append_basic_block(function, "insert");
                let next = em.context.append_basic_block(function, "next_lane");
                built(
                    em.builder
                        .build_conditional_branch(lane_enters, insert, next),
                );
                em.builder.position_at_end(insert);
                let widen = |v: Value<'ctx>| {
                    let v = built(em.builder.build_extract_element(v, l, "x")).into_float_value();
                    if em.float_type() == f64t {
                        v
                    } else {
                        built(em.builder.build_float_ext(v, f64t, "x"))
                    }
                };
                let v = wide.from_scalar(widen(x));
                let i =
                    wide.from_scalar(built(em.builder.build_float_add(widen(index), base, "i")));
                self.insert_into_row_list(em, wide, function, rows, acc_row, c, (v, i), next);
                em.builder.position_at_end(next);
            });
        });
    }

    /// Inserts the value `v` of index `i` (f64, one lane) into component `c`'s sorted list of
    /// the row at `acc_row` when it is still below the K-th (earlier lanes of the vector may
    /// have lowered it since the threshold was read), shifting larger entries down; then
    /// branches to `next`.
    #[allow(clippy::too_many_arguments)]
    fn insert_into_row_list(
        &self,
        em: &Emitter<'_, 'ctx>,
        wide: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        rows: &RowLists<'ctx>,
        acc_row: PointerValue<'ctx>,
        c: usize,
        (v, i): (Value<'ctx>, Value<'ctx>),
        next: inkwell::basic_block::BasicBlock<'ctx>,
    ) {
        let (k, n) = (self.red.k, self.red.fdim);
        let stride = 2 * n;
        let i64t = em.context.i64_type();
        // Earlier lanes of this vector may have lowered the K-th value since the
        // threshold was read: check again, then shift entries down from the end while v
        // goes before them.
        let slot = |p: IntValue<'ctx>, offset: usize| {
            let r = built(
                em.builder
                    .build_int_mul(p, i64t.const_int(stride as u64, false), "r"),
            );
            built(
                em.builder
                    .build_int_add(r, i64t.const_int(offset as u64, false), "s"),
            )
        };
        let last = load_f64(wide, acc_row, (k - 1) * stride + c);
        let still = wide.compare(FloatPredicate::OLT, v, last);
        let still = built(
            em.builder
                .build_extract_element(still, i64t.const_zero(), "still"),
        )
        .into_int_value();
        let start = em.context.append_basic_block(function, "insert_start");
        built(em.builder.build_conditional_branch(still, start, next));
        em.builder.position_at_end(start);
        built(
            em.builder
                .build_store(rows.position, i64t.const_int(k as u64 - 1, false)),
        );
        let check = em.context.append_basic_block(function, "shift_check");
        let compare = em.context.append_basic_block(function, "shift_compare");
        let shift = em.context.append_basic_block(function, "shift");
        let place = em.context.append_basic_block(function, "place");
        built(em.builder.build_unconditional_branch(check));
        em.builder.position_at_end(check);
        let p = built(em.builder.build_load(i64t, rows.position, "p")).into_int_value();
        let positive = built(em.builder.build_int_compare(
            inkwell::IntPredicate::SGT,
            p,
            i64t.const_zero(),
            "positive",
        ));
        built(
            em.builder
                .build_conditional_branch(positive, compare, place),
        );
        em.builder.position_at_end(compare);
        let above = built(
            em.builder
                .build_int_sub(p, i64t.const_int(1, false), "above"),
        );
        let above_value = load_f64_at(wide, acc_row, slot(above, c));
        let goes_before = wide.compare(FloatPredicate::OLT, v, above_value);
        let goes_before = built(em.builder.build_extract_element(
            goes_before,
            i64t.const_zero(),
            "b",
        ))
        .into_int_value();
        built(
            em.builder
                .build_conditional_branch(goes_before, shift, place),
        );
        em.builder.position_at_end(shift);
        store_f64_at(wide, acc_row, slot(p, c), above_value);
        let above_index = load_f64_at(wide, acc_row, slot(above, n + c));
        store_f64_at(wide, acc_row, slot(p, n + c), above_index);
        built(em.builder.build_store(rows.position, above));
        built(em.builder.build_unconditional_branch(check));
        em.builder.position_at_end(place);
        let p = built(em.builder.build_load(i64t, rows.position, "p")).into_int_value();
        store_f64_at(wide, acc_row, slot(p, c), v);
        store_f64_at(wide, acc_row, slot(p, n + c), i);
        built(em.builder.build_unconditional_branch(next));
    }

    /// The online log-sum-exp step: rescale the lanes whose maximum grows (rare after the
    /// first pairs, so behind a branch), then add `exp(f - m)`. Values of -inf (and masked
    /// lanes) add nothing; a value equal to an infinite maximum adds 1.
    fn fold_shifted_exp(
        &self,
        em: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        f: Value<'ctx>,
        weights: &[Value<'ctx>],
    ) {
        let m = self.load(em, 0);
        let grows = em.compare(FloatPredicate::OGT, f, m);
        // One exponential per pair either way: where the maximum grows, exp(m - f) both
        // rescales the sums and is the old maximum's weight, so a run of growing maxima (data
        // sorted by value) costs about what the plain case does.
        if_any_else(
            em,
            function,
            grows,
            || {
                let c = |x: f64| em.constant(x, self.lanes);
                let below = em.select(grows, em.sub(m, f), em.sub(f, m));
                let e = em.call_math(super::math::MathFn::Exp, &[below]);
                // As `shifted_exp_term`: f = m (infinite too) weighs 1, f = -inf nothing.
                let e = em.select(em.compare(FloatPredicate::OEQ, f, m), c(1.0), e);
                let e = em.select(
                    em.compare(FloatPredicate::OEQ, f, c(f64::NEG_INFINITY)),
                    c(0.0),
                    e,
                );
                let s = self.load(em, 1);
                self.store(em, 1, em.select(grows, em.fma(s, e, c(1.0)), em.add(s, e)));
                for (w, &x) in weights.iter().enumerate() {
                    let s = self.load(em, 2 + w);
                    self.store(
                        em,
                        2 + w,
                        em.select(grows, em.fma(s, e, x), em.fma(e, x, s)),
                    );
                }
                self.store(em, 0, em.select(grows, f, m));
            },
            || {
                let e = shifted_exp_term(em, f, m);
                let s = self.load(em, 1);
                self.store(em, 1, em.add(s, e));
                for (w, &x) in weights.iter().enumerate() {
                    let s = self.load(em, 2 + w);
                    self.store(em, 2 + w, em.fma(e, x, s));
                }
            },
        );
    }

    fn is_index_slot(&self, k: usize) -> bool {
        self.red.is_index_slot(k)
    }

    /// Merges every lane into the f64 accumulator row at `acc_row`; `tile_start` is the
    /// absolute inner index that lane indices are relative to. `wide` is an f64 emitter on the
    /// same builder.
    pub fn merge_lanes_into(
        &self,
        em: &Emitter<'_, 'ctx>,
        wide: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        acc_row: PointerValue<'ctx>,
        tile_start: IntValue<'ctx>,
        lane_counter: PointerValue<'ctx>,
    ) {
        let f64t = em.context.f64_type();
        let base = wide.from_scalar(built(
            em.builder
                .build_signed_int_to_float(tile_start, f64t, "base"),
        ));
        let widen = |v: Value<'ctx>, l: IntValue<'ctx>| {
            let x = built(em.builder.build_extract_element(v, l, "x")).into_float_value();
            let x = if em.float_type() == f64t {
                x
            } else {
                built(em.builder.build_float_ext(x, f64t, "wide"))
            };
            wide.from_scalar(x)
        };
        if self.row_lists.is_some() {
            // Folded into the row already.
            return;
        }
        counted_loop(em, function, lane_counter, self.lanes as u64, |l| {
            let other: Vec<Value<'ctx>> = (0..self.slots.len())
                .map(|k| {
                    let x = widen(self.load(em, k), l);
                    if self.is_index_slot(k) {
                        wide.add(x, base)
                    } else {
                        x
                    }
                })
                .collect();
            match self.lane_buffer {
                Some((buffer, counter)) => {
                    for (k, &x) in other.iter().enumerate() {
                        store_f64(wide, buffer, k, x);
                    }
                    self.merge_k_smallest(wide, function, acc_row, buffer, counter);
                }
                None => self.merge_one(wide, acc_row, &other),
            }
        });
    }

    /// Inserts the K entries of one lane (in `buffer`) into the row's K-lists, ties ordered by
    /// index; a loop over the entries, each usually rejected by one comparison.
    fn merge_k_smallest(
        &self,
        em: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        acc_row: PointerValue<'ctx>,
        buffer: PointerValue<'ctx>,
        counter: PointerValue<'ctx>,
    ) {
        let (k, n) = (self.red.k, self.red.fdim);
        let stride = 2 * n;
        let load = |slot: usize| load_f64(em, acc_row, slot);
        let store = |slot: usize, v: Value<'ctx>| store_f64(em, acc_row, slot, v);
        counted_loop(em, function, counter, k as u64, |entry| {
            let first = built(em.builder.build_int_mul(
                entry,
                em.context.i64_type().const_int(stride as u64, false),
                "first",
            ));
            for c in 0..n {
                let at = |offset: usize| {
                    let offset = em.context.i64_type().const_int(offset as u64, false);
                    built(em.builder.build_int_add(first, offset, "at"))
                };
                let v = load_f64_at(em, buffer, at(c));
                let i = load_f64_at(em, buffer, at(n + c));
                let last = (k - 1) * stride;
                let enters = lex_before(
                    em,
                    FloatPredicate::OLT,
                    v,
                    i,
                    load(last + c),
                    load(last + n + c),
                );
                // Most lane entries do not enter the row's K smallest.
                if_any(em, function, enters, || {
                    let vals: Vec<Value<'ctx>> = (0..k).map(|l| load(l * stride + c)).collect();
                    let idxs: Vec<Value<'ctx>> = (0..k).map(|l| load(l * stride + n + c)).collect();
                    let below: Vec<Value<'ctx>> = (0..k)
                        .map(|l| lex_before(em, FloatPredicate::OLT, v, i, vals[l], idxs[l]))
                        .collect();
                    let inserted = insert_sorted(em, &vals, &idxs, &below, v, i);
                    for (l, (v, i)) in inserted.into_iter().enumerate() {
                        store(l * stride + c, v);
                        store(l * stride + n + c, i);
                    }
                });
            }
        });
    }

    /// `acc_row <- merge(acc_row, other)` in f64, ties ordered by index.
    fn merge_one(
        &self,
        em: &Emitter<'_, 'ctx>,
        acc_row: PointerValue<'ctx>,
        other: &[Value<'ctx>],
    ) {
        let load = |k: usize| load_f64(em, acc_row, k);
        let store = |k: usize, v: Value<'ctx>| store_f64(em, acc_row, k, v);
        let n = self.red.fdim;
        match family(self.red.kind) {
            Family::Sum => {
                for (k, &o) in other.iter().enumerate() {
                    store(k, em.add(load(k), o));
                }
            }
            Family::Extreme {
                order,
                with_index: false,
            } => {
                for (k, &o) in other.iter().enumerate() {
                    store(k, keep(em, order, load(k), o));
                }
            }
            Family::Extreme {
                order,
                with_index: true,
            } => {
                let p = better_predicate(order);
                for cpt in 0..n {
                    let (a, ai) = (load(cpt), load(n + cpt));
                    let take = lex_before(em, p, other[cpt], other[n + cpt], a, ai);
                    store(cpt, em.select(take, other[cpt], a));
                    store(n + cpt, em.select(take, other[n + cpt], ai));
                }
            }
            Family::ShiftedExp => {
                // keops_runtime's merge_shifted_exp: both parts move to the larger maximum,
                // by `rescale_factor`, exactly 1 between equal maxima (+inf included).
                let m = load(0);
                let om = other[0];
                let grows = em.compare(FloatPredicate::OGT, om, m);
                let up = rescale_factor(em, m, om);
                let down = rescale_factor(em, om, m);
                for (k, &o) in other.iter().enumerate().skip(1) {
                    let s = load(k);
                    store(k, em.select(grows, em.fma(s, up, o), em.fma(o, down, s)));
                }
                store(0, em.select(grows, om, m));
            }
            Family::KSmallest => unreachable!("K-smallest lanes merge through merge_k_smallest"),
        }
    }
}

/// keops_runtime's `Order::keep(kept, value)`: the better value; of two equal values, their
/// bits OR-ed for Min and AND-ed for Max, which is the value itself unless they are zeros of
/// opposite signs (then `-0` for Min, `+0` for Max).
fn keep<'ctx>(
    em: &Emitter<'_, 'ctx>,
    order: Order,
    kept: Value<'ctx>,
    value: Value<'ctx>,
) -> Value<'ctx> {
    let better = em.compare(better_predicate(order), value, kept);
    let chosen = em.select(better, value, kept);
    let lanes = kept.get_type().get_size();
    let bits = match em.scalar {
        keops_runtime::DType::F32 => em.context.i32_type(),
        keops_runtime::DType::F64 => em.context.i64_type(),
    }
    .vec_type(lanes);
    let as_bits =
        |v: Value<'ctx>| built(em.builder.build_bit_cast(v, bits, "bits")).into_vector_value();
    let (a, b) = (as_bits(kept), as_bits(value));
    let tied = match order {
        Order::Less => built(em.builder.build_or(a, b, "tie")),
        Order::Greater => built(em.builder.build_and(a, b, "tie")),
    };
    let tied = built(
        em.builder
            .build_bit_cast(tied, em.vector_type(lanes), "tie"),
    )
    .into_vector_value();
    em.select(em.compare(FloatPredicate::OEQ, value, kept), tied, chosen)
}

/// keops_runtime's `shifted_exp_term(v, m)`: `exp(v - m)`, exactly 1 where `v == m` (+inf
/// included) and 0 where `v = -inf`.
pub(super) fn shifted_exp_term<'ctx>(
    em: &Emitter<'_, 'ctx>,
    v: Value<'ctx>,
    m: Value<'ctx>,
) -> Value<'ctx> {
    let lanes = v.get_type().get_size();
    let c = |x: f64| em.constant(x, lanes);
    let e = em.call_math(super::math::MathFn::Exp, &[em.sub(v, m)]);
    let e = em.select(em.compare(FloatPredicate::OEQ, v, m), c(1.0), e);
    em.select(
        em.compare(FloatPredicate::OEQ, v, c(f64::NEG_INFINITY)),
        c(0.0),
        e,
    )
}

/// keops_runtime's `rescale_factor(from, to)`: `exp(from - to)`, exactly 1 where the two are
/// equal (infinite or not).
pub(super) fn rescale_factor<'ctx>(
    em: &Emitter<'_, 'ctx>,
    from: Value<'ctx>,
    to: Value<'ctx>,
) -> Value<'ctx> {
    let lanes = from.get_type().get_size();
    let e = em.call_math(super::math::MathFn::Exp, &[em.sub(from, to)]);
    em.select(
        em.compare(FloatPredicate::OEQ, from, to),
        em.constant(1.0, lanes),
        e,
    )
}

/// `(v, i)` before `(w, j)` in the order of a reduction: strictly better by `p`, or equal with
/// a smaller index.
fn lex_before<'ctx>(
    em: &Emitter<'_, 'ctx>,
    p: FloatPredicate,
    v: Value<'ctx>,
    i: Value<'ctx>,
    w: Value<'ctx>,
    j: Value<'ctx>,
) -> Value<'ctx> {
    let better = em.compare(p, v, w);
    let equal = em.compare(FloatPredicate::OEQ, v, w);
    let earlier = em.compare(FloatPredicate::OLT, i, j);
    let tie = built(em.builder.build_and(equal, earlier, "tie"));
    built(em.builder.build_or(better, tie, "before"))
}

/// `for (counter = 0; counter < count; counter++) body(counter)`, through a stack slot.
fn counted_loop<'ctx>(
    em: &Emitter<'_, 'ctx>,
    function: FunctionValue<'ctx>,
    counter: PointerValue<'ctx>,
    count: u64,
    body: impl FnOnce(IntValue<'ctx>),
) {
    let i64t = em.context.i64_type();
    let header = em.context.append_basic_block(function, "count");
    let inside = em.context.append_basic_block(function, "counted");
    let done = em.context.append_basic_block(function, "count_done");
    built(em.builder.build_store(counter, i64t.const_zero()));
    built(em.builder.build_unconditional_branch(header));
    em.builder.position_at_end(header);
    let k = built(em.builder.build_load(i64t, counter, "k")).into_int_value();
    let more = built(em.builder.build_int_compare(
        inkwell::IntPredicate::SLT,
        k,
        i64t.const_int(count, false),
        "more",
    ));
    built(em.builder.build_conditional_branch(more, inside, done));
    em.builder.position_at_end(inside);
    body(k);
    let k = built(em.builder.build_load(i64t, counter, "k")).into_int_value();
    let next = built(
        em.builder
            .build_int_add(k, i64t.const_int(1, false), "next"),
    );
    built(em.builder.build_store(counter, next));
    built(em.builder.build_unconditional_branch(header));
    em.builder.position_at_end(done);
}

/// The K-list `(vals, idxs)`, sorted, with `(v, i)` inserted, the last entry dropping out.
/// `below[l]` says that `(v, i)` goes before entry `l` (monotone in `l`, since the list is
/// sorted): entry `l` takes `(v, i)` where it goes exactly there, entry `l - 1` where it went
/// above, and keeps its own otherwise. Branch-free: 2K selects per list.
fn insert_sorted<'ctx>(
    em: &Emitter<'_, 'ctx>,
    vals: &[Value<'ctx>],
    idxs: &[Value<'ctx>],
    below: &[Value<'ctx>],
    v: Value<'ctx>,
    i: Value<'ctx>,
) -> Vec<(Value<'ctx>, Value<'ctx>)> {
    (0..vals.len())
        .map(|l| {
            let (shift_v, shift_i) = if l == 0 {
                (v, i)
            } else {
                (
                    em.select(below[l - 1], vals[l - 1], v),
                    em.select(below[l - 1], idxs[l - 1], i),
                )
            };
            (
                em.select(below[l], shift_v, vals[l]),
                em.select(below[l], shift_i, idxs[l]),
            )
        })
        .collect()
}

fn slot_ptr<'ctx>(
    em: &Emitter<'_, 'ctx>,
    acc_row: PointerValue<'ctx>,
    k: usize,
) -> PointerValue<'ctx> {
    let index = em.context.i64_type().const_int(k as u64, false);
    // SAFETY (of the generated code): k < acc_dim, inside the row.
    unsafe {
        built(
            em.builder
                .build_in_bounds_gep(em.context.f64_type(), acc_row, &[index], "slot"),
        )
    }
}

/// Element `index` (a run-time value) of an f64 buffer, as `<1 x double>`.
fn load_f64_at<'ctx>(
    em: &Emitter<'_, 'ctx>,
    buffer: PointerValue<'ctx>,
    index: IntValue<'ctx>,
) -> Value<'ctx> {
    // SAFETY (of the generated code): index < the buffer's length (an accumulator's).
    let ptr = unsafe {
        built(
            em.builder
                .build_in_bounds_gep(em.context.f64_type(), buffer, &[index], "at"),
        )
    };
    let v = built(
        em.builder
            .build_load(em.context.f64_type().vec_type(1), ptr, "a"),
    )
    .into_vector_value();
    v.as_instruction()
        .expect("a load")
        .set_alignment(8)
        .expect("valid alignment");
    v
}

/// Writes element `index` (a run-time value) of an f64 buffer.
fn store_f64_at<'ctx>(
    em: &Emitter<'_, 'ctx>,
    buffer: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    v: Value<'ctx>,
) {
    // SAFETY (of the generated code): index < the buffer's length (an accumulator's).
    let ptr = unsafe {
        built(
            em.builder
                .build_in_bounds_gep(em.context.f64_type(), buffer, &[index], "at"),
        )
    };
    built(em.builder.build_store(ptr, v))
        .set_alignment(8)
        .expect("valid alignment");
}

/// Slot `k` of an f64 accumulator row, as `<1 x double>`.
fn load_f64<'ctx>(em: &Emitter<'_, 'ctx>, acc_row: PointerValue<'ctx>, k: usize) -> Value<'ctx> {
    let ty = em.context.f64_type().vec_type(1);
    let v = built(em.builder.build_load(ty, slot_ptr(em, acc_row, k), "a")).into_vector_value();
    v.as_instruction()
        .expect("a load")
        .set_alignment(8)
        .expect("valid alignment");
    v
}

fn store_f64<'ctx>(em: &Emitter<'_, 'ctx>, acc_row: PointerValue<'ctx>, k: usize, v: Value<'ctx>) {
    built(em.builder.build_store(slot_ptr(em, acc_row, k), v))
        .set_alignment(8)
        .expect("valid alignment");
}
