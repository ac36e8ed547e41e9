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
//! This file reads the Python tree into the compiler's arena of a kernel built as data
//! (`keops_driver::syntax::build`, which Rust programs use through its `KernelBuilder`): that
//! module lays out the `.kf` text the kernel prints as and builds the syntax tree with spans
//! into it, so a diagnostic is rendered against that text (`Kernel.source`), which is also the
//! key of the in-memory table and, printed back from the tree, of the on-disk compile cache.
//! Reading the Python tree is a loop over the arena, never recursion: a formula nested
//! thousands of levels deep costs no stack on the interpreter's thread; what recurses (the
//! checker, the syntax tree) runs on the compiler's own stack.

use crate::{machine_code, remember, remembered, Compiled, Kernel, MakeError, PyErrText, TableKey};
use keops_driver::diagnostic::{render_all, Diagnostic};
use keops_driver::source::SourceFile;
use keops_driver::syntax::build::{
    call_order, is_identifier, lay_out, syntax_tree, Item, KernelPlan, Layout,
};
use keops_runtime::{ReductionArgs, ReductionKind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PySequence, PyString, PyTuple};
use std::collections::HashMap;
use std::sync::Mutex;

/// Where a node came from in the Python tree, to name it in an error: `formula[0][1]` is the
/// second child of the root's first child.
#[derive(Clone, Copy)]
struct Origin {
    parent: usize,
    position: usize,
}

/// The kernel read from Python: the shared plan, and where each formula node came from in the
/// Python tree (to name it in an error).
struct Plan {
    tree: KernelPlan,
    origins: HashMap<usize, Origin>,
}

impl Plan {
    fn push(&mut self, item: Item, origin: Option<Origin>) -> usize {
        let i = self.tree.push(item);
        if let Some(origin) = origin {
            self.origins.insert(i, origin);
        }
        i
    }

    /// `formula[0][1]`: where item `i` sits in the tree read from `root_name`.
    fn path(&self, mut i: usize, root_name: &str) -> String {
        let mut steps = Vec::new();
        while let Some(origin) = self.origins.get(&i) {
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
                    .filter(|&k| k >= 0 && (k as usize) < plan.tree.args.len());
                let Some(k) = k else {
                    return Err(PyValueError::new_err(format!(
                        "{}: (\"Var\", k) needs the position k of an argument, 0 to {}",
                        here(plan),
                        plan.tree.args.len() as i64 - 1
                    )));
                };
                plan.tree.items[slot] = Item::Var(k as usize);
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
                plan.tree.items[slot] = Item::Const(value);
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
                let args = call_order(&plan.tree.items, &head, &child_slots, &param_slots);
                plan.tree.items[slot] = Item::Call { name: head, args };
            }
        }
    }
    Ok(root)
}

/// Checks the plan's syntax tree and compiles it, as the compiler does a parsed file
/// (`driver::compile_tree`), its machine code through the on-disk cache.
fn compile_plan(plan: &KernelPlan, layout: &Layout) -> Result<Compiled, MakeError> {
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
        tree: KernelPlan::new(name),
        origins: HashMap::new(),
    };
    for (name, category, dim) in &args {
        plan.tree.declare(name, category, *dim);
    }
    let formula = read_formula(&mut plan, formula, "formula")?;
    let weight = match weight {
        Some(weight) => Some(read_formula(&mut plan, weight, "weight")?),
        None => None,
    };
    plan.tree.reduce(&callee, formula, k, weight, axis);
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
        let layout = lay_out(&plan.tree);
        let key: TableKey = (layout.text.clone(), Some(plan.tree.name.clone()));
        if let Some(found) = remembered(&key) {
            return Ok(found);
        }
        let made = keops_driver::isolate::on_compiler_stack(|| compile_plan(&plan.tree, &layout))
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
