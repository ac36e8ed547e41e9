//! The front end never panics: random token soups and random bytes either compile or come
//! back as diagnostics that render; what compiles also goes through the middle end.

use keopsc::diagnostic::render_all;
use keopsc::driver;
use keopsc::opt::{self, OptBudget};
use keopsc::source::SourceFile;
use proptest::prelude::*;

/// Pieces of `.kf` text: enough of the grammar that random sequences often get far into the
/// parser and the checker.
const PIECES: &[&str] = &[
    "kernel k {",
    "kernel g {",
    "}",
    "{",
    "x = Vi(3)",
    "y = Vj(3)",
    "b = Vj(1)",
    "s = Pm(1)",
    "x",
    "y",
    "b",
    "s",
    "let",
    "g",
    "=",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    "+",
    "-",
    "*",
    "/",
    "**",
    "^",
    "|",
    "0",
    "1",
    "2",
    "3",
    "0.5",
    "-1",
    "1e3",
    "Exp(",
    "Log(",
    "SqDist(",
    "Sum(",
    "Elem(",
    "Extract(",
    "Concat(",
    "Grad(",
    "Diff(",
    "TensorDot(",
    "OneHot(",
    "Pow(",
    "Sum_Reduction(",
    "KMin_Reduction(",
    "LogSumExp_Reduction(",
    "SumSoftMaxWeight_Reduction(",
    "Vi(0, 3)",
    "Vj(1, 3)",
    "Var(2, 1, 2)",
    "#",
    "//",
    "\n",
    " ",
    "%",
    "@",
    "é",
];

fn compile_never_panics(text: &str) {
    let source = SourceFile::new("fuzz.kf", text);
    match driver::compile(source) {
        Ok(compiled) => {
            let budget = OptBudget {
                node_limit: 500,
                iter_limit: 3,
                ..OptBudget::default()
            };
            for kernel in &compiled.kernels {
                let _ = opt::optimize(kernel, &budget);
            }
        }
        Err((source, diagnostics)) => {
            assert!(!diagnostics.is_empty());
            let rendered = render_all(&diagnostics, &source, false);
            assert!(rendered.contains("Error"), "{rendered}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn token_soup_compiles_or_reports(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..60)) {
        compile_never_panics(&pieces.join(" "));
    }

    #[test]
    fn random_text_compiles_or_reports(text in "\\PC{0,200}") {
        compile_never_panics(&text);
    }

    #[test]
    fn a_kernel_with_a_random_formula_compiles_or_reports(
        pieces in prop::collection::vec(prop::sample::select(&PIECES[8..]), 1..30)
    ) {
        let text = format!(
            "kernel k {{\n x = Vi(3)\n y = Vj(3)\n b = Vj(1)\n s = Pm(1)\n Sum_Reduction({}, 0)\n}}",
            pieces.join(" ")
        );
        compile_never_panics(&text);
    }
}
