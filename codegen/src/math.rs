//! A vectorizable math library emitted as LLVM IR.
//!
//! LLVM's `llvm.exp`, `llvm.sin`, … become one scalar libm call per lane on x86 and have no
//! lowering at all on NVPTX, so every elementary function a KeOps formula needs is built here
//! from operations that are native on both: IEEE arithmetic, `llvm.fma`, `llvm.fabs`,
//! `llvm.copysign`, `llvm.floor`, `llvm.sqrt`, comparisons, selects, and integer operations on
//! bitcast values. The code has no branches, loops or calls, so one emitter serves scalars and
//! vectors of any width.
//!
//! Every function is defined at most once per module and type, as `keops.<name>.<type>` with
//! internal linkage and `alwaysinline` (see [`MathLib::call`]); the crate's tests
//! (`codegen/tests/math/harness.rs`) JIT-compile one at a time to measure them.
//!
//! The error bounds quoted in the emitters' documentation are in ULP of the result type,
//! measured against the host's libm (through Rust's `f64` functions, the reference rounded to
//! `f32` for the `f32` variants) by `codegen/tests/math/` at every vector width the host can
//! select, and rounded up; [`MathFn::max_ulp`] returns them.
//!
//! Slow paths (underflow, overflow, huge arguments) are computed on every lane and selected,
//! so they cost nothing extra where they are taken, and unless an input is itself denormal no
//! intermediate is: operations that produce denormals can take a microcode assist on x86 (see
//! `exp`, whose underflowing results come from integer rounding). The library never changes
//! the floating-point environment itself: CPU code built [`MathLib::with_flushing`] runs inside
//! the tile function's FTZ/DAZ window (`cpu::flush`), and its `exp` lets the hardware flush
//! what falls below the smallest normal number.

use std::f64::consts::{FRAC_2_PI, FRAC_PI_2, FRAC_PI_4, LOG2_E, PI};

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicType, BasicTypeEnum, IntType, VectorType};
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, FunctionValue, InstructionOpcode};
use inkwell::{FloatPredicate, IntPredicate};
use keops_runtime::DType;

/// Splits `hi + lo` (an f64 double-double) into a head exactly representable in `dtype` and
/// the rest: both parts are exact for `F64`, and `hi + lo` is good to ~2^-48 for `F32`.
fn split(dtype: DType, hi: f64, lo: f64) -> (f64, f64) {
    match dtype {
        DType::F32 => {
            let head = f64::from(hi as f32);
            (head, (hi - head) + lo)
        }
        DType::F64 => (hi, lo),
    }
}

/// The functions of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MathFn {
    Exp,
    Log,
    Sin,
    Cos,
    Atan,
    Asin,
    Acos,
    Atan2,
    Pow,
}

impl MathFn {
    pub const ALL: [MathFn; 9] = [
        MathFn::Exp,
        MathFn::Log,
        MathFn::Sin,
        MathFn::Cos,
        MathFn::Atan,
        MathFn::Asin,
        MathFn::Acos,
        MathFn::Atan2,
        MathFn::Pow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MathFn::Exp => "exp",
            MathFn::Log => "log",
            MathFn::Sin => "sin",
            MathFn::Cos => "cos",
            MathFn::Atan => "atan",
            MathFn::Asin => "asin",
            MathFn::Acos => "acos",
            MathFn::Atan2 => "atan2",
            MathFn::Pow => "pow",
        }
    }

    pub fn arity(self) -> usize {
        match self {
            MathFn::Atan2 | MathFn::Pow => 2,
            _ => 1,
        }
    }

    /// The stated maximum error in ULP (of the result, in the element type) over the domain
    /// described in the doc comment of the function's emitter; tests check it.
    pub fn max_ulp(self, scalar: DType) -> f64 {
        // (f32, f64). The f32 bounds of the unary functions are the exhaustive maxima over
        // the ranges that matter (every f32 in ±[1e-4, 1e4] for atan, asin, acos, sin and
        // cos; |x| in [1e-6, 104] for exp; every 7th positive f32 for log); the others, and
        // all f64 bounds, come from random sweeps, with one ULP of margin where the sweep's
        // maximum is not backed by a tight error analysis.
        let (f32_bound, f64_bound) = match self {
            MathFn::Exp | MathFn::Log | MathFn::Sin | MathFn::Cos => (1.0, 1.0),
            MathFn::Atan | MathFn::Atan2 => (2.0, 2.0),
            MathFn::Asin | MathFn::Acos => (3.0, 3.0),
            MathFn::Pow => (1.0, 2.0),
        };
        match scalar {
            DType::F32 => f32_bound,
            DType::F64 => f64_bound,
        }
    }
}

/// 2^k for k in the normal exponent range of f64.
fn pow2(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// Emits (once per module, per function and per type) and calls the math functions.
pub struct MathLib<'ctx> {
    context: &'ctx Context,
    /// How f32 `exp` computes the power of two of its reduced argument (see
    /// [`MathLib::with_fast_exp`]).
    exp2: Exp2,
    /// Whether the code runs with subnormals flushed to zero (see [`MathLib::with_flushing`]).
    flushes: bool,
}

/// How f32 `exp` computes `exp(r)` of its reduced argument, |r| <= ln 2 / 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exp2 {
    /// The degree-5 polynomial (1 ULP), on every target.
    Polynomial,
    /// NVPTX's `ex2.approx.ftz.f32` of `r log2 e` (NVPTX modules only).
    Ex2Approx,
    /// LLVM's `exp2` of `r log2 e` in `ex2.approx`'s place (a libm call on the host): the
    /// same reduction, scaling and special values as `Ex2Approx`, so that tests on a machine
    /// without a GPU check everything of the fast path but the special-function unit.
    HostExp2,
}

impl<'ctx> MathLib<'ctx> {
    pub fn new(context: &'ctx Context) -> MathLib<'ctx> {
        MathLib {
            context,
            exp2: Exp2::Polynomial,
            flushes: false,
        }
    }

    /// For NVPTX modules only: f32 `exp` (and what calls it: `Exp`, the LogSumExp and softmax
    /// reductions' rescalings) computes 2^(r·log2 e) of the reduced argument with the
    /// special-function unit's `ex2.approx.ftz.f32` instead of the degree-5 polynomial, which
    /// saves six FMAs per call; the rest (clamping, NaN, reduction, scaling, denormal results)
    /// is unchanged. Error: `ex2.approx`'s (2 ULP, the bound CUDA states for `exp2f`, which it
    /// implements) plus the reduction's half ULP, so about 3 ULP against 1; f64 is unchanged.
    pub fn with_fast_exp(self, fast_exp: bool) -> MathLib<'ctx> {
        self.with_exp2(if fast_exp {
            Exp2::Ex2Approx
        } else {
            Exp2::Polynomial
        })
    }

    /// f32 `exp`'s power of two as `exp2` says ([`MathLib::with_fast_exp`] for NVPTX).
    pub fn with_exp2(mut self, exp2: Exp2) -> MathLib<'ctx> {
        self.exp2 = exp2;
        self
    }

    /// For code that runs with the x86 MXCSR's FTZ and DAZ bits set (`codegen::cpu::flush`):
    /// `exp` (and `pow`, which ends with it) computes results down to the smallest normal
    /// number and lets the hardware flush those below it, instead of rounding subnormal
    /// results exactly with integer arithmetic (three operations fewer per call). Such code
    /// must run with FTZ set: without it, results below the smallest normal number are neither
    /// flushed nor exact (some value below it).
    pub fn with_flushing(mut self, flushes: bool) -> MathLib<'ctx> {
        self.flushes = flushes;
        self
    }

    /// Calls `f` on arguments that are all f32 or f64, scalar or vector (any width): defines
    /// `keops.<name>.<type>` (internal linkage, attribute alwaysinline) in `module` on first use.
    ///
    /// The definition is looked up by name in `module` rather than cached here, so one
    /// `MathLib` can serve several modules. `builder` must be positioned; it stays where it
    /// was (bodies are emitted with a builder of their own).
    ///
    /// # Panics
    /// If the number of arguments is not `f.arity()`, or the arguments are not all of one
    /// f32/f64 scalar or vector type.
    pub fn call(
        &self,
        module: &Module<'ctx>,
        builder: &Builder<'ctx>,
        f: MathFn,
        args: &[BasicValueEnum<'ctx>],
    ) -> BasicValueEnum<'ctx> {
        assert_eq!(
            args.len(),
            f.arity(),
            "{} takes {} argument(s)",
            f.name(),
            f.arity()
        );
        let ty = args[0].get_type();
        assert!(
            args.iter().all(|a| a.get_type() == ty),
            "the arguments of {} differ in type",
            f.name()
        );
        let (scalar, lanes) = self.shape_of(ty).unwrap_or_else(|| {
            panic!(
                "{} called on {ty}, not an f32/f64 scalar or vector",
                f.name()
            )
        });
        let function = self.function(module, f, scalar, lanes);
        let args: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|&a| a.into()).collect();
        builder
            .build_call(function, &args, f.name())
            .expect("the builder must be positioned")
            .try_as_basic_value()
            .basic()
            .expect("math functions return a value")
    }

    /// Element type and lane count (`None` for a scalar) of an f32/f64 scalar or vector type.
    fn shape_of(&self, ty: BasicTypeEnum<'ctx>) -> Option<(DType, Option<u32>)> {
        let (element, lanes) = match ty {
            BasicTypeEnum::VectorType(v) => (v.get_element_type(), Some(v.get_size())),
            other => (other, None),
        };
        let scalar = if element == BasicTypeEnum::from(self.context.f32_type()) {
            DType::F32
        } else if element == BasicTypeEnum::from(self.context.f64_type()) {
            DType::F64
        } else {
            return None;
        };
        Some((scalar, lanes))
    }

    fn function(
        &self,
        module: &Module<'ctx>,
        f: MathFn,
        scalar: DType,
        lanes: Option<u32>,
    ) -> FunctionValue<'ctx> {
        self.define(
            module,
            f.name(),
            f.arity(),
            scalar,
            lanes,
            |em, arg| match f {
                MathFn::Exp => em.exp(arg[0]),
                MathFn::Log => em.log(arg[0]),
                MathFn::Sin => em.sin_cos(arg[0], false),
                MathFn::Cos => em.sin_cos(arg[0], true),
                MathFn::Atan => em.atan(arg[0]),
                MathFn::Asin => em.asin(arg[0]),
                MathFn::Acos => em.acos(arg[0]),
                MathFn::Atan2 => em.atan2(arg[0], arg[1]),
                MathFn::Pow => em.pow(arg[0], arg[1]),
            },
        )
    }

    /// The function `keops.<name>.<type>` of `arity` arguments whose body `body` builds,
    /// defined on first use.
    fn define(
        &self,
        module: &Module<'ctx>,
        name: &str,
        arity: usize,
        scalar: DType,
        lanes: Option<u32>,
        body: impl FnOnce(&Emitter<'_, 'ctx>, &[Val<'ctx>]) -> Val<'ctx>,
    ) -> FunctionValue<'ctx> {
        let type_name = match lanes {
            None => scalar.short_name().to_string(),
            Some(n) => format!("v{n}{}", scalar.short_name()),
        };
        let name = format!("keops.{name}.{type_name}");
        if let Some(existing) = module.get_function(&name) {
            return existing;
        }

        let builder = self.context.create_builder();
        let em = Emitter {
            context: self.context,
            module,
            builder: &builder,
            scalar,
            lanes,
            exp2: self.exp2,
            flushes: self.flushes,
        };
        let ty = em.float_type();
        let fn_type = ty.fn_type(&vec![ty.into(); arity], false);
        let function = module.add_function(&name, fn_type, Some(Linkage::Internal));
        for attribute in ["alwaysinline", "nounwind"] {
            let kind = Attribute::get_named_enum_kind_id(attribute);
            function.add_attribute(
                AttributeLoc::Function,
                self.context.create_enum_attribute(kind, 0),
            );
        }
        builder.position_at_end(self.context.append_basic_block(function, "entry"));
        let args: Vec<Val<'ctx>> = function.get_param_iter().collect();
        let result = body(&em, &args);
        builder.build_return(Some(&result)).expect(POSITIONED);
        function
    }
}

const POSITIONED: &str = "the body builder is positioned";

type Val<'ctx> = BasicValueEnum<'ctx>;

/// Builds the body of one function for one type: `float_type()` is the scalar or vector type
/// of the operands, `int_type()` the integer type of the same shape and bit width. Masks are
/// `i1` or vectors of `i1`.
#[derive(Clone, Copy)]
struct Emitter<'a, 'ctx> {
    context: &'ctx Context,
    module: &'a Module<'ctx>,
    builder: &'a Builder<'ctx>,
    scalar: DType,
    lanes: Option<u32>,
    /// See [`MathLib::with_exp2`].
    exp2: Exp2,
    /// See [`MathLib::with_flushing`].
    flushes: bool,
}

// Primitive operations.
impl<'ctx> Emitter<'_, 'ctx> {
    /// The same emitter for the other precision (same lane count).
    fn with(&self, scalar: DType) -> Self {
        Emitter { scalar, ..*self }
    }

    fn shaped(&self, element: BasicTypeEnum<'ctx>) -> BasicTypeEnum<'ctx> {
        match (self.lanes, element) {
            (None, e) => e,
            (Some(n), BasicTypeEnum::FloatType(e)) => e.vec_type(n).into(),
            (Some(n), BasicTypeEnum::IntType(e)) => e.vec_type(n).into(),
            _ => unreachable!("elements are floats or integers"),
        }
    }

    fn float_type(&self) -> BasicTypeEnum<'ctx> {
        self.shaped(match self.scalar {
            DType::F32 => self.context.f32_type().into(),
            DType::F64 => self.context.f64_type().into(),
        })
    }

    fn int_element(&self) -> IntType<'ctx> {
        match self.scalar {
            DType::F32 => self.context.i32_type(),
            DType::F64 => self.context.i64_type(),
        }
    }

    fn int_type(&self) -> BasicTypeEnum<'ctx> {
        self.shaped(self.int_element().into())
    }

    fn splat(&self, element: Val<'ctx>) -> Val<'ctx> {
        match self.lanes {
            None => element,
            Some(n) => VectorType::const_vector(&vec![element; n as usize]).into(),
        }
    }

    /// Floating-point constant (rounded to the element type).
    fn f(&self, v: f64) -> Val<'ctx> {
        self.splat(match self.scalar {
            DType::F32 => self.context.f32_type().const_float(v).into(),
            DType::F64 => self.context.f64_type().const_float(v).into(),
        })
    }

    /// Integer constant of the element's bit width.
    fn i(&self, v: i64) -> Val<'ctx> {
        self.splat(self.int_element().const_int(v as u64, true).into())
    }

    fn binop(&self, op: InstructionOpcode, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.builder.build_binop(op, a, b, "").expect(POSITIONED)
    }

    fn add(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::FAdd, a, b)
    }

    fn sub(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::FSub, a, b)
    }

    fn mul(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::FMul, a, b)
    }

    fn div(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::FDiv, a, b)
    }

    fn neg(&self, a: Val<'ctx>) -> Val<'ctx> {
        match a {
            BasicValueEnum::FloatValue(v) => self
                .builder
                .build_float_neg(v, "")
                .expect(POSITIONED)
                .into(),
            BasicValueEnum::VectorValue(v) => self
                .builder
                .build_float_neg(v, "")
                .expect(POSITIONED)
                .into(),
            _ => unreachable!("fneg of a non-float"),
        }
    }

    fn iadd(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::Add, a, b)
    }

    fn isub(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::Sub, a, b)
    }

    /// Bitwise and; also the conjunction of masks.
    fn and(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::And, a, b)
    }

    fn or(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::Or, a, b)
    }

    fn xor(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::Xor, a, b)
    }

    fn shl(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::Shl, a, b)
    }

    fn lshr(&self, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        self.binop(InstructionOpcode::LShr, a, b)
    }

    fn intrinsic(&self, name: &str, args: &[Val<'ctx>]) -> Val<'ctx> {
        let declaration = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[args[0].get_type()]))
            .unwrap_or_else(|| panic!("LLVM 19 provides {name}"));
        let args: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|&a| a.into()).collect();
        self.builder
            .build_call(declaration, &args, "")
            .expect(POSITIONED)
            .try_as_basic_value()
            .basic()
            .expect("the intrinsic returns a value")
    }

    /// NVPTX's `ex2.approx.ftz.f32` of an f32 scalar or one-lane vector (only in modules for
    /// NVPTX, whose code is one lane wide).
    fn ex2_approx(&self, a: Val<'ctx>) -> Val<'ctx> {
        if self.exp2 == Exp2::HostExp2 {
            return self.intrinsic("llvm.exp2", &[a]);
        }
        let name = "llvm.nvvm.ex2.approx.ftz.f";
        let declaration = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[]))
            .unwrap_or_else(|| panic!("LLVM 19 provides {name}"));
        let zero = self.context.i32_type().const_zero();
        let scalar = match a {
            BasicValueEnum::VectorValue(v) => self
                .builder
                .build_extract_element(v, zero, "lane")
                .expect(POSITIONED),
            other => other,
        };
        let result = self
            .builder
            .build_call(declaration, &[scalar.into()], "ex2")
            .expect(POSITIONED)
            .try_as_basic_value()
            .basic()
            .expect("the intrinsic returns a value");
        match a {
            BasicValueEnum::VectorValue(v) => self
                .builder
                .build_insert_element(v, result, zero, "ex2")
                .expect(POSITIONED)
                .into(),
            _ => result,
        }
    }

    /// a·b + c with a single rounding.
    fn fma(&self, a: Val<'ctx>, b: Val<'ctx>, c: Val<'ctx>) -> Val<'ctx> {
        self.intrinsic("llvm.fma", &[a, b, c])
    }

    fn fabs(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.intrinsic("llvm.fabs", &[a])
    }

    /// The magnitude of `magnitude` with the sign of `sign`.
    fn copysign(&self, magnitude: Val<'ctx>, sign: Val<'ctx>) -> Val<'ctx> {
        self.intrinsic("llvm.copysign", &[magnitude, sign])
    }

    fn floor(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.intrinsic("llvm.floor", &[a])
    }

    fn sqrt(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.intrinsic("llvm.sqrt", &[a])
    }

    fn fcmp(&self, predicate: FloatPredicate, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        match (a, b) {
            (BasicValueEnum::FloatValue(a), BasicValueEnum::FloatValue(b)) => self
                .builder
                .build_float_compare(predicate, a, b, "")
                .expect(POSITIONED)
                .into(),
            (BasicValueEnum::VectorValue(a), BasicValueEnum::VectorValue(b)) => self
                .builder
                .build_float_compare(predicate, a, b, "")
                .expect(POSITIONED)
                .into(),
            _ => unreachable!("fcmp operands have one float shape"),
        }
    }

    fn icmp(&self, predicate: IntPredicate, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        match (a, b) {
            (BasicValueEnum::IntValue(a), BasicValueEnum::IntValue(b)) => self
                .builder
                .build_int_compare(predicate, a, b, "")
                .expect(POSITIONED)
                .into(),
            (BasicValueEnum::VectorValue(a), BasicValueEnum::VectorValue(b)) => self
                .builder
                .build_int_compare(predicate, a, b, "")
                .expect(POSITIONED)
                .into(),
            _ => unreachable!("icmp operands have one integer shape"),
        }
    }

    /// `mask ? a : b`, lane-wise.
    fn select(&self, mask: Val<'ctx>, a: Val<'ctx>, b: Val<'ctx>) -> Val<'ctx> {
        match mask {
            BasicValueEnum::IntValue(m) => {
                self.builder.build_select(m, a, b, "").expect(POSITIONED)
            }
            BasicValueEnum::VectorValue(m) => {
                self.builder.build_select(m, a, b, "").expect(POSITIONED)
            }
            _ => unreachable!("masks are i1 or vectors of i1"),
        }
    }

    fn bitcast_int(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.builder
            .build_bit_cast(a, self.int_type(), "")
            .expect(POSITIONED)
    }

    fn bitcast_float(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.builder
            .build_bit_cast(a, self.float_type(), "")
            .expect(POSITIONED)
    }

    /// Converts `a` (of this emitter's type) to the type of `to`.
    fn convert(&self, a: Val<'ctx>, to: &Self) -> Val<'ctx> {
        let op = match (self.scalar, to.scalar) {
            (DType::F32, DType::F64) => InstructionOpcode::FPExt,
            (DType::F64, DType::F32) => InstructionOpcode::FPTrunc,
            _ => return a,
        };
        self.builder
            .build_cast(op, a, to.float_type(), "")
            .expect(POSITIONED)
    }

    /// True where the sign bit is set (including -0 and negative NaNs).
    fn sign_bit(&self, a: Val<'ctx>) -> Val<'ctx> {
        self.icmp(IntPredicate::SLT, self.bitcast_int(a), self.i(0))
    }

    /// Horner evaluation with FMAs; `coefficients` from the highest degree down.
    fn poly(&self, x: Val<'ctx>, coefficients: &[f64]) -> Val<'ctx> {
        let (&first, rest) = coefficients
            .split_first()
            .expect("a polynomial has coefficients");
        rest.iter()
            .fold(self.f(first), |acc, &c| self.fma(acc, x, self.f(c)))
    }

    /// The same polynomial by Estrin's scheme: pairs `c_k + c_(k+1) x`, combined with x², x⁴,
    /// ...: two more operations than Horner's for degree 5, but a chain of about log2(degree)
    /// FMAs instead of one per degree, for code whose speed is the latency of that chain.
    fn poly_estrin(&self, x: Val<'ctx>, coefficients: &[f64]) -> Val<'ctx> {
        let lowest_first: Vec<f64> = coefficients.iter().rev().copied().collect();
        let mut terms: Vec<Val<'ctx>> = lowest_first
            .chunks(2)
            .map(|pair| match pair {
                [c0, c1] => self.fma(self.f(*c1), x, self.f(*c0)),
                [c0] => self.f(*c0),
                _ => unreachable!("chunks of two"),
            })
            .collect();
        let mut power = self.mul(x, x);
        while terms.len() > 1 {
            terms = terms
                .chunks(2)
                .map(|pair| match pair {
                    [low, high] => self.fma(*high, power, *low),
                    [low] => *low,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            if terms.len() > 1 {
                power = self.mul(power, power);
            }
        }
        terms[0]
    }
}

// Exponential and logarithm.
impl<'ctx> Emitter<'_, 'ctx> {
    /// `exp(x)`.
    ///
    /// Algorithm: n = rint(x/ln 2) by the 1.5·2^m shifter trick (no float-to-int conversion,
    /// which is poison for NaN), Cody-Waite reduction r = x - n·ln2_hi - n·ln2_lo with
    /// |r| <= ln2/2, exp(r) = 1 + r + r²·P(r) with SLEEF's minimax P (degree 5 for f32, 10 for
    /// f64), then the scaling by 2^n (see `scale_by_power_of_two`), which never produces a
    /// denormal or underflowing intermediate: results that round to 0 or to a denormal come
    /// out of integer arithmetic, so the speed does not depend on the data (on x86 a floating
    /// operation with such a result can cost a microcode assist of ~100 cycles). In flushing
    /// code ([`MathLib::with_flushing`]) the scaling is `scale_flushing`'s instead.
    ///
    /// Domain: all inputs. Error: <= 1 ULP for f32 and f64, denormal results included
    /// (measured max: 1 and 1); in flushing code, results below the smallest normal number
    /// are zeros (measured: within 1 ULP of the flushed correctly rounded value).
    /// Special values: exp(NaN) = NaN, exp(+inf) = +inf, exp(-inf) = 0; results round to 0
    /// below ln(2^-150) (f32) / ln(2^-1075) (f64) and overflow to +inf above ln(MAX).
    fn exp(&self, x: Val<'ctx>) -> Val<'ctx> {
        self.exp_with_tail(x, None)
    }

    /// `exp(x + tail)` for a small tail (the low part of a double-double argument, in `pow`),
    /// which joins the reduced argument. It must be finite, and 0 when |x| > 750.
    fn exp_with_tail(&self, x: Val<'ctx>, tail: Option<Val<'ctx>>) -> Val<'ctx> {
        let s = self.scalar;
        // Beyond these, exp is 0 or +inf, and the clamped value still produces exactly that
        // through the scaling below; the comparisons are false for NaN, which passes through
        // (on x86 each compare-and-select is a single min/max).
        // Flushing code stops at n = emin (see `scale_flushing`): exp(x) is below the smallest
        // normal number there, so the clamped value is flushed.
        let low = match (s, self.flushes) {
            (_, true) => ((1 - s.exponent_bias()) as f64 - 0.25) * std::f64::consts::LN_2,
            (DType::F32, false) => -104.0,
            (DType::F64, false) => -746.0,
        };
        let high = match s {
            DType::F32 => 89.0,
            DType::F64 => 710.0,
        };
        let x = self.select(
            self.fcmp(FloatPredicate::OGT, x, self.f(high)),
            self.f(high),
            x,
        );
        let x = self.select(
            self.fcmp(FloatPredicate::OLT, x, self.f(low)),
            self.f(low),
            x,
        );

        // Adding 1.5·2^m + bias - 1 rounds x·log2(e) to an integer n and leaves n + bias - 1,
        // the biased exponent of 2^(n-1), in the low bits of t.
        let m = s.mantissa_bits();
        let shifter = 1.5 * pow2(m as i32) + (s.exponent_bias() - 1) as f64;
        let t = self.fma(x, self.f(LOG2_E), self.f(shifter));
        let n = self.sub(t, self.f(shifter));

        // ln2_hi has trailing zero bits, so n·ln2_hi is exact for the n that occur here.
        let (ln2_hi, ln2_lo, coefficients): (f64, f64, &[f64]) = match s {
            DType::F32 => (
                0.693_145_751_953_125,
                1.428_606_8e-6,
                &[
                    1.985_276_2e-4,
                    1.393_043_6e-3,
                    8.333_361e-3,
                    4.166_648_5e-2,
                    0.166_666_67,
                    0.5,
                ],
            ),
            DType::F64 => (
                0.693_147_180_559_663,
                2.823_529_056_303_157_7e-13,
                &[
                    2.088_606_211_072_837e-9,
                    2.511_129_308_928_765_2e-8,
                    2.755_739_112_349_004_7e-7,
                    2.755_723_629_119_288_3e-6,
                    2.480_158_715_923_547_3e-5,
                    1.984_126_989_605_092e-4,
                    1.388_888_888_897_745e-3,
                    8.333_333_333_316_527e-3,
                    4.166_666_666_666_650_5e-2,
                    0.166_666_666_666_666_85,
                    0.5,
                ],
            ),
        };
        let r = self.fma(n, self.f(-ln2_hi), x);
        let r = self.fma(n, self.f(-ln2_lo), r);
        let r = match tail {
            Some(tail) => self.add(r, tail),
            None => r,
        };
        // 2·exp(r) = 2 + 2r + r²·2P(r): every step is exactly twice that of 1 + r + r²·P(r)
        // (scaling by 2 commutes with rounding), so this is bit for bit twice the rounded
        // exp(r), for the same number of operations (2r is off the critical path).
        let one_lane = self.lanes.is_none_or(|n| n == 1);
        let fast = self.exp2 != Exp2::Polynomial;
        let twice_p = if fast && s == DType::F32 && one_lane && tail.is_none() {
            // exp(r) = 2^(r log2 e), |r log2 e| <= 1/2: the product is within half an ULP,
            // the doubling exact.
            let power = self.ex2_approx(self.mul(r, self.f(LOG2_E)));
            self.add(power, power)
        } else {
            let doubled: Vec<f64> = coefficients.iter().map(|c| 2.0 * c).collect();
            // CPU code waits on this chain (pairs in flight are bounded by the reorder
            // buffer); the GPU hides it behind other warps and prefers fewer operations.
            let p = if self.flushes {
                self.poly_estrin(r, &doubled)
            } else {
                self.poly(r, &doubled)
            };
            self.add(self.fma(self.mul(r, r), p, self.add(r, r)), self.f(2.0))
        };
        if self.flushes {
            self.scale_flushing(twice_p, n, t)
        } else {
            self.scale_by_power_of_two(twice_p, n, t)
        }
    }

    /// (q/2)·2^n as [`Self::scale_by_power_of_two`] for n > emin, in code that runs with FTZ
    /// set, for n in [emin, emax + 1] (exp's flushing clamp): q·2^(n-1), one multiplication by
    /// a normal power of two. At n = emin that power would be subnormal (its bits, from `t`,
    /// are those of +0), so the lane multiplies q/2 (exact) by 2^emin: the hardware rounds the
    /// product once, and flushes it when it is below the smallest normal number.
    fn scale_flushing(&self, q: Val<'ctx>, n: Val<'ctx>, t: Val<'ctx>) -> Val<'ctx> {
        let s = self.scalar;
        let m = i64::from(s.mantissa_bits());
        let emin = 1 - s.exponent_bias();
        let normal_scale = self.shl(self.bitcast_int(t), self.i(m));
        let at_emin = self.fcmp(FloatPredicate::OLT, n, self.f(emin as f64 + 0.5));
        // 2^emin's bits and one step of q's exponent are both 1 << m: one constant raises the
        // scale's bits (+0) to 2^emin and halves q (exactly: q >= √2 is normal).
        let step = self.select(at_emin, self.i(1 << m), self.i(0));
        let scale = self.bitcast_float(self.or(normal_scale, step));
        let half_q = self.bitcast_float(self.isub(self.bitcast_int(q), step));
        self.mul(half_q, scale)
    }

    /// (q/2)·2^n, correctly rounded (denormal and infinite results included), for q = 2·exp(r)
    /// in [√2, 2√2] and n an integer in [n_min, emax + 1], given as the float `n` and as `t`,
    /// the shifter sum whose low bits hold n + bias - 1; n_min is the n of exp's lower clamp
    /// (-150 for f32, -1076 for f64). NaN in q propagates.
    ///
    /// Normal results (n >= emin + 1) are q·2^(n-1), one multiplication by a normal power of
    /// two. Below, the result is k·2^(emin - m) (a denormal, or one of the smallest normals),
    /// where the integer k = rint(q·2^(n - 1 - emin + m)) < 1.5·2^m is exactly the result's
    /// bit pattern. w = q·2^(n - 1 - emin + m) is exact and normal; rint(w) is read off
    /// w + 2^m (exact rounding for w < 2^m) and, for w in [2^m, 2^(m+1)) where w is already
    /// an integer, off w's own bits: each reading is at most the true k where the other is
    /// exact, so k is their maximum. One scale serves both cases (its exponent is raised by
    /// m - emin on the small lanes), so beside a plain scaling the common path costs a
    /// compare, a masked add, an FMA and a masked integer max, and no operation ever sees a
    /// denormal.
    fn scale_by_power_of_two(&self, q: Val<'ctx>, n: Val<'ctx>, t: Val<'ctx>) -> Val<'ctx> {
        let s = self.scalar;
        let m = i64::from(s.mantissa_bits());
        let emin = 1 - s.exponent_bias();
        let two_m = pow2(m as i32);
        // t's pattern is that of 1.5·2^m plus bias - 1 + n: shifting it left by m drops the
        // former (its low bits are 0) and moves the latter into the exponent field, giving
        // the bits of 2^(n-1) (mod 2^bits).
        let normal_scale = self.shl(self.bitcast_int(t), self.i(m));
        let small = self.fcmp(FloatPredicate::OLT, n, self.f(emin as f64 + 0.5));
        let raise = self.select(small, self.i((m - emin) << m), self.i(0));
        let scale = self.bitcast_float(self.iadd(normal_scale, raise));
        let w = self.mul(q, scale);

        let rounded = self.isub(
            self.bitcast_int(self.fma(q, scale, self.f(two_m))),
            self.i(s.bits_of(two_m)),
        );
        let integral = self.isub(
            self.bitcast_int(w),
            self.i(s.bits_of(two_m) - s.bits_of(pow2(emin as i32))),
        );
        let k = self.intrinsic("llvm.smax", &[rounded, integral]);
        // Selected as integers, so that x86 merges the select into the max.
        self.bitcast_float(self.select(small, k, self.bitcast_int(w)))
    }

    /// `log(x)` (natural logarithm).
    ///
    /// Algorithm: denormals are first scaled by 2^m; x = 2^k·(1 + f) with 1 + f in
    /// [sqrt(1/2), sqrt(2)) by offsetting the bit pattern (musl's trick), the exponent turned
    /// into a float without int-to-float conversion (which AVX2 lacks for i64 vectors). f32:
    /// Cephes `logf` polynomial of degree 9 in f, ln 2 split in two. f64: fdlibm's
    /// log(1 + f) = 2s + s·R(s²), s = f/(2 + f), evaluated as a double-double (see
    /// `log_f64_parts`) and rounded once.
    ///
    /// Domain: all inputs. Error: <= 1 ULP for f32 and f64, denormal inputs included
    /// (measured max: 1 and 1).
    /// Special values: log(±0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN.
    fn log(&self, x: Val<'ctx>) -> Val<'ctx> {
        let (k, f) = self.log_decompose(x);
        let r = match self.scalar {
            DType::F32 => {
                let z = self.mul(f, f);
                let p = self.poly(
                    f,
                    &[
                        7.037_683_629_2e-2,
                        -1.151_461_031_0e-1,
                        1.167_699_874_0e-1,
                        -1.242_014_084_6e-1,
                        1.424_932_278_7e-1,
                        -1.666_805_766_5e-1,
                        2.000_071_476_5e-1,
                        -2.499_999_399_3e-1,
                        3.333_333_117_4e-1,
                    ],
                );
                // ln 2 = 0.693359375 - 2.12194440e-4, the head exact in a few bits.
                let y = self.mul(self.mul(p, f), z);
                let y = self.fma(k, self.f(-2.121_944_4e-4), y);
                let y = self.fma(z, self.f(-0.5), y);
                self.fma(k, self.f(0.693_359_375), self.add(f, y))
            }
            DType::F64 => self.log_f64_parts(k, f).0,
        };
        self.log_special_values(x, r)
    }

    /// x = 2^k·(1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), k as a float; meaningful for
    /// positive finite x only.
    fn log_decompose(&self, x: Val<'ctx>) -> (Val<'ctx>, Val<'ctx>) {
        let s = self.scalar;
        let m = s.mantissa_bits();
        let min_normal = match s {
            DType::F32 => f64::from(f32::MIN_POSITIVE),
            DType::F64 => f64::MIN_POSITIVE,
        };
        let tiny = self.fcmp(FloatPredicate::OLT, x, self.f(min_normal));
        let scaled = self.select(tiny, self.mul(x, self.f(pow2(m as i32))), x);
        let k_adjust = self.select(tiny, self.f(-f64::from(m)), self.f(0.0));

        // Adding (bits(1) - bits(sqrt(1/2))) carries into the exponent exactly when the
        // mantissa is >= sqrt(1/2)·2, so exponent and mantissa come out normalized to
        // [sqrt(1/2), sqrt(2)) in one integer addition.
        let (one_bits, sqrt_half_bits, mantissa_mask): (i64, i64, i64) = match s {
            DType::F32 => (0x3f80_0000, 0x3f35_04f3, 0x007f_ffff),
            DType::F64 => (
                0x3ff0_0000_0000_0000,
                0x3fe6_a09e_0000_0000,
                0x000f_ffff_ffff_ffff,
            ),
        };
        let ix = self.iadd(self.bitcast_int(scaled), self.i(one_bits - sqrt_half_bits));
        let biased_exponent = self.lshr(ix, self.i(i64::from(m)));
        // OR-ing the (small, non-negative) exponent into the mantissa of 2^m gives 2^m + e.
        let two_m = pow2(m as i32);
        let e = self.bitcast_float(self.or(biased_exponent, self.i(s.bits_of(two_m))));
        let k = self.sub(e, self.f(two_m + s.exponent_bias() as f64));
        let k = self.add(k, k_adjust);
        let mantissa = self.iadd(self.and(ix, self.i(mantissa_mask)), self.i(sqrt_half_bits));
        (k, self.sub(self.bitcast_float(mantissa), self.f(1.0)))
    }

    /// f64 log(2^k·(1 + f)) as a normalized unevaluated sum hi + lo, good to ~2^-58.5
    /// relative (measured): log(1 + f) = 2s + s·R(s²) with s = f/(2 + f) and fdlibm
    /// `e_log.c`'s polynomial R, where 2s is carried with its rounding error and k·ln2_hi
    /// (exact: ln2_hi has 32 bits) is added with TwoSum.
    fn log_f64_parts(&self, k: Val<'ctx>, f: Val<'ctx>) -> (Val<'ctx>, Val<'ctx>) {
        let (ln2_hi, ln2_lo) = (0.693_147_180_369_123_8, 1.908_214_929_270_587_7e-10);
        // s = f/d as s + s_lo, d = 2 + f = d + d_lo exactly; 1/d = (1 - s)/2 saves a division.
        let d = self.add(self.f(2.0), f);
        let d_lo = self.sub(f, self.sub(d, self.f(2.0)));
        let s = self.div(f, d);
        let residual = self.sub(self.fma(self.neg(s), d, f), self.mul(s, d_lo));
        let s_lo = self.mul(self.mul(residual, self.sub(self.f(1.0), s)), self.f(0.5));

        let z = self.mul(s, s);
        let w = self.mul(z, z);
        let t1 = self.mul(
            w,
            self.poly(
                w,
                &[
                    0.153_138_376_992_093_73,
                    0.222_221_984_321_497_84,
                    0.399_999_999_994_094_2,
                ],
            ),
        );
        let t2 = self.mul(
            z,
            self.poly(
                w,
                &[
                    0.147_981_986_051_165_86,
                    0.181_835_721_616_180_5,
                    0.285_714_287_436_623_9,
                    0.666_666_666_666_673_5,
                ],
            ),
        );
        let big_r = self.add(t2, t1);

        let two_s = self.mul(self.f(2.0), s);
        let kh = self.mul(k, self.f(ln2_hi));
        let hi = self.add(kh, two_s);
        let bb = self.sub(hi, kh);
        let e = self.add(self.sub(kh, self.sub(hi, bb)), self.sub(two_s, bb));
        let small = self.fma(s, big_r, self.mul(self.f(2.0), s_lo));
        let lo = self.add(e, self.fma(k, self.f(ln2_lo), small));
        // s·R is not negligible next to hi: renormalize (Fast2Sum, |hi| >= |lo| here).
        let sum = self.add(hi, lo);
        (sum, self.sub(lo, self.sub(sum, hi)))
    }

    /// Overrides log's result `r` for x outside (0, inf).
    fn log_special_values(&self, x: Val<'ctx>, r: Val<'ctx>) -> Val<'ctx> {
        let r = self.select(
            self.fcmp(FloatPredicate::ULT, x, self.f(0.0)),
            self.f(f64::NAN),
            r,
        );
        let r = self.select(
            self.fcmp(FloatPredicate::OEQ, x, self.f(0.0)),
            self.f(f64::NEG_INFINITY),
            r,
        );
        self.select(
            self.fcmp(FloatPredicate::OEQ, x, self.f(f64::INFINITY)),
            self.f(f64::INFINITY),
            r,
        )
    }

    /// `pow(x, y)` (KeOps `Powf`).
    ///
    /// Algorithm: exp(y·log|x|), evaluated in f64 for both precisions (so on GPUs f32 `Pow`
    /// runs at f64 speed): log|x| as the double-double of `log_f64_parts`, y·log|x| as a
    /// double-double by FMA, its low part added to exp's reduced argument. The error left is
    /// that of log|x| (~2^-58.5 relative) times |y|, and that of exp.
    ///
    /// Domain: all inputs. Error, with w = |y·ln|x||: f32 <= 1 ULP everywhere (measured
    /// max: 0, i.e. correctly rounded on every sample); f64 <= 2 ULP while w <= 1 (measured
    /// max: 1), and <= 2 + w/16 ULP in general (measured: 2 + 0.053·w at worst): an absolute
    /// error e in y·ln|x| is a relative error e in the result, and log's ~2^-58.5 relative
    /// error makes e ≈ w·2^-58.5, i.e. w/20 ULP at worst.
    ///
    /// Special values (C99 `pow` where KeOps has no rule): pow(x, ±0) = 1 for every x, NaN
    /// included; pow(1, y) = 1 for every y, and pow(-1, ±inf) = 1; otherwise NaN propagates;
    /// finite x < 0 with non-integer y: NaN; x < 0 with odd integer y: -|x|^y, with even:
    /// |x|^y; pow(±0, y > 0) = ±0 for odd integer y, else +0; pow(±0, y < 0) = ±inf likewise;
    /// pow(-inf, y) = pow(-0, -y); |x| < 1 with y = +inf: +0, |x| > 1: +inf (mirrored for
    /// y = -inf).
    fn pow(&self, x: Val<'ctx>, y: Val<'ctx>) -> Val<'ctx> {
        let wide = self.with(DType::F64);
        let r = wide.pow_f64(self.convert(x, &wide), self.convert(y, &wide));
        wide.convert(r, self)
    }

    fn pow_f64(&self, x: Val<'ctx>, y: Val<'ctx>) -> Val<'ctx> {
        let ax = self.fabs(x);
        let (k, f) = self.log_decompose(ax);
        let (l, l_lo) = self.log_f64_parts(k, f);
        let l = self.log_special_values(ax, l);
        let w = self.mul(y, l);
        // |x| = 1 gives l = 0 exactly; y·0 must stay 0 for y = ±inf or NaN (pow(1, y) = 1).
        let unit = self.fcmp(FloatPredicate::OEQ, l, self.f(0.0));
        let w_used = self.select(unit, self.f(0.0), w);
        let tail = self.fma(y, l_lo, self.fma(y, l, self.neg(w)));
        // Outside ±750 the result is 0 or inf anyway, and the tail may be NaN or huge.
        let moderate = self.fcmp(FloatPredicate::OLT, self.fabs(w), self.f(750.0));
        let tail = self.select(moderate, tail, self.f(0.0));
        let r = self.exp_with_tail(w_used, Some(tail));

        let y_nonint = self.fcmp(FloatPredicate::UNE, self.floor(y), y);
        let half = self.mul(y, self.f(0.5));
        let y_odd = self.and(
            self.fcmp(FloatPredicate::OEQ, self.floor(y), y),
            self.fcmp(FloatPredicate::UNE, self.floor(half), half),
        );
        let r = self.select(self.and(self.sign_bit(x), y_odd), self.neg(r), r);
        let negative_finite = self.and(
            self.fcmp(FloatPredicate::OLT, x, self.f(0.0)),
            self.fcmp(FloatPredicate::OGT, x, self.f(f64::NEG_INFINITY)),
        );
        let r = self.select(self.and(negative_finite, y_nonint), self.f(f64::NAN), r);
        self.select(
            self.fcmp(FloatPredicate::OEQ, y, self.f(0.0)),
            self.f(1.0),
            r,
        )
    }
}

// Sine and cosine.
impl<'ctx> Emitter<'_, 'ctx> {
    /// `sin(x)` (`cosine == false`) or `cos(x)`.
    ///
    /// Algorithm: n = rint(x·2/π) (shifter trick, whose integer bits give the quadrant), a
    /// Cody-Waite reduction r = x - n·π/2, sin and cos kernels on [-π/4, π/4], selected and
    /// negated by quadrant. Both precisions reduce in f64:
    /// - f32: π/2 = P1 + P2 + P3 with P1 of 25 bits, so x - n·P1 is exact for |n| < 2^28; the
    ///   reduced argument is good to ~2^-52 relative, and FreeBSD's `__kernel_sindf` /
    ///   `__kernel_cosdf` (f64 polynomials accurate to 2^-37, 2^-34) finish in f64 with one final
    ///   rounding to f32. (On GPUs f32 `Sin`/`Cos` therefore run at f64 speed.)
    /// - f64: π/2 = P1 + T1 + T2 with P1 of 33 bits (fdlibm's `pio2_1`): x - n·P1 is exact for
    ///   |n| < 2^20, the rest is subtracted as a double-double (TwoProduct with an FMA,
    ///   TwoSum), giving r = hi + lo to ~2^-110 absolute; fdlibm's `__kernel_sin` /
    ///   `__kernel_cos` take (hi, lo).
    ///
    /// Domain of the ULP bound: |x| <= 4.2e8 (2^28·π/2) for f32, |x| <= 1.6e6 (2^20·π/2) for
    /// f64. Error there: <= 1 ULP for f32 and f64 (measured max: 1 and 1; f32 exhaustively
    /// on ±[1e-4, 1e4] and every third f32 up to 4.2e8).
    /// Beyond, up to |x| = 2^50: bounded absolute error, |x|·2^-78 (f32) and |x|·2^-86 (f64)
    /// plus the ULP bound (the head product n·P1 is no longer exact).
    /// Beyond 2^50 (~1.1e15), where n no longer fits the shifter, x is replaced by x·0: sin
    /// returns ±0 and cos returns 1 — no meaningful value without a Payne-Hanek reduction.
    /// Special values: sin(±0) = ±0, sin(x) = x for |x| < 2^-27, cos(±0) = 1,
    /// sin/cos(±inf) = NaN, sin/cos(NaN) = NaN.
    fn sin_cos(&self, x: Val<'ctx>, cosine: bool) -> Val<'ctx> {
        let wide = self.with(DType::F64);
        let xd = self.convert(x, &wide);
        let result = match self.scalar {
            DType::F32 => wide.sin_cos_for_f32(xd, cosine),
            DType::F64 => wide.sin_cos_f64(xd, cosine),
        };
        wide.convert(result, self)
    }

    /// Neutralizes |x| > 2^50 (see `sin_cos`) and returns (x, n, bits of the shifted n whose
    /// low two bits are n mod 4).
    fn quadrant(&self, x: Val<'ctx>) -> (Val<'ctx>, Val<'ctx>, Val<'ctx>) {
        let huge = self.fcmp(FloatPredicate::OGT, self.fabs(x), self.f(pow2(50)));
        let x = self.select(huge, self.mul(x, self.f(0.0)), x);
        let shifter = 1.5 * pow2(52);
        let t = self.fma(x, self.f(FRAC_2_PI), self.f(shifter));
        (x, self.sub(t, self.f(shifter)), self.bitcast_int(t))
    }

    /// Picks the kernel by quadrant q (cos x = sin(x + π/2)) and fixes the sign.
    fn by_quadrant(
        &self,
        x: Val<'ctx>,
        q: Val<'ctx>,
        sin: Val<'ctx>,
        cos: Val<'ctx>,
        cosine: bool,
    ) -> Val<'ctx> {
        let q = if cosine { self.iadd(q, self.i(1)) } else { q };
        let odd = self.icmp(IntPredicate::NE, self.and(q, self.i(1)), self.i(0));
        let r = self.select(odd, cos, sin);
        // Quadrants 2 and 3 negate: move bit 1 of q to the sign bit.
        let sign = self.shl(
            self.and(q, self.i(2)),
            self.i(i64::from(self.scalar.bits()) - 2),
        );
        let r = self.bitcast_float(self.xor(self.bitcast_int(r), sign));
        if cosine {
            r
        } else {
            // sin x rounds to x there; this also keeps -0, which the reduction's sums lose.
            let tiny = self.fcmp(FloatPredicate::OLT, self.fabs(x), self.f(pow2(-27)));
            self.select(tiny, x, r)
        }
    }

    fn sin_cos_for_f32(&self, x: Val<'ctx>, cosine: bool) -> Val<'ctx> {
        const P1: f64 = 1.570_796_310_901_641_8; // 25 bits: 0x3ff921fb50000000
        const P2: f64 = 1.589_325_477_352_819_6e-8;
        const P3: f64 = 6.368_317_163_510_95e-25;
        let (x, n, q) = self.quadrant(x);
        let r = self.fma(n, self.f(-P1), x);
        let r = self.fma(n, self.f(-P2), r);
        let r = self.fma(n, self.f(-P3), r);

        let z = self.mul(r, r);
        let w = self.mul(z, z);
        // FreeBSD k_sinf.c: |sin(r)/r - s(r)| < 2^-37.5.
        let s_tail = self.poly(z, &[2.718_311_493_989_822e-6, -1.983_933_483_609_663_2e-4]);
        let zr = self.mul(z, r);
        let sin = self.fma(
            zr,
            self.poly(z, &[8.333_329_385_889_463e-3, -0.166_666_666_416_265_24]),
            r,
        );
        let sin = self.fma(self.mul(zr, w), s_tail, sin);
        // FreeBSD k_cosf.c: |cos(r) - c(r)| < 2^-34.1.
        let c_tail = self.poly(z, &[2.439_044_879_627_741e-5, -1.388_676_377_460_993e-3]);
        let cos = self.fma(
            w,
            self.f(4.166_662_332_373_906e-2),
            self.fma(z, self.f(-0.499_999_997_251_031), self.f(1.0)),
        );
        let cos = self.fma(self.mul(w, z), c_tail, cos);
        self.by_quadrant(x, q, sin, cos, cosine)
    }

    fn sin_cos_f64(&self, x: Val<'ctx>, cosine: bool) -> Val<'ctx> {
        const P1: f64 = 1.570_796_326_734_125_6; // 33 bits: 0x3ff921fb54400000
        const T1: f64 = 6.077_100_506_506_192e-11;
        const T2: f64 = 3.521_559_865_183_2e-27;
        let (x, n, q) = self.quadrant(x);
        let a = self.fma(n, self.f(-P1), x);
        // (ph, pl) = n·T1 exactly; (s, e) = a - ph exactly (TwoSum, no ordering assumed).
        let ph = self.mul(n, self.f(T1));
        let pl = self.fma(n, self.f(T1), self.neg(ph));
        let s = self.sub(a, ph);
        let bb = self.sub(s, a);
        let e = self.add(self.sub(a, self.sub(s, bb)), self.sub(self.neg(ph), bb));
        let lo = self.fma(n, self.f(-T2), self.sub(e, pl));
        let hi = self.add(s, lo);
        let lo = self.add(self.sub(s, hi), lo);

        let z = self.mul(hi, hi);
        let w = self.mul(z, z);
        // fdlibm k_sin.c: sin(x + y) ≈ x - ((z·(y/2 - v·r) - y) - v·S1), v = z·x.
        let r = self.fma(
            self.mul(z, w),
            self.poly(z, &[1.589_690_995_211_55e-10, -2.505_076_025_340_686_3e-8]),
            self.poly(
                z,
                &[
                    2.755_731_370_707_006_8e-6,
                    -1.984_126_982_985_795e-4,
                    8.333_333_333_322_49e-3,
                ],
            ),
        );
        let v = self.mul(z, hi);
        let t = self.fma(self.neg(v), r, self.mul(self.f(0.5), lo));
        let t = self.fma(z, t, self.neg(lo));
        let t = self.fma(self.neg(v), self.f(-0.166_666_666_666_666_32), t);
        let sin = self.sub(hi, t);
        // fdlibm k_cos.c: cos(x + y) ≈ v + (((1 - v) - z/2) + (z·r - x·y)), v = 1 - z/2.
        let r = self.fma(
            z,
            self.poly(
                z,
                &[
                    2.480_158_728_947_673e-5,
                    -1.388_888_888_887_411e-3,
                    4.166_666_666_666_66e-2,
                ],
            ),
            self.mul(
                self.mul(w, w),
                self.poly(
                    z,
                    &[
                        -1.135_964_755_778_819_5e-11,
                        2.087_572_321_298_175e-9,
                        -2.755_731_435_139_066_3e-7,
                    ],
                ),
            ),
        );
        let hz = self.mul(self.f(0.5), z);
        let v = self.sub(self.f(1.0), hz);
        let tail = self.add(
            self.sub(self.sub(self.f(1.0), v), hz),
            self.fma(z, r, self.neg(self.mul(hi, lo))),
        );
        let cos = self.add(v, tail);
        self.by_quadrant(x, q, sin, cos, cosine)
    }
}

/// Regions of the arctangent reduction (see `atan_reduced`).
struct AtanRegion<'ctx> {
    /// u > tan(3π/8): atan u = π/2 + atan(-1/u).
    big: Val<'ctx>,
    /// u > tan(π/8) (f32) or 0.66 (f64, where Cephes' rational is valid): atan u =
    /// π/4 + atan((u-1)/(u+1)). Also true where `big` is.
    mid: Val<'ctx>,
    /// atan of the reduced argument.
    z: Val<'ctx>,
}

// Inverse trigonometric functions.
impl<'ctx> Emitter<'_, 'ctx> {
    /// atan(num/den) for num, den >= 0, not both 0 or both inf, reduced to |t| <= tan(π/8)
    /// (f32) or 0.66 (f64) without forming num/den first (one division for the reduction).
    /// den·tan(3π/8) and num + den must not overflow.
    fn atan_reduced(&self, num: Val<'ctx>, den: Val<'ctx>) -> AtanRegion<'ctx> {
        const TAN_3PI_8: f64 = 2.414_213_562_373_095;
        let mid_threshold = match self.scalar {
            DType::F32 => 0.414_213_562_373_095,
            DType::F64 => 0.66,
        };
        let big = self.fcmp(FloatPredicate::OGT, num, self.mul(den, self.f(TAN_3PI_8)));
        let mid = self.fcmp(
            FloatPredicate::OGT,
            num,
            self.mul(den, self.f(mid_threshold)),
        );
        let numerator = self.select(
            big,
            self.neg(den),
            self.select(mid, self.sub(num, den), num),
        );
        let denominator = self.select(big, num, self.select(mid, self.add(num, den), den));
        let t = self.div(numerator, denominator);
        let t2 = self.mul(t, t);
        let z = match self.scalar {
            // Cephes atanf: t + t³·P(t²).
            DType::F32 => {
                let p = self.poly(
                    t2,
                    &[
                        8.053_744_495_38e-2,
                        -1.387_768_560_32e-1,
                        1.997_771_064_78e-1,
                        -3.333_294_915_39e-1,
                    ],
                );
                self.fma(self.mul(p, t2), t, t)
            }
            // Cephes atan: t + t³·P(t²)/Q(t²), degree 4/5.
            DType::F64 => {
                let p = self.poly(
                    t2,
                    &[
                        -0.875_060_860_003_190_4,
                        -16.157_537_187_333_652,
                        -75.008_557_923_147_05,
                        -122.886_668_449_013_61,
                        -64.850_219_049_420_25,
                    ],
                );
                let q = self.poly(
                    t2,
                    &[
                        1.0,
                        24.858_464_901_423_062,
                        165.027_009_831_698_85,
                        432.881_060_491_290_27,
                        485.390_399_635_913_7,
                        194.550_657_148_261_4,
                    ],
                );
                self.fma(t, self.div(self.mul(t2, p), q), t)
            }
        };
        AtanRegion { big, mid, z }
    }

    /// offset + z for the region, where the offset is 0, π/4, π/2 — or, with `reflect` set
    /// (atan2 with x < 0: the angle is π - atan(|y|/|x|)), π, 3π/4, π/2 and -z. The offset is
    /// carried as head + tail so that only the final addition rounds.
    fn atan_assemble(&self, region: &AtanRegion<'ctx>, reflect: Option<Val<'ctx>>) -> Val<'ctx> {
        let s = self.scalar;
        let (pio4, pio4_lo) = split(s, FRAC_PI_4, 3.061_616_997_868_383e-17);
        let (pio2, pio2_lo) = split(s, FRAC_PI_2, 6.123_233_995_736_766e-17);
        let pick = |small: Val<'ctx>, mid: Val<'ctx>, big: Val<'ctx>| {
            self.select(region.big, big, self.select(region.mid, mid, small))
        };
        let mut head = pick(self.f(0.0), self.f(pio4), self.f(pio2));
        let mut tail = pick(self.f(0.0), self.f(pio4_lo), self.f(pio2_lo));
        let mut z = region.z;
        if let Some(reflect) = reflect {
            let (pi, pi_lo) = split(s, PI, 1.224_646_799_147_353_2e-16);
            let (three_pio4, three_pio4_lo) =
                split(s, 2.356_194_490_192_345, 9.184_850_993_605_148e-17);
            head = self.select(
                reflect,
                pick(self.f(pi), self.f(three_pio4), self.f(pio2)),
                head,
            );
            tail = self.select(
                reflect,
                pick(self.f(pi_lo), self.f(three_pio4_lo), self.f(pio2_lo)),
                tail,
            );
            z = self.select(reflect, self.neg(z), z);
        }
        self.add(head, self.add(z, tail))
    }

    /// `atan(x)`.
    ///
    /// Algorithm: Cephes: |x| reduced by tan(3π/8) and tan(π/8) (f32) / 0.66 (f64) to
    /// |t| <= 0.42 / 0.66, atanf's degree-9 odd polynomial (f32) or atan's 4/5 rational (f64),
    /// plus π/2 or π/4 as head + tail; the sign restored with copysign.
    ///
    /// Domain: all inputs. Error: <= 2 ULP for f32 and f64 (measured max: 2 — exhaustive on
    /// ±[1e-4, 1e38] — and 1).
    /// Special values: atan(±0) = ±0, atan(±inf) = ±π/2 (rounded), atan(NaN) = NaN.
    fn atan(&self, x: Val<'ctx>) -> Val<'ctx> {
        let region = self.atan_reduced(self.fabs(x), self.f(1.0));
        self.copysign(self.atan_assemble(&region, None), x)
    }

    /// `atan2(y, x)`: the angle of (x, y) in [-π, π].
    ///
    /// Algorithm: `atan_reduced(|y|, |x|)` (the reduction divides once, so no separate y/x
    /// rounding), reflected to π - … for x with the sign bit set, sign of y restored with
    /// copysign. Operands are first scaled by a power of two when huge or both tiny (see
    /// below).
    ///
    /// Domain: all inputs, denormal and huge operands included. Error: <= 2 ULP for f32 and
    /// f64 (measured max: 2 and 1).
    /// Special values (as C99): atan2(±0, +0) = ±0, atan2(±0, -0) = ±π, atan2(±0, x<0) = ±π,
    /// atan2(±0, x>0) = ±0, atan2(y≠0, ±0) = ±π/2, atan2(±y, +inf) = ±0, atan2(±y, -inf) = ±π,
    /// atan2(±inf, finite) = ±π/2, atan2(±inf, +inf) = ±π/4, atan2(±inf, -inf) = ±3π/4,
    /// NaN in either operand: NaN.
    fn atan2(&self, y: Val<'ctx>, x: Val<'ctx>) -> Val<'ctx> {
        let (ay, ax) = (self.fabs(y), self.fabs(x));
        let inf = self.f(f64::INFINITY);
        // Both infinite: the diagonal, i.e. (1, 1).
        let both_inf = self.and(
            self.fcmp(FloatPredicate::OEQ, ay, inf),
            self.fcmp(FloatPredicate::OEQ, ax, inf),
        );
        let num = self.select(both_inf, self.f(1.0), ay);
        let den = self.select(both_inf, self.f(1.0), ax);
        // Exact power-of-two scaling: by 1/4 when an operand is huge, so that den·tan(3π/8)
        // and num + den cannot overflow; up into the normal range when both are tiny, so that
        // den·threshold is not rounded to a denormal, which would pick the wrong region.
        let (huge_limit, tiny_limit, tiny_scale) = match self.scalar {
            DType::F32 => (pow2(125), pow2(-100), pow2(60)),
            DType::F64 => (pow2(1021), pow2(-900), pow2(200)),
        };
        let exceeds = |limit: f64| {
            self.or(
                self.fcmp(FloatPredicate::OGT, num, self.f(limit)),
                self.fcmp(FloatPredicate::OGT, den, self.f(limit)),
            )
        };
        let scale = self.select(
            exceeds(huge_limit),
            self.f(0.25),
            self.select(exceeds(tiny_limit), self.f(1.0), self.f(tiny_scale)),
        );
        let num = self.mul(num, scale);
        let den = self.mul(den, scale);
        // Both zero: angle 0 before reflection, as for any (0, den > 0).
        let both_zero = self.fcmp(FloatPredicate::OEQ, self.add(num, den), self.f(0.0));
        let den = self.select(both_zero, self.f(1.0), den);

        let region = self.atan_reduced(num, den);
        let r = self.atan_assemble(&region, Some(self.sign_bit(x)));
        let r = self.copysign(r, y);
        self.select(self.fcmp(FloatPredicate::UNO, x, y), self.add(x, y), r)
    }

    /// sqrt(1 - x²) with a single rounding before the square root.
    fn cos_of_asin(&self, x: Val<'ctx>) -> Val<'ctx> {
        self.sqrt(self.fma(self.neg(x), x, self.f(1.0)))
    }

    /// `asin(x)` = atan2(x, sqrt(1 - x²)).
    ///
    /// Algorithm: the atan2 reduction with num = |x|, den = sqrt(fma(-x, x, 1)); copysign.
    ///
    /// Domain: [-1, 1]. Error: <= 3 ULP for f32 and f64 (measured max: 3 — exhaustive on
    /// ±[1e-4, 1] — and 2; the sqrt's rounding adds to atan's error).
    /// Special values: asin(±0) = ±0, asin(±1) = ±π/2, |x| > 1 or NaN: NaN.
    fn asin(&self, x: Val<'ctx>) -> Val<'ctx> {
        let region = self.atan_reduced(self.fabs(x), self.cos_of_asin(x));
        self.copysign(self.atan_assemble(&region, None), x)
    }

    /// `acos(x)` = atan2(sqrt(1 - x²), x).
    ///
    /// Algorithm: the atan2 reduction with num = sqrt(fma(-x, x, 1)), den = |x|, reflected to
    /// π - … for negative x.
    ///
    /// Domain: [-1, 1]. Error: <= 3 ULP for f32 and f64 (measured max: 3 — exhaustive on
    /// ±[1e-4, 1] — and 2).
    /// Special values: acos(1) = +0, acos(-1) = π, acos(±0) = π/2, |x| > 1 or NaN: NaN.
    fn acos(&self, x: Val<'ctx>) -> Val<'ctx> {
        let region = self.atan_reduced(self.cos_of_asin(x), self.fabs(x));
        self.atan_assemble(&region, Some(self.sign_bit(x)))
    }
}
