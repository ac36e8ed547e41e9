//! TEMPORARY: placeholder math library with the final API (replaced by the vectorized one).

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    F32,
    F64,
}

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

pub struct MathLib<'ctx> {
    _context: &'ctx Context,
}

impl<'ctx> MathLib<'ctx> {
    pub fn new(context: &'ctx Context) -> MathLib<'ctx> {
        MathLib { _context: context }
    }

    pub fn call(
        &self,
        module: &Module<'ctx>,
        builder: &Builder<'ctx>,
        f: MathFn,
        args: &[BasicValueEnum<'ctx>],
    ) -> BasicValueEnum<'ctx> {
        let name = match f {
            MathFn::Exp => "llvm.exp",
            MathFn::Log => "llvm.log",
            MathFn::Sin => "llvm.sin",
            MathFn::Cos => "llvm.cos",
            MathFn::Atan => "llvm.atan",
            MathFn::Asin => "llvm.asin",
            MathFn::Acos => "llvm.acos",
            MathFn::Atan2 => "llvm.atan2",
            MathFn::Pow => "llvm.pow",
        };
        let function = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(module, &[args[0].get_type()]))
            .unwrap_or_else(|| panic!("{name}"));
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        builder
            .build_call(function, &args, "m")
            .unwrap()
            .try_as_basic_value()
            .basic()
            .unwrap()
    }
}
