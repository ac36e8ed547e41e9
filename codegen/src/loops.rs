//! Index arithmetic, element loads and stores, loops and conditionals: the control code both
//! tile emitters (the CPU's, [`crate::cpu`], and the GPU's, [`crate::nvptx`]) build around the
//! formula. Each emitter implements [`LoopCode::em`]; the rest is shared, so the two emit the
//! same instructions (and names) for the same structure.

use crate::formula::{Emitter, Value};
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::IntPredicate;

/// Builder calls fail only when the builder has no position, which is a bug of the emitter.
fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

pub(crate) trait LoopCode<'ctx> {
    fn em(&self) -> &Emitter<'_, 'ctx>;

    fn i64(&self, v: i64) -> IntValue<'ctx> {
        self.em().context.i64_type().const_int(v as u64, true)
    }

    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        built(self.em().builder.build_int_add(a, b, "add"))
    }

    fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        built(self.em().builder.build_int_sub(a, b, "sub"))
    }

    fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        built(self.em().builder.build_int_mul(a, b, "mul"))
    }

    fn less(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        built(
            self.em()
                .builder
                .build_int_compare(IntPredicate::SLT, a, b, "lt"),
        )
    }

    fn min(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        built(self.em().builder.build_select(self.less(a, b), a, b, "min")).into_int_value()
    }

    /// The size of one element of the emitter's type, the alignment of its loads and stores.
    fn elem_bytes(&self) -> u32 {
        keops_middle::target::elem_bytes(self.em().scalar) as u32
    }

    fn elem_ptr(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>) -> PointerValue<'ctx> {
        let em = self.em();
        // SAFETY (of the generated code): every index is inside the buffers of the calling
        // convention (`keops_runtime::TileFn`, `keops_runtime::gpu`) or of the emitter's own
        // stack or shared tiles.
        unsafe {
            built(
                em.builder
                    .build_in_bounds_gep(em.float_type(), base, &[index], "p"),
            )
        }
    }

    /// A load of `lanes` consecutive elements, aligned only to the element.
    fn load(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>, lanes: u32) -> Value<'ctx> {
        let em = self.em();
        let v = built(em.builder.build_load(
            em.vector_type(lanes),
            self.elem_ptr(base, index),
            "ld",
        ))
        .into_vector_value();
        v.as_instruction()
            .expect("a load")
            .set_alignment(self.elem_bytes())
            .expect("valid alignment");
        v
    }

    fn store(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>, v: Value<'ctx>) {
        built(self.em().builder.build_store(self.elem_ptr(base, index), v))
            .set_alignment(self.elem_bytes())
            .expect("valid alignment");
    }

    /// `for (counter = start; cond(counter); counter += step) body(counter)`, through a stack
    /// slot that LLVM promotes to a register.
    fn emit_loop(
        &self,
        function: FunctionValue<'ctx>,
        counter: PointerValue<'ctx>,
        start: IntValue<'ctx>,
        step: i64,
        cond: impl FnOnce(IntValue<'ctx>) -> IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>),
    ) {
        let em = self.em();
        let ctx = em.context;
        let b = em.builder;
        let header = ctx.append_basic_block(function, "loop");
        let inside = ctx.append_basic_block(function, "body");
        let exit = ctx.append_basic_block(function, "exit");
        built(b.build_store(counter, start));
        built(b.build_unconditional_branch(header));
        b.position_at_end(header);
        let i = built(b.build_load(ctx.i64_type(), counter, "i")).into_int_value();
        built(b.build_conditional_branch(cond(i), inside, exit));
        b.position_at_end(inside);
        body(i);
        let i = built(b.build_load(ctx.i64_type(), counter, "i")).into_int_value();
        built(b.build_store(counter, self.add(i, self.i64(step))));
        built(b.build_unconditional_branch(header));
        b.position_at_end(exit);
    }

    /// `for (counter = start; counter < end; counter += step) body(counter)`.
    fn emit_loop_to(
        &self,
        function: FunctionValue<'ctx>,
        counter: PointerValue<'ctx>,
        (start, end): (IntValue<'ctx>, IntValue<'ctx>),
        step: i64,
        body: impl FnOnce(IntValue<'ctx>),
    ) {
        self.emit_loop(function, counter, start, step, |i| self.less(i, end), body);
    }

    /// `if cond { body }`, the builder left after it.
    fn emit_if(&self, function: FunctionValue<'ctx>, cond: IntValue<'ctx>, body: impl FnOnce()) {
        let em = self.em();
        let ctx = em.context;
        let then = ctx.append_basic_block(function, "then");
        let after = ctx.append_basic_block(function, "endif");
        built(em.builder.build_conditional_branch(cond, then, after));
        em.builder.position_at_end(then);
        body();
        built(em.builder.build_unconditional_branch(after));
        em.builder.position_at_end(after);
    }
}
