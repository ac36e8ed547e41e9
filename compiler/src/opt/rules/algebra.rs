//! Algebra: neutral and absorbing elements, signs, commutativity, reassociation,
//! distributivity, powers, exponentials and logarithms.
//!
//! Dimensions: every rule keeps its class's dimension. Where a dimension-1 operand broadcasts
//! (`s + x` with x a vector), a rule that would drop the vector is guarded.

use super::{dim, dynamic, guarded, info, inst, plain, RuleInfo, EXACT, INEXACT, OFF, ON};
use crate::opt::analysis::FormulaGraph;
use egg::{Id, Subst};

fn is_const(eg: &FormulaGraph, s: &Subst, v: &str, value: f64) -> bool {
    eg[s[super::var(v)]].data.is_scalar_constant(value)
}

fn is_zero(eg: &FormulaGraph, s: &Subst, v: &str) -> bool {
    eg[s[super::var(v)]].data.is_zero()
}

/// The rules that are one pattern for another: (name, this, becomes that, exact, default).
#[rustfmt::skip]
const PLAIN: &[(&str, &str, &str, bool, bool)] = &[
    // Signs: exact.
    ("neg-neg", "(- (- ?a))", "?a", EXACT, ON),
    ("add-neg", "(+ ?a (- ?b))", "(- ?a ?b)", EXACT, ON),
    ("sub-neg", "(- ?a (- ?b))", "(+ ?a ?b)", EXACT, ON),
    ("neg-mul", "(* (- ?a) ?b)", "(- (* ?a ?b))", EXACT, ON),
    ("neg-div", "(/ (- ?a) ?b)", "(- (/ ?a ?b))", EXACT, ON),
    ("neg-neg-mul", "(* (- ?a) (- ?b))", "(* ?a ?b)", EXACT, ON),
    ("neg-mul-right", "(- (* ?a ?b))", "(* ?a (- ?b))", EXACT, ON),
    ("neg-div-right", "(- (/ ?a ?b))", "(/ ?a (- ?b))", EXACT, ON),
    // Division by a reciprocal computed once: a multiplication per pair instead of a
    // division when the divisor is hoisted. One more rounding.
    ("div-as-mul-inv", "(/ ?a ?b)", "(* ?a (inv ?b))", INEXACT, ON),
    // Commutativity: exact. Reassociation: rounds differently.
    ("add-comm", "(+ ?a ?b)", "(+ ?b ?a)", EXACT, ON),
    ("mul-comm", "(* ?a ?b)", "(* ?b ?a)", EXACT, ON),
    ("mul-assoc", "(* (* ?a ?b) ?c)", "(* ?a (* ?b ?c))", INEXACT, ON),
    ("add-assoc", "(+ (+ ?a ?b) ?c)", "(+ ?a (+ ?b ?c))", INEXACT, ON),
    ("div-as-mul", "(/ (* ?a ?b) ?c)", "(* ?a (/ ?b ?c))", INEXACT, ON),
    // Distributivity, both ways: rounds differently.
    ("factor", "(+ (* ?a ?b) (* ?a ?c))", "(* ?a (+ ?b ?c))", INEXACT, ON),
    ("factor-sub", "(- (* ?a ?b) (* ?a ?c))", "(* ?a (- ?b ?c))", INEXACT, ON),
    // Distributing rarely moves work out of the pair loop and doubles the e-graph: off.
    ("distribute", "(* ?a (+ ?b ?c))", "(+ (* ?a ?b) (* ?a ?c))", INEXACT, OFF),
    // Powers: exact.
    ("mul-self", "(* ?a ?a)", "(square ?a)", EXACT, ON),
    ("pow-two", "(pow:2 ?a)", "(square ?a)", EXACT, ON),
    ("pow-one", "(pow:1 ?a)", "?a", EXACT, ON),
    ("square-neg", "(square (- ?a))", "(square ?a)", EXACT, ON),
    ("inv-as-div", "(/ int:1 ?a)", "(inv ?a)", EXACT, ON),
    ("mul-inv", "(* ?a (inv ?b))", "(/ ?a ?b)", INEXACT, ON),
    ("rsqrt-square-root", "(inv (sqrt ?a))", "(rsqrt ?a)", INEXACT, OFF),
    ("sqrt-square", "(square (sqrt ?a))", "?a", INEXACT, OFF),
    // Exponentials and logarithms.
    ("exp-add", "(* (exp ?a) (exp ?b))", "(exp (+ ?a ?b))", INEXACT, ON),
    ("exp-neg", "(inv (exp ?a))", "(exp (- ?a))", INEXACT, ON),
    // Not default: `Exp(a)` overflows for a > 709 (f64), where the left side is inf.
    ("log-exp", "(log (exp ?a))", "?a", INEXACT, OFF),
    ("exp-log", "(exp (log ?a))", "?a", INEXACT, OFF),
];

/// `Zero` of the operation's (broadcast) dimension, when `?z` is zero.
fn zero_of_the_broadcast(eg: &mut FormulaGraph, s: &Subst) -> Option<Id> {
    is_zero(eg, s, "?z").then(|| {
        let d = dim(eg, s, "?a").max(dim(eg, s, "?z"));
        inst(eg, s, &format!("zero:{d}"))
    })
}

pub fn rules() -> Vec<RuleInfo> {
    let mut rules = neutral_rules();
    rules.extend([
        // Absorbing zero: KeOps applies it; not exact where the other operand is inf or NaN.
        info(
            dynamic("mul-zero", "(* ?a ?z)", zero_of_the_broadcast),
            INEXACT,
            ON,
        ),
        info(
            dynamic("zero-div", "(/ ?z ?a)", zero_of_the_broadcast),
            INEXACT,
            ON,
        ),
        info(
            dynamic("sub-self", "(- ?a ?a)", |eg, s| {
                let d = dim(eg, s, "?a");
                Some(inst(eg, s, &format!("zero:{d}")))
            }),
            false,
            true,
        ),
        // Not default: false at 0, inf and NaN (KeOps has no such rule).
        info(
            dynamic("div-self", "(/ ?a ?a)", |eg, s| {
                (dim(eg, s, "?a") == 1).then(|| inst(eg, s, "int:1"))
            }),
            false,
            false,
        ),
    ]);
    rules.extend(
        PLAIN
            .iter()
            .map(|&(name, lhs, rhs, exact, default)| info(plain(name, lhs, rhs), exact, default)),
    );
    rules
}

/// Neutral elements: (name, this, becomes that, the operand that is a constant, its value).
/// Exact (x + 0 = x, x * 1 = x, x / 1 = x, also for inf and NaN); a zero operand must not be
/// wider than the other (`Zero(3) + s` is a vector).
#[rustfmt::skip]
const NEUTRAL: &[(&str, &str, &str, &str, f64)] = &[
    ("add-zero", "(+ ?a ?c)", "?a", "?c", 0.0),
    ("zero-add", "(+ ?c ?a)", "?a", "?c", 0.0),
    ("sub-zero", "(- ?a ?c)", "?a", "?c", 0.0),
    ("zero-sub", "(- ?c ?a)", "(- ?a)", "?c", 0.0),
    ("mul-one", "(* ?a ?c)", "?a", "?c", 1.0),
    ("one-mul", "(* ?c ?a)", "?a", "?c", 1.0),
    ("div-one", "(/ ?a ?c)", "?a", "?c", 1.0),
    ("mul-minus-one", "(* ?a ?c)", "(- ?a)", "?c", -1.0),
];

/// The neutral-element rules alone: they only shrink a formula, so the differentiation phase
/// runs them to drop the zeros and ones the chain rule leaves.
pub fn neutral_rules() -> Vec<RuleInfo> {
    NEUTRAL
        .iter()
        .map(|&(name, lhs, rhs, constant, value)| {
            let rule = guarded(name, lhs, rhs, move |eg, s| {
                if value == 0.0 {
                    is_zero(eg, s, constant) && dim(eg, s, "?a") >= dim(eg, s, constant)
                } else {
                    is_const(eg, s, constant, value)
                }
            });
            info(rule, EXACT, ON)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{calculus, rewrite_text, test_vars};
    use super::*;

    fn simplify(text: &str) -> String {
        let mut rules: Vec<_> = rules().into_iter().map(|r| r.rewrite).collect();
        rules.extend(super::super::vector::rules().into_iter().map(|r| r.rewrite));
        let _ = calculus::rules;
        rewrite_text(&test_vars(), text, &rules)
    }

    // var:0 = x = Vi(3), var:1 = y = Vj(3), var:2 = b = Vj(1), var:3 = s = Pm(1), var:4 = t = Vi(1)
    #[test]
    fn neutral_and_absorbing_elements() {
        assert_eq!(simplify("(+ var:4 zero:1)"), "var:4");
        assert_eq!(simplify("(* var:0 int:1)"), "var:0");
        assert_eq!(simplify("(* var:0 zero:1)"), "zero:3");
        assert_eq!(simplify("(- var:0 var:0)"), "zero:3");
        assert_eq!(simplify("(/ var:4 int:1)"), "var:4");
    }

    #[test]
    fn a_scalar_zero_does_not_drop_a_broadcast() {
        // zero:1 + s has dimension 1; zero:3 + s has dimension 3 and must stay a vector.
        let out = simplify("(+ zero:3 var:3)");
        assert_ne!(out, "var:3");
    }

    #[test]
    fn constants_fold() {
        assert_eq!(simplify("(* int:2 int:3)"), "int:6");
        assert_eq!(simplify("(/ int:1 int:4)"), "0.25");
        assert_eq!(simplify("(+ var:4 (- int:2 int:2))"), "var:4");
    }

    #[test]
    fn signs_and_powers() {
        assert_eq!(simplify("(- (- var:4))"), "var:4");
        assert_eq!(simplify("(* var:4 var:4)"), "(square var:4)");
        assert_eq!(simplify("(* (- var:4) (- var:2))"), "(* var:4 var:2)");
    }

    #[test]
    fn exponentials() {
        assert_eq!(simplify("(log (exp var:4))"), "var:4");
        // Two exponentials per pair become one.
        let out = simplify("(* (exp (* var:4 var:2)) (exp (+ var:4 var:2)))");
        assert_eq!(out.matches("exp").count(), 1, "{out}");
        // But exp(t) (per i) times exp(b) (per j) stays a product: both are hoisted, and one
        // multiplication per pair is cheaper than an addition and an exponential.
        assert_eq!(
            simplify("(* (exp var:4) (exp var:2))"),
            "(* (exp var:4) (exp var:2))"
        );
    }
}
