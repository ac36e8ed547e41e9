//! Rewrite rules, by family. Each family is a table of rules with a name, whether it is exact
//! in floating point, and whether it runs by default; each family has "this becomes that" tests.

pub mod algebra;
pub mod calculus;
pub mod vector;

use super::analysis::{FormulaAnalysis, FormulaGraph};
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use keops_front::formula::Node;
use std::sync::OnceLock;

pub type FormulaRewrite = Rewrite<Node, FormulaAnalysis>;

/// Flags of the rule tables, so that a row reads as what it says.
pub(crate) const EXACT: bool = true;
pub(crate) const INEXACT: bool = false;
pub(crate) const ON: bool = true;
pub(crate) const OFF: bool = false;

/// A rule with its properties, as lang-spec lists it.
pub struct RuleInfo {
    pub rewrite: FormulaRewrite,
    /// Exact in floating point: same result on every input, up to the rounding of a reordered
    /// expression at most one ulp-level apart, and the same NaN/inf behaviour.
    pub exact: bool,
    /// Runs unless the user asks for exact rules only.
    pub default: bool,
}

/// A rule as lang-spec lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDescription {
    pub name: String,
    pub family: &'static str,
    pub exact: bool,
    pub default: bool,
}

/// Every rule of every family, for the documentation and its tests.
pub fn catalog() -> Vec<RuleDescription> {
    let families = [
        ("calculus", calculus::rules()),
        ("algebra", algebra::rules()),
        ("vector", vector::rules()),
    ];
    families
        .into_iter()
        .flat_map(|(family, rules)| {
            rules.into_iter().map(move |r| RuleDescription {
                name: r.rewrite.name.to_string(),
                family,
                exact: r.exact,
                default: r.default,
            })
        })
        .collect()
}

/// Which rules the simplifier may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSet {
    /// Only rules that never change a result beyond reassociation rounding.
    Exact,
    /// The default: exact rules plus the inexact ones KeOps itself applies (zero absorption,
    /// `f - f = 0`, `Exp(a) * Exp(b) = Exp(a + b)`, reassociation and factoring) and their kin.
    Default,
    /// Every rule, including those that are wrong on part of the domain (`Exp(Log(a)) = a`)
    /// or cancel badly: for inputs known to stay where they hold.
    All,
}

/// The simplification rules of a rule set (calculus runs in its own phase). Built once: parsing
/// and compiling the patterns costs more than simplifying a typical formula.
pub fn simplification_rules(set: RuleSet) -> &'static [FormulaRewrite] {
    static SETS: [OnceLock<Vec<FormulaRewrite>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let keep = move |r: &RuleInfo| match set {
        RuleSet::Exact => r.exact && r.default,
        RuleSet::Default => r.default,
        RuleSet::All => true,
    };
    SETS[set as usize].get_or_init(|| {
        let mut all = algebra::rules();
        all.extend(vector::rules());
        all.into_iter().filter(keep).map(|r| r.rewrite).collect()
    })
}

/// The differentiation phase's rules: calculus, and the neutral elements it leaves behind.
pub fn differentiation_rules() -> &'static [FormulaRewrite] {
    static RULES: OnceLock<Vec<FormulaRewrite>> = OnceLock::new();
    RULES.get_or_init(|| {
        calculus::rules()
            .into_iter()
            .chain(algebra::neutral_rules())
            .chain(vector::broadcast_rules())
            .map(|r| r.rewrite)
            .collect()
    })
}

pub(crate) fn var(name: &str) -> Var {
    name.parse().expect("a pattern variable")
}

pub(crate) fn pattern(text: &str) -> Pattern<Node> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad pattern `{text}`: {e:?}"))
}

/// A rewrite from pattern text to pattern text, guarded by a condition on the match.
pub(crate) fn guarded(
    name: &str,
    lhs: &str,
    rhs: &str,
    condition: impl Fn(&FormulaGraph, &Subst) -> bool + Send + Sync + 'static,
) -> FormulaRewrite {
    Rewrite::new(
        name,
        pattern(lhs),
        egg::ConditionalApplier {
            condition: move |eg: &mut FormulaGraph, _: Id, s: &Subst| condition(eg, s),
            applier: pattern(rhs),
        },
    )
    .unwrap_or_else(|e| panic!("bad rule `{name}`: {e}"))
}

pub(crate) fn plain(name: &str, lhs: &str, rhs: &str) -> FormulaRewrite {
    Rewrite::new(name, pattern(lhs), pattern(rhs))
        .unwrap_or_else(|e| panic!("bad rule `{name}`: {e}"))
}

pub(crate) fn info(rewrite: FormulaRewrite, exact: bool, default: bool) -> RuleInfo {
    RuleInfo {
        rewrite,
        exact,
        default,
    }
}

pub(crate) fn dim(eg: &FormulaGraph, s: &Subst, v: &str) -> usize {
    eg[s[var(v)]].data.dim
}

/// Builds a rule's right-hand side in Rust, for operators with integer parameters
/// (`Pow(f, m)`, `Extract(f, s, l)`) and dimension-dependent results. Returns the new term's
/// class, or `None` when the rule does not apply to this match.
pub(crate) type Build = fn(&mut FormulaGraph, &Subst) -> Option<Id>;

pub(crate) fn dynamic(name: &str, lhs: &str, build: Build) -> FormulaRewrite {
    Rewrite::new(name, pattern(lhs), DynamicApplier(build))
        .unwrap_or_else(|e| panic!("bad rule `{name}`: {e}"))
}

/// A dynamic rule on the classes holding an operator with parameters (patterns cannot match
/// `Elem(f, m)` for any m): `?c` is bound to each class with an e-node that `wanted` accepts.
pub(crate) fn dynamic_on(
    name: &str,
    wanted: fn(&keops_front::formula::Op) -> bool,
    build: Build,
) -> FormulaRewrite {
    Rewrite::new(name, OpSearcher(wanted), DynamicApplier(build))
        .unwrap_or_else(|e| panic!("bad rule `{name}`: {e}"))
}

pub(crate) struct OpSearcher(fn(&keops_front::formula::Op) -> bool);

impl egg::Searcher<Node, FormulaAnalysis> for OpSearcher {
    fn search_eclass_with_limit(
        &self,
        egraph: &FormulaGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<egg::SearchMatches<'_, Node>> {
        if limit == 0 || !egraph[eclass].nodes.iter().any(|n| (self.0)(&n.op)) {
            return None;
        }
        let mut subst = Subst::default();
        subst.insert(var("?c"), eclass);
        Some(egg::SearchMatches {
            eclass,
            substs: vec![subst],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![var("?c")]
    }
}

pub(crate) struct DynamicApplier(pub Build);

impl Applier<Node, FormulaAnalysis> for DynamicApplier {
    fn apply_one(
        &self,
        egraph: &mut FormulaGraph,
        eclass: Id,
        subst: &Subst,
        _searcher_ast: Option<&PatternAst<Node>>,
        _rule_name: Symbol,
    ) -> Vec<Id> {
        let Some(id) = (self.0)(egraph, subst) else {
            return vec![];
        };
        if egraph.union(eclass, id) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// Adds the term `text` (pattern syntax; `?x` bound by `subst`) and returns its class.
pub(crate) fn inst(egraph: &mut FormulaGraph, subst: &Subst, text: &str) -> Id {
    let ast: PatternAst<Node> = text
        .parse()
        .unwrap_or_else(|e| panic!("bad pattern `{text}`: {e:?}"));
    egraph.add_instantiation(&ast, subst)
}

/// `subst` with more variables bound, for terms built from a node's children.
pub(crate) fn bind(subst: &Subst, extra: &[(&str, Id)]) -> Subst {
    let mut s = subst.clone();
    for (name, id) in extra {
        s.insert(var(name), *id);
    }
    s
}

/// Runs `rules` on the formula `text` (s-expression over `var:k`) and returns the cheapest
/// equivalent as an s-expression: the "this becomes that" of the family tests.
#[cfg(test)]
pub(crate) fn rewrite_text(
    vars: &[keops_runtime::ArgSpec],
    text: &str,
    rules: &[FormulaRewrite],
) -> String {
    let expr: egg::RecExpr<Node> = text.parse().expect("test expression");
    let mut egraph = FormulaGraph::new(FormulaAnalysis {
        vars: vars.to_vec(),
    });
    let root = egraph.add_expr(&expr);
    let runner = egg::Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(20)
        .with_node_limit(20_000)
        .run(rules);
    let cost = super::cost::PairCost::new(&runner.egraph, &crate::target::prices::CPU);
    let (_, best) = egg::Extractor::new(&runner.egraph, cost).find_best(runner.egraph.find(root));
    best.to_string()
}

/// Variables for family tests: var:0 = x = Vi(3), var:1 = y = Vj(3), var:2 = b = Vj(1),
/// var:3 = s = Pm(1), var:4 = t = Vi(1).
#[cfg(test)]
pub(crate) fn test_vars() -> Vec<keops_runtime::ArgSpec> {
    use keops_runtime::{ArgSpec, Category};
    let v = |name: &str, category, dim| ArgSpec {
        name: name.into(),
        category,
        dim,
    };
    vec![
        v("x", Category::I, 3),
        v("y", Category::J, 3),
        v("b", Category::J, 1),
        v("s", Category::Param, 1),
        v("t", Category::I, 1),
    ]
}
