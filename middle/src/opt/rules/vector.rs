//! Vector identities: SqDist, SqNorm2, Scalprod and Sum; Sum and Elem of Concat; Extract of
//! Extract; scalar factors out of sums; broadcast normal forms.

use super::{
    dim, dynamic, dynamic_on, guarded, info, inst, plain, RuleInfo, EXACT, INEXACT, OFF, ON,
};
use crate::opt::analysis::FormulaGraph;
use egg::Subst;
use keops_front::formula::Op;

/// SqDist and Scalprod take operands of one dimension; a broadcast difference or product does
/// not fold into them.
fn same_dims(eg: &crate::opt::analysis::FormulaGraph, s: &egg::Subst) -> bool {
    dim(eg, s, "?a") == dim(eg, s, "?b")
}

/// Broadcast normal form: a scalar broadcast by `SumT` inside a product broadcasts by itself.
/// Exact; the differentiation phase runs them too, as the chain rule broadcasts scalar inputs.
pub fn broadcast_rules() -> Vec<RuleInfo> {
    let drop_sumt = |eg: &mut FormulaGraph, s: &Subst| {
        let t = s[super::var("?t")];
        let da = dim(eg, s, "?a");
        let inner = eg[t].nodes.iter().find_map(|n| match n.op {
            Op::SumT(d) if d == da => Some(n.children[0]),
            _ => None,
        })?;
        Some(inst(eg, &super::bind(s, &[("?x", inner)]), "(* ?a ?x)"))
    };
    vec![
        info(dynamic("mul-sumt", "(* ?a ?t)", drop_sumt), true, true),
        info(dynamic("sumt-mul", "(* ?t ?a)", drop_sumt), true, true),
    ]
}

/// The rules that are one pattern for another: (name, this, becomes that, exact, default).
#[rustfmt::skip]
const PLAIN: &[(&str, &str, &str, bool, bool)] = &[
    // Definitions, both ways: exact except for summation order.
    ("sqdist-def", "(sqdist ?a ?b)", "(sqnorm2 (- ?a ?b))", EXACT, ON),
    ("sqnorm2-self", "(scalprod ?a ?a)", "(sqnorm2 ?a)", EXACT, ON),
    ("sqnorm2-square", "(sum (square ?a))", "(sqnorm2 ?a)", EXACT, ON),
    ("scalprod-comm", "(scalprod ?a ?b)", "(scalprod ?b ?a)", EXACT, ON),
    ("sqdist-comm", "(sqdist ?a ?b)", "(sqdist ?b ?a)", EXACT, ON),
    ("norm2-def", "(sqrt (sqnorm2 ?a))", "(norm2 ?a)", EXACT, ON),
    ("square-norm2", "(square (norm2 ?a))", "(sqnorm2 ?a)", INEXACT, ON),
    ("normalize-def", "(* (rsqrt (sqnorm2 ?a)) ?a)", "(normalize ?a)", EXACT, ON),
    // |x - y|^2 = |x|^2 + |y|^2 - 2<x, y>: cheaper per pair once the norms are hoisted, but
    // it cancels catastrophically for close points, so it does not run by default.
    ("sqdist-expand", "(sqdist ?a ?b)", "(- (+ (sqnorm2 ?a) (sqnorm2 ?b)) (* int:2 (scalprod ?a ?b)))", INEXACT, OFF),
    ("sum-concat", "(sum (concat ?a ?b))", "(+ (sum ?a) (sum ?b))", INEXACT, ON),
    ("sqnorm2-concat", "(sqnorm2 (concat ?a ?b))", "(+ (sqnorm2 ?a) (sqnorm2 ?b))", INEXACT, ON),
];

pub fn rules() -> Vec<RuleInfo> {
    let mut rules = broadcast_rules();
    rules.extend([
        info(
            guarded(
                "sqdist-fold",
                "(sqnorm2 (- ?a ?b))",
                "(sqdist ?a ?b)",
                same_dims,
            ),
            true,
            true,
        ),
        info(
            guarded(
                "scalprod-sum",
                "(sum (* ?a ?b))",
                "(scalprod ?a ?b)",
                same_dims,
            ),
            true,
            true,
        ),
        // <a, b> + <a, c> = <a, b + c>: one scalar product per pair when b + c is hoisted.
        info(
            guarded(
                "scalprod-factor",
                "(+ (scalprod ?a ?b) (scalprod ?a ?c))",
                "(scalprod ?a (+ ?b ?c))",
                |eg, s| dim(eg, s, "?b") == dim(eg, s, "?c"),
            ),
            false,
            true,
        ),
        // Sums of a scalar, and of a broadcast scalar.
        info(
            guarded("sum-scalar", "(sum ?a)", "?a", |eg, s| {
                dim(eg, s, "?a") == 1
            }),
            true,
            true,
        ),
        // Sum(SumT(a, n)) = n a: one rounding instead of n - 1.
        info(
            dynamic_on(
                "sum-sumt",
                |op| *op == Op::Sum,
                |eg, s| {
                    let c = s[super::var("?c")];
                    let sumt = eg[c]
                        .nodes
                        .iter()
                        .find(|n| n.op == Op::Sum)
                        .map(|n| n.children[0])?;
                    let (n, a) = eg[sumt].nodes.iter().find_map(|n| match n.op {
                        Op::SumT(d) => Some((d, n.children[0])),
                        _ => None,
                    })?;
                    Some(inst(
                        eg,
                        &super::bind(s, &[("?a", a)]),
                        &format!("(* int:{n} ?a)"),
                    ))
                },
            ),
            false,
            true,
        ),
        info(
            guarded(
                "sum-scalar-factor",
                "(sum (* ?s ?a))",
                "(* ?s (sum ?a))",
                |eg, s| dim(eg, s, "?s") == 1 && dim(eg, s, "?a") > 1,
            ),
            false,
            true,
        ),
        info(
            guarded(
                "scalprod-scalar-factor",
                "(scalprod (* ?s ?a) ?b)",
                "(* ?s (scalprod ?a ?b))",
                |eg, s| dim(eg, s, "?s") == 1 && dim(eg, s, "?a") > 1,
            ),
            false,
            true,
        ),
        // Elem and Extract of known layouts.
        info(
            dynamic_on(
                "elem-extract-of-parts",
                |op| matches!(op, Op::Elem(_) | Op::Extract(..)),
                elem_or_extract_of_concat,
            ),
            true,
            true,
        ),
    ]);
    rules.extend(
        PLAIN
            .iter()
            .map(|&(name, lhs, rhs, exact, default)| info(plain(name, lhs, rhs), exact, default)),
    );
    rules
}

/// `Elem(Concat(a, b), m)` is an element of a or of b; `Extract(Extract(a, s1, l1), s2, l2)`
/// is `Extract(a, s1 + s2, l2)`; `Extract(Concat(a, b), ...)` inside one part is an Extract
/// of that part.
fn elem_or_extract_of_concat(
    eg: &mut crate::opt::analysis::FormulaGraph,
    s: &egg::Subst,
) -> Option<egg::Id> {
    let c = s[super::var("?c")];
    let nodes = eg[c].nodes.clone();
    for node in nodes {
        let Some(&inner) = node.children.first() else {
            continue;
        };
        let inner_nodes = eg[inner].nodes.clone();
        for inner_node in inner_nodes {
            let built = match (&node.op, &inner_node.op) {
                (Op::Elem(m), Op::Concat) => {
                    let (a, b) = (inner_node.children[0], inner_node.children[1]);
                    let na = eg[a].data.dim;
                    if *m < na {
                        Some((format!("(elem:{m} ?p)"), a))
                    } else {
                        Some((format!("(elem:{} ?p)", m - na), b))
                    }
                }
                (Op::Extract(s2, l2), Op::Extract(s1, _)) => Some((
                    format!("(extract:{}:{l2} ?p)", s1 + s2),
                    inner_node.children[0],
                )),
                (Op::Extract(start, len), Op::Concat) => {
                    let (a, b) = (inner_node.children[0], inner_node.children[1]);
                    let na = eg[a].data.dim;
                    if start + len <= na {
                        Some((format!("(extract:{start}:{len} ?p)"), a))
                    } else if *start >= na {
                        Some((format!("(extract:{}:{len} ?p)", start - na), b))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some((text, part)) = built {
                let id = inst(eg, &super::bind(s, &[("?p", part)]), &text);
                if eg.find(id) != eg.find(c) {
                    return Some(id);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{rewrite_text, test_vars};
    use super::*;

    fn simplify(text: &str) -> String {
        let mut rules: Vec<_> = rules().into_iter().map(|r| r.rewrite).collect();
        rules.extend(
            super::super::algebra::rules()
                .into_iter()
                .filter(|r| r.default)
                .map(|r| r.rewrite),
        );
        rewrite_text(&test_vars(), text, &rules)
    }

    #[test]
    fn vector_identities() {
        let out = simplify("(sqnorm2 (- var:0 var:1))");
        assert!(
            out == "(sqdist var:0 var:1)" || out == "(sqdist var:1 var:0)",
            "{out}"
        );
        let out = simplify("(sum (* var:0 var:1))");
        assert!(out.starts_with("(scalprod"), "{out}");
        assert_eq!(simplify("(sum var:4)"), "var:4");
    }

    #[test]
    fn concat_and_extract() {
        assert_eq!(simplify("(elem:1 (concat var:0 var:1))"), "(elem:1 var:0)");
        assert_eq!(simplify("(elem:4 (concat var:0 var:1))"), "(elem:1 var:1)");
        assert_eq!(
            simplify("(extract:1:1 (extract:1:2 var:0))"),
            "(extract:2:1 var:0)"
        );
        assert_eq!(
            simplify("(extract:3:2 (concat var:0 var:1))"),
            "(extract:0:2 var:1)"
        );
        let out = simplify("(sum (concat var:0 var:1))");
        assert!(
            out.contains("(sum var:0)") && out.contains("(sum var:1)"),
            "{out}"
        );
    }

    #[test]
    fn broadcast_normal_form() {
        assert_eq!(simplify("(* var:0 (sumt:3 var:3))"), "(* var:0 var:3)");
    }
}
