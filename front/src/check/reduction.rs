//! The kernel's last line: `Kind_Reduction(F, [K | V,] axis)`.

use super::operators;
use super::KernelChecker;
use crate::diagnostic::{closest_name, Diagnostic};
use crate::formula::op::{too_large, MAX_DIM};
use crate::formula::Op;
use crate::syntax::ast::{Expr, ExprKind};
use egg::Id;
use keops_runtime::{Axis, Reduction, ReductionArgs, ReductionKind};

impl KernelChecker {
    /// The kernel's last line: `Kind_Reduction(F, [K | V,] axis)`.
    pub(super) fn reduction(&mut self, e: &Expr) -> Option<(Reduction, Axis, Id)> {
        let (kind, args) = self.reduction_kind(e)?;
        let signature = match kind.args() {
            ReductionArgs::Formula => format!("{kind}(F, axis)"),
            ReductionArgs::FormulaK => format!("{kind}(F, K, axis)"),
            ReductionArgs::FormulaWeight => format!("{kind}(F, V, axis)"),
        };
        let expected_args = if kind.args() == ReductionArgs::Formula {
            2
        } else {
            3
        };
        if args.len() != expected_args {
            self.error(
                Diagnostic::error(
                    format!(
                        "`{kind}` takes {expected_args} arguments, but {} {} given",
                        args.len(),
                        if args.len() == 1 { "was" } else { "were" }
                    ),
                    e.span.clone(),
                    format!("expected {signature}"),
                )
                .with_note(format!("signature: {signature}")),
            );
            return None;
        }
        let f = self.formula_expr(&args[0]);
        let axis_arg = &args[expected_args - 1];
        let axis = axis_arg.kind.as_integer().and_then(Axis::from_index);
        if axis.is_none() {
            self.error(
                Diagnostic::error(
                    "the reduction axis must be 0 or 1",
                    axis_arg.span.clone(),
                    "expected 0 (one output per i, reducing over j) or 1 (one per j, over i)",
                )
                .with_note(format!("signature: {signature}")),
            );
        }
        let mut k = 1;
        let mut weight = None;
        match kind.args() {
            ReductionArgs::Formula => {}
            ReductionArgs::FormulaK => k = self.reduction_k(kind, &args[1], &signature)?,
            ReductionArgs::FormulaWeight => weight = Some(self.formula_expr(&args[1])?),
        }
        let (f, axis) = (f?, axis?);
        let fdim = self.dim(f);
        self.check_reduced_sizes(kind, k, fdim, args, &signature)?;
        let (reduction, root) = match weight {
            None => (Reduction::with_k(kind, k, fdim), f),
            Some(w) => {
                let wdim = self.dim(w);
                let root = self.push_op(
                    Op::Concat,
                    &[(f, args[0].span.clone()), (w, args[1].span.clone())],
                    &e.span,
                    "Concat",
                )?;
                (Reduction::with_weight(kind, fdim, wdim), root)
            }
        };
        Some((reduction, axis, root))
    }

    /// The reduction `e` calls, and its arguments; a diagnostic when `e` is a formula or an
    /// unknown reduction.
    fn reduction_kind<'e>(&mut self, e: &'e Expr) -> Option<(ReductionKind, &'e [Expr])> {
        let reduction_names: Vec<String> =
            ReductionKind::ALL.iter().map(|k| k.to_string()).collect();
        let looks_like_reduction = |name: &str| {
            name.ends_with("_Reduction")
                || (operators::lookup(name).is_none()
                    && closest_name(name, reduction_names.iter().map(String::as_str)).is_some())
        };
        let (callee, args) = match &e.kind {
            ExprKind::Call { callee, args } if looks_like_reduction(&callee.name) => (callee, args),
            _ => {
                let _ = self.formula_expr(e);
                self.error(
                    Diagnostic::error(
                        "the kernel's last line must be a reduction",
                        e.span.clone(),
                        "a formula, not a reduction",
                    )
                    .with_help("wrap it in a reduction, e.g. `Sum_Reduction(F, 0)` to sum over j"),
                );
                return None;
            }
        };
        let Some(kind) = ReductionKind::from_reduction_name(&callee.name) else {
            let mut d = Diagnostic::error(
                format!("unknown reduction `{}`", callee.name),
                callee.span.clone(),
                "no such reduction",
            );
            if let Some(close) =
                closest_name(&callee.name, reduction_names.iter().map(String::as_str))
            {
                d = d.with_help(format!("did you mean `{close}`?"));
            }
            self.error(d);
            return None;
        };
        Some((kind, args))
    }

    /// `K` of a K-reduction: a positive integer literal.
    fn reduction_k(&mut self, kind: ReductionKind, arg: &Expr, signature: &str) -> Option<usize> {
        match arg.kind.as_integer() {
            Some(value) if value >= 1 => Some(value as usize),
            _ => {
                self.error(
                    Diagnostic::error(
                        format!("`{kind}` needs K, a positive integer literal"),
                        arg.span.clone(),
                        "expected K >= 1",
                    )
                    .with_note(format!("signature: {signature}")),
                );
                None
            }
        }
    }

    /// The reduced formula (of dimension `fdim`) fits the reduction: a scalar for the
    /// LogSumExp family, an accumulator within the largest dimension for the K-reductions.
    fn check_reduced_sizes(
        &mut self,
        kind: ReductionKind,
        k: usize,
        fdim: usize,
        args: &[Expr],
        signature: &str,
    ) -> Option<()> {
        if kind.needs_scalar_formula() && fdim != 1 {
            self.error(
                Diagnostic::error(
                    format!("`{kind}` reduces a scalar formula"),
                    args[0].span.clone(),
                    format!("this has dimension {fdim}"),
                )
                .with_help("reduce one component with `Elem(F, k)`, or sum them with `Sum(F)`"),
            );
            return None;
        }
        if kind.args() == ReductionArgs::FormulaK && k.saturating_mul(fdim) > MAX_DIM / 2 {
            // The accumulator holds K (value, index) pairs per component.
            self.error(
                Diagnostic::error(
                    format!("`{kind}`'s K is too large"),
                    args[1].span.clone(),
                    format!(
                        "K = {k} and a formula of dimension {fdim} make {}",
                        too_large(
                            "an accumulator of dimension",
                            k.saturating_mul(fdim).saturating_mul(2)
                        )
                    ),
                )
                .with_note(format!("signature: {signature}")),
            );
            return None;
        }
        Some(())
    }
}
