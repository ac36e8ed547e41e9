//! Every example in `lang-spec/*.md` runs. Fenced blocks are tests:
//!
//! - ```` ```kf-eval ````: a formula, `NAME = [numbers]` lines (each name becomes a parameter
//!   `Pm(len)`), then `=> [expected]`. The formula is evaluated once, as `Sum_Reduction(F, 0)` of a
//!   kernel whose only arguments are these parameters (so N = M = 1).
//! - ```` ```kf-run ````: a whole kernel, then `NAME = [[..], ..]` arrays (row-major; `[]` is zero
//!   rows; a parameter may be written `[..]`) and `=> [[..], ..]`, the expected output.
//! - ```` ```kf ````: must compile; ```` ```kf-error ````: must not compile.
//! - ```` ```kf-vjp wrt=NAME ````: a whole kernel, its arrays as for `kf-run`, `cotangent = [[..]]`
//!   and `=> [[..]]`, the expected gradient `d/dNAME sum(cotangent * out)` (`keopsc vjp`), on the
//!   interpreter and, in f64 and f32, on the CPU backend. ```` ```kf-vjp wrt=A,B ````: the
//!   gradients with respect to A and B computed together (`keopsc::vjp::vjp_many`), each
//!   flattened, concatenated in that order after `=>`.
//! - ```` ```kf-simplify ````: `NAME = Vi(d)` / `Vj(d)` / `Pm(d)` lines, a formula, then `=> TEXT`:
//!   the middle end (`keopsc::opt::optimize`, with a budget that no clock can cut short) on
//!   `Sum_Reduction(F, 0)` of a kernel with these variables must print exactly TEXT.
//!   ```` ```kf-simplify --exact ````: the same with exact rules only (`keopsc explain --exact`).
//!
//! Numbers compare with a relative and an absolute tolerance of 1e-12; `nan`, `inf`, `-inf` are
//! allowed and must match exactly. Every failure is reported with its `file:line`.

use keops_runtime::{DType, HostArray, ReductionKind};
use keops_tests::compile_ok;
use keopsc::check::operators::OPERATORS;
use keopsc::driver::{self, Backend};
use keopsc::opt::rules::{catalog, RuleSet};
use keopsc::opt::{optimize, OptBudget};
use keopsc::source::SourceFile;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-12;

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lang-spec")
}

/// A fenced block of a spec file: its info string, first content line (1-based) and text.
struct Block {
    info: String,
    line: usize,
    body: Vec<String>,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (k, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match current.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    if !info.trim().is_empty() || trimmed == "```" {
                        current = Some(Block {
                            info: info.trim().to_string(),
                            line: k + 2,
                            body: Vec::new(),
                        });
                    }
                }
            }
            Some(mut block) => {
                if trimmed.starts_with("```") {
                    out.push(block);
                } else {
                    block.body.push(line.to_string());
                    current = Some(block);
                }
            }
        }
    }
    out
}

fn spec_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spec_dir())
        .expect("lang-spec/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

/// A number as the spec writes it: decimal, `nan`, `inf`, `-inf`.
fn number(text: &str) -> Result<f64, String> {
    match text.trim() {
        "nan" | "NaN" => Ok(f64::NAN),
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        t => t.parse().map_err(|_| format!("`{t}` is not a number")),
    }
}

/// `[1, 2]` -> rows None; `[[1, 2], [3, 4]]` -> rows Some(2). Returns (flat values, rows, cols).
fn array(text: &str) -> Result<(Vec<f64>, Option<usize>, usize), String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("`{t}` is not a bracketed list"))?
        .trim();
    if inner.is_empty() {
        return Ok((Vec::new(), Some(0), 0));
    }
    if !inner.starts_with('[') {
        let values = inner
            .split(',')
            .map(number)
            .collect::<Result<Vec<_>, _>>()?;
        let n = values.len();
        return Ok((values, None, n));
    }
    let mut values = Vec::new();
    let mut rows = 0;
    let mut cols = None;
    for row in inner.split(']') {
        let row = row.trim().trim_start_matches(',').trim();
        if row.is_empty() {
            continue;
        }
        let row = row
            .strip_prefix('[')
            .ok_or_else(|| format!("malformed row in `{t}`"))?;
        let items = row.split(',').map(number).collect::<Result<Vec<_>, _>>()?;
        if *cols.get_or_insert(items.len()) != items.len() {
            return Err(format!("rows of different lengths in `{t}`"));
        }
        values.extend(items);
        rows += 1;
    }
    Ok((values, Some(rows), cols.unwrap_or(0)))
}

fn close(got: f64, want: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= TOLERANCE + TOLERANCE * want.abs()
}

fn compare(got: &[f64], want: &[f64]) -> Result<(), String> {
    if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| !close(*g, *w)) {
        return Err(format!("expected {want:?}, got {got:?}"));
    }
    Ok(())
}

/// Splits `NAME = [...]` lines and the `=> [...]` line off a block's tail.
struct Data {
    inputs: Vec<(String, String)>,
    expected: Option<String>,
}

fn data_line(line: &str, data: &mut Data) -> Result<(), String> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("=>") {
        if data.expected.is_some() {
            return Err("two `=>` lines".into());
        }
        data.expected = Some(rest.trim().to_string());
    } else if let Some((name, value)) = t.split_once('=') {
        data.inputs
            .push((name.trim().to_string(), value.trim().to_string()));
    } else {
        return Err(format!(
            "cannot read `{t}` (expected `NAME = [..]` or `=> [..]`)"
        ));
    }
    Ok(())
}

enum Outcome {
    Pass,
}

fn evaluate(
    kernel: &keopsc::check::CheckedKernel,
    inputs: &[(String, HostArray)],
) -> Result<HostArray, String> {
    let interp = driver::evaluate(kernel, inputs, Backend::Interp)
        .map(|done| done.output)
        .map_err(|e| format!("evaluation failed: {e}"))?;
    // Every example is also a test of the compiled CPU code, in both element types.
    for dtype in [DType::F64, DType::F32] {
        let inputs: Vec<(String, HostArray)> = inputs
            .iter()
            .map(|(n, a)| (n.clone(), cast(a, dtype)))
            .collect();
        let want = driver::evaluate(kernel, &inputs, Backend::Interp)
            .map(|done| done.output)
            .map_err(|e| format!("evaluation failed: {e}"))?;
        let got = driver::evaluate(kernel, &inputs, Backend::Cpu)
            .map(|done| done.output)
            .map_err(|e| format!("cpu evaluation failed: {e}"))?;
        if got.shape != want.shape {
            return Err(format!(
                "cpu backend ({dtype}): shape {:?}, interpreter {:?}",
                got.shape, want.shape
            ));
        }
        let tol = match dtype {
            DType::F64 => 1e-12,
            DType::F32 => 2e-5,
        };
        let (g, w) = (got.to_f64(), want.to_f64());
        let agree = g.iter().zip(&w).all(|(&g, &w)| {
            (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * 1f64.max(w.abs())
        });
        if !agree {
            return Err(format!(
                "cpu backend ({dtype}) gives {g:?}, the interpreter {w:?}"
            ));
        }
    }
    Ok(interp)
}

fn cast(a: &HostArray, dtype: DType) -> HostArray {
    match dtype {
        DType::F64 => HostArray::from_f64(a.shape.clone(), a.to_f64()),
        DType::F32 => HostArray::from_f32(
            a.shape.clone(),
            a.to_f64().iter().map(|&x| x as f32).collect(),
        ),
    }
}

fn run_eval(block: &Block) -> Result<Outcome, String> {
    let mut lines = block
        .body
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty());
    let formula = lines.next().ok_or("empty example")?;
    let mut data = Data {
        inputs: Vec::new(),
        expected: None,
    };
    for line in lines {
        data_line(line, &mut data)?;
    }
    let expected = array(data.expected.as_deref().ok_or("no `=>` line")?)?.0;
    let mut source = String::from("kernel example {\n");
    let mut inputs = Vec::new();
    for (name, value) in &data.inputs {
        let (values, rows, _) = array(value)?;
        if rows.is_some_and(|r| r > 0) {
            return Err(format!("`{name}`: a kf-eval input is a flat list"));
        }
        source.push_str(&format!("    {name} = Pm({})\n", values.len()));
        inputs.push((
            name.clone(),
            HostArray::from_f64(vec![values.len()], values),
        ));
    }
    source.push_str(&format!("    Sum_Reduction({formula}, 0)\n}}\n"));
    let compiled = compile(&source)?;
    let kernel = &compiled.kernels[0];
    let got = evaluate(kernel, &inputs)?;
    compare(&got.to_f64(), &expected)?;
    Ok(Outcome::Pass)
}

fn run_kernel(block: &Block) -> Result<Outcome, String> {
    let end = block
        .body
        .iter()
        .rposition(|l| l.trim_start().starts_with('}'))
        .ok_or("no kernel (no closing `}`)")?;
    let source = block.body[..=end].join("\n");
    let mut data = Data {
        inputs: Vec::new(),
        expected: None,
    };
    for line in block.body[end + 1..]
        .iter()
        .filter(|l| !l.trim().is_empty())
    {
        data_line(line, &mut data)?;
    }
    let compiled = compile(&source)?;
    let kernel = &compiled.kernels[0];
    let mut inputs = Vec::new();
    for (name, value) in &data.inputs {
        let (values, rows, cols) = array(value)?;
        let spec = kernel
            .signature
            .args
            .iter()
            .find(|a| &a.name == name)
            .ok_or_else(|| format!("`{name}` is not an argument of the kernel"))?;
        let shape = match rows {
            Some(0) => vec![0, spec.dim],
            Some(r) => vec![r, cols],
            None => vec![cols],
        };
        inputs.push((name.clone(), HostArray::from_f64(shape, values)));
    }
    let (want, want_rows, want_cols) = array(data.expected.as_deref().ok_or("no `=>` line")?)?;
    let got = evaluate(kernel, &inputs)?;
    let want_shape = vec![want_rows.unwrap_or(1), want_cols];
    if want_rows != Some(0) && got.shape != want_shape {
        return Err(format!(
            "expected shape {want_shape:?}, got {:?}: {:?}",
            got.shape,
            got.to_f64()
        ));
    }
    if want_rows == Some(0) && got.shape[0] != 0 {
        return Err(format!("expected no rows, got shape {:?}", got.shape));
    }
    compare(&got.to_f64(), &want)?;
    Ok(Outcome::Pass)
}

/// `kf-vjp wrt=NAME`: the gradient of a whole reduction (`keopsc::vjp`).
fn run_vjp(block: &Block, wrt: &str) -> Result<Outcome, String> {
    let end = block
        .body
        .iter()
        .rposition(|l| l.trim_start().starts_with('}'))
        .ok_or("no kernel (no closing `}`)")?;
    let compiled = compile(&block.body[..=end].join("\n"))?;
    let kernel = &compiled.kernels[0];
    let mut data = Data {
        inputs: Vec::new(),
        expected: None,
    };
    for line in block.body[end + 1..]
        .iter()
        .filter(|l| !l.trim().is_empty())
    {
        data_line(line, &mut data)?;
    }
    let mut inputs = Vec::new();
    let mut cotangent = None;
    for (name, value) in &data.inputs {
        let (values, rows, cols) = array(value)?;
        let shape = match rows {
            Some(r) => vec![r, cols],
            None => vec![cols],
        };
        let array = HostArray::from_f64(shape, values);
        if name == "cotangent" {
            cotangent = Some(array);
        } else {
            inputs.push((name.clone(), array));
        }
    }
    let cotangent = cotangent.ok_or("no `cotangent = [[..]]` line")?;
    let (want, _, _) = array(data.expected.as_deref().ok_or("no `=>` line")?)?;
    let wrt: Vec<&str> = wrt.split(',').collect();
    // One input: `vjp`; several: `vjp_many`, the gradients flattened and concatenated.
    let gradients = |inputs: &[(String, HostArray)], cotangent: &HostArray, backend: Backend| {
        let grads = match wrt.as_slice() {
            [one] => vec![keopsc::vjp::vjp(kernel, one, inputs, cotangent, backend)?],
            several => keopsc::vjp::vjp_many(kernel, several, inputs, cotangent, backend)?,
        };
        Ok::<Vec<f64>, keopsc::vjp::VjpRunError>(grads.iter().flat_map(HostArray::to_f64).collect())
    };
    let got =
        gradients(&inputs, &cotangent, Backend::Interp).map_err(|e| format!("vjp failed: {e}"))?;
    compare(&got, &want)?;
    for dtype in [DType::F64, DType::F32] {
        let cast_inputs: Vec<(String, HostArray)> = inputs
            .iter()
            .map(|(n, a)| (n.clone(), cast(a, dtype)))
            .collect();
        let cpu = gradients(&cast_inputs, &cast(&cotangent, dtype), Backend::Cpu)
            .map_err(|e| format!("cpu vjp ({dtype}) failed: {e}"))?;
        let tol = match dtype {
            DType::F64 => 1e-12,
            DType::F32 => 1e-4,
        };
        let agree = cpu.len() == want.len()
            && cpu.iter().zip(&want).all(|(&g, &w)| {
                (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * 1f64.max(w.abs())
            });
        if !agree {
            return Err(format!(
                "cpu vjp ({dtype}) gives {cpu:?}, expected {want:?}"
            ));
        }
    }
    Ok(Outcome::Pass)
}

/// A budget that only the node and iteration limits can stop, so that the result does not depend
/// on the machine's speed.
fn deterministic_budget() -> OptBudget {
    OptBudget {
        time_limit: std::time::Duration::from_secs(60),
        ..Default::default()
    }
}

fn is_declaration(line: &str) -> bool {
    line.split_once('=').is_some_and(|(name, rhs)| {
        let name = name.trim();
        let rhs = rhs.trim();
        !name.is_empty()
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            && ["Vi(", "Vj(", "Pm("].iter().any(|p| rhs.starts_with(p))
            && rhs.ends_with(')')
    })
}

fn run_simplify(block: &Block, exact: bool) -> Result<Outcome, String> {
    let mut declarations = Vec::new();
    let mut formula = None;
    let mut expected = None;
    for line in block
        .body
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
    {
        if let Some(rest) = line.strip_prefix("=>") {
            if expected.replace(rest.trim().to_string()).is_some() {
                return Err("two `=>` lines".into());
            }
        } else if formula.is_none() && is_declaration(line) {
            declarations.push(line.to_string());
        } else if formula.replace(line.to_string()).is_some() {
            return Err(format!("two formulas (second: `{line}`)"));
        }
    }
    let formula = formula.ok_or("no formula")?;
    let expected = expected.ok_or("no `=>` line")?;
    let mut source = String::from("kernel k {\n");
    for d in &declarations {
        source.push_str(&format!("    {d}\n"));
    }
    source.push_str(&format!("    Sum_Reduction({formula}, 0)\n}}\n"));
    let compiled = compile(&source)?;
    let mut budget = deterministic_budget();
    if exact {
        budget.rules = RuleSet::Exact;
    }
    let optimized = optimize(&compiled.kernels[0], &budget)
        .map_err(|d| format!("the middle end fails: {}", d.message))?;
    let got = optimized.formula.to_text(optimized.formula.root());
    if got != expected {
        return Err(format!(
            "`{formula}` simplifies to\n    {got}\nnot\n    {expected}"
        ));
    }
    Ok(Outcome::Pass)
}

fn compile(source: &str) -> Result<driver::CompiledFile, String> {
    driver::compile(SourceFile::new("<example>", source)).map_err(|(s, d)| {
        format!(
            "does not compile:\n{}\n{}",
            source,
            keopsc::diagnostic::render_all(&d, &s, false)
        )
    })
}

fn run_block(block: &Block) -> Option<Result<Outcome, String>> {
    Some(match block.info.as_str() {
        "kf-eval" => run_eval(block),
        "kf-run" => run_kernel(block),
        "kf-simplify" => run_simplify(block, false),
        "kf-simplify --exact" => run_simplify(block, true),
        info if info.starts_with("kf-vjp wrt=") => run_vjp(block, &info["kf-vjp wrt=".len()..]),
        // A kernel file of the recipes page: it must compile (recipes.rs runs it).
        info if info == "kf" || info.starts_with("kf file=") => {
            // `compile_ok` panics with the diagnostics; keep going to report every failure.
            let text = block.body.join("\n");
            std::panic::catch_unwind(|| {
                compile_ok("<example>", &text);
            })
            .map(|_| Outcome::Pass)
            .map_err(|payload| match payload.downcast::<String>() {
                Ok(message) => *message,
                Err(_) => format!("does not compile:\n{text}"),
            })
        }
        "kf-error" => match driver::compile(SourceFile::new("<example>", block.body.join("\n"))) {
            Ok(_) => Err("compiles, but the spec says it is an error".into()),
            Err((s, d)) => {
                // `LANG_SPEC_VERBOSE=1` shows why each error example is rejected, for review.
                if std::env::var_os("LANG_SPEC_VERBOSE").is_some() {
                    println!("{}", keopsc::diagnostic::render_all(&d, &s, false));
                }
                Ok(Outcome::Pass)
            }
        },
        _ => return None,
    })
}

#[test]
fn every_lang_spec_example_runs() {
    let mut failures = Vec::new();
    let mut passed = 0;
    for path in spec_files() {
        let text = std::fs::read_to_string(&path).expect("spec file readable");
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        for block in blocks(&text) {
            let Some(result) = run_block(&block) else {
                continue;
            };
            match result {
                Ok(Outcome::Pass) => passed += 1,
                Err(e) => failures.push(format!("lang-spec/{file}:{}: {e}", block.line)),
            }
        }
    }
    println!("{passed} lang-spec examples pass");
    assert!(
        failures.is_empty(),
        "{} lang-spec examples fail:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        passed > 0,
        "no lang-spec example found in {}",
        spec_dir().display()
    );
}

/// `### Name` headings of a spec file, each with the number of example blocks under it.
fn entries(file: &str) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(spec_dir().join(file)).expect("spec file readable");
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            if !in_fence && info.trim().starts_with("kf") {
                if let Some(last) = out.last_mut() {
                    last.1 += 1;
                }
            }
            in_fence = !in_fence;
        } else if in_fence {
            continue;
        } else if let Some(heading) = line.strip_prefix("### ") {
            let name = heading
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('`');
            let name = name.split('(').next().unwrap_or("").to_string();
            out.push((name, 0));
        } else if line.starts_with("## ") || line.starts_with("# ") {
            out.push((String::new(), 0));
        }
    }
    out
}

fn check_documented(file: &str, names: &[String]) {
    let entries = entries(file);
    let mut problems = Vec::new();
    for name in names {
        match entries.iter().find(|(n, _)| n == name) {
            None => problems.push(format!(
                "`{name}` has no `### {name}` heading in lang-spec/{file}"
            )),
            Some((_, 0)) => problems.push(format!("`{name}` has no example in lang-spec/{file}")),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_operator_is_documented_with_an_example() {
    let names: Vec<String> = OPERATORS.iter().map(|e| e.name.to_string()).collect();
    assert!(!names.is_empty());
    check_documented("operators.md", &names);
}

#[test]
fn every_reduction_is_documented_with_an_example() {
    let names: Vec<String> = ReductionKind::ALL.iter().map(|k| k.to_string()).collect();
    check_documented("reductions.md", &names);
}

/// A rule row of optimizer.md: `| `name` | rewrite | exact | default |`, where the exact and
/// default columns start with `yes` or `no` (an explanation may follow), under the heading of
/// its family.
struct RuleRow {
    name: String,
    heading: String,
    exact: bool,
    default: bool,
    line: usize,
}

fn yes_no(cell: &str) -> Option<bool> {
    let word: String = cell
        .trim()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect();
    match word.to_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

fn rule_rows(text: &str) -> Result<Vec<RuleRow>, String> {
    let mut rows = Vec::new();
    let mut heading = String::new();
    let mut in_fence = false;
    for (k, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_lowercase();
            continue;
        }
        let Some(rest) = trimmed.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = trimmed.trim_matches('|').split('|').collect();
        let name = rest.split('`').next().unwrap_or("").to_string();
        let bad = || {
            format!(
                "optimizer.md:{}: a rule row is `| `name` | rewrite | yes/no | yes/no |`",
                k + 1
            )
        };
        if cells.len() != 4 {
            return Err(bad());
        }
        rows.push(RuleRow {
            name,
            heading: heading.clone(),
            exact: yes_no(cells[2]).ok_or_else(bad)?,
            default: yes_no(cells[3]).ok_or_else(bad)?,
            line: k + 1,
        });
    }
    Ok(rows)
}

#[test]
fn every_rule_is_documented_with_its_flags() {
    let text =
        std::fs::read_to_string(spec_dir().join("optimizer.md")).expect("optimizer.md readable");
    let rows = rule_rows(&text).unwrap_or_else(|e| panic!("{e}"));
    let rules = catalog();
    assert!(!rules.is_empty());
    let mut problems = Vec::new();
    for rule in &rules {
        let found: Vec<&RuleRow> = rows.iter().filter(|r| r.name == rule.name).collect();
        let flag = |b: bool| if b { "yes" } else { "no" };
        match found.as_slice() {
            [] => problems.push(format!(
                "rule `{}` ({}, exact {}, default {}) has no row in lang-spec/optimizer.md",
                rule.name,
                rule.family,
                flag(rule.exact),
                flag(rule.default)
            )),
            [row] => {
                if row.exact != rule.exact || row.default != rule.default {
                    problems.push(format!(
                        "optimizer.md:{}: `{}` is exact {}, default {} (the row says {}, {})",
                        row.line,
                        rule.name,
                        flag(rule.exact),
                        flag(rule.default),
                        flag(row.exact),
                        flag(row.default)
                    ));
                }
                if !row.heading.contains(rule.family) {
                    problems.push(format!(
                        "optimizer.md:{}: `{}` is a {} rule, listed under `{}`",
                        row.line, rule.name, rule.family, row.heading
                    ));
                }
            }
            many => problems.push(format!(
                "`{}` has {} rows in lang-spec/optimizer.md",
                rule.name,
                many.len()
            )),
        }
    }
    for row in &rows {
        if !rules.iter().any(|r| r.name == row.name) {
            problems.push(format!(
                "optimizer.md:{}: `{}` is not a rule of `catalog()`",
                row.line, row.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The repository's root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// A heading's anchor as Markdown renderers make it: lower case, punctuation dropped, spaces as
/// hyphens (`## Calls and arity` -> `calls-and-arity`).
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside fenced blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Text found on a line of a Markdown file: (line number, text).
type OnLine = Vec<(usize, String)>;

/// The targets of `[text](target)` links and the file paths written as code (`` `a/b.md` ``)
/// on the lines of a Markdown file outside fenced blocks, with their line numbers.
fn references(text: &str) -> (OnLine, OnLine) {
    let mut links = Vec::new();
    let mut paths = Vec::new();
    let mut in_fence = false;
    for (k, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((k + 1, after[..end].to_string()));
            rest = &after[end..];
        }
        for (n, span) in line.split('`').enumerate() {
            let is_path = n % 2 == 1
                && span.contains('/')
                && !span.contains(char::is_whitespace)
                && [".md", ".rs", ".kf", ".c", ".toml", ".sh"]
                    .iter()
                    .any(|ext| span.ends_with(ext));
            if is_path {
                paths.push((k + 1, span.to_string()));
            }
        }
    }
    (links, paths)
}

/// The documentation stands alone: every link of lang-spec (and of the root README) points at a
/// file of the repository that exists, and at a heading of it that exists when it names one;
/// every file path written as code in lang-spec exists too (relative to the repository root or
/// to lang-spec). Links out of the repository (`..` past its root, absolute paths, other sites)
/// are errors.
#[test]
fn lang_spec_links_stay_inside_the_repository() {
    let root = repo_root();
    let mut files: Vec<PathBuf> = spec_files()
        .iter()
        .map(|p| p.canonicalize().expect("spec file"))
        .collect();
    files.push(root.join("README.md"));
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("markdown readable");
        let dir = path.parent().expect("a file has a folder");
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let (links, paths) = references(&text);
        for (line, target) in links {
            checked += 1;
            let at = format!("{shown}:{line}: link `{target}`");
            // The root README may cite the project it follows; lang-spec must not need the web.
            let is_web = target.starts_with("https://") || target.starts_with("http://");
            if is_web && path.ends_with("README.md") && dir == root {
                continue;
            }
            if target.contains("://") || target.starts_with('/') {
                problems.push(format!("{at} leaves the repository"));
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            let Ok(resolved) = resolved.canonicalize() else {
                problems.push(format!("{at}: no such file"));
                continue;
            };
            if !resolved.starts_with(&root) {
                problems.push(format!("{at} leaves the repository"));
                continue;
            }
            if let Some(fragment) = fragment {
                let target_text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == fragment) {
                    problems.push(format!("{at}: no heading `#{fragment}` there"));
                }
            }
        }
        if dir == root {
            continue;
        }
        for (line, written) in paths {
            checked += 1;
            if !root.join(&written).exists() && !dir.join(&written).exists() {
                problems.push(format!(
                    "{shown}:{line}: `{written}` is not a file of the repository"
                ));
            }
        }
    }
    assert!(checked > 10, "only {checked} references found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn link_check_helpers_find_what_they_should() {
    let (links, paths) = references(
        "see [a](a.md#x) and [b](../b.md)\n```\n[c](c.md)\n```\n`shared/kf-contract.md` `x / y`",
    );
    assert_eq!(
        links,
        vec![(1, "a.md#x".to_string()), (1, "../b.md".to_string())]
    );
    assert_eq!(paths, vec![(5, "shared/kf-contract.md".to_string())]);
    assert_eq!(anchor(" Calls and arity"), "calls-and-arity");
    assert_eq!(anchor(" `Grad` and `Diff`"), "grad-and-diff");
}

/// The arity table of syntax.md (`| arguments | operators |` under `## Calls and arity`) lists
/// every operator of the operator table once, with its number of arguments.
#[test]
fn the_arity_table_matches_the_operator_table() {
    let text = std::fs::read_to_string(spec_dir().join("syntax.md")).expect("syntax.md readable");
    let section = text
        .split("## Calls and arity")
        .nth(1)
        .expect("syntax.md has a `## Calls and arity` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut listed: Vec<(String, usize, usize)> = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let numbers: Vec<usize> = cells[0]
            .split(" or ")
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        let (Some(&min), Some(&max)) = (numbers.first(), numbers.last()) else {
            continue;
        };
        // A parenthesised remark (`(the seventh, `permute`, is optional)`) names no operator.
        let names = cells[1].split('(').next().unwrap_or("");
        for name in names.split(',') {
            let name = name.split('`').nth(1).unwrap_or("").to_string();
            listed.push((name, min, max));
        }
    }
    let mut problems = Vec::new();
    for op in OPERATORS {
        let rows: Vec<_> = listed.iter().filter(|(n, _, _)| n == op.name).collect();
        match rows.as_slice() {
            [(_, min, max)] if (*min, *max) == (op.min_args(), op.max_args()) => {}
            [] => problems.push(format!("`{}` is not in the arity table", op.name)),
            _ => problems.push(format!(
                "`{}` takes {} to {} arguments; the table says {:?}",
                op.name,
                op.min_args(),
                op.max_args(),
                rows
            )),
        }
    }
    for (name, _, _) in &listed {
        if !OPERATORS.iter().any(|op| op.name == name) {
            problems.push(format!("`{name}` in the arity table is not an operator"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
