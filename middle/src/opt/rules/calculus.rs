//! Symbolic differentiation by rewriting. `(grad f v e)` is the vector-Jacobian product
//! (KeOps's `Grad(f, v, e)`: e has f's dimension, or is a scalar standing for that many copies;
//! the result has v's dimension). Each rule pushes `grad` one level down into `f`, so the
//! calculus phase saturates quickly; an `f` whose operator has no rule keeps its `grad`, and the
//! optimiser reports it by name.
//!
//! `Diff(f, v, u)` (forward mode) is turned into reverse mode before these rules run: see
//! `opt::derivative`.

use super::{bind, dim, dynamic, guarded, info, inst, FormulaRewrite, RuleInfo};
use crate::opt::analysis::FormulaGraph;
use egg::{Id, Subst};
use keops_front::formula::{Node, Op};

/// The calculus rules: all exact (they state the derivative's definition), all run.
///
/// Two normal forms come first: the gradient input `e` is given f's full dimension (a scalar
/// e stands for that many copies: `SumT`), and a scalar f with a vector e (a broadcast f) sums
/// e. Every rule that pushes `grad` into `f` then requires both: e of f's dimension, and f
/// depending on v (an independent f is zero, and pushing into it could go on forever around a
/// cycle of equal classes). So each gradient has exactly one expansion.
pub fn rules() -> Vec<RuleInfo> {
    let mut rules: Vec<FormulaRewrite> = vec![
        dynamic("grad-independent", "(grad ?f ?v ?e)", grad_independent),
        dynamic("grad-var", "(grad ?v ?v ?e)", grad_var),
        guarded(
            "grad-scalar-of-vector-gradin",
            "(grad ?f ?v ?e)",
            "(grad ?f ?v (sum ?e))",
            |eg, s| dim(eg, s, "?f") == 1 && dim(eg, s, "?e") > 1,
        ),
        dynamic("grad-broadcast-gradin", "(grad ?f ?v ?e)", |eg, s| {
            let df = dim(eg, s, "?f");
            (df > 1 && dim(eg, s, "?e") == 1)
                .then(|| inst(eg, s, &format!("(grad ?f ?v (sumt:{df} ?e))")))
        }),
        dynamic("grad-parametric", "(grad ?f ?v ?e)", grad_parametric),
    ];
    for &(name, f, rhs) in CHAIN_RULES.iter().chain(OPERAND_RULES) {
        rules.push(push_down(name, f, rhs));
    }
    rules.push(dynamic(
        "grad-weightedsqnorm",
        "(grad (weightedsqnorm ?s ?a) ?v ?e)",
        |eg, s| {
            if !pushes(eg, s, &Op::WeightedSqNorm, &["?s", "?a"]) {
                return None;
            }
            let (ds, da) = (dim(eg, s, "?s"), dim(eg, s, "?a"));
            let f = if ds == 1 {
                "(sqnormiso ?s ?a)"
            } else if ds == da {
                "(sqnormdiag ?s ?a)"
            } else {
                "(symsqnorm ?s ?a)"
            };
            Some(inst(eg, s, &format!("(grad {f} ?v ?e)")))
        },
    ));
    rules.push(dynamic(
        "grad-concat",
        "(grad (concat ?a ?b) ?v ?e)",
        |eg, s| {
            if !pushes(eg, s, &Op::Concat, &["?a", "?b"]) {
                return None;
            }
            let (da, db) = (dim(eg, s, "?a"), dim(eg, s, "?b"));
            Some(inst(
                eg,
                s,
                &format!(
                    "(+ (grad ?a ?v (extract:0:{da} ?e)) (grad ?b ?v (extract:{da}:{db} ?e)))"
                ),
            ))
        },
    ));
    rules.into_iter().map(|r| info(r, true, true)).collect()
}

/// Element-wise operators: the chain rule with the operator's derivative. (name, f, the
/// gradient input of f's operand `?a`.)
#[rustfmt::skip]
const CHAIN_RULES: &[(&str, &str, &str)] = &[
    ("grad-neg", "(- ?a)", "(grad ?a ?v (- ?e))"),
    ("grad-exp", "(exp ?a)", "(grad ?a ?v (* ?e (exp ?a)))"),
    ("grad-log", "(log ?a)", "(grad ?a ?v (/ ?e ?a))"),
    ("grad-sqrt", "(sqrt ?a)", "(grad ?a ?v (* ?e (* 0.5 (rsqrt ?a))))"),
    ("grad-rsqrt", "(rsqrt ?a)", "(grad ?a ?v (* ?e (* -0.5 (pow:3 (rsqrt ?a)))))"),
    ("grad-square", "(square ?a)", "(grad ?a ?v (* ?e (* int:2 ?a)))"),
    ("grad-inv", "(inv ?a)", "(grad ?a ?v (* ?e (- (square (inv ?a)))))"),
    ("grad-abs", "(abs ?a)", "(grad ?a ?v (* ?e (sign ?a)))"),
    ("grad-relu", "(relu ?a)", "(grad ?a ?v (* ?e (step ?a)))"),
    ("grad-sin", "(sin ?a)", "(grad ?a ?v (* ?e (cos ?a)))"),
    ("grad-cos", "(cos ?a)", "(grad ?a ?v (* ?e (- (sin ?a))))"),
    ("grad-asin", "(asin ?a)", "(grad ?a ?v (* ?e (rsqrt (- int:1 (square ?a)))))"),
    ("grad-acos", "(acos ?a)", "(grad ?a ?v (* ?e (- (rsqrt (- int:1 (square ?a))))))"),
    ("grad-atan", "(atan ?a)", "(grad ?a ?v (* ?e (inv (+ int:1 (square ?a)))))"),
    ("grad-xlogx", "(xlogx ?a)", "(grad ?a ?v (* ?e (+ (log ?a) int:1)))"),
    ("grad-sinxdivx", "(sinxdivx ?a)", "(grad ?a ?v (* ?e (- (/ (cos ?a) ?a) (/ (sin ?a) (square ?a)))))"),
];

/// Operators with several operands, and vector operators without parameters. A dimension-1
/// operand of a broadcast receives a vector gradient input, which its own rules sum.
#[rustfmt::skip]
const OPERAND_RULES: &[(&str, &str, &str)] = &[
    ("grad-add", "(+ ?a ?b)", "(+ (grad ?a ?v ?e) (grad ?b ?v ?e))"),
    ("grad-sub", "(- ?a ?b)", "(- (grad ?a ?v ?e) (grad ?b ?v ?e))"),
    ("grad-mul", "(* ?a ?b)", "(+ (grad ?a ?v (* ?e ?b)) (grad ?b ?v (* ?e ?a)))"),
    ("grad-div", "(/ ?a ?b)", "(- (grad ?a ?v (/ ?e ?b)) (grad ?b ?v (/ (* ?e ?a) (square ?b))))"),
    ("grad-powf", "(powf ?a ?b)", "(+ (grad ?a ?v (* ?e (* ?b (powf ?a (- ?b int:1))))) (grad ?b ?v (* ?e (* (log ?a) (powf ?a ?b)))))"),
    ("grad-atan2", "(atan2 ?a ?b)", "(+ (grad ?a ?v (* ?e (/ ?b (+ (square ?a) (square ?b))))) (grad ?b ?v (* ?e (- (/ ?a (+ (square ?a) (square ?b)))))))"),
    ("grad-clamp", "(clamp ?f ?a ?b)", "(+ (grad ?f ?v (* ?e (* (le ?a ?f) (le ?f ?b)))) (+ (grad ?a ?v (* ?e (lt ?f ?a))) (grad ?b ?v (* ?e (* (le ?a ?f) (lt ?b ?f))))))"),
    ("grad-ifelse", "(ifelse ?f ?a ?b)", "(+ (grad ?a ?v (* ?e (ifelse ?f int:1 zero:1))) (grad ?b ?v (* ?e (ifelse ?f zero:1 int:1))))"),
    ("grad-mod", "(mod ?x ?n ?d)", "(+ (grad ?x ?v ?e) (grad ?n ?v (* ?e (- (floor (/ (- ?x ?d) ?n))))))"),
    ("grad-sum", "(sum ?a)", "(grad ?a ?v ?e)"),
    ("grad-sqnorm2", "(sqnorm2 ?a)", "(grad ?a ?v (* ?e (* int:2 ?a)))"),
    ("grad-norm2", "(norm2 ?a)", "(grad ?a ?v (* ?e (* (rsqrt (sqnorm2 ?a)) ?a)))"),
    ("grad-normalize", "(normalize ?a)", "(grad (* (rsqrt (sqnorm2 ?a)) ?a) ?v ?e)"),
    ("grad-sqdist", "(sqdist ?a ?b)", "(grad (sqnorm2 (- ?a ?b)) ?v ?e)"),
    ("grad-scalprod", "(scalprod ?a ?b)", "(+ (grad ?a ?v (* ?e ?b)) (grad ?b ?v (* ?e ?a)))"),
    ("grad-matvecmult", "(matvecmult ?a ?b)", "(+ (grad ?a ?v (tensorprod ?e ?b)) (grad ?b ?v (vecmatmult ?e ?a)))"),
    ("grad-vecmatmult", "(vecmatmult ?b ?a)", "(+ (grad ?b ?v (matvecmult ?a ?e)) (grad ?a ?v (tensorprod ?b ?e)))"),
    ("grad-tensorprod", "(tensorprod ?a ?b)", "(+ (grad ?a ?v (matvecmult ?e ?b)) (grad ?b ?v (vecmatmult ?a ?e)))"),
    ("grad-sqnormiso", "(sqnormiso ?s ?a)", "(grad (* ?s (sqnorm2 ?a)) ?v ?e)"),
    ("grad-sqnormdiag", "(sqnormdiag ?s ?a)", "(grad (sum (* ?s (square ?a))) ?v ?e)"),
    ("grad-symsqnorm", "(symsqnorm ?s ?a)", "(grad (scalprod ?s (tensorprod ?a ?a)) ?v ?e)"),
    ("grad-weightedsqdist", "(weightedsqdist ?s ?a ?b)", "(grad (weightedsqnorm ?s (- ?a ?b)) ?v ?e)"),
];

/// `(grad f ?v ?e) => rhs`, where f is one operator over pattern variables, guarded by
/// [`pushes`].
fn push_down(name: &str, f: &str, rhs: &str) -> FormulaRewrite {
    let inner = f.trim_start_matches('(').trim_end_matches(')');
    let mut words = inner.split_whitespace();
    let head = words.next().expect("an operator");
    let operands: Vec<String> = words.map(str::to_string).collect();
    let op = Op::from_sexpr(head, operands.len())
        .unwrap_or_else(|| panic!("rule `{name}`: no operator `{head}`"));
    guarded(name, &format!("(grad {f} ?v ?e)"), rhs, move |eg, s| {
        pushes(eg, s, &op, &operands)
    })
}

/// Whether `grad` may be pushed into `op(operands)`: the gradient input has the formula's full
/// dimension, and the formula depends on the variable.
fn pushes<S: AsRef<str>>(eg: &FormulaGraph, s: &Subst, op: &Op, operands: &[S]) -> bool {
    let dims: Vec<usize> = operands.iter().map(|o| dim(eg, s, o.as_ref())).collect();
    let vars = operands
        .iter()
        .fold(0, |acc, o| acc | eg[s[super::var(o.as_ref())]].data.vars);
    op.output_dim(&dims) == Ok(dim(eg, s, "?e")) && vars & eg[s[super::var("?v")]].data.vars != 0
}

/// `Grad(f, v, e)` of an `f` that does not depend on `v` is zero.
fn grad_independent(eg: &mut FormulaGraph, s: &Subst) -> Option<Id> {
    let f = &eg[s[super::var("?f")]].data;
    let v = &eg[s[super::var("?v")]].data;
    let (independent, dim) = (f.vars & v.vars == 0, v.dim);
    independent.then(|| inst(eg, s, &format!("zero:{dim}")))
}

/// `Grad(v, v, e) = e`, broadcast to v's dimension when e is a scalar, summed when v is.
fn grad_var(eg: &mut FormulaGraph, s: &Subst) -> Option<Id> {
    let (dv, de) = (dim(eg, s, "?v"), dim(eg, s, "?e"));
    let is_var = eg[s[super::var("?v")]]
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Var(_)));
    if !is_var {
        return None;
    }
    Some(if dv == de {
        s[super::var("?e")]
    } else if de == 1 {
        inst(eg, s, &format!("(sumt:{dv} ?e)"))
    } else {
        // A scalar v broadcast against a vector e: the adjoint of the broadcast sums.
        inst(eg, s, "(sum ?e)")
    })
}

/// Operators with integer parameters: the rule depends on the parameters, so it is computed
/// from the e-node found in f's class.
fn grad_parametric(eg: &mut FormulaGraph, s: &Subst) -> Option<Id> {
    let f = s[super::var("?f")];
    let (df, de) = (dim(eg, s, "?f"), dim(eg, s, "?e"));
    let independent = eg[f].data.vars & eg[s[super::var("?v")]].data.vars == 0;
    if df != de || independent {
        // The normal forms come first (see `rules`).
        return None;
    }
    let nodes = eg[f].nodes.clone();
    for node in nodes {
        let a = node.children.first().copied();
        let rhs = match (&node.op, a) {
            (Op::Sign | Op::Step | Op::Floor | Op::Round(_) | Op::OneHot(_), _)
            | (Op::ArgMax | Op::ArgMin, _)
            | (Op::Equal | Op::NotEqual | Op::LessThan | Op::LessOrEqual, _) => {
                format!("zero:{}", dim(eg, s, "?v"))
            }
            (Op::Pow(0), _) => format!("zero:{}", dim(eg, s, "?v")),
            (Op::Pow(1), Some(_)) => "(grad ?a ?v ?e)".into(),
            (Op::Pow(2), Some(_)) => "(grad ?a ?v (* ?e (* int:2 ?a)))".into(),
            (Op::Pow(m), Some(_)) => format!("(grad ?a ?v (* ?e (* int:{m} (pow:{} ?a))))", m - 1),
            (Op::ClampInt(lo, hi), Some(_)) => {
                format!("(grad ?a ?v (* ?e (* (le int:{lo} ?a) (le ?a int:{hi}))))")
            }
            (Op::SumT(_), Some(_)) => "(grad ?a ?v (sum ?e))".into(),
            (Op::Elem(m), Some(a)) => {
                let n = eg[a].data.dim;
                format!("(grad ?a ?v (elemt:{n}:{m} ?e))")
            }
            (Op::ElemT(_, m), Some(_)) => format!("(grad ?a ?v (elem:{m} ?e))"),
            (Op::Extract(start, _), Some(a)) => {
                let n = eg[a].data.dim;
                format!("(grad ?a ?v (extractt:{start}:{n} ?e))")
            }
            (Op::ExtractT(start, _), Some(a)) => {
                let l = eg[a].data.dim;
                format!("(grad ?a ?v (extract:{start}:{l} ?e))")
            }
            (Op::Max, Some(a)) => {
                let n = eg[a].data.dim;
                format!("(grad ?a ?v (* ?e (onehot:{n} (argmax ?a))))")
            }
            (Op::Min, Some(a)) => {
                let n = eg[a].data.dim;
                format!("(grad ?a ?v (* ?e (onehot:{n} (argmin ?a))))")
            }
            (Op::TensorDot(spec), _) => {
                let (f, g) = (node.children[0], node.children[1]);
                let (e, v) = (s[super::var("?e")], s[super::var("?v")]);
                let along_f = eg.add(Node::new(Op::TensorDot(Box::new(spec.vjp_f())), vec![e, g]));
                let along_g = eg.add(Node::new(Op::TensorDot(Box::new(spec.vjp_g())), vec![e, f]));
                let grad_f = eg.add(Node::new(Op::Grad, vec![f, v, along_f]));
                let grad_g = eg.add(Node::new(Op::Grad, vec![g, v, along_g]));
                return Some(eg.add(Node::new(Op::Add, vec![grad_f, grad_g])));
            }
            _ => continue,
        };
        let bound = match a {
            Some(a) => bind(s, &[("?a", a)]),
            None => s.clone(),
        };
        return Some(inst(eg, &bound, &rhs));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{rewrite_text, test_vars};
    use super::*;

    fn grad(text: &str) -> String {
        let rules: Vec<FormulaRewrite> = rules().into_iter().map(|r| r.rewrite).collect();
        rewrite_text(&test_vars(), text, &rules)
    }

    // var:0 = x = Vi(3), var:1 = y = Vj(3), var:2 = b = Vj(1), var:3 = s = Pm(1), var:4 = t = Vi(1)
    #[test]
    fn gradient_of_a_variable_is_the_input() {
        assert_eq!(grad("(grad var:0 var:0 var:1)"), "var:1");
        assert_eq!(grad("(grad var:4 var:4 var:3)"), "var:3");
        // A scalar input broadcasts.
        assert_eq!(grad("(grad var:0 var:0 var:3)"), "(sumt:3 var:3)");
    }

    #[test]
    fn gradient_of_an_independent_formula_is_zero() {
        assert_eq!(grad("(grad (exp var:1) var:0 var:1)"), "zero:3");
        assert_eq!(grad("(grad (floor var:4) var:4 var:3)"), "zero:1");
    }

    #[test]
    fn chain_rule_pushes_one_level_per_rule() {
        assert_eq!(
            grad("(grad (exp var:4) var:4 var:3)"),
            "(* var:3 (exp var:4))"
        );
        assert_eq!(
            grad("(grad (sin var:0) var:0 var:1)"),
            "(* var:1 (cos var:0))"
        );
    }

    #[test]
    fn products_and_broadcasts() {
        // d/dt (t * b) . s = s * b
        assert_eq!(
            grad("(grad (* var:4 var:2) var:4 var:3)"),
            "(+ (* var:3 var:2) zero:1)"
        );
        // d/ds (s * x) . y = Sum(y * x): the scalar operand collects the broadcast gradient
        assert_eq!(
            grad("(grad (* var:3 var:0) var:3 var:1)"),
            "(+ (sum (* var:1 var:0)) zero:1)"
        );
    }

    #[test]
    fn parametric_operators() {
        assert_eq!(
            grad("(grad (elem:1 var:0) var:0 var:3)"),
            "(elemt:3:1 var:3)"
        );
        assert_eq!(
            grad("(grad (extract:1:2 var:0) var:0 (extract:0:2 var:1))"),
            "(extractt:1:3 (extract:0:2 var:1))"
        );
        assert_eq!(
            grad("(grad (pow:3 var:4) var:4 var:3)"),
            "(* var:3 (* int:3 (pow:2 var:4)))"
        );
    }

    #[test]
    fn tensordot_is_differentiated_by_two_tensordots() {
        let out = grad("(grad (tensordot:3:3:: var:0 var:1) var:0 var:3)");
        assert!(!out.contains("grad"), "{out}");
        // Grad_x of the outer product x y^T against E (3 x 3) is E y: a TensorDot over y's axis.
        assert!(
            out.contains("(tensordot:3,3:3:1:0:0 (sumt:9 var:3) var:1)"),
            "{out}"
        );
    }
}
