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
use keops_runtime::{Reduction, ReductionKind};

/// Builder calls fail only when the builder has no position, which is a bug of the emitter.
fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

/// Which family a reduction's fold belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Sum,
    Extreme { max: bool },
    ArgExtreme { max: bool },
    ShiftedExp,
    KMin,
}

fn family(kind: ReductionKind) -> Family {
    match kind {
        ReductionKind::Sum => Family::Sum,
        ReductionKind::Max => Family::Extreme { max: true },
        ReductionKind::Min => Family::Extreme { max: false },
        ReductionKind::ArgMax | ReductionKind::MaxArgMax => Family::ArgExtreme { max: true },
        ReductionKind::ArgMin | ReductionKind::MinArgMin => Family::ArgExtreme { max: false },
        ReductionKind::LogSumExp
        | ReductionKind::LogSumExpWeight
        | ReductionKind::MaxSumShiftExp
        | ReductionKind::MaxSumShiftExpWeight
        | ReductionKind::SumSoftMaxWeight => Family::ShiftedExp,
        ReductionKind::KMin | ReductionKind::ArgKMin | ReductionKind::KMinArgKMin => Family::KMin,
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

fn reduce_or<'ctx>(em: &Emitter<'_, 'ctx>, mask: Value<'ctx>) -> IntValue<'ctx> {
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
    /// K-smallest with K above [`UNROLLED_K`]: the lane lists live in one stack array and
    /// insertions are loops over it (code of constant size, where unrolled networks in
    /// registers would grow as K and spill).
    long_lists: Option<LongLists<'ctx>>,
}

/// Up to this K, insertions into K-lists are unrolled networks in registers (K=10 compiles in
/// ~30 ms; K=100 took 0.7 s and spilled); above it, loops over memory.
pub const UNROLLED_K: usize = 16;

/// Stack state of loop insertions: the lane lists, and the carried entry of an insertion.
struct LongLists<'ctx> {
    lists: PointerValue<'ctx>,
    counter: PointerValue<'ctx>,
    /// (value, index, shifting) carried down a lane list, and the same for the f64 row list.
    lane_carry: [PointerValue<'ctx>; 3],
    row_carry: [PointerValue<'ctx>; 3],
}

impl<'ctx> LaneAccumulators<'ctx> {
    /// Allocates the slots; the builder must be in the entry block.
    pub fn allocate(em: &Emitter<'_, 'ctx>, red: Reduction, lanes: u32) -> LaneAccumulators<'ctx> {
        let ty = em.vector_type(lanes);
        let i64t = em.context.i64_type();
        let long = family(red.kind) == Family::KMin && red.k > UNROLLED_K;
        let long_lists = long.then(|| {
            let len = i64t.const_int(red.acc_dim() as u64, false);
            let lists = built(em.builder.build_array_alloca(ty, len, "lane_lists"));
            let carry = |value: inkwell::types::VectorType<'ctx>,
                         mask: inkwell::types::VectorType<'ctx>| {
                [
                    built(em.builder.build_alloca(value, "carry_v")),
                    built(em.builder.build_alloca(value, "carry_i")),
                    built(em.builder.build_alloca(mask, "shifting")),
                ]
            };
            let bool_type = em.context.bool_type();
            LongLists {
                lists,
                counter: built(em.builder.build_alloca(i64t, "slot")),
                lane_carry: carry(ty, bool_type.vec_type(lanes)),
                row_carry: carry(em.context.f64_type().vec_type(1), bool_type.vec_type(1)),
            }
        });
        let slots = (0..red.acc_dim())
            .map(|k| match &long_lists {
                // SAFETY (of the generated code): k < acc_dim, the array's length.
                Some(l) => unsafe {
                    built(em.builder.build_in_bounds_gep(
                        ty,
                        l.lists,
                        &[i64t.const_int(k as u64, false)],
                        "slot",
                    ))
                },
                None => built(em.builder.build_alloca(ty, "lane_acc")),
            })
            .collect();
        let lane_buffer = (family(red.kind) == Family::KMin).then(|| {
            let len = em.context.i64_type().const_int(red.acc_dim() as u64, false);
            let buffer = built(
                em.builder
                    .build_array_alloca(em.context.f64_type(), len, "lane"),
            );
            let counter = built(em.builder.build_alloca(em.context.i64_type(), "entry"));
            (buffer, counter)
        });
        LaneAccumulators {
            red,
            lanes,
            slots,
            lane_buffer,
            long_lists,
        }
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

    /// Slot `offset` of entry `l` (a run-time value) of the lane lists, for long lists.
    fn long_slot(
        &self,
        em: &Emitter<'_, 'ctx>,
        l: IntValue<'ctx>,
        offset: usize,
    ) -> PointerValue<'ctx> {
        let long = self.long_lists.as_ref().expect("long lists");
        let i64t = em.context.i64_type();
        let row = built(em.builder.build_int_mul(
            l,
            i64t.const_int(2 * self.red.fdim as u64, false),
            "row",
        ));
        let at = built(
            em.builder
                .build_int_add(row, i64t.const_int(offset as u64, false), "slot"),
        );
        // SAFETY (of the generated code): l < K, so at < acc_dim, the array's length.
        unsafe {
            built(em.builder.build_in_bounds_gep(
                em.vector_type(self.lanes),
                long.lists,
                &[at],
                "slot",
            ))
        }
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
        function: FunctionValue<'ctx>,
        acc_row: PointerValue<'ctx>,
    ) {
        if self.long_lists.is_none() {
            // (Long lists are all seeded below.)
            let mut initial = vec![0.0f64; self.red.acc_dim()];
            self.red.init(&mut initial);
            for (k, &x) in initial.iter().enumerate() {
                self.store(em, k, em.constant(x, self.lanes));
            }
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
            Family::KMin => {
                let (k, n) = (self.red.k, self.red.fdim);
                if let Some(long) = &self.long_lists {
                    let infinite = em.constant(f64::INFINITY, self.lanes);
                    for c in 0..n {
                        let threshold = seed((k - 1) * 2 * n + c);
                        counted_loop(em, function, long.counter, k as u64, |l| {
                            built(em.builder.build_store(self.long_slot(em, l, c), threshold));
                            built(
                                em.builder
                                    .build_store(self.long_slot(em, l, n + c), infinite),
                            );
                        });
                    }
                    return;
                }
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
        match family(self.red.kind) {
            Family::Sum => 0.0,
            Family::Extreme { max: true } | Family::ArgExtreme { max: true } => f64::NEG_INFINITY,
            Family::Extreme { max: false } | Family::ArgExtreme { max: false } | Family::KMin => {
                f64::INFINITY
            }
            Family::ShiftedExp => f64::NEG_INFINITY,
        }
    }

    /// Folds one vector of pairs: `value` holds `F` then `V` (one vector per component),
    /// `index` the lanes' inner indices relative to the tile, `mask` the lanes in range.
    pub fn fold(
        &self,
        em: &Emitter<'_, 'ctx>,
        function: FunctionValue<'ctx>,
        value: &[Value<'ctx>],
        index: Value<'ctx>,
        mask: Option<Value<'ctx>>,
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
            Family::Extreme { max } | Family::ArgExtreme { max } => {
                let p = if max {
                    FloatPredicate::OGT
                } else {
                    FloatPredicate::OLT
                };
                let with_index = matches!(family(self.red.kind), Family::ArgExtreme { .. });
                for (c, &x) in f.iter().enumerate() {
                    let acc = self.load(em, c);
                    let better = em.compare(p, x, acc);
                    self.store(em, c, em.select(better, x, acc));
                    if with_index {
                        let i = self.load(em, n + c);
                        self.store(em, n + c, em.select(better, index, i));
                    }
                }
            }
            Family::ShiftedExp => {
                let weights: Vec<Value<'ctx>> =
                    value[n..].iter().map(|&w| masked(w, 0.0)).collect();
                self.fold_shifted_exp(em, function, f[0], &weights);
            }
            Family::KMin => {
                let k = self.red.k;
                let stride = 2 * n;
                for (c, &x) in f.iter().enumerate() {
                    let last = self.load(em, (k - 1) * stride + c);
                    let enters = em.compare(FloatPredicate::OLT, x, last);
                    // Most pairs do not enter the K smallest: skip the insertion network.
                    if let Some(long) = &self.long_lists {
                        if_any(em, function, enters, || {
                            let ty = em.vector_type(lanes);
                            insert_loop(
                                em,
                                function,
                                long.counter,
                                k,
                                long.lane_carry,
                                (x, index),
                                |l| (self.long_slot(em, l, c), self.long_slot(em, l, n + c)),
                                ty,
                                None,
                                |cv, _, sv, _| em.compare(FloatPredicate::OLT, cv, sv),
                            );
                        });
                        continue;
                    }
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
        let lanes = self.lanes;
        let c = |v: f64| em.constant(v, lanes);
        let m = self.load(em, 0);
        let grows = em.compare(FloatPredicate::OGT, f, m);
        if_any(em, function, grows, || {
            let m_new = em.select(grows, f, m);
            // Lanes that do not grow keep their sums (and skip exp(-inf - -inf) = NaN).
            let scale = em.call_math(super::math::MathFn::Exp, &[em.sub(m, m_new)]);
            let scale = em.select(grows, scale, c(1.0));
            for k in 1..self.slots.len() {
                let s = self.load(em, k);
                self.store(em, k, em.mul(s, scale));
            }
            self.store(em, 0, m_new);
        });
        let m = self.load(em, 0);
        let e = em.call_math(super::math::MathFn::Exp, &[em.sub(f, m)]);
        let at_max = em.compare(FloatPredicate::OEQ, f, m);
        let e = em.select(at_max, c(1.0), e);
        let nothing = em.compare(FloatPredicate::OEQ, f, c(f64::NEG_INFINITY));
        let e = em.select(nothing, c(0.0), e);
        let s = self.load(em, 1);
        self.store(em, 1, em.add(s, e));
        for (w, &x) in weights.iter().enumerate() {
            let s = self.load(em, 2 + w);
            self.store(em, 2 + w, em.fma(e, x, s));
        }
    }

    /// Which slots hold indices (made absolute by the merge).
    fn is_index_slot(&self, k: usize) -> bool {
        let n = self.red.fdim;
        match family(self.red.kind) {
            Family::ArgExtreme { .. } => k >= n,
            Family::KMin => k % (2 * n) >= n,
            _ => false,
        }
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
        if let (Some(long), Some((buffer, counter))) = (&self.long_lists, self.lane_buffer) {
            // Long lists: copy lane l's entries with a loop, then insert them.
            let n = self.red.fdim;
            counted_loop(em, function, lane_counter, self.lanes as u64, |lane| {
                counted_loop(em, function, long.counter, self.red.k as u64, |entry| {
                    let ty = em.vector_type(self.lanes);
                    for offset in 0..2 * n {
                        let v = built(em.builder.build_load(
                            ty,
                            self.long_slot(em, entry, offset),
                            "v",
                        ))
                        .into_vector_value();
                        let x = widen(v, lane);
                        let x = if offset >= n { wide.add(x, base) } else { x };
                        let row = built(em.builder.build_int_mul(
                            entry,
                            em.context.i64_type().const_int(2 * n as u64, false),
                            "row",
                        ));
                        let at = built(em.builder.build_int_add(
                            row,
                            em.context.i64_type().const_int(offset as u64, false),
                            "at",
                        ));
                        store_f64_at(wide, buffer, at, x);
                    }
                });
                self.merge_k_smallest(wide, function, acc_row, buffer, counter);
            });
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
                if let Some(long) = &self.long_lists {
                    if_any(em, function, enters, || {
                        let f64t = em.context.f64_type();
                        let slot = |l: IntValue<'ctx>, offset: usize| {
                            let at = built(em.builder.build_int_add(
                                built(em.builder.build_int_mul(
                                    l,
                                    em.context.i64_type().const_int(stride as u64, false),
                                    "row",
                                )),
                                em.context.i64_type().const_int(offset as u64, false),
                                "slot",
                            ));
                            // SAFETY (of the generated code): l < K, so at < acc_dim.
                            unsafe {
                                built(em.builder.build_in_bounds_gep(f64t, acc_row, &[at], "slot"))
                            }
                        };
                        insert_loop(
                            em,
                            function,
                            long.counter,
                            k,
                            long.row_carry,
                            (v, i),
                            |l| (slot(l, c), slot(l, n + c)),
                            f64t.vec_type(1),
                            Some(8),
                            |cv, ci, sv, si| lex_before(em, FloatPredicate::OLT, cv, ci, sv, si),
                        );
                    });
                    continue;
                }
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
        let c = |v: f64| em.constant(v, 1);
        let n = self.red.fdim;
        match family(self.red.kind) {
            Family::Sum => {
                for (k, &o) in other.iter().enumerate() {
                    store(k, em.add(load(k), o));
                }
            }
            Family::Extreme { max } => {
                let p = if max {
                    FloatPredicate::OGT
                } else {
                    FloatPredicate::OLT
                };
                for (k, &o) in other.iter().enumerate() {
                    let a = load(k);
                    let better = em.compare(p, o, a);
                    store(k, em.select(better, o, a));
                }
            }
            Family::ArgExtreme { max } => {
                let p = if max {
                    FloatPredicate::OGT
                } else {
                    FloatPredicate::OLT
                };
                for cpt in 0..n {
                    let (a, ai) = (load(cpt), load(n + cpt));
                    let take = lex_before(em, p, other[cpt], other[n + cpt], a, ai);
                    store(cpt, em.select(take, other[cpt], a));
                    store(n + cpt, em.select(take, other[n + cpt], ai));
                }
            }
            Family::ShiftedExp => {
                let m = load(0);
                let om = other[0];
                let sums: Vec<Value<'ctx>> = (1..other.len()).map(load).collect();
                let grows = em.compare(FloatPredicate::OGT, om, m);
                let up = em.call_math(super::math::MathFn::Exp, &[em.sub(m, om)]);
                let down = em.call_math(super::math::MathFn::Exp, &[em.sub(om, m)]);
                let empty_self = em.compare(FloatPredicate::OEQ, m, c(f64::NEG_INFINITY));
                let empty_other = em.compare(FloatPredicate::OEQ, om, c(f64::NEG_INFINITY));
                for (k, &s) in sums.iter().enumerate() {
                    let o = other[1 + k];
                    let merged = em.select(grows, em.fma(s, up, o), em.fma(o, down, s));
                    let merged = em.select(empty_self, o, merged);
                    store(1 + k, em.select(empty_other, s, merged));
                }
                let m_new = em.select(em.compare(FloatPredicate::OGT, om, m), om, m);
                let m_new = em.select(empty_self, om, m_new);
                store(0, em.select(empty_other, m, m_new));
            }
            Family::KMin => unreachable!("K-smallest lanes merge through merge_k_smallest"),
        }
    }
}

/// Inserts `(v, i)` into a sorted K-list in memory, as a loop: the entry carried down the list
/// replaces the first slot it goes `before`, and from there every slot shifts down by one
/// (the last one drops out). `slots(l)` points at slot l's value and index; `align` is the
/// loads' and stores' alignment (the type's when `None`). Branch-free per lane.
#[allow(clippy::too_many_arguments)]
fn insert_loop<'ctx>(
    em: &Emitter<'_, 'ctx>,
    function: FunctionValue<'ctx>,
    counter: PointerValue<'ctx>,
    k: usize,
    carry: [PointerValue<'ctx>; 3],
    (v, i): (Value<'ctx>, Value<'ctx>),
    slots: impl Fn(IntValue<'ctx>) -> (PointerValue<'ctx>, PointerValue<'ctx>),
    ty: inkwell::types::VectorType<'ctx>,
    align: Option<u32>,
    before: impl Fn(Value<'ctx>, Value<'ctx>, Value<'ctx>, Value<'ctx>) -> Value<'ctx>,
) {
    let [carry_v, carry_i, shifting] = carry;
    let mask_type = em.context.bool_type().vec_type(ty.get_size());
    let load = |ptr: PointerValue<'ctx>, t: inkwell::types::VectorType<'ctx>| {
        let v = built(em.builder.build_load(t, ptr, "ld")).into_vector_value();
        if let Some(a) = align {
            v.as_instruction()
                .expect("a load")
                .set_alignment(a)
                .expect("valid alignment");
        }
        v
    };
    let store = |ptr: PointerValue<'ctx>, v: Value<'ctx>| {
        let s = built(em.builder.build_store(ptr, v));
        if let Some(a) = align {
            s.set_alignment(a).expect("valid alignment");
        }
    };
    built(em.builder.build_store(carry_v, v));
    built(em.builder.build_store(carry_i, i));
    built(em.builder.build_store(shifting, mask_type.const_zero()));
    counted_loop(em, function, counter, k as u64, |l| {
        let (slot_v, slot_i) = slots(l);
        let (sv, si) = (load(slot_v, ty), load(slot_i, ty));
        let cv = built(em.builder.build_load(ty, carry_v, "cv")).into_vector_value();
        let ci = built(em.builder.build_load(ty, carry_i, "ci")).into_vector_value();
        let sh = built(em.builder.build_load(mask_type, shifting, "sh")).into_vector_value();
        let take = built(em.builder.build_or(sh, before(cv, ci, sv, si), "take"));
        store(slot_v, em.select(take, cv, sv));
        store(slot_i, em.select(take, ci, si));
        built(em.builder.build_store(carry_v, em.select(take, sv, cv)));
        built(em.builder.build_store(carry_i, em.select(take, si, ci)));
        built(em.builder.build_store(shifting, take));
    });
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
