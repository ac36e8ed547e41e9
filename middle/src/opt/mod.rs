//! The middle end: formulas go into an e-graph (egg), come out differentiated, simplified, and
//! extracted by a cost model that knows what code generation hoists. The e-graph never leaves
//! this module: a [`Formula`] goes in, a [`Formula`] comes out.
//!
//! Phases:
//! 1. Differentiation: only the calculus rules, which push `Grad` one level down each, so this
//!    saturates fast. Then extraction, and a check that no `Grad`/`Diff` is left (otherwise:
//!    "no derivative rule for `Op`" at the `Grad`'s span). `Diff` is first written as the
//!    gradient of a scalar product, see [`forward_mode_as_reverse`].
//! 2. Simplification: algebra and vector identities, under a node, iteration and time budget.
//! 3. Extraction by the hoisting-aware cost ([`cost`]), then re-sharing of common subterms.

pub mod analysis;
pub mod cost;
pub mod rules;

use crate::target::OpPrices;
use analysis::{FormulaAnalysis, FormulaGraph};
use cost::{FormulaCost, PairCost};
use egg::{Extractor, Id, RecExpr, Runner, StopReason};
use keops_front::check::CheckedKernel;
use keops_front::diagnostic::Diagnostic;
use keops_front::formula::{Formula, Node, Op};
use keops_runtime::{ArgSpec, Category, Signature};
use rules::{simplification_rules, RuleSet};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Limits on saturation, so that compile time stays bounded whatever the formula. The result
/// is a function of the formula and the node and iteration limits alone: the same on an idle
/// and on a loaded machine. `time_limit` only stops a runaway, with a diagnostic, never by
/// returning whatever the clock allowed.
#[derive(Clone, Debug)]
pub struct OptBudget {
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
    pub rules: RuleSet,
    /// The operator prices of the target the formula is extracted for
    /// ([`crate::target::Target::prices`]).
    pub prices: &'static OpPrices,
}

impl Default for OptBudget {
    fn default() -> OptBudget {
        OptBudget {
            node_limit: 5_000,
            iter_limit: 8,
            time_limit: RUNAWAY_TIME_LIMIT,
            rules: RuleSet::Default,
            prices: &crate::target::prices::CPU,
        }
    }
}

impl OptBudget {
    /// The default limits, extracting at `target`'s prices.
    pub fn for_target(target: &crate::target::Target) -> OptBudget {
        OptBudget {
            prices: target.prices(),
            ..OptBudget::default()
        }
    }
}

/// Far beyond what the node and iteration limits allow on any machine (simplification takes
/// milliseconds): reached only by a runaway, reported as an error.
pub const RUNAWAY_TIME_LIMIT: Duration = Duration::from_secs(30);

/// The diagnostic of a phase stopped by its clock: the node and iteration limits should stop
/// every phase long before, so this is the optimiser's fault, not the formula's.
fn runaway(phase: &'static str, limit: Duration) -> Diagnostic {
    Diagnostic::internal(
        phase,
        format!(
            "{phase} ran past its {} s limit without reaching its node or iteration limit",
            limit.as_secs_f64()
        ),
    )
}

/// Why saturation stopped, and how big the e-graph grew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseReport {
    /// Why the last round stopped.
    pub stop: String,
    /// Iterations of all rounds together.
    pub iterations: usize,
    /// The largest e-graph of any round.
    pub nodes: usize,
    pub time: Duration,
    /// Rounds of saturation, each on a fresh e-graph (see [`SIMPLIFICATION_ROUNDS`]).
    pub rounds: usize,
}

impl fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.iterations == 0 {
            return f.write_str(&self.stop);
        }
        write!(
            f,
            "{} after {} iteration{}",
            self.stop,
            self.iterations,
            if self.iterations == 1 { "" } else { "s" },
        )?;
        if self.rounds > 1 {
            write!(f, " in {} rounds", self.rounds)?;
        }
        write!(f, ", {} e-nodes", self.nodes)
    }
}

/// A kernel after the middle end.
#[derive(Clone, Debug)]
pub struct OptimizedKernel {
    pub name: String,
    pub signature: Signature,
    /// The formula before simplification, derivatives expanded: what the interpreter runs.
    pub expanded: Formula,
    /// The simplified formula: what code generation compiles.
    pub formula: Formula,
    pub before: FormulaCost,
    pub after: FormulaCost,
    pub differentiation: Option<PhaseReport>,
    pub simplification: PhaseReport,
}

impl fmt::Display for OptimizedKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.formula.to_text(self.formula.root()))?;
        writeln!(f, "cost: {} -> {}", self.before, self.after)?;
        let hoisted = hoisted_parts(&self.formula);
        for (label, parts) in [
            ("per i", &hoisted.i),
            ("per j", &hoisted.j),
            ("per call", &hoisted.none),
        ] {
            for part in parts {
                writeln!(f, "hoisted {label}: {part}")?;
            }
        }
        Ok(())
    }
}

/// The largest subformulas that do not depend on both i and j, used by ones that do: what code
/// generation computes outside the pair loop.
#[derive(Default, Debug)]
pub struct HoistedParts {
    pub i: Vec<String>,
    pub j: Vec<String>,
    pub none: Vec<String>,
}

pub fn hoisted_parts(formula: &Formula) -> HoistedParts {
    let mut parts = HoistedParts::default();
    let mut seen = vec![false; formula.len()];
    let mut consider = |id: Id, parts: &mut HoistedParts| {
        let k = usize::from(id);
        let info = formula.info(id);
        let node = formula.node(id);
        if seen[k] || (info.deps.i && info.deps.j) || node.children.is_empty() {
            return;
        }
        seen[k] = true;
        let text = formula.to_text(id);
        match (info.deps.i, info.deps.j) {
            (true, false) => parts.i.push(text),
            (false, true) => parts.j.push(text),
            _ => parts.none.push(text),
        }
    };
    for (k, node) in formula.nodes.as_ref().iter().enumerate() {
        let info = &formula.info[k];
        if info.deps.i && info.deps.j {
            for &c in &node.children {
                consider(c, &mut parts);
            }
        }
    }
    if !(formula.info(formula.root()).deps.i && formula.info(formula.root()).deps.j) {
        consider(formula.root(), &mut parts);
    }
    parts
}

/// Runs both phases on a checked kernel.
pub fn optimize(kernel: &CheckedKernel, budget: &OptBudget) -> Result<OptimizedKernel, Diagnostic> {
    let (expanded, differentiation) = differentiate(&kernel.formula)?;
    let before = FormulaCost::priced(&expanded, budget.prices);
    let (formula, simplification) = simplify(&expanded, budget);
    if simplification.stop.starts_with("time limit") {
        return Err(runaway("simplification", budget.time_limit));
    }
    let after = FormulaCost::priced(&formula, budget.prices);
    // Extraction never picks a costlier formula than the one it started from; keep the input
    // when rounding of ties would.
    let (formula, after) = if after.per_pair > before.per_pair {
        (expanded.clone(), before)
    } else {
        (formula, after)
    };
    Ok(OptimizedKernel {
        name: kernel.name.clone(),
        signature: kernel.signature.clone(),
        expanded,
        formula,
        before,
        after,
        differentiation,
        simplification,
    })
}

/// Expands every `Grad`/`Diff` of a formula (phase 1 alone): exact rules only, so the result is
/// what the interpreter evaluates. A formula without derivatives comes back unchanged.
pub fn expand_derivatives(formula: &Formula) -> Result<Formula, Diagnostic> {
    differentiate(formula).map(|(f, _)| f)
}

fn has_derivatives(formula: &Formula) -> bool {
    formula
        .nodes
        .as_ref()
        .iter()
        .any(|n| matches!(n.op, Op::Grad | Op::Diff))
}

fn differentiate(formula: &Formula) -> Result<(Formula, Option<PhaseReport>), Diagnostic> {
    if !has_derivatives(formula) {
        return Ok((formula.clone(), None));
    }
    let grad_span = formula
        .nodes
        .as_ref()
        .iter()
        .zip(&formula.info)
        .find(|(n, _)| matches!(n.op, Op::Grad | Op::Diff))
        .and_then(|(_, info)| info.span.clone())
        .unwrap_or(0..0);
    let reverse = forward_mode_as_reverse(formula);
    let start = Instant::now();
    let mut egraph = FormulaGraph::new(FormulaAnalysis {
        vars: reverse.vars.clone(),
    });
    let root = egraph.add_expr(&reverse.nodes);
    let calculus_rules = rules::differentiation_rules();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(1_000)
        .with_node_limit(200_000)
        .with_time_limit(RUNAWAY_TIME_LIMIT)
        .run(calculus_rules);
    let report = phase_report(&runner, start);
    if matches!(runner.stop_reason, Some(StopReason::TimeLimit(_))) {
        return Err(runaway("differentiation", RUNAWAY_TIME_LIMIT));
    }
    let root = runner.egraph.find(root);
    // Expansion is the same for every target (the interpreter evaluates its result).
    let cost = PairCost::new(&runner.egraph, &crate::target::prices::CPU);
    let (_, best) = Extractor::new(&runner.egraph, cost).find_best(root);
    if best.as_ref().iter().any(|n| n.op == Op::Grad) {
        // Every operator has a derivative rule, so only the budget can leave a gradient.
        return Err(Diagnostic::error(
            format!("differentiation did not finish ({})", report.stop),
            grad_span,
            "in this derivative",
        )
        .with_note("the formula's derivative grew past the differentiation budget"));
    }
    let mut expanded = from_recexpr(&best, reverse.vars.clone());
    let temporaries = formula.vars.len();
    if expanded
        .nodes
        .as_ref()
        .iter()
        .any(|n| matches!(n.op, Op::Var(k) if k as usize >= temporaries))
    {
        return Err(Diagnostic::internal(
            "differentiation",
            "a forward-mode derivative kept its placeholder",
        ));
    }
    expanded.vars.truncate(temporaries);
    Ok((expanded, Some(report)))
}

/// `Diff(f, v, u)` (the Jacobian-vector product J u) becomes `Grad(Sum(Grad(f, v, w) * u), w, 1)`
/// with a fresh placeholder `w` of f's dimension: `Grad(f, v, w) = Jᵀw` is linear in w, so the
/// gradient of `<Jᵀw, u>` with respect to w is `J u`, and w disappears. This is KeOps's own
/// construction (the adjoint of the reverse-mode map), done with the reverse-mode rules.
fn forward_mode_as_reverse(formula: &Formula) -> Formula {
    let mut vars = formula.vars.clone();
    let diffs = formula
        .nodes
        .as_ref()
        .iter()
        .filter(|n| n.op == Op::Diff)
        .count();
    for k in 0..diffs {
        vars.push(ArgSpec {
            name: format!("%w{k}"),
            category: Category::Param,
            dim: 0,
        });
    }
    let mut out = Formula::new(vars);
    let mut map: Vec<Id> = Vec::with_capacity(formula.len());
    let mut next_placeholder = formula.vars.len();
    for (k, node) in formula.nodes.as_ref().iter().enumerate() {
        let span = formula.info[k].span.clone();
        let children: Vec<Id> = node.children.iter().map(|&c| map[usize::from(c)]).collect();
        let id = if node.op == Op::Diff {
            let (f, v, u) = (children[0], children[1], children[2]);
            out.vars[next_placeholder].dim = out.info(f).dim;
            let w = push(&mut out, Op::Var(next_placeholder as u32), vec![]);
            next_placeholder += 1;
            let g = push(&mut out, Op::Grad, vec![f, v, w]);
            let gu = push(&mut out, Op::Mul, vec![g, u]);
            let s = push(&mut out, Op::Sum, vec![gu]);
            let one = push(&mut out, Op::IntCst(1), vec![]);
            let id = push(&mut out, Op::Grad, vec![s, w, one]);
            out.info[usize::from(id)].span = span;
            id
        } else {
            out.push(Node::new(node.op.clone(), children), span)
                .expect("the checked formula is well typed")
        };
        map.push(id);
    }
    out
}

fn push(formula: &mut Formula, op: Op, children: Vec<Id>) -> Id {
    formula
        .push(Node::new(op, children), None)
        .expect("a well-typed construction")
}

fn simplify(formula: &Formula, budget: &OptBudget) -> (Formula, PhaseReport) {
    let start = Instant::now();
    if formula.len() >= budget.node_limit {
        // No room to saturate, and extraction over a graph this size costs more than it can
        // save: keep the formula as it is.
        let report = PhaseReport {
            stop: format!("skipped: {} nodes, over the node limit", formula.len()),
            iterations: 0,
            nodes: formula.len(),
            time: start.elapsed(),
            rounds: 0,
        };
        return (formula.clone(), report);
    }
    let mut current = formula.clone();
    let mut current_cost = cost_key(&current, budget.prices);
    let mut report = PhaseReport {
        stop: String::new(),
        iterations: 0,
        nodes: 0,
        time: start.elapsed(),
        rounds: 0,
    };
    let mut rounds = 0;
    while rounds < SIMPLIFICATION_ROUNDS {
        rounds += 1;
        let mut egraph = FormulaGraph::new(FormulaAnalysis {
            vars: current.vars.clone(),
        });
        let root = egraph.add_expr(&current.nodes);
        let runner = Runner::default()
            .with_egraph(egraph)
            .with_iter_limit(budget.iter_limit)
            .with_node_limit(budget.node_limit)
            // The time limit bounds all rounds together.
            .with_time_limit(budget.time_limit.saturating_sub(start.elapsed()))
            .run(simplification_rules(budget.rules));
        let root = runner.egraph.find(root);
        let (_, best) =
            Extractor::new(&runner.egraph, PairCost::new(&runner.egraph, budget.prices))
                .find_best(root);
        let round = phase_report(&runner, start);
        report.stop = round.stop;
        report.iterations += round.iterations;
        report.nodes = report.nodes.max(round.nodes);
        if matches!(runner.stop_reason, Some(StopReason::TimeLimit(_))) {
            // A runaway: reported as such by `optimize`, whatever a later round would do.
            break;
        }
        let extracted = from_recexpr(&best, current.vars.clone());
        let extracted_cost = cost_key(&extracted, budget.prices);
        let improved = extracted_cost < current_cost;
        if improved || rounds == 1 {
            current = extracted;
            current_cost = extracted_cost;
        }
        let saturated = matches!(runner.stop_reason, Some(StopReason::Saturated));
        if saturated || !improved {
            break;
        }
    }
    report.rounds = rounds;
    report.time = start.elapsed();
    (current, report)
}

/// At most this many rounds of saturation. A round that stops on a limit extracts a formula far
/// smaller than its e-graph; a fresh e-graph on that formula has room for the rewrites the first
/// one never reached (the constants and powers of a parameter gradient, `s * 4 / Square(2 *
/// Square(s))` -> `Inv(Pow(s, 3))`). Rounds go on while the extracted formula gets cheaper.
pub const SIMPLIFICATION_ROUNDS: usize = 3;

/// What a round must lower to count as progress: the work per pair, then the hoisted work, then
/// the size of the formula.
fn cost_key(formula: &Formula, prices: &OpPrices) -> (u64, u64, usize) {
    let cost = FormulaCost::priced(formula, prices);
    (cost.per_pair, cost.hoisted, formula.len())
}

fn phase_report(runner: &Runner<Node, FormulaAnalysis>, start: Instant) -> PhaseReport {
    let stop = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".to_string(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(StopReason::TimeLimit(t)) => format!("time limit ({t:.3} s)"),
        Some(StopReason::Other(s)) => s.clone(),
        None => "not run".to_string(),
    };
    PhaseReport {
        stop,
        iterations: runner.iterations.len(),
        nodes: runner.egraph.total_number_of_nodes(),
        time: start.elapsed(),
        rounds: 1,
    }
}

/// An extracted expression back to a formula, sharing equal subterms (the greedy extractor
/// pays for a shared term at each use; code generation computes it once).
pub fn from_recexpr(expr: &RecExpr<Node>, vars: Vec<ArgSpec>) -> Formula {
    let mut out = Formula::new(vars);
    let mut shared: HashMap<Node, Id> = HashMap::new();
    let mut map: Vec<Id> = Vec::with_capacity(expr.as_ref().len());
    for node in expr.as_ref() {
        let mapped = Node::new(
            node.op.clone(),
            node.children.iter().map(|&c| map[usize::from(c)]).collect(),
        );
        let id = match shared.get(&mapped) {
            Some(&id) => id,
            None => {
                let id = out.push(mapped.clone(), None).unwrap_or_else(|e| {
                    panic!(
                        "rewriting produced an ill-typed `{}`: {e}",
                        mapped.op.name()
                    )
                });
                shared.insert(mapped, id);
                id
            }
        };
        map.push(id);
    }
    // The root is the last node of `expr`; shared nodes may have made it appear earlier.
    let root = *map.last().expect("a non-empty expression");
    out.extract(root)
}
