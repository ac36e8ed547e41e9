//! Kernels built as data rather than written as `.kf` text: the arguments, the reduction and
//! the formula as an arena of operator nodes ([`KernelPlan`]), laid out as the `.kf` text they
//! print as ([`lay_out`]) and turned into the syntax tree the parser would read from that
//! text, spans included ([`syntax_tree`]), so that the checker (`driver::compile_tree`) builds
//! the formula IR from it and every error is the checker's diagnostic, rendered against that
//! text. This is how the Python package's `LazyTensor` and `Genred` reach the compiler, and
//! what a Rust program uses through [`KernelBuilder`] instead of templating `.kf` text:
//!
//! ```
//! use keops_front::syntax::build::KernelBuilder;
//! use keops_runtime::{Axis, Category, ReductionKind};
//!
//! let mut k = KernelBuilder::new("gauss");
//! let (x, y) = (k.arg("x", Category::I, 3), k.arg("y", Category::J, 3));
//! let b = k.arg("b", Category::J, 1);
//! let d = k.call("SqDist", &[x, y], &[]);
//! let c = k.constant(-0.5);
//! let scaled = k.mul(c, d);
//! let g = k.call("Exp", &[scaled], &[]);
//! let f = k.mul(g, b);
//! let built = k.reduction(ReductionKind::Sum, f, Axis::I).unwrap();
//! assert_eq!(
//!     built.source.text,
//!     "kernel gauss {\n    x = Vi(3)\n    y = Vj(3)\n    b = Vj(1)\n    \
//!      Sum_Reduction(Mult(Exp(Mult(-0.5, SqDist(x, y))), b), 0)\n}\n"
//! );
//! ```
//!
//! Laying out the text and building the arena are loops, never recursion: a formula nested
//! thousands of levels deep costs no stack on the caller's thread; what recurses (the tree's
//! construction, the checker) runs on the compiler's own stack (`crate::isolate`).

use super::ast::{Expr, ExprKind, File, Ident, KernelDef, Statement};
use super::parse;
use crate::check::operators::{self, Param};
use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};
use keops_runtime::{Axis, Category, ReductionArgs, ReductionKind};
use std::collections::HashMap;
use std::fmt;

/// One node of a kernel being built. Children are indices into the arena, so that neither
/// reading a deep tree nor dropping it recurses.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// The argument at this position.
    Var(usize),
    Const(f64),
    Int(i64),
    List(Vec<i64>),
    /// `name(args)`, the arguments in the order the operator takes them.
    Call {
        name: String,
        args: Vec<usize>,
    },
    /// A formula in KeOps syntax.
    Text(String),
}

/// A kernel as plain data: arguments, and the arena holding the declarations' and the
/// reduction's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelPlan {
    pub name: String,
    /// `(name, "Vi" | "Vj" | "Pm", dim)`, in call order.
    pub args: Vec<(String, String, usize)>,
    pub items: Vec<Item>,
    /// The `Vi(dim)`-style call of each argument's declaration.
    pub declarations: Vec<usize>,
    /// The reduction's call, `Sum_Reduction(F, axis)`.
    pub reduction: usize,
}

impl KernelPlan {
    /// A kernel named `name`, without arguments yet.
    pub fn new(name: &str) -> KernelPlan {
        KernelPlan {
            name: name.to_string(),
            ..KernelPlan::default()
        }
    }

    pub fn push(&mut self, item: Item) -> usize {
        self.items.push(item);
        self.items.len() - 1
    }

    /// Declares the next argument (`category` is `"Vi"`, `"Vj"` or `"Pm"`); its position.
    pub fn declare(&mut self, name: &str, category: &str, dim: usize) -> usize {
        self.args
            .push((name.to_string(), category.to_string(), dim));
        let dim = self.push(Item::Int(dim as i64));
        let call = self.push(Item::Call {
            name: category.to_string(),
            args: vec![dim],
        });
        self.declarations.push(call);
        self.args.len() - 1
    }

    /// Ends the kernel with `callee(formula[, k | weight], axis)`.
    pub fn reduce(
        &mut self,
        callee: &str,
        formula: usize,
        k: Option<i64>,
        weight: Option<usize>,
        axis: i64,
    ) {
        let mut args = vec![formula];
        if let Some(k) = k {
            args.push(self.push(Item::Int(k)));
        }
        args.extend(weight);
        args.push(self.push(Item::Int(axis)));
        self.reduction = self.push(Item::Call {
            name: callee.to_string(),
            args,
        });
    }
}

/// Whether `name` can name a kernel or an argument: an identifier, not a keyword.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name != "kernel"
        && name != "let"
}

/// The arguments of `name(...)` in the order the operator table gives them: formula operands
/// and parameters interleaved (`Extract(f, start, len)`). When they do not fit the table (or
/// the name is not in it), operands then parameters, for the checker to report.
pub fn call_order(items: &[Item], name: &str, children: &[usize], params: &[usize]) -> Vec<usize> {
    let plain = || children.iter().chain(params).copied().collect();
    let Some(entry) = operators::lookup(name) else {
        return plain();
    };
    let (mut c, mut p) = (children.iter(), params.iter());
    let mut ordered = Vec::new();
    for slot in entry.params {
        let next = match slot {
            Param::Formula | Param::Variable => c.next(),
            Param::Int => p.next(),
            Param::IntList => p.next(),
            // An optional trailing list: there only when given.
            Param::OptIntList => match p.as_slice().first() {
                Some(&q) if matches!(items[q], Item::List(_)) => p.next(),
                _ => continue,
            },
        };
        match next {
            Some(&i) => ordered.push(i),
            None => return plain(),
        }
    }
    if c.next().is_some() || p.next().is_some() {
        return plain();
    }
    ordered
}

/// The `.kf` text of a plan, with each item's span in it (and each call's name span).
pub struct Layout {
    pub text: String,
    pub spans: Vec<Span>,
}

fn number_text(value: f64) -> String {
    // `{:?}` keeps `2.0` a real (`2` would be read as an integer) and round-trips exactly.
    format!("{:?}", value.abs())
}

/// The `.kf` text `plan` prints as, and where each item stands in it.
pub fn lay_out(plan: &KernelPlan) -> Layout {
    enum Task {
        Item(usize),
        Str(&'static str),
        End(usize),
    }
    let mut text = format!("kernel {} {{\n", plan.name);
    let mut spans = vec![0..0; plan.items.len()];
    let mut lines: Vec<(Option<&str>, usize)> = plan
        .args
        .iter()
        .zip(&plan.declarations)
        .map(|((name, _, _), &d)| (Some(name.as_str()), d))
        .collect();
    lines.push((None, plan.reduction));
    for (name, root) in lines {
        text += "    ";
        if let Some(name) = name {
            text += name;
            text += " = ";
        }
        let mut tasks = vec![Task::Item(root)];
        while let Some(task) = tasks.pop() {
            let i = match task {
                Task::Str(s) => {
                    text += s;
                    continue;
                }
                Task::End(i) => {
                    spans[i].end = text.len();
                    continue;
                }
                Task::Item(i) => i,
            };
            let start = text.len();
            match &plan.items[i] {
                Item::Var(k) => text += &plan.args[*k].0,
                Item::Const(v) => {
                    if v.is_sign_negative() {
                        text.push('-');
                    }
                    text += &number_text(*v);
                }
                Item::Int(k) => {
                    if *k < 0 {
                        text.push('-');
                    }
                    text += &k.unsigned_abs().to_string();
                }
                Item::List(list) => {
                    let items: Vec<String> = list.iter().map(i64::to_string).collect();
                    text += &format!("[{}]", items.join(", "));
                }
                Item::Text(formula) => {
                    text += formula;
                    spans[i] = start..text.len();
                    // A comment in the formula would swallow the rest of its line.
                    if formula.contains('#') || formula.contains("//") {
                        text += "\n   ";
                    }
                    continue;
                }
                Item::Call { name, args } => {
                    text += name;
                    text.push('(');
                    spans[i] = start..start;
                    tasks.push(Task::End(i));
                    tasks.push(Task::Str(")"));
                    for (k, &a) in args.iter().enumerate().rev() {
                        tasks.push(Task::Item(a));
                        if k > 0 {
                            tasks.push(Task::Str(", "));
                        }
                    }
                    continue;
                }
            }
            spans[i] = start..text.len();
        }
        text.push('\n');
    }
    text += "}\n";
    Layout { text, spans }
}

/// The syntax tree of a laid-out plan, each node spanning its text. Recursive: runs on the
/// compiler's stack.
struct TreeBuilder<'a> {
    plan: &'a KernelPlan,
    layout: &'a Layout,
    /// The parsed `Text` items, their spans already in the kernel's text.
    texts: HashMap<usize, Expr>,
}

impl TreeBuilder<'_> {
    fn number(value: f64, text: String, span: Span) -> Expr {
        Expr {
            kind: ExprKind::Number { value, text },
            span,
        }
    }

    /// `-x` as the parser reads it: a negation around the literal.
    fn signed(negative: bool, magnitude: f64, text: String, span: Span) -> Expr {
        if !negative {
            return TreeBuilder::number(magnitude, text, span);
        }
        let inner = TreeBuilder::number(magnitude, text, span.start + 1..span.end);
        Expr {
            kind: ExprKind::Neg(Box::new(inner)),
            span,
        }
    }

    fn expr(&mut self, i: usize) -> Expr {
        let span = self.layout.spans[i].clone();
        match &self.plan.items[i] {
            Item::Var(k) => Expr {
                kind: ExprKind::Name(self.plan.args[*k].0.clone()),
                span,
            },
            Item::Const(v) => {
                let text = number_text(*v);
                TreeBuilder::signed(v.is_sign_negative(), v.abs(), text, span)
            }
            Item::Int(k) => {
                let text = k.unsigned_abs().to_string();
                TreeBuilder::signed(*k < 0, k.unsigned_abs() as f64, text, span)
            }
            Item::List(list) => {
                let mut at = span.start + 1;
                let mut items = Vec::new();
                for k in list {
                    let text = k.to_string();
                    let item_span = at..at + text.len();
                    at = item_span.end + 2;
                    let magnitude = k.unsigned_abs() as f64;
                    let digits = k.unsigned_abs().to_string();
                    items.push(TreeBuilder::signed(*k < 0, magnitude, digits, item_span));
                }
                Expr {
                    kind: ExprKind::List(items),
                    span,
                }
            }
            Item::Text(_) => self.texts.remove(&i).unwrap_or(Expr {
                kind: ExprKind::Name(String::new()),
                span,
            }),
            Item::Call { name, args } => {
                let callee = Ident {
                    name: name.clone(),
                    span: span.start..span.start + name.len(),
                };
                let args = args.iter().map(|&a| self.expr(a)).collect();
                Expr {
                    kind: ExprKind::Call { callee, args },
                    span,
                }
            }
        }
    }
}

/// Moves every span of `e` by `by` bytes.
fn shift(e: &mut Expr, by: isize) {
    let move_span =
        |s: &mut Span| *s = (s.start as isize + by) as usize..(s.end as isize + by) as usize;
    move_span(&mut e.span);
    match &mut e.kind {
        ExprKind::Number { .. } | ExprKind::Name(_) => {}
        ExprKind::Call { callee, args } => {
            move_span(&mut callee.span);
            args.iter_mut().for_each(|a| shift(a, by));
        }
        ExprKind::List(items) => items.iter_mut().for_each(|a| shift(a, by)),
        ExprKind::Neg(inner) => shift(inner, by),
        ExprKind::Binary { lhs, rhs, .. } | ExprKind::BarScalprod { lhs, rhs } => {
            shift(lhs, by);
            shift(rhs, by);
        }
    }
}

/// A formula in KeOps syntax, read by the compiler's parser as the only line of a kernel,
/// its spans moved to `at`, where it stands in the kernel's text.
fn parse_formula(formula: &str, at: usize) -> Result<Expr, Vec<Diagnostic>> {
    const PREFIX: &str = "kernel formula {\n";
    let (mut file, mut diagnostics) = parse(&format!("{PREFIX}{formula}\n}}\n"));
    let by = at as isize - PREFIX.len() as isize;
    let range = at..at + formula.len();
    let clamp = |s: &mut Span| {
        let start = ((s.start as isize + by).max(range.start as isize) as usize).min(range.end);
        let end = ((s.end as isize + by).max(start as isize) as usize).min(range.end);
        *s = start..end;
    };
    for d in &mut diagnostics {
        d.labels.iter_mut().for_each(|l| clamp(&mut l.span));
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let one_formula =
        file.kernels.len() == 1 && matches!(file.kernels[0].body.as_slice(), [Statement::Expr(_)]);
    match one_formula {
        true => {
            let statement =
                std::mem::replace(&mut file.kernels[0].body[0], Statement::Invalid(0..0));
            let Statement::Expr(mut e) = statement else {
                unreachable!("matched above")
            };
            shift(&mut e, by);
            Ok(e)
        }
        false => Err(vec![Diagnostic::error(
            "a formula must be one expression",
            range,
            "not a single formula",
        )
        .with_help(
            "declare arguments through the aliases, and write the formula on its own",
        )]),
    }
}

/// The syntax tree of the laid-out plan, or the parser's diagnostics for a text formula.
pub fn syntax_tree(plan: &KernelPlan, layout: &Layout) -> Result<File, Vec<Diagnostic>> {
    let mut texts = HashMap::new();
    let mut diagnostics = Vec::new();
    // The text formulas the kernel reads (a node of the arena left unused is not part of it).
    let mut reached = vec![false; plan.items.len()];
    let mut pending: Vec<usize> = plan.declarations.clone();
    pending.push(plan.reduction);
    while let Some(i) = pending.pop() {
        if !std::mem::replace(&mut reached[i], true) {
            if let Item::Call { args, .. } = &plan.items[i] {
                pending.extend(args);
            }
        }
    }
    for (i, item) in plan.items.iter().enumerate() {
        if let (Item::Text(formula), true) = (item, reached[i]) {
            match parse_formula(formula, layout.spans[i].start) {
                Ok(e) => {
                    texts.insert(i, e);
                }
                Err(mut d) => diagnostics.append(&mut d),
            }
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let mut builder = TreeBuilder {
        plan,
        layout,
        texts,
    };
    let mut body = Vec::new();
    for ((name, _, _), &d) in plan.args.iter().zip(&plan.declarations) {
        let value = builder.expr(d);
        let start = value.span.start - " = ".len() - name.len();
        body.push(Statement::Decl {
            name: Ident {
                name: name.clone(),
                span: start..start + name.len(),
            },
            value,
        });
    }
    body.push(Statement::Expr(builder.expr(plan.reduction)));
    let name_start = "kernel ".len();
    Ok(File {
        kernels: vec![KernelDef {
            name: Ident {
                name: plan.name.clone(),
                span: name_start..name_start + plan.name.len(),
            },
            body,
            span: 0..layout.text.trim_end().len(),
        }],
    })
}

/// A formula node of a [`KernelBuilder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node(usize);

/// An integer parameter of an operator call (`Elem(f, m)`'s `m`, `TensorDot`'s lists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallParam {
    Int(i64),
    List(Vec<i64>),
}

impl From<i64> for CallParam {
    fn from(value: i64) -> CallParam {
        CallParam::Int(value)
    }
}

impl From<Vec<i64>> for CallParam {
    fn from(list: Vec<i64>) -> CallParam {
        CallParam::List(list)
    }
}

/// A kernel built in Rust, node by node: arguments, operator calls of the `.kf` operator table
/// (by their KeOps names, operands and integer parameters as the table lists them), constants,
/// formulas in KeOps syntax, then the reduction. The result is the syntax tree and the text it
/// prints as ([`BuiltKernel`]), for `driver::compile_tree` or `Jit::compile_built`. Operator
/// names and arities are the checker's to judge: a wrong one is a diagnostic there, against
/// the text.
#[derive(Clone, Debug)]
pub struct KernelBuilder {
    plan: KernelPlan,
    problems: Vec<String>,
    /// The items some call already reads: a node used again is copied (each use of a node
    /// stands at its own place in the text, with its own spans).
    used: Vec<bool>,
}

/// Why a [`KernelBuilder`] made no kernel: what is wrong with its names, dimensions,
/// constants or reduction (each problem a line), or a formula given as text that does not
/// parse (rendered against the kernel's text).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("kernel `{kernel}`: {}", problems.join("; "))]
    Invalid {
        kernel: String,
        problems: Vec<String>,
    },
    #[error("{}", crate::diagnostic::render_all(diagnostics, text, false))]
    Syntax {
        /// The kernel's text, which the diagnostics' spans point into.
        text: SourceFile,
        diagnostics: Vec<Diagnostic>,
    },
}

/// A built kernel: its syntax tree, and the `.kf` text it prints as (which its spans point
/// into, and against which diagnostics are rendered).
#[derive(Clone, Debug)]
pub struct BuiltKernel {
    pub source: SourceFile,
    pub file: File,
}

impl fmt::Display for BuiltKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source.text)
    }
}

impl KernelBuilder {
    pub fn new(name: &str) -> KernelBuilder {
        let mut problems = Vec::new();
        if !is_identifier(name) {
            problems.push(format!(
                "`{name}` is not a kernel name (letters, digits, _)"
            ));
        }
        KernelBuilder {
            plan: KernelPlan::new(name),
            problems,
            used: Vec::new(),
        }
    }

    /// Declares the next argument: an i-variable (`Vi`), a j-variable (`Vj`) or a parameter
    /// (`Pm`) of dimension `dim`; its node.
    pub fn arg(&mut self, name: &str, category: Category, dim: usize) -> Node {
        if !is_identifier(name) {
            self.problems.push(format!(
                "`{name}` is not an argument name (letters, digits, _)"
            ));
        }
        if self.plan.args.iter().any(|(n, _, _)| n == name) {
            self.problems.push(format!("`{name}` is declared twice"));
        }
        if dim == 0 {
            self.problems
                .push(format!("`{name}` has dimension 0 (at least 1)"));
        }
        let keyword = match category {
            Category::I => "Vi",
            Category::J => "Vj",
            Category::Param => "Pm",
        };
        let position = self.plan.declare(name, keyword, dim);
        Node(self.plan.push(Item::Var(position)))
    }

    /// A real constant (finite).
    pub fn constant(&mut self, value: f64) -> Node {
        if !value.is_finite() {
            self.problems
                .push(format!("the constant {value} is not a finite number"));
        }
        Node(self.plan.push(Item::Const(value)))
    }

    /// `name(operands..., params...)`, arguments in the order the operator table gives them
    /// (`Extract(f, start, len)`: `call("Extract", &[f], &[start.into(), len.into()])`).
    pub fn call(&mut self, name: &str, operands: &[Node], params: &[CallParam]) -> Node {
        let params: Vec<usize> = params
            .iter()
            .map(|p| {
                self.plan.push(match p {
                    CallParam::Int(k) => Item::Int(*k),
                    CallParam::List(list) => Item::List(list.clone()),
                })
            })
            .collect();
        let children: Vec<usize> = operands.iter().map(|&n| self.operand(n)).collect();
        let args = call_order(&self.plan.items, name, &children, &params);
        Node(self.plan.push(Item::Call {
            name: name.to_string(),
            args,
        }))
    }

    /// A formula in KeOps syntax, over the arguments declared (`"Exp(-SqDist(x, y))"`).
    pub fn text(&mut self, formula: &str) -> Node {
        Node(self.plan.push(Item::Text(formula.to_string())))
    }

    /// `node` as the operand of a new call: itself the first time, a copy of its subtree
    /// after that.
    fn operand(&mut self, node: Node) -> usize {
        let i = match self.used.get(node.0) {
            Some(true) => self.copy_subtree(node.0),
            _ => node.0,
        };
        self.mark_used(i);
        i
    }

    fn mark_used(&mut self, i: usize) {
        if self.used.len() <= i {
            self.used.resize(i + 1, false);
        }
        self.used[i] = true;
    }

    /// A copy of the subtree at `root`, new items all through (every call's operands are used
    /// once, so the subtree is a tree). Children first, by an explicit stack: no recursion.
    fn copy_subtree(&mut self, root: usize) -> usize {
        let mut order = Vec::new();
        let mut pending = vec![root];
        while let Some(i) = pending.pop() {
            order.push(i);
            if let Item::Call { args, .. } = &self.plan.items[i] {
                pending.extend(args);
            }
        }
        let mut copies: HashMap<usize, usize> = HashMap::new();
        // Reversed pre-order: each node after all of its descendants.
        for &i in order.iter().rev() {
            let item = match &self.plan.items[i] {
                Item::Call { name, args } => Item::Call {
                    name: name.clone(),
                    args: args.iter().map(|a| copies[a]).collect(),
                },
                other => other.clone(),
            };
            let copy = self.plan.push(item);
            if i != root {
                self.mark_used(copy);
            }
            copies.insert(i, copy);
        }
        copies[&root]
    }

    pub fn add(&mut self, a: Node, b: Node) -> Node {
        self.call("Add", &[a, b], &[])
    }

    pub fn sub(&mut self, a: Node, b: Node) -> Node {
        self.call("Subtract", &[a, b], &[])
    }

    pub fn mul(&mut self, a: Node, b: Node) -> Node {
        self.call("Mult", &[a, b], &[])
    }

    pub fn div(&mut self, a: Node, b: Node) -> Node {
        self.call("Divide", &[a, b], &[])
    }

    /// `kind(formula, axis)`: Sum, Min, ArgMin, LogSumExp, ...
    pub fn reduction(
        self,
        kind: ReductionKind,
        formula: Node,
        axis: Axis,
    ) -> Result<BuiltKernel, BuildError> {
        self.finish(kind, ReductionArgs::Formula, formula, None, None, axis)
    }

    /// `kind(formula, k, axis)`: KMin, ArgKMin, KMin_ArgKMin.
    pub fn k_reduction(
        self,
        kind: ReductionKind,
        formula: Node,
        k: usize,
        axis: Axis,
    ) -> Result<BuiltKernel, BuildError> {
        self.finish(kind, ReductionArgs::FormulaK, formula, Some(k), None, axis)
    }

    /// `kind(formula, weight, axis)`: LogSumExpWeight, SumSoftMaxWeight, ...
    pub fn weighted_reduction(
        self,
        kind: ReductionKind,
        formula: Node,
        weight: Node,
        axis: Axis,
    ) -> Result<BuiltKernel, BuildError> {
        self.finish(
            kind,
            ReductionArgs::FormulaWeight,
            formula,
            None,
            Some(weight),
            axis,
        )
    }

    fn finish(
        mut self,
        kind: ReductionKind,
        written: ReductionArgs,
        formula: Node,
        k: Option<usize>,
        weight: Option<Node>,
        axis: Axis,
    ) -> Result<BuiltKernel, BuildError> {
        if kind.args() != written {
            let how = match kind.args() {
                ReductionArgs::Formula => "reduction",
                ReductionArgs::FormulaK => "k_reduction",
                ReductionArgs::FormulaWeight => "weighted_reduction",
            };
            self.problems.push(format!("{kind} is built with `{how}`"));
        }
        if k == Some(0) {
            self.problems.push(format!("{kind} needs K >= 1"));
        }
        if !self.problems.is_empty() {
            return Err(BuildError::Invalid {
                kernel: self.plan.name,
                problems: self.problems,
            });
        }
        let axis = match axis {
            Axis::I => 0,
            Axis::J => 1,
        };
        let k = k.map(|k| k.min(i64::MAX as usize) as i64);
        let formula = self.operand(formula);
        let weight = weight.map(|w| self.operand(w));
        self.plan
            .reduce(&kind.to_string(), formula, k, weight, axis);
        let layout = lay_out(&self.plan);
        let source = SourceFile::new("<built>", layout.text.clone());
        let file = crate::isolate::on_compiler_stack(|| syntax_tree(&self.plan, &layout))
            .unwrap_or_else(|panic| Err(vec![Diagnostic::internal("the kernel builder", panic)]))
            .map_err(|diagnostics| BuildError::Syntax {
                text: source.clone(),
                diagnostics,
            })?;
        Ok(BuiltKernel { source, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    fn plan(args: &[(&str, &str, usize)], items: Vec<Item>, reduction: usize) -> KernelPlan {
        let mut plan = KernelPlan {
            name: "t".to_string(),
            args: args
                .iter()
                .map(|(n, c, d)| (n.to_string(), c.to_string(), *d))
                .collect(),
            ..KernelPlan::default()
        };
        let offset = 2 * args.len();
        for (k, (_, c, d)) in args.iter().enumerate() {
            plan.push(Item::Int(*d as i64));
            plan.push(Item::Call {
                name: c.to_string(),
                args: vec![2 * k],
            });
            plan.declarations.push(2 * k + 1);
        }
        for item in items {
            let item = match item {
                Item::Call { name, args } => Item::Call {
                    name,
                    args: args.into_iter().map(|a| a + offset).collect(),
                },
                other => other,
            };
            plan.push(item);
        }
        plan.reduction = reduction + offset;
        plan
    }

    fn call(name: &str, args: &[usize]) -> Item {
        Item::Call {
            name: name.to_string(),
            args: args.to_vec(),
        }
    }

    /// The tree built directly is the one the parser reads from its text, spans included.
    #[test]
    fn the_built_tree_is_the_parsed_text() {
        let p = plan(
            &[("x", "Vi", 3), ("y", "Vj", 3), ("b", "Pm", 2)],
            vec![
                Item::Var(0),                                 // 0
                Item::Var(1),                                 // 1
                call("SqDist", &[0, 1]),                      // 2
                Item::Const(-0.5),                            // 3
                call("Mult", &[3, 2]),                        // 4
                call("Exp", &[4]),                            // 5
                Item::Int(-3),                                // 6
                call("Pow", &[5, 6]),                         // 7
                Item::Var(2),                                 // 8
                Item::Int(0),                                 // 9
                Item::Int(1),                                 // 10
                call("Extract", &[8, 9, 10]),                 // 11
                Item::Const(1e-7),                            // 12
                call("Mult", &[11, 12]),                      // 13
                Item::Const(2.0),                             // 14
                call("Add", &[7, 14]),                        // 15
                call("Add", &[15, 13]),                       // 16
                Item::List(vec![3]),                          // 17
                Item::List(vec![3]),                          // 18
                Item::List(vec![0]),                          // 19
                Item::List(vec![0]),                          // 20
                Item::Var(0),                                 // 21
                Item::Var(1),                                 // 22
                call("TensorDot", &[21, 22, 17, 18, 19, 20]), // 23
                call("Add", &[16, 23]),                       // 24
                Item::Int(0),                                 // 25
                call("Sum_Reduction", &[24, 25]),             // 26
            ],
            26,
        );
        let layout = lay_out(&p);
        let built = syntax_tree(&p, &layout).expect("no text formula");
        let (parsed, diagnostics) = parse(&layout.text);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(built, parsed, "{}", layout.text);
        assert_eq!(built.to_string(), layout.text);
        let (kernels, diagnostics) = crate::check::check_file(&built);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(kernels[0].signature.output_dim(), 1);
    }

    #[test]
    fn a_text_formula_is_parsed_where_it_stands() {
        let p = plan(
            &[("x", "Vi", 3), ("y", "Vj", 3)],
            vec![
                Item::Text("Exp(-SqDist(x,y))".to_string()),
                Item::Int(0),
                call("Sum_Reduction", &[0, 1]),
            ],
            2,
        );
        let layout = lay_out(&p);
        let built = syntax_tree(&p, &layout).expect("the formula parses");
        let (parsed, _) = parse(&layout.text);
        assert_eq!(built, parsed);
    }

    #[test]
    fn a_text_formula_with_a_syntax_error_points_into_the_kernel() {
        let p = plan(
            &[("x", "Vi", 3)],
            vec![
                Item::Text("Exp(x +)".to_string()),
                Item::Int(0),
                call("Sum_Reduction", &[0, 1]),
            ],
            2,
        );
        let layout = lay_out(&p);
        let d = syntax_tree(&p, &layout).expect_err("a syntax error");
        let at = layout.text.find("Exp(x +)").unwrap();
        let span = d[0].labels[0].span.clone();
        assert!(
            span.start >= at && span.end <= at + "Exp(x +)".len(),
            "{span:?}"
        );
    }

    /// A node used twice (a variable, a text formula, a call) stands twice in the text, each
    /// use with its own spans, so the built tree is the parsed one; a text node the kernel
    /// does not read is not parsed.
    #[test]
    fn a_node_used_twice_stands_twice_and_unused_nodes_are_not_read() {
        let mut k = KernelBuilder::new("t");
        let x = k.arg("x", Category::I, 1);
        let y = k.arg("y", Category::J, 1);
        let g = k.text("Exp(-Square(x - y))");
        let _unused = k.text("Exp(x +)");
        let s = k.add(x, x);
        let gg = k.mul(g, g);
        let f = k.mul(gg, s);
        let twice = k.add(f, f);
        let built = k
            .weighted_reduction(ReductionKind::LogSumExpWeight, y, twice, Axis::I)
            .unwrap();
        let (parsed, diagnostics) = parse(&built.source.text);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(built.file, parsed, "{}", built.source.text);
        let (_, diagnostics) = crate::check::check_file(&built.file);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(built.source.text.matches("Exp(-Square(x - y))").count(), 4);
    }

    #[test]
    fn operands_and_parameters_follow_the_operator_table() {
        let items = vec![Item::Int(0), Item::Int(2), Item::List(vec![1])];
        assert_eq!(call_order(&items, "Extract", &[9], &[0, 1]), vec![9, 0, 1]);
        assert_eq!(call_order(&items, "Exp", &[9], &[]), vec![9]);
        // Not as the table says: operands then parameters, for the checker to report.
        assert_eq!(call_order(&items, "Exp", &[9], &[0]), vec![9, 0]);
        assert_eq!(call_order(&items, "Nope", &[9], &[0]), vec![9, 0]);
    }
}
