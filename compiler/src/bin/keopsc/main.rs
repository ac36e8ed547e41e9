//! `keopsc`: compile and evaluate KeOps formulas written in `.kf` files.

mod eval;
mod inputs;
mod linalg;
mod vjp;

use clap::{Parser, Subcommand};
use keopsc::diagnostic::{render_all, Diagnostic};
use keopsc::driver::{self, CompiledFile};
use keopsc::opt::rules::RuleSet;
use keopsc::opt::OptBudget;
use keopsc::source::SourceFile;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keopsc",
    version,
    about = "Compiler for KeOps formulas (.kf files)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a file; print each kernel's signature, or the diagnostics.
    Check {
        file: PathBuf,
        /// Also print each kernel's formula, one node per line with [dimension, category].
        #[arg(long)]
        verbose: bool,
    },
    /// Show every stage: AST, checked formula, derivatives, simplified formula and its cost.
    Explain {
        file: PathBuf,
        /// Only this kernel.
        #[arg(long)]
        kernel: Option<String>,
        /// Also print the time spent in each stage.
        #[arg(long)]
        timings: bool,
        /// Run the stages this many times and report the fastest time of each (with --timings).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Simplify with exact rules only (no rule that changes results beyond rounding).
        #[arg(long, conflicts_with = "all_rules")]
        exact: bool,
        /// Simplify with every rule, including those wrong on part of the domain (lang-spec/optimizer.md).
        #[arg(long)]
        all_rules: bool,
        /// Also show the CPU schedule (what runs per call, row, inner index and pair) and the
        /// optimised LLVM IR.
        #[arg(long)]
        llvm: bool,
        /// Also show the host assembly.
        #[arg(long)]
        asm: bool,
        /// Also show the GPU kernel: its schedule, PTX, and ptxas's registers and spills.
        #[arg(long)]
        ptx: bool,
        /// Element type of the generated code shown by --llvm/--asm/--ptx: f32 or f64.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Evaluate a kernel on .npy arrays.
    Eval {
        file: PathBuf,
        /// The kernel to run; may be left out when the file holds one kernel.
        #[arg(long)]
        kernel: Option<String>,
        /// NAME=FILE.npy, once per argument (inline `Vi(pos, dim)` variables are named by pos).
        /// Arrays may carry leading batch axes, broadcast as in numpy: `(B..., N, D)`,
        /// `(B..., M, D)`, `(B..., D)`; on the CPU every batch runs in one parallel region.
        #[arg(long = "arg", value_name = "NAME=FILE.npy")]
        args: Vec<String>,
        /// J=I: the j-variable J takes the data of the i-variable I (no `--arg J`; M = N).
        /// Repeatable.
        #[arg(long = "same", value_name = "J=I")]
        same: Vec<String>,
        /// Where to write the output array (checked before any work).
        #[arg(short, long, value_name = "OUT.npy")]
        output: PathBuf,
        /// For reductions returning values and indices (Min_ArgMin, Max_ArgMax, KMin_ArgKMin):
        /// write the indices to this file, apart from the values in -o (int64 unless
        /// --index-dtype float).
        #[arg(long, value_name = "IDX.npy")]
        indices_out: Option<PathBuf>,
        /// float (the input dtype, KeOps's convention; the default in -o) or int64 (the default
        /// in --indices-out). Arg-only reductions (ArgMin, ArgKMin, ...) with int64 write int64
        /// to -o.
        #[arg(long, value_name = "float|int64")]
        index_dtype: Option<String>,
        /// interp, cpu or cuda; the fastest available when left out.
        #[arg(long)]
        backend: Option<String>,
        /// Block-sparse reduction (KeOps's ranges): three int64 .npy arrays, for a reduction
        /// over j `ranges_i` (C, 2), `slices_i` (C,), `redranges_j` (R, 2) (over i:
        /// ranges_j, slices_j, redranges_i); only the kept pairs are visited (cpu or cuda backend).
        #[arg(long, num_args = 3, value_names = ["ROWS.npy", "SLICES.npy", "INNER.npy"])]
        ranges: Option<Vec<PathBuf>>,
        /// Print to stderr the time of each step (front end, reading, compiling, running,
        /// writing) and the speed in (i, j) pairs per second.
        #[arg(long, short = 'v', visible_alias = "verbose")]
        timings: bool,
    },
    /// The gradient of a kernel's output with respect to an input: `d/dVAR sum(G * out)` for a
    /// cotangent G shaped like the output, written shaped like VAR. `--wrt` may be repeated,
    /// with one `-o` each in the same order: the inputs are then differentiated together, in
    /// two passes at most.
    Vjp {
        file: PathBuf,
        /// The kernel; may be left out when the file holds one kernel.
        #[arg(long)]
        kernel: Option<String>,
        /// The input to differentiate with respect to (an i-, j-variable or a parameter);
        /// repeated for several inputs at once.
        #[arg(long, value_name = "VAR", required = true)]
        wrt: Vec<String>,
        /// NAME=FILE.npy, once per argument, as for `eval` (batch axes too).
        #[arg(long = "arg", value_name = "NAME=FILE.npy")]
        args: Vec<String>,
        /// J=I, as for `eval`: the j-variable J takes the data of the i-variable I. `--wrt I`
        /// then gives the total derivative (through I and J).
        #[arg(long = "same", value_name = "J=I")]
        same: Vec<String>,
        /// The cotangent G: the output's shape and the inputs' dtype.
        #[arg(long, value_name = "G.npy")]
        cotangent: PathBuf,
        /// The saved forward rows, already computed, so that the backward needs no forward
        /// pass: the kernel's output for LogSumExp, LogSumExpWeight, Max_SumShiftExp and
        /// Max_SumShiftExpWeight; `(out, L)` for SumSoftMaxWeight. Ignored (with a note) by a
        /// reduction whose backward reads none.
        #[arg(long, value_name = "OUT.npy")]
        saved: Option<PathBuf>,
        /// Where to write the gradient (checked before any work); one per `--wrt`, in the
        /// same order.
        #[arg(short, long, value_name = "dVAR.npy", required = true)]
        output: Vec<PathBuf>,
        /// interp, cpu or cuda; the fastest available when left out.
        #[arg(long)]
        backend: Option<String>,
        /// The gradient of a block-sparse reduction (KeOps's ranges): the six int64 .npy
        /// arrays of KeOps's 6-tuple, `ranges_i` `slices_i` `redranges_j` `ranges_j` `slices_j`
        /// `redranges_i` (both halves: the backward passes reduce over both axes; cpu or cuda backend).
        #[arg(long, num_args = 6, value_names = ["RANGES_I.npy", "SLICES_I.npy", "REDRANGES_J.npy", "RANGES_J.npy", "SLICES_J.npy", "REDRANGES_I.npy"])]
        ranges: Option<Vec<PathBuf>>,
        /// Print to stderr the time of the whole computation.
        #[arg(long, short = 'v', visible_alias = "verbose")]
        timings: bool,
    },
    /// A kernel as a linear operator on one of its arguments: solve, eigs, power
    /// (lang-spec/linalg.md).
    Linalg {
        #[command(subcommand)]
        command: linalg::LinalgCommand,
    },
    /// An interactive session: type kernels in .kf syntax, inspect every stage (`:help`).
    /// Reads piped input too.
    Repl,
    /// Compile every kernel of a file ahead of time into a module directory (a shared library
    /// and its manifest), loadable by `keops_runtime::Module::load` without LLVM.
    Build {
        file: PathBuf,
        /// The module directory to write; `<file stem>.kmod` when left out.
        #[arg(short, long, value_name = "OUT.kmod")]
        output: Option<PathBuf>,
        /// `host` (the best x86-64 level this machine has), or x86-64, x86-64-v2, x86-64-v3,
        /// x86-64-v4.
        #[arg(long, default_value = "host")]
        target: String,
        /// Element types to compile for (f32, f64); both when left out.
        #[arg(long = "dtype")]
        dtypes: Vec<String>,
        /// Also store every kernel's gradients (the backward kernels of each input and of all
        /// inputs at once), so that a program linking only the runtime computes them
        /// (`Kernel::vjp`).
        #[arg(long)]
        grad: bool,
        /// `J=I`: also store, for every `Sum` kernel with a j-variable J and an i-variable I
        /// of one dimension, its pass over unordered pairs, which the runtime runs when J's
        /// array holds I's data (`Kernel::call_symmetric`, linear operators): about half the
        /// work of a full evaluation. Repeatable.
        #[arg(long = "same", value_name = "J=I")]
        same: Vec<String>,
        /// Also store every kernel's GPU code: its 1-D kernel as PTX (sm_80, JIT-compiled by
        /// the driver for later GPUs), one file per dtype, which the runtime's CUDA part loads
        /// without the compiler.
        #[arg(long)]
        gpu: bool,
    },
    /// Measure the CPU backend on the reference workloads (W1, W1s, W2, W2L, W3..W5), with the C
    /// baseline and pykeops measured in the same run.
    Bench {
        /// Only these workloads (W1, W1s, W2, W2L, W3, W4, W5, the backward passes W1v, W3v, and W1g, W1sym, B1, R1, the cliffs C1);
        /// all when left out.
        #[arg(long = "workload")]
        workloads: Vec<String>,
        /// N = M, once per size.
        #[arg(long = "size", default_values_t = [10_000usize, 30_000])]
        sizes: Vec<usize>,
        /// f32, f64 or both.
        #[arg(long = "dtype", default_values_t = [String::from("f32"), String::from("f64")])]
        dtypes: Vec<String>,
        /// Calls per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// The C baseline for W1 (built with gcc -O3 -march=native -ffast-math -fopenmp).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bench/gauss_c.c"))]
        c_baseline: PathBuf,
        /// Skip the C programs: the baseline, and the peak FMA rate the bounds are taken from.
        #[arg(long)]
        no_c: bool,
        /// Also time pykeops (W1, f32) through python3, when it is installed.
        #[arg(long)]
        pykeops: bool,
        /// Also measure the on-disk compile cache's cold and warm latency, and the time of a
        /// vjp call on a tiny problem with and without the process's compiled backward kernels.
        #[arg(long)]
        cache: bool,
        /// cpu (every workload) or cuda (the forward workloads on the first GPU, beside the
        /// CPU's figures in the same run; a build with the `cuda` feature).
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
}

/// An error already explained to the user on stderr.
struct Reported;

/// The front end recurses over the syntax tree, so a formula nested thousands of levels deep
/// (a long generated sum is a left-deep tree) needs more than the main thread's stack. The
/// stack is reserved, not committed: it costs nothing until used.
const STACK_BYTES: usize = 1 << 30;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let worker = std::thread::Builder::new()
        .name("keopsc".into())
        .stack_size(STACK_BYTES)
        .spawn(move || run(cli));
    match worker.map(|handle| handle.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => {
            // The panic message was printed by the hook; say whose fault it is.
            eprintln!("error: internal error in keopsc (a bug, not a problem with the input); please report it");
            ExitCode::from(101)
        }
        Err(e) => {
            eprintln!("error: cannot start keopsc's worker thread: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check { file, verbose } => check(&file, verbose),
        Command::Explain {
            file,
            kernel,
            timings,
            repeat,
            exact,
            all_rules,
            llvm,
            asm,
            ptx,
            dtype,
        } => {
            let rules = match (exact, all_rules) {
                (true, _) => RuleSet::Exact,
                (_, true) => RuleSet::All,
                _ => RuleSet::Default,
            };
            let code = CodeShown {
                llvm,
                asm,
                ptx,
                dtype,
            };
            explain(&file, kernel.as_deref(), timings, repeat, rules, &code)
        }
        Command::Eval {
            file,
            kernel,
            args,
            same,
            output,
            indices_out,
            index_dtype,
            backend,
            ranges,
            timings,
        } => eval::eval(&eval::EvalRequest {
            file: &file,
            kernel: kernel.as_deref(),
            args: &args,
            same: &same,
            output: &output,
            indices_out: indices_out.as_deref(),
            index_dtype: index_dtype.as_deref(),
            backend: backend.as_deref(),
            ranges: ranges.as_deref(),
            timings,
        }),
        Command::Vjp {
            file,
            kernel,
            wrt,
            args,
            same,
            cotangent,
            saved,
            output,
            backend,
            ranges,
            timings,
        } => vjp::vjp(&vjp::VjpRequest {
            file: &file,
            kernel: kernel.as_deref(),
            wrt: &wrt,
            args: &args,
            same: &same,
            cotangent: &cotangent,
            saved: saved.as_deref(),
            outputs: &output,
            backend: backend.as_deref(),
            ranges: ranges.as_deref(),
            timings,
        }),
        Command::Linalg { command } => linalg::run(command),
        Command::Repl => repl(),
        Command::Build {
            file,
            output,
            target,
            dtypes,
            grad,
            same,
            gpu,
        } => build(&file, output, &target, &dtypes, grad, &same, gpu),
        Command::Bench {
            workloads,
            sizes,
            dtypes,
            repeat,
            c_baseline,
            no_c,
            pykeops,
            cache,
            backend,
        } => bench(
            workloads,
            sizes,
            &dtypes,
            repeat,
            (!no_c).then_some(c_baseline),
            (pykeops, cache),
            &backend,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Reported) => ExitCode::FAILURE,
    }
}

fn fail(message: impl std::fmt::Display) -> Reported {
    eprintln!("error: {message}");
    Reported
}

fn use_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn read_source(path: &Path) -> Result<SourceFile, Reported> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read `{}`: {e}", path.display())))?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

fn report_diagnostics((source, diagnostics): (SourceFile, Vec<Diagnostic>)) -> Reported {
    eprint!("{}", render_all(&diagnostics, &source, use_color()));
    let n = diagnostics.len();
    eprintln!(
        "error: {n} error{} in `{}`",
        if n == 1 { "" } else { "s" },
        source.name
    );
    Reported
}

fn load(path: &Path) -> Result<CompiledFile, Reported> {
    driver::compile(read_source(path)?).map_err(report_diagnostics)
}

/// Which generated code `explain` prints.
struct CodeShown {
    llvm: bool,
    asm: bool,
    ptx: bool,
    dtype: String,
}

fn parse_dtype(text: &str) -> Result<keops_runtime::DType, Reported> {
    match text {
        "f32" | "float32" => Ok(keops_runtime::DType::F32),
        "f64" | "float64" => Ok(keops_runtime::DType::F64),
        other => Err(fail(format!(
            "unknown dtype `{other}` (expected f32 or f64)"
        ))),
    }
}

fn explain(
    path: &Path,
    kernel: Option<&str>,
    timings: bool,
    repeat: usize,
    rules: RuleSet,
    code: &CodeShown,
) -> Result<(), Reported> {
    let dtype = parse_dtype(&code.dtype)?;
    let budget = OptBudget {
        rules,
        ..OptBudget::default()
    };
    let source = read_source(path)?;
    let (kernels, mut stage_times) =
        driver::explain(source.clone(), &budget).map_err(report_diagnostics)?;
    for _ in 1..repeat {
        let (_, t) = driver::explain(source.clone(), &budget).map_err(report_diagnostics)?;
        stage_times = stage_times.fastest(&t);
    }
    let mut shown = 0;
    for k in kernels
        .iter()
        .filter(|k| kernel.is_none_or(|name| k.checked.name == name))
    {
        println!("== kernel {} ==\n{k}", k.checked.name);
        if code.llvm || code.asm {
            let generated =
                driver::cpu_code(&k.optimized, dtype).map_err(|e| fail(e.to_string()))?;
            println!("-- schedule ({dtype}) --\n{}", generated.schedule_text);
            if code.llvm {
                println!("-- llvm (optimised) --\n{}", generated.llvm_ir);
            }
            if code.asm {
                println!(
                    "-- assembly ({}) --\n{}",
                    generated.target_cpu, generated.assembly
                );
            }
        }
        if code.ptx {
            let text = driver::explain_gpu(&k.checked, dtype).map_err(|e| fail(e.to_string()))?;
            print!("{text}");
        }
        shown += 1;
    }
    if shown == 0 {
        return Err(fail(format!(
            "no kernel `{}` in `{}`",
            kernel.unwrap_or(""),
            path.display()
        )));
    }
    if timings {
        let runs = if repeat > 1 {
            format!(" (fastest of {repeat} runs)")
        } else {
            String::new()
        };
        println!("timings{runs}: {stage_times}");
        // Code generation, the stages after simplification, for the dtype of --dtype.
        let mut codegen =
            driver::codegen_timings(&kernels, dtype).map_err(|e| fail(e.to_string()))?;
        for _ in 1..repeat {
            let again =
                driver::codegen_timings(&kernels, dtype).map_err(|e| fail(e.to_string()))?;
            codegen = codegen.fastest(&again);
        }
        println!("code generation ({dtype}){runs}: {codegen}");
    }
    Ok(())
}

fn check(path: &Path, verbose: bool) -> Result<(), Reported> {
    let compiled = load(path)?;
    for kernel in &compiled.kernels {
        if verbose {
            println!("{kernel}");
        } else {
            println!("{}", kernel.signature);
        }
    }
    Ok(())
}

fn bench(
    workloads: Vec<String>,
    sizes: Vec<usize>,
    dtypes: &[String],
    repeats: usize,
    c_baseline: Option<PathBuf>,
    (pykeops, cache): (bool, bool),
    backend: &str,
) -> Result<(), Reported> {
    let backend = match driver::Backend::parse(backend) {
        Some(b @ (driver::Backend::Cpu | driver::Backend::Cuda)) => b,
        _ => {
            eprintln!("error: `keopsc bench --backend {backend}`: choose cpu or cuda");
            return Err(Reported);
        }
    };
    if let Err(e) = backend.ensure_available() {
        eprintln!("error: {e}");
        return Err(Reported);
    }
    let mut parsed = Vec::new();
    for d in dtypes {
        parsed.push(parse_dtype(d)?);
    }
    for w in &workloads {
        let known = keopsc::bench::workload_ids();
        if !known.contains(&w.as_str()) {
            eprintln!(
                "error: unknown workload `{w}` (expected one of {})",
                known.join(", ")
            );
            return Err(Reported);
        }
    }
    let options = keopsc::bench::BenchOptions {
        workloads,
        sizes,
        dtypes: parsed,
        repeats,
        c_baseline,
        pykeops,
        cache,
        backend,
    };
    let mut stdout = std::io::stdout();
    keopsc::bench::run(&options, &mut stdout).map_err(|e| {
        eprintln!("error: {e}");
        Reported
    })?;
    Ok(())
}

fn build(
    path: &Path,
    output: Option<PathBuf>,
    target: &str,
    dtypes: &[String],
    grad: bool,
    same: &[String],
    gpu: bool,
) -> Result<(), Reported> {
    let pairs = parse_same_names(same)?;
    let target = if target == "host" {
        keopsc::codegen::host_cpu_level()
    } else {
        keopsc::codegen::cpu_level(target).ok_or_else(|| {
            fail(format!(
                "unknown target `{target}` (expected host, {})",
                keopsc::target::cpu::LEVELS.join(", ")
            ))
        })?
    };
    let mut parsed = Vec::new();
    for d in dtypes {
        parsed.push(parse_dtype(d)?);
    }
    if parsed.is_empty() {
        parsed = vec![keops_runtime::DType::F32, keops_runtime::DType::F64];
    }
    let compiled = load(path)?;
    let out = output.unwrap_or_else(|| {
        let stem = path
            .file_stem()
            .map_or("module".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("{stem}.kmod"))
    });
    if !pairs.is_empty() {
        some_kernel_pays_for_pairs(&compiled, &pairs, path)?;
    }
    let options = keopsc::artifact::BuildOptions {
        gradients: grad,
        same: pairs,
        gpu,
    };
    let report = keopsc::artifact::build_with_options(
        &compiled,
        &parsed,
        &target,
        &out,
        &[],
        keopsc::artifact::Placement::Replace,
        &options,
    )
    .map_err(|e| fail(e.to_string()))?;
    print_build_report(&compiled, &report, &out, &target.cpu, grad);
    Ok(())
}

/// `--same J=I` flags as `(J, I)` names.
fn parse_same_names(same: &[String]) -> Result<Vec<(String, String)>, Reported> {
    let mut pairs = Vec::new();
    for text in same {
        match text.split_once('=') {
            Some((j, i)) if !j.trim().is_empty() && !i.trim().is_empty() => {
                pairs.push((j.trim().to_string(), i.trim().to_string()))
            }
            _ => {
                return Err(fail(format!(
                    "--same `{text}`: expected J=I, a j-variable and the i-variable whose data it holds"
                )))
            }
        }
    }
    Ok(pairs)
}

/// `--same` is refused when no kernel of the file can use it, with each kernel's reason.
fn some_kernel_pays_for_pairs(
    compiled: &keopsc::driver::CompiledFile,
    pairs: &[(String, String)],
    path: &Path,
) -> Result<(), Reported> {
    let reasons: Vec<String> = compiled
        .kernels
        .iter()
        .filter_map(|k| {
            let found = keopsc::artifact::pairs_of(k, pairs);
            keopsc::symmetric::plan_if_it_pays(k, &found)
                .err()
                .map(|e| e.to_string())
        })
        .collect();
    if reasons.len() == compiled.kernels.len() {
        return Err(fail(format!(
            "--same: no kernel of `{}` can be evaluated over unordered pairs: {}",
            path.display(),
            reasons.join("; ")
        )));
    }
    Ok(())
}

/// What `keopsc build` wrote: each kernel's signature, gradients, symmetric pass and GPU code,
/// then the notes (kernels without gradients, or without a symmetric pass).
fn print_build_report(
    compiled: &keopsc::driver::CompiledFile,
    report: &keopsc::artifact::BuildReport,
    out: &Path,
    cpu: &str,
    grad: bool,
) {
    println!(
        "wrote {} ({} kernel{}, {}, code generation {:.1} ms, link {:.1} ms)",
        out.display(),
        report.manifest.kernels.len(),
        if report.manifest.kernels.len() == 1 {
            ""
        } else {
            "s"
        },
        cpu,
        report.codegen.as_secs_f64() * 1e3,
        report.link.as_secs_f64() * 1e3
    );
    for (k, described) in compiled.kernels.iter().zip(&report.manifest.kernels) {
        println!("  {}", k.signature);
        if !described.gradients.is_empty() {
            let sets: Vec<String> = described
                .gradients
                .iter()
                .map(|g| format!("d{}", g.wrt.join(", d")))
                .collect();
            println!("    gradients: {}", sets.join("; "));
        }
        if let Some(stored) = &described.symmetric {
            let pairs: Vec<String> = stored
                .same
                .iter()
                .map(|&[j, i]| {
                    format!(
                        "{} = {}",
                        k.signature.args[j].name, k.signature.args[i].name
                    )
                })
                .collect();
            println!("    each unordered pair once when {}", pairs.join(", "));
        }
        for e in &described.gpu {
            println!(
                "    GPU: {} ({}, {} threads per block, {} bytes of shared memory)",
                e.file, e.arch, e.block, e.shared_bytes
            );
        }
    }
    if grad {
        println!(
            "  {} backward kernel{}",
            report.manifest.backward_kernels.len(),
            if report.manifest.backward_kernels.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    for name in &report.not_differentiable {
        eprintln!("note: `{name}` returns indices only: it has no gradient");
    }
    if report
        .manifest
        .kernels
        .iter()
        .any(|k| k.symmetric.is_some())
    {
        for reason in &report.not_symmetric {
            eprintln!("note: {reason}");
        }
    }
}

/// Completion of operator names, commands and kernel names for the REPL.
struct ReplHelper {
    kernels: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
}

impl rustyline::completion::Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |k| k + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let kernels = self.kernels.borrow();
        let mut found: Vec<String> = keopsc::repl::COMMANDS
            .iter()
            .map(|c| c.to_string())
            .chain(
                keopsc::check::operators::OPERATORS
                    .iter()
                    .map(|o| o.name.to_string()),
            )
            .chain(
                keops_runtime::ReductionKind::ALL
                    .iter()
                    .map(|k| k.to_string()),
            )
            .chain(kernels.iter().cloned())
            .filter(|name| name.starts_with(word))
            .collect();
        found.sort();
        found.dedup();
        Ok((start, found))
    }
}

impl rustyline::hint::Hinter for ReplHelper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for ReplHelper {}
impl rustyline::validate::Validator for ReplHelper {}
impl rustyline::Helper for ReplHelper {}

fn repl() -> Result<(), Reported> {
    use std::io::{BufRead, Write};
    let mut session = keopsc::repl::Repl::new();
    let interactive = std::io::stdin().is_terminal();
    session.color = interactive && std::io::stdout().is_terminal();
    if !interactive {
        // Piped input: no prompts, no line editing; the output is the transcript.
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| fail(format!("cannot read standard input: {e}")))?;
            let mut out = String::new();
            let step = session.handle_line(&line, &mut out);
            print!("{out}");
            let _ = std::io::stdout().flush();
            if step == keopsc::repl::Step::Quit {
                break;
            }
        }
        return Ok(());
    }
    let kernels = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut editor: rustyline::Editor<ReplHelper, rustyline::history::DefaultHistory> =
        rustyline::Editor::new().map_err(|e| fail(format!("cannot start line editing: {e}")))?;
    editor.set_helper(Some(ReplHelper {
        kernels: kernels.clone(),
    }));
    let history = keopsc::artifact::cache::CompileCache::default_dir().join("repl-history");
    let _ = editor.load_history(&history);
    println!(
        "keopsc {} REPL: type a kernel in .kf syntax, or :help",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let prompt = if session.is_pending() { "... " } else { "kf> " };
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let mut out = String::new();
                let step = session.handle_line(&line, &mut out);
                print!("{out}");
                *kernels.borrow_mut() = session.kernel_names();
                if step == keopsc::repl::Step::Quit {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(fail(format!("line editing failed: {e}"))),
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    Ok(())
}
