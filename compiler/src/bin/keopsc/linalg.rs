//! `keopsc linalg`: a kernel as a linear operator on one of its arguments (lang-spec/linalg.md):
//! `solve` (conjugate gradients for `(K + lambda I) x = b`), `eigs` (the top eigenpairs by
//! Lanczos) and `power` (`P^t V`), `.npy` in and out, progress on stderr. The algorithms are
//! the runtime's (`keops_runtime::linalg`); this file reads the inputs, compiles the kernel,
//! checks that it is linear in its operand, and reports.

use crate::eval::{argument_problems, pick_kernel};
use crate::inputs::{parse_files, parse_same};
use crate::{fail, load, Reported};
use keops_runtime::linalg::{
    apply_power, conjugate_gradient, lanczos, CgOptions, EigOptions, KernelOperator,
    LinearOperator, Normalization, Preconditioner, Progress, Scaled, Timed,
};
use keops_runtime::{DType, HostArray};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum LinalgCommand {
    /// Solve `(K + lambda I) x = b` by conjugate gradients, every column of b at once.
    Solve {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The right-hand sides: `(N,)` or `(N, R)`.
        #[arg(long, value_name = "B.npy")]
        rhs: PathBuf,
        /// The shift added to the diagonal (ridge, noise variance).
        #[arg(long, default_value_t = 0.0)]
        lambda: f64,
        /// Stop when `||b - (K + lambda I) x|| <= tol ||b||` for every column.
        #[arg(long, default_value_t = 1e-8)]
        tol: f64,
        #[arg(long, default_value_t = 1000)]
        max_iter: usize,
        /// Precondition by the diagonal of `K + lambda I` (Jacobi).
        #[arg(long)]
        jacobi: bool,
        /// The solution, shaped like B.
        #[arg(short, long, value_name = "X.npy")]
        output: PathBuf,
    },
    /// The k algebraically largest eigenvalues of the (symmetric) operator, and eigenvectors.
    Eigs {
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long, default_value_t = 6)]
        k: usize,
        /// Accept a pair when `||A y - theta y|| <= tol * |theta_max|`.
        #[arg(long, default_value_t = 1e-8)]
        tol: f64,
        /// Krylov basis size before a restart (0: max(2k + 1, k + 20)).
        #[arg(long, default_value_t = 0)]
        basis: usize,
        #[arg(long, default_value_t = 200)]
        max_restarts: usize,
        /// The eigenvalues, `(k,)`, in decreasing order.
        #[arg(short, long, value_name = "VALUES.npy")]
        output: PathBuf,
        /// The eigenvectors, `(N, k)`, unit columns.
        #[arg(long, value_name = "VECTORS.npy")]
        vectors: Option<PathBuf>,
        /// With a last normalisation step `sym`: the eigenvectors `D^-1/2 phi` of the random
        /// walk `D^-1 A`, `(N, k)`, the diffusion-map coordinates before scaling by `lambda^t`.
        #[arg(long, value_name = "PSI.npy")]
        walk_vectors: Option<PathBuf>,
    },
    /// `A^t V`: t products (t steps of the random walk with `--normalize row`).
    Power {
        #[command(flatten)]
        operator: OperatorArgs,
        /// V: `(N,)` or `(N, R)`.
        #[arg(long, value_name = "V.npy")]
        rhs: PathBuf,
        #[arg(long, default_value_t = 1)]
        t: usize,
        #[arg(short, long, value_name = "OUT.npy")]
        output: PathBuf,
    },
}

/// What makes the operator: the kernel, its fixed inputs, its operand and a normalisation.
#[derive(clap::Args)]
pub struct OperatorArgs {
    file: PathBuf,
    /// The kernel; may be left out when the file holds one kernel.
    #[arg(long)]
    kernel: Option<String>,
    /// The argument the operator multiplies (a `Sum` kernel linear in it, e.g. `b` of
    /// `Exp(-SqDist(x, y)) * b`); may be left out when it is the one argument not given.
    #[arg(long, value_name = "NAME")]
    operand: Option<String>,
    /// NAME=FILE.npy, once per argument but the operand.
    #[arg(long = "arg", value_name = "NAME=FILE.npy")]
    args: Vec<String>,
    /// J=I: the j-variable J takes the data of the i-variable I (a kernel on one point cloud).
    #[arg(long = "same", value_name = "J=I")]
    same: Vec<String>,
    /// Normalisation steps, comma-separated, applied in order: `row` (D^-1 K), `sym`
    /// (D^-1/2 K D^-1/2), `alpha=A` (D^-A K D^-A); e.g. `alpha=1,sym`.
    #[arg(long, default_value = "")]
    normalize: String,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn run(command: LinalgCommand) -> Result<(), Reported> {
    match command {
        LinalgCommand::Solve {
            operator,
            rhs,
            lambda,
            tol,
            max_iter,
            jacobi,
            output,
        } => {
            let made = make_operator(&operator)?;
            let (b, ncols, shape) = read_block(&rhs, made.op.cols(), "--rhs")?;
            let options = CgOptions {
                lambda,
                tol,
                max_iterations: max_iter,
                preconditioner: if jacobi {
                    Preconditioner::Jacobi
                } else {
                    Preconditioner::None
                },
            };
            let mut reporter = Reporter::new(operator.quiet);
            let result =
                conjugate_gradient(&made.op, &b, ncols, &options, &mut |p| reporter.report(p))
                    .map_err(fail)?;
            reporter.finish();
            write(&output, shape, result.solution.clone(), made.dtype)?;
            eprintln!("{result}");
            made.report_time();
            if !result.converged {
                eprintln!(
                    "warning: the tolerance {tol} was not reached in {max_iter} iterations (raise --max-iter{})",
                    if jacobi {
                        ""
                    } else {
                        ", or precondition with --jacobi"
                    }
                );
            }
            Ok(())
        }
        LinalgCommand::Eigs {
            operator,
            k,
            tol,
            basis,
            max_restarts,
            output,
            vectors,
            walk_vectors,
        } => {
            let made = make_operator(&operator)?;
            if walk_vectors.is_some() && !operator.normalize.trim_end().ends_with("sym") {
                return Err(fail(
                    "--walk-vectors needs a last normalisation step `sym` (e.g. --normalize sym or alpha=1,sym)",
                ));
            }
            let options = EigOptions {
                k,
                tol,
                basis,
                max_restarts,
                start: None,
            };
            let mut reporter = Reporter::new(operator.quiet);
            let result = lanczos(&made.op, &options, &mut |p| reporter.report(p)).map_err(fail)?;
            reporter.finish();
            write(&output, vec![k], result.values.clone(), made.dtype)?;
            if let Some(path) = &vectors {
                let n = made.op.rows();
                write(path, vec![n, k], result.vectors.clone(), made.dtype)?;
            }
            if let Some(path) = &walk_vectors {
                let psi = made
                    .op
                    .random_walk_eigenvectors(&result.vectors, k)
                    .map_err(fail)?;
                write(path, vec![made.op.rows(), k], psi, made.dtype)?;
            }
            eprintln!("{result}");
            made.report_time();
            if !result.converged {
                eprintln!(
                    "warning: the tolerance {tol} was not reached in {max_restarts} restarts (raise --max-restarts or --basis)"
                );
            }
            Ok(())
        }
        LinalgCommand::Power {
            operator,
            rhs,
            t,
            output,
        } => {
            let made = make_operator(&operator)?;
            let (v, ncols, shape) = read_block(&rhs, made.op.cols(), "--rhs")?;
            let mut reporter = Reporter::new(operator.quiet);
            let out =
                apply_power(&made.op, &v, ncols, t, &mut |p| reporter.report(p)).map_err(fail)?;
            reporter.finish();
            write(&output, shape, out, made.dtype)?;
            made.report_time();
            Ok(())
        }
    }
}

/// The operator, timed, and the dtype its inputs came in (the outputs' dtype).
struct MadeOperator {
    op: Scaled<Timed<KernelOperator>>,
    dtype: DType,
    /// When the computation began: before the degrees of a normalisation, which are products
    /// too.
    start: Instant,
}

impl MadeOperator {
    /// The share of the time spent in kernel products, which everything else should not
    /// dwarf.
    fn report_time(&self) {
        let total = self.start.elapsed().as_secs_f64();
        let timed = &self.op.op;
        eprintln!(
            "{} products of {} vectors: {:.3} s of {:.3} s ({:.1}% in kernel products)",
            timed.applies(),
            timed.columns(),
            timed.seconds(),
            total,
            100.0 * timed.seconds() / total.max(1e-12)
        );
    }
}

fn make_operator(args: &OperatorArgs) -> Result<MadeOperator, Reported> {
    let steps = Normalization::parse_list(&args.normalize)
        .map_err(|e| fail(format!("--normalize: {e}")))?;
    let compiled = load(&args.file)?;
    let kernel = pick_kernel(&compiled, args.kernel.as_deref(), &args.file)?;
    let mut problems = Vec::new();
    let files = parse_files(&args.args, &mut problems);
    let same = parse_same(kernel, &args.same, &files, &mut problems);
    let sig = &kernel.signature;
    let given = |name: &str| {
        files.iter().any(|(n, _)| n == name) || same.iter().any(|s| sig.args[s.j].name == name)
    };
    let operand = match &args.operand {
        Some(name) => name.clone(),
        None => keopsc::operator::find_operand(kernel, given)
            .map_err(|e| fail(format!("{e}: use --operand")))?,
    };
    let mut inputs: Vec<(String, HostArray)> = Vec::new();
    for (name, path) in &files {
        match HostArray::read_npy(path) {
            Ok(array) => inputs.push((name.clone(), array)),
            Err(e) => problems.push(format!("argument `{name}`: `{}`: {e}", path.display())),
        }
    }
    for s in &same {
        let source = &sig.args[s.i].name;
        if let Some((_, array)) = inputs.iter().find(|(n, _)| n == source) {
            inputs.push((sig.args[s.j].name.clone(), array.clone()));
        }
    }
    if !problems.is_empty() {
        return Err(argument_problems(&problems, &kernel.name));
    }
    let dtype = inputs.first().map_or(DType::F64, |(_, a)| a.dtype());
    // On one point cloud against itself (--same), products walk each unordered pair once.
    let pairs: Vec<(usize, usize)> = same.iter().map(|s| (s.j, s.i)).collect();
    let compiled_kernel =
        keopsc::operator::compile_operator_kernel(kernel, &pairs, dtype).map_err(fail)?;
    let op = KernelOperator::new(compiled_kernel, &operand, inputs).map_err(fail)?;
    let start = Instant::now();
    let op = Scaled::normalized(Timed::new(op), &steps).map_err(fail)?;
    Ok(MadeOperator { op, dtype, start })
}

/// A block of vectors: `(rows,)` (one column) or `(rows, ncols)`; its data in f64, its
/// column count and its shape.
fn read_block(
    path: &Path,
    rows: usize,
    flag: &str,
) -> Result<(Vec<f64>, usize, Vec<usize>), Reported> {
    let array =
        HostArray::read_npy(path).map_err(|e| fail(format!("{flag} `{}`: {e}", path.display())))?;
    let ncols = match array.shape.as_slice() {
        [r] if *r == rows => 1,
        [r, c] if *r == rows && *c > 0 => *c,
        _ => {
            return Err(fail(format!(
                "{flag} `{}` has shape {}; the operator needs ({rows},) or ({rows}, R)",
                path.display(),
                keops_runtime::shape_text(&array.shape)
            )))
        }
    };
    Ok((array.to_f64(), ncols, array.shape))
}

fn write(path: &Path, shape: Vec<usize>, data: Vec<f64>, dtype: DType) -> Result<(), Reported> {
    let array = match dtype {
        DType::F64 => HostArray::from_f64(shape, data),
        DType::F32 => HostArray::from_f32(shape, data.into_iter().map(|v| v as f32).collect()),
    };
    array
        .write_npy(path)
        .map_err(|e| fail(format!("cannot write `{}`: {e}", path.display())))
}

/// Progress on stderr: on a terminal, one line rewritten in place with a bar (the larger of
/// the steps done and the columns or pairs converged, as a fraction) and the time so far;
/// otherwise a line at most every two seconds.
struct Reporter {
    quiet: bool,
    terminal: bool,
    started: Instant,
    last: Option<Instant>,
    pending: Option<String>,
}

impl Reporter {
    fn new(quiet: bool) -> Reporter {
        Reporter {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
            pending: None,
        }
    }

    fn report(&mut self, progress: &Progress) {
        if self.quiet {
            return;
        }
        let line = format!(
            "{} {:.1} s  {progress}",
            bar(progress),
            self.started.elapsed().as_secs_f64()
        );
        let due = self.last.is_none_or(|t| t.elapsed().as_secs_f64() >= 2.0);
        if self.terminal {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if due {
            eprintln!("{line}");
            self.last = Some(Instant::now());
            self.pending = None;
            return;
        }
        self.pending = Some(line);
    }

    /// Ends the progress display: the last state is printed if it was not.
    fn finish(&mut self) {
        if self.quiet {
            return;
        }
        if self.terminal {
            eprintln!();
        } else if let Some(line) = self.pending.take() {
            eprintln!("{line}");
        }
    }
}

/// `[#########-----------]  45%`: how far a task is, by the larger of its steps (out of the
/// most there will be) and what has converged (out of what is wanted).
fn bar(progress: &Progress) -> String {
    const WIDTH: usize = 20;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let done = ratio(progress.step, progress.steps)
        .max(ratio(progress.converged, progress.wanted))
        .clamp(0.0, 1.0);
    let filled = (done * WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:3.0}%",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        done * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_the_larger_of_steps_and_convergence() {
        let mut p = Progress {
            task: "lanczos",
            step: 5,
            steps: 200,
            residual: 1e-3,
            converged: 10,
            wanted: 20,
        };
        assert_eq!(bar(&p), "[##########----------]  50%");
        p.converged = 0;
        assert_eq!(bar(&p), "[#-------------------]   2%");
        p.step = 200;
        assert_eq!(bar(&p), "[####################] 100%");
    }
}
