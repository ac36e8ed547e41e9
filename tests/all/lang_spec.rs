//! Every example in `lang-spec/*.md` runs. Fenced blocks are tests:
//!
//! - ```` ```kf-eval ````: a formula, `NAME = [numbers]` lines (each name becomes a parameter
//!   `Pm(len)`), then `=> [expected]`. The formula is evaluated once, as `Sum_Reduction(F, 0)` of a
//!   kernel whose only arguments are these parameters (so N = M = 1).
//! - ```` ```kf-run ````: a whole kernel, then `NAME = [[..], ..]` arrays (row-major; `[]` is zero
//!   rows; a parameter may be written `[..]`) and `=> [[..], ..]`, the expected output.
//! - ```` ```kf ````: must compile; ```` ```kf-error ````: must not compile.
//!
//! Numbers compare with a relative and an absolute tolerance of 1e-12; `nan`, `inf`, `-inf` are
//! allowed and must match exactly. Every failure is reported with its `file:line`.

use keops_runtime::{HostArray, ReductionKind};
use keops_tests::compile_ok;
use keopsc::check::operators::OPERATORS;
use keopsc::driver::{self, Backend};
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
    driver::evaluate(kernel, inputs, Backend::Interp).map_err(|e| format!("evaluation failed: {e}"))
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
        "kf" => {
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
