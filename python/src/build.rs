//! Kernels built from structured data rather than `.kf` text: the arguments, the reduction and
//! the formula as a tree of operator nodes. This is how `LazyTensor` and `Genred` reach the
//! compiler: the tree becomes the compiler's syntax tree (`keops_driver::syntax::ast`) directly, and
//! the compiler's own checker builds the formula IR from it, so every error is the checker's
//! diagnostic.
//!
//! A formula node, in Python:
//! - `("Var", k)`: the argument at position `k`;
//! - `("Const", 2.5)`: a real constant;
//! - `(op, *params, [children])`: an operator of the `.kf` operator table, its integer (or
//!   integer-list) parameters then its formula operands, e.g. `("Exp", [f])`,
//!   `("Extract", 0, 2, [f])`, `("Pow", 3, [f])`, `("IntCst", 2)`;
//! - a `str` (formula or weight root only): a formula in KeOps syntax, read by the compiler's
//!   parser where it stands in the kernel.
//!
//! The syntax tree gets the spans of the `.kf` text it prints as, so a diagnostic is rendered
//! against that text (`Kernel.source`), which is also the key of the in-memory table and, printed
//! back from the tree, of the on-disk compile cache. Reading the Python tree and laying out the
//! text are loops over an arena, never recursion: a formula nested thousands of levels deep
//! costs no stack on the interpreter's thread; what recurses (the checker, the syntax tree)
//! runs on the compiler's own stack.

use crate::{machine_code, remember, remembered, Compiled, Kernel, MakeError, PyErrText, TableKey};
use keops_driver::check::operators::{self, Param};
use keops_driver::diagnostic::{render_all, Diagnostic};
use keops_driver::source::{SourceFile, Span};
use keops_driver::syntax::ast::{Expr, ExprKind, File, Ident, KernelDef, Statement};
use keops_driver::syntax::parse;
use keops_runtime::{ReductionArgs, ReductionKind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PySequence, PyString, PyTuple};
use std::collections::HashMap;
use std::sync::Mutex;

/// One node of the kernel being built. Children are indices into the arena, so that neither
/// reading a deep tree nor dropping it recurses.
#[derive(Clone, Debug, PartialEq)]
enum Item {
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

/// Where a node came from in the Python tree, to name it in an error: `formula[0][1]` is the
/// second child of the root's first child.
#[derive(Clone, Copy)]
struct Origin {
    parent: usize,
    position: usize,
}

/// A kernel as plain data: arguments, and the arena holding the declarations' and the
/// reduction's calls.
struct Plan {
    name: String,
    args: Vec<(String, String, usize)>,
    items: Vec<Item>,
    origins: Vec<Option<Origin>>,
    /// The `Vi(dim)`-style call of each argument's declaration.
    declarations: Vec<usize>,
    /// The reduction's call, `Sum_Reduction(F, axis)`.
    reduction: usize,
}

impl Plan {
    fn push(&mut self, item: Item, origin: Option<Origin>) -> usize {
        self.items.push(item);
        self.origins.push(origin);
        self.items.len() - 1
    }

    /// `formula[0][1]`: where item `i` sits in the tree read from `root_name`.
    fn path(&self, mut i: usize, root_name: &str) -> String {
        let mut steps = Vec::new();
        while let Some(origin) = self.origins[i] {
            steps.push(origin.position);
            i = origin.parent;
        }
        let mut path = root_name.to_string();
        for step in steps.iter().rev() {
            path += &format!("[{step}]");
        }
        path
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name != "kernel"
        && name != "let"
}

/// An `int` that is not a `bool`.
fn plain_int(obj: &Bound<'_, PyAny>) -> Option<i64> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return None;
    }
    obj.extract().ok()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// Reads the arguments `[(name, "Vi"|"Vj"|"Pm", dim), ...]`.
fn read_args(args: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String, usize)>> {
    let shape = "(name, \"Vi\" | \"Vj\" | \"Pm\", dim)";
    let Ok(seq) = args.cast::<PySequence>() else {
        return Err(PyTypeError::new_err(format!(
            "args: expected a list of {shape}, not {}",
            type_name(args)
        )));
    };
    let mut read = Vec::new();
    for (k, arg) in seq.try_iter()?.enumerate() {
        let arg = arg?;
        let Ok(t) = arg.cast::<PyTuple>() else {
            return Err(PyTypeError::new_err(format!(
                "args[{k}]: expected a tuple {shape}, not {}",
                type_name(&arg)
            )));
        };
        if t.len() != 3 {
            return Err(PyTypeError::new_err(format!(
                "args[{k}]: expected a tuple {shape}, got {} items",
                t.len()
            )));
        }
        let name: String = t
            .get_item(0)?
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("args[{k}]: the name must be a string")))?;
        if !is_identifier(&name) {
            return Err(PyValueError::new_err(format!(
                "args[{k}]: `{name}` is not a valid argument name (letters, digits, _, not starting with a digit)"
            )));
        }
        let category: String = t.get_item(1)?.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "args[{k}]: the category must be \"Vi\", \"Vj\" or \"Pm\""
            ))
        })?;
        if !["Vi", "Vj", "Pm"].contains(&category.as_str()) {
            return Err(PyValueError::new_err(format!(
                "args[{k}]: category `{category}` is not \"Vi\", \"Vj\" or \"Pm\""
            )));
        }
        let dim = plain_int(&t.get_item(2)?)
            .filter(|&d| d >= 1)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "args[{k}]: the dimension of `{name}` must be a positive int"
                ))
            })?;
        if read.iter().any(|(n, _, _)| *n == name) {
            return Err(PyValueError::new_err(format!(
                "args[{k}]: `{name}` is declared twice"
            )));
        }
        read.push((name, category, dim as usize));
    }
    Ok(read)
}

/// Reads a formula tree (or KeOps text) into the arena; returns its root.
fn read_formula(plan: &mut Plan, obj: &Bound<'_, PyAny>, root_name: &str) -> PyResult<usize> {
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(plan.push(Item::Text(text.extract::<String>()?), None));
    }
    let root = plan.push(Item::Int(0), None);
    let mut pending = vec![(obj.clone(), root)];
    let node_help = "a node is (\"Var\", k), (\"Const\", x) or (op, *params, [children])";
    while let Some((obj, slot)) = pending.pop() {
        let here = |plan: &Plan| plan.path(slot, root_name);
        let Ok(node) = obj.cast::<PyTuple>() else {
            return Err(PyTypeError::new_err(format!(
                "{}: expected a formula node, not {}: {node_help}",
                here(plan),
                type_name(&obj)
            )));
        };
        let Some(head) = node
            .get_item(0)
            .ok()
            .and_then(|h| h.extract::<String>().ok())
        else {
            return Err(PyTypeError::new_err(format!(
                "{}: a node starts with its operator's name (a string): {node_help}",
                here(plan)
            )));
        };
        match head.as_str() {
            "Var" => {
                let k = (node.len() == 2)
                    .then(|| node.get_item(1).ok())
                    .flatten()
                    .and_then(|k| plain_int(&k))
                    .filter(|&k| k >= 0 && (k as usize) < plan.args.len());
                let Some(k) = k else {
                    return Err(PyValueError::new_err(format!(
                        "{}: (\"Var\", k) needs the position k of an argument, 0 to {}",
                        here(plan),
                        plan.args.len() as i64 - 1
                    )));
                };
                plan.items[slot] = Item::Var(k as usize);
            }
            "Const" => {
                let value = (node.len() == 2)
                    .then(|| node.get_item(1).ok())
                    .flatten()
                    .filter(|v| {
                        !v.is_instance_of::<PyBool>()
                            && (v.is_instance_of::<PyFloat>() || v.is_instance_of::<PyInt>())
                    })
                    .and_then(|v| v.extract::<f64>().ok())
                    .filter(|v| v.is_finite());
                let Some(value) = value else {
                    return Err(PyValueError::new_err(format!(
                        "{}: (\"Const\", x) needs a finite real number x",
                        here(plan)
                    )));
                };
                plan.items[slot] = Item::Const(value);
            }
            _ => {
                let rest: Vec<Bound<'_, PyAny>> = node.iter().skip(1).collect();
                let (children, params) = match rest.last() {
                    Some(last) if last.is_instance_of::<PyList>() => {
                        let children: Vec<Bound<'_, PyAny>> =
                            last.cast::<PyList>()?.iter().collect();
                        (children, &rest[..rest.len() - 1])
                    }
                    _ => (Vec::new(), &rest[..]),
                };
                let mut param_slots = Vec::new();
                for (p, param) in params.iter().enumerate() {
                    let item = if let Some(k) = plain_int(param) {
                        Item::Int(k)
                    } else if let Some(list) = param
                        .cast::<PyTuple>()
                        .ok()
                        .and_then(|t| t.iter().map(|v| plain_int(&v)).collect())
                    {
                        Item::List(list)
                    } else {
                        return Err(PyTypeError::new_err(format!(
                            "{}: parameter {} of `{head}` must be an int or a tuple of ints, not {} (formula operands go in the trailing list)",
                            here(plan),
                            p + 1,
                            type_name(param)
                        )));
                    };
                    param_slots.push(plan.push(item, None));
                }
                let mut child_slots = Vec::new();
                for (position, child) in children.into_iter().enumerate() {
                    let origin = Origin {
                        parent: slot,
                        position,
                    };
                    let child_slot = plan.push(Item::Int(0), Some(origin));
                    child_slots.push(child_slot);
                    pending.push((child, child_slot));
                }
                let args = call_order(&plan.items, &head, &child_slots, &param_slots);
                plan.items[slot] = Item::Call { name: head, args };
            }
        }
    }
    Ok(root)
}

/// The arguments of `name(...)` in the order the operator table gives them: formula operands
/// and parameters interleaved (`Extract(f, start, len)`). When they do not fit the table (or
/// the name is not in it), operands then parameters, for the checker to report.
fn call_order(items: &[Item], name: &str, children: &[usize], params: &[usize]) -> Vec<usize> {
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
struct Layout {
    text: String,
    spans: Vec<Span>,
}

fn number_text(value: f64) -> String {
    // `{:?}` keeps `2.0` a real (`2` would be read as an integer) and round-trips exactly.
    format!("{:?}", value.abs())
}

fn lay_out(plan: &Plan) -> Layout {
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
    plan: &'a Plan,
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
fn syntax_tree(plan: &Plan, layout: &Layout) -> Result<File, Vec<Diagnostic>> {
    let mut texts = HashMap::new();
    let mut diagnostics = Vec::new();
    for (i, item) in plan.items.iter().enumerate() {
        if let Item::Text(formula) = item {
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

/// Checks the plan's syntax tree and compiles it, as the compiler does a parsed file
/// (`driver::compile_tree`), its machine code through the on-disk cache.
fn compile_plan(plan: &Plan, layout: &Layout) -> Result<Compiled, MakeError> {
    let source = SourceFile::new("<source>", layout.text.clone());
    let rendered = |d: &[Diagnostic]| MakeError::Source(render_all(d, &source, false));
    let file = syntax_tree(plan, layout).map_err(|d| rendered(&d))?;
    let compiled =
        keops_driver::driver::compile_tree(source.clone(), file).map_err(|(_, d)| rendered(&d))?;
    let checked = compiled.kernels.last().cloned().ok_or_else(|| {
        MakeError::Internal("the checker returned no kernel and no diagnostic".to_string())
    })?;
    let code = machine_code(&compiled, &checked)?;
    Ok(Compiled {
        checked,
        code,
        source: layout.text.clone(),
    })
}

/// Reads everything Python passed into a plan (the GIL held, no recursion).
#[allow(clippy::too_many_arguments)]
fn read_plan(
    name: &str,
    args: &Bound<'_, PyAny>,
    reduction: &str,
    axis: &Bound<'_, PyAny>,
    formula: &Bound<'_, PyAny>,
    k: Option<&Bound<'_, PyAny>>,
    weight: Option<&Bound<'_, PyAny>>,
) -> PyResult<Plan> {
    if !is_identifier(name) {
        return Err(PyValueError::new_err(format!(
            "name: `{name}` is not a valid kernel name"
        )));
    }
    let args = read_args(args)?;
    let axis = plain_int(axis).filter(|a| *a == 0 || *a == 1).ok_or_else(|| {
        PyValueError::new_err(format!(
            "axis: expected 0 (one output row per i, reducing over j) or 1 (one per j, over i), got {}",
            axis.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })?;
    let stem = reduction.strip_suffix("_Reduction").unwrap_or(reduction);
    let callee = format!("{stem}_Reduction");
    // A reduction the runtime does not know is left to the checker, which names the closest.
    let kind = ReductionKind::from_reduction_name(&callee);
    let k = match k {
        None => None,
        Some(k) => Some(
            plain_int(k)
                .filter(|&k| k >= 1)
                .ok_or_else(|| PyValueError::new_err("k: K must be a positive int".to_string()))?,
        ),
    };
    if let Some(kind) = kind {
        match (kind.args(), k, weight) {
            (ReductionArgs::FormulaK, None, _) => {
                return Err(PyValueError::new_err(format!(
                    "k: `{callee}` needs K, the number of values kept"
                )))
            }
            (ReductionArgs::FormulaWeight, _, None) => {
                return Err(PyValueError::new_err(format!(
                    "weight: `{callee}` needs its weight formula"
                )))
            }
            (a, Some(_), _) if a != ReductionArgs::FormulaK => {
                return Err(PyValueError::new_err(format!("k: `{callee}` takes no K")))
            }
            (a, _, Some(_)) if a != ReductionArgs::FormulaWeight => {
                return Err(PyValueError::new_err(format!(
                    "weight: `{callee}` takes no weight formula"
                )))
            }
            _ => {}
        }
    }
    let mut plan = Plan {
        name: name.to_string(),
        args,
        items: Vec::new(),
        origins: Vec::new(),
        declarations: Vec::new(),
        reduction: 0,
    };
    for k in 0..plan.args.len() {
        let (_, category, dim) = plan.args[k].clone();
        let dim = plan.push(Item::Int(dim as i64), None);
        let call = plan.push(
            Item::Call {
                name: category,
                args: vec![dim],
            },
            None,
        );
        plan.declarations.push(call);
    }
    let mut reduction_args = vec![read_formula(&mut plan, formula, "formula")?];
    if let Some(k) = k {
        reduction_args.push(plan.push(Item::Int(k), None));
    }
    if let Some(weight) = weight {
        reduction_args.push(read_formula(&mut plan, weight, "weight")?);
    }
    reduction_args.push(plan.push(Item::Int(axis), None));
    plan.reduction = plan.push(
        Item::Call {
            name: callee,
            args: reduction_args,
        },
        None,
    );
    Ok(plan)
}

/// `build_kernel(name, args, reduction, axis, formula, k=None, weight=None)`: a kernel from
/// structured data, used exactly as `Kernel(source)`.
///
/// - `args`: `[(name, "Vi" | "Vj" | "Pm", dim), ...]`, the arguments in call order;
/// - `reduction`: the `.kf` reduction's name (`"Sum"`, `"KMin"`, `"SumSoftMaxWeight"`, ...);
/// - `axis`: 0 for one output row per i (reducing over j), 1 for one per j (`.kf`'s axis);
/// - `formula`, `weight`: trees of nodes (see the module's documentation) or KeOps text;
/// - `k`: K of the K-reductions.
///
/// Malformed data raises `TypeError`/`ValueError` naming the argument (and the node's place in
/// the tree); a formula the checker refuses raises `KfError` with its diagnostic, rendered
/// against the kernel's `.kf` text (`Kernel.source`).
#[pyfunction]
#[pyo3(signature = (name, args, reduction, axis, formula, k=None, weight=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_kernel(
    py: Python<'_>,
    name: &str,
    args: &Bound<'_, PyAny>,
    reduction: &str,
    axis: &Bound<'_, PyAny>,
    formula: &Bound<'_, PyAny>,
    k: Option<&Bound<'_, PyAny>>,
    weight: Option<&Bound<'_, PyAny>>,
) -> PyResult<Kernel> {
    let plan = read_plan(name, args, reduction, axis, formula, k, weight)?;
    let compiled = py.detach(|| -> Result<_, PyErrText> {
        let layout = lay_out(&plan);
        let key: TableKey = (layout.text.clone(), Some(plan.name.clone()));
        if let Some(found) = remembered(&key) {
            return Ok(found);
        }
        let made = keops_driver::isolate::on_compiler_stack(|| compile_plan(&plan, &layout))
            .map_err(|panic| {
                PyErrText::Runtime(format!(
                    "internal error in keops_rs while compiling: {panic}"
                ))
            })?
            .map_err(PyErrText::Make)?;
        Ok(remember(key, made))
    })?;
    Ok(Kernel {
        compiled,
        plans: Mutex::new(HashMap::new()),
        symmetric: Mutex::new(HashMap::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[(&str, &str, usize)], items: Vec<Item>, reduction: usize) -> Plan {
        let mut plan = Plan {
            name: "t".to_string(),
            args: args
                .iter()
                .map(|(n, c, d)| (n.to_string(), c.to_string(), *d))
                .collect(),
            items: Vec::new(),
            origins: Vec::new(),
            declarations: Vec::new(),
            reduction: 0,
        };
        let offset = 2 * args.len();
        for (k, (_, c, d)) in args.iter().enumerate() {
            plan.push(Item::Int(*d as i64), None);
            plan.push(
                Item::Call {
                    name: c.to_string(),
                    args: vec![2 * k],
                },
                None,
            );
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
            plan.push(item, None);
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
        let (kernels, diagnostics) = keops_driver::check::check_file(&built);
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
