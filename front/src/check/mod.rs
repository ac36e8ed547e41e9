//! AST -> checked kernels. Resolves names and `let` bindings, builds the formula IR with each
//! node's dimension and category, applies KeOps's broadcasting rule, and checks the reduction.
//! Every error becomes a [`Diagnostic`]; checking goes on after one, so a file's errors are all
//! reported at once (an operand that already failed is not blamed again).

pub mod operators;
mod reduction;
mod variables;

use crate::diagnostic::{closest_name, Diagnostic};
use crate::formula::op::{too_large, MAX_DIM};
use crate::formula::{Formula, Node, Op};
use crate::source::Span;
use crate::syntax::ast::{BinOp, Expr, ExprKind, File, Ident, KernelDef, Statement};
use egg::Id;
use keops_runtime::{ArgSpec, Category, ReductionKind, Signature};
use operators::{OperatorEntry, Param, Params, OPERATORS, VARIABLE_CONSTRUCTORS};
use ordered_float::OrderedFloat;
use std::collections::HashMap;
use std::fmt;

/// A kernel that passed every check: its signature and its formula. For weighted reductions
/// the formula's root is `Concat(F, V)`, as the reduction folds `F` then `V`.
#[derive(Clone, Debug)]
pub struct CheckedKernel {
    pub name: String,
    pub span: Span,
    pub signature: Signature,
    pub formula: Formula,
}

impl fmt::Display for CheckedKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.signature)?;
        writeln!(
            f,
            "  formula: {}",
            self.formula.to_text(self.formula.root())
        )?;
        write!(f, "{}", self.formula)
    }
}

/// Checks every kernel of a file. Kernels with errors are left out of the result.
pub fn check_file(file: &File) -> (Vec<CheckedKernel>, Vec<Diagnostic>) {
    let mut kernels = Vec::new();
    let mut diagnostics = Vec::new();
    let mut seen: HashMap<&str, &Ident> = HashMap::new();
    for kernel in &file.kernels {
        if let Some(first) = seen.get(kernel.name.name.as_str()) {
            diagnostics.push(
                Diagnostic::error(
                    format!("kernel `{}` is defined twice", kernel.name.name),
                    kernel.name.span.clone(),
                    "second definition",
                )
                .with_label(first.span.clone(), "first defined here"),
            );
            continue;
        }
        seen.insert(&kernel.name.name, &kernel.name);
        let mut checker = KernelChecker::default();
        if let Some(k) = checker.check(kernel) {
            if checker.diagnostics.is_empty() {
                kernels.push(k);
            }
        }
        diagnostics.append(&mut checker.diagnostics);
    }
    (kernels, diagnostics)
}

/// A variable found in declarations or inline `Vi(pos, dim)` calls, before positions are final.
struct VarDecl {
    name: String,
    category: Category,
    dim: usize,
    position: Option<usize>,
    span: Span,
}

/// What a name in a formula refers to.
#[derive(Clone)]
enum Binding {
    Var(Id),
    /// A `let`; `None` when its formula had an error.
    Let(Option<Id>, Span),
}

#[derive(Default)]
struct KernelChecker {
    diagnostics: Vec<Diagnostic>,
    vars: Vec<VarDecl>,
    formula: Option<Formula>,
    scope: HashMap<String, Binding>,
    /// Inline positional variables by position -> index in `vars`.
    inline: HashMap<usize, usize>,
    /// Each valid inline occurrence, by the byte offset of its call -> index in `vars`.
    inline_at: HashMap<usize, usize>,
    /// The formula node of each entry of `vars`.
    var_nodes: Vec<Id>,
    /// Declarations that were reported as invalid, with their spans.
    failed_declarations: Vec<(String, Span)>,
}

impl KernelChecker {
    fn error(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn check(&mut self, kernel: &KernelDef) -> Option<CheckedKernel> {
        // Pass 1: every variable, so that argument positions are known before formulas are built.
        for stmt in &kernel.body {
            match stmt {
                Statement::Decl { name, value } => self.declare(name, value),
                Statement::Let { value, .. } | Statement::Expr(value) => self.collect_inline(value),
                Statement::Invalid(_) => {}
            }
        }
        let order = self.resolve_positions(kernel)?;
        let args: Vec<ArgSpec> = order
            .iter()
            .map(|&v| ArgSpec {
                name: self.vars[v].name.clone(),
                category: self.vars[v].category,
                dim: self.vars[v].dim,
            })
            .collect();
        let mut formula = Formula::new(args.clone());
        let mut var_nodes = vec![Id::from(0); self.vars.len()];
        for (k, &v) in order.iter().enumerate() {
            var_nodes[v] = formula
                .push(
                    Node::leaf(Op::Var(k as u32)),
                    Some(self.vars[v].span.clone()),
                )
                .expect("a variable always has a dimension");
        }
        for (v, decl) in self.vars.iter().enumerate() {
            if !decl.name.chars().all(|c| c.is_ascii_digit()) {
                self.scope
                    .insert(decl.name.clone(), Binding::Var(var_nodes[v]));
            }
        }
        // Names whose declaration failed resolve to "already reported", not "unknown".
        for (name, span) in std::mem::take(&mut self.failed_declarations) {
            self.scope.entry(name).or_insert(Binding::Let(None, span));
        }
        self.formula = Some(formula);
        self.var_nodes = var_nodes;

        // Pass 2: lets and the reduction, in order.
        let mut reduction = None;
        let last = kernel.body.len().checked_sub(1);
        for (k, stmt) in kernel.body.iter().enumerate() {
            match stmt {
                Statement::Decl { .. } | Statement::Invalid(_) => {}
                Statement::Let { name, value } => {
                    let id = self.formula_expr(value);
                    if let Some(Binding::Var(_)) | Some(Binding::Let(..)) =
                        self.scope.get(&name.name)
                    {
                        let previous = self.binding_span(&name.name);
                        let mut d = Diagnostic::error(
                            format!("`{}` is defined twice", name.name),
                            name.span.clone(),
                            "second definition",
                        );
                        if let Some(span) = previous {
                            d = d.with_label(span, "first defined here");
                        }
                        self.error(d);
                    } else {
                        self.scope
                            .insert(name.name.clone(), Binding::Let(id, name.span.clone()));
                    }
                }
                Statement::Expr(value) if Some(k) == last => {
                    reduction = self.reduction(value);
                }
                Statement::Expr(value) => self.error(
                    Diagnostic::error(
                        "a formula before the kernel's last line is never used",
                        value.span.clone(),
                        "this formula is not bound to a name",
                    )
                    .with_help(
                        "bind it with `let name = ...`; only the last line is the reduction",
                    ),
                ),
            }
        }
        // A last line with a syntax error may well have been the reduction: already reported.
        if !matches!(
            kernel.body.last(),
            Some(Statement::Expr(_) | Statement::Invalid(_))
        ) {
            self.error(
                Diagnostic::error(
                    format!("kernel `{}` has no reduction", kernel.name.name),
                    kernel.name.span.clone(),
                    "this kernel does not end with a reduction",
                )
                .with_help("end the kernel with a reduction line, such as `Sum_Reduction(F, 0)`"),
            );
        }
        let (reduction, axis, root) = reduction?;
        let formula = self.formula.take()?.extract(root);
        Some(CheckedKernel {
            name: kernel.name.name.clone(),
            span: kernel.span.clone(),
            signature: Signature {
                name: kernel.name.name.clone(),
                args,
                reduction,
                axis,
            },
            formula,
        })
    }

    fn binding_span(&self, name: &str) -> Option<Span> {
        match self.scope.get(name)? {
            Binding::Var(_) => self
                .vars
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.span.clone()),
            Binding::Let(_, span) => Some(span.clone()),
        }
    }

    fn formula(&mut self) -> &mut Formula {
        self.formula.as_mut().expect("pass 2 has a formula")
    }

    fn dim(&self, id: Id) -> usize {
        self.formula
            .as_ref()
            .expect("pass 2 has a formula")
            .info(id)
            .dim
    }

    fn push_leaf(&mut self, op: Op, span: &Span) -> Id {
        self.formula()
            .push(Node::leaf(op), Some(span.clone()))
            .expect("a leaf always has a dimension")
    }

    /// Adds `op(operands)`, reporting a dimension error with each operand labelled.
    fn push_op(
        &mut self,
        op: Op,
        operands: &[(Id, Span)],
        span: &Span,
        shown_name: &str,
    ) -> Option<Id> {
        self.push_op_at(op, operands, span, span, shown_name)
    }

    /// As [`push_op`](Self::push_op), with the error's primary label at `primary` (the
    /// operator's name in a call) rather than over the whole formula.
    fn push_op_at(
        &mut self,
        op: Op,
        operands: &[(Id, Span)],
        span: &Span,
        primary: &Span,
        shown_name: &str,
    ) -> Option<Id> {
        let node_name = op.name();
        let node = Node::new(op, operands.iter().map(|(id, _)| *id).collect());
        match self.formula().push(node, Some(span.clone())) {
            Ok(id) => Some(id),
            Err(message) => {
                // The rule names the operator; the user wrote `shown_name` (`+` for `Add`).
                let message =
                    message.replace(&format!("`{}`", node_name), &format!("`{shown_name}`"));
                let mut d = Diagnostic::error(
                    format!("dimension mismatch in `{shown_name}`"),
                    primary.clone(),
                    message,
                );
                for (id, operand_span) in operands {
                    let dim = self.dim(*id);
                    d = d.with_label(operand_span.clone(), format!("this has dimension {dim}"));
                }
                self.error(d);
                None
            }
        }
    }

    /// Checks a formula expression; `None` when it has an error (already reported).
    fn formula_expr(&mut self, e: &Expr) -> Option<Id> {
        match &e.kind {
            ExprKind::Number { value, text } => Some(self.number(*value, text, false, &e.span)),
            ExprKind::Name(name) => self.name(name, &e.span),
            ExprKind::Neg(inner) => {
                if let ExprKind::Number { value, text } = &inner.kind {
                    return Some(self.number(*value, text, true, &e.span));
                }
                let id = self.formula_expr(inner)?;
                self.push_op(Op::Neg, &[(id, inner.span.clone())], &e.span, "-")
            }
            ExprKind::Binary {
                op: BinOp::Pow,
                lhs,
                rhs,
            } => self.power(lhs, rhs, &e.span),
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.formula_expr(lhs);
                let r = self.formula_expr(rhs);
                let (l, r) = (l?, r?);
                let node_op = match op {
                    BinOp::Add => Op::Add,
                    BinOp::Sub => Op::Sub,
                    BinOp::Mul => Op::Mul,
                    BinOp::Div => Op::Div,
                    BinOp::Bar => Op::Scalprod,
                    BinOp::Pow => unreachable!("handled above"),
                };
                let operands = [(l, lhs.span.clone()), (r, rhs.span.clone())];
                self.push_op(node_op, &operands, &e.span, op.symbol())
            }
            ExprKind::BarScalprod { lhs, rhs } => {
                let l = self.formula_expr(lhs);
                let r = self.formula_expr(rhs);
                let operands = [(l?, lhs.span.clone()), (r?, rhs.span.clone())];
                self.push_op(Op::Scalprod, &operands, &e.span, "|f|g|")
            }
            ExprKind::List(_) => {
                self.error(Diagnostic::error(
                    "a list is not a formula",
                    e.span.clone(),
                    "lists are only arguments of `TensorDot`",
                ));
                None
            }
            ExprKind::Call { callee, args } => self.call(callee, args, &e.span),
        }
    }

    fn number(&mut self, value: f64, text: &str, negative: bool, span: &Span) -> Id {
        let op = match text.parse::<i64>() {
            Ok(k) if k != 0 => Op::IntCst(if negative { -k } else { k }),
            _ => Op::Const(OrderedFloat(if negative { -value } else { value })),
        };
        self.push_leaf(op, span)
    }

    fn name(&mut self, name: &str, span: &Span) -> Option<Id> {
        match self.scope.get(name) {
            Some(Binding::Var(id)) => Some(*id),
            Some(Binding::Let(id, _)) => *id,
            None => {
                let mut d = Diagnostic::error(
                    format!("unknown variable `{name}`"),
                    span.clone(),
                    "not declared in this kernel",
                );
                if let Some(op) = operators::lookup(name) {
                    d = d.with_help(format!(
                        "`{name}` is an operator: call it as `{}`",
                        op.signature
                    ));
                } else {
                    let candidates: Vec<&str> = self.scope.keys().map(String::as_str).collect();
                    if let Some(close) = closest_name(name, candidates) {
                        d = d.with_help(format!("did you mean `{close}`?"));
                    } else {
                        d = d.with_help(format!(
                            "declare it, e.g. `{name} = Vi(3)`, or bind it with `let {name} = ...`"
                        ));
                    }
                }
                self.error(d);
                None
            }
        }
    }

    /// `f ** p`: integer `p` is `Pow` (2 is `Square`), ±0.5 are `Sqrt`/`Rsqrt`, as pykeops does.
    fn power(&mut self, lhs: &Expr, rhs: &Expr, span: &Span) -> Option<Id> {
        let base = self.formula_expr(lhs);
        let exponent = match &rhs.kind {
            ExprKind::Number { value, .. } => Some(*value),
            ExprKind::Neg(inner) => match &inner.kind {
                ExprKind::Number { value, .. } => Some(-*value),
                _ => None,
            },
            _ => None,
        };
        let op = match exponent {
            Some(2.0) => Op::Square,
            Some(0.5) => Op::Sqrt,
            Some(-0.5) => Op::Rsqrt,
            Some(p) if p.fract() == 0.0 && p.abs() <= i32::MAX as f64 => Op::Pow(p as i32),
            _ => {
                self.error(
                    Diagnostic::error(
                        "`**` takes an integer exponent (or 0.5, -0.5)",
                        rhs.span.clone(),
                        "not an integer literal",
                    )
                    .with_help("for a real or formula exponent use `Powf(f, g)`"),
                );
                return None;
            }
        };
        self.push_op(op, &[(base?, lhs.span.clone())], span, "**")
    }

    fn call(&mut self, callee: &Ident, args: &[Expr], span: &Span) -> Option<Id> {
        let name = callee.name.as_str();
        if VARIABLE_CONSTRUCTORS.contains(&name) {
            // Pass 1 read every inline variable; one it did not record was reported there.
            let v = *self.inline_at.get(&span.start)?;
            return self.var_nodes.get(v).copied();
        }
        if ReductionKind::from_reduction_name(name).is_some() {
            self.error(Diagnostic::error(
                format!("`{name}` can only be the kernel's last line"),
                span.clone(),
                "a reduction inside a formula",
            ));
            return None;
        }
        let Some(entry) = operators::lookup(name) else {
            self.unknown_operator(callee, args);
            return None;
        };
        if !self.arity_fits(entry, args, span) {
            return None;
        }
        let (operands, params) = self.call_arguments(entry, args)?;
        self.build_call(entry, callee, (&operands, &params), span)
    }

    /// An unknown operator, with the closest known name; its arguments are still checked, to
    /// report their own errors.
    fn unknown_operator(&mut self, callee: &Ident, args: &[Expr]) {
        let name = callee.name.as_str();
        let mut d = Diagnostic::error(
            format!("unknown operator `{name}`"),
            callee.span.clone(),
            "no such operator",
        );
        let candidates = OPERATORS
            .iter()
            .map(|e| e.name)
            .chain(VARIABLE_CONSTRUCTORS)
            .chain(ReductionKind::ALL.iter().map(|k| k.name()));
        if let Some(close) = closest_name(name, candidates) {
            let shown = match operators::lookup(close) {
                Some(e) => format!("did you mean `{close}`? ({})", e.signature),
                None => format!("did you mean `{close}`?"),
            };
            d = d.with_help(shown);
        }
        self.error(d);
        for a in args {
            if !matches!(a.kind, ExprKind::List(_)) {
                self.formula_expr(a);
            }
        }
    }

    /// Whether the call has as many arguments as its operator takes (else a diagnostic).
    fn arity_fits(&mut self, entry: &OperatorEntry, args: &[Expr], span: &Span) -> bool {
        if args.len() >= entry.min_args() && args.len() <= entry.max_args() {
            return true;
        }
        let expected = if entry.min_args() == entry.max_args() {
            format!("{}", entry.min_args())
        } else {
            format!("{} or {}", entry.min_args(), entry.max_args())
        };
        self.error(
            Diagnostic::error(
                format!(
                    "`{}` takes {expected} argument{}, but {} {} given",
                    entry.name,
                    if entry.max_args() == 1 { "" } else { "s" },
                    args.len(),
                    if args.len() == 1 { "was" } else { "were" }
                ),
                span.clone(),
                format!("expected {}", entry.signature),
            )
            .with_note(format!("signature: {}", entry.signature)),
        );
        false
    }

    /// The call's arguments as its operator's parameters say: formulas and variables become
    /// operands, integer literals and lists parameters. Every argument is checked, each error
    /// reported.
    fn call_arguments(
        &mut self,
        entry: &OperatorEntry,
        args: &[Expr],
    ) -> Option<(Vec<(Id, Span)>, Params)> {
        let mut operands: Vec<(Id, Span)> = Vec::new();
        let mut params = Params {
            ints: Vec::new(),
            lists: Vec::new(),
        };
        let mut ok = true;
        for (arg, param) in args.iter().zip(entry.params) {
            match param {
                Param::Formula => match self.formula_expr(arg) {
                    Some(id) => operands.push((id, arg.span.clone())),
                    None => ok = false,
                },
                Param::Variable => match self.variable_operand(arg, entry.signature) {
                    Some(id) => operands.push((id, arg.span.clone())),
                    None => ok = false,
                },
                Param::Int => match arg.kind.as_integer() {
                    Some(k) => params.ints.push(k),
                    None => {
                        self.error(
                            Diagnostic::error(
                                format!("`{}` expects an integer literal here", entry.name),
                                arg.span.clone(),
                                "not an integer literal",
                            )
                            .with_note(format!("signature: {}", entry.signature)),
                        );
                        ok = false;
                    }
                },
                Param::IntList | Param::OptIntList => match self.int_list(arg, entry.signature) {
                    Some(list) => params.lists.push(list),
                    None => ok = false,
                },
            }
        }
        ok.then_some((operands, params))
    }

    /// The call's node, once its arguments are read: the constants and `Grad`'s dimension
    /// rule here, every other operator from its parameters (`operators::build_op`).
    fn build_call(
        &mut self,
        entry: &OperatorEntry,
        callee: &Ident,
        (operands, params): (&[(Id, Span)], &Params),
        span: &Span,
    ) -> Option<Id> {
        let name = entry.name;
        match name {
            "IntCst" => Some(self.push_leaf(
                if params.ints[0] == 0 {
                    Op::Zero(1)
                } else {
                    Op::IntCst(params.ints[0])
                },
                span,
            )),
            "Zero" => match usize::try_from(params.ints[0]) {
                Ok(d) if d > MAX_DIM => {
                    self.error(Diagnostic::error(
                        "`Zero(dim)`'s dimension is too large",
                        span.clone(),
                        too_large("dimension", d),
                    ));
                    None
                }
                Ok(d) if d >= 1 => Some(self.push_leaf(Op::Zero(d), span)),
                _ => {
                    self.error(Diagnostic::error(
                        "`Zero(dim)` needs a dimension of at least 1",
                        span.clone(),
                        "invalid dimension",
                    ));
                    None
                }
            },
            "IntInv" => self.rational(1, params.ints[0], span, name),
            "RatCst" => self.rational(params.ints[0], params.ints[1], span, name),
            "Grad"
                if self.dim(operands[2].0) != self.dim(operands[0].0)
                    && self.dim(operands[2].0) != 1 =>
            {
                let (df, de) = (self.dim(operands[0].0), self.dim(operands[2].0));
                self.error(
                    Diagnostic::error(
                        "dimension mismatch in `Grad`",
                        callee.span.clone(),
                        format!("e must have f's dimension ({df}) or 1"),
                    )
                    .with_label(operands[0].1.clone(), format!("f has dimension {df}"))
                    .with_label(operands[2].1.clone(), format!("e has dimension {de}"))
                    .with_note(format!("signature: {}", entry.signature)),
                );
                None
            }
            _ => match operators::build_op(name, params) {
                Ok(op) => self.push_op_at(op, operands, span, &callee.span, name),
                Err(message) => {
                    self.error(
                        Diagnostic::error(
                            format!("invalid parameter for `{name}`"),
                            span.clone(),
                            message,
                        )
                        .with_note(format!("signature: {}", entry.signature)),
                    );
                    None
                }
            },
        }
    }

    /// `p / q` from `RatCst(p, q)` or `IntInv(q)` (`p = 1`), kept exact as a quotient of integers.
    fn rational(&mut self, p: i64, q: i64, span: &Span, name: &str) -> Option<Id> {
        if q == 0 {
            self.error(Diagnostic::error(
                format!("`{name}` with a zero denominator"),
                span.clone(),
                "division by zero",
            ));
            return None;
        }
        let p = self.push_leaf(Op::IntCst(p), span);
        let q = self.push_leaf(Op::IntCst(q), span);
        self.push_op(Op::Div, &[(p, span.clone()), (q, span.clone())], span, name)
    }

    /// `Grad`/`Diff`'s second argument: a variable, by name or inline.
    fn variable_operand(&mut self, arg: &Expr, signature: &str) -> Option<Id> {
        let is_var = match &arg.kind {
            ExprKind::Name(n) => {
                matches!(self.scope.get(n), Some(Binding::Var(_))) || !self.scope.contains_key(n)
            }
            ExprKind::Call { callee, .. } => VARIABLE_CONSTRUCTORS.contains(&callee.name.as_str()),
            _ => false,
        };
        if !is_var {
            self.error(
                Diagnostic::error(
                    "differentiation is with respect to a variable",
                    arg.span.clone(),
                    "not a declared variable",
                )
                .with_note(format!(
                    "signature: {signature}, where v is a Vi, Vj or Pm variable"
                )),
            );
            return None;
        }
        self.formula_expr(arg)
    }

    fn int_list(&mut self, arg: &Expr, signature: &str) -> Option<Vec<usize>> {
        let items = match &arg.kind {
            ExprKind::List(items) => items
                .iter()
                .map(|i| i.kind.as_integer().and_then(|k| usize::try_from(k).ok()))
                .collect::<Option<Vec<usize>>>(),
            _ => None,
        };
        if items.is_none() {
            self.error(
                Diagnostic::error(
                    "expected a list of non-negative integers, such as `[2, 3]`",
                    arg.span.clone(),
                    "not an integer list",
                )
                .with_note(format!("signature: {signature}")),
            );
        }
        items
    }
}
