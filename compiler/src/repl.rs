//! The REPL's logic, apart from line editing: kernels typed (or pasted) in `.kf` syntax, a line
//! at a time, and commands that print each stage of a kernel. Every stage is printed by its
//! own `Display` (the same as `keopsc explain`), and every error is the CLI's diagnostic; none
//! ends the session.

use crate::driver::{self, Backend, KernelExplanation};
use crate::opt::OptBudget;
use crate::source::SourceFile;
use keops_runtime::{Category, DType, HostArray};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

pub const HELP: &str = "\
Type kernels in .kf syntax (several lines; a kernel ends when its braces close), then:
  :list                    the kernels defined so far
  :ast [NAME]              the syntax tree, printed back as .kf
  :checked [NAME]          the checked formula, one node per line with [dimension, category]
  :simplified [NAME]       derivatives expanded, simplified, with its cost per pair
  :grad [NAME] VAR         the simplified gradient Grad(F, VAR, e) of the kernel's formula
  :llvm [NAME] [f32|f64]   the CPU schedule and the optimised LLVM IR
  :asm [NAME] [f32|f64]    the host assembly
  :ptx [NAME]              the GPU code (not built yet)
  :eval [NAME] [N [M]] [f32|f64]
                           runs the kernel on the CPU on uniform random data, with timing
  :eval [NAME] ARG=FILE.npy ...
                           runs it on .npy arrays
  :help, :quit
NAME may be left out when one kernel is defined.";

/// The commands, for completion.
pub const COMMANDS: &[&str] = &[
    ":list",
    ":ast",
    ":checked",
    ":simplified",
    ":grad",
    ":llvm",
    ":asm",
    ":ptx",
    ":eval",
    ":help",
    ":quit",
];

/// What the session should do after a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Quit,
}

/// One kernel as typed: its own source text (so every stage can be recomputed from it).
struct Defined {
    source: String,
}

#[derive(Default)]
pub struct Repl {
    kernels: BTreeMap<String, Defined>,
    pending: String,
    inputs: usize,
    /// Colour in diagnostics (only on a terminal).
    pub color: bool,
    /// The optimiser's budget for every stage shown.
    pub budget: OptBudget,
}

impl Repl {
    pub fn new() -> Repl {
        Repl::default()
    }

    /// Whether a kernel is being typed (for a continuation prompt).
    pub fn is_pending(&self) -> bool {
        !self.pending.trim().is_empty()
    }

    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels.keys().cloned().collect()
    }

    /// Handles one input line; what it prints goes to `out`.
    pub fn handle_line(&mut self, line: &str, out: &mut String) -> Step {
        let trimmed = line.trim();
        if !self.is_pending() && trimmed.starts_with(':') {
            return self.command(trimmed, out);
        }
        if !self.is_pending() && trimmed.is_empty() {
            return Step::Continue;
        }
        self.pending.push_str(line);
        self.pending.push('\n');
        if brace_depth(&self.pending) > 0 {
            return Step::Continue;
        }
        let text = std::mem::take(&mut self.pending);
        self.define(&text, out);
        Step::Continue
    }

    fn define(&mut self, text: &str, out: &mut String) {
        self.inputs += 1;
        let source = SourceFile::new(format!("<input {}>", self.inputs), text);
        match driver::compile(source) {
            Ok(compiled) => {
                for k in &compiled.kernels {
                    let ast = compiled
                        .ast
                        .kernels
                        .iter()
                        .find(|a| a.name.name == k.name)
                        .expect("a checked kernel comes from the AST");
                    let replaced = self
                        .kernels
                        .insert(
                            k.name.clone(),
                            Defined {
                                source: ast.to_string(),
                            },
                        )
                        .is_some();
                    let verb = if replaced { "redefined" } else { "defined" };
                    let _ = writeln!(out, "{verb} {}", k.signature);
                }
            }
            Err((source, diagnostics)) => {
                out.push_str(&crate::diagnostic::render_all(
                    &diagnostics,
                    &source,
                    self.color,
                ));
            }
        }
    }

    fn command(&mut self, line: &str, out: &mut String) -> Step {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let result = match command {
            ":quit" | ":q" | ":exit" => return Step::Quit,
            ":help" | ":h" => {
                let _ = writeln!(out, "{HELP}");
                Ok(())
            }
            ":list" => {
                if self.kernels.is_empty() {
                    let _ = writeln!(out, "no kernel defined yet");
                }
                for d in self.kernels.values() {
                    if let Ok((explained, _)) = self.explain_source(&d.source) {
                        let _ = writeln!(out, "{}", explained.checked.signature);
                    }
                }
                Ok(())
            }
            ":ast" | ":checked" | ":simplified" => self.stage(command, &args, out),
            ":grad" => self.grad(&args, out),
            ":llvm" | ":asm" => self.code(command, &args, out),
            ":ptx" => Err("the GPU back end is not built yet: no PTX to show".to_string()),
            ":eval" => self.eval(&args, out),
            other => Err(format!("unknown command `{other}` (:help lists them)")),
        };
        if let Err(message) = result {
            let _ = writeln!(out, "error: {message}");
        }
        Step::Continue
    }

    /// The kernel a command names: its first argument when that is a kernel's name, else the
    /// only kernel. Returns the source and the remaining arguments.
    fn target<'a>(&self, args: &'a [&'a str]) -> Result<(&Defined, &'a [&'a str]), String> {
        if let Some((first, rest)) = args.split_first() {
            if let Some(d) = self.kernels.get(*first) {
                return Ok((d, rest));
            }
        }
        match self.kernels.len() {
            0 => Err("no kernel defined yet: type one in .kf syntax".into()),
            1 => Ok((self.kernels.values().next().expect("one kernel"), args)),
            _ => Err(format!(
                "which kernel? ({})",
                self.kernels.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn explain_source(&self, text: &str) -> Result<(KernelExplanation, SourceFile), String> {
        let source = SourceFile::new("<kernel>", text);
        match driver::explain(source.clone(), &self.budget) {
            Ok((mut kernels, _)) if kernels.len() == 1 => Ok((kernels.remove(0), source)),
            Ok(_) => Err("internal error: a REPL kernel is one kernel".into()),
            Err((source, diagnostics)) => Err(crate::diagnostic::render_all(
                &diagnostics,
                &source,
                self.color,
            )),
        }
    }

    fn stage(&self, command: &str, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        no_more(rest)?;
        let (k, _) = self.explain_source(&defined.source)?;
        let o = &k.optimized;
        let _ = match command {
            ":ast" => write!(out, "{}", k.ast),
            ":checked" => write!(out, "{}", k.checked),
            _ => {
                if let Some(report) = &o.differentiation {
                    let _ = writeln!(out, "-- derivatives expanded ({report}) --");
                    let _ = writeln!(out, "{}", o.expanded.to_text(o.expanded.root()));
                }
                let _ = writeln!(out, "-- simplified ({}) --", o.simplification);
                write!(out, "{o}")
            }
        };
        if !out.ends_with('\n') {
            out.push('\n');
        }
        Ok(())
    }

    /// `Grad(F, VAR, e)` as a kernel of its own: the original declarations, `e` a new
    /// variable of F's dimension indexed like the output, and the same axis.
    fn grad(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        let [var] = rest else {
            return Err("usage: :grad [NAME] VAR".into());
        };
        let (k, _) = self.explain_source(&defined.source)?;
        let sig = &k.checked.signature;
        if !sig.args.iter().any(|a| a.name == *var) {
            return Err(format!(
                "`{var}` is not a variable of `{}` (its variables: {})",
                sig.name,
                sig.args
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut text = format!("kernel grad_{}_{var} {{\n", sig.name);
        for a in &sig.args {
            if !a.name.chars().all(|c| c.is_alphanumeric() || c == '_')
                || a.name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!(
                    "`:grad` needs named variables; `{}` is positional",
                    a.name
                ));
            }
            let _ = writeln!(text, "    {} = {}({})", a.name, a.category, a.dim);
        }
        let e_category = match sig.axis {
            keops_runtime::Axis::I => Category::I,
            keops_runtime::Axis::J => Category::J,
        };
        let formula = k.checked.formula.to_text(k.checked.formula.root());
        let fdim = sig.reduction.fdim;
        let _ = writeln!(text, "    grad_input = {e_category}({fdim})");
        let _ = writeln!(
            text,
            "    Sum_Reduction(Grad({formula}, {var}, grad_input), {})\n}}",
            sig.axis.index()
        );
        let (g, _) = self.explain_source(&text)?;
        let o = &g.optimized;
        let _ = writeln!(
            out,
            "Grad(F, {var}, grad_input), grad_input = {e_category}({fdim}), F = {formula}"
        );
        let _ = writeln!(out, "-- simplified ({}) --", o.simplification);
        let _ = write!(out, "{o}");
        Ok(())
    }

    fn code(&self, command: &str, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        let dtype = match rest {
            [] => DType::F32,
            [d] => parse_dtype(d)?,
            _ => return Err(format!("usage: {command} [NAME] [f32|f64]")),
        };
        let (k, _) = self.explain_source(&defined.source)?;
        let code = driver::cpu_code(&k.optimized, dtype).map_err(|e| e.to_string())?;
        let _ = writeln!(out, "-- schedule ({dtype}) --\n{}", code.schedule_text);
        if command == ":llvm" {
            let _ = writeln!(out, "-- llvm (optimised) --\n{}", code.llvm_ir);
        } else {
            let _ = writeln!(
                out,
                "-- assembly ({}) --\n{}",
                code.target_cpu, code.assembly
            );
        }
        Ok(())
    }

    fn eval(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        let compiled = driver::compile(SourceFile::new("<kernel>", defined.source.as_str()))
            .map_err(|(s, d)| crate::diagnostic::render_all(&d, &s, self.color))?;
        let kernel = &compiled.kernels[0];
        let sig = &kernel.signature;
        let inputs: Vec<(String, HostArray)> = if rest.iter().any(|a| a.contains('=')) {
            rest.iter()
                .map(|a| {
                    let (name, path) = a
                        .split_once('=')
                        .ok_or_else(|| format!("`{a}`: expected NAME=FILE.npy"))?;
                    let array = HostArray::read_npy(std::path::Path::new(path))
                        .map_err(|e| format!("argument `{name}`: {e}"))?;
                    Ok((name.to_string(), array))
                })
                .collect::<Result<_, String>>()?
        } else {
            let mut sizes = Vec::new();
            let mut dtype = DType::F32;
            for a in rest {
                if let Ok(n) = a.parse::<usize>() {
                    sizes.push(n);
                } else {
                    dtype = parse_dtype(a)?;
                }
            }
            let n = sizes.first().copied().unwrap_or(1000);
            let m = sizes.get(1).copied().unwrap_or(n);
            random_inputs(sig, n, m, dtype)
        };
        let start = Instant::now();
        let result = driver::evaluate(kernel, &inputs, Backend::Cpu).map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        let views: Vec<_> = inputs.iter().map(|(_, a)| a.view()).collect();
        let size = keops_runtime::check_arguments(sig, &views).map_err(|e| e.to_string())?;
        let _ = writeln!(
            out,
            "output {:?} {} in {:.2} ms (N = {}, M = {}: {:.3e} pairs/s, compilation included)",
            result.shape,
            result.dtype(),
            seconds * 1e3,
            size.n,
            size.m,
            (size.n * size.m) as f64 / seconds
        );
        let values = result.to_f64();
        let width = result.shape.get(1).copied().unwrap_or(1).max(1);
        for (r, row) in values.chunks(width).take(3).enumerate() {
            let shown: Vec<String> = row.iter().take(8).map(|v| format!("{v:.6}")).collect();
            let more = if row.len() > 8 { ", ..." } else { "" };
            let _ = writeln!(out, "  [{r}] {}{more}", shown.join(", "));
        }
        if values.len() / width > 3 {
            let _ = writeln!(out, "  ...");
        }
        Ok(())
    }
}

fn no_more(rest: &[&str]) -> Result<(), String> {
    match rest {
        [] => Ok(()),
        [first, ..] => Err(format!("no kernel named `{first}`")),
    }
}

fn parse_dtype(text: &str) -> Result<DType, String> {
    match text {
        "f32" | "float32" => Ok(DType::F32),
        "f64" | "float64" => Ok(DType::F64),
        other => Err(format!("`{other}`: expected f32, f64, or sizes N [M]")),
    }
}

/// Uniform [0, 1) inputs of the kernel's shapes (from a fixed seed).
fn random_inputs(
    sig: &keops_runtime::Signature,
    n: usize,
    m: usize,
    dtype: DType,
) -> Vec<(String, HostArray)> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    sig.args
        .iter()
        .map(|a| {
            let rows = match a.category {
                Category::I => n,
                Category::J => m,
                Category::Param => 1,
            };
            let data: Vec<f64> = (0..rows * a.dim).map(|_| next()).collect();
            let shape = vec![rows, a.dim];
            let array = match dtype {
                DType::F32 => HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
                DType::F64 => HostArray::from_f64(shape, data),
            };
            (a.name.clone(), array)
        })
        .collect()
}

/// Net count of `{` over `}` outside comments: a kernel is complete at 0.
fn brace_depth(text: &str) -> i64 {
    let mut depth = 0;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let code = code.split("//").next().unwrap_or_default();
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
    }
    depth
}
