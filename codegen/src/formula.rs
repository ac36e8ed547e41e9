//! Formula operators as LLVM values. Every value is a vector of `lanes` elements (`<1 x T>` for
//! code that runs once per row or per call), and a node of dimension `d` is `d` such vectors, one
//! per component: lanes carry different pairs, never different components. The emitter is
//! generic over the element type and the width and uses only target-independent instructions
//! and intrinsics, so the CPU loops and the GPU kernels share it.

use super::math::{MathFn, MathLib};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::{BasicTypeEnum, FloatType, VectorType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FastMathFlags, FloatValue, VectorValue,
};
use inkwell::FloatPredicate;
use keops_front::formula::{Op, TensorDotSpec};
use keops_runtime::DType;

pub type Value<'ctx> = VectorValue<'ctx>;

/// Builds operator code at the builder's position.
pub struct Emitter<'a, 'ctx> {
    pub context: &'ctx Context,
    pub module: &'a Module<'ctx>,
    pub builder: &'a Builder<'ctx>,
    pub math: &'a MathLib<'ctx>,
    pub scalar: DType,
}

/// Builder calls fail only when the builder has no position, which is a bug of the emitter.
fn built<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("the builder is positioned inside a function")
}

impl<'a, 'ctx> Emitter<'a, 'ctx> {
    pub fn float_type(&self) -> FloatType<'ctx> {
        match self.scalar {
            DType::F32 => self.context.f32_type(),
            DType::F64 => self.context.f64_type(),
        }
    }

    pub fn vector_type(&self, lanes: u32) -> VectorType<'ctx> {
        self.float_type().vec_type(lanes)
    }

    pub fn lanes(v: Value<'ctx>) -> u32 {
        v.get_type().get_size()
    }

    pub fn constant(&self, c: f64, lanes: u32) -> Value<'ctx> {
        let x = self.float_type().const_float(c);
        VectorType::const_vector(&vec![x; lanes as usize])
    }

    /// A scalar as a `<1 x T>` value, the emitter's currency.
    pub fn from_scalar(&self, x: FloatValue<'ctx>) -> Value<'ctx> {
        let undef = x.get_type().vec_type(1).get_undef();
        let zero = self.context.i64_type().const_zero();
        built(self.builder.build_insert_element(undef, x, zero, "one"))
    }

    /// `<1 x T>` broadcast to `lanes`.
    pub fn splat(&self, v: Value<'ctx>, lanes: u32) -> Value<'ctx> {
        if Self::lanes(v) == lanes {
            return v;
        }
        debug_assert_eq!(Self::lanes(v), 1, "only single values are broadcast");
        let mask = self.context.i32_type().vec_type(lanes).const_zero();
        built(self.builder.build_shuffle_vector(v, v, mask, "splat"))
    }

    /// Floating-point arithmetic may be contracted into FMAs: it only removes roundings.
    fn contract(&self, v: Value<'ctx>) -> Value<'ctx> {
        if let Some(instruction) = v.as_instruction() {
            let _ = instruction.set_fast_math_flags(FastMathFlags::AllowContract);
        }
        v
    }

    pub fn add(&self, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        self.contract(built(self.builder.build_float_add(a, b, "add")))
    }

    pub fn sub(&self, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        self.contract(built(self.builder.build_float_sub(a, b, "sub")))
    }

    pub fn mul(&self, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        self.contract(built(self.builder.build_float_mul(a, b, "mul")))
    }

    pub fn div(&self, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        built(self.builder.build_float_div(a, b, "div"))
    }

    pub fn neg(&self, a: Value<'ctx>) -> Value<'ctx> {
        built(self.builder.build_float_neg(a, "neg"))
    }

    /// `a * b + c` with one rounding.
    pub fn fma(&self, a: Value<'ctx>, b: Value<'ctx>, c: Value<'ctx>) -> Value<'ctx> {
        self.intrinsic("llvm.fma", &[a, b, c])
    }

    pub fn intrinsic(&self, name: &str, args: &[Value<'ctx>]) -> Value<'ctx> {
        let ty: BasicTypeEnum = args[0].get_type().into();
        let function = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[ty]))
            .unwrap_or_else(|| panic!("LLVM 19 has the intrinsic {name}"));
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        let call = built(self.builder.build_call(function, &args, name));
        call.try_as_basic_value()
            .basic()
            .expect("the intrinsic returns a value")
            .into_vector_value()
    }

    pub fn call_math(&self, f: MathFn, args: &[Value<'ctx>]) -> Value<'ctx> {
        let args: Vec<BasicValueEnum> = args.iter().map(|&a| a.into()).collect();
        self.math
            .call(self.module, self.builder, f, &args)
            .into_vector_value()
    }

    /// A lane mask (`<lanes x i1>`).
    pub fn compare(&self, p: FloatPredicate, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        built(self.builder.build_float_compare(p, a, b, "cmp"))
    }

    pub fn select(&self, mask: Value<'ctx>, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        built(self.builder.build_select(mask, a, b, "sel")).into_vector_value()
    }

    fn indicator(&self, p: FloatPredicate, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        let lanes = Self::lanes(a);
        let mask = self.compare(p, a, b);
        self.select(mask, self.constant(1.0, lanes), self.constant(0.0, lanes))
    }

    /// `x < a ? a : (x > b ? b : x)`: the lower bound first, NaN passes through.
    fn clamp(&self, x: Value<'ctx>, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        let above = self.compare(FloatPredicate::OGT, x, b);
        let upper = self.select(above, b, x);
        let below = self.compare(FloatPredicate::OLT, x, a);
        self.select(below, a, upper)
    }

    /// Sum of products in four interleaved FMA chains, combined pairwise: shorter dependency
    /// chains than one running sum, and a smaller rounding error for long vectors.
    pub fn dot(&self, pairs: &[(Value<'ctx>, Value<'ctx>)]) -> Value<'ctx> {
        let lanes = Self::lanes(pairs[0].0);
        let mut chains: Vec<Value<'ctx>> = Vec::new();
        for (k, &(a, b)) in pairs.iter().enumerate() {
            if k < 4 {
                chains.push(self.mul(a, b));
            } else {
                chains[k % 4] = self.fma(a, b, chains[k % 4]);
            }
        }
        if chains.is_empty() {
            return self.constant(0.0, lanes);
        }
        self.sum(&chains)
    }

    /// Pairwise sum.
    pub fn sum(&self, values: &[Value<'ctx>]) -> Value<'ctx> {
        match values {
            [] => unreachable!("a sum of at least one value"),
            [v] => *v,
            _ => {
                let (left, right) = values.split_at(values.len() / 2);
                self.add(self.sum(left), self.sum(right))
            }
        }
    }

    /// The sum of a vector's lanes, as a scalar: a pairwise tree of halves.
    pub fn horizontal_sum(&self, v: Value<'ctx>) -> FloatValue<'ctx> {
        self.halving(v, |low, high| self.add(low, high))
    }

    /// The largest of a vector's lanes, as a scalar (a tree of halves; NaN lanes lose).
    pub fn horizontal_max(&self, v: Value<'ctx>) -> FloatValue<'ctx> {
        self.halving(v, |low, high| {
            let larger = self.compare(FloatPredicate::OGT, high, low);
            self.select(larger, high, low)
        })
    }

    /// Combines the two halves of `v` until one lane is left.
    fn halving(
        &self,
        v: Value<'ctx>,
        combine: impl Fn(Value<'ctx>, Value<'ctx>) -> Value<'ctx>,
    ) -> FloatValue<'ctx> {
        let i32t = self.context.i32_type();
        let half = |v: Value<'ctx>, from: u32, n: u32| {
            let mask: Vec<_> = (from..from + n)
                .map(|k| i32t.const_int(k as u64, false))
                .collect();
            let mask = VectorType::const_vector(&mask);
            built(self.builder.build_shuffle_vector(v, v, mask, "half"))
        };
        let mut v = v;
        let mut n = Self::lanes(v);
        debug_assert!(n.is_power_of_two(), "vectors have a power of two of lanes");
        while n > 1 {
            n /= 2;
            v = combine(half(v, 0, n), half(v, n, n));
        }
        let zero = self.context.i64_type().const_zero();
        built(self.builder.build_extract_element(v, zero, "lane")).into_float_value()
    }

    /// A scalar of the element type as f64 (exact).
    pub fn to_f64(&self, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let f64t = self.context.f64_type();
        if x.get_type() == f64t {
            x
        } else {
            built(self.builder.build_float_ext(x, f64t, "wide"))
        }
    }

    fn rsqrt(&self, x: Value<'ctx>) -> Value<'ctx> {
        // KeOps's Rsqrt(0) = 0.
        let lanes = Self::lanes(x);
        let root = self.intrinsic("llvm.sqrt", &[x]);
        let r = self.div(self.constant(1.0, lanes), root);
        let zero = self.compare(FloatPredicate::OEQ, x, self.constant(0.0, lanes));
        self.select(zero, self.constant(0.0, lanes), r)
    }

    fn powi(&self, x: Value<'ctx>, m: i32) -> Value<'ctx> {
        let lanes = Self::lanes(x);
        let mut result: Option<Value<'ctx>> = None;
        let mut base = x;
        let mut e = m.unsigned_abs();
        while e > 0 {
            if e & 1 == 1 {
                result = Some(match result {
                    None => base,
                    Some(r) => self.mul(r, base),
                });
            }
            e >>= 1;
            if e > 0 {
                base = self.mul(base, base);
            }
        }
        let positive = result.unwrap_or_else(|| self.constant(1.0, lanes));
        if m < 0 {
            self.div(self.constant(1.0, lanes), positive)
        } else {
            positive
        }
    }

    fn first_extreme(&self, v: &[Value<'ctx>], p: FloatPredicate) -> (Value<'ctx>, Value<'ctx>) {
        let lanes = Self::lanes(v[0]);
        let mut best = v[0];
        let mut index = self.constant(0.0, lanes);
        for (k, &x) in v.iter().enumerate().skip(1) {
            let better = self.compare(p, x, best);
            best = self.select(better, x, best);
            index = self.select(better, self.constant(k as f64, lanes), index);
        }
        (best, index)
    }

    fn unary(&self, op: &Op, x: Value<'ctx>) -> Value<'ctx> {
        let lanes = Self::lanes(x);
        let c = |v: f64| self.constant(v, lanes);
        match op {
            Op::Neg => self.neg(x),
            Op::Exp => self.call_math(MathFn::Exp, &[x]),
            Op::Log => self.call_math(MathFn::Log, &[x]),
            Op::Sin => self.call_math(MathFn::Sin, &[x]),
            Op::Cos => self.call_math(MathFn::Cos, &[x]),
            Op::Asin => self.call_math(MathFn::Asin, &[x]),
            Op::Acos => self.call_math(MathFn::Acos, &[x]),
            Op::Atan => self.call_math(MathFn::Atan, &[x]),
            Op::Sqrt => self.intrinsic("llvm.sqrt", &[x]),
            Op::Rsqrt => self.rsqrt(x),
            Op::Square => self.mul(x, x),
            Op::Inv => self.div(c(1.0), x),
            Op::Abs => self.intrinsic("llvm.fabs", &[x]),
            Op::Floor => self.intrinsic("llvm.floor", &[x]),
            Op::Sign => {
                let positive = self.compare(FloatPredicate::OGT, x, c(0.0));
                let negative = self.compare(FloatPredicate::OLT, x, c(0.0));
                let s = self.select(negative, c(-1.0), c(0.0));
                self.select(positive, c(1.0), s)
            }
            Op::Step => {
                let negative = self.compare(FloatPredicate::OLT, x, c(0.0));
                self.select(negative, c(0.0), c(1.0))
            }
            Op::ReLU => {
                let negative = self.compare(FloatPredicate::OLT, x, c(0.0));
                self.select(negative, c(0.0), x)
            }
            Op::XLogX => {
                let zero = self.compare(FloatPredicate::OEQ, x, c(0.0));
                let v = self.mul(x, self.call_math(MathFn::Log, &[x]));
                self.select(zero, c(0.0), v)
            }
            Op::SinXDivX => {
                let zero = self.compare(FloatPredicate::OEQ, x, c(0.0));
                let v = self.div(self.call_math(MathFn::Sin, &[x]), x);
                self.select(zero, c(1.0), v)
            }
            Op::Round(d) => {
                if *d == 0 {
                    self.intrinsic("llvm.round", &[x])
                } else {
                    let scale = c(10f64.powi(*d));
                    let r = self.intrinsic("llvm.round", &[self.mul(x, scale)]);
                    self.div(r, scale)
                }
            }
            Op::Pow(m) => self.powi(x, *m),
            Op::ClampInt(a, b) => self.clamp(x, c(*a as f64), c(*b as f64)),
            other => unreachable!("`{}` is not unary", other.name()),
        }
    }

    fn binary(&self, op: &Op, x: Value<'ctx>, y: Value<'ctx>) -> Value<'ctx> {
        match op {
            Op::Add => self.add(x, y),
            Op::Sub => self.sub(x, y),
            Op::Mul => self.mul(x, y),
            Op::Div => self.div(x, y),
            Op::Powf => self.call_math(MathFn::Pow, &[x, y]),
            Op::Atan2 => self.call_math(MathFn::Atan2, &[x, y]),
            Op::Equal => self.indicator(FloatPredicate::OEQ, x, y),
            Op::NotEqual => self.indicator(FloatPredicate::UNE, x, y),
            Op::LessThan => self.indicator(FloatPredicate::OLT, x, y),
            Op::LessOrEqual => self.indicator(FloatPredicate::OLE, x, y),
            other => unreachable!("`{}` is not binary", other.name()),
        }
    }

    fn ternary(&self, op: &Op, x: Value<'ctx>, a: Value<'ctx>, b: Value<'ctx>) -> Value<'ctx> {
        match op {
            Op::Clamp => self.clamp(x, a, b),
            Op::IfElse => {
                let lanes = Self::lanes(x);
                let nonnegative = self.compare(FloatPredicate::OGE, x, self.constant(0.0, lanes));
                self.select(nonnegative, a, b)
            }
            // x - n * Floor((x - d) / n)
            Op::Mod => {
                let q = self.intrinsic("llvm.floor", &[self.div(self.sub(x, b), a)]);
                self.sub(x, self.mul(a, q))
            }
            other => unreachable!("`{}` is not ternary", other.name()),
        }
    }

    /// `sum_{a,b} S[a n + b] f_a f_b`
    fn quadratic_form(&self, s: &[Value<'ctx>], f: &[Value<'ctx>]) -> Value<'ctx> {
        let n = f.len();
        let rows: Vec<Value<'ctx>> = (0..n)
            .map(|a| {
                let pairs: Vec<_> = (0..n).map(|b| (s[a * n + b], f[b])).collect();
                self.mul(f[a], self.dot(&pairs))
            })
            .collect();
        self.sum(&rows)
    }

    fn weighted_sq_norm(&self, s: &[Value<'ctx>], f: &[Value<'ctx>]) -> Value<'ctx> {
        if s.len() == 1 {
            let pairs: Vec<_> = f.iter().map(|&x| (x, x)).collect();
            self.mul(s[0], self.dot(&pairs))
        } else if s.len() == f.len() {
            let pairs: Vec<_> = f
                .iter()
                .zip(s)
                .map(|(&x, &w)| (self.mul(w, x), x))
                .collect();
            self.dot(&pairs)
        } else {
            self.quadratic_form(s, f)
        }
    }

    /// The components of `op` applied to operand components, all of `lanes` lanes. Leaves
    /// (`Var`) are supplied by the caller.
    pub fn emit(
        &self,
        op: &Op,
        args: &[&[Value<'ctx>]],
        out_dim: usize,
        lanes: u32,
    ) -> Vec<Value<'ctx>> {
        if op.is_elementwise() {
            let at = |a: &[Value<'ctx>], k: usize| if a.len() == 1 { a[0] } else { a[k] };
            return (0..out_dim)
                .map(|k| match args {
                    [a] => self.unary(op, at(a, k)),
                    [a, b] => self.binary(op, at(a, k), at(b, k)),
                    [a, b, c] => self.ternary(op, at(a, k), at(b, k), at(c, k)),
                    _ => unreachable!("element-wise operators take 1 to 3 operands"),
                })
                .collect();
        }
        let c = |v: f64| self.constant(v, lanes);
        let sq = |v: &[Value<'ctx>]| {
            let pairs: Vec<_> = v.iter().map(|&x| (x, x)).collect();
            self.dot(&pairs)
        };
        match op {
            Op::Var(_) | Op::Grad | Op::Diff => unreachable!("supplied by the caller"),
            Op::Const(x) => vec![c(x.0)],
            Op::IntCst(k) => vec![c(*k as f64)],
            Op::Zero(d) => vec![c(0.0); *d],
            Op::Sum => vec![self.sum(args[0])],
            Op::SumT(n) => vec![args[0][0]; *n],
            Op::Max => vec![self.first_extreme(args[0], FloatPredicate::OGT).0],
            Op::Min => vec![self.first_extreme(args[0], FloatPredicate::OLT).0],
            Op::ArgMax => vec![self.first_extreme(args[0], FloatPredicate::OGT).1],
            Op::ArgMin => vec![self.first_extreme(args[0], FloatPredicate::OLT).1],
            Op::SqNorm2 => vec![sq(args[0])],
            Op::Norm2 => vec![self.intrinsic("llvm.sqrt", &[sq(args[0])])],
            Op::Normalize => {
                let r = self.rsqrt(sq(args[0]));
                args[0].iter().map(|&x| self.mul(r, x)).collect()
            }
            Op::SqDist => {
                let d: Vec<Value<'ctx>> = args[0]
                    .iter()
                    .zip(args[1])
                    .map(|(&x, &y)| self.sub(x, y))
                    .collect();
                vec![sq(&d)]
            }
            Op::Scalprod => {
                let pairs: Vec<_> = args[0]
                    .iter()
                    .copied()
                    .zip(args[1].iter().copied())
                    .collect();
                vec![self.dot(&pairs)]
            }
            Op::Elem(m) => vec![args[0][*m]],
            Op::ElemT(n, m) => {
                let mut out = vec![c(0.0); *n];
                out[*m] = args[0][0];
                out
            }
            Op::Extract(start, len) => args[0][*start..start + len].to_vec(),
            Op::ExtractT(start, d) => {
                let mut out = vec![c(0.0); *d];
                out[*start..start + args[0].len()].copy_from_slice(args[0]);
                out
            }
            Op::Concat => [args[0], args[1]].concat(),
            Op::OneHot(d) => {
                // KeOps's index: (int)(f + 0.5), truncated toward zero.
                let index = self.intrinsic("llvm.trunc", &[self.add(args[0][0], c(0.5))]);
                (0..*d)
                    .map(|k| self.indicator(FloatPredicate::OEQ, index, c(k as f64)))
                    .collect()
            }
            Op::MatVecMult => {
                let (a, b) = (args[0], args[1]);
                let k = b.len();
                (0..out_dim)
                    .map(|i| {
                        let pairs: Vec<_> = (0..k).map(|col| (a[i * k + col], b[col])).collect();
                        self.dot(&pairs)
                    })
                    .collect()
            }
            Op::VecMatMult => {
                let (b, a) = (args[0], args[1]);
                (0..out_dim)
                    .map(|i| {
                        let pairs: Vec<_> = (0..b.len())
                            .map(|row| (b[row], a[row * out_dim + i]))
                            .collect();
                        self.dot(&pairs)
                    })
                    .collect()
            }
            Op::TensorProd => {
                let (f, g) = (args[0], args[1]);
                f.iter()
                    .flat_map(|&x| g.iter().map(move |&y| (x, y)))
                    .map(|(x, y)| self.mul(x, y))
                    .collect()
            }
            Op::TensorDot(spec) => self.tensordot(spec, args[0], args[1], out_dim),
            Op::WeightedSqNorm => vec![self.weighted_sq_norm(args[0], args[1])],
            Op::WeightedSqDist => {
                let d: Vec<Value<'ctx>> = args[1]
                    .iter()
                    .zip(args[2])
                    .map(|(&x, &y)| self.sub(x, y))
                    .collect();
                vec![self.weighted_sq_norm(args[0], &d)]
            }
            Op::SqNormIso => vec![self.mul(args[0][0], sq(args[1]))],
            Op::SqNormDiag => {
                let pairs: Vec<_> = args[1]
                    .iter()
                    .zip(args[0])
                    .map(|(&x, &s)| (self.mul(s, x), x))
                    .collect();
                vec![self.dot(&pairs)]
            }
            Op::SymSqNorm => vec![self.quadratic_form(args[0], args[1])],
            other => unreachable!("`{}` is element-wise", other.name()),
        }
    }

    /// numpy.tensordot, then kept axis k moved to output axis permute[k]; the index arithmetic
    /// runs at compile time, each output component is one dot product.
    fn tensordot(
        &self,
        spec: &TensorDotSpec,
        f: &[Value<'ctx>],
        g: &[Value<'ctx>],
        out_dim: usize,
    ) -> Vec<Value<'ctx>> {
        let strides = |shape: &[usize]| {
            let mut s = vec![1; shape.len()];
            for k in (0..shape.len().saturating_sub(1)).rev() {
                s[k] = s[k + 1] * shape[k + 1];
            }
            s
        };
        let unflatten = |mut flat: usize, shape: &[usize]| {
            let mut index = vec![0; shape.len()];
            for k in (0..shape.len()).rev() {
                index[k] = flat % shape[k];
                flat /= shape[k];
            }
            index
        };
        let (sf, sg) = (strides(&spec.dims_f), strides(&spec.dims_g));
        let (kept_f, kept_g) = (spec.kept_f(), spec.kept_g());
        let kept_shape = spec.kept_shape();
        let out_strides = strides(&spec.output_shape());
        let contracted: Vec<usize> = spec.contract_f.iter().map(|&a| spec.dims_f[a]).collect();
        let n_contracted: usize = contracted.iter().product();
        let lanes = Self::lanes(f[0]);
        let mut out = vec![self.constant(0.0, lanes); out_dim];
        for flat in 0..kept_shape.iter().product() {
            let kept_index = unflatten(flat, &kept_shape);
            let (mut base_f, mut base_g, mut o) = (0, 0, 0);
            for (k, &idx) in kept_index.iter().enumerate() {
                if k < kept_f.len() {
                    base_f += idx * sf[kept_f[k]];
                } else {
                    base_g += idx * sg[kept_g[k - kept_f.len()]];
                }
                let axis = spec.permute.as_ref().map_or(k, |p| p[k]);
                o += idx * out_strides[axis];
            }
            let pairs: Vec<_> = (0..n_contracted)
                .map(|cflat| {
                    let ci = unflatten(cflat, &contracted);
                    let (mut a, mut b) = (base_f, base_g);
                    for (k, &idx) in ci.iter().enumerate() {
                        a += idx * sf[spec.contract_f[k]];
                        b += idx * sg[spec.contract_g[k]];
                    }
                    (f[a], g[b])
                })
                .collect();
            out[o] = self.dot(&pairs);
        }
        out
    }
}
