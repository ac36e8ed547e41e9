//! The REPL's logic, apart from line editing: kernels typed (or pasted) in `.kf` syntax, a line
//! at a time, and commands that print each stage of a kernel. Every stage is printed by its
//! own `Display` (the same as `keopsc explain`), and every error is the CLI's diagnostic; none
//! ends the session.
//!
//! Outside a kernel, a line may also declare a session variable as KeOps aliases are written
//! (`x = Vi(3)`, `x = Vi(0, 3)`), or be a bare formula (`Sum_Reduction(Exp(-SqDist(x, y)), 0)`):
//! the formula becomes a kernel of its own, `f1`, `f2`, ..., whose arguments are the session
//! variables it names. A formula without a reduction is summed over j (`Sum_Reduction(F, 0)`).

use crate::driver::{self, Backend, KernelExplanation};
use crate::opt::OptBudget;
use crate::source::SourceFile;
use keops_runtime::{Category, DType, HostArray};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

pub const HELP: &str = "\
Type kernels in .kf syntax (several lines; a kernel ends when its braces close), or:
  x = Vi(3)                declare a session variable (also Vj, Pm, and KeOps's Vi(pos, dim))
  Sum_Reduction(F, 0)      a bare formula over session variables: it becomes kernel f1, f2, ...
                           (a formula without a reduction is Sum_Reduction(F, 0))
Then:
  :load FILE.kf            define every kernel of a file
  :list                    the kernels and session variables defined so far
  :ast [NAME]              the syntax tree, printed back as .kf
  :checked [NAME]          the checked formula, one node per line with [dimension, category]
  :simplified [NAME]       derivatives expanded, simplified, with its cost per pair
  :grad [NAME] VAR         the simplified gradient Grad(F, VAR, e) of the kernel's formula
  :vjp [NAME] VAR ... [--llvm [f32|f64]]
                           the backward pass of the whole reduction with respect to VAR
                           (several: together, two passes at most): the plan, then each
                           backward kernel checked and simplified (and its LLVM IR)
  :llvm [NAME] [f32|f64]   the CPU schedule and the optimised LLVM IR
  :asm [NAME] [f32|f64]    the host assembly
  :ptx [NAME] [f32|f64]    the GPU schedule, PTX, and ptxas's registers and spills
  :eval [NAME] [N [M]] [f32|f64]
                           runs the kernel on the CPU on uniform random data, with timing
  :eval [NAME] ARG=FILE.npy ...
                           runs it on .npy arrays
  :eval ... -o OUT.npy     also writes the output to OUT.npy
  :power [NAME] T [N] [f32|f64] [ARG=FILE.npy ...] [--operand B] [--same J=I]
         [--normalize STEPS] [-o OUT.npy]
                           the kernel as a linear operator on B (a Sum linear in it, found
                           when left out), applied T times to B's array: A^T B, printed step
                           by step; random data of N points unless files are given;
                           --normalize row|sym|alpha=A,... as keopsc linalg; --same y=x: one
                           cloud, each unordered pair once
  :help, :quit
NAME may be left out when one kernel is defined.";

/// The commands, for completion.
pub const COMMANDS: &[&str] = &[
    ":load",
    ":list",
    ":ast",
    ":checked",
    ":simplified",
    ":grad",
    ":vjp",
    ":llvm",
    ":asm",
    ":ptx",
    ":eval",
    ":power",
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

/// A session variable: its name and its declaration's right-hand side (`Vi(3)`, `Vj(1, 3)`).
struct SessionVariable {
    name: String,
    declaration: String,
}

#[derive(Default)]
pub struct Repl {
    kernels: BTreeMap<String, Defined>,
    /// Session variables, in declaration order.
    variables: Vec<SessionVariable>,
    /// Bare formulas defined so far (they are named `f1`, `f2`, ...).
    formulas: usize,
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
        if open_brackets(&self.pending) > 0 {
            return Step::Continue;
        }
        let text = std::mem::take(&mut self.pending);
        let first_word = text.split_whitespace().next().unwrap_or_default();
        if first_word == "kernel" {
            self.define(&text, out);
        } else if let Some((name, rhs)) = assignment(&text) {
            if is_variable_constructor(rhs) {
                self.declare(name, rhs, out);
            } else {
                let _ = writeln!(
                    out,
                    "error: outside a kernel, `{name} = ...` declares a variable: `{name} = Vi(dim)`, \
                     `Vj(dim)`, `Pm(dim)` or `Vi(pos, dim)`; to name a formula, use `let` inside a kernel"
                );
            }
        } else {
            self.bare_formula(text.trim(), out);
        }
        Step::Continue
    }

    /// `x = Vi(3)` outside a kernel: checked as the declaration of a kernel of its own, then
    /// kept for the bare formulas that name `x`.
    fn declare(&mut self, name: &str, declaration: &str, out: &mut String) {
        self.inputs += 1;
        // Alone in its kernel, a variable can only be at position 0: check the declaration's
        // form with its position replaced (the positions are checked with the formula's).
        let at_zero = match declaration.split_once('(') {
            Some((constructor, rest)) if rest.contains(',') => {
                let after_position = rest.split_once(',').map_or("", |(_, r)| r);
                format!("{constructor}(0,{after_position}")
            }
            _ => declaration.to_string(),
        };
        let text = format!(
            "kernel declaration {{\n    {name} = {at_zero}\n    Sum_Reduction({name}, 0)\n}}\n"
        );
        let source = SourceFile::new(format!("<input {}>", self.inputs), text);
        if let Err((source, diagnostics)) = driver::compile(source) {
            out.push_str(&crate::diagnostic::render_all(
                &diagnostics,
                &source,
                self.color,
            ));
            return;
        }
        let variable = SessionVariable {
            name: name.to_string(),
            declaration: declaration.to_string(),
        };
        let verb = match self.variables.iter_mut().find(|v| v.name == name) {
            Some(existing) => {
                *existing = variable;
                "redeclared"
            }
            None => {
                self.variables.push(variable);
                "declared"
            }
        };
        let _ = writeln!(out, "{verb} variable {name} = {declaration}");
    }

    /// A formula typed outside a kernel: a kernel `fK` over the session variables it names (all
    /// of them when one has an explicit position, so that positions stay 0, 1, ...).
    fn bare_formula(&mut self, formula: &str, out: &mut String) {
        let names = identifiers(formula);
        let positional = self.variables.iter().any(|v| v.declaration.contains(','));
        let used: Vec<&SessionVariable> = self
            .variables
            .iter()
            .filter(|v| positional || names.contains(&v.name))
            .collect();
        let is_reduction = names
            .first()
            .is_some_and(|n| n.ends_with("_Reduction") && formula.starts_with(n.as_str()));
        let mut number = self.formulas;
        let name = loop {
            number += 1;
            let name = format!("f{number}");
            if !self.kernels.contains_key(&name) {
                break name;
            }
        };
        let mut text = format!("kernel {name} {{\n");
        for v in &used {
            let _ = writeln!(text, "    {} = {}", v.name, v.declaration);
        }
        if is_reduction {
            let _ = writeln!(text, "    {formula}\n}}");
        } else {
            let _ = writeln!(text, "    Sum_Reduction({formula}, 0)\n}}");
        }
        let mut defined = String::new();
        self.define(&text, &mut defined);
        if self.kernels.contains_key(&name) {
            // Only a formula that compiled takes a name.
            self.formulas = number;
            if !is_reduction {
                let _ = writeln!(out, "no reduction: summed over j, as Sum_Reduction(F, 0)");
            }
            let _ = writeln!(out, "the formula is kernel {name}");
        }
        out.push_str(&defined);
    }

    /// `:load FILE`: every kernel of a `.kf` file.
    fn load(&mut self, args: &[&str], out: &mut String) -> Result<(), String> {
        let [path] = args else {
            return Err("usage: :load FILE.kf".into());
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
        let source = SourceFile::new(path.to_string(), text);
        self.define_source(source, out);
        Ok(())
    }

    fn define(&mut self, text: &str, out: &mut String) {
        self.inputs += 1;
        let source = SourceFile::new(format!("<input {}>", self.inputs), text);
        self.define_source(source, out);
    }

    fn define_source(&mut self, source: SourceFile, out: &mut String) {
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
            ":load" => self.load(&args, out),
            ":list" => {
                if self.kernels.is_empty() {
                    let _ = writeln!(out, "no kernel defined yet");
                }
                if !self.variables.is_empty() {
                    let declared: Vec<String> = self
                        .variables
                        .iter()
                        .map(|v| format!("{} = {}", v.name, v.declaration))
                        .collect();
                    let _ = writeln!(out, "variables: {}", declared.join(", "));
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
            ":vjp" => self.vjp(&args, out),
            ":llvm" | ":asm" => self.code(command, &args, out),
            ":ptx" => self.ptx(&args, out),
            ":eval" => self.eval(&args, out),
            ":power" => self.power(&args, out),
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

    /// The backward pass of the whole reduction (`crate::vjp::plan_many`): the plan, then every
    /// kernel it runs at the stages the REPL shows.
    fn vjp(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        let usage = "usage: :vjp [NAME] VAR ... [--llvm [f32|f64]]";
        let (vars, llvm) = match rest.iter().position(|w| *w == "--llvm") {
            None => (rest, None),
            Some(at) => {
                let dtype = match &rest[at + 1..] {
                    [] => DType::F32,
                    [d] => parse_dtype(d)?,
                    _ => return Err(usage.into()),
                };
                (&rest[..at], Some(dtype))
            }
        };
        if vars.is_empty() {
            return Err(usage.into());
        }
        let (k, _) = self.explain_source(&defined.source)?;
        let plan = crate::vjp::plan_many(&k.checked, vars).map_err(|e| e.to_string())?;
        let _ = write!(out, "{plan}");
        for (role, kernel) in plan.kernels() {
            let _ = writeln!(out, "== {role}: {} ==", kernel.name);
            match &plan.selected {
                // The per-entry kernel runs on a table of entries, not over an inner index.
                Some(selected) if std::ptr::eq(&selected.kernel, kernel) => {
                    let _ = writeln!(
                        out,
                        "-- checked --\n{}\n  formula: {}\n{}",
                        selected.per_entry_signature(&plan.forward),
                        kernel.formula.to_text(kernel.formula.root()),
                        kernel.formula
                    );
                }
                _ => {
                    let _ = writeln!(out, "-- checked --\n{kernel}");
                }
            }
            let optimized = crate::opt::optimize(kernel, &self.budget).map_err(|d| d.message)?;
            let _ = writeln!(out, "-- simplified ({}) --", optimized.simplification);
            let _ = write!(out, "{optimized}");
            if let Some(dtype) = llvm {
                let code = driver::cpu_code(&optimized, dtype).map_err(|e| e.to_string())?;
                let _ = writeln!(out, "-- schedule ({dtype}) --\n{}", code.schedule_text);
                let _ = writeln!(out, "-- llvm (optimised) --\n{}", code.llvm_ir);
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
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

    fn ptx(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        let (defined, rest) = self.target(args)?;
        let dtype = match rest {
            [] => DType::F32,
            [d] => parse_dtype(d)?,
            _ => return Err("usage: :ptx [NAME] [f32|f64]".to_string()),
        };
        let (k, _) = self.explain_source(&defined.source)?;
        let text = crate::driver::explain_gpu(&k.checked, dtype).map_err(|e| e.to_string())?;
        out.push_str(&text);
        Ok(())
    }

    fn eval(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        // `-o FILE.npy` anywhere among the arguments: where to write the output.
        let mut output = None;
        let mut kept = Vec::with_capacity(args.len());
        let mut words = args.iter();
        while let Some(&word) = words.next() {
            if word == "-o" {
                let path = words
                    .next()
                    .ok_or("`-o` needs a file: :eval ... -o OUT.npy")?;
                output = Some(std::path::PathBuf::from(path));
            } else {
                kept.push(word);
            }
        }
        // Checked before any work: a run is not lost to a path that cannot be written.
        if let Some(path) = &output {
            let existed = path.exists();
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| format!("output `{}`: {e}", path.display()))?;
            if !existed {
                let _ = std::fs::remove_file(path);
            }
        }
        let args = kept.as_slice();
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
        let result = driver::evaluate(kernel, &inputs, Backend::Cpu)
            .map_err(|e| e.to_string())?
            .output;
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
        if let Some(path) = output {
            result
                .write_npy(&path)
                .map_err(|e| format!("output `{}`: {e}", path.display()))?;
            let _ = writeln!(out, "wrote {}", path.display());
        }
        Ok(())
    }
}

/// `:power`'s flags, and the words that are not flags (name, counts, dtype, files).
struct PowerFlags<'a> {
    output: Option<std::path::PathBuf>,
    operand: Option<String>,
    same: Vec<String>,
    normalize: String,
    rest: Vec<&'a str>,
}

impl<'a> PowerFlags<'a> {
    fn parse(args: &[&'a str]) -> Result<PowerFlags<'a>, String> {
        let mut flags = PowerFlags {
            output: None,
            operand: None,
            same: Vec::new(),
            normalize: String::new(),
            rest: Vec::with_capacity(args.len()),
        };
        let mut words = args.iter();
        while let Some(&word) = words.next() {
            let mut value = |flag: &str| {
                words
                    .next()
                    .map(|v| v.to_string())
                    .ok_or_else(|| format!("`{flag}` needs a value"))
            };
            match word {
                "-o" => flags.output = Some(std::path::PathBuf::from(value("-o")?)),
                "--operand" => flags.operand = Some(value("--operand")?),
                "--same" => flags.same.push(value("--same")?),
                "--normalize" => flags.normalize = value("--normalize")?,
                _ => flags.rest.push(word),
            }
        }
        Ok(flags)
    }
}

impl Repl {
    /// `:power`: the kernel as a linear operator, applied repeatedly.
    fn power(&self, args: &[&str], out: &mut String) -> Result<(), String> {
        use keops_runtime::linalg::{KernelOperator, LinearOperator, Normalization, Scaled};
        let flags = PowerFlags::parse(args)?;
        let normalize = &flags.normalize;
        let steps =
            Normalization::parse_list(normalize).map_err(|e| format!("--normalize: {e}"))?;
        let (defined, rest) = self.target(&flags.rest)?;
        let compiled = driver::compile(SourceFile::new("<kernel>", defined.source.as_str()))
            .map_err(|(s, d)| crate::diagnostic::render_all(&d, &s, self.color))?;
        let kernel = &compiled.kernels[0];
        let sig = &kernel.signature;
        let position = |name: &str| {
            sig.args
                .iter()
                .position(|a| a.name == name)
                .ok_or_else(|| format!("kernel `{}` has no argument `{name}`", kernel.name))
        };
        let mut same = Vec::new();
        for text in &flags.same {
            let (j, i) = text
                .split_once('=')
                .ok_or_else(|| format!("--same `{text}`: expected J=I"))?;
            same.push((position(j.trim())?, position(i.trim())?));
        }
        let (t, mut inputs, dtype) = power_inputs(sig, rest, &same)?;
        let operand = match flags.operand {
            Some(name) => name,
            // The starting vector is given as the operand's data: the operand is the one
            // candidate that --same does not pair.
            None => crate::operator::find_operand(kernel, |name| {
                same.iter().any(|&(j, _)| sig.args[j].name == name)
            })
            .map_err(|e| format!("{e}: use --operand"))?,
        };
        let start_vector = inputs
            .iter()
            .position(|(n, _)| *n == operand)
            .map(|k| inputs.remove(k).1)
            .ok_or_else(|| {
                format!("the operand `{operand}` is not given: pass {operand}=FILE.npy")
            })?;
        let dtype = inputs.first().map_or(dtype, |(_, a)| a.dtype());
        let compiled_kernel = crate::operator::compile_operator_kernel(kernel, &same, dtype)
            .map_err(|e| e.to_string())?;
        let op =
            KernelOperator::new(compiled_kernel, &operand, inputs).map_err(|e| e.to_string())?;
        let pairs_once = op.pairs_once();
        let op = Scaled::normalized(op, &steps).map_err(|e| e.to_string())?;
        let ncols = start_vector.shape.get(1).copied().unwrap_or(1).max(1);
        if start_vector.shape.first() != Some(&op.cols()) {
            return Err(format!(
                "`{operand}` has {} rows; the operator has {} columns",
                start_vector.shape.first().copied().unwrap_or(0),
                op.cols()
            ));
        }
        let _ = writeln!(
            out,
            "{} x {} operator on `{operand}` ({ncols} column{}{}{}), {} step{}",
            op.rows(),
            op.cols(),
            if ncols == 1 { "" } else { "s" },
            if normalize.is_empty() {
                String::new()
            } else {
                format!(", normalised {normalize}")
            },
            if pairs_once {
                ", each unordered pair once"
            } else {
                ""
            },
            t,
            if t == 1 { "" } else { "s" }
        );
        let v = apply_power(&op, start_vector.to_f64(), ncols, t, out)?;
        if let Some(path) = flags.output {
            let shape = vec![op.rows(), ncols];
            let array = match dtype {
                DType::F64 => HostArray::from_f64(shape, v),
                DType::F32 => HostArray::from_f32(shape, v.iter().map(|&x| x as f32).collect()),
            };
            array
                .write_npy(&path)
                .map_err(|e| format!("output `{}`: {e}", path.display()))?;
            let _ = writeln!(out, "wrote {}", path.display());
        }
        Ok(())
    }
}

/// Arrays with the names of the arguments they are for.
type NamedArrays = Vec<(String, HostArray)>;

/// `:power`'s words after the kernel's name: the number of steps T, then N (random data of N
/// points when no file is given, 1000 by default) or `NAME=FILE.npy` arguments, and a dtype;
/// `--same` pairs filled from the arrays they name. Returns T, the named arrays and the dtype.
fn power_inputs(
    sig: &keops_runtime::Signature,
    rest: &[&str],
    same: &[(usize, usize)],
) -> Result<(usize, NamedArrays, DType), String> {
    let (files, numbers): (Vec<&str>, Vec<&str>) = rest.iter().partition(|a| a.contains('='));
    let mut counts = Vec::new();
    let mut dtype = DType::F32;
    for a in &numbers {
        match a.parse::<usize>() {
            Ok(v) => counts.push(v),
            Err(_) => dtype = parse_dtype(a)?,
        }
    }
    let t = *counts
        .first()
        .ok_or(":power needs the number of steps T: :power [NAME] T [N] ...")?;
    let mut inputs: Vec<(String, HostArray)> = if files.is_empty() {
        let n = counts.get(1).copied().unwrap_or(1000);
        random_inputs(sig, n, n, dtype)
    } else {
        files
            .iter()
            .map(|a| {
                let (name, path) = a.split_once('=').expect("partitioned on '='");
                let array = HostArray::read_npy(std::path::Path::new(path))
                    .map_err(|e| format!("argument `{name}`: {e}"))?;
                Ok((name.to_string(), array))
            })
            .collect::<Result<_, String>>()?
    };
    for &(j, i) in same {
        let data = inputs
            .iter()
            .find(|(n, _)| *n == sig.args[i].name)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("--same: `{}` is not given", sig.args[i].name))?;
        inputs.retain(|(n, _)| *n != sig.args[j].name);
        inputs.push((sig.args[j].name.clone(), data));
    }
    Ok((t, inputs, dtype))
}

/// `v` multiplied `t` times by `op`, each step's time, norm and first values printed.
fn apply_power(
    op: &impl keops_runtime::linalg::LinearOperator,
    mut v: Vec<f64>,
    ncols: usize,
    t: usize,
    out: &mut String,
) -> Result<Vec<f64>, String> {
    let total = Instant::now();
    for step in 1..=t {
        let started = Instant::now();
        v = op.apply(&v, ncols).map_err(|e| e.to_string())?;
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let shown: Vec<String> = v.iter().take(3).map(|x| format!("{x:.6}")).collect();
        let _ = writeln!(
            out,
            "  step {step}: {:.2} ms, |v| = {norm:.6e}, v = [{}{}]",
            started.elapsed().as_secs_f64() * 1e3,
            shown.join(", "),
            if v.len() > 3 { ", ..." } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "{t} products in {:.3} s",
        total.elapsed().as_secs_f64()
    );
    Ok(v)
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

/// Net count of opening over closing brackets (`{ ( [`) outside comments: a kernel or a
/// formula is complete at 0.
fn open_brackets(text: &str) -> i64 {
    let mut depth = 0;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let code = code.split("//").next().unwrap_or_default();
        for c in code.chars() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                _ => {}
            }
        }
    }
    depth
}

/// `NAME = RHS` on one line (comments dropped): the name and the right-hand side.
fn assignment(text: &str) -> Option<(&str, &str)> {
    let code = text.split('#').next().unwrap_or_default();
    let code = code.split("//").next().unwrap_or_default().trim();
    let (name, rhs) = code.split_once('=')?;
    let (name, rhs) = (name.trim(), rhs.trim());
    let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (is_name && name != "let" && !rhs.is_empty()).then_some((name, rhs))
}

/// `Vi(...)`, `Vj(...)`, `Pm(...)` or `Var(...)`: a variable's declaration.
fn is_variable_constructor(rhs: &str) -> bool {
    ["Vi(", "Vj(", "Pm(", "Var("]
        .iter()
        .any(|p| rhs.starts_with(p))
        && rhs.ends_with(')')
}

/// The identifiers of a formula, in order of appearance (comments dropped).
fn identifiers(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let code = code.split("//").next().unwrap_or_default();
        for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                names.push(word.to_string());
            }
        }
    }
    names
}
