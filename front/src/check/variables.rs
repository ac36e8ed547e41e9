//! Variables: declarations (`x = Vi(3)`, `x = Vi(pos, 3)`), inline positional variables
//! (`Vi(pos, dim)`, `Var(pos, dim, cat)`), and the resolution of argument positions.

use super::operators::VARIABLE_CONSTRUCTORS;
use super::{KernelChecker, VarDecl};
use crate::diagnostic::Diagnostic;
use crate::formula::op::{too_large, MAX_DIM};
use crate::source::Span;
use crate::syntax::ast::{Expr, ExprKind, Ident, KernelDef};
use keops_runtime::Category;

impl KernelChecker {
    /// `x = Vi(3)` or `x = Vi(pos, 3)`.
    pub(super) fn declare(&mut self, name: &Ident, value: &Expr) {
        if let Some(first) = self.vars.iter().find(|v| v.name == name.name) {
            let d = Diagnostic::error(
                format!("`{}` is declared twice", name.name),
                name.span.clone(),
                "second declaration",
            )
            .with_label(first.span.clone(), "first declared here");
            self.error(d);
            return;
        }
        let parsed = match &value.kind {
            ExprKind::Call { callee, args }
                if VARIABLE_CONSTRUCTORS.contains(&callee.name.as_str()) =>
            {
                self.variable_constructor(callee, args, value.span.clone(), true)
            }
            _ => {
                self.error(
                    Diagnostic::error(
                        format!(
                            "`{}` must be declared as `Vi(dim)`, `Vj(dim)` or `Pm(dim)`",
                            name.name
                        ),
                        value.span.clone(),
                        "not a variable declaration",
                    )
                    .with_help(format!(
                        "to name a formula, write `let {} = ...`",
                        name.name
                    )),
                );
                None
            }
        };
        if parsed.is_none() {
            self.failed_declarations
                .push((name.name.clone(), name.span.clone()));
        }
        if let Some((category, position, dim)) = parsed {
            self.vars.push(VarDecl {
                name: name.name.clone(),
                category,
                dim,
                position,
                span: name.span.start..value.span.end,
            });
        }
    }

    /// Parses `Vi(dim)` (declarations only) or `Vi(pos, dim)`: (category, position, dim).
    pub(super) fn variable_constructor(
        &mut self,
        callee: &Ident,
        args: &[Expr],
        span: Span,
        declaration: bool,
    ) -> Option<(Category, Option<usize>, usize)> {
        let ints: Option<Vec<i64>> = args.iter().map(|a| a.kind.as_integer()).collect();
        let category = match callee.name.as_str() {
            "Vi" => Category::I,
            "Vj" => Category::J,
            "Pm" => Category::Param,
            // KeOps's `Var(pos, dim, cat)`
            _ => match ints.as_deref() {
                Some([_, _, 0]) => Category::I,
                Some([_, _, 1]) => Category::J,
                Some([_, _, 2]) => Category::Param,
                _ => {
                    self.error(
                        Diagnostic::error("wrong arguments for `Var`", span, "expected Var(pos, dim, cat)")
                            .with_note("cat is 0 for an i-variable (Vi), 1 for a j-variable (Vj), 2 for a parameter (Pm)"),
                    );
                    return None;
                }
            },
        };
        let ints = ints.map(|mut v| {
            if callee.name == "Var" {
                v.truncate(2);
            }
            v
        });
        let signature = if declaration {
            format!("{0}(dim) or {0}(pos, dim)", callee.name)
        } else {
            format!("{}(pos, dim)", callee.name)
        };
        let (position, dim) = match ints.as_deref() {
            Some([d]) if declaration => (None, *d),
            Some([p, d]) => (Some(*p), *d),
            _ => {
                self.error(
                    Diagnostic::error(
                        format!("wrong arguments for `{}`", callee.name),
                        span,
                        format!("expected {signature}, with integer literals"),
                    )
                    .with_note(format!(
                        "`{}` declares a variable: {signature}",
                        callee.name
                    )),
                );
                return None;
            }
        };
        if dim < 1 {
            self.error(Diagnostic::error(
                "a variable's dimension must be at least 1",
                span,
                format!("dimension {dim}"),
            ));
            return None;
        }
        if dim as u64 > MAX_DIM as u64 {
            self.error(Diagnostic::error(
                "a variable's dimension is too large",
                span,
                too_large("dimension", dim as usize),
            ));
            return None;
        }
        let position = match position {
            Some(p) if p < 0 => {
                self.error(Diagnostic::error(
                    "a variable's position must be non-negative",
                    span,
                    format!("position {p}"),
                ));
                return None;
            }
            p => p.map(|p| p as usize),
        };
        Some((category, position, dim as usize))
    }

    /// Registers inline `Vi(pos, dim)` variables found anywhere in a formula.
    pub(super) fn collect_inline(&mut self, expr: &Expr) {
        let mut stack = vec![expr];
        while let Some(e) = stack.pop() {
            match &e.kind {
                ExprKind::Call { callee, args } => {
                    if VARIABLE_CONSTRUCTORS.contains(&callee.name.as_str()) {
                        self.inline_var(callee, args, e.span.clone());
                    } else {
                        stack.extend(args.iter());
                    }
                }
                ExprKind::List(items) => stack.extend(items.iter()),
                ExprKind::Neg(inner) => stack.push(inner),
                ExprKind::Binary { lhs, rhs, .. } | ExprKind::BarScalprod { lhs, rhs } => {
                    stack.push(lhs);
                    stack.push(rhs);
                }
                ExprKind::Number { .. } | ExprKind::Name(_) => {}
            }
        }
    }

    fn inline_var(&mut self, callee: &Ident, args: &[Expr], span: Span) {
        let Some((category, Some(position), dim)) =
            self.variable_constructor(callee, args, span.clone(), false)
        else {
            return;
        };
        if let Some(&v) = self.inline.get(&position) {
            let first = &self.vars[v];
            if first.category == category && first.dim == dim {
                self.inline_at.insert(span.start, v);
            } else {
                let d = Diagnostic::error(
                    format!("position {position} is used with two different types"),
                    span,
                    format!("{}({position}, {dim}) here", category),
                )
                .with_label(
                    first.span.clone(),
                    format!("{}({position}, {}) here", first.category, first.dim),
                );
                self.error(d);
            }
            return;
        }
        self.inline.insert(position, self.vars.len());
        self.inline_at.insert(span.start, self.vars.len());
        self.vars.push(VarDecl {
            name: position.to_string(),
            category,
            dim,
            position: Some(position),
            span,
        });
    }

    /// Gives every variable a position: explicit ones keep theirs, declarations without one
    /// take the lowest free positions in declaration order. Positions must be 0..n-1, once each.
    pub(super) fn resolve_positions(&mut self, kernel: &KernelDef) -> Option<Vec<usize>> {
        // n variables take positions 0..n-1 exactly, so a position at or beyond n is an error
        // at its variable, found before anything is sized by it (a source's position can be
        // huge).
        let count = self.vars.len();
        let mut by_position: Vec<Option<usize>> = vec![None; count];
        let mut ok = true;
        let explicit: Vec<(usize, usize)> = self
            .vars
            .iter()
            .enumerate()
            .filter_map(|(v, d)| d.position.map(|p| (v, p)))
            .collect();
        for (v, p) in explicit {
            let var = &self.vars[v];
            if p >= count {
                // Inline variables are named by their position.
                let what = if var.name == p.to_string() {
                    "this variable".to_string()
                } else {
                    format!("`{}`", var.name)
                };
                let d = Diagnostic::error(
                    format!("position {p} is beyond the kernel's arguments"),
                    var.span.clone(),
                    format!("{what} at position {p}"),
                )
                .with_help(format!(
                    "kernel `{}` has {count} argument{}: positions run from 0 to {}, without gaps",
                    kernel.name.name,
                    if count == 1 { "" } else { "s" },
                    count - 1
                ));
                self.error(d);
                ok = false;
            } else if let Some(other) = by_position[p] {
                // Inline repeats of one position are merged earlier; this is a real clash.
                let d = Diagnostic::error(
                    format!("two variables take position {p}"),
                    var.span.clone(),
                    format!("`{}` at position {p}", var.name),
                )
                .with_label(
                    self.vars[other].span.clone(),
                    format!("`{}` at position {p}", self.vars[other].name),
                );
                self.error(d);
                ok = false;
            } else {
                by_position[p] = Some(v);
            }
        }
        // Declarations without a position take the free ones in order (one pass: the free
        // positions only ever move forward).
        let mut free = 0;
        for v in 0..count {
            if self.vars[v].position.is_none() {
                while by_position[free].is_some() {
                    free += 1;
                }
                by_position[free] = Some(v);
            }
        }
        // Without an error above, n distinct positions below n and the rest filled in order
        // leave no gap.
        ok.then(|| {
            by_position
                .into_iter()
                .map(|v| v.expect("n variables in n distinct positions"))
                .collect()
        })
    }
}
